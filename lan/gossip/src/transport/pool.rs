//! The pool driver: one task owns a pool's SWIM [`Engine`], its clock and its keyring, and
//! runs them over a [`Link`]; [`Pool`] is the cheap handle that reaches it.
//!
//! ```text
//!   link packets ──open──▶ Engine::handle_packet ─┐
//!   link streams ──open──▶ push-pull / keyring ───┤   one task owns the engine (`run`)
//!   Pool (handle) ─────────▶ commands ────────────┤──▶ Engine::tick ──▶ outputs ──seal──▶ link
//!                                                 ├──▶ events ──▶ watch<Arc<Vec<Member>>>
//!                                                 └──▶ user events ──▶ broadcast<UserEvent>
//! ```
//!
//! The driver performs what the engine returns: packets are sealed and sent on the link,
//! push-pulls run as stream exchanges in tasks of their own (at most
//! [`MAX_OUTBOUND_STREAMS`] at once) and their results are merged back, member events are
//! logged and published, user events published to their subscribers (at most
//! `USER_EVENT_CHANNEL` unread each). The handle's requests (join, leave, force-leave, tags,
//! coordinates) reach the task as commands on a bounded queue. The stream exchanges
//! themselves (push-pull, joining, answering a received request) are in `exchange`, and
//! keyring operations across the pool in `keyring_ops`.
//!
//! Every packet is sealed with the keyring's primary key when gossip encryption is on (see
//! `encryption` and [`crate::keyring`]); what does not open or decode is dropped and logged
//! with its sender, at most once per peer per
//! [`PEER_LOG_INTERVAL`](crate::PEER_LOG_INTERVAL) (`Shared::refused`, which the stream
//! exchanges log with too).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::member::{Member, MemberStatus};
use crate::peer_log::PeerLog;
use crate::quota::Budget;
use crate::stream;
use crate::swim::coordinate::Coordinate;
use crate::swim::{self, Engine, Event, MemberState, Output, State, UserEvent, UserEventError};

use super::encryption::{Crypto, Encryption, PACKET_AAD, Refusal};
use super::exchange::push_pull;
use super::link::{Inbound, Link, PacketQueue, Queued, STREAM_TIMEOUT};

/// Commands waiting for the engine task; senders wait when it is full.
const COMMAND_QUEUE: usize = 256;
/// Push-pull results waiting to be merged; a result that finds the queue full is
/// dropped (the next exchange brings the same news).
const MERGE_QUEUE: usize = 64;
/// Outgoing push-pulls at once; the engine's periodic exchange is skipped while all are
/// busy (it runs again at the next interval).
pub const MAX_OUTBOUND_STREAMS: usize = 16;
/// User events published to subscribers and not yet read; a subscriber that falls this
/// far behind loses the oldest (and is told how many).
pub(crate) const USER_EVENT_CHANNEL: usize = 256;
/// Shortest time between two publications of the member list while it keeps changing,
/// in a pool of up to [`PUBLISH_STEP`] members: the first change is published at once,
/// the ones that follow within this time together at its end (joins, in both
/// directions, and force-leaves publish at once). Each publication copies every member,
/// and a member of a large pool that just joined hears of hundreds of others one packet
/// at a time; this bounds that copying to ten times a second, and what a subscriber
/// sees to at most this much late. Larger pools wait longer ([`publish_interval`]).
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);
/// Members per [`PUBLISH_INTERVAL`] of wait between publications.
pub const PUBLISH_STEP: usize = 128;

/// The shortest time between publications in a pool of `members`: one
/// [`PUBLISH_INTERVAL`] per [`PUBLISH_STEP`] members, at most ten (a second). A
/// publication copies every member, so this keeps its cost per second about the same
/// at any size: copying a 1,000-member list ten times a second was, with 1,000 members
/// in one process, half of that process's CPU while they joined.
pub fn publish_interval(members: usize) -> Duration {
    let steps = (members / PUBLISH_STEP).clamp(1, 10);
    PUBLISH_INTERVAL * steps as u32
}
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

