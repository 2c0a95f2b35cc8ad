//! Entry points for the fuzz targets in `fuzz/` and for their property tests: request
//! bodies of the HTTP write endpoints and raw DNS requests, through the code the
//! handlers and the DNS serving loops run. Not part of the API; every function returns
//! normally for any input, and a panic in one is a bug in the code it calls.

use ::catalog::{Answer, Command, Query, State};
use gateway::Gateway;
use tokio_util::task::TaskTracker;

use crate::dns::{DnsConfig, Server, Transport};
use crate::http::{ApiError, Params, agent, catalog, keyring, query, session, snapshot, txn};

/// A write endpoint whose body is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `PUT /v1/catalog/register`.
    CatalogRegister,
    /// `PUT /v1/catalog/deregister`.
    CatalogDeregister,
    /// `PUT /v1/agent/service/register`.
    AgentServiceRegister,
    /// `PUT /v1/agent/check/register`.
    AgentCheckRegister,
    /// `PUT /v1/agent/check/update/:id`.
    AgentCheckUpdate,
    /// `POST /v1/query`.
    QueryCreate,
    /// `PUT /v1/query/:id`.
    QueryUpdate,
    /// `POST`, `PUT` and `DELETE /v1/operator/keyring` (install, use, remove a key).
    KeyringKey,
    /// `PUT /v1/snapshot` (a restore).
    SnapshotRestore,
    /// `PUT /v1/txn`.
    Txn,
    /// `PUT /v1/session/create`.
    SessionCreate,
}

impl Endpoint {
    /// Every endpoint with a body to parse.
    pub const ALL: [Endpoint; 11] = [
        Endpoint::CatalogRegister,
        Endpoint::CatalogDeregister,
        Endpoint::AgentServiceRegister,
        Endpoint::AgentCheckRegister,
        Endpoint::AgentCheckUpdate,
        Endpoint::QueryCreate,
        Endpoint::QueryUpdate,
        Endpoint::KeyringKey,
        Endpoint::SnapshotRestore,
        Endpoint::Txn,
        Endpoint::SessionCreate,
    ];

    /// The statuses a refused body may get: 400, and where Consul answers otherwise,
    /// Consul's (413 for a transaction over its limits, 500 for a session setting Consul
    /// refuses that way).
    pub fn refusal_statuses(self) -> &'static [u16] {
        match self {
            Endpoint::Txn => &[400, 413],
            Endpoint::SessionCreate => &[400, 500],
            _ => &[400],
        }
    }
}

/// A body the endpoint accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The catalog change it makes, for the endpoints that write the catalog.
    pub command: Option<Command>,
    /// Whether that change reads back from its Raft log encoding as itself.
    pub log_round_trips: bool,
}

/// A body the endpoint refused: the status and text the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// Body text.
    pub message: String,
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Refused {
        let (status, message) = match e {
            ApiError::BadRequest(m) => (400, m),
            ApiError::NotFound(m) => (404, m),
            ApiError::TooLarge(m) => (413, m),
            ApiError::TooManyRequests(m) => (429, m),
            ApiError::Unauthorized(m) => (401, m),
            ApiError::Forbidden(m) => (403, m),
            ApiError::Internal(m) => (500, m),
        };
        Refused { status, message }
    }
}

/// The local datacenter of the fuzzed agent.
const LOCAL_DC: &str = "dc1";
/// The ID a fuzzed prepared query is stored under.
const QUERY_ID: &str = "00000000-0000-4000-8000-00000000f022";

