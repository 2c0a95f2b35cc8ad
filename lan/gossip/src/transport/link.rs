//! What a pool runs over: the [`Link`] a pool sends with, and the [`Inbound`] a link hands
//! what it receives to. The LAN pool's link is UDP/TCP (`udp_tcp`); the WAN pool's, in
//! crate `proconsul-wan`, is QUIC datagrams and streams.
//!
//! ```text
//!            send_packet, exchange ──▶ Link ──▶ the network
//!   pool ◀── packet, serve ─────────── Inbound ◀── the network
//! ```
//!
//! Packets are unreliable and go one way: [`Link::send_packet`] sends at once or never, and
//! [`Inbound::packet`] queues a received one for the pool's engine or drops it (SWIM
//! tolerates loss). Streams carry one exchange each, a request frame and an answer frame in
//! the layout of [`crate::stream`]: [`Link::exchange`] opens one and sends the request,
//! the pool reads the answer from the [`Reply`]; [`Inbound::serve`] reads a request within
//! the pool's bounds and writes its answer. Neither waits on its own: the pool bounds each
//! exchange it opens with a deadline, and a link bounds each stream it serves (both pool
//! links with [`STREAM_TIMEOUT`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::quota::{PerAddr, Share};
use crate::stream::{self, Expect, FrameError};

use super::exchange::{JoinError, answer_request};
use super::pool::{Command, Shared};

/// Budget of one stream exchange (connect, send, answer), and of serving one.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Received packets waiting for the engine task; a packet that finds the queue full is
/// dropped, which SWIM tolerates.
pub const PACKET_QUEUE: usize = 1024;
/// Of [`PACKET_QUEUE`], what one sender (address and port) may hold; its further packets
/// are dropped until the engine has taken some, so one noisy peer cannot crowd out the
/// rest.
pub const PACKET_QUEUE_PER_PEER: usize = 128;

/// The reading half of a stream opened by [`Link::exchange`], where the answer arrives.
pub type Reply = Box<dyn AsyncRead + Send + Unpin>;
/// A stream being opened by [`Link::exchange`].
pub type Exchange<'a> = Pin<Box<dyn Future<Output = Result<Reply, JoinError>> + Send + 'a>>;

/// How a pool reaches the other members: unreliable packets, and one-frame exchanges on
/// a reliable stream. What arrives is handed to the pool's [`Inbound`].
pub trait Link: Send + Sync + 'static {
    /// The address the link is bound to.
    fn local_addr(&self) -> SocketAddr;
    /// Sends one packet, at once or never (SWIM tolerates loss; nothing may wait here).
    fn send_packet(&self, to: SocketAddr, bytes: Vec<u8>);
    /// Opens a new stream to `to`, sends `frame` (one [`crate::stream`] frame) on it and
    /// hands back the stream's reading half, from which the pool reads the answer frame
    /// under its own bounds. The caller bounds the whole exchange with a deadline.
    fn exchange(&self, to: SocketAddr, frame: Vec<u8>) -> Exchange<'_>;
}

/// A received packet waiting for the engine, holding its sender's place in the queue.
pub(super) struct Queued {
    pub(super) bytes: Vec<u8>,
    pub(super) from: SocketAddr,
    _share: Share<SocketAddr>,
}

/// The engine's queue of received packets, with a share of it per sender.
#[derive(Clone)]
pub(super) struct PacketQueue {
    tx: mpsc::Sender<Queued>,
    senders: Arc<PerAddr>,
}

impl PacketQueue {
    /// A queue of [`PACKET_QUEUE`] packets and the engine's end of it.
    pub(super) fn new() -> (PacketQueue, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(PACKET_QUEUE);
        let queue = PacketQueue {
            tx,
            senders: PerAddr::new(),
        };
        (queue, rx)
    }

    fn push(&self, from: SocketAddr, bytes: Vec<u8>) -> Result<(), &'static str> {
        let share = self
            .senders
            .take(from, PACKET_QUEUE_PER_PEER)
            .ok_or("this sender's share of the queue is full")?;
        self.tx
            .try_send(Queued {
                bytes,
                from,
                _share: share,
            })
            .map_err(|_| "the queue is full")
    }
}