pub(super) enum Command {
    Join {
        /// The member joined through.
        seed: SocketAddr,
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
    Fire {
        event: UserEvent,
        reply: oneshot::Sender<Result<UserEvent, UserEventError>>,
    },
}

/// This member's network coordinate and the latest one of every member that answered
/// its probes, by name (this member included).
pub type Coordinates = BTreeMap<String, Coordinate>;

/// What the driver task, the pool's handle and its [`Inbound`] share.
pub(super) struct Shared {
    pub(super) crypto: Crypto,
    log: std::sync::Mutex<PeerLog>,
    pub(super) link: Arc<dyn Link>,
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
    pub(super) name: String,
    user_events: broadcast::Sender<UserEvent>,
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
        let (user_events, _) = broadcast::channel(USER_EVENT_CHANNEL);
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
            user_events: user_events.clone(),
        };
        let driver = Driver {
            engine,
            shared: shared.clone(),
            publish,
            publishing: Publishing::default(),
            user_events,
            tasks: tasks.clone(),
            outbound: Arc::new(Semaphore::new(MAX_OUTBOUND_STREAMS)),
            leaving: None,
            shutdown,
            metrics: PoolMetrics::new(pool),
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

    /// Sends the driver a command and waits for its answer; `None` once the driver has
    /// stopped.
    pub(super) async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.ok()?;
        rx.await.ok()
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

    /// Fires a user event in the pool: the driver stamps it with the pool's Lamport
    /// clock, publishes it here and gossips it. `None` once the pool has stopped.
    pub async fn fire(&self, event: UserEvent) -> Option<Result<UserEvent, UserEventError>> {
        self.ask(|reply| Command::Fire { event, reply }).await
    }

    /// A receiver of every user event fired here or heard from the pool from now on,
    /// each once.
    pub fn subscribe_user_events(&self) -> broadcast::Receiver<UserEvent> {
        self.user_events.subscribe()
    }

    /// Replaces this member's tags (spread with a new incarnation).
    pub async fn set_tags(&self, tags: BTreeMap<String, String>) {
        let _ = self.commands.send(Command::SetTags(tags)).await;
    }
}

/// The task that owns the engine.
struct Driver {
    engine: Engine,
    shared: Arc<Shared>,
    publish: watch::Sender<Arc<Vec<Member>>>,
    /// When the member list is published next.
    publishing: Publishing,
    user_events: broadcast::Sender<UserEvent>,
    tasks: TaskTracker,
    outbound: Arc<Semaphore>,
    leaving: Option<(Instant, oneshot::Sender<()>)>,
    shutdown: CancellationToken,
    metrics: PoolMetrics,
}

/// A pool's metrics (serf's and memberlist's names, labelled with the network),
/// registered once.
struct PoolMetrics {
    join: metrics::Counter,
    left: metrics::Counter,
    failed: metrics::Counter,
    flap: metrics::Counter,
    suspect: metrics::Counter,
    dead: metrics::Counter,
    gossip: metrics::Histogram,
    health: metrics::Gauge,
    /// Suspicions already counted.
    suspicions_seen: u64,
    /// When members recently failed, to tell a flap (back within [`FLAP_WINDOW`]).
    failed_at: HashMap<String, Instant>,
}

/// A member back within this long of failing counts as a flap (serf's default).
const FLAP_WINDOW: Duration = Duration::from_secs(60);
/// Recent failures remembered at most.
const MAX_FAILURES_KEPT: usize = 1024;

impl PoolMetrics {
    fn new(pool: &str) -> PoolMetrics {
        let network = pool.to_ascii_lowercase();
        let counter = |name: &'static str| metrics::counter!(name, "network" => network.clone());
        PoolMetrics {
            join: counter("serf.member.join"),
            left: counter("serf.member.left"),
            failed: counter("serf.member.failed"),
            flap: counter("serf.member.flap"),
            suspect: counter("memberlist.msg.suspect"),
            dead: counter("memberlist.msg.dead"),
            gossip: metrics::histogram!("memberlist.gossip", "network" => network.clone()),
            health: metrics::gauge!("memberlist.health.score", "network" => network),
            suspicions_seen: 0,
            failed_at: HashMap::new(),
        }
    }

