//! Entry points for the `config` and `dns` fuzz targets in `fuzz/` and for their
//! property tests. Not part of the API; every function returns normally for any input,
//! and a panic in one is a bug in the code it calls.

use std::time::Duration;

use anyhow::Context as _;

use crate::config::raw::{RawConfig, RawPorts};
use crate::config::{AgentConfig, Format, Origin, Sources, load_layers, parse, parse_layer};
use crate::{Agent, config};

/// A config file's text in `format`, parsed as the agent reads a `-config-file` and
/// checked as `proconsul validate` and an agent start do: on its own and on top of the
/// `-dev` preset. `Ok` when either accepts it; `Err` holds the problems of the `-dev`
/// check as printed.
pub fn config(text: &str, format: Format) -> Result<AgentConfig, String> {
    let name = match format {
        Format::Json => "fuzzed.json",
        Format::Hcl => "fuzzed.hcl",
    };
    let layer = parse(Origin::File(name.into()), text, format).map_err(|p| p.to_string())?;
    let check = |dev: bool| {
        let sources = Sources {
            dev,
            ..Sources::default()
        };
        let mut layers = load_layers(&sources).map_err(|p| p.to_string())?.layers;
        // Files come before the flags layer.
        layers.insert(layers.len() - 1, layer.clone());
        AgentConfig::from_layers(&layers, sources).map_err(|p| p.to_string())
    };
    let alone = check(false);
    let dev = check(true);
    alone.or(dev)
}

/// The services of the fuzzed agent: names, tags, TTL checks (critical until they pass),
/// metadata long enough for several TXT strings, and addresses of both families.
const SERVICES: &str = r#"{
    "node_meta": {"rack": "r1", "long": "0123456789012345678901234567890123456789012345678901234567890123"},
    "services": [
        {"name": "web", "tags": ["rails", "v1"], "port": 80},
        {"id": "web-2", "name": "web", "tags": ["v2"], "port": 81, "address": "10.0.0.2"},
        {"id": "web-6", "name": "web", "port": 82, "address": "2001:db8::1"},
        {"name": "db", "port": 5432, "check": {"ttl": "30s"}},
        {"name": "api", "port": 8080, "address": "api.example.com",
         "meta": {"version": "1", "quote": "a `b` = c"}, "weights": {"passing": 3, "warning": 1}}
    ]
}"#;

/// How long [`DnsAgent::start`] waits for the catalog to answer for `web`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A `-dev` agent on OS-chosen ports with a few services and a prepared query (`fuzzq`),
/// and its DNS request handling without sockets ([`api::fuzzing::DnsHarness`]).
pub struct DnsAgent {
    runtime: tokio::runtime::Runtime,
    agent: Agent,
    harness: api::fuzzing::DnsHarness,
}