/// Parses `body` as `endpoint`'s handler does (no query parameters); a catalog change
/// it makes is then applied to an empty catalog, as the leader applies it once
/// committed. A restored catalog is then read with every kind of query, for each node
/// and service it holds, and must still pass as a snapshot itself.
pub fn http_body(endpoint: Endpoint, body: &[u8]) -> Result<Accepted, Refused> {
    let params = Params::parse(None);
    let command = match endpoint {
        Endpoint::CatalogRegister => Some(catalog::registration(&params, body, LOCAL_DC)?.1),
        Endpoint::CatalogDeregister => Some(catalog::deregistration(&params, body)?.1),
        Endpoint::AgentServiceRegister => {
            agent::service_registration(body)?;
            None
        }
        Endpoint::AgentCheckRegister => {
            agent::check_registration(body)?;
            None
        }
        Endpoint::AgentCheckUpdate => {
            agent::check_update_body(body)?;
            None
        }
        Endpoint::KeyringKey => {
            keyring::key_from_body(body)?;
            None
        }
        Endpoint::SnapshotRestore => Some(snapshot::restore_command(body)?),
        Endpoint::Txn => txn::command(body, ::catalog::KV_MAX_VALUE_SIZE)?,
        Endpoint::SessionCreate => Some(Command::Session(::catalog::SessionWrite::Create(
            Box::new(session::parse_session(body, "fuzz-node")?),
        ))),
        Endpoint::QueryCreate | Endpoint::QueryUpdate => {
            let mut definition = query::definition(body)?;
            definition.id = QUERY_ID.into();
            Some(Command::SetQuery {
                query: Box::new(definition),
                create: endpoint == Endpoint::QueryCreate,
            })
        }
    };
    let log_round_trips = match &command {
        None => true,
        Some(command) => {
            let mut state = seeded();
            let before = state.to_snapshot();
            match state.apply(1000, command) {
                // A transaction that fails, or a command refused, changes nothing.
                Ok(::catalog::Applied::Txn(::catalog::TxnOutcome::Failed(_))) | Err(_) => {
                    assert_eq!(state.to_snapshot(), before, "a refused change left a trace");
                }
                Ok(_) => {}
            }
            if let Command::Restore(_) = command {
                read_everything(&state);
            }
            let log = serde_json::to_vec(command).expect("a command serialises");
            serde_json::from_slice::<Command>(&log).ok().as_ref() == Some(command)
        }
    };
    Ok(Accepted {
        command,
        log_round_trips,
    })
}

/// A catalog with a node, a session and a few keys (one locked), for the KV commands to
/// work on.
fn seeded() -> State {
    use ::catalog::{Behavior, KvWrite, Node, Registration, Session, SessionWrite};
    let mut state = State::new();
    let node = Registration {
        node: Node {
            name: "fuzz-node".into(),
            address: "10.0.0.1".into(),
            ..Node::default()
        },
        skip_node_update: false,
        service: None,
        checks: vec![],
    };
    let session = Session {
        id: "s1".into(),
        name: String::new(),
        node: "fuzz-node".into(),
        lock_delay: std::time::Duration::ZERO,
        behavior: Behavior::Release,
        ttl: String::new(),
        node_checks: vec![],
        service_checks: vec![],
        create_index: 0,
        modify_index: 0,
        renewals: 0,
    };
    let mut commands = vec![
        Command::Register(node),
        Command::Session(SessionWrite::Create(Box::new(session))),
    ];
    for key in ["a", "a/b", "b"] {
        commands.push(Command::Kv(KvWrite::Set {
            key: key.into(),
            value: b"v".to_vec(),
            flags: 0,
            cas: None,
        }));
    }
    commands.push(Command::Kv(KvWrite::Acquire {
        key: "lock".into(),
        value: Vec::new(),
        flags: 0,
        session: "s1".into(),
    }));
    for (i, command) in commands.iter().enumerate() {
        state
            .apply(i as u64 + 1, command)
            .expect("the seed applies");
    }
    state
}

