//! Frames on the server port, and how they are read within bounds.
//!
//! A frame is `[length: u32 BE][payload]`, in plaintext or inside TLS. On a connection
//! authenticated with the gossip keyring ([`super::secure`]) a frame travels as sealed
//! records instead, each `[header: u32 BE][ciphertext][tag: 16]`: the header's top bit
//! says that another record of the same frame follows, the rest is the length of the
//! ciphertext with its tag (at most [`RECORD`] bytes of plaintext each). Every record is
//! AES-256-GCM under the session key of its direction, with the count of records sent
//! before it as nonce and its header as associated data, so records cannot be reordered,
//! dropped, replayed, cut short or moved between directions or connections without
//! failing to open; and a peer that does not hold the session key never makes the reader
//! hold more than one record.
//!
//! Reading is bounded three ways: a frame's announced length is checked before anything
//! is buffered ([`MAX_FRAME`]); a payload grows only as bytes arrive (authenticated ones,
//! on a sealed connection), in steps of [`RECORD`]; and on a connection whose peer proved
//! nothing, every byte held is charged to the port's [`FrameBudget`], which has a share
//! per IP address, so that a few addresses announcing large frames cannot make the
//! server hold gigabytes. A proven peer (a server of this datacenter) is not charged:
//! Raft's snapshots and large appends must never wait behind strangers.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ring::aead::{Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use gossip::quota::{Budget, Grant};

/// Bytes of frames from unproven peers held at once, with a share per IP address.
pub(crate) type FrameBudget = Budget<IpAddr>;

/// The reading half of a connection, TLS or not.
pub(crate) type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
/// The writing half of a connection, TLS or not.
pub(crate) type Writer = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// Largest frame accepted, in bytes. openraft sends snapshots in chunks well below it; a
/// snapshot restore forwarded by a client agent is the largest request (its snapshot
/// deflated: about 5 MiB for the 170,000 instances of `bench/scale.sh`).
pub(crate) const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Most plaintext bytes of one sealed record, and the step a payload grows by.
pub(crate) const RECORD: usize = 64 * 1024;
/// Bytes of an AES-GCM tag.
const TAG: usize = 16;
/// Header bit: another record of this frame follows.
const MORE: u32 = 1 << 31;
/// Time a peer has to send the rest of a frame once its first bytes have arrived.
pub(crate) const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of frames from unproven peers held at once, over the whole port.
pub(crate) const UNPROVEN_FRAME_BYTES: usize = 256 * 1024 * 1024;
/// Of [`UNPROVEN_FRAME_BYTES`], what frames from one IP address may hold; a reader past
/// it waits (within [`FRAME_TIMEOUT`]) for that address's other frames to be handled.
pub(crate) const UNPROVEN_FRAME_BYTES_PER_PEER: usize = MAX_FRAME;

fn invalid(text: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, text.into())
}

/// The session key of one direction of a sealed connection, and its record count.
pub(crate) struct Seal {
    key: LessSafeKey,
    records: u64,
}

impl Seal {
    /// A direction keyed with `key` (32 bytes, from the handshake), no record sent yet.
    pub(crate) fn new(key: UnboundKey) -> Seal {
        Seal {
            key: LessSafeKey::new(key),
            records: 0,
        }
    }

    fn nonce(&mut self) -> std::io::Result<Nonce> {
        let n = self.records;
        // 2^64 records of a connection never happen; refuse rather than reuse a nonce.
        self.records = n
            .checked_add(1)
            .ok_or_else(|| invalid("record counter exhausted"))?;
        let mut bytes = [0u8; NONCE_LEN];
        bytes[NONCE_LEN - 8..].copy_from_slice(&n.to_be_bytes());
        Ok(Nonce::assume_unique_for_key(bytes))
    }

