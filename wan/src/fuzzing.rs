//! Entry points for the `wan_frame` fuzz target in `fuzz/` and its property tests: the
//! request of an incoming WAN stream, as a peer's bytes, through the code the endpoint
//! reads it with. Not part of the API; every function returns normally for any input,
//! and a panic in one is a bug in the code it calls.
//!
//! Datagrams are gossip packets, fuzzed by `lan::fuzzing::gossip_packet`.

use crate::endpoint::{KIND_GOSSIP, KIND_RPC, StreamRequest, parse_request};
use crate::rpc::Request;

/// What the endpoint makes of a stream's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stream {
    /// A gossip stream, with the answers of a plaintext and an encrypted pool.
    Gossip(gossip::fuzzing::FrameAnswers),
    /// An RPC that decoded.
    Rpc {
        /// The request.
        request: Box<Request>,
        /// Whether it encodes back to JSON that decodes to the same request (what the
        /// calling side sends for it).
        round_trips: bool,
    },
    /// An RPC payload that is not a request: answered with an error.
    Unreadable,
    /// No known kind: the stream is closed without an answer.
    Unknown,
}

/// The request of a stream as the endpoint reads it ([`parse_request`]); the rest of a
/// gossip stream goes on to the pools as [`crate::endpoint`] hands it to its pool
/// ([`lan::Inbound::serve`]), and a decoded write
/// is applied to an empty catalog, as the receiving datacenter's leader applies it once
/// committed. Needs a Tokio runtime with timers.
pub async fn stream(bytes: &[u8]) -> Stream {
    match parse_request(bytes) {
        StreamRequest::Gossip(rest) => Stream::Gossip(gossip::fuzzing::gossip_stream(rest).await),
        StreamRequest::Rpc(Ok(request)) => {
            let encoded = serde_json::to_vec(&request).expect("a request serialises");
            let round_trips =
                serde_json::from_slice::<Request>(&encoded).ok() == Some(request.clone());
            if let Request::Write { command, .. } = &request {
                let _ = catalog::State::new().apply(1, command);
            }
            Stream::Rpc {
                request: Box::new(request),
                round_trips,
            }
        }
        StreamRequest::Rpc(Err(_)) => Stream::Unreadable,
        StreamRequest::Unknown => Stream::Unknown,
    }
}

/// The bytes of a stream carrying `request`, as [`crate::Endpoint::call`] sends them.
pub fn rpc_stream(request: &Request) -> Vec<u8> {
    let mut bytes = vec![KIND_RPC];
    bytes.extend_from_slice(&serde_json::to_vec(request).expect("a request serialises"));
    bytes
}

/// The bytes of a stream carrying a gossip stream frame.
pub fn gossip_stream(frame: &[u8]) -> Vec<u8> {
    let mut bytes = vec![KIND_GOSSIP];
    bytes.extend_from_slice(frame);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::{Command, Deregistration, Query};
    use catalog::{Consistency, SentReadOptions};
    use gossip::KeyOperation;
    use proptest::prelude::*;

    fn runtime() -> &'static tokio::runtime::Runtime {
        static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        })
    }

    fn run(bytes: &[u8]) -> Stream {
        runtime().block_on(stream(bytes))
    }

    fn text() -> impl Strategy<Value = String> {
        "[ -~]{0,12}"
    }

    /// Valid requests with random fields.
    fn request() -> impl Strategy<Value = Request> {
        let consistency = prop_oneof![
            Just(Consistency::Default),
            Just(Consistency::Stale),
            Just(Consistency::Consistent)
        ];
        let options = (
            consistency,
            any::<u64>(),
            any::<u64>(),
            any::<Option<u64>>(),
        )
            .prop_map(|(consistency, min_index, timeout_ms, max_stale_ms)| {
                SentReadOptions {
                    consistency,
                    min_index,
                    timeout_ms,
                    max_stale_ms,
                }
            });
        let query = prop_oneof![
            text().prop_map(|node| Query::NodeServices { node }),
            (
                text(),
                proptest::collection::vec(text(), 0..3),
                any::<bool>()
            )
                .prop_map(|(service, tags, passing_only)| Query::ServiceHealth {
                    service,
                    tags,
                    passing_only,
                    node_meta: Vec::new(),
                }),
            Just(Query::Snapshot),
        ];
        prop_oneof![
            Just(Request::Ping),
            (text(), any::<u64>()).prop_map(|(key, timeout_ms)| Request::Keyring {
                op: KeyOperation::Install(key),
                timeout_ms,
            }),
            (query, options).prop_map(|(query, options)| Request::Read { query, options }),
            (text(), any::<Option<String>>(), any::<u64>()).prop_map(
                |(node, service_id, timeout_ms)| Request::Write {
                    command: Box::new(Command::Deregister(Deregistration {
                        node,
                        service_id,
                        check_id: None,
                    })),
                    timeout_ms,
                }
            ),
            any::<u64>().prop_map(|timeout_ms| Request::Status { timeout_ms }),
        ]
    }

    #[test]
    fn kinds_are_told_apart() {
        assert_eq!(run(b""), Stream::Unknown);
        assert_eq!(run(b"X{}"), Stream::Unknown);
        assert_eq!(run(b"R{"), Stream::Unreadable);
        assert!(matches!(
            run(&rpc_stream(&Request::Ping)),
            Stream::Rpc {
                round_trips: true,
                ..
            }
        ));
        assert!(matches!(run(&gossip_stream(b"")), Stream::Gossip(_)));
    }

    #[test]
    fn seeds_are_accepted() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/wan_frame");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            match run(&bytes) {
                Stream::Rpc { round_trips, .. } => assert!(round_trips),
                Stream::Gossip(answers) => assert!(!answers.encrypted.is_empty()),
                other => panic!("a seed is {other:?}"),
            }
            seen += 1;
        }
        assert!(seen > 0, "no seeds in {}", dir.display());
    }

    proptest! {
        #[test]
        fn arbitrary_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Stream::Rpc { round_trips, .. } = run(&bytes) {
                prop_assert!(round_trips);
            }
        }

        #[test]
        fn requests_round_trip(request in request()) {
            let decoded = run(&rpc_stream(&request));
            prop_assert_eq!(decoded, Stream::Rpc { request: Box::new(request), round_trips: true });
        }

        #[test]
        fn requests_with_random_field_types_never_panic(
            kind in prop_oneof![Just("Read"), Just("Write"), Just("Keyring"), Just("Status"), Just("Ping")],
            field in prop_oneof![Just("query"), Just("options"), Just("command"), Just("op"), Just("timeout_ms")],
            value in prop_oneof![
                Just("1".to_string()), Just("-1".to_string()), Just("1e99".to_string()),
                Just("\"x\"".to_string()), Just("null".to_string()), Just("[]".to_string()),
                Just("{}".to_string()), Just("{\"Snapshot\":null}".to_string()),
                Just("{\"Restore\":{}}".to_string()), "[ -~]{0,20}",
            ],
        ) {
            let body = format!("{{\"{kind}\":{{\"{field}\":{value}}}}}");
            let mut bytes = vec![b'R'];
            bytes.extend_from_slice(body.as_bytes());
            if let Stream::Rpc { round_trips, .. } = run(&bytes) {
                prop_assert!(round_trips);
            }
        }
    }
}
