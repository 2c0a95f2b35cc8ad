//! Entry points for the fuzz targets in `fuzz/` and for their property tests: bytes as
//! a peer sends them, through the code that handles a received gossip packet or gossip
//! stream. Not part of the API; every function returns normally for any input, and a
//! panic in one is a bug in the code it calls.
//!
//! The receiving member has gossip encryption on, with [`test_keyring`], and still
//! accepts plaintext (`encrypt_verify_incoming = false`, as during a key roll-out): a
//! sealed message is opened with the test key, anything else goes to the decoder as it
//! is, so arbitrary bytes reach the decoder and the engine. Streams also go to a member
//! without encryption, the only one that reads a plaintext keyring request. A fuzzer
//! cannot forge a chunk's tag, so [`sealed_frame`] seals chosen payloads with the test
//! key to reach what follows authentication.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::keyring::{Key, Keyring};
use crate::stream::{self, Expect, Kind, Opener};
use crate::swim::message::decode_packet;
use crate::swim::{self, Engine, Output};
use crate::transport::{
    self, Crypto, Encryption, Exchange, JoinError, Link, PacketError, Pool, PoolConfig,
};

/// The key of [`test_keyring`]. Never a key of a real pool.
pub const TEST_KEY: [u8; 32] = *b"proconsul fuzzing key, not real!";

/// Ticks of the engine after a packet it accepted: enough for its probe, gossip and
/// suspicion timers to act on what the packet told it.
const TICKS: usize = 32;

/// The address the fuzzed member is at.
fn own_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8301))
}

/// The address fuzzed packets come from.
pub fn peer_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2], 8301))
}

/// The keyring the fuzzed member holds: [`TEST_KEY`] alone.
pub fn test_keyring() -> Keyring {
    Keyring::new(Key::from_bytes(TEST_KEY.to_vec()).expect("a 32-byte key"))
}

fn test_encryption() -> Encryption {
    Encryption {
        keyring: test_keyring(),
        file: None,
        verify_incoming: false,
        verify_outgoing: true,
    }
}

/// Seals a plaintext packet as a member holding [`TEST_KEY`] sends it (for seeds and
/// tests).
pub fn seal_packet(plaintext: &[u8]) -> Vec<u8> {
    test_keyring().seal(plaintext, transport::PACKET_AAD)
}

/// A stream frame whose header names `kind` (a [`Kind`]'s byte) carrying `payload`,
/// sealed in chunks with [`TEST_KEY`] as a member holding it sends it; `None` when the
/// byte names no kind or the payload is over the kind's limit.
pub fn sealed_frame(kind: u8, payload: &[u8]) -> Option<Vec<u8>> {
    let kind = Kind::from_byte(kind)?;
    stream::encode(kind, payload, Some(test_keyring().primary())).ok()
}

/// A frame of `kind` carrying `payload`, sealed with [`TEST_KEY`] or plaintext.
pub fn frame(kind: Kind, payload: &[u8], seal: bool) -> Vec<u8> {
    let key = test_keyring().primary().clone();
    stream::encode(kind, payload, seal.then_some(&key)).expect("a payload within the limit")
}

/// What became of a received packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// It did not open (sealed with another key, or malformed).
    Refused,
    /// It opened, but did not decode.
    Undecodable,
    /// The engine took it.
    Handled {
        /// The packets the engine sent afterwards, plaintext (in answer, and on its
        /// timers over the following [`TICKS`] deadlines).
        sent: Vec<Vec<u8>>,
    },
}

/// A packet from [`peer_addr`] to a new one-member pool, as its driver receives it
/// ([`transport::receive_packet`]), then the engine's timers run over what it learnt.
pub fn gossip_packet(bytes: &[u8]) -> Packet {
    let crypto = Crypto::new(Some(test_encryption()));
    let now = Instant::now();
    let mut engine = Engine::new(
        swim::Config::lan(),
        "fuzzed".into(),
        own_addr(),
        BTreeMap::new(),
        now,
        0,
    );
    match transport::receive_packet(&crypto, &mut engine, now, peer_addr(), bytes) {
        Err(PacketError::Refused(_)) => Packet::Refused,
        Err(PacketError::Undecodable(_)) => Packet::Undecodable,
        Ok(()) => {
            let mut sent = Vec::new();
            let mut collect = |engine: &mut Engine| {
                for output in engine.take_outputs() {
                    if let Output::Packet { bytes, .. } = output {
                        sent.push(bytes);
                    }
                }
                engine.take_events();
            };
            collect(&mut engine);
            for _ in 0..TICKS {
                let next = engine.next_deadline();
                engine.tick(next);
                collect(&mut engine);
            }
            Packet::Handled { sent }
        }
    }
}

