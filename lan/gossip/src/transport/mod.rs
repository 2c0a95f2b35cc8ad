//! The gossip driver: runs the SWIM [`Engine`] over a [`Link`] and owns the clock and the
//! keyring. The LAN pool's link is UDP for packets and TCP for streams on the serf LAN
//! port (8301); the WAN pool (crate `proconsul-wan`) runs the same driver over QUIC
//! datagrams and streams.
//!
//! ```text
//!   link packets ──open──▶ Engine::handle_packet ─┐
//!   link streams ──open──▶ push-pull / keyring ───┤   one task owns the engine (`run`)
//!   Pool (handle) ─────────▶ commands ────────────┤──▶ Engine::tick ──▶ outputs ──seal──▶ link
//!                                                 └──▶ events ──▶ watch<Arc<Vec<Member>>>
//! ```
//!
//! Every packet and stream frame is sealed with the keyring's primary key when gossip
//! encryption is on (see [`crate::keyring`]); what does not open or decode is dropped and
//! logged with its sender, at most once per peer per [`PEER_LOG_INTERVAL`]. A stream
//! whose frame the other side cannot open is answered with a short plaintext error frame,
//! so that an agent joining with the wrong key is told why (and the refusing side logs
//! it too).
//!
//! A stream carries one request frame (a push-pull or a keyring request) and one answer
//! frame, in the layout of [`crate::stream`]: a header whose announced length is checked
//! against its kind's limit before anything is buffered, then the payload, sealed in
//! chunks that are each authenticated before the next is read. What a pool's frames hold
//! while they are read is bounded by its budget ([`stream::MAX_STREAM_BYTES`], with a
//! share per IP address), for incoming requests and for the answers to its own exchanges.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::keyring::{Key, Keyring, KeyringError, OpenError, SEALED_VERSION};
use crate::member::{Member, MemberStatus};
use crate::peer_log::PeerLog;
use crate::quota::{Budget, Grant, PerAddr, Share};
use crate::stream::{self, Expect, Frame, FrameError, Kind, Opener};
use crate::swim::coordinate::Coordinate;
use crate::swim::message::{Message, decode_frame, encode_frame};
use crate::swim::{self, Engine, Event, MemberState, Output, State};

#[cfg(test)]
mod support;
mod udp_tcp;

pub use udp_tcp::{MAX_INBOUND_STREAMS, MAX_INBOUND_STREAMS_PER_PEER, MAX_WAITING_STREAMS};

/// Commands waiting for the engine task; senders wait when it is full.
const COMMAND_QUEUE: usize = 256;
/// Push-pull results waiting to be merged; a result that finds the queue full is
/// dropped (the next exchange brings the same news).
const MERGE_QUEUE: usize = 64;
/// Outgoing push-pulls at once; the engine's periodic exchange is skipped while all are
/// busy (it runs again at the next interval).
pub const MAX_OUTBOUND_STREAMS: usize = 16;
/// Budget of one stream exchange (connect, send, answer), and of serving one.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Keyring requests sent to members at once during a pool-wide keyring operation.
pub const KEYRING_FANOUT: usize = 32;
/// How long one member has to answer a keyring request.
pub const KEYRING_MEMBER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a graceful leave waits for its announcement to go out.
pub const LEAVE_PROPAGATE_TIMEOUT: Duration = Duration::from_secs(3);
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

/// Gossip encryption settings of a pool.
#[derive(Debug, Clone)]
pub struct Encryption {
    /// The keys, primary first.
    pub keyring: Keyring,
    /// Where the keyring is saved after every change (`serf/local.keyring`); `None`
    /// keeps changes in memory only (`-dev`).
    pub file: Option<PathBuf>,
    /// Refuse plaintext messages (`encrypt_verify_incoming`).
    pub verify_incoming: bool,
    /// Seal what is sent (`encrypt_verify_outgoing`).
    pub verify_outgoing: bool,
}

/// Everything a pool needs to start.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// This member's name.
    pub name: String,
    /// Address to bind UDP and TCP to; port 0 picks a free port for both.
    pub bind: SocketAddr,
    /// Address other members reach this one at.
    pub advertise: IpAddr,
    /// Port other members reach this one at, when it is not the bound port (a NAT or a
    /// proxy in between); `None` advertises the bound port.
    pub advertise_port: Option<u16>,
    /// This member's tags.
    pub tags: BTreeMap<String, String>,
    /// Protocol timers.
    pub gossip: swim::Config,
    /// Gossip encryption; `None` for plaintext gossip.
    pub encryption: Option<Encryption>,
}

/// Why joining an address failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The address does not resolve; fix it.
    #[error("failed to resolve {0}")]
    Resolve(String),
    /// No answer in time; the agent may be down or unreachable.
    #[error("timed out")]
    Timeout,
    /// The connection failed.
    #[error("{0}")]
    Io(String),
    /// The other agent refused our message and said why (a different gossip key, or
    /// encryption on one side only).
    #[error("remote refused: {0}")]
    Refused(String),
    /// The answer could not be read: a different key or protocol.
    #[error("{0}")]
    Protocol(String),
    /// This agent is stopping.
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// One keyring operation, run by every member on its own keyring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyOperation {
    /// Report the installed keys.
    List,
    /// Add a key.
    Install(String),
    /// Make a key the primary.
    Use(String),
    /// Remove a key.
    Remove(String),
}