impl DnsAgent {
    /// Starts the agent and waits until `web.service.consul` has answers.
    pub fn start() -> anyhow::Result<DnsAgent> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("building a runtime")?;
        let agent = runtime.block_on(start_agent())?;
        let harness =
            api::fuzzing::DnsHarness::new(agent.gateway().clone(), agent.config().dns.clone());
        let dns = DnsAgent {
            runtime,
            agent,
            harness,
        };
        let query =
            api::fuzzing::dns_query(1, "web.service.consul.", 33, None).expect("a valid question");
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        while dns
            .answer_udp(&query)
            .map_or(0, |r| api::fuzzing::answer_records(&r))
            < 3
        {
            if std::time::Instant::now() > deadline {
                anyhow::bail!("web.service.consul has no answers after {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(dns)
    }

    /// The answer to `bytes` as a UDP datagram.
    pub fn answer_udp(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        self.runtime.block_on(self.harness.answer_udp(bytes))
    }

    /// The answer to `bytes` as a message on a TCP connection.
    pub fn answer_tcp(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        self.runtime.block_on(self.harness.answer_tcp(bytes))
    }

    /// The agent's DNS settings.
    pub fn dns_config(&self) -> &api::dns::DnsConfig {
        &self.agent.config().dns
    }

    /// Answers `bytes` over UDP and over TCP and checks both answers
    /// ([`api::fuzzing::check_reply`]), and that a UDP answer kept between queries is
    /// the one built afresh ([`api::fuzzing::DnsHarness::check_kept`]).
    pub fn check(&self, bytes: &[u8]) -> Result<(), String> {
        self.harness
            .check_kept(bytes)
            .map_err(|e| format!("UDP, kept: {e}"))?;
        let limit = api::fuzzing::udp_limit(bytes, self.dns_config());
        if let Some(reply) = self.answer_udp(bytes) {
            api::fuzzing::check_reply(bytes, &reply, Some(limit))
                .map_err(|e| format!("UDP: {e}"))?;
        }
        if let Some(reply) = self.answer_tcp(bytes) {
            api::fuzzing::check_reply(bytes, &reply, None).map_err(|e| format!("TCP: {e}"))?;
        }
        Ok(())
    }
}

async fn start_agent() -> anyhow::Result<Agent> {
    let sources = Sources {
        dev: true,
        flags: RawConfig {
            node_name: Some("fuzzed".into()),
            log_level: Some("error".into()),
            ports: Some(RawPorts {
                http: Some(0),
                dns: Some(0),
                server: Some(0),
                serf_lan: Some(0),
                ..RawPorts::default()
            }),
            ..RawConfig::default()
        },
        ..Sources::default()
    };
    let mut layers = load_layers(&sources)
        .map_err(|p| anyhow::anyhow!("{p}"))?
        .layers;
    let services = parse_layer(Origin::File("services.json".into()), SERVICES)
        .map_err(|p| anyhow::anyhow!("{p}"))?;
    layers.insert(layers.len() - 1, services);
    let config =
        config::AgentConfig::from_layers(&layers, sources).map_err(|p| anyhow::anyhow!("{p}"))?;
    let agent = Agent::start(config).await?;
    let query = api::fuzzing::http_body(
        api::fuzzing::Endpoint::QueryCreate,
        br#"{"Name": "fuzzq", "Service": {"Service": "web", "Tags": ["rails"]}}"#,
    )
    .map_err(|r| anyhow::anyhow!("{}", r.message))?;
    let command = query
        .command
        .context("a prepared query is a catalog write")?;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        match agent
            .gateway()
            .write(None, command.clone(), deadline, &catalog::Principal::Agent)
            .await
        {
            Ok(_) => break,
            // No leader yet.
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e).context("creating the prepared query"),
        }
    }
    Ok(agent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn agent() -> &'static DnsAgent {
        static AGENT: OnceLock<DnsAgent> = OnceLock::new();
        AGENT.get_or_init(|| DnsAgent::start().unwrap())
    }

    const NAMES: &[&str] = &[
        "web.service.consul.",
        "rails.web.service.consul.",
        "_web._tcp.service.consul.",
        "web.service.dc1.consul.",
        "web.service.dc2.consul.",
        "db.service.consul.",
        "api.service.consul.",
        "fuzzq.query.consul.",
        "fuzzed.node.consul.",
        "fuzzed.node.dc1.consul.",
        "7f000001.addr.dc1.consul.",
        "1.0.0.127.in-addr.arpa.",
        "consul.",
        "service.consul.",
        "nope.service.consul.",
        "example.com.",
    ];

