//! The gossip wire format: messages, and their binary encoding.
//!
//! A packet (one UDP datagram, or one QUIC datagram on the WAN) is
//! `[PROTOCOL: u8][count: u8]` followed by `count` messages, each `[type: u8][len: u16]`
//! and `len` bytes of body; several messages share a packet so that broadcasts ride on
//! probes (piggybacking). A stream frame (push-pull over TCP) is one message without the
//! count. Integers are big-endian; strings are `u16` length + UTF-8; an address is a
//! family byte (4 or 6), the IP bytes and a `u16` port.
//!
//! Decoding checks every length before reading and returns [`DecodeError`]: bytes from a
//! peer can never cause a panic or an allocation larger than the packet.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::coordinate::{Coordinate, DIMENSIONS};

/// The first byte of every plaintext packet and frame: gossip protocol version 1.
pub const PROTOCOL: u8 = 0x47;
/// Most messages in one packet.
pub const MAX_MESSAGES: usize = 64;
/// Most members in one push-pull state exchange.
pub const MAX_STATES: usize = 65_536;
/// Most tags on one member.
pub const MAX_TAGS: usize = 64;
/// Largest user event, in bytes of its name, payload, filters and ID together (serf's
/// `UserEventSizeLimit`, which Consul keeps at its default): an event must ride on a
/// probe with room to spare.
pub const MAX_USER_EVENT: usize = 512;

/// Why bytes could not be decoded. The packet is dropped whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end before the message does.
    #[error("truncated message")]
    Truncated,
    /// Not our protocol, or a version we do not speak.
    #[error("unknown protocol byte {0:#04x}")]
    Protocol(u8),
    /// An unknown message type.
    #[error("unknown message type {0}")]
    Type(u8),
    /// A field holds a value it cannot hold (bad UTF-8, an unknown address family, a
    /// count over its limit, bytes left over).
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// A member's state as gossip spreads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// Answers probes.
    Alive,
    /// Missed a probe; others may refute or confirm.
    Suspect,
    /// Confirmed failed.
    Dead,
    /// Left on purpose.
    Left,
}

/// A member as push-pull exchanges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    /// Node name.
    pub name: String,
    /// Gossip address.
    pub addr: SocketAddr,
    /// Incarnation number.
    pub incarnation: u32,
    /// State.
    pub state: State,
    /// Tags, shared with the engine's member: a push-pull sends every member, and
    /// copying every member's tags for it, every reconnect attempt included, was most of
    /// what a thousand members in one process did when one of them had failed.
    pub tags: Arc<BTreeMap<String, String>>,
}

/// A user event (`consul event`): fired by one member, spread to all by gossip, and
/// delivered once to each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEvent {
    /// Lamport time of the pool's event clock when it was fired.
    pub ltime: u64,
    /// Unique ID (a UUID), the key of deduplication.
    pub id: String,
    /// Event name.
    pub name: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// Regular expression on node names; empty for every node.
    pub node_filter: String,
    /// Regular expression on the names of a node's services; empty for every node.
    pub service_filter: String,
    /// Regular expression on the tags of the matching services; empty for any.
    pub tag_filter: String,
}

impl UserEvent {
    /// Bytes counted against [`MAX_USER_EVENT`].
    pub fn size(&self) -> usize {
        self.id.len()
            + self.name.len()
            + self.payload.len()
            + self.node_filter.len()
            + self.service_filter.len()
            + self.tag_filter.len()
    }
}

