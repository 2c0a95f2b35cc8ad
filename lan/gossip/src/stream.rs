//! Gossip stream frames: how a push-pull, a keyring request and their answers travel on a
//! stream (a TCP connection of the LAN pool, a QUIC stream of the WAN pool), and how a
//! frame is read without trusting its sender.
//!
//! ## Layout
//!
//! ```text
//!   frame      = header body
//!   plaintext  = ['P'][kind: u8][length: u32]            then `length` payload bytes
//!   sealed     = ['S'][kind: u8][length: u32][base: 12]  then n = max(1, ⌈length / CHUNK⌉) chunks
//!   chunk i    = AES-GCM(payload[i·CHUNK .. min((i+1)·CHUNK, length)]) ‖ tag (16 bytes)
//! ```
//!
//! Integers are big-endian. The kind is a push-pull, a keyring request, a keyring answer
//! or an error; each kind has its own length limit (`MAX_*_FRAME`). Error frames are always
//! plaintext (they go to peers that may not hold our key, to say why they were refused)
//! and only ever end a stream. The layout is our own: compatibility with Consul agents is
//! not a goal, and an agent of an earlier proconsul version (which sent `[length: u32]`
//! first) is refused as an unknown mode.
//!
//! ## Sealed frames
//!
//! The sender draws a random 96-bit nonce base per frame and seals chunk `i` of `n` with
//! its primary key under
//!
//! ```text
//!   nonce = base XOR i               (i as a u32 in the last four bytes)
//!   aad   = "proconsul stream" ‖ mode ‖ kind ‖ length ‖ base ‖ i: u32 ‖ last: u8 (1 for i = n-1)
//! ```
//!
//! This is the STREAM construction of online authenticated encryption (Hoang,
//! Reyhanitabar, Rogaway and Vizár, 2015), with the chunk counter and the last-chunk flag
//! bound in the associated data. What it rules out:
//!
//! - **reordering**: chunk `i` read at position `j ≠ i` is opened with another nonce and
//!   counter, and fails;
//! - **truncation**: the number of chunks follows from the length, which every chunk
//!   authenticates; a stream that ends early is an error, and no chunk but the real last
//!   one was sealed with `last = 1`;
//! - **splicing**: a chunk of another frame was sealed under another base, and fails; so
//!   does every chunk when the header (kind, length, base) was changed;
//! - **nonce reuse**: bases are random, so among `q` frames of at most `n` chunks sealed
//!   with one key, two share a nonce with probability below `q² · n / 2⁹⁶` (a million
//!   push-pulls of 256 chunks: 2⁻⁴⁸), the order of the random nonces of sealed packets.
//!
//! ## Reading
//!
//! [`read`] checks the header first: mode, kind (one that may come at this point of the
//! exchange), the length against the kind's limit, and the receiver's encryption settings
//! (plaintext refused under `encrypt_verify_incoming`, keyring requests only sealed). A
//! frame refused there has cost nothing but its header. Then it reads one chunk at a time
//! into a buffer of at most [`CHUNK_WIRE`] bytes and opens it before it reads the next
//! one; only opened bytes are kept. A peer without an installed key therefore makes the
//! agent buffer one chunk, after which the stream is refused and closed.
//!
//! Plaintext frames (no keyring, or `encrypt_verify_incoming` off) have nothing to
//! authenticate and are read [`CHUNK`] bytes at a time. Either way a frame's first chunk
//! fits its [`FRAME_ALLOWANCE`]; once that chunk is in (and, sealed, has authenticated the
//! length), the rest of the frame is reserved in one allocation and charged at once to
//! the pool's [`Budget`]: [`MAX_STREAM_BYTES`] for all streams of a pool, of which
//! [`MAX_STREAM_BYTES_PER_PEER`] for one IP address. A frame that does not fit is refused
//! after its first chunk; one that does is never copied to grow, and its pages are only
//! touched as its bytes arrive. So memory stays bounded without encryption too, and all of
//! it is given back when the frame is done.

use std::net::IpAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::keyring::{Cipher, Key, Keyring, NONCE_LEN, OpenError, TAG_LEN};
use crate::quota::{Budget, Exhausted, Grant};
use crate::swim::{self, message::PROTOCOL};
use crate::transport::Refusal;

/// Bytes of one sealed chunk on the wire (payload and tag): all a reader buffers before it
/// knows whether the sender holds a key.
pub const CHUNK_WIRE: usize = 64 * 1024;
/// Payload bytes per chunk; plaintext frames are read in steps of this size too.
pub const CHUNK: usize = CHUNK_WIRE - TAG_LEN;
/// Bytes of each frame a reader holds without drawing on the pool's budget: its first
/// chunk. The number of streams read at once bounds these (see
/// [`crate::transport::MAX_INBOUND_STREAMS`]).
pub const FRAME_ALLOWANCE: usize = CHUNK;

