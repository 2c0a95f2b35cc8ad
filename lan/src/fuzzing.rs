//! Entry points for the fuzz targets in `fuzz/` and for their property tests: bytes as
//! a peer sends them, through the code that handles a received gossip packet or stream
//! frame. Not part of the API; every function returns normally for any input, and a
//! panic in one is a bug in the code it calls.
//!
//! The receiving member has gossip encryption on, with [`test_keyring`], and still
//! accepts plaintext (`encrypt_verify_incoming = false`, as during a key roll-out): a
//! sealed message is opened with the test key, anything else goes to the decoder as it
//! is, so arbitrary bytes reach the decoder and the engine. Stream frames also go to a
//! member without encryption, the only one that reads a plaintext keyring request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gossip::message::decode_packet;
use crate::gossip::{self, Engine, Output};
use crate::keyring::{Key, Keyring};
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

/// Seals a plaintext stream frame as a member holding [`TEST_KEY`] sends it.
pub fn seal_frame(plaintext: &[u8]) -> Vec<u8> {
    test_keyring().seal(plaintext, transport::STREAM_AAD)
}

/// A plaintext keyring request frame (what `keyring -list` sends each member, before
/// sealing).
pub fn keyring_request(json: &[u8]) -> Vec<u8> {
    let mut frame = vec![transport::KEY_REQUEST];
    frame.extend_from_slice(json);
    frame
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
        gossip::Config::lan(),
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

/// The answers of two new one-member pools to one stream frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameAnswers {
    /// A pool without encryption: the frame's answer, or `None` when the stream is
    /// closed without one.
    pub plaintext: Option<Vec<u8>>,
    /// A pool holding [`test_keyring`] that accepts plaintext too.
    pub encrypted: Option<Vec<u8>>,
}

/// The one frame of a gossip stream from [`peer_addr`], as [`transport::Inbound::frame`]
/// serves it (the LAN pool's TCP streams and the WAN pool's QUIC streams alike), to a
/// plaintext pool and to an encrypted one. Needs a Tokio runtime with timers.
pub async fn gossip_frame(bytes: &[u8]) -> FrameAnswers {
    FrameAnswers {
        plaintext: frame_to_pool(None, bytes).await,
        encrypted: frame_to_pool(Some(test_encryption()), bytes).await,
    }
}

async fn frame_to_pool(encryption: Option<Encryption>, bytes: &[u8]) -> Option<Vec<u8>> {
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let config = PoolConfig {
        name: "fuzzed".into(),
        bind: own_addr(),
        advertise: own_addr().ip(),
        advertise_port: None,
        tags: BTreeMap::new(),
        gossip: gossip::Config::lan(),
        encryption,
    };
    let (_pool, inbound) =
        Pool::start_with(config, Arc::new(NoLink), "LAN", &tasks, shutdown.clone());
    let answer = inbound.frame(peer_addr(), bytes).await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    answer
}

/// Whether `answer` is a frame a pool may send back: an error frame, or (from the
/// encrypted pool) a frame that opens with [`test_keyring`], or (from the plaintext
/// pool) a keyring answer or a push-pull.
pub fn answer_is_well_formed(answer: &[u8], encrypted: bool) -> bool {
    if answer.first() == Some(&transport::ERROR_FRAME) {
        return true;
    }
    let plain = if encrypted {
        match test_keyring().open(answer, transport::STREAM_AAD) {
            Ok(p) => p,
            Err(_) => return false,
        }
    } else {
        answer.to_vec()
    };
    match plain.first() {
        Some(&transport::KEY_ANSWER) => true,
        Some(&gossip::message::PROTOCOL) => matches!(
            gossip::message::decode_frame(&plain),
            Ok(gossip::message::Message::PushPull { .. })
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::message::{Message, encode_frame, encode_packet};
    use crate::gossip::{MemberState, State};
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
                tags,
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

    #[test]
    fn seeds_are_accepted() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/gossip");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(matches!(gossip_packet(&bytes), Packet::Handled { .. }));
            seen += 1;
        }
        assert!(seen > 0, "no seeds in {}", dir.display());
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
        fn arbitrary_frames_get_well_formed_answers(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let answers = runtime().block_on(gossip_frame(&bytes));
            if let Some(a) = &answers.plaintext {
                prop_assert!(answer_is_well_formed(a, false));
            }
            if let Some(a) = &answers.encrypted {
                prop_assert!(answer_is_well_formed(a, true));
            }
        }

        #[test]
        fn push_pulls_are_answered_with_the_pools_state(
            states in proptest::collection::vec(member_state(), 0..6),
            join in any::<bool>(),
            seal in any::<bool>(),
        ) {
            let frame = encode_frame(&Message::PushPull { join, states });
            let frame = if seal { seal_frame(&frame) } else { frame };
            let answers = runtime().block_on(gossip_frame(&frame));
            let encrypted = answers.encrypted.expect("a push-pull is answered");
            prop_assert!(answer_is_well_formed(&encrypted, true));
            prop_assert_ne!(encrypted.first(), Some(&transport::ERROR_FRAME));
            if !seal {
                let plain = answers.plaintext.expect("a push-pull is answered");
                prop_assert!(answer_is_well_formed(&plain, false));
            }
        }

        #[test]
        fn keyring_requests_with_random_json_never_panic(json in "[ -~]{0,60}", seal in any::<bool>()) {
            let frame = keyring_request(json.as_bytes());
            let frame = if seal { seal_frame(&frame) } else { frame };
            let answers = runtime().block_on(gossip_frame(&frame));
            if let Some(a) = &answers.encrypted {
                prop_assert!(answer_is_well_formed(a, true));
            }
        }
    }
}