/// One gossip message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Are you alive? (`target` names who the sender thinks it is talking to.)
    Ping {
        /// Sequence number echoed in the ack.
        seq: u32,
        /// The node the sender means.
        target: String,
        /// The sender.
        source: String,
    },
    /// Please probe `target` for me.
    IndirectPing {
        /// Sequence number of the requester's probe.
        seq: u32,
        /// The node to probe.
        target: String,
        /// Its address.
        target_addr: SocketAddr,
        /// Send a nack if the target does not answer in time.
        nack: bool,
    },
    /// Alive (answer to a ping relayed for someone else).
    Ack {
        /// The ping's sequence number.
        seq: u32,
    },
    /// Alive (answer to a ping), with the answering member's network coordinate.
    AckCoord {
        /// The ping's sequence number.
        seq: u32,
        /// The answering member's coordinate.
        coord: Coordinate,
    },
    /// I could not reach the target you asked about (Lifeguard).
    Nack {
        /// The indirect ping's sequence number.
        seq: u32,
    },
    /// `node` is alive at this incarnation, with these tags.
    Alive {
        /// Incarnation.
        incarnation: u32,
        /// Node name.
        node: String,
        /// Gossip address.
        addr: SocketAddr,
        /// Tags.
        tags: BTreeMap<String, String>,
    },
    /// `from` suspects `node`.
    Suspect {
        /// Incarnation of `node` being suspected.
        incarnation: u32,
        /// Node name.
        node: String,
        /// Who suspects it.
        from: String,
    },
    /// `from` declares `node` dead; from == node means it left.
    Dead {
        /// Incarnation of `node`.
        incarnation: u32,
        /// Node name.
        node: String,
        /// Who declares it.
        from: String,
    },
    /// Forget `node` (`force-leave -prune`): everyone drops it from its member list and
    /// ignores news of it at this incarnation or older.
    Prune {
        /// Incarnation of `node`.
        incarnation: u32,
        /// Node name.
        node: String,
    },
    /// Full state exchange (push-pull), over a stream.
    PushPull {
        /// Sent while joining: the receiver answers with its own state.
        join: bool,
        /// Every member the sender knows.
        states: Vec<MemberState>,
    },
    /// A user event, gossiped like a membership change.
    UserEvent(UserEvent),
}

const T_PING: u8 = 1;
const T_INDIRECT: u8 = 2;
const T_ACK: u8 = 3;
const T_NACK: u8 = 4;
const T_ALIVE: u8 = 5;
const T_SUSPECT: u8 = 6;
const T_DEAD: u8 = 7;
const T_PUSH_PULL: u8 = 8;
const T_PRUNE: u8 = 9;
const T_ACK_COORD: u8 = 10;
const T_USER_EVENT: u8 = 11;

/// Appends fields to a buffer.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_bits().to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        // Payloads are bounded by MAX_USER_EVENT; cut rather than wrap.
        let len = b.len().min(usize::from(u16::MAX));
        self.u16(len as u16);
        self.0.extend_from_slice(&b[..len]);
    }
    fn str(&mut self, s: &str) {
        // Names and tags are bounded by callers far below 64 KiB; cut rather than wrap.
        let bytes = s.as_bytes();
        let len = bytes.len().min(usize::from(u16::MAX));
        self.u16(len as u16);
        self.0.extend_from_slice(&bytes[..len]);
    }
    fn addr(&mut self, a: &SocketAddr) {
        match a.ip() {
            IpAddr::V4(v4) => {
                self.u8(4);
                self.0.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                self.u8(6);
                self.0.extend_from_slice(&v6.octets());
            }
        }
        self.u16(a.port());
    }
    fn tags(&mut self, tags: &BTreeMap<String, String>) {
        let n = tags.len().min(MAX_TAGS);
        self.u8(n as u8);
        for (k, v) in tags.iter().take(n) {
            self.str(k);
            self.str(v);
        }
    }
    fn alive(
        &mut self,
        incarnation: u32,
        node: &str,
        addr: &SocketAddr,
        tags: &BTreeMap<String, String>,
    ) {
        self.u32(incarnation);
        self.str(node);
        self.addr(addr);
        self.tags(tags);
    }
}