/// A member's answer to a keyring operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeyAnswer {
    /// Installed keys after the operation, primary first.
    keys: Vec<String>,
    /// The error, when the member refused.
    error: Option<String>,
}

/// The pool-wide result of a keyring operation, as Consul reports it per pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringReport {
    /// Members asked (the live members of the pool).
    pub num_nodes: usize,
    /// Members that answered.
    pub num_resp: usize,
    /// Members that failed or did not answer.
    pub num_err: usize,
    /// Each key with the number of members holding it.
    pub keys: BTreeMap<String, usize>,
    /// Each primary key with the number of members using it.
    pub primary_keys: BTreeMap<String, usize>,
    /// Member name → its error (including "no answer" for silent members).
    pub messages: BTreeMap<String, String>,
}

enum Command {
    Join {
        states: Vec<MemberState>,
        /// Answered once the member list shows what the exchange brought.
        merged: oneshot::Sender<()>,
    },
    LocalState(oneshot::Sender<Vec<MemberState>>),
    Remote {
        states: Vec<MemberState>,
        reply: oneshot::Sender<Vec<MemberState>>,
    },
    Leave(oneshot::Sender<()>),
    ForceLeave {
        node: String,
        prune: bool,
        reply: oneshot::Sender<bool>,
    },
    SetTags(BTreeMap<String, String>),
    Targets(oneshot::Sender<Vec<(String, SocketAddr)>>),
    Coordinates(oneshot::Sender<Coordinates>),
}

/// This member's network coordinate and the latest one of every member that answered
/// its probes, by name (this member included).
pub type Coordinates = BTreeMap<String, Coordinate>;

/// The keyring in use and how messages are sealed and opened with it.
pub(crate) struct Crypto {
    keyring: RwLock<Option<Keyring>>,
    file: Option<PathBuf>,
    verify_incoming: bool,
    verify_outgoing: bool,
}

/// Why a received message was dropped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("{0}")]
    Open(#[from] OpenError),
    #[error("encryption is not configured on this agent, but the message is encrypted")]
    Unexpected,
    #[error("encryption is required by this agent, but the message is not encrypted")]
    Plaintext,
}

pub(crate) const PACKET_AAD: &[u8] = b"packet";

impl Crypto {
    pub(crate) fn new(encryption: Option<Encryption>) -> Crypto {
        match encryption {
            None => Crypto {
                keyring: RwLock::new(None),
                file: None,
                verify_incoming: false,
                verify_outgoing: false,
            },
            Some(e) => Crypto {
                keyring: RwLock::new(Some(e.keyring)),
                file: e.file,
                verify_incoming: e.verify_incoming,
                verify_outgoing: e.verify_outgoing,
            },
        }
    }

    fn enabled(&self) -> bool {
        self.keyring.read().expect("keyring lock").is_some()
    }

    fn seal(&self, plaintext: Vec<u8>, aad: &[u8]) -> Vec<u8> {
        if !self.verify_outgoing {
            return plaintext;
        }
        match &*self.keyring.read().expect("keyring lock") {
            Some(ring) => ring.seal(&plaintext, aad),
            None => plaintext,
        }
    }

    /// The key to seal a stream frame with: the primary when there is a keyring and
    /// `encrypt_verify_outgoing` is on, or with `always` (keyring requests always travel
    /// sealed).
    fn stream_key(&self, always: bool) -> Option<Key> {
        if !(always || self.verify_outgoing) {
            return None;
        }
        let guard = self.keyring.read().expect("keyring lock");
        guard.as_ref().map(|ring| ring.primary().clone())
    }

    /// What stream frames are read with: the keys installed now, and whether plaintext
    /// is refused.
    fn opener(&self) -> Opener {
        Opener {
            keyring: self.keyring.read().expect("keyring lock").clone(),
            verify_incoming: self.verify_incoming,
        }
    }

    fn open(&self, bytes: &[u8], aad: &[u8]) -> Result<Vec<u8>, Refusal> {
        let guard = self.keyring.read().expect("keyring lock");
        match (&*guard, bytes.first()) {
            (None, Some(&SEALED_VERSION)) => Err(Refusal::Unexpected),
            (None, _) => Ok(bytes.to_vec()),
            (Some(ring), Some(&SEALED_VERSION)) => Ok(ring.open(bytes, aad)?),
            (Some(_), _) if self.verify_incoming => Err(Refusal::Plaintext),
            (Some(_), _) => Ok(bytes.to_vec()),
        }
    }