/// Header bytes of a gossip packet (protocol, message count).
const PACKET_HEADER: usize = 2;
/// Header bytes of one message in a packet (type, length).
const MESSAGE_HEADER: usize = 3;
/// Header bytes of an encoded push-pull (protocol, type, join flag, member count).
const PUSH_PULL_HEADER: usize = 7;
/// Largest member state a push-pull carries for a member that can announce itself at all:
/// a state is the body of the member's alive message plus one state byte, and that
/// message has to fit one gossip packet ([`swim::MAX_PACKET_SIZE`]).
pub const MAX_MEMBER_STATE: usize = swim::MAX_PACKET_SIZE - PACKET_HEADER - MESSAGE_HEADER + 1;
/// Pool size the push-pull limit is sized for, every member at [`MAX_MEMBER_STATE`].
pub const MAX_PUSH_PULL_MEMBERS: usize = 10_000;
/// Largest push-pull frame, in payload bytes (about 13.3 MiB): [`MAX_PUSH_PULL_MEMBERS`]
/// states of [`MAX_MEMBER_STATE`] bytes. A member of Consul's usual tags and a
/// 20-character name takes about 230 bytes, so pools of some 60,000 such members fit. A
/// larger frame is refused before it is read (and not sent: the push-pull fails and is
/// logged).
pub const MAX_PUSH_PULL_FRAME: usize = PUSH_PULL_HEADER + MAX_PUSH_PULL_MEMBERS * MAX_MEMBER_STATE;
/// Largest keyring request: the JSON of one operation with one key (about 70 bytes).
pub const MAX_KEY_REQUEST_FRAME: usize = 1024;
/// Largest keyring answer: the JSON of the installed keys (47 bytes per 32-byte key, so
/// about 1,300 keys) and an error text.
pub const MAX_KEY_ANSWER_FRAME: usize = 64 * 1024;
/// Largest error frame; longer texts are cut to it.
pub const MAX_ERROR_FRAME: usize = 1024;
/// Bytes of stream frames one pool holds at once beyond each frame's
/// [`FRAME_ALLOWANCE`], incoming requests and answers to its own exchanges alike. A frame
/// that would go beyond is refused (the serving side answers with an error frame; an
/// exchange of our own fails and the push-pull runs again at its next interval).
pub const MAX_STREAM_BYTES: usize = 64 * 1024 * 1024;
/// Of [`MAX_STREAM_BYTES`], what the frames of one IP address may hold: room for one
/// push-pull of the largest size ([`MAX_PUSH_PULL_FRAME`]) and a few small frames.
pub const MAX_STREAM_BYTES_PER_PEER: usize = 16 * 1024 * 1024;
const _: () = assert!(MAX_PUSH_PULL_FRAME - FRAME_ALLOWANCE <= MAX_STREAM_BYTES_PER_PEER);

const MODE_PLAIN: u8 = b'P';
const MODE_SEALED: u8 = b'S';
/// Bytes of a header before the nonce base.
const HEADER_LEN: usize = 6;
const AAD_LABEL: &[u8; 16] = b"proconsul stream";
const AAD_LEN: usize = AAD_LABEL.len() + HEADER_LEN + NONCE_LEN + 4 + 1;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A full state exchange: a gossip push-pull message ([`crate::swim::message`]).
    PushPull,
    /// A keyring operation (JSON).
    KeyRequest,
    /// A member's answer to a keyring operation (JSON).
    KeyAnswer,
    /// Why the other side refused the exchange (UTF-8); always plaintext.
    Error,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::PushPull,
        Kind::KeyRequest,
        Kind::KeyAnswer,
        Kind::Error,
    ];

    /// The kind's byte in a header.
    pub fn byte(self) -> u8 {
        match self {
            Kind::PushPull => PROTOCOL,
            Kind::KeyRequest => 0x4B,
            Kind::KeyAnswer => 0x6B,
            Kind::Error => 0xEE,
        }
    }

    /// The kind a header byte names.
    pub fn from_byte(byte: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.byte() == byte)
    }

    /// Largest payload of this kind, in bytes: what a reader accepts and a writer sends.
    pub fn max_len(self) -> usize {
        match self {
            Kind::PushPull => MAX_PUSH_PULL_FRAME,
            Kind::KeyRequest => MAX_KEY_REQUEST_FRAME,
            Kind::KeyAnswer => MAX_KEY_ANSWER_FRAME,
            Kind::Error => MAX_ERROR_FRAME,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::PushPull => "push-pull",
            Kind::KeyRequest => "keyring request",
            Kind::KeyAnswer => "keyring answer",
            Kind::Error => "error",
        })
    }
}