/// Reads fields from peer bytes, checking every length first.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| DecodeError::Truncated)?;
        Ok(u64::from_be_bytes(b))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let len = usize::from(self.u16()?);
        Ok(self.take(len)?.to_vec())
    }
    fn f64(&mut self) -> Result<f64, DecodeError> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| DecodeError::Truncated)?;
        Ok(f64::from_bits(u64::from_be_bytes(b)))
    }
    fn coord(&mut self) -> Result<Coordinate, DecodeError> {
        let mut vec = Vec::with_capacity(DIMENSIONS);
        for _ in 0..DIMENSIONS {
            vec.push(self.f64()?);
        }
        Ok(Coordinate {
            vec,
            error: self.f64()?,
            adjustment: self.f64()?,
            height: self.f64()?,
        })
    }
    fn str_ref(&mut self) -> Result<&'a str, DecodeError> {
        let len = usize::from(self.u16()?);
        std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::Invalid("utf-8"))
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        Ok(self.str_ref()?.to_owned())
    }
    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => {
                let b: [u8; 4] = self
                    .take(4)?
                    .try_into()
                    .map_err(|_| DecodeError::Truncated)?;
                IpAddr::V4(Ipv4Addr::from(b))
            }
            6 => {
                let b: [u8; 16] = self
                    .take(16)?
                    .try_into()
                    .map_err(|_| DecodeError::Truncated)?;
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => return Err(DecodeError::Invalid("address family")),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }
    /// Checks a tag list and returns its bytes, count included, without copying.
    fn raw_tags(&mut self) -> Result<RawTags<'a>, DecodeError> {
        let start = self.0;
        let n = usize::from(self.u8()?);
        if n > MAX_TAGS {
            return Err(DecodeError::Invalid("tag count"));
        }
        for _ in 0..n {
            self.str_ref()?;
            self.str_ref()?;
        }
        let used = start.len() - self.0.len();
        Ok(RawTags(&start[..used]))
    }
    fn tags(&mut self) -> Result<BTreeMap<String, String>, DecodeError> {
        Ok(self.raw_tags()?.to_map())
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("bool")),
        }
    }
    fn state(&mut self) -> Result<State, DecodeError> {
        match self.u8()? {
            0 => Ok(State::Alive),
            1 => Ok(State::Suspect),
            2 => Ok(State::Dead),
            3 => Ok(State::Left),
            _ => Err(DecodeError::Invalid("member state")),
        }
    }
    fn done(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Invalid("trailing bytes"))
        }
    }
}

fn state_byte(s: State) -> u8 {
    match s {
        State::Alive => 0,
        State::Suspect => 1,
        State::Dead => 2,
        State::Left => 3,
    }
}

impl Message {
    fn kind(&self) -> u8 {
        match self {
            Message::Ping { .. } => T_PING,
            Message::IndirectPing { .. } => T_INDIRECT,
            Message::Ack { .. } => T_ACK,
            Message::AckCoord { .. } => T_ACK_COORD,
            Message::Nack { .. } => T_NACK,
            Message::Alive { .. } => T_ALIVE,
            Message::Suspect { .. } => T_SUSPECT,
            Message::Dead { .. } => T_DEAD,
            Message::PushPull { .. } => T_PUSH_PULL,
            Message::Prune { .. } => T_PRUNE,
            Message::UserEvent(_) => T_USER_EVENT,
        }
    }

    fn body(&self) -> Vec<u8> {
        let mut body = Vec::new();
        self.write_body(&mut Writer(&mut body));
        body
    }