/// Reads `state` with every kind of query, naming each node and service it holds, and
/// checks that what it holds passes as a snapshot.
fn read_everything(state: &State) {
    let snapshot = state.to_snapshot();
    if let Err(e) = snapshot.validate() {
        panic!("a restored catalog does not pass as a snapshot: {e}");
    }
    let (Answer::Nodes(nodes), _) = state.query(&Query::Nodes { node_meta: vec![] }) else {
        panic!("a nodes query answered with something else");
    };
    let (Answer::Services(services), _) = state.query(&Query::Services { node_meta: vec![] })
    else {
        panic!("a services query answered with something else");
    };
    let mut queries = vec![
        Query::ChecksInState { state: None },
        Query::Snapshot,
        Query::PreparedQueries { key: None },
        Query::NodeDump { node: None },
    ];
    for node in &nodes {
        queries.push(Query::NodeDump {
            node: Some(node.name.clone()),
        });
        queries.push(Query::NodeServices {
            node: node.name.clone(),
        });
        queries.push(Query::NodeChecks {
            node: node.name.clone(),
        });
        queries.push(Query::Address {
            address: node.address.clone(),
        });
    }
    for service in services.keys() {
        queries.push(Query::ServiceNodes {
            service: service.clone(),
            tags: vec![],
            node_meta: vec![],
        });
        queries.push(Query::ServiceHealth {
            service: service.clone(),
            tags: vec![],
            passing_only: true,
            node_meta: vec![],
        });
        queries.push(Query::ServiceChecks {
            service: service.clone(),
        });
    }
    for query in &queries {
        let _ = state.query(query);
    }
}

/// One agent's DNS request handling over a real gateway, without sockets: raw request
/// bytes in, raw answer bytes out, as the serving loops answer them.
pub struct DnsHarness {
    server: Server,
    /// The encoded answers kept by [`DnsHarness::answer_udp_kept`], as one UDP serving
    /// thread keeps them.
    kept: std::sync::Mutex<crate::dns::cache::ResponseCache>,
}

impl DnsHarness {
    /// Answers with `config` from `gateway`'s catalog.
    pub fn new(gateway: Gateway, config: DnsConfig) -> DnsHarness {
        DnsHarness {
            server: Server::new(gateway, config, &TaskTracker::new()),
            kept: std::sync::Mutex::new(crate::dns::cache::ResponseCache::new()),
        }
    }

    /// The answer to a UDP datagram as a serving thread gives it: from the answers it
    /// keeps when it holds this one, else built (and kept when it may be); `None` for
    /// no answer and for one that waits on the network (recursors, reads through a
    /// server).
    pub fn answer_udp_kept(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut kept = self.kept.lock().expect("harness cache poisoned");
        self.server.answer_udp_now(bytes, &mut kept)
    }

    /// Checks that the kept answer to a UDP datagram is one the ordinary path builds
    /// for it (in one of the orders it may draw), apart from the ID, which must be the
    /// request's.
    pub fn check_kept(&self, bytes: &[u8]) -> Result<(), String> {
        let fresh = || -> Vec<Vec<u8>> {
            (0..crate::dns::ORDERS)
                .filter_map(|k| self.answer_udp_in_order(bytes, k))
                .collect()
        };
        // Built before and after: a SOA serial (the second) may move in between.
        let before = fresh();
        let Some(kept) = self.answer_udp_kept(bytes) else {
            return Ok(());
        };
        let after = fresh();
        if kept.get(..2) != bytes.get(..2) {
            return Err("a kept answer with another ID".into());
        }
        let same = |b: &Vec<u8>| b.get(2..) == kept.get(2..);
        if before.iter().chain(&after).any(same) {
            Ok(())
        } else {
            Err(format!(
                "a kept answer of {} bytes that the ordinary path does not build",
                kept.len()
            ))
        }
    }

    /// The answer to a UDP datagram built without the kept answers, its records in
    /// their `order`-th order (modulo the number of orders; see
    /// [`crate::dns::ORDERS`]); `None` as for [`DnsHarness::answer_udp_kept`].
    pub fn answer_udp_in_order(&self, bytes: &[u8], order: usize) -> Option<Vec<u8>> {
        self.server.answer_udp_in_order(bytes, order)
    }

    /// The answer to a UDP datagram, if any. Needs a Tokio runtime.
    pub async fn answer_udp(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        self.server.answer(bytes, Transport::Udp).await
    }

    /// The answer to a message on a TCP connection, if any. Needs a Tokio runtime.
    pub async fn answer_tcp(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        self.server.answer(bytes, Transport::Tcp).await
    }
}