    /// Applies a keyring operation to this member's keyring and saves it.
    fn apply(&self, op: &KeyOperation) -> KeyAnswer {
        let mut guard = self.keyring.write().expect("keyring lock");
        let Some(ring) = guard.as_mut() else {
            return KeyAnswer {
                keys: Vec::new(),
                error: Some("Gossip encryption is not enabled".into()),
            };
        };
        let parse = |text: &str| Key::parse(text).map_err(|e| e.to_string());
        let before = ring.clone();
        let result: Result<(), String> = match op {
            KeyOperation::List => Ok(()),
            KeyOperation::Install(k) => parse(k).map(|k| ring.install(k)),
            KeyOperation::Use(k) => {
                parse(k).and_then(|k| ring.use_key(&k).map_err(|e: KeyringError| e.to_string()))
            }
            KeyOperation::Remove(k) => {
                parse(k).and_then(|k| ring.remove(&k).map_err(|e: KeyringError| e.to_string()))
            }
        };
        let mut error = result.err();
        if error.is_none()
            && *ring != before
            && let Some(file) = &self.file
            && let Err(e) = ring.save(file)
        {
            // Keep memory and disk in step: a change that cannot be saved is undone.
            *ring = before;
            error = Some(format!("failed to write {}: {e}", file.display()));
        }
        KeyAnswer {
            keys: ring.keys().iter().map(Key::to_base64).collect(),
            error,
        }
    }
}

struct Shared {
    crypto: Crypto,
    log: std::sync::Mutex<PeerLog>,
    link: Arc<dyn Link>,
    /// What stream frames being read may hold, in all and per IP address.
    streams: Arc<Budget<IpAddr>>,
    /// "LAN" or "WAN", for logs.
    pool: &'static str,
}

impl Shared {
    fn refused(&self, peer: SocketAddr, what: &str, error: &dyn std::fmt::Display) {
        let now = Instant::now();
        let log = self
            .log
            .lock()
            .expect("peer log lock")
            .should_log(peer.ip(), now);
        if let Some(suppressed) = log {
            tracing::warn!(pool = self.pool, peer = %peer, error = %error, suppressed, "dropped {what}");
        }
    }
}

/// Handle to a gossip pool. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    commands: mpsc::Sender<Command>,
    members: watch::Receiver<Arc<Vec<Member>>>,
    shared: Arc<Shared>,
    addr: SocketAddr,
    name: String,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn to_member(m: &swim::Member) -> Member {
    Member {
        name: m.name.clone(),
        addr: m.addr.ip(),
        port: m.addr.port(),
        tags: m.tags.clone(),
        status: match m.state {
            // Serf reports a suspect as alive until it is declared failed.
            State::Alive | State::Suspect => MemberStatus::Alive,
            State::Dead => MemberStatus::Failed,
            State::Left => MemberStatus::Left,
        },
    }
}

fn member_list(engine: &Engine) -> Arc<Vec<Member>> {
    Arc::new(engine.members().map(to_member).collect())
}

impl Pool {
    /// Starts a pool over a link the caller bound (at `config.bind`). The caller hands
    /// what arrives on the link to the returned [`Inbound`]. `pool` names it in logs.
    pub fn start_with(
        config: PoolConfig,
        link: Arc<dyn Link>,
        pool: &'static str,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> (Pool, Inbound) {
        let bound = link.local_addr();
        let addr = SocketAddr::new(
            config.advertise,
            config.advertise_port.unwrap_or(bound.port()),
        );
        let seed = rand::random();
        let engine = Engine::new(
            config.gossip,
            config.name.clone(),
            addr,
            config.tags,
            std::time::Instant::now(),
            seed,
        );
        let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
        let (packets, packet_inbox) = mpsc::channel(PACKET_QUEUE);
        let packets = PacketQueue {
            tx: packets,
            senders: PerAddr::new(),
        };
        let (publish, members) = watch::channel(member_list(&engine));
        let shared = Arc::new(Shared {
            crypto: Crypto::new(config.encryption),
            log: std::sync::Mutex::new(PeerLog::default()),
            link,
            streams: stream::budget(),
            pool,
        });
        let handle = Pool {
            commands: commands.clone(),
            members,
            shared: shared.clone(),
            addr,
            name: config.name,
        };
        let driver = Driver {
            engine,
            shared: shared.clone(),
            publish,
            tasks: tasks.clone(),
            outbound: Arc::new(Semaphore::new(MAX_OUTBOUND_STREAMS)),
            leaving: None,
            shutdown,
        };
        tasks.spawn(driver.run(inbox, packet_inbox));
        let inbound = Inbound {
            packets,
            commands,
            shared,
        };
        (handle, inbound)
    }