    fn write_body(&self, w: &mut Writer<'_>) {
        match self {
            Message::Ping {
                seq,
                target,
                source,
            } => {
                w.u32(*seq);
                w.str(target);
                w.str(source);
            }
            Message::IndirectPing {
                seq,
                target,
                target_addr,
                nack,
            } => {
                w.u32(*seq);
                w.str(target);
                w.addr(target_addr);
                w.u8(u8::from(*nack));
            }
            Message::Ack { seq } | Message::Nack { seq } => w.u32(*seq),
            Message::AckCoord { seq, coord } => {
                w.u32(*seq);
                // Always DIMENSIONS values: a short vector is padded, a long one cut.
                for i in 0..DIMENSIONS {
                    w.f64(coord.vec.get(i).copied().unwrap_or(0.0));
                }
                w.f64(coord.error);
                w.f64(coord.adjustment);
                w.f64(coord.height);
            }
            Message::Alive {
                incarnation,
                node,
                addr,
                tags,
            } => w.alive(*incarnation, node, addr, tags),
            Message::Suspect {
                incarnation,
                node,
                from,
            }
            | Message::Dead {
                incarnation,
                node,
                from,
            } => {
                w.u32(*incarnation);
                w.str(node);
                w.str(from);
            }
            Message::Prune { incarnation, node } => {
                w.u32(*incarnation);
                w.str(node);
            }
            Message::PushPull { join, states } => {
                w.u8(u8::from(*join));
                w.u32(states.len().min(MAX_STATES) as u32);
                for s in states.iter().take(MAX_STATES) {
                    w.str(&s.name);
                    w.addr(&s.addr);
                    w.u32(s.incarnation);
                    w.u8(state_byte(s.state));
                    w.tags(&s.tags);
                }
            }
            Message::UserEvent(e) => {
                w.u64(e.ltime);
                w.str(&e.id);
                w.str(&e.name);
                w.bytes(&e.payload);
                w.str(&e.node_filter);
                w.str(&e.service_filter);
                w.str(&e.tag_filter);
            }
        }
    }

    /// The encoded size of this message inside a packet.
    pub fn encoded_len(&self) -> usize {
        3 + self.body().len()
    }

    fn decode_body(kind: u8, body: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader(body);
        let m = match kind {
            T_PING => Message::Ping {
                seq: r.u32()?,
                target: r.str()?,
                source: r.str()?,
            },
            T_INDIRECT => Message::IndirectPing {
                seq: r.u32()?,
                target: r.str()?,
                target_addr: r.addr()?,
                nack: r.bool()?,
            },
            T_ACK => Message::Ack { seq: r.u32()? },
            T_ACK_COORD => Message::AckCoord {
                seq: r.u32()?,
                coord: r.coord()?,
            },
            T_NACK => Message::Nack { seq: r.u32()? },
            T_ALIVE | T_SUSPECT | T_DEAD => {
                return Incoming::decode(kind, body).map(Incoming::into_message);
            }
            T_PRUNE => Message::Prune {
                incarnation: r.u32()?,
                node: r.str()?,
            },
            T_PUSH_PULL => {
                let join = r.bool()?;
                let n = r.u32()? as usize;
                if n > MAX_STATES {
                    return Err(DecodeError::Invalid("state count"));
                }
                // Each state takes at least 11 bytes: never reserve more than the body holds.
                let mut states = Vec::with_capacity(n.min(body.len() / 11));
                for _ in 0..n {
                    states.push(MemberState {
                        name: r.str()?,
                        addr: r.addr()?,
                        incarnation: r.u32()?,
                        state: r.state()?,
                        tags: Arc::new(r.tags()?),
                    });
                }
                Message::PushPull { join, states }
            }
            T_USER_EVENT => {
                let event = UserEvent {
                    ltime: r.u64()?,
                    id: r.str()?,
                    name: r.str()?,
                    payload: r.bytes()?,
                    node_filter: r.str()?,
                    service_filter: r.str()?,
                    tag_filter: r.str()?,
                };
                if event.size() > MAX_USER_EVENT {
                    return Err(DecodeError::Invalid("user event size"));
                }
                Message::UserEvent(event)
            }
            other => return Err(DecodeError::Type(other)),
        };
        r.done()?;
        Ok(m)
    }
}

/// Tags as a packet carries them: checked, and decoded only when wanted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawTags<'a>(&'a [u8]);

impl RawTags<'_> {
    /// The tags. A repeated key keeps its last value.
    pub(crate) fn to_map(self) -> BTreeMap<String, String> {
        let mut r = Reader(self.0);
        let n = r.u8().map_or(0, usize::from);
        let mut tags = BTreeMap::new();
        for _ in 0..n {
            // Checked by `Reader::raw_tags`: neither read fails.
            let (Ok(k), Ok(v)) = (r.str_ref(), r.str_ref()) else {
                break;
            };
            tags.insert(k.to_owned(), v.to_owned());
        }
        tags
    }
}