    /// Seals `plaintext` in place into one record, returning its header.
    fn seal(&mut self, buf: &mut Vec<u8>, more: bool) -> std::io::Result<[u8; 4]> {
        let len = u32::try_from(buf.len() + TAG).map_err(|_| invalid("record too large"))?;
        let header = (len | if more { MORE } else { 0 }).to_be_bytes();
        let nonce = self.nonce()?;
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(header), buf)
            .map_err(|_| invalid("sealing failed"))?;
        Ok(header)
    }

    /// Opens one record in place; returns the plaintext's length.
    fn open(&mut self, header: [u8; 4], record: &mut [u8]) -> std::io::Result<usize> {
        let nonce = self.nonce()?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(header), record)
            .map_err(|_| invalid("a sealed record did not open: not from the session's peer"))?;
        Ok(plain.len())
    }
}

/// Writes frames to one connection.
pub(crate) struct FrameWriter {
    io: Writer,
    seal: Option<Seal>,
}

impl FrameWriter {
    /// A writer of plain frames (`seal` = `None`) or sealed records.
    pub(crate) fn new(io: Writer, seal: Option<Seal>) -> FrameWriter {
        FrameWriter { io, seal }
    }

    /// Writes one frame.
    pub(crate) async fn write(&mut self, payload: &[u8]) -> std::io::Result<()> {
        if payload.len() > MAX_FRAME {
            return Err(invalid(format!(
                "frame of {} bytes is over the limit of {MAX_FRAME}",
                payload.len()
            )));
        }
        let Some(seal) = &mut self.seal else {
            let len = u32::try_from(payload.len()).map_err(|_| invalid("frame too large"))?;
            self.io.write_all(&len.to_be_bytes()).await?;
            return self.io.write_all(payload).await;
        };
        let mut chunks = payload.chunks(RECORD).peekable();
        // An empty frame is still one record.
        let mut chunk: &[u8] = chunks.next().unwrap_or_default();
        loop {
            let more = chunks.peek().is_some();
            let mut record = Vec::with_capacity(4 + chunk.len() + TAG);
            record.extend_from_slice(&[0; 4]);
            let mut body = chunk.to_vec();
            let header = seal.seal(&mut body, more)?;
            record[..4].copy_from_slice(&header);
            record.extend_from_slice(&body);
            self.io.write_all(&record).await?;
            match chunks.next() {
                Some(next) => chunk = next,
                None => return Ok(()),
            }
        }
    }

    /// Closes the writing side.
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}

/// A frame read, with what it holds of the port's budget (given back when dropped).
pub(crate) struct Frame {
    /// The payload.
    pub(crate) payload: Vec<u8>,
    _charge: Option<Grant<IpAddr>>,
}

/// Reads frames from one connection.
pub(crate) struct FrameReader {
    io: Reader,
    seal: Option<Seal>,
    /// The budget this connection's frames are charged to, and its peer's address;
    /// `None` for a proven peer.
    budget: Option<(Arc<FrameBudget>, IpAddr)>,
}

impl FrameReader {
    /// A reader of plain frames (`seal` = `None`) or sealed records; frames are charged
    /// to `budget` when given.
    pub(crate) fn new(
        io: Reader,
        seal: Option<Seal>,
        budget: Option<(Arc<FrameBudget>, IpAddr)>,
    ) -> FrameReader {
        FrameReader { io, seal, budget }
    }