/// A payload over its kind's limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} frame of {len} bytes is over the limit of {max}")]
pub struct TooLarge {
    /// The frame's kind.
    pub kind: Kind,
    /// Its (announced) length.
    pub len: usize,
    /// The kind's limit.
    pub max: usize,
}

/// Why a frame was not read. The stream is closed afterwards.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The stream failed, or ended before the frame did (a truncated frame). Nothing to
    /// answer.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a frame of ours: an unknown mode (not a member, or an agent of an earlier
    /// version) or kind. Closed without an answer.
    #[error("{0}")]
    Malformed(String),
    /// A kind that does not belong at this point of the exchange (an answer where a
    /// request is expected, say). Closed without an answer.
    #[error("unexpected {0} frame")]
    Unexpected(Kind),
    /// Its announced length is over its kind's limit; none of it was read. The peer is
    /// told.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// This agent's encryption settings refuse it, or its first chunk opens with no
    /// installed key. The peer is told (its operator has a key or a setting to fix).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A plaintext keyring request to an agent with a keyring: only a holder of an
    /// installed key may change keys, whatever `encrypt_verify_incoming` lets through for
    /// gossip. The peer is told.
    #[error("keyring requests must be encrypted with an installed key")]
    PlainKeyRequest,
    /// A chunk after the first did not open with the key that opened the first: it was
    /// changed, reordered, cut, or spliced in from another frame. Closed.
    #[error("chunk {0} of the frame does not open")]
    Tampered(usize),
    /// The pool's budget for frames being read is used up. The peer is told, and retries
    /// later (a push-pull at its next interval).
    #[error("the memory budget for stream frames being read {0} is used up")]
    Busy(Exhausted),
}

impl FrameError {
    /// Whether the peer is answered with an error frame saying why (otherwise the stream
    /// is closed without a word).
    pub(crate) fn tells_peer(&self) -> bool {
        matches!(
            self,
            FrameError::TooLarge(_)
                | FrameError::Refused(_)
                | FrameError::PlainKeyRequest
                | FrameError::Busy(_)
        )
    }
}

/// What a reader accepts: the keys that open sealed frames (`None` without encryption),
/// and whether plaintext is refused (`encrypt_verify_incoming`).
#[derive(Debug, Clone)]
pub(crate) struct Opener {
    pub(crate) keyring: Option<Keyring>,
    pub(crate) verify_incoming: bool,
}

impl Opener {
    /// Whether a frame of `kind`, sealed or not, may be read at all.
    fn admit(&self, sealed: bool, kind: Kind) -> Result<(), FrameError> {
        match (&self.keyring, sealed) {
            (None, true) => Err(Refusal::Unexpected.into()),
            (None, false) | (Some(_), true) => Ok(()),
            (Some(_), false) => match kind {
                Kind::Error => Ok(()),
                Kind::KeyRequest => Err(FrameError::PlainKeyRequest),
                _ if self.verify_incoming => Err(Refusal::Plaintext.into()),
                _ => Ok(()),
            },
        }
    }
}

/// Which frames may arrive: a request, on the serving side, or the answer to a request of
/// the given kind (or an error frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    Request,
    Answer(Kind),
}

impl Expect {
    fn allows(self, kind: Kind) -> bool {
        match self {
            Expect::Request => matches!(kind, Kind::PushPull | Kind::KeyRequest),
            Expect::Answer(Kind::PushPull) => matches!(kind, Kind::PushPull | Kind::Error),
            Expect::Answer(Kind::KeyRequest) => matches!(kind, Kind::KeyAnswer | Kind::Error),
            Expect::Answer(_) => false,
        }
    }
}

/// A frame as read: its kind and its payload (opened).
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) kind: Kind,
    pub(crate) payload: Vec<u8>,
}

/// A frame's header as read.
struct Header {
    sealed: bool,
    kind: Kind,
    len: usize,
    base: [u8; NONCE_LEN],
}

impl Header {
    fn bytes(&self) -> [u8; HEADER_LEN] {
        let len = u32::try_from(self.len).expect("frame limits are far below 4 GiB");
        let [a, b, c, d] = len.to_be_bytes();
        let mode = if self.sealed { MODE_SEALED } else { MODE_PLAIN };
        [mode, self.kind.byte(), a, b, c, d]
    }