    /// The address other members reach this one at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every member this one knows, itself included.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.members.borrow().clone()
    }

    /// A receiver that sees every change of the member list.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<Member>>> {
        self.members.clone()
    }

    /// Whether gossip is encrypted.
    pub fn encrypted(&self) -> bool {
        self.shared.crypto.enabled()
    }

    /// The keyring as it is now and the `encrypt_verify_*` settings, for a protocol that
    /// authenticates with the pool's keys (the server port); `None` without encryption.
    pub fn encryption(&self) -> Option<Encryption> {
        let crypto = &self.shared.crypto;
        let keyring = crypto.keyring.read().expect("keyring lock").clone()?;
        Some(Encryption {
            keyring,
            file: None,
            verify_incoming: crypto.verify_incoming,
            verify_outgoing: crypto.verify_outgoing,
        })
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Joins the pool of the agent at `addr` (`host:port`, or `host` for port 8301) by a
    /// full state exchange with it.
    pub async fn join_one(&self, addr: &str, deadline: Instant) -> Result<(), JoinError> {
        let target = resolve(addr, crate::DEFAULT_SERF_LAN_PORT, deadline).await?;
        let ours = self
            .ask(Command::LocalState)
            .await
            .ok_or(JoinError::ShuttingDown)?;
        let theirs = push_pull(&self.shared, target, true, ours, deadline).await?;
        // Answered once the member list shows the pool joined, so that a caller (a
        // starting agent, say) can use it at once.
        self.ask(|merged| Command::Join {
            states: theirs,
            merged,
        })
        .await
        .ok_or(JoinError::ShuttingDown)
    }

    /// Joins every address; returns each one's result, in order.
    pub async fn join(&self, addrs: &[String], deadline: Instant) -> Vec<Result<(), JoinError>> {
        let attempts = addrs.iter().map(|a| self.join_one(a, deadline));
        futures_util::future::join_all(attempts).await
    }

    /// Announces that this member leaves and waits (at most
    /// [`LEAVE_PROPAGATE_TIMEOUT`]) for the news to go out. The pool stops afterwards.
    pub async fn leave(&self) {
        let _ = self.ask(Command::Leave).await;
    }

    /// Marks a failed member as left (`force-leave`); with `prune`, forgets it at once.
    /// Returns whether the member was known.
    pub async fn force_leave(&self, node: &str, prune: bool) -> bool {
        let node = node.to_owned();
        self.ask(|reply| Command::ForceLeave { node, prune, reply })
            .await
            .unwrap_or(false)
    }

    /// Network coordinates this member knows: its own and those of the members that
    /// answered its probes.
    pub async fn coordinates(&self) -> Coordinates {
        self.ask(Command::Coordinates).await.unwrap_or_default()
    }

    /// Replaces this member's tags (spread with a new incarnation).
    pub async fn set_tags(&self, tags: BTreeMap<String, String>) {
        let _ = self.commands.send(Command::SetTags(tags)).await;
    }

    /// Runs a keyring operation on every live member of the pool (this one included),
    /// collecting their answers until `deadline`. Members that do not answer are named in
    /// [`KeyringReport::messages`].
    pub async fn keyring(&self, op: KeyOperation, deadline: Instant) -> KeyringReport {
        let targets = self.ask(Command::Targets).await.unwrap_or_default();
        let permits = Arc::new(Semaphore::new(KEYRING_FANOUT));
        let asks = targets.into_iter().map(|(name, addr)| {
            let (op, shared, permits) = (op.clone(), self.shared.clone(), permits.clone());
            let me = name == self.name;
            async move {
                let answer = if me {
                    let shared = shared.clone();
                    tokio::task::spawn_blocking(move || shared.crypto.apply(&op))
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    match permits.acquire().await {
                        // Each member gets its own share of the time, so a few silent
                        // ones cannot use up everyone's.
                        Ok(_permit) if Instant::now() < deadline => {
                            let own = deadline.min(Instant::now() + KEYRING_MEMBER_TIMEOUT);
                            key_request(&shared, addr, &op, own).await
                        }
                        Ok(_) => Err("not asked before the deadline".into()),
                        Err(e) => Err(e.to_string()),
                    }
                };
                answer.map(|a| (name.clone(), a)).map_err(|e| (name, e))
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut report = KeyringReport {
            num_nodes: answers.len(),
            ..KeyringReport::default()
        };
        for answer in answers {
            match answer {
                Ok((name, a)) => {
                    report.num_resp += 1;
                    if let Some(e) = a.error {
                        report.num_err += 1;
                        report.messages.insert(name, e);
                    }
                    for (i, k) in a.keys.iter().enumerate() {
                        *report.keys.entry(k.clone()).or_default() += 1;
                        if i == 0 {
                            *report.primary_keys.entry(k.clone()).or_default() += 1;
                        }
                    }
                }
                Err((name, e)) => {
                    report.num_err += 1;
                    report.messages.insert(name, e);
                }
            }
        }
        report
    }
}

/// Resolves `host[:port]` to one address; a bare host or IP gets `default_port`.
pub async fn resolve(
    addr: &str,
    default_port: u16,
    deadline: Instant,
) -> Result<SocketAddr, JoinError> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let with_port = if addr
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        addr.to_owned()
    } else {
        format!("{addr}:{default_port}")
    };
    let found = tokio::time::timeout_at(deadline, tokio::net::lookup_host(with_port))
        .await
        .map_err(|_| JoinError::Timeout)?
        .map_err(|_| JoinError::Resolve(addr.to_owned()))?
        .next();
    found.ok_or_else(|| JoinError::Resolve(addr.to_owned()))
}

/// The task that owns the engine.
struct Driver {
    engine: Engine,
    shared: Arc<Shared>,
    publish: watch::Sender<Arc<Vec<Member>>>,
    tasks: TaskTracker,
    outbound: Arc<Semaphore>,
    leaving: Option<(Instant, oneshot::Sender<()>)>,
    shutdown: CancellationToken,
}

impl Driver {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Command>,
        mut packets: mpsc::Receiver<Queued>,
    ) {
        let (merged_tx, mut merged) = mpsc::channel::<Vec<MemberState>>(MERGE_QUEUE);
        loop {
            let next = Instant::from_std(self.engine.next_deadline());
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                Some(Queued { bytes, from, .. }) = packets.recv() => self.on_datagram(&bytes, from),
                Some(command) = inbox.recv() => self.on_command(command),
                Some(states) = merged.recv() => {
                    self.engine.merge_remote(std::time::Instant::now(), states);
                }
                _ = tokio::time::sleep_until(next) => {}
            }
            self.engine.tick(std::time::Instant::now());
            self.flush(&merged_tx).await;
            if let Some((deadline, _)) = &self.leaving
                && (self.engine.pending_broadcasts() == 0
                    || self.engine.live_peers() == 0
                    || Instant::now() >= *deadline)
            {
                if let Some((_, reply)) = self.leaving.take() {
                    let _ = reply.send(());
                }
                tracing::info!(pool = self.shared.pool, "left the gossip pool");
                break;
            }
        }
    }

    fn on_datagram(&mut self, bytes: &[u8], from: SocketAddr) {
        let now = std::time::Instant::now();
        if let Err(e) = receive_packet(&self.shared.crypto, &mut self.engine, now, from, bytes) {
            self.shared.refused(from, e.what(), &e);
        }
    }

    fn on_command(&mut self, command: Command) {
        let now = std::time::Instant::now();
        match command {
            Command::Join { states, merged } => {
                self.engine.merge_remote(now, states);
                self.engine.join(&[]);
                self.engine.resync_soon(now);
                self.publish.send_replace(member_list(&self.engine));
                let _ = merged.send(());
            }
            Command::LocalState(reply) => {
                let _ = reply.send(self.engine.local_state());
            }
            Command::Remote { states, reply } => {
                let _ = reply.send(self.engine.local_state());
                self.engine.merge_remote(now, states);
            }
            Command::Leave(reply) => {
                if self.leaving.is_none() {
                    self.engine.leave(now);
                    self.leaving = Some((Instant::now() + LEAVE_PROPAGATE_TIMEOUT, reply));
                }
            }
            Command::ForceLeave { node, prune, reply } => {
                let known = self.engine.force_leave(now, &node, prune);
                let _ = reply.send(known);
            }
            Command::SetTags(tags) => {
                self.engine.set_tags(tags);
                // No member event says so, but the list shows this member's tags too.
                self.publish.send_replace(member_list(&self.engine));
            }
            Command::Coordinates(reply) => {
                let mut all = self.engine.coordinates().clone();
                all.insert(
                    self.engine.name().to_owned(),
                    self.engine.coordinate().clone(),
                );
                let _ = reply.send(all);
            }
            Command::Targets(reply) => {
                let live = self
                    .engine
                    .members()
                    .filter(|m| matches!(m.state, State::Alive | State::Suspect))
                    .map(|m| (m.name.clone(), m.addr))
                    .collect();
                let _ = reply.send(live);
            }
        }
    }

    async fn flush(&mut self, merged: &mpsc::Sender<Vec<MemberState>>) {
        for output in self.engine.take_outputs() {
            match output {
                Output::Packet { to, bytes } => {
                    let sealed = self.shared.crypto.seal(bytes, PACKET_AAD);
                    self.shared.link.send_packet(to, sealed);
                }
                Output::PushPull { to, join } => {
                    let Ok(permit) = self.outbound.clone().try_acquire_owned() else {
                        continue;
                    };
                    let (shared, merged) = (self.shared.clone(), merged.clone());
                    let ours = self.engine.local_state();
                    let shutdown = self.shutdown.clone();
                    self.tasks.spawn(async move {
                        let _permit = permit;
                        let deadline = Instant::now() + STREAM_TIMEOUT;
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            result = push_pull(&shared, to, join, ours, deadline) => match result {
                                Ok(states) => {
                                    let _ = merged.try_send(states);
                                }
                                Err(e) => tracing::debug!(peer = %to, error = %e, "push-pull failed"),
                            }
                        }
                    });
                }
            }
        }
        let events = self.engine.take_events();
        if !events.is_empty() {
            for event in &events {
                match event {
                    Event::Join(n) => {
                        tracing::info!(pool = self.shared.pool, node = %n, "member joined")
                    }
                    Event::Update(n) => {
                        tracing::debug!(pool = self.shared.pool, node = %n, "member updated")
                    }
                    Event::Leave(n) => {
                        tracing::info!(pool = self.shared.pool, node = %n, "member left")
                    }
                    Event::Failed(n) => {
                        tracing::warn!(pool = self.shared.pool, node = %n, "member failed")
                    }
                    Event::Reap(n) => {
                        tracing::info!(pool = self.shared.pool, node = %n, "member reaped")
                    }
                }
            }
            self.publish.send_replace(member_list(&self.engine));
        } else if self.publish.borrow().len() != self.engine.members().count() {
            self.publish.send_replace(member_list(&self.engine));
        }
    }
}

