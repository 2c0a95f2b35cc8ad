//! Entry points for the fuzz targets in `fuzz/` and for their property tests: request
//! bodies of the HTTP write endpoints and raw DNS requests, through the code the
//! handlers and the DNS serving loops run. Not part of the API; every function returns
//! normally for any input, and a panic in one is a bug in the code it calls.

use gateway::Gateway;
use lan::catalog::{Command, State};
use tokio_util::task::TaskTracker;

use crate::dns::{DnsConfig, Server, Transport};
use crate::http::{ApiError, Params, agent, catalog, query};

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
}

impl Endpoint {
    /// Every endpoint with a body to parse.
    pub const ALL: [Endpoint; 7] = [
        Endpoint::CatalogRegister,
        Endpoint::CatalogDeregister,
        Endpoint::AgentServiceRegister,
        Endpoint::AgentCheckRegister,
        Endpoint::AgentCheckUpdate,
        Endpoint::QueryCreate,
        Endpoint::QueryUpdate,
    ];
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
            ApiError::TooManyRequests(m) => (429, m),
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
/// committed.
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
            let _ = State::new().apply(1, command);
            let log = serde_json::to_vec(command).expect("a command serialises");
            serde_json::from_slice::<Command>(&log).ok().as_ref() == Some(command)
        }
    };
    Ok(Accepted {
        command,
        log_round_trips,
    })
}

/// One agent's DNS request handling over a real gateway, without sockets: raw request
/// bytes in, raw answer bytes out, as the serving loops answer them.
pub struct DnsHarness {
    server: Server,
}

impl DnsHarness {
    /// Answers with `config` from `gateway`'s catalog.
    pub fn new(gateway: Gateway, config: DnsConfig) -> DnsHarness {
        DnsHarness {
            server: Server::new(gateway, config, &TaskTracker::new()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    fn all(body: &[u8]) -> Vec<Result<Accepted, Refused>> {
        Endpoint::ALL.iter().map(|e| http_body(*e, body)).collect()
    }

    /// What must hold of any body at any endpoint: a refusal is the client's fault
    /// (400), and an accepted change survives the Raft log.
    fn check(body: &[u8]) -> Result<(), TestCaseError> {
        for (endpoint, outcome) in Endpoint::ALL.iter().zip(all(body)) {
            match outcome {
                Ok(accepted) => {
                    prop_assert!(accepted.log_round_trips, "{:?}: {:?}", endpoint, accepted)
                }
                Err(refused) => {
                    prop_assert_eq!(refused.status, 400, "{:?}: {}", endpoint, refused.message)
                }
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
            for outcome in all(body) {
                assert_eq!(outcome.unwrap_err().status, 400, "{body:?}");
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

    proptest! {
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