    /// Chunks of a sealed frame: an empty frame is one empty chunk.
    fn chunks(&self) -> usize {
        self.len.div_ceil(CHUNK).max(1)
    }

    /// Payload bytes of chunk `i` (of [`Header::chunks`]).
    fn chunk_len(&self, i: usize) -> usize {
        self.len.saturating_sub(i.saturating_mul(CHUNK)).min(CHUNK)
    }

    fn counter(i: usize) -> [u8; 4] {
        u32::try_from(i)
            .expect("frame limits keep chunk counts far below 2^32")
            .to_be_bytes()
    }

    fn nonce(&self, i: usize) -> [u8; NONCE_LEN] {
        let mut nonce = self.base;
        for (n, c) in nonce[NONCE_LEN - 4..].iter_mut().zip(Header::counter(i)) {
            *n ^= c;
        }
        nonce
    }

    fn aad(&self, i: usize) -> [u8; AAD_LEN] {
        let last = u8::from(i + 1 == self.chunks());
        let mut aad = [0u8; AAD_LEN];
        let parts: [&[u8]; 5] = [
            AAD_LABEL,
            &self.bytes(),
            &self.base,
            &Header::counter(i),
            &[last],
        ];
        let mut at = 0;
        for part in parts {
            aad[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        aad
    }
}

/// Encodes a frame of `kind` carrying `payload`, sealed with `key` when there is one.
pub(crate) fn encode(kind: Kind, payload: &[u8], key: Option<&Key>) -> Result<Vec<u8>, TooLarge> {
    let max = kind.max_len();
    if payload.len() > max {
        return Err(TooLarge {
            kind,
            len: payload.len(),
            max,
        });
    }
    let header = Header {
        sealed: key.is_some(),
        kind,
        len: payload.len(),
        base: if key.is_some() {
            rand::random()
        } else {
            [0; NONCE_LEN]
        },
    };
    let Some(key) = key else {
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&header.bytes());
        out.extend_from_slice(payload);
        return Ok(out);
    };
    let chunks = header.chunks();
    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + payload.len() + chunks * TAG_LEN);
    out.extend_from_slice(&header.bytes());
    out.extend_from_slice(&header.base);
    let cipher = key.cipher();
    for (i, chunk) in payload
        .chunks(CHUNK)
        .chain(payload.is_empty().then_some(&[][..]))
        .enumerate()
    {
        let at = out.len();
        out.extend_from_slice(chunk);
        let tag = cipher.seal_in_place(&header.nonce(i), &header.aad(i), &mut out[at..]);
        out.extend_from_slice(&tag);
    }
    Ok(out)
}

/// A plaintext error frame saying `text`, cut to [`MAX_ERROR_FRAME`] bytes.
pub(crate) fn error_frame(text: &str) -> Vec<u8> {
    let mut end = text.len().min(MAX_ERROR_FRAME);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    encode(Kind::Error, &text.as_bytes()[..end], None).expect("cut to the limit")
}

/// Reads one frame from `stream` (see the module doc): the header is checked before
/// anything else is read, sealed chunks are opened one by one as they arrive, and what the
/// frame holds beyond [`FRAME_ALLOWANCE`] is charged to `grant`.
pub(crate) async fn read<R: AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
    opener: &Opener,
    expect: Expect,
    grant: &mut Grant<IpAddr>,
) -> Result<Frame, FrameError> {
    let mut head = [0u8; HEADER_LEN];
    stream.read_exact(&mut head).await?;
    let [mode, kind, l0, l1, l2, l3] = head;
    let sealed = match mode {
        MODE_PLAIN => false,
        MODE_SEALED => true,
        other => {
            return Err(FrameError::Malformed(format!(
                "unknown stream frame mode {other:#04x}"
            )));
        }
    };
    let kind = Kind::from_byte(kind)
        .ok_or_else(|| FrameError::Malformed(format!("unknown stream frame kind {kind:#04x}")))?;
    if !expect.allows(kind) {
        return Err(FrameError::Unexpected(kind));
    }
    let len = usize::try_from(u32::from_be_bytes([l0, l1, l2, l3])).unwrap_or(usize::MAX);
    if len > kind.max_len() {
        return Err(TooLarge {
            kind,
            len,
            max: kind.max_len(),
        }
        .into());
    }
    opener.admit(sealed, kind)?;
    let mut header = Header {
        sealed,
        kind,
        len,
        base: [0; NONCE_LEN],
    };
    let payload = match (&opener.keyring, sealed) {
        (Some(keyring), true) => {
            stream.read_exact(&mut header.base).await?;
            read_sealed(stream, &header, keyring, grant).await?
        }
        _ => read_plain(stream, len, grant).await?,
    };
    Ok(Frame { kind, payload })
}