    fn event(&mut self, event: &Event) {
        let now = Instant::now();
        match event {
            Event::Join(n) => {
                self.join.increment(1);
                if self
                    .failed_at
                    .remove(n)
                    .is_some_and(|at| now.duration_since(at) < FLAP_WINDOW)
                {
                    self.flap.increment(1);
                }
            }
            Event::Leave(_) => self.left.increment(1),
            Event::Failed(n) => {
                self.failed.increment(1);
                self.dead.increment(1);
                if self.failed_at.len() >= MAX_FAILURES_KEPT {
                    self.failed_at
                        .retain(|_, at| now.duration_since(*at) < FLAP_WINDOW);
                }
                if self.failed_at.len() < MAX_FAILURES_KEPT {
                    self.failed_at.insert(n.clone(), now);
                }
            }
            Event::Update(_) | Event::Reap(_) | Event::User(_) => {}
        }
    }

    fn engine(&mut self, engine: &Engine) {
        let started = engine.suspicions_started();
        self.suspect
            .increment(started.saturating_sub(self.suspicions_seen));
        self.suspicions_seen = started;
        self.health.set(f64::from(engine.awareness()));
    }
}

impl Driver {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Command>,
        mut packets: mpsc::Receiver<Queued>,
    ) {
        let (merged_tx, mut merged) = mpsc::channel::<Vec<MemberState>>(MERGE_QUEUE);
        loop {
            let mut next = Instant::from_std(self.engine.next_deadline());
            if let Some(at) = self.publishing.deadline() {
                next = next.min(at);
            }
            let mut timed = false;
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                Some(Queued { bytes, from, .. }) = packets.recv() => self.on_datagram(&bytes, from),
                Some(command) = inbox.recv() => self.on_command(command),
                Some(states) = merged.recv() => {
                    self.engine.merge_remote(std::time::Instant::now(), states);
                }
                _ = tokio::time::sleep_until(next) => timed = true,
            }
            let round = std::time::Instant::now();
            self.engine.tick(round);
            self.flush(&merged_tx).await;
            if self.publishing.due(Instant::now()) {
                self.publish_now();
            }
            if timed {
                // A timer-driven round: probes, gossip and exchanges that were due.
                self.metrics
                    .gossip
                    .record(round.elapsed().as_secs_f64() * 1000.0);
                self.metrics.engine(&self.engine);
            }
            if let Some((deadline, _)) = &self.leaving
                && (self.engine.pending_broadcasts() == 0
                    || !self.engine.has_live_peer()
                    || Instant::now() >= *deadline)
            {
                if let Some((_, reply)) = self.leaving.take() {
                    let _ = reply.send(());
                }
                tracing::info!(pool = self.shared.pool, "left the gossip pool");
                break;
            }
        }
        // A change still waiting for its interval is not lost when the pool stops.
        if self.publishing.deadline().is_some() {
            self.publish_now();
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
            Command::Join {
                seed,
                states,
                merged,
            } => {
                self.engine.merge_remote(now, states);
                self.engine.join(&[]);
                self.engine.resync_soon(now, seed);
                // At once: the joining caller is answered with the list showing it.
                self.publish_now();
                let _ = merged.send(());
            }
            Command::LocalState(reply) => {
                let _ = reply.send(self.engine.local_state());
            }
            Command::Remote { states, reply } => {
                let _ = reply.send(self.engine.local_state());
                self.engine.merge_remote(now, states);
                // At once, like a join on the joining side: a member that was just
                // joined is asked about the joiner next.
                self.publish_now();
            }
            Command::Leave(reply) => {
                if self.leaving.is_none() {
                    self.engine.leave(now);
                    self.leaving = Some((Instant::now() + LEAVE_PROPAGATE_TIMEOUT, reply));
                }
            }
            Command::ForceLeave { node, prune, reply } => {
                let known = self.engine.force_leave(now, &node, prune);
                // Before answering: the caller reads the list next.
                self.publish_now();
                let _ = reply.send(known);
            }
            Command::SetTags(tags) => {
                self.engine.set_tags(tags);
                // No member event says so, but the list shows this member's tags too.
                self.publish_now();
            }
            Command::Coordinates(reply) => {
                let mut all = self.engine.coordinates().clone();
                all.insert(
                    self.engine.name().to_owned(),
                    self.engine.coordinate().clone(),
                );
                let _ = reply.send(all);
            }
            Command::Fire { event, reply } => {
                let _ = reply.send(self.engine.fire(event));
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
        let (users, events): (Vec<_>, Vec<_>) = self
            .engine
            .take_events()
            .into_iter()
            .partition(|e| matches!(e, Event::User(_)));
        for event in users {
            if let Event::User(event) = event {
                tracing::debug!(pool = self.shared.pool, name = %event.name, id = %event.id, "user event");
                // No subscriber is not an error: nobody listens yet.
                let _ = self.user_events.send(event);
            }
        }
        if !events.is_empty() {
            for event in &events {
                self.metrics.event(event);
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
                    Event::User(_) => {}
                }
            }
            self.publish_soon();
        } else if self.publish.borrow().len() != self.engine.member_count() {
            self.publish_soon();
        }
    }