/// Whether a packet the engine sent decodes, as its receiver would decode it.
pub fn sent_packet_decodes(bytes: &[u8]) -> bool {
    decode_packet(bytes).is_ok()
}

/// A link that loses everything: the fuzzed pools have no peers to reach.
struct NoLink;

impl Link for NoLink {
    fn local_addr(&self) -> SocketAddr {
        own_addr()
    }

    fn send_packet(&self, _to: SocketAddr, _bytes: Vec<u8>) {}

    fn exchange(&self, _to: SocketAddr, _frame: Vec<u8>) -> Exchange<'_> {
        Box::pin(async { Err(JoinError::Io("no link while fuzzing".into())) })
    }
}

/// The answers of two new one-member pools to one gossip stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameAnswers {
    /// A pool without encryption: what it wrote back (empty when it closed the stream
    /// without an answer).
    pub plaintext: Vec<u8>,
    /// A pool holding [`test_keyring`] that accepts plaintext too.
    pub encrypted: Vec<u8>,
}

/// A gossip stream from [`peer_addr`] whose bytes are `bytes`, as
/// [`transport::Inbound::serve`] serves it (the LAN pool's TCP streams and the WAN pool's
/// QUIC streams alike), to a plaintext pool and to an encrypted one. Needs a Tokio
/// runtime with timers.
pub async fn gossip_stream(bytes: &[u8]) -> FrameAnswers {
    FrameAnswers {
        plaintext: stream_to_pool(None, bytes).await,
        encrypted: stream_to_pool(Some(test_encryption()), bytes).await,
    }
}

async fn stream_to_pool(encryption: Option<Encryption>, bytes: &[u8]) -> Vec<u8> {
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let config = PoolConfig {
        name: "fuzzed".into(),
        bind: own_addr(),
        advertise: own_addr().ip(),
        advertise_port: None,
        tags: BTreeMap::new(),
        gossip: swim::Config::lan(),
        encryption,
    };
    let (_pool, inbound) =
        Pool::start_with(config, Arc::new(NoLink), "LAN", &tasks, shutdown.clone());
    let (mut recv, mut answer) = (bytes, Vec::new());
    // A stream that ends early is the stream's error; whatever was written stays.
    let _ = inbound.serve(peer_addr(), &mut recv, &mut answer).await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    answer
}

/// Reads `bytes` as the request frame of a stream, the way a pool holding
/// [`test_keyring`] reads it (refusing plaintext when `strict`); returns the frame's kind
/// and payload, or why it was refused.
pub async fn read_request(bytes: &[u8], strict: bool) -> Result<(Kind, Vec<u8>), String> {
    let opener = Opener {
        keyring: Some(test_keyring()),
        verify_incoming: strict,
    };
    let budget = stream::budget();
    let mut grant = budget.grant(peer_addr().ip());
    let mut recv = bytes;
    stream::read(&mut recv, &opener, Expect::Request, &mut grant)
        .await
        .map(|f| (f.kind, f.payload))
        .map_err(|e| e.to_string())
}