/// Checks what must hold of any answer to `request`: it is a DNS response that
/// decodes, carries the request's ID, and over UDP fits in `udp_limit` bytes.
pub fn check_reply(request: &[u8], reply: &[u8], udp_limit: Option<usize>) -> Result<(), String> {
    let (Some(asked), Some(answered)) = (request.get(..2), reply.get(..2)) else {
        return Err(format!(
            "a {}-byte answer to a {}-byte request",
            reply.len(),
            request.len()
        ));
    };
    if asked != answered {
        return Err(format!("answer ID {answered:?} for request ID {asked:?}"));
    }
    let message = hickory_proto::op::Message::from_vec(reply)
        .map_err(|e| format!("the answer does not decode: {e}"))?;
    if message.metadata.message_type != hickory_proto::op::MessageType::Response {
        return Err("the answer is not a response".into());
    }
    if let Some(limit) = udp_limit
        && reply.len() > limit
    {
        return Err(format!(
            "a {}-byte UDP answer over the {limit}-byte limit",
            reply.len()
        ));
    }
    Ok(())
}

/// The UDP size limit of an answer to `request` under `config`: 512 bytes, or the
/// request's EDNS size up to `udp_max_response` (what RFC 6891 and the config allow).
pub fn udp_limit(request: &[u8], config: &DnsConfig) -> usize {
    let edns = hickory_proto::op::Message::from_vec(request)
        .ok()
        .and_then(|m| m.edns.map(|e| e.max_payload()));
    match edns {
        Some(size) => usize::from(size.max(512).min(config.udp_max_response.max(512))),
        None => 512,
    }
}

/// The bytes of a query for `name` and record type `rtype` (`1` A, `33` SRV, …) with
/// this ID, as `dig` sends it (recursion desired; EDNS with this buffer size if given).
/// `None` when `name` is not a valid DNS name.
pub fn dns_query(id: u16, name: &str, rtype: u16, edns: Option<u16>) -> Option<Vec<u8>> {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).ok()?,
        RecordType::from(rtype),
    ));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    m.to_vec().ok()
}

/// The number of records in the answer section of a DNS response (0 when it does not
/// decode).
pub fn answer_records(reply: &[u8]) -> usize {
    hickory_proto::op::Message::from_vec(reply).map_or(0, |m| m.answers.len())
}