/// A message as it arrives in a packet. Membership news borrows the packet's bytes: in a
/// large pool most news heard is news the receiver already has, and a repeat then costs
/// no allocation. Other messages are decoded whole.
#[derive(Debug)]
pub(crate) enum Incoming<'a> {
    /// [`Message::Alive`], borrowed.
    Alive {
        incarnation: u32,
        node: &'a str,
        addr: SocketAddr,
        tags: RawTags<'a>,
    },
    /// [`Message::Suspect`], borrowed.
    Suspect {
        incarnation: u32,
        node: &'a str,
        from: &'a str,
    },
    /// [`Message::Dead`], borrowed.
    Dead {
        incarnation: u32,
        node: &'a str,
        from: &'a str,
    },
    /// Any other message.
    Other(Message),
}

impl<'a> Incoming<'a> {
    fn decode(kind: u8, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(body);
        let m = match kind {
            T_ALIVE => Incoming::Alive {
                incarnation: r.u32()?,
                node: r.str_ref()?,
                addr: r.addr()?,
                tags: r.raw_tags()?,
            },
            T_SUSPECT => Incoming::Suspect {
                incarnation: r.u32()?,
                node: r.str_ref()?,
                from: r.str_ref()?,
            },
            T_DEAD => Incoming::Dead {
                incarnation: r.u32()?,
                node: r.str_ref()?,
                from: r.str_ref()?,
            },
            _ => return Message::decode_body(kind, body).map(Incoming::Other),
        };
        r.done()?;
        Ok(m)
    }

    /// The owned message.
    pub(crate) fn into_message(self) -> Message {
        match self {
            Incoming::Alive {
                incarnation,
                node,
                addr,
                tags,
            } => Message::Alive {
                incarnation,
                node: node.to_owned(),
                addr,
                tags: tags.to_map(),
            },
            Incoming::Suspect {
                incarnation,
                node,
                from,
            } => Message::Suspect {
                incarnation,
                node: node.to_owned(),
                from: from.to_owned(),
            },
            Incoming::Dead {
                incarnation,
                node,
                from,
            } => Message::Dead {
                incarnation,
                node: node.to_owned(),
                from: from.to_owned(),
            },
            Incoming::Other(m) => m,
        }
    }
}

/// Appends `m` as a packet carries it: type, length and body.
fn put_message(out: &mut Vec<u8>, m: &Message) {
    put_with(out, m.kind(), |w| m.write_body(w));
}

fn put_with(out: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Writer<'_>)) {
    out.push(kind);
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    body(&mut Writer(out));
    let len = (out.len() - at - 2).min(usize::from(u16::MAX)) as u16;
    out[at..at + 2].copy_from_slice(&len.to_be_bytes());
}

/// `m` encoded as one of a packet's messages, to be added to packets with
/// [`Packet::push_encoded`].
pub(crate) fn encode_message(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    put_message(&mut out, m);
    out
}

/// [`encode_message`] of a [`Message::Alive`], from borrowed parts.
pub(crate) fn encode_alive(
    incarnation: u32,
    node: &str,
    addr: &SocketAddr,
    tags: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut out = Vec::new();
    put_with(&mut out, T_ALIVE, |w| {
        w.alive(incarnation, node, addr, tags)
    });
    out
}

/// A packet being filled, message by message.
#[derive(Debug)]
pub(crate) struct Packet {
    bytes: Vec<u8>,
    count: usize,
}

impl Packet {
    pub(crate) fn new() -> Self {
        Packet {
            bytes: vec![PROTOCOL, 0],
            count: 0,
        }
    }

    /// Adds `m`; ignored once the packet holds [`MAX_MESSAGES`].
    pub(crate) fn push(&mut self, m: &Message) {
        if self.count < MAX_MESSAGES {
            put_message(&mut self.bytes, m);
            self.count += 1;
        }
    }