/// Where a link hands what it receives. Cheap to clone.
#[derive(Clone)]
pub struct Inbound {
    pub(super) packets: PacketQueue,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("pool", &self.shared.pool)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// A packet from `from`, still sealed. Dropped when the engine is [`PACKET_QUEUE`]
    /// packets behind, or [`PACKET_QUEUE_PER_PEER`] of them are from `from`.
    pub fn packet(&self, from: SocketAddr, bytes: Vec<u8>) {
        if let Err(why) = self.packets.push(from, bytes) {
            tracing::trace!(peer = %from, "gossip packet dropped: {why}");
        }
    }

    /// Serves one gossip stream from `peer`: reads its request frame from `recv` (within
    /// the limits of [`crate::stream`] and this pool's budget) and writes the answer to
    /// `send`, or an error frame saying why the request was refused, or nothing. Bad input
    /// is logged here (once per peer per [`PEER_LOG_INTERVAL`](crate::PEER_LOG_INTERVAL)); the error returned is the
    /// stream's own (it broke, or ended early). The caller bounds it with a deadline.
    pub async fn serve<R, W>(
        &self,
        peer: SocketAddr,
        recv: &mut R,
        send: &mut W,
    ) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin + Send + ?Sized,
        W: AsyncWrite + Unpin + Send + ?Sized,
    {
        let shared = &self.shared;
        // Held until the answer is written: the request's buffer lives that long.
        let mut grant = shared.streams.grant(peer.ip());
        let opener = shared.crypto.opener();
        let answer = match stream::read(recv, &opener, Expect::Request, &mut grant).await {
            Ok(frame) => answer_request(&self.commands, shared, peer, frame).await,
            Err(FrameError::Io(e)) => return Err(e),
            Err(e) => {
                shared.refused(peer, "gossip stream", &e);
                e.tells_peer().then(|| stream::error_frame(&e.to_string()))
            }
        };
        if let Some(answer) = answer {
            send.write_all(&answer).await?;
            send.flush().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::keyring::Key;
    use crate::member::MemberStatus;
    use crate::stream::{Frame, Kind, Opener};
    use crate::swim::message::{Message, decode_frame, encode_frame};
    use crate::swim::{MemberState, State};
    use crate::transport::support::{
        Cluster, config, encrypted, eventually, read_answer, sees, soon,
    };
    use crate::transport::{MAX_INBOUND_STREAMS_PER_PEER, Pool};

    #[tokio::test]
    async fn one_sender_cannot_fill_the_packet_queue() {
        let (queue, mut rx) = PacketQueue::new();
        let noisy: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let quiet: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        let taken = (0..PACKET_QUEUE_PER_PEER * 2)
            .filter(|_| queue.push(noisy, vec![0; 8]).is_ok())
            .count();
        assert_eq!(taken, PACKET_QUEUE_PER_PEER);
        queue
            .push(quiet, vec![1])
            .expect("another sender still has its share");
        // The engine takes one of the noisy sender's packets: its place is free again.
        let first = rx.recv().await.unwrap();
        assert_eq!(first.from, noisy);
        drop(first);
        queue.push(noisy, vec![2]).expect("a place was given back");
        assert!(queue.push(noisy, vec![3]).is_err());
    }

    /// A stream to `to` from 127.0.0.`host`.
    async fn connect_from(host: u8, to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::from(([127, 0, 0, host], 0)))
            .unwrap();
        socket.connect(to).await.unwrap()
    }

    /// The header of a push-pull frame announcing `len` bytes, sealed (with a random
    /// nonce base) or plaintext, as someone without the key can write it.
    fn push_pull_header(len: usize, sealed: bool) -> Vec<u8> {
        let mut header = vec![if sealed { b'S' } else { b'P' }, Kind::PushPull.byte()];
        header.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
        if sealed {
            header.extend_from_slice(&rand::random::<[u8; 12]>());
        }
        header
    }

    #[tokio::test]
    async fn junk_streams_from_many_addresses_cost_one_chunk_each_while_a_member_joins() {
        use stream::{CHUNK_WIRE, MAX_PUSH_PULL_FRAME};
        let key = Key::generate();
        let c = Cluster::start(1, |_| encrypted(&key)).await;
        let target = &c.pools[0];
        let budget = target.shared.streams.clone();
        // Three addresses open more streams than their share each (the rest wait), all
        // announcing the largest push-pull, sealed, and sending half a chunk of junk.
        let per_address = MAX_INBOUND_STREAMS_PER_PEER + 4;
        let mut junk = Vec::new();
        for host in 2..=4 {
            for _ in 0..per_address {
                let mut s = connect_from(host, target.addr()).await;
                s.write_all(&push_pull_header(MAX_PUSH_PULL_FRAME, true))
                    .await
                    .unwrap();
                s.write_all(&vec![0xA5; CHUNK_WIRE / 2]).await.unwrap();
                junk.push(s);
            }
        }
        // One more announces more than any push-pull may hold: refused on its header.
        let mut oversized = connect_from(5, target.addr()).await;
        oversized
            .write_all(&push_pull_header(16 * 1024 * 1024, true))
            .await
            .unwrap();
        let refused = read_answer(&mut oversized, Kind::PushPull).await.unwrap();
        assert_eq!(refused.kind, Kind::Error);
        assert_eq!(
            String::from_utf8_lossy(&refused.payload),
            format!(
                "push-pull frame of {} bytes is over the limit of {MAX_PUSH_PULL_FRAME}",
                16 * 1024 * 1024
            )
        );

        // A member at another address joins and gossips meanwhile.
        let mut member = config("member", encrypted(&key));
        member.bind = "127.0.0.9:0".parse().unwrap();
        member.advertise = "127.0.0.9".parse().unwrap();
        let token = CancellationToken::new();
        let _stop = token.clone().drop_guard();
        let member = Pool::start(member, &c.tasks, token).await.unwrap();
        member
            .join_one(&target.addr().to_string(), soon())
            .await
            .expect("a member joins while junk streams are open");
        eventually("the member and the target see each other", || {
            sees(target, "member", MemberStatus::Alive) && sees(&member, "n0", MemberStatus::Alive)
        })
        .await;

        // Each junk stream completes its first chunk: no key opens it, it is told so
        // and closed, and none of its bytes was ever charged to the budget.
        for mut s in junk {
            s.write_all(&vec![0xA5; CHUNK_WIRE - CHUNK_WIRE / 2])
                .await
                .unwrap();
            let answer = read_answer(&mut s, Kind::PushPull).await.unwrap();
            assert_eq!(answer.kind, Kind::Error);
            assert_eq!(
                answer.payload,
                b"No installed keys could decrypt the message"
            );
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "the stream ends after the error frame");
        }
        assert_eq!(budget.peak(), 0, "no junk byte got past the first chunk");
        // Gossip still flows: the member's leave reaches the target.
        member.leave().await;
        eventually("the leave", || sees(target, "member", MemberStatus::Left)).await;
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn plaintext_frames_are_held_to_an_addresss_share_of_the_budget() {
        use stream::{CHUNK_WIRE, FRAME_ALLOWANCE, MAX_PUSH_PULL_FRAME};
        let c = Cluster::start(1, |_| None).await;
        let target = &c.pools[0];
        let budget = target.shared.streams.clone();
        let from: IpAddr = "127.0.0.2".parse().unwrap();
        // Three streams from one address announce the largest push-pull, without
        // encryption, and send 1 MiB of it each: one fits the address's share, the
        // others are refused after their first chunk.
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for _ in 0..3 {
            let (mut r, mut w) = connect_from(2, target.addr()).await.into_split();
            readers.push(tokio::spawn(async move {
                let mut answer = Vec::new();
                // A refused stream may be reset under the writer; what came first stays.
                let _ = r.read_to_end(&mut answer).await;
                answer
            }));
            writers.push(tokio::spawn(async move {
                let _ = w
                    .write_all(&push_pull_header(MAX_PUSH_PULL_FRAME, false))
                    .await;
                for _ in 0..16 {
                    if w.write_all(&vec![0; CHUNK_WIRE]).await.is_err() {
                        break;
                    }
                }
                // Held open: the frame is never finished.
                w
            }));
        }
        let mut pending = readers;
        for _ in 0..2 {
            let (answer, _, rest) = futures_util::future::select_all(pending).await;
            pending = rest;
            let refused = read_answer_bytes(&answer.unwrap(), Kind::PushPull).await;
            assert_eq!(refused.kind, Kind::Error);
            assert_eq!(
                refused.payload,
                b"the memory budget for stream frames being read for this address is used up"
            );
        }
        assert!(
            !pending[0].is_finished(),
            "the stream that fits is still read"
        );
        let charged = MAX_PUSH_PULL_FRAME - FRAME_ALLOWANCE;
        assert_eq!(budget.held(&from), charged);
        assert_eq!(
            budget.peak(),
            charged,
            "the refused ones never held anything"
        );

        // A member at another address still joins (its frames fit their first chunk).
        let mut member = config("member", None);
        member.bind = "127.0.0.3:0".parse().unwrap();
        member.advertise = "127.0.0.3".parse().unwrap();
        let token = CancellationToken::new();
        let _stop = token.clone().drop_guard();
        let member = Pool::start(member, &c.tasks, token).await.unwrap();
        member
            .join_one(&target.addr().to_string(), soon())
            .await
            .expect("a member joins while an address holds its share");
        // Once the streams are gone, so is what they held.
        for w in writers {
            drop(w.await.unwrap());
        }
        pending[0].abort();
        eventually("the budget is given back", || budget.used() == 0).await;
    }

    /// Reads `bytes` as an answer frame to a request of `kind`, as a member without a
    /// key does.
    async fn read_answer_bytes(bytes: &[u8], kind: Kind) -> Frame {
        let opener = Opener {
            keyring: None,
            verify_incoming: false,
        };
        let budget = stream::budget();
        let mut grant = budget.grant("127.0.0.1".parse().unwrap());
        let mut rest = bytes;
        stream::read(&mut rest, &opener, Expect::Answer(kind), &mut grant)
            .await
            .unwrap()
    }

    /// `n` members of 50 kB each (long names keep the pool small while the frame is
    /// large), at an address nobody listens on.
    fn large_states(n: usize) -> Vec<MemberState> {
        (0..n)
            .map(|i| MemberState {
                name: format!("m{i:03}-{}", "x".repeat(50_000)),
                addr: "127.0.0.1:1".parse().unwrap(),
                incarnation: 1,
                state: State::Alive,
                tags: std::sync::Arc::new(BTreeMap::from([(
                    "role".to_string(),
                    "node".to_string(),
                )])),
            })
            .collect()
    }

    // Two threads: the client seals and opens while the pool does (AES-GCM is slow in
    // debug builds).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn push_pulls_of_several_mib_go_both_ways_with_and_without_encryption() {
        let key = Key::generate();
        for encryption in [encrypted(&key), None] {
            let c = Cluster::start(1, |_| encryption.clone()).await;
            let target = &c.pools[0];
            let sealer = encryption.as_ref().map(|_| key.clone());
            let opener = Opener {
                keyring: encryption.as_ref().map(|e| e.keyring.clone()),
                verify_incoming: true,
            };
            let budget = stream::budget();
            let ask = |states: Vec<MemberState>| {
                let (opener, budget, sealer) = (opener.clone(), budget.clone(), sealer.clone());
                let to = target.addr();
                async move {
                    let payload = encode_frame(&Message::PushPull {
                        join: false,
                        states,
                    });
                    let frame = stream::encode(Kind::PushPull, &payload, sealer.as_ref()).unwrap();
                    let mut s = TcpStream::connect(to).await.unwrap();
                    s.write_all(&frame).await.unwrap();
                    let mut grant = budget.grant(to.ip());
                    let answer =
                        stream::read(&mut s, &opener, Expect::Answer(Kind::PushPull), &mut grant)
                            .await
                            .unwrap();
                    assert_eq!(answer.kind, Kind::PushPull);
                    match decode_frame(&answer.payload).unwrap() {
                        Message::PushPull { states, .. } => {
                            (payload.len(), answer.payload.len(), states)
                        }
                        other => panic!("{other:?}"),
                    }
                }
            };
            // A request of some 3 MiB, then an answer as large.
            let (sent, _, _) = ask(large_states(60)).await;
            assert!(sent > 3_000_000, "{sent}");
            let (_, received, states) = ask(Vec::new()).await;
            assert!(received > 3_000_000, "{received}");
            assert_eq!(
                states.len(),
                61,
                "the target's state holds every member sent"
            );
            eventually("the target's budget is given back", || {
                target.shared.streams.used() == 0
            })
            .await;
        }
    }
}