    #[test]
    fn seeds_are_answered() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir.join("dns")).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(agent().answer_udp(&bytes).is_some());
            agent().check(&bytes).unwrap();
            seen += 1;
        }
        for entry in std::fs::read_dir(dir.join("config")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let format = Format::of(&path, None).unwrap();
            if let Err(e) = config(&text, format) {
                panic!("{}: {e}", path.display());
            }
            seen += 1;
        }
        assert!(seen > 1);
    }

    #[test]
    fn error_answers_to_many_questions_fit_in_a_udp_answer() {
        // Found by `fuzz/run.sh` (target dns, seed `notify-with-19-questions`): a NOTIFY
        // with 19 questions got NOTIMP echoing all of them, 529 bytes over UDP. Many
        // questions in a QUERY take the same path (FORMERR).
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        use hickory_proto::rr::{Name, RecordType};
        for op_code in [OpCode::Notify, OpCode::Query, OpCode::Update] {
            let mut m = Message::new(0x9a9a, MessageType::Query, op_code);
            for i in 0..20 {
                let name = format!("{}{i}.service.consul.", "x".repeat(40));
                m.add_query(Query::query(
                    Name::from_ascii(&name).unwrap(),
                    RecordType::A,
                ));
            }
            let bytes = m.to_vec().unwrap();
            assert!(bytes.len() > 512);
            if let Err(e) = agent().check(&bytes) {
                panic!("{op_code:?}: {e}");
            }
        }
    }

    #[test]
    fn the_service_answers_carry_the_instances() {
        let query = api::fuzzing::dns_query(7, "web.service.consul.", 33, Some(4096)).unwrap();
        let reply = agent().answer_udp(&query).unwrap();
        assert_eq!(api::fuzzing::answer_records(&reply), 3);
    }

    proptest! {
        #[test]
        fn config_text_never_panics(text in "\\PC{0,300}") {
            let _ = config(&text, Format::Json);
            let _ = config(&text, Format::Hcl);
        }

        #[test]
        fn config_objects_with_random_values_never_panic(
            key in prop_oneof![
                Just("services"), Just("service"), Just("checks"), Just("ports"), Just("dns_config"),
                Just("limits"), Just("node_meta"), Just("encrypt"), Just("retry_join"),
                Just("reconnect_timeout"), Just("recursors"), Just("client_addr"), Just("datacenter"),
            ],
            value in prop_oneof![
                Just("1".to_string()), Just("-1".to_string()), Just("65536".to_string()),
                Just("1e400".to_string()), Just("\"\"".to_string()), Just("\"x\"".to_string()),
                Just("null".to_string()), Just("[]".to_string()), Just("[{}]".to_string()),
                Just("{}".to_string()), Just("[{\"name\": \"w\", \"port\": -5}]".to_string()),
                Just("{\"udp_answer_limit\": 0, \"node_ttl\": \"-1s\"}".to_string()),
                Just("{\"dns\": 99999}".to_string()),
                "\"[ -~]{0,20}\"",
            ],
        ) {
            let _ = config(&format!("{{\"{key}\": {value}}}"), Format::Json);
            // The same as an HCL attribute, and (for objects) as a block, given twice.
            let _ = config(&format!("{key} = {value}"), Format::Hcl);
            if value.starts_with('{') {
                let _ = config(&format!("{key} {value}\n{key} {value}"), Format::Hcl);
            }
        }

        #[test]
        fn dns_answers_carry_the_query_id_and_fit(
            id in any::<u16>(),
            name in proptest::sample::select(NAMES),
            rtype in prop_oneof![Just(1u16), Just(28), Just(33), Just(16), Just(12), Just(2), Just(6), Just(255), any::<u16>()],
            edns in prop_oneof![Just(None), Just(Some(512u16)), Just(Some(4096)), any::<Option<u16>>()],
        ) {
            let query = api::fuzzing::dns_query(id, name, rtype, edns).unwrap();
            prop_assert!(agent().answer_udp(&query).is_some(), "a query is answered");
            if let Err(e) = agent().check(&query) {
                return Err(TestCaseError::fail(e));
            }
        }

        #[test]
        fn dns_headers_with_random_bodies_never_panic(
            id in any::<u16>(),
            flags in any::<u16>(),
            counts in any::<[u8; 4]>(),
            body in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut bytes = id.to_be_bytes().to_vec();
            bytes.extend_from_slice(&(flags & 0x7fff).to_be_bytes());
            for c in counts {
                bytes.extend_from_slice(&u16::from(c % 4).to_be_bytes());
            }
            bytes.extend_from_slice(&body);
            if let Err(e) = agent().check(&bytes) {
                return Err(TestCaseError::fail(e));
            }
        }
    }
}