    /// The next frame. Waits as long as it takes for its first bytes (the caller bounds
    /// idle time), then at most [`FRAME_TIMEOUT`] for the rest.
    pub(crate) async fn read(&mut self) -> std::io::Result<Frame> {
        let mut header = [0u8; 4];
        self.io.read_exact(&mut header).await?;
        tokio::time::timeout(FRAME_TIMEOUT, self.read_rest(header))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "frame not sent in time")
            })?
    }

    async fn read_rest(&mut self, header: [u8; 4]) -> std::io::Result<Frame> {
        let mut charge = self
            .budget
            .as_ref()
            .map(|(budget, peer)| budget.grant(*peer));
        let mut payload = Vec::new();
        if self.seal.is_some() {
            self.read_sealed(header, &mut payload, &mut charge).await?;
        } else {
            let len = u32::from_be_bytes(header) as usize;
            if len > MAX_FRAME {
                return Err(invalid(format!(
                    "frame of {len} bytes is over the limit of {MAX_FRAME}"
                )));
            }
            while payload.len() < len {
                let step = (len - payload.len()).min(RECORD);
                if let Some(charge) = &mut charge {
                    charge.wait_to_grow(charge.bytes() + step).await;
                }
                let start = payload.len();
                payload.resize(start + step, 0);
                self.io.read_exact(&mut payload[start..]).await?;
            }
        }
        Ok(Frame {
            payload,
            _charge: charge,
        })
    }

    async fn read_sealed(
        &mut self,
        mut header: [u8; 4],
        payload: &mut Vec<u8>,
        charge: &mut Option<Grant<IpAddr>>,
    ) -> std::io::Result<()> {
        let mut record = Vec::new();
        loop {
            let word = u32::from_be_bytes(header);
            let len = (word & !MORE) as usize;
            if !(TAG..=RECORD + TAG).contains(&len) {
                return Err(invalid(format!("sealed record of {len} bytes")));
            }
            record.resize(len, 0);
            self.io.read_exact(&mut record).await?;
            let seal = self.seal.as_mut().expect("a sealed reader");
            let plain = seal.open(header, &mut record)?;
            if payload.len() + plain > MAX_FRAME {
                return Err(invalid(format!(
                    "frame over the limit of {MAX_FRAME} bytes"
                )));
            }
            if let Some(charge) = charge {
                charge.wait_to_grow(charge.bytes() + plain).await;
            }
            payload.extend_from_slice(&record[..plain]);
            if word & MORE == 0 {
                return Ok(());
            }
            self.io.read_exact(&mut header).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use proptest::prelude::*;
    use ring::aead::AES_256_GCM;

    fn key(fill: u8) -> UnboundKey {
        UnboundKey::new(&AES_256_GCM, &[fill; 32]).unwrap()
    }

    /// A sealed writer and reader joined by an in-memory pipe.
    fn sealed_pair(write_key: u8, read_key: u8) -> (FrameWriter, FrameReader) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let writer = FrameWriter::new(Box::new(a), Some(Seal::new(key(write_key))));
        let reader = FrameReader::new(Box::new(b), Some(Seal::new(key(read_key))), None);
        (writer, reader)
    }

    #[tokio::test]
    async fn sealed_frames_of_every_size_round_trip() {
        let (mut writer, mut reader) = sealed_pair(1, 1);
        for len in [0, 1, RECORD - 1, RECORD, RECORD + 1, 5 * RECORD + 7] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let send = writer.write(&payload);
            let (sent, got) = tokio::join!(send, reader.read());
            sent.unwrap();
            assert_eq!(got.unwrap().payload, payload, "frame of {len} bytes");
        }
    }

    #[tokio::test]
    async fn a_record_under_another_key_does_not_open() {
        let (mut writer, mut reader) = sealed_pair(1, 2);
        writer.write(b"hello").await.unwrap();
        let e = reader.read().await.err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    /// The records of three frames (of two records each, then one), as written.
    async fn records() -> Vec<Vec<u8>> {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut writer = FrameWriter::new(Box::new(a), Some(Seal::new(key(1))));
        writer.write(&vec![1u8; RECORD + 1]).await.unwrap();
        writer.write(&vec![2u8; RECORD + 1]).await.unwrap();
        writer.write(b"last").await.unwrap();
        drop(writer);
        let mut all = Vec::new();
        b.read_to_end(&mut all).await.unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        while at < all.len() {
            let len = (u32::from_be_bytes(all[at..at + 4].try_into().unwrap()) & !MORE) as usize;
            out.push(all[at..at + 4 + len].to_vec());
            at += 4 + len;
        }
        out
    }

    async fn read_records(records: &[Vec<u8>]) -> std::io::Result<Vec<Vec<u8>>> {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        for r in records {
            a.write_all(r).await.unwrap();
        }
        drop(a);
        let mut reader = FrameReader::new(Box::new(b), Some(Seal::new(key(1))), None);
        let mut frames = Vec::new();
        loop {
            match reader.read().await {
                Ok(f) => frames.push(f.payload),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(frames),
                Err(e) => return Err(e),
            }
        }
    }

    #[tokio::test]
    async fn records_reordered_dropped_replayed_or_spliced_are_refused() {
        let r = records().await;
        assert_eq!(r.len(), 5);
        assert_eq!(read_records(&r).await.unwrap().len(), 3);
        let cases: [(&str, Vec<Vec<u8>>); 4] = [
            ("reordered", vec![r[1].clone(), r[0].clone()]),
            ("dropped", vec![r[0].clone(), r[2].clone()]),
            ("replayed", vec![r[0].clone(), r[1].clone(), r[0].clone()]),
            ("a frame cut short", vec![r[0].clone(), r[4].clone()]),
        ];
        for (what, records) in cases {
            let e = read_records(&records).await.err();
            assert!(e.is_some(), "{what} records were accepted");
        }
        // A header whose `more` bit was cleared no longer opens its record.
        let mut cut = r[0].clone();
        cut[0] &= 0x7f;
        assert!(read_records(&[cut]).await.is_err());
    }

    #[tokio::test]
    async fn an_announced_length_over_the_limit_is_refused_before_reading() {
        let (mut a, b) = tokio::io::duplex(64);
        let len = u32::try_from(MAX_FRAME + 1).unwrap();
        a.write_all(&len.to_be_bytes()).await.unwrap();
        let mut reader = FrameReader::new(Box::new(b), None, None);
        let e = reader.read().await.err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn unproven_frames_wait_for_their_peers_share_and_give_it_back() {
        let budget: Arc<FrameBudget> = FrameBudget::new(3 * RECORD, 2 * RECORD);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let open = |peer| {
            let (a, b) = tokio::io::duplex(1 << 20);
            let writer = FrameWriter::new(Box::new(a), None);
            let reader = FrameReader::new(Box::new(b), None, Some((budget.clone(), peer)));
            (writer, reader)
        };
        let (mut w1, mut r1) = open(peer);
        w1.write(&vec![0u8; 2 * RECORD]).await.unwrap();
        let first = r1.read().await.unwrap();
        assert_eq!(budget.used(), 2 * RECORD);
        // The same address's next frame waits for the first to be handled.
        let (mut w2, mut r2) = open(peer);
        w2.write(&[7u8; 10]).await.unwrap();
        let mut second = Box::pin(r2.read());
        assert!(
            second.as_mut().now_or_never().is_none(),
            "the peer's share is spent"
        );
        // Another address still gets the rest.
        let (mut w3, mut r3) = open(other);
        w3.write(&[1u8; 10]).await.unwrap();
        let third = r3.read().await.unwrap();
        drop(first);
        let second = second.await.unwrap();
        assert_eq!(second.payload, [7u8; 10]);
        drop((second, third));
        assert_eq!(budget.used(), 0);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_a_reader(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            sealed in any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let (mut a, b) = tokio::io::duplex(4096);
                a.write_all(&bytes).await.unwrap();
                drop(a);
                let seal = sealed.then(|| Seal::new(key(3)));
                let mut reader = FrameReader::new(Box::new(b), seal, None);
                // Plain frames may be read back; sealed ones never open.
                while let Ok(frame) = reader.read().await {
                    prop_assert!(!sealed);
                    prop_assert!(frame.payload.len() <= MAX_FRAME);
                }
                Ok(())
            })?;
        }
    }
}