/// Why a received packet was dropped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PacketError {
    /// It does not open with this agent's keyring, or its encryption settings refuse it.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// It opened, but is not a gossip packet.
    #[error(transparent)]
    Undecodable(#[from] swim::DecodeError),
}

impl PacketError {
    /// What the log line says was dropped.
    fn what(&self) -> &'static str {
        match self {
            PacketError::Refused(_) => "gossip packet",
            PacketError::Undecodable(_) => "undecodable gossip packet",
        }
    }
}

/// Opens a received packet and hands it to the engine: what the driver does with each
/// one (and what `crate::fuzzing` feeds arbitrary bytes to).
pub(crate) fn receive_packet(
    crypto: &Crypto,
    engine: &mut Engine,
    now: std::time::Instant,
    from: SocketAddr,
    bytes: &[u8],
) -> Result<(), PacketError> {
    let plain = crypto.open(bytes, PACKET_AAD)?;
    engine.handle_packet(now, from, &plain)?;
    Ok(())
}

/// One exchange on a new stream to `to`: sends a frame of `kind` carrying `payload`
/// (sealed when `encrypt_verify_outgoing` is on, or always with `seal_always`) and reads
/// the answer, holding what it buffers in `grant`, all before `deadline`. Returns the
/// answer's payload; an error frame becomes [`JoinError::Refused`].
async fn exchange(
    shared: &Shared,
    to: SocketAddr,
    kind: Kind,
    payload: &[u8],
    seal_always: bool,
    grant: &mut Grant<IpAddr>,
    deadline: Instant,
) -> Result<Vec<u8>, JoinError> {
    let key = shared.crypto.stream_key(seal_always);
    let frame = stream::encode(kind, payload, key.as_ref())
        .map_err(|e| JoinError::Protocol(e.to_string()))?;
    let work = async {
        let mut reply = shared.link.exchange(to, frame).await?;
        let opener = shared.crypto.opener();
        match stream::read(&mut reply, &opener, Expect::Answer(kind), grant).await {
            Ok(Frame {
                kind: Kind::Error,
                payload,
            }) => Err(JoinError::Refused(
                String::from_utf8_lossy(&payload).into_owned(),
            )),
            Ok(answer) => Ok(answer.payload),
            Err(FrameError::Io(e)) => Err(JoinError::Io(e.to_string())),
            Err(e) => {
                shared.refused(to, "gossip stream answer", &e);
                Err(JoinError::Protocol(e.to_string()))
            }
        }
    };
    tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| JoinError::Timeout)?
}