async fn read_sealed<R: AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
    header: &Header,
    keyring: &Keyring,
    grant: &mut Grant<IpAddr>,
) -> Result<Vec<u8>, FrameError> {
    let chunks = header.chunks();
    let mut chunk = Vec::with_capacity(header.chunk_len(0) + TAG_LEN);
    let mut out = Vec::new();
    // The key that opened the first chunk; every later chunk must open with it.
    let mut cipher: Option<Cipher> = None;
    for i in 0..chunks {
        let len = header.chunk_len(i);
        chunk.resize(len + TAG_LEN, 0);
        stream.read_exact(&mut chunk).await?;
        let (body, tag) = chunk.split_at_mut(len);
        let (nonce, aad) = (header.nonce(i), header.aad(i));
        let opened = match &cipher {
            Some(c) => c.open_in_place(&nonce, &aad, body, tag),
            None => {
                cipher = keyring
                    .keys()
                    .iter()
                    .map(Key::cipher)
                    .find(|c| c.open_in_place(&nonce, &aad, body, tag));
                cipher.is_some()
            }
        };
        if !opened {
            return Err(match i {
                0 => Refusal::Open(OpenError::NoKey).into(),
                _ => FrameError::Tampered(i),
            });
        }
        reserve(&mut out, len, header.len, grant)?;
        out.extend_from_slice(body);
    }
    Ok(out)
}

async fn read_plain<R: AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
    len: usize,
    grant: &mut Grant<IpAddr>,
) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    while out.len() < len {
        let step = (len - out.len()).min(CHUNK);
        reserve(&mut out, step, len, grant)?;
        let at = out.len();
        out.resize(at + step, 0);
        stream.read_exact(&mut out[at..]).await?;
    }
    Ok(out)
}

/// Makes room for `more` bytes in `out` (a frame of `total` bytes): the first chunk within
/// [`FRAME_ALLOWANCE`], then the whole rest of the frame at once, charged to `grant`.
fn reserve(
    out: &mut Vec<u8>,
    more: usize,
    total: usize,
    grant: &mut Grant<IpAddr>,
) -> Result<(), FrameError> {
    let need = out.len() + more;
    if need <= out.capacity() {
        return Ok(());
    }
    let capacity = if need <= FRAME_ALLOWANCE {
        need
    } else {
        total.max(need)
    };
    grant
        .grow_to(capacity.saturating_sub(FRAME_ALLOWANCE))
        .map_err(FrameError::Busy)?;
    out.reserve_exact(capacity - out.len());
    Ok(())
}

