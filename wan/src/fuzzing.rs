//! Entry points for the `wan_frame` fuzz target in `fuzz/` and its property tests: the
//! request of an incoming WAN stream, as a peer's bytes, through the code the endpoint
//! reads it with. Not part of the API; every function returns normally for any input,
//! and a panic in one is a bug in the code it calls.
//!
//! Datagrams are gossip packets, fuzzed by `gossip::fuzzing::gossip_packet`.

use crate::endpoint::{KIND_GOSSIP, KIND_RPC, StreamRequest, parse_request};
use crate::rpc::Request;

/// What the endpoint makes of a stream's request.
#[derive(Debug)]
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
/// ([`gossip::Inbound::serve`]). Needs a Tokio runtime with timers.
pub async fn stream(bytes: &[u8]) -> Stream {
    match parse_request(bytes) {
        StreamRequest::Gossip(rest) => Stream::Gossip(gossip::fuzzing::gossip_stream(rest).await),
        StreamRequest::Rpc(Ok(request)) => {
            let encoded = serde_json::to_vec(&request).expect("a request serialises");
            let round_trips = serde_json::from_slice::<Request>(&encoded)
                .ok()
                .and_then(|again| serde_json::to_vec(&again).ok())
                == Some(encoded);
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

    /// Valid requests with random fields: pings, and relayed JSON of any shape.
    fn request() -> impl Strategy<Value = Request> {
        let json = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            text().prop_map(|t| serde_json::to_string(&t).unwrap()),
            (text(), any::<u64>())
                .prop_map(|(k, n)| serde_json::json!({ k: [n, null, true] }).to_string()),
        ];
        prop_oneof![
            Just(Request::Ping),
            json.prop_map(|j| Request::Relay(serde_json::value::RawValue::from_string(j).unwrap())),
        ]
    }

    #[test]
    fn kinds_are_told_apart() {
        assert!(matches!(run(b""), Stream::Unknown));
        assert!(matches!(run(b"X{}"), Stream::Unknown));
        assert!(matches!(run(b"R{"), Stream::Unreadable));
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
            let sent = rpc_stream(&request);
            match run(&sent) {
                Stream::Rpc { request: decoded, round_trips } => {
                    prop_assert!(round_trips);
                    prop_assert_eq!(rpc_stream(&decoded), sent);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn requests_with_random_field_types_never_panic(
            kind in prop_oneof![Just("Relay"), Just("Ping"), Just("Pong")],
            field in prop_oneof![Just("Read"), Just("node"), Just("timeout_ms")],
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