/// A `?filter=` expression as `/v1/health/service/:name` and `/v1/catalog/service/:name`
/// take it: `Err` with the 400 text when the endpoint refuses it, else whether it keeps
/// a fixed entry (and a fixed catalog entry).
pub fn filter(text: &str) -> Result<(bool, bool), String> {
    use crate::http::filter::{Filter, FilterError, schema};
    let health = serde_json::json!({
        "Node": {"ID": "", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1",
                 "TaggedAddresses": {"lan": "10.0.0.1"}, "Meta": {"os": "linux"}},
        "Service": {"ID": "web1", "Service": "web", "Tags": ["v1", "primary"], "Address": "",
                    "TaggedAddresses": {"lan": {"Address": "10.0.0.1", "Port": 80}},
                    "Meta": {"version": "1.0"}, "Port": 8080,
                    "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false},
        "Checks": [{"Node": "n1", "CheckID": "c", "Name": "c", "Status": "passing",
                    "ServiceTags": ["v1"], "ExposedPort": 0}],
    });
    let catalog = serde_json::json!({
        "Node": "n1", "ServiceID": "web1", "ServiceName": "web", "ServiceTags": [],
        "ServiceMeta": {}, "ServicePort": 8080, "ServiceEnableTagOverride": true,
    });
    let health_filter = Filter::new(text, schema::CHECK_SERVICE_NODE);
    let catalog_filter = Filter::new(text, schema::SERVICE_NODE);
    let kept = |f: Result<Filter, FilterError>, item: &serde_json::Value| {
        f.map(|f| f.matches(item)).map_err(|e| e.to_string())
    };
    let catalog_kept = kept(catalog_filter, &catalog).unwrap_or(false);
    Ok((kept(health_filter, &health)?, catalog_kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    fn all(body: &[u8]) -> Vec<Result<Accepted, Refused>> {
        Endpoint::ALL.iter().map(|e| http_body(*e, body)).collect()
    }

    /// What must hold of any body at any endpoint: a refusal is the client's fault
    /// (400, or Consul's status where it differs), and an accepted change survives the
    /// Raft log.
    fn check(body: &[u8]) -> Result<(), TestCaseError> {
        for (endpoint, outcome) in Endpoint::ALL.iter().zip(all(body)) {
            match outcome {
                Ok(accepted) => {
                    prop_assert!(accepted.log_round_trips, "{:?}: {:?}", endpoint, accepted)
                }
                Err(refused) => prop_assert!(
                    endpoint.refusal_statuses().contains(&refused.status),
                    "{:?}: {} {}",
                    endpoint,
                    refused.status,
                    refused.message
                ),
            }
        }
        Ok(())
    }

    const KEYS: &[&str] = &[
        "Node",
        "Address",
        "ID",
        "Datacenter",
        "SkipNodeUpdate",
        "NodeMeta",
        "TaggedAddresses",
        "Service",
        "Name",
        "Tags",
        "Port",
        "Meta",
        "Weights",
        "Passing",
        "Warning",
        "EnableTagOverride",
        "Check",
        "Checks",
        "CheckID",
        "ServiceID",
        "Status",
        "Notes",
        "Output",
        "HTTP",
        "TCP",
        "Args",
        "Interval",
        "Timeout",
        "TTL",
        "DeregisterCriticalServiceAfter",
        "Failover",
        "NearestN",
        "Datacenters",
        "Targets",
        "OnlyPassing",
        "IgnoreCheckIDs",
        "Near",
        "ServiceMeta",
        "DNS",
        "Template",
        "Type",
        "Connect",
        "Enabled",
        "Session",
        "Token",
        "Peer",
        "Kind",
        "port",
        "check",
        "service_id",
        "enable_tag_override",
        "KV",
        "Verb",
        "Key",
        "Value",
        "Flags",
        "Index",
        "LockDelay",
        "Behavior",
        "NodeChecks",
        "ServiceChecks",
    ];

    /// JSON values of every type, nested, with the keys the endpoints look for.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|n| json!(n)),
            prop_oneof![
                Just("passing".to_string()),
                Just("critical".to_string()),
                Just("10s".to_string()),
                Just("-1s".to_string()),
                Just("web".to_string()),
                Just("set".to_string()),
                Just("lock".to_string()),
                Just("delete-tree".to_string()),
                Just("s1".to_string()),
                Just("YQ==".to_string()),
                Just("127.0.0.1".to_string()),
                "\\PC{0,16}",
            ]
            .prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(
                    |fields| {
                        Value::Object(
                            fields
                                .into_iter()
                                .map(|(k, v)| (k.to_string(), v))
                                .collect::<Map<String, Value>>(),
                        )
                    }
                ),
            ]
        })
    }

    #[test]
    fn a_catalog_registration_is_accepted_and_applies() {
        let body = br#"{"Node": "n1", "Address": "10.0.0.1",
            "Service": {"Service": "web", "Port": 80, "Tags": ["rails"]},
            "Check": {"Name": "alive", "Status": "passing", "ServiceID": "web"}}"#;
        let accepted = http_body(Endpoint::CatalogRegister, body).unwrap();
        let Some(Command::Register(r)) = &accepted.command else {
            panic!("{accepted:?}");
        };
        assert_eq!(r.node.datacenter, LOCAL_DC);
        assert!(accepted.log_round_trips);
        let mut state = State::new();
        state.apply(1, accepted.command.as_ref().unwrap()).unwrap();
    }

    #[test]
    fn empty_and_broken_bodies_are_400s() {
        for body in [
            &b""[..],
            b"  ",
            b"{",
            b"[]",
            b"null",
            b"\"x\"",
            b"{\"Node\": 1}",
        ] {
            for (endpoint, outcome) in Endpoint::ALL.iter().zip(all(body)) {
                // A session needs no body, and a transaction may hold no operation.
                let fine = matches!(
                    (endpoint, body),
                    (Endpoint::SessionCreate, b"" | b"  ") | (Endpoint::Txn, b"[]")
                );
                if fine {
                    assert!(outcome.is_ok(), "{endpoint:?} {body:?}");
                } else {
                    assert_eq!(outcome.unwrap_err().status, 400, "{endpoint:?} {body:?}");
                }
            }
        }
    }

    #[test]
    fn seeds_are_accepted_somewhere() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/http_body");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let body = std::fs::read(&path).unwrap();
            assert!(
                all(&body).iter().any(Result::is_ok),
                "{} is refused everywhere",
                path.display()
            );
            seen += 1;
        }
        assert!(seen > 0, "no seeds in {}", dir.display());
    }

    /// A snapshot file of a small catalog: two nodes, a service on each, a check bound to
    /// a service and a node check, and a prepared query.
    fn snapshot_file() -> Value {
        let mut state = State::new();
        let bodies: [&[u8]; 3] = [
            br#"{"Node": "n1", "Address": "10.0.0.1", "Service": {"Service": "web", "Port": 80},
                "Check": {"Name": "alive", "Status": "passing", "ServiceID": "web"}}"#,
            br#"{"Node": "n2", "Address": "10.0.0.2",
                "Service": {"ID": "db1", "Service": "db", "Port": 5432},
                "Check": {"CheckID": "disk", "Name": "disk", "Status": "warning"}}"#,
            br#"{"Name": "web-q", "Service": {"Service": "web"}}"#,
        ];
        let endpoints = [
            Endpoint::CatalogRegister,
            Endpoint::CatalogRegister,
            Endpoint::QueryCreate,
        ];
        for (i, (endpoint, body)) in endpoints.into_iter().zip(bodies).enumerate() {
            let command = http_body(endpoint, body).unwrap().command.unwrap();
            state.apply(i as u64 + 1, &command).unwrap();
        }
        json!({"Format": "proconsul-snapshot", "Version": 1, "Datacenter": "dc1",
            "Catalog": state.to_snapshot()})
    }

    /// Changes one field or entry of a snapshot file: `kind` picks what, `at` which
    /// entry, `choice` the new value.
    fn mutate(file: &mut Value, kind: u8, at: usize, choice: usize) {
        const NAMES: [&str; 5] = ["n1", "N1", "n2", "n3", ""];
        const IDS: [&str; 5] = ["web", "WEB", "db1", "alive", ""];
        let catalog = &mut file["Catalog"];
        let table = ["nodes", "services", "checks", "queries"][usize::from(kind % 4)];
        let Some(rows) = catalog[table].as_array_mut() else {
            return;
        };
        if rows.is_empty() {
            return;
        }
        let i = at % rows.len();
        match kind / 4 {
            // A duplicate entry, or a missing one.
            0 => {
                let copy = rows[i].clone();
                rows.push(copy);
            }
            1 => {
                rows.remove(i);
            }
            // A name or key changed.
            _ => {
                let name = json!(NAMES[choice % NAMES.len()]);
                let id = json!(IDS[choice % IDS.len()]);
                match table {
                    "nodes" => rows[i]["name"] = name,
                    "services" if choice.is_multiple_of(2) => rows[i][0] = name,
                    "services" => rows[i][1]["id"] = id,
                    "checks" => match choice % 3 {
                        0 => rows[i]["node"] = name,
                        1 => rows[i]["check_id"] = id,
                        _ => rows[i]["service_id"] = id,
                    },
                    _ => rows[i]["id"] = id,
                }
            }
        }
    }

    #[test]
    fn a_snapshot_file_restores_and_broken_ones_are_400s_that_say_why() {
        let file = snapshot_file();
        let accepted = http_body(Endpoint::SnapshotRestore, file.to_string().as_bytes())
            .expect("a snapshot the catalog wrote restores");
        assert!(matches!(accepted.command, Some(Command::Restore(_))));
        assert!(accepted.log_round_trips);
        // (kind, at, choice) as `mutate` reads them, and what the refusal must say.
        let cases: [(u8, usize, usize, &str); 5] = [
            // The service on n1 moved to n3.
            (
                9,
                0,
                8,
                "service \"web\" is on node \"n3\", which the snapshot does not hold",
            ),
            (0, 0, 0, "node \"n1\" appears twice"),
            // n1 gone, its service left behind.
            (
                4,
                0,
                0,
                "is on node \"n1\", which the snapshot does not hold",
            ),
            (2, 0, 0, "appears twice on node \"n1\""),
            // n1's check bound to a service of n2.
            (
                10,
                0,
                2,
                "is for service \"db1\", which node \"n1\" does not have",
            ),
        ];
        for (kind, at, choice, why) in cases {
            let mut broken = file.clone();
            mutate(&mut broken, kind, at, choice);
            let refused =
                http_body(Endpoint::SnapshotRestore, broken.to_string().as_bytes()).unwrap_err();
            assert_eq!(refused.status, 400);
            assert!(
                refused.message.contains("invalid snapshot") && refused.message.contains(why),
                "{why}: {}",
                refused.message
            );
        }
    }

    #[test]
    fn a_keyring_body_needs_a_valid_key() {
        let key = gossip::keyring::Key::generate().to_base64();
        let body = json!({"Key": key}).to_string();
        assert!(http_body(Endpoint::KeyringKey, body.as_bytes()).is_ok());
        for bad in [
            r#"{"Key": "c2hvcnQ="}"#,
            r#"{"Key": 7}"#,
            r#"{"key": ""}"#,
            r#"{}"#,
        ] {
            let refused = http_body(Endpoint::KeyringKey, bad.as_bytes()).unwrap_err();
            assert_eq!(refused.status, 400, "{bad}: {}", refused.message);
        }
    }

    proptest! {
        #[test]
        fn snapshot_files_with_changed_entries_restore_consistently_or_are_400s(
            changes in proptest::collection::vec((0u8..12, 0usize..4, 0usize..6), 1..4),
        ) {
            let mut file = snapshot_file();
            for (kind, at, choice) in changes {
                mutate(&mut file, kind, at, choice);
            }
            check(file.to_string().as_bytes())?;
        }

        #[test]
        fn transactions_of_random_operations_apply_whole_or_leave_no_trace(
            ops in proptest::collection::vec(
                (
                    proptest::sample::select(&[
                        "set", "cas", "lock", "unlock", "get", "get-tree", "check-index",
                        "check-session", "check-not-exists", "delete", "delete-tree",
                        "delete-cas", "nope",
                    ][..]),
                    proptest::sample::select(&["", "a", "a/b", "b", "lock", "new"][..]),
                    0u64..8,
                    proptest::sample::select(&["", "s1", "s2"][..]),
                    any::<bool>(),
                ),
                0..8,
            ),
        ) {
            let body: Vec<Value> = ops
                .iter()
                .map(|(verb, key, index, session, with_value)| {
                    let mut kv = json!({"Verb": verb, "Key": key, "Index": index, "Session": session});
                    if *with_value {
                        kv["Value"] = json!("dg==");
                    }
                    json!({"KV": kv})
                })
                .collect();
            check(&serde_json::to_vec(&body).unwrap())?;
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            check(&body)?;
        }

        #[test]
        fn json_with_random_field_types_is_accepted_or_a_400(v in value()) {
            check(&serde_json::to_vec(&v).unwrap())?;
        }

        #[test]
        fn registrations_with_one_random_field_are_accepted_or_a_400(
            key in proptest::sample::select(KEYS),
            v in value(),
            nested in any::<bool>(),
        ) {
            let mut body = json!({
                "Node": "n1", "Address": "10.0.0.1", "Name": "web",
                "Service": {"Service": "web", "Name": "web", "Port": 80},
                "TTL": "10s", "Status": "passing",
            });
            let target = if nested { &mut body["Service"] } else { &mut body };
            target[key] = v;
            check(&serde_json::to_vec(&body).unwrap())?;
        }
    }
}
