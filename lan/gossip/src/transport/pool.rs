//! The pool driver: one task owns a pool's SWIM [`Engine`], its clock and its keyring, and
//! runs them over a [`Link`]; [`Pool`] is the cheap handle that reaches it.
//!
//! ```text
//!   link packets ──open──▶ Engine::handle_packet ─┐
//!   link streams ──open──▶ push-pull / keyring ───┤   one task owns the engine (`run`)
//!   Pool (handle) ─────────▶ commands ────────────┤──▶ Engine::tick ──▶ outputs ──seal──▶ link
//!                                                 └──▶ events ──▶ watch<Arc<Vec<Member>>>
//! ```
//!
//! The driver performs what the engine returns: packets are sealed and sent on the link,
//! push-pulls run as stream exchanges in tasks of their own (at most
//! [`MAX_OUTBOUND_STREAMS`] at once) and their results are merged back, member events are
//! logged and published. The handle's requests (join, leave, force-leave, tags,
//! coordinates) reach the task as commands on a bounded queue. A keyring operation across
//! the pool asks every live member on a stream of its own ([`KEYRING_FANOUT`] at once, each
//! within [`KEYRING_MEMBER_TIMEOUT`]) and sums up their answers in a [`KeyringReport`].
//!
//! Every packet and stream frame is sealed with the keyring's primary key when gossip
//! encryption is on (see `encryption` and [`crate::keyring`]); what does not open or
//! decode is dropped and logged with its sender, at most once per peer per
//! [`PEER_LOG_INTERVAL`](crate::PEER_LOG_INTERVAL). A stream whose frame the other side
//! cannot open is answered with a short plaintext error frame, so that an agent joining
//! with the wrong key is told why (and the refusing side logs it too).
//!
//! A stream carries one request frame (a push-pull or a keyring request) and one answer
//! frame, in the layout of [`crate::stream`]: a header whose announced length is checked
//! against its kind's limit before anything is buffered, then the payload, sealed in
//! chunks that are each authenticated before the next is read. What a pool's frames hold
//! while they are read is bounded by its budget ([`stream::MAX_STREAM_BYTES`], with a
//! share per IP address), for incoming requests and for the answers to its own exchanges.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::member::{Member, MemberStatus};
use crate::peer_log::PeerLog;
use crate::quota::{Budget, Grant};
use crate::stream::{self, Expect, Frame, FrameError, Kind};
use crate::swim::coordinate::Coordinate;
use crate::swim::message::{Message, decode_frame, encode_frame};
use crate::swim::{self, Engine, Event, MemberState, Output, State};

use super::encryption::{Crypto, Encryption, KeyAnswer, KeyOperation, PACKET_AAD, Refusal};
use super::link::{Inbound, Link, PacketQueue, Queued, STREAM_TIMEOUT};

/// Commands waiting for the engine task; senders wait when it is full.
const COMMAND_QUEUE: usize = 256;
/// Push-pull results waiting to be merged; a result that finds the queue full is
/// dropped (the next exchange brings the same news).
const MERGE_QUEUE: usize = 64;
/// Outgoing push-pulls at once; the engine's periodic exchange is skipped while all are
/// busy (it runs again at the next interval).
pub const MAX_OUTBOUND_STREAMS: usize = 16;
/// Keyring requests sent to members at once during a pool-wide keyring operation.
pub const KEYRING_FANOUT: usize = 32;
/// How long one member has to answer a keyring request.
pub const KEYRING_MEMBER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a graceful leave waits for its announcement to go out.
pub const LEAVE_PROPAGATE_TIMEOUT: Duration = Duration::from_secs(3);

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

pub(super) enum Command {
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

/// What the driver task, the pool's handle and its [`Inbound`] share.
pub(super) struct Shared {
    pub(super) crypto: Crypto,
    log: std::sync::Mutex<PeerLog>,
    link: Arc<dyn Link>,
    /// What stream frames being read may hold, in all and per IP address.
    pub(super) streams: Arc<Budget<IpAddr>>,
    /// "LAN" or "WAN", for logs.
    pub(super) pool: &'static str,
}

impl Shared {
    /// Logs that a message from `peer` was dropped, unless a line about `peer` was
    /// logged less than [`PEER_LOG_INTERVAL`](crate::PEER_LOG_INTERVAL) ago.
    pub(super) fn refused(&self, peer: SocketAddr, what: &str, error: &dyn std::fmt::Display) {
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
///
/// A pool starts with [`Pool::start`] on the LAN pool's UDP/TCP link (which binds the
/// sockets; it is defined with that link, in `udp_tcp`) or with [`Pool::start_with`] on
/// a link the caller built.
#[derive(Clone)]
pub struct Pool {
    commands: mpsc::Sender<Command>,
    members: watch::Receiver<Arc<Vec<Member>>>,
    pub(super) shared: Arc<Shared>,
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
        let (packets, packet_inbox) = PacketQueue::new();
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
        self.shared.crypto.settings()
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

/// The answer frame to a stream's request from `peer` (what [`Inbound::serve`] writes
/// back), or `None` to close the stream without one.
pub(super) async fn answer_request(
    commands: &mpsc::Sender<Command>,
    shared: &Arc<Shared>,
    peer: SocketAddr,
    request: Frame,
) -> Option<Vec<u8>> {
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
                commands
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::{Key, Keyring};
    use crate::transport::support::{Cluster, encrypted, eventually, read_answer, sees, soon};
    use tokio::io::AsyncWriteExt;
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
}