/// A full state exchange with the member at `to`.
async fn push_pull(
    shared: &Shared,
    to: SocketAddr,
    join: bool,
    ours: Vec<MemberState>,
    deadline: Instant,
) -> Result<Vec<MemberState>, JoinError> {
    let request = encode_frame(&Message::PushPull { join, states: ours });
    // Held until the answer is decoded.
    let mut grant = shared.streams.grant(to.ip());
    let (kind, seal_always) = (Kind::PushPull, false);
    let answer = exchange(
        shared,
        to,
        kind,
        &request,
        seal_always,
        &mut grant,
        deadline,
    )
    .await?;
    match decode_frame(&answer) {
        Ok(Message::PushPull { states, .. }) => Ok(states),
        Ok(_) => Err(JoinError::Protocol(
            "unexpected answer to a push-pull".into(),
        )),
        Err(e) => Err(JoinError::Protocol(e.to_string())),
    }
}

/// Asks the member at `to` to apply a keyring operation.
async fn key_request(
    shared: &Shared,
    to: SocketAddr,
    op: &KeyOperation,
    deadline: Instant,
) -> Result<KeyAnswer, String> {
    let request = serde_json::to_vec(op).expect("a key operation serialises");
    let mut grant = shared.streams.grant(to.ip());
    let (kind, seal_always) = (Kind::KeyRequest, true);
    let answer = exchange(
        shared,
        to,
        kind,
        &request,
        seal_always,
        &mut grant,
        deadline,
    )
    .await
    .map_err(|e| match e {
        JoinError::Timeout => "no answer before the deadline".to_string(),
        other => other.to_string(),
    })?;
    serde_json::from_slice(&answer).map_err(|e| format!("unreadable answer: {e}"))
}

/// A received packet waiting for the engine, holding its sender's place in the queue.
struct Queued {
    bytes: Vec<u8>,
    from: SocketAddr,
    _share: Share<SocketAddr>,
}

/// The engine's queue of received packets, with a share of it per sender.
#[derive(Clone)]
struct PacketQueue {
    tx: mpsc::Sender<Queued>,
    senders: Arc<PerAddr>,
}

impl PacketQueue {
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
    packets: PacketQueue,
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
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
    /// is logged here (once per peer per [`PEER_LOG_INTERVAL`]); the error returned is the
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
            Ok(frame) => self.answer(peer, frame).await,
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