    /// Adds a message encoded by [`encode_message`]; ignored once the packet holds
    /// [`MAX_MESSAGES`].
    pub(crate) fn push_encoded(&mut self, encoded: &[u8]) {
        if self.count < MAX_MESSAGES {
            self.bytes.extend_from_slice(encoded);
            self.count += 1;
        }
    }

    /// Bytes so far, header included.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Messages so far.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// The encoded packet.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.bytes[1] = self.count as u8;
        self.bytes
    }
}

/// Encodes messages into one packet (at most [`MAX_MESSAGES`]).
pub fn encode_packet(messages: &[Message]) -> Vec<u8> {
    let mut packet = Packet::new();
    for m in messages {
        packet.push(m);
    }
    packet.finish()
}

/// Decodes a packet, membership news borrowed. Any message that does not decode fails
/// the whole packet.
pub(crate) fn decode_incoming(bytes: &[u8]) -> Result<Vec<Incoming<'_>>, DecodeError> {
    let mut r = Reader(bytes);
    let protocol = r.u8()?;
    if protocol != PROTOCOL {
        return Err(DecodeError::Protocol(protocol));
    }
    let n = usize::from(r.u8()?);
    if n > MAX_MESSAGES {
        return Err(DecodeError::Invalid("message count"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = r.u8()?;
        let len = usize::from(r.u16()?);
        out.push(Incoming::decode(kind, r.take(len)?)?);
    }
    r.done()?;
    Ok(out)
}

/// Decodes a packet into its messages.
pub fn decode_packet(bytes: &[u8]) -> Result<Vec<Message>, DecodeError> {
    Ok(decode_incoming(bytes)?
        .into_iter()
        .map(Incoming::into_message)
        .collect())
}

/// Encodes one message as a stream frame body (push-pull).
pub fn encode_frame(message: &Message) -> Vec<u8> {
    let body = message.body();
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push(PROTOCOL);
    out.push(message.kind());
    out.extend_from_slice(&body);
    out
}

/// Decodes a stream frame body.
pub fn decode_frame(bytes: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader(bytes);
    let protocol = r.u8()?;
    if protocol != PROTOCOL {
        return Err(DecodeError::Protocol(protocol));
    }
    let kind = r.u8()?;
    Message::decode_body(kind, r.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Message> {
        let addr: SocketAddr = "10.0.0.1:8301".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:8301".parse().unwrap();
        let tags: BTreeMap<String, String> = [
            ("role".to_string(), "consul".to_string()),
            ("dc".into(), "dc1".into()),
        ]
        .into();
        vec![
            Message::Ping {
                seq: 7,
                target: "b".into(),
                source: "a".into(),
            },
            Message::IndirectPing {
                seq: 8,
                target: "c".into(),
                target_addr: v6,
                nack: true,
            },
            Message::Ack { seq: 9 },
            Message::AckCoord {
                seq: 11,
                coord: Coordinate {
                    vec: vec![0.001, -0.002, 0.0, 1e-9, 0.5, -0.25, 0.0, 3.0],
                    error: 0.7,
                    adjustment: -0.0001,
                    height: 0.00002,
                },
            },
            Message::Nack { seq: 10 },
            Message::Alive {
                incarnation: 3,
                node: "a".into(),
                addr,
                tags: tags.clone(),
            },
            Message::Suspect {
                incarnation: 4,
                node: "b".into(),
                from: "a".into(),
            },
            Message::Dead {
                incarnation: 5,
                node: "b".into(),
                from: "b".into(),
            },
            Message::Prune {
                incarnation: 6,
                node: "c".into(),
            },
            Message::PushPull {
                join: true,
                states: vec![MemberState {
                    name: "a".into(),
                    addr,
                    incarnation: 1,
                    state: State::Left,
                    tags: Arc::new(tags),
                }],
            },
            Message::UserEvent(UserEvent {
                ltime: 12,
                id: "2c8f2d40-64b5-4d1c-9a7e-0f3c5a6e1b2d".into(),
                name: "deploy".into(),
                payload: b"v1.2\0".to_vec(),
                node_filter: "^web".into(),
                service_filter: "api".into(),
                tag_filter: "v1".into(),
            }),
        ]
    }

    #[test]
    fn packets_and_frames_round_trip() {
        let all = samples();
        assert_eq!(decode_packet(&encode_packet(&all)).unwrap(), all);
        for m in &all {
            assert_eq!(decode_frame(&encode_frame(m)).unwrap(), *m);
            assert_eq!(
                encode_packet(std::slice::from_ref(m)).len(),
                2 + m.encoded_len()
            );
        }
    }

    #[test]
    fn a_packet_holds_at_most_max_messages_and_encoded_messages_match() {
        let ack = Message::Ack { seq: 1 };
        let mut packet = Packet::new();
        for _ in 0..MAX_MESSAGES {
            packet.push_encoded(&encode_message(&ack));
        }
        packet.push(&ack);
        packet.push_encoded(&encode_message(&ack));
        assert_eq!(packet.count(), MAX_MESSAGES);
        let bytes = packet.finish();
        assert_eq!(decode_packet(&bytes).unwrap(), vec![ack; MAX_MESSAGES]);
        let Message::Alive {
            incarnation,
            node,
            addr,
            tags,
        } = &samples()[5]
        else {
            panic!("the sixth sample is an alive message");
        };
        assert_eq!(
            encode_alive(*incarnation, node, addr, tags),
            encode_message(&samples()[5])
        );
    }

    #[test]
    fn repeated_tag_keys_keep_the_last_value_as_before() {
        let mut body = vec![];
        let mut w = Writer(&mut body);
        w.u32(1);
        w.str("n");
        w.addr(&"10.0.0.1:8301".parse().unwrap());
        w.u8(2);
        for v in ["first", "last"] {
            w.str("k");
            w.str(v);
        }
        let mut packet = vec![PROTOCOL, 1, T_ALIVE];
        packet.extend_from_slice(&(body.len() as u16).to_be_bytes());
        packet.extend_from_slice(&body);
        let Message::Alive { tags, .. } = &decode_packet(&packet).unwrap()[0] else {
            panic!("an alive message");
        };
        assert_eq!(tags, &BTreeMap::from([("k".into(), "last".into())]));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode_packet(&samples());
        for cut in 0..bytes.len() {
            assert!(decode_packet(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            decode_packet(&extra),
            Err(DecodeError::Invalid("trailing bytes"))
        );
    }

    #[test]
    fn a_huge_state_count_allocates_nothing_and_fails() {
        let mut frame = vec![PROTOCOL, T_PUSH_PULL, 0];
        frame.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode_frame(&frame),
            Err(DecodeError::Invalid("state count"))
        );
        let mut frame = vec![PROTOCOL, T_PUSH_PULL, 0];
        frame.extend_from_slice(&60_000u32.to_be_bytes());
        assert_eq!(decode_frame(&frame), Err(DecodeError::Truncated));
    }

    #[test]
    fn an_oversized_user_event_is_refused() {
        let event = UserEvent {
            ltime: 1,
            id: "x".into(),
            name: "big".into(),
            payload: vec![0; MAX_USER_EVENT],
            node_filter: String::new(),
            service_filter: String::new(),
            tag_filter: String::new(),
        };
        let bytes = encode_packet(&[Message::UserEvent(event)]);
        assert_eq!(
            decode_packet(&bytes),
            Err(DecodeError::Invalid("user event size"))
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_packet(&bytes);
            let _ = decode_frame(&bytes);
        }

        #[test]
        fn corrupting_one_byte_never_panics(index in 0usize..400, value: u8) {
            let mut bytes = encode_packet(&samples());
            if let Some(b) = bytes.get_mut(index) {
                *b = value;
            }
            let _ = decode_packet(&bytes);
        }
    }
}