/// Whether `answer` is what a pool may write back: nothing, an error frame, or (from the
/// encrypted pool) a frame sealed with [`test_keyring`], or (from the plaintext pool) a
/// plaintext one; either a keyring answer or a push-pull that decodes, with nothing after
/// it.
pub async fn answer_is_well_formed(answer: &[u8], encrypted: bool) -> bool {
    if answer.is_empty() {
        return true;
    }
    let opener = Opener {
        keyring: encrypted.then(test_keyring),
        verify_incoming: encrypted,
    };
    let budget = stream::budget();
    for asked in [Kind::PushPull, Kind::KeyRequest] {
        let mut grant = budget.grant(own_addr().ip());
        let mut rest = answer;
        let Ok(frame) = stream::read(&mut rest, &opener, Expect::Answer(asked), &mut grant).await
        else {
            continue;
        };
        return rest.is_empty()
            && match frame.kind {
                Kind::Error => std::str::from_utf8(&frame.payload).is_ok(),
                Kind::KeyAnswer => true,
                Kind::PushPull => matches!(
                    swim::message::decode_frame(&frame.payload),
                    Ok(swim::message::Message::PushPull { .. })
                ),
                Kind::KeyRequest => false,
            };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swim::message::{Message, encode_frame, encode_packet};
    use crate::swim::{MemberState, State};
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

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![Just("fuzzed".to_string()), "[a-z0-9.-]{0,12}"]
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port)))
    }

    fn tags() -> impl Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map("[a-z_]{1,8}", "[ -~]{0,12}", 0..4)
    }

    /// Valid packet messages with random fields.
    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u32>(), name(), name()).prop_map(|(seq, target, source)| Message::Ping {
                seq,
                target,
                source
            }),
            (any::<u32>(), name(), addr(), any::<bool>()).prop_map(
                |(seq, target, target_addr, nack)| Message::IndirectPing {
                    seq,
                    target,
                    target_addr,
                    nack
                }
            ),
            any::<u32>().prop_map(|seq| Message::Ack { seq }),
            any::<u32>().prop_map(|seq| Message::Nack { seq }),
            (any::<u32>(), name(), addr(), tags()).prop_map(|(incarnation, node, addr, tags)| {
                Message::Alive {
                    incarnation,
                    node,
                    addr,
                    tags,
                }
            }),
            (any::<u32>(), name(), name()).prop_map(|(incarnation, node, from)| {
                Message::Suspect {
                    incarnation,
                    node,
                    from,
                }
            }),
            (any::<u32>(), name(), name()).prop_map(|(incarnation, node, from)| Message::Dead {
                incarnation,
                node,
                from
            }),
            (any::<u32>(), name())
                .prop_map(|(incarnation, node)| Message::Prune { incarnation, node }),
            (
                any::<u64>(),
                name(),
                name(),
                proptest::collection::vec(any::<u8>(), 0..64),
                "[a-z^$.*]{0,8}",
            )
                .prop_map(|(ltime, id, name, payload, filter)| {
                    Message::UserEvent(swim::UserEvent {
                        ltime,
                        id,
                        name,
                        payload,
                        node_filter: filter.clone(),
                        service_filter: filter.clone(),
                        tag_filter: filter,
                    })
                }),
        ]
    }

    fn packet() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(message(), 0..8).prop_map(|m| encode_packet(&m))
    }

    fn member_state() -> impl Strategy<Value = MemberState> {
        let state = prop_oneof![
            Just(State::Alive),
            Just(State::Suspect),
            Just(State::Dead),
            Just(State::Left)
        ];
        (name(), addr(), any::<u32>(), state, tags()).prop_map(
            |(name, addr, incarnation, state, tags)| MemberState {
                name,
                addr,
                incarnation,
                state,
                tags: std::sync::Arc::new(tags),
            },
        )
    }

    fn assert_sent_decodes(outcome: &Packet) {
        if let Packet::Handled { sent } = outcome {
            for bytes in sent {
                assert!(sent_packet_decodes(bytes), "sent an undecodable packet");
            }
        }
    }

    #[test]
    fn a_sealed_ping_is_answered() {
        let ping = encode_packet(&[Message::Ping {
            seq: 1,
            target: "fuzzed".into(),
            source: "peer".into(),
        }]);
        let Packet::Handled { sent } = gossip_packet(&seal_packet(&ping)) else {
            panic!("a sealed ping is handled");
        };
        assert!(!sent.is_empty(), "the ping gets an ack");
        assert_eq!(gossip_packet(&ping), gossip_packet(&ping), "deterministic");
    }

    /// The kind and payload of a sealed answer frame.
    async fn read_request_as_answer(answer: &[u8]) -> Result<(Kind, Vec<u8>), String> {
        let opener = Opener {
            keyring: Some(test_keyring()),
            verify_incoming: true,
        };
        let budget = stream::budget();
        let mut grant = budget.grant(own_addr().ip());
        let mut rest = answer;
        stream::read(
            &mut rest,
            &opener,
            Expect::Answer(Kind::PushPull),
            &mut grant,
        )
        .await
        .map(|f| (f.kind, f.payload))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_sealed_keyring_listing_is_answered_and_a_plaintext_one_refused() {
        let list = serde_json::to_vec(&transport::KeyOperation::List).unwrap();
        let sealed = runtime().block_on(gossip_stream(&frame(Kind::KeyRequest, &list, true)));
        assert_eq!(sealed.encrypted.first(), Some(&b'S'));
        assert!(runtime().block_on(answer_is_well_formed(&sealed.encrypted, true)));
        let plain = runtime().block_on(gossip_stream(&frame(Kind::KeyRequest, &list, false)));
        let refused =
            stream::error_frame("keyring requests must be encrypted with an installed key");
        assert_eq!(plain.encrypted, refused);
        assert!(runtime().block_on(answer_is_well_formed(&plain.plaintext, false)));
    }

    #[test]
    fn seeds_are_accepted() {
        // `stream-*` seeds are a frame's kind byte and payload, for the fuzz target to
        // seal (`sealed_frame`); the others are packets.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/gossip");
        let (mut packets, mut streams) = (0, 0);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let bytes = std::fs::read(entry.path()).unwrap();
            if entry.file_name().to_string_lossy().starts_with("stream-") {
                let (&kind, payload) = bytes.split_first().unwrap();
                let frame = sealed_frame(kind, payload).unwrap();
                let answers = runtime().block_on(gossip_stream(&frame));
                assert_eq!(answers.encrypted.first(), Some(&b'S'), "{entry:?}");
                assert!(runtime().block_on(answer_is_well_formed(&answers.encrypted, true)));
                streams += 1;
            } else {
                assert!(matches!(gossip_packet(&bytes), Packet::Handled { .. }));
                packets += 1;
            }
        }
        assert!(
            packets > 0 && streams > 0,
            "seeds missing in {}",
            dir.display()
        );
    }

    proptest! {
        #[test]
        fn arbitrary_packets_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            assert_sent_decodes(&gossip_packet(&bytes));
        }

        #[test]
        fn valid_packets_are_handled_plain_or_sealed(packet in packet()) {
            let plain = gossip_packet(&packet);
            prop_assert!(matches!(plain, Packet::Handled { .. }), "{:?}", plain);
            assert_sent_decodes(&plain);
            let sealed = gossip_packet(&seal_packet(&packet));
            prop_assert!(matches!(sealed, Packet::Handled { .. }), "{:?}", sealed);
        }

        #[test]
        fn a_sealed_packet_with_a_flipped_bit_is_never_handled(
            packet in packet(),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut sealed = seal_packet(&packet);
            let i = at.index(sealed.len());
            sealed[i] ^= 1 << bit;
            let outcome = gossip_packet(&sealed);
            prop_assert!(!matches!(outcome, Packet::Handled { .. }), "{:?}", outcome);
        }

        #[test]
        fn a_packet_sealed_with_another_key_is_refused(packet in packet(), key in any::<[u8; 32]>()) {
            prop_assume!(key != TEST_KEY);
            let other = Keyring::new(Key::from_bytes(key.to_vec()).unwrap());
            let sealed = other.seal(&packet, transport::PACKET_AAD);
            prop_assert_eq!(gossip_packet(&sealed), Packet::Refused);
        }

        #[test]
        fn arbitrary_streams_get_well_formed_answers(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let answers = runtime().block_on(gossip_stream(&bytes));
            prop_assert!(runtime().block_on(answer_is_well_formed(&answers.plaintext, false)));
            prop_assert!(runtime().block_on(answer_is_well_formed(&answers.encrypted, true)));
        }

        #[test]
        fn arbitrary_bytes_are_never_a_request_to_a_strict_member(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            header in (0usize..4, any::<u32>()),
        ) {
            // As sent, and behind a well-formed header (a sealed push-pull or keyring
            // request of any length), so that the chunk reader gets to work.
            prop_assert!(runtime().block_on(read_request(&bytes, true)).is_err());
            let (mode, kind) = [(b'S', Kind::PushPull), (b'S', Kind::KeyRequest), (b'P', Kind::PushPull), (b'S', Kind::KeyAnswer)][header.0];
            let mut framed = vec![mode, kind.byte()];
            framed.extend_from_slice(&(header.1 % (2 * stream::CHUNK as u32)).to_be_bytes());
            framed.extend_from_slice(&bytes);
            prop_assert!(runtime().block_on(read_request(&framed, true)).is_err());
        }

        #[test]
        fn sealed_payloads_get_well_formed_answers(kind in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(frame) = sealed_frame(kind, &payload) {
                let answers = runtime().block_on(gossip_stream(&frame));
                prop_assert!(runtime().block_on(answer_is_well_formed(&answers.encrypted, true)));
                prop_assert!(runtime().block_on(answer_is_well_formed(&answers.plaintext, false)));
            }
        }

        #[test]
        fn push_pulls_are_answered_with_the_pools_state(
            states in proptest::collection::vec(member_state(), 0..6),
            join in any::<bool>(),
            seal in any::<bool>(),
        ) {
            let payload = encode_frame(&Message::PushPull { join, states });
            let request = frame(Kind::PushPull, &payload, seal);
            let answers = runtime().block_on(gossip_stream(&request));
            prop_assert!(runtime().block_on(answer_is_well_formed(&answers.encrypted, true)));
            prop_assert_eq!(answers.encrypted.first(), Some(&b'S'), "a sealed push-pull answer");
            let (kind, _) = runtime().block_on(read_request_as_answer(&answers.encrypted)).unwrap();
            prop_assert_eq!(kind, Kind::PushPull);
            if !seal {
                prop_assert_eq!(answers.plaintext.first(), Some(&b'P'));
                prop_assert!(runtime().block_on(answer_is_well_formed(&answers.plaintext, false)));
            }
        }

        #[test]
        fn keyring_requests_with_random_json_never_panic(json in "[ -~]{0,60}", seal in any::<bool>()) {
            let request = frame(Kind::KeyRequest, json.as_bytes(), seal);
            let answers = runtime().block_on(gossip_stream(&request));
            prop_assert!(runtime().block_on(answer_is_well_formed(&answers.encrypted, true)));
            prop_assert!(runtime().block_on(answer_is_well_formed(&answers.plaintext, false)));
        }
    }
}