/// A new budget for the stream frames of one pool.
pub(crate) fn budget() -> std::sync::Arc<Budget<IpAddr>> {
    Budget::new(MAX_STREAM_BYTES, MAX_STREAM_BYTES_PER_PEER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swim::message::{Message, encode_frame, encode_packet};
    use crate::swim::{MemberState, State};
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::Arc;

    fn peer() -> IpAddr {
        "127.0.0.2".parse().unwrap()
    }

    fn key(fill: u8) -> Key {
        Key::from_bytes(vec![fill; 32]).unwrap()
    }

    fn strict(key: &Key) -> Opener {
        Opener {
            keyring: Some(Keyring::new(key.clone())),
            verify_incoming: true,
        }
    }

    fn plaintext() -> Opener {
        Opener {
            keyring: None,
            verify_incoming: false,
        }
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Reads `bytes` as a stream; returns the result and how many bytes were consumed.
    async fn read_bytes(
        bytes: &[u8],
        opener: &Opener,
        expect: Expect,
        budget: &Arc<Budget<IpAddr>>,
    ) -> (Result<Frame, FrameError>, usize) {
        let mut rest = bytes;
        let mut grant = budget.grant(peer());
        let result = read(&mut rest, opener, expect, &mut grant).await;
        (result, bytes.len() - rest.len())
    }

    async fn read_push_pull(bytes: &[u8], opener: &Opener) -> Result<Frame, FrameError> {
        read_bytes(bytes, opener, Expect::Request, &budget())
            .await
            .0
    }

    #[tokio::test]
    async fn frames_of_several_mib_round_trip_sealed_and_plain() {
        let (old, new) = (key(1), key(2));
        let big = payload(5 * 1024 * 1024 + 123);
        let budget = budget();
        for sealer in [Some(&old), None] {
            let frame = encode(Kind::PushPull, &big, sealer).unwrap();
            // Through a pipe narrower than a chunk, written while it is read.
            let (mut tx, mut rx) = tokio::io::duplex(16 * 1024);
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                tx.write_all(&frame).await.unwrap();
            });
            // The reader holds the old key as a second one: a key roll-out.
            let opener = Opener {
                keyring: Some({
                    let mut ring = Keyring::new(new.clone());
                    ring.install(old.clone());
                    ring
                }),
                verify_incoming: sealer.is_some(),
            };
            let mut grant = budget.grant(peer());
            let read = read(&mut rx, &opener, Expect::Request, &mut grant)
                .await
                .unwrap();
            writer.await.unwrap();
            assert_eq!(read.kind, Kind::PushPull);
            assert!(read.payload == big, "the payload round-trips");
            assert!(grant.bytes() <= big.len(), "charged {}", grant.bytes());
            assert!(budget.used() > 0);
            drop(grant);
            assert_eq!(budget.used(), 0, "everything is given back");
        }
    }

    #[tokio::test]
    async fn frames_of_every_length_around_a_chunk_round_trip() {
        let k = key(1);
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 5] {
            let data = payload(len);
            let sealed = encode(Kind::PushPull, &data, Some(&k)).unwrap();
            let chunks = len.div_ceil(CHUNK).max(1);
            assert_eq!(
                sealed.len(),
                HEADER_LEN + NONCE_LEN + len + chunks * TAG_LEN
            );
            let frame = read_push_pull(&sealed, &strict(&k)).await.unwrap();
            assert!(frame.payload == data, "sealed, {len} bytes");
            let plain = encode(Kind::PushPull, &data, None).unwrap();
            let frame = read_push_pull(&plain, &plaintext()).await.unwrap();
            assert!(frame.payload == data, "plaintext, {len} bytes");
        }
    }

    /// A sealed frame of three chunks (the last one short), split into header and chunks.
    fn three_chunks(k: &Key) -> (Vec<u8>, Vec<Vec<u8>>) {
        let frame = encode(Kind::PushPull, &payload(2 * CHUNK + 100), Some(k)).unwrap();
        let (header, body) = frame.split_at(HEADER_LEN + NONCE_LEN);
        let chunks = body.chunks(CHUNK_WIRE).map(<[u8]>::to_vec).collect();
        (header.to_vec(), chunks)
    }

    fn join(header: &[u8], chunks: &[&Vec<u8>]) -> Vec<u8> {
        let mut out = header.to_vec();
        for c in chunks {
            out.extend_from_slice(c);
        }
        out
    }

    #[tokio::test]
    async fn a_chunk_reordered_cut_or_from_another_frame_is_refused() {
        let k = key(1);
        let opener = strict(&k);
        let (header, c) = three_chunks(&k);
        let whole = join(&header, &[&c[0], &c[1], &c[2]]);
        assert!(read_push_pull(&whole, &opener).await.is_ok());

        // Reordered: the second and third full-size chunks swapped.
        let (h2, d) = {
            let frame = encode(Kind::PushPull, &payload(3 * CHUNK), Some(&k)).unwrap();
            let (h, b) = frame.split_at(HEADER_LEN + NONCE_LEN);
            let d: Vec<Vec<u8>> = b.chunks(CHUNK_WIRE).map(<[u8]>::to_vec).collect();
            (h.to_vec(), d)
        };
        let swapped = join(&h2, &[&d[0], &d[2], &d[1]]);
        assert!(matches!(
            read_push_pull(&swapped, &opener).await,
            Err(FrameError::Tampered(1))
        ));

        // Cut: the last chunk missing, or half of it.
        for cut in [
            join(&header, &[&c[0], &c[1]]),
            whole[..whole.len() - 50].to_vec(),
        ] {
            let err = read_push_pull(&cut, &opener).await.unwrap_err();
            assert!(
                matches!(&err, FrameError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
                "{err}"
            );
        }

        // Cut and relabelled: the header announces two chunks, so the second would be the
        // last; every chunk authenticates the length, so the first already fails.
        let mut shorter = header.clone();
        shorter[2..6].copy_from_slice(&u32::try_from(2 * CHUNK).unwrap().to_be_bytes());
        assert!(matches!(
            read_push_pull(&join(&shorter, &[&c[0], &c[1]]), &opener).await,
            Err(FrameError::Refused(Refusal::Open(OpenError::NoKey)))
        ));

        // Spliced: the middle chunk of another frame of the same kind and length.
        let (_, other) = three_chunks(&k);
        let spliced = join(&header, &[&c[0], &other[1], &c[2]]);
        assert!(matches!(
            read_push_pull(&spliced, &opener).await,
            Err(FrameError::Tampered(1))
        ));
        // Another frame's chunks under this frame's header: the base differs.
        let rebased = join(&header, &[&other[0], &other[1], &other[2]]);
        assert!(matches!(
            read_push_pull(&rebased, &opener).await,
            Err(FrameError::Refused(Refusal::Open(OpenError::NoKey)))
        ));

        // A header byte changed: the kind (to another that may come here) or the base.
        let mut rekinded = whole.clone();
        rekinded[1] = Kind::KeyRequest.byte();
        rekinded[2..6].copy_from_slice(&100u32.to_be_bytes());
        assert!(matches!(
            read_push_pull(&rekinded, &opener).await,
            Err(FrameError::Refused(Refusal::Open(OpenError::NoKey)))
        ));
        let mut flipped = whole.clone();
        flipped[HEADER_LEN + 3] ^= 1;
        assert!(read_push_pull(&flipped, &opener).await.is_err());
        // A bit flipped in the last chunk.
        let mut last = whole;
        let at = last.len() - TAG_LEN - 1;
        last[at] ^= 0x80;
        assert!(matches!(
            read_push_pull(&last, &opener).await,
            Err(FrameError::Tampered(2))
        ));
    }

    #[tokio::test]
    async fn junk_after_a_sealed_header_is_refused_after_one_chunk_and_costs_no_budget() {
        let opener = strict(&key(1));
        let mut junk = vec![MODE_SEALED, Kind::PushPull.byte()];
        junk.extend_from_slice(&u32::try_from(MAX_PUSH_PULL_FRAME).unwrap().to_be_bytes());
        junk.extend_from_slice(&[7; NONCE_LEN]);
        junk.extend(std::iter::repeat_n(0xA5, 3 * CHUNK_WIRE));
        let budget = budget();
        let (result, consumed) = read_bytes(&junk, &opener, Expect::Request, &budget).await;
        assert!(matches!(
            result,
            Err(FrameError::Refused(Refusal::Open(OpenError::NoKey)))
        ));
        assert_eq!(consumed, HEADER_LEN + NONCE_LEN + CHUNK_WIRE);
        assert_eq!(budget.peak(), 0);
        // Sealed with a key the reader does not hold: the same.
        let other = encode(Kind::PushPull, &payload(3 * CHUNK), Some(&key(9))).unwrap();
        let (result, consumed) = read_bytes(&other, &opener, Expect::Request, &budget).await;
        assert!(result.is_err());
        assert_eq!(consumed, HEADER_LEN + NONCE_LEN + CHUNK_WIRE);
    }

    #[tokio::test]
    async fn a_length_over_the_kinds_limit_is_refused_before_anything_is_read() {
        let opener = strict(&key(1));
        let budget = budget();
        for (kind, len) in [
            (Kind::PushPull, MAX_PUSH_PULL_FRAME + 1),
            (Kind::PushPull, u32::MAX as usize),
            (Kind::KeyRequest, MAX_KEY_REQUEST_FRAME + 1),
        ] {
            let mut frame = vec![MODE_SEALED, kind.byte()];
            frame.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
            frame.extend(std::iter::repeat_n(0, 2 * CHUNK_WIRE));
            let (result, consumed) = read_bytes(&frame, &opener, Expect::Request, &budget).await;
            let Err(FrameError::TooLarge(e)) = result else {
                panic!("{kind} of {len} bytes: {result:?}");
            };
            assert_eq!((e.kind, e.len, e.max), (kind, len, kind.max_len()));
            assert_eq!(consumed, HEADER_LEN);
        }
        assert!(encode(Kind::KeyAnswer, &payload(MAX_KEY_ANSWER_FRAME + 1), None).is_err());
    }

    #[tokio::test]
    async fn the_encryption_settings_decide_what_is_read() {
        let k = key(1);
        let lenient = Opener {
            verify_incoming: false,
            ..strict(&k)
        };
        let push_pull = encode(Kind::PushPull, b"gossip", None).unwrap();
        let sealed = encode(Kind::PushPull, b"gossip", Some(&k)).unwrap();
        let key_request = encode(Kind::KeyRequest, b"{}", None).unwrap();
        let error = error_frame("go away");
        let check = |r: Result<Frame, FrameError>| r.map(|f| f.payload).map_err(|e| e.to_string());
        assert_eq!(
            check(read_push_pull(&push_pull, &strict(&k)).await),
            Err("encryption is required by this agent, but the message is not encrypted".into())
        );
        assert_eq!(
            check(read_push_pull(&push_pull, &lenient).await),
            Ok(b"gossip".to_vec())
        );
        assert_eq!(
            check(read_push_pull(&sealed, &plaintext()).await),
            Err("encryption is not configured on this agent, but the message is encrypted".into())
        );
        assert_eq!(
            check(read_push_pull(&key_request, &lenient).await),
            Err("keyring requests must be encrypted with an installed key".into())
        );
        assert!(read_push_pull(&key_request, &plaintext()).await.is_ok());
        // An error frame is plaintext and read whatever the settings, as an answer only.
        let answer = Expect::Answer(Kind::PushPull);
        let (r, _) = read_bytes(&error, &strict(&k), answer, &budget()).await;
        assert_eq!(r.unwrap().payload, b"go away");
        assert!(matches!(
            read_push_pull(&error, &plaintext()).await,
            Err(FrameError::Unexpected(Kind::Error))
        ));
        let (r, _) = read_bytes(
            &push_pull,
            &plaintext(),
            Expect::Answer(Kind::KeyRequest),
            &budget(),
        )
        .await;
        assert!(matches!(r, Err(FrameError::Unexpected(Kind::PushPull))));
        // What an agent of an earlier version sent first: a u32 length.
        let (r, consumed) = read_bytes(
            &[0, 0, 1, 0, 0x47, 8],
            &plaintext(),
            Expect::Request,
            &budget(),
        )
        .await;
        assert!(matches!(r, Err(FrameError::Malformed(_))), "{r:?}");
        assert_eq!(consumed, HEADER_LEN);
    }

    #[tokio::test]
    async fn a_frame_beyond_its_peers_share_or_the_whole_budget_is_refused() {
        // Small bounds, the real accounting: a peer may hold two chunks beyond the
        // allowance, everyone three.
        let budget = Budget::new(3 * CHUNK, 2 * CHUNK);
        let frame = encode(Kind::PushPull, &payload(3 * CHUNK), None).unwrap();
        let mut held = budget.grant(peer());
        held.grow_to(CHUNK).unwrap();
        let (r, _) = read_bytes(&frame, &plaintext(), Expect::Request, &budget).await;
        assert!(matches!(r, Err(FrameError::Busy(Exhausted::Peer))), "{r:?}");
        let mut other = budget.grant("127.0.0.3".parse().unwrap());
        other.grow_to(2 * CHUNK).unwrap();
        drop(held);
        let (r, _) = read_bytes(&frame, &plaintext(), Expect::Request, &budget).await;
        assert!(matches!(r, Err(FrameError::Busy(Exhausted::All))), "{r:?}");
        assert!(budget.peak() <= 3 * CHUNK);
        drop(other);
        let (r, _) = read_bytes(&frame, &plaintext(), Expect::Request, &budget).await;
        assert!(r.is_ok());
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_push_pull_limit_holds_ten_thousand_members_at_the_packet_bound() {
        // A member whose alive message fills a packet exactly.
        let addr: SocketAddr = "10.0.0.1:8301".parse().unwrap();
        let tags = BTreeMap::from([("role".to_string(), "node".to_string())]);
        let alive = |name: String| Message::Alive {
            incarnation: 1,
            node: name,
            addr,
            tags: tags.clone(),
        };
        let short = encode_packet(&[alive(String::new())]).len();
        let name = "n".repeat(swim::MAX_PACKET_SIZE - short);
        assert_eq!(
            encode_packet(&[alive(name.clone())]).len(),
            swim::MAX_PACKET_SIZE
        );
        let state = MemberState {
            name,
            addr,
            incarnation: 1,
            state: State::Alive,
            tags: std::sync::Arc::new(tags),
        };
        for n in [0, 1, 3] {
            let frame = encode_frame(&Message::PushPull {
                join: false,
                states: vec![state.clone(); n],
            });
            assert_eq!(frame.len(), PUSH_PULL_HEADER + n * MAX_MEMBER_STATE);
        }
        assert_eq!(
            MAX_PUSH_PULL_FRAME,
            PUSH_PULL_HEADER + MAX_PUSH_PULL_MEMBERS * MAX_MEMBER_STATE
        );
    }

    #[test]
    fn an_error_text_is_cut_to_the_limit_on_a_character_boundary() {
        let text = "é".repeat(MAX_ERROR_FRAME);
        let frame = error_frame(&text);
        assert_eq!(frame.len(), HEADER_LEN + MAX_ERROR_FRAME);
        assert!(std::str::from_utf8(&frame[HEADER_LEN..]).is_ok());
        let odd = format!("x{text}");
        let frame = error_frame(&odd);
        assert_eq!(frame.len(), HEADER_LEN + MAX_ERROR_FRAME - 1);
    }
}