    /// The answer frame to a request, or `None` to close the stream without one.
    async fn answer(&self, peer: SocketAddr, request: Frame) -> Option<Vec<u8>> {
        let shared = &self.shared;
        let (kind, payload) = match request.kind {
            Kind::KeyRequest => {
                // Only sealed ones get here while this agent has a keyring (see
                // `stream::Opener`).
                let op: KeyOperation = match serde_json::from_slice(&request.payload) {
                    Ok(op) => op,
                    Err(e) => {
                        shared.refused(peer, "keyring request", &e);
                        return None;
                    }
                };
                let worker = shared.clone();
                let answer = tokio::task::spawn_blocking(move || worker.crypto.apply(&op))
                    .await
                    .ok()?;
                let json = serde_json::to_vec(&answer).expect("an answer serialises");
                (Kind::KeyAnswer, json)
            }
            Kind::PushPull => match decode_frame(&request.payload) {
                Ok(Message::PushPull { states, .. }) => {
                    let (reply, ours) = oneshot::channel();
                    self.commands
                        .send(Command::Remote { states, reply })
                        .await
                        .ok()?;
                    let ours = ours.await.ok()?;
                    let state = encode_frame(&Message::PushPull {
                        join: false,
                        states: ours,
                    });
                    (Kind::PushPull, state)
                }
                Ok(_) => {
                    shared.refused(peer, "gossip stream", &"not a push-pull");
                    return None;
                }
                Err(e) => {
                    shared.refused(peer, "undecodable gossip stream", &e);
                    return None;
                }
            },
            other => {
                shared.refused(peer, "gossip stream", &format!("unexpected {other} frame"));
                return None;
            }
        };
        let key = shared.crypto.stream_key(false);
        match stream::encode(kind, &payload, key.as_ref()) {
            Ok(frame) => Some(frame),
            Err(e) => {
                // This pool's own state is over the limit: the peer is told, and the log
                // says so once per peer per PEER_LOG_INTERVAL.
                shared.refused(peer, "gossip stream answer", &e);
                Some(stream::error_frame(&e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::support::{Cluster, config, encrypted, eventually, read_answer, sees, soon};
    use super::*;
    use crate::swim::MemberState;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn pools_join_through_one_member_and_see_failures_and_leaves() {
        let c = Cluster::start(4, |_| None).await;
        let seed = c.pools[0].addr().to_string();
        for p in &c.pools[1..] {
            p.join_one(&seed, soon()).await.unwrap();
        }
        eventually("convergence", || c.all_alive()).await;
        c.pools[3].leave().await;
        eventually("the leave", || sees(&c.pools[0], "n3", MemberStatus::Left)).await;
        c.tokens[2].cancel();
        eventually("the failure", || {
            sees(&c.pools[0], "n2", MemberStatus::Failed)
                && sees(&c.pools[1], "n2", MemberStatus::Failed)
        })
        .await;
        assert!(c.pools[0].force_leave("n2", true).await);
        assert!(!c.pools[0].members().iter().any(|m| m.name == "n2"));
    }

    #[tokio::test]
    async fn joining_with_another_key_is_refused_and_both_sides_say_why() {
        let (k1, k2) = (Key::generate(), Key::generate());
        let c = Cluster::start(3, |i| match i {
            0 => encrypted(&k1),
            1 => encrypted(&k2),
            _ => None,
        })
        .await;
        let seed = c.pools[0].addr().to_string();
        let wrong_key = c.pools[1].join_one(&seed, soon()).await.unwrap_err();
        assert_eq!(
            wrong_key,
            JoinError::Refused("No installed keys could decrypt the message".into())
        );
        let plaintext = c.pools[2].join_one(&seed, soon()).await.unwrap_err();
        assert_eq!(
            plaintext,
            JoinError::Refused(
                "encryption is required by this agent, but the message is not encrypted".into()
            )
        );
        assert_eq!(c.pools[0].members().len(), 1);
    }

    #[tokio::test]
    async fn a_key_rotates_across_the_pool_without_losing_a_member() {
        let k1 = Key::generate();
        let k2 = Key::generate();
        let c = Cluster::start(4, |_| encrypted(&k1)).await;
        let seed = c.pools[0].addr().to_string();
        for p in &c.pools[1..] {
            p.join_one(&seed, soon()).await.unwrap();
        }
        eventually("convergence", || c.all_alive()).await;
        let pool = &c.pools[1];
        let k2t = k2.to_base64();
        let installed = pool
            .keyring(KeyOperation::Install(k2t.clone()), soon())
            .await;
        assert_eq!(installed.num_nodes, 4);
        assert_eq!(installed.num_err, 0, "{:?}", installed.messages);
        assert_eq!(installed.keys.get(&k2t), Some(&4));
        let used = pool.keyring(KeyOperation::Use(k2t.clone()), soon()).await;
        assert_eq!(used.primary_keys.get(&k2t), Some(&4), "{used:?}");
        let refused = pool
            .keyring(KeyOperation::Remove(k2t.clone()), soon())
            .await;
        assert_eq!(refused.num_err, 4);
        assert!(
            refused
                .messages
                .values()
                .all(|m| m == "Removing the primary key is not allowed")
        );
        let removed = pool
            .keyring(KeyOperation::Remove(k1.to_base64()), soon())
            .await;
        assert_eq!(removed.num_err, 0);
        let list = pool.keyring(KeyOperation::List, soon()).await;
        assert_eq!(list.keys, BTreeMap::from([(k2t, 4)]));
        // Gossip keeps flowing with the new key: a leave still reaches everyone.
        c.pools[3].leave().await;
        eventually("the leave", || sees(&c.pools[0], "n3", MemberStatus::Left)).await;
        assert!(
            c.pools[..3]
                .iter()
                .all(|p| p.members().iter().all(|m| m.status != MemberStatus::Failed))
        );
    }

    #[tokio::test]
    async fn a_silent_member_is_named_in_a_keyring_listing() {
        let k1 = Key::generate();
        let c = Cluster::start(3, |_| encrypted(&k1)).await;
        let seed = c.pools[0].addr().to_string();
        for p in &c.pools[1..] {
            p.join_one(&seed, soon()).await.unwrap();
        }
        eventually("convergence", || c.all_alive()).await;
        // Stop n2 without a leave: until it is declared failed it is still asked.
        c.tokens[2].cancel();
        let list = c.pools[0]
            .keyring(KeyOperation::List, Instant::now() + Duration::from_secs(2))
            .await;
        // (n2 cannot have been declared failed yet: a suspicion alone lasts longer.)
        assert_eq!(list.num_nodes, 3);
        assert_eq!(list.num_resp, 2);
        assert!(list.messages.contains_key("n2"), "{list:?}");
        assert_eq!(list.keys.get(&k1.to_base64()), Some(&2));
    }

    #[tokio::test]
    async fn a_plaintext_keyring_request_is_refused_even_while_plaintext_gossip_is_accepted() {
        let key = Key::generate();
        let c = Cluster::start(1, |_| {
            Some(Encryption {
                keyring: Keyring::new(key.clone()),
                file: None,
                verify_incoming: false,
                verify_outgoing: false,
            })
        })
        .await;
        let mut stream = TcpStream::connect(c.pools[0].addr()).await.unwrap();
        let op = KeyOperation::Install(Key::generate().to_base64());
        let request = serde_json::to_vec(&op).unwrap();
        let frame = stream::encode(Kind::KeyRequest, &request, None).unwrap();
        stream.write_all(&frame).await.unwrap();
        let answer = read_answer(&mut stream, Kind::KeyRequest).await.unwrap();
        assert_eq!(answer.kind, Kind::Error);
        assert_eq!(
            answer.payload,
            b"keyring requests must be encrypted with an installed key"
        );
        // The pool's own operations still work: they are sealed.
        let report = c.pools[0].keyring(KeyOperation::List, soon()).await;
        assert_eq!(report.keys.len(), 1, "{report:?}");
    }

    #[tokio::test]
    async fn encryption_is_turned_on_in_a_running_pool_without_a_split() {
        // Consul's rolling procedure: every agent gets the key with both verify flags
        // off (they read both), then outgoing on, then incoming on.
        let key = Key::generate();
        let lenient = |outgoing: bool| {
            Some(Encryption {
                keyring: Keyring::new(key.clone()),
                file: None,
                verify_incoming: false,
                verify_outgoing: outgoing,
            })
        };
        let c = Cluster::start(4, |i| match i {
            0 => None,
            1 => lenient(false),
            2 => lenient(true),
            _ => encrypted(&key),
        })
        .await;
        // n0 (no key) and n1 (key, plaintext out) speak plaintext to each other.
        c.pools[0]
            .join_one(&c.pools[1].addr().to_string(), soon())
            .await
            .unwrap();
        eventually("n0 and n1 together", || {
            sees(&c.pools[0], "n1", MemberStatus::Alive)
                && sees(&c.pools[1], "n0", MemberStatus::Alive)
        })
        .await;
        // n2 seals what it sends but still reads plaintext: n1 reads both, so n2 and n1
        // agree; n0, which has no key, cannot read n2.
        c.pools[2]
            .join_one(&c.pools[1].addr().to_string(), soon())
            .await
            .unwrap();
        eventually("n1 and n2 together", || {
            sees(&c.pools[1], "n2", MemberStatus::Alive)
                && sees(&c.pools[2], "n1", MemberStatus::Alive)
        })
        .await;
        // n3 is strict: it joins n2 (which seals) but refuses n1's plaintext.
        c.pools[3]
            .join_one(&c.pools[2].addr().to_string(), soon())
            .await
            .unwrap();
        let refused = c.pools[1]
            .join_one(&c.pools[3].addr().to_string(), soon())
            .await;
        assert_eq!(
            refused,
            Err(JoinError::Refused(
                "encryption is required by this agent, but the message is not encrypted".into()
            ))
        );
    }

    #[tokio::test]
    async fn one_sender_cannot_fill_the_packet_queue() {
        let (tx, mut rx) = mpsc::channel(PACKET_QUEUE);
        let queue = PacketQueue {
            tx,
            senders: PerAddr::new(),
        };
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
                tags: BTreeMap::from([("role".to_string(), "node".to_string())]),
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