    /// Publishes the member list now, or at the end of the publication interval if it was
    /// published less than that ago.
    fn publish_soon(&mut self) {
        if self.publishing.changed(Instant::now()) {
            self.publish_now();
        }
    }

    fn publish_now(&mut self) {
        self.publishing.interval = publish_interval(self.engine.member_count());
        self.publishing.published(Instant::now());
        self.publish.send_replace(member_list(&self.engine));
    }
}

/// When the member list is published: at once after a quiet spell, otherwise at most
/// once per `interval`, never leaving a change unpublished.
#[derive(Debug)]
struct Publishing {
    /// When it was last published.
    last: Option<Instant>,
    /// A change waits for the end of the interval.
    pending: bool,
    /// The shortest time between publications ([`publish_interval`] of the pool's size
    /// at the last one).
    interval: Duration,
}

impl Default for Publishing {
    fn default() -> Publishing {
        Publishing {
            last: None,
            pending: false,
            interval: PUBLISH_INTERVAL,
        }
    }
}

impl Publishing {
    /// The list changed at `now`: whether to publish at once (otherwise it waits for
    /// [`Publishing::deadline`]).
    fn changed(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now < last + self.interval => {
                self.pending = true;
                false
            }
            _ => true,
        }
    }

    /// The list was published at `now`.
    fn published(&mut self, now: Instant) {
        self.last = Some(now);
        self.pending = false;
    }

    /// When a waiting change is to be published, if one waits.
    fn deadline(&self) -> Option<Instant> {
        self.last
            .filter(|_| self.pending)
            .map(|last| last + self.interval)
    }

    /// Whether a waiting change is due at `now`.
    fn due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|at| now >= at)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::support::{Cluster, eventually, sees, soon};

    #[test]
    fn a_burst_of_changes_is_published_once_at_the_end_of_the_interval() {
        let t0 = Instant::now();
        let mut p = Publishing::default();
        assert!(p.changed(t0), "the first change goes out at once");
        p.published(t0);
        assert_eq!(p.deadline(), None);
        let ms = Duration::from_millis;
        assert!(!p.changed(t0 + ms(10)));
        assert!(!p.changed(t0 + ms(50)));
        assert_eq!(p.deadline(), Some(t0 + PUBLISH_INTERVAL));
        assert!(!p.due(t0 + ms(99)));
        assert!(p.due(t0 + PUBLISH_INTERVAL));
        p.published(t0 + PUBLISH_INTERVAL);
        assert_eq!(p.deadline(), None, "nothing waits once published");
        assert!(
            p.changed(t0 + PUBLISH_INTERVAL * 2),
            "after a quiet interval a change goes out at once again"
        );
    }

    #[test]
    fn larger_pools_publish_less_often_up_to_once_a_second() {
        assert_eq!(publish_interval(1), PUBLISH_INTERVAL);
        assert_eq!(publish_interval(PUBLISH_STEP - 1), PUBLISH_INTERVAL);
        assert_eq!(publish_interval(2 * PUBLISH_STEP), 2 * PUBLISH_INTERVAL);
        assert_eq!(publish_interval(1000), 7 * PUBLISH_INTERVAL);
        assert_eq!(publish_interval(100_000), Duration::from_secs(1));
        let t0 = Instant::now();
        let mut p = Publishing {
            interval: publish_interval(512),
            ..Publishing::default()
        };
        p.published(t0);
        assert!(!p.changed(t0 + PUBLISH_INTERVAL));
        assert_eq!(p.deadline(), Some(t0 + 4 * PUBLISH_INTERVAL));
    }

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
}
