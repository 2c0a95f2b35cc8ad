//! Raft for the catalog: openraft configured for this datacenter's servers.
//!
//! Every catalog change is a [`Command`] appended to the Raft log; once committed, the
//! state machine ([`store::StateMachine`]) applies it to the in-memory catalog at the
//! entry's log index. Reads go to that catalog directly, after the check their
//! consistency mode asks for:
//!
//! | mode | check before reading | Consul name |
//! |---|---|---|
//! | [`Consistency::Default`] | this server is the leader (no round trip) | default |
//! | [`Consistency::Stale`] | none; any server answers, even without a leader | `?stale` |
//! | [`Consistency::Consistent`] | leadership confirmed by a quorum, read index applied | `?consistent` |
//!
//! A single server elects itself as soon as it is initialised; `-dev` keeps the log in
//! memory ([`store::MemLog`]).

mod ahead;
mod batch;
mod disk;
pub(crate) mod guard;
mod open;
#[cfg(test)]
mod restart_tests;
mod snapshot_file;

pub(crate) use open::{Opened, open};
mod message;
pub(crate) mod network;
pub(crate) mod store;

pub(crate) use message::{
    Answer, AppendEntries, AppendEntriesAnswer, InstallSnapshot, InstallSnapshotAnswer, Message,
    Vote, VoteAnswer,
};

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::RaftError;
use openraft::{Raft, ServerState};
use tokio::time::Instant;

use catalog::{
    Applied, ApplyError, Catalog, Command, Consistency, RaftServer, RaftStatus, ReadError,
    ReadMeta, ServerNode, WriteError, Written,
};

/// The member tag that carries a server's Raft ID; a server without it (an older build)
/// uses the ID derived from its node ID.
pub(crate) const RAFT_ID_TAG: &str = "raft_id";

/// How long a request waits for a leader to appear before failing with "No cluster
/// leader" (Consul's `rpc_hold_timeout`). Bounded by the request's own deadline.
pub const RPC_HOLD_TIMEOUT: Duration = Duration::from_secs(7);

/// Raft's ID of a server. A server started before IDs were kept with the log, or one
/// whose log is in memory, uses the one derived from its node ID ([`raft_id`]); any
/// other gets a random one with its log ([`disk::DiskLog::server_id`]).
pub(crate) type NodeId = u64;

/// The Raft ID derived from a node UUID: stable across builds and platforms (FNV-1a),
/// unlike std's hasher.
pub(crate) fn raft_id(node_id: &str) -> NodeId {
    node_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A server's Raft ID as gossip tells it: its `raft_id` tag, or for a server too old to
/// send one, the ID derived from its node ID.
pub(crate) fn member_raft_id(member: &gossip::Member) -> Option<NodeId> {
    match member.tags.get(RAFT_ID_TAG) {
        Some(id) => id.parse().ok(),
        None => member.tags.get("id").map(|id| raft_id(id)),
    }
}

openraft::declare_raft_types!(
    /// openraft's type configuration for the catalog.
    pub(crate) TypeConfig:
        D = Vec<Command>,
        R = Vec<Result<Applied, ApplyError>>,
        NodeId = NodeId,
        Node = ServerNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Where a server keeps its Raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// In memory: lost when the agent stops (`-dev`).
    Memory,
    /// In this directory (`<data_dir>/raft`): the log in `raft.db`, the latest snapshot in
    /// `snapshot.json`.
    Disk(PathBuf),
}

/// A snapshot is taken after this many log entries, and the log before it is dropped
/// (Consul's `raft_snapshot_threshold` and its default).
pub const SNAPSHOT_THRESHOLD: u64 = 8192;

/// Raft's timers, and how often it takes a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    /// How often the leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// Lower bound of the randomised election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the randomised election timeout.
    pub election_timeout_max: Duration,
    /// Log entries after which a snapshot is taken (`raft_snapshot_threshold`).
    pub snapshot_threshold: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(600),
            snapshot_threshold: SNAPSHOT_THRESHOLD,
        }
    }
}

/// Most bytes of log entries (as encoded) the leader puts in one AppendEntries, beyond
/// its first entry, which goes whatever its size (etcd's default `MaxSizePerMsg`).
///
/// openraft gives an AppendEntries one heartbeat interval to be answered, follower's
/// fsync included; a follower catching up on a backlog of large entries would otherwise
/// be sent them all at once, time out, and be sent them again.
pub(crate) const REPLICATION_BYTES: usize = 1024 * 1024;

/// Bytes of `value` as JSON, as it goes into the log and onto the wire, counted without
/// keeping the encoding.
pub(crate) fn encoded_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// The first entries of `sized` (each with its size in bytes) that fit in
/// [`REPLICATION_BYTES`], and always the first.
pub(crate) fn within_replication_budget<E>(sized: impl IntoIterator<Item = (usize, E)>) -> Vec<E> {
    let mut total = 0usize;
    let mut out = Vec::new();
    for (size, entry) in sized {
        total = total.saturating_add(size);
        if !out.is_empty() && total > REPLICATION_BYTES {
            break;
        }
        out.push(entry);
    }
    out
}

/// How old a follower's last contact with a leader may be before reads from its copy
/// count as stale (`dns.stale_queries`), as Consul's.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(5);

/// This server's Raft and the catalog it drives. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Consensus {
    id: NodeId,
    raft: Raft<TypeConfig>,
    /// When this server last heard from a leader (an AppendEntries), for
    /// `X-Consul-LastContact` on followers.
    contact: Arc<std::sync::Mutex<Option<Instant>>>,
    /// Whether this follower's copy was older than [`STALE_AFTER`] when last looked at
    /// ([`Consensus::refresh_stale`]): read on every DNS answer, so a flag rather than
    /// a clock.
    stale: Arc<std::sync::atomic::AtomicBool>,
    /// Writes on their way into a shared Raft entry ([`batch`]).
    writes: tokio::sync::mpsc::Sender<batch::Pending>,
    /// Followers' acknowledgements of this server's leadership.
    acks: network::Acks,
    leases: Leases,
    /// Why Raft stopped by itself, once it has ([`Consensus::failed`]).
    failed: tokio::sync::watch::Receiver<Option<String>>,
    /// Tells when the log on disk is closed, after [`Consensus::shutdown`].
    closing: Option<Arc<disk::Closing>>,
    /// The snapshot being received, checked before its last chunk is installed.
    snapshot: Arc<guard::SnapshotShadow>,
    /// Reads this server's log, to check what a leader says of its committed part.
    reader: LogReader,
}

/// A reader of the log that does not keep it open (see [`Consensus::shutdown`]).
#[derive(Clone)]
enum LogReader {
    Memory(store::MemLog),
    Disk(Arc<disk::WeakDiskLog>),
}

/// Who a server is to Raft, and whether it may bootstrap a cluster alone.
pub(crate) struct Identity {
    /// Raft's numeric ID.
    pub(crate) id: NodeId,
    /// How the others reach and name it.
    pub(crate) node: ServerNode,
    /// Bootstrap with this server as the only voter when it has no Raft state.
    pub(crate) bootstrap: bool,
}

/// Why a membership change failed; the reconcile loop tries again later.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct MembershipError(String);

/// Raft could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RaftStartError {
    /// openraft refused its configuration; fix the timing settings.
    #[error("invalid raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    /// openraft failed while starting; the agent cannot run as a server.
    #[error("raft failed to start: {0}")]
    Fatal(String),
    /// The Raft state on disk could not be opened or read; check the data dir.
    #[error("{0}")]
    Storage(String),
}

impl Consensus {
    /// Starts Raft for this server, with its state in `storage`. With `bootstrap`, a
    /// server with no Raft state makes itself the only voter; a server with state picks
    /// up where it stopped.
    pub(crate) async fn start(
        identity: Identity,
        timing: RaftTiming,
        opened: Opened,
        network: network::Network<impl network::Carrier>,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(Consensus, Catalog), RaftStartError> {
        let Identity {
            id,
            node: me,
            bootstrap,
        } = identity;
        let config = Arc::new(
            openraft::Config {
                cluster_name: "proconsul".into(),
                heartbeat_interval: millis(timing.heartbeat_interval),
                election_timeout_min: millis(timing.election_timeout_min),
                election_timeout_max: millis(timing.election_timeout_max),
                snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                    timing.snapshot_threshold.max(1),
                ),
                ..openraft::Config::default()
            }
            .validate()?,
        );
        let Opened {
            log,
            machine,
            catalog,
            ..
        } = opened;
        let (closing, reader) = match &log {
            open::Log::Disk(log) => (
                Some(Arc::new(log.closing())),
                LogReader::Disk(Arc::new(log.downgrade())),
            ),
            open::Log::Memory(log) => (None, LogReader::Memory(log.clone())),
        };
        let (ahead, flushes) = match &log {
            open::Log::Disk(log) => (Some(log.ahead()), Some(log.flushes())),
            open::Log::Memory(_) => (None, None),
        };
        let raft = match log {
            open::Log::Memory(log) => Raft::new(id, config, network.clone(), log, machine).await,
            open::Log::Disk(log) => Raft::new(id, config, network.clone(), log, machine).await,
        }
        .map_err(|e| RaftStartError::Fatal(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| RaftStartError::Fatal(e.to_string()))?;
        if bootstrap && !initialized {
            let members = BTreeMap::from([(id, me)]);
            match raft.initialize(members).await {
                Ok(())
                | Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(RaftStartError::Fatal(e.to_string())),
            }
        }
        // A restarted server starts as a follower, even one that was leader (see
        // `DiskLog::read_vote`). The only voter has no one to wait for: it stands for
        // election at once rather than after an election timeout.
        let alone = {
            let m = raft.metrics();
            let m = m.borrow();
            let mut voters = m.membership_config.membership().voter_ids();
            voters.next() == Some(id) && voters.next().is_none()
        };
        if initialized && alone {
            raft.trigger()
                .elect()
                .await
                .map_err(|e| RaftStartError::Fatal(e.to_string()))?;
        }
        if let Some(ahead) = ahead {
            ahead.start(id, raft.clone(), network.clone(), tasks, shutdown.clone());
        }
        let (fatal, failed) = tokio::sync::watch::channel(None);
        tasks.spawn(watch(
            raft.clone(),
            network.term.clone(),
            fatal,
            shutdown.clone(),
        ));
        let writes = batch::start(raft.clone(), flushes, tasks, shutdown);
        let acks = network.acks.clone();
        Ok((
            Consensus {
                id,
                raft,
                contact: Arc::default(),
                stale: Arc::default(),
                writes,
                acks,
                leases: Leases::from(&timing),
                failed,
                closing,
                snapshot: Arc::default(),
                reader,
            },
            catalog,
        ))
    }

    /// Resolves, with the reason, once Raft has stopped by itself: a storage error (a
    /// full disk, say) or a panic inside openraft. Raft does not come back from that in
    /// this process; the agent should exit with an error so that a supervisor restarts it
    /// (crash-only), rather than stay up as a server that can neither vote nor write.
    pub(crate) async fn failed(&self) -> String {
        let mut failed = self.failed.clone();
        match failed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The watcher ended without a failure (a clean shutdown): never resolves.
            Err(_) => std::future::pending().await,
        }
    }

    /// The leader as this server should believe it: the one openraft names, unless
    /// that is this server and a quorum of voters has not acknowledged it within its
    /// lease, or another server not heard from within the follower lease (openraft keeps
    /// naming a dead leader until the next term; Consul's followers forget it on a
    /// heartbeat timeout).
    fn leader_id(&self, m: &openraft::RaftMetrics<NodeId, ServerNode>) -> Option<NodeId> {
        let leader = m.current_leader?;
        if leader != m.id {
            let heard = *self.contact.lock().expect("contact lock");
            return heard
                .is_some_and(|at| at.elapsed() < self.leases.follower)
                .then_some(leader);
        }
        if m.state != ServerState::Leader {
            return None;
        }
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        // Acknowledgements needed from others for a quorum (this server counts itself).
        let needed = (voters.len() / 2 + 1).saturating_sub(1);
        if needed == 0 {
            return Some(leader);
        }
        let acks = self.acks.lock().expect("acks lock");
        let mut times: Vec<Instant> = voters
            .iter()
            .filter(|v| **v != m.id)
            .filter_map(|v| acks.get(v).copied())
            .collect();
        times.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_at = times.get(needed - 1)?;
        (quorum_at.elapsed() < self.leases.leader).then_some(leader)
    }

    /// Resolves once this server no longer holds a valid leader lease (checked every
    /// [`LEASE_CHECK`]).
    async fn lease_lost(&self) {
        loop {
            tokio::time::sleep(LEASE_CHECK).await;
            if !self.is_leader() {
                return;
            }
        }
    }

    /// Whether this server holds Raft state (it was bootstrapped, or added by a leader).
    pub(crate) async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(true)
    }

    /// Bootstraps a new cluster whose voters are `members`. Safe to repeat with the
    /// same set; never call it with another set (see `autopilot`).
    pub(crate) async fn initialize(
        &self,
        members: BTreeMap<NodeId, ServerNode>,
    ) -> Result<(), MembershipError> {
        match self.raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {
                Ok(())
            }
            Err(e) => Err(MembershipError(e.to_string())),
        }
    }

    /// On the leader, the last log index each follower is known to hold.
    pub(crate) fn matched(&self) -> BTreeMap<NodeId, u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log)| (*id, log.map_or(0, |l| l.index)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// When each follower last acknowledged this server as leader.
    pub(crate) fn acks(&self) -> HashMap<NodeId, Instant> {
        self.acks.lock().expect("acks lock").clone()
    }

    /// On the leader, how long ago a quorum last acknowledged it.
    pub(crate) fn since_quorum_ack(&self) -> Option<Duration> {
        let ms = self.raft.metrics().borrow().millis_since_quorum_ack?;
        Some(Duration::from_millis(ms))
    }

    /// The servers of the current configuration.
    pub(crate) fn configuration(&self) -> Vec<RaftServer> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| RaftServer {
                raft_id: *id,
                node: node.clone(),
                voter: voters.contains(id),
                leader: self.leader_id(&m) == Some(*id),
            })
            .collect()
    }

    /// Adds a server as a learner; returns once it has caught up. Leader only.
    pub(crate) async fn add_learner(
        &self,
        id: NodeId,
        node: ServerNode,
        deadline: Instant,
    ) -> Result<(), MembershipError> {
        let learner = tokio::time::timeout_at(deadline, self.raft.add_learner(id, node, true));
        learner
            .await
            .map_err(|_| MembershipError("the new server did not catch up in time".into()))?
            .map_err(|e| MembershipError(e.to_string()))?;
        Ok(())
    }

    /// Makes a learner a voter. Leader only.
    pub(crate) async fn promote(
        &self,
        id: NodeId,
        deadline: Instant,
    ) -> Result<(), MembershipError> {
        let fail = |e: &dyn std::fmt::Display| MembershipError(e.to_string());
        let ids = std::collections::BTreeSet::from([id]);
        let promote = tokio::time::timeout_at(
            deadline,
            self.raft
                .change_membership(openraft::ChangeMembers::AddVoterIds(ids), false),
        );
        promote
            .await
            .map_err(|_| MembershipError("timed out promoting the server".into()))?
            .map_err(|e| fail(&e))?;
        Ok(())
    }

    /// Removes a server from the configuration (voter or learner). Leader only.
    pub(crate) async fn remove_server(
        &self,
        id: NodeId,
        deadline: Instant,
    ) -> Result<(), MembershipError> {
        let ids = std::collections::BTreeSet::from([id]);
        let voter = self
            .configuration()
            .iter()
            .any(|s| s.raft_id == id && s.voter);
        let change = if voter {
            openraft::ChangeMembers::RemoveVoters(ids)
        } else {
            openraft::ChangeMembers::RemoveNodes(ids)
        };
        tokio::time::timeout_at(deadline, self.raft.change_membership(change, false))
            .await
            .map_err(|_| MembershipError("timed out removing the server".into()))?
            .map_err(|e| MembershipError(e.to_string()))?;
        Ok(())
    }

    /// Records a server's new address in the configuration. Leader only.
    pub(crate) async fn update_address(
        &self,
        id: NodeId,
        node: ServerNode,
        deadline: Instant,
    ) -> Result<(), MembershipError> {
        let change = openraft::ChangeMembers::SetNodes(BTreeMap::from([(id, node)]));
        tokio::time::timeout_at(deadline, self.raft.change_membership(change, true))
            .await
            .map_err(|_| MembershipError("timed out updating the server address".into()))?
            .map_err(|e| MembershipError(e.to_string()))?;
        Ok(())
    }

    /// Notes that a leader was just heard from.
    pub(crate) fn heard_from_leader(&self) {
        *self.contact.lock().expect("contact lock") = Some(Instant::now());
    }

    /// Looks again at whether this server's copy is stale: a follower that has not
    /// heard from a leader for more than [`STALE_AFTER`] (Consul's threshold for
    /// `dns.stale_queries`).
    pub(crate) fn refresh_stale(&self) {
        let stale = self.last_contact().is_none_or(|c| c > STALE_AFTER);
        self.stale
            .store(stale, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the copy was stale when [`Consensus::refresh_stale`] last looked.
    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Time since the leader was last heard from: zero on the leader, `None` when no
    /// leader was heard from yet.
    pub(crate) fn last_contact(&self) -> Option<Duration> {
        if self.is_leader() {
            return Some(Duration::ZERO);
        }
        self.contact
            .lock()
            .expect("contact lock")
            .map(|at| at.elapsed())
    }

    /// Waits until this server leads, for at most [`RPC_HOLD_TIMEOUT`] or until
    /// `deadline`; returns whether it does.
    async fn hold_for_leadership(&self, deadline: Instant) -> bool {
        if self.is_leader() {
            return true;
        }
        let hold = deadline.min(Instant::now() + RPC_HOLD_TIMEOUT);
        let _ = tokio::time::timeout_at(hold, self.leadership_changed(false)).await;
        // (A stopped Raft returns at once and is reported by the write or read itself.)
        self.is_leader()
    }

    /// Appends `command` and waits until it is committed and applied, or `deadline`.
    /// Returns the log index it was applied at.
    pub(crate) async fn write(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<Written, WriteError> {
        if !self.hold_for_leadership(deadline).await {
            return Err(WriteError::NoLeader);
        }
        // A leader that loses its quorum while the write waits says so instead of
        // waiting out the deadline (the write may still commit if the quorum returns).
        let (done, result) = tokio::sync::oneshot::channel();
        let commit = async {
            self.writes
                .send((command, done))
                .await
                .map_err(|_| WriteError::ShuttingDown)?;
            result.await.map_err(|_| WriteError::ShuttingDown)?
        };
        tokio::select! {
            r = tokio::time::timeout_at(deadline, commit) => r.unwrap_or(Err(WriteError::Timeout)),
            // The command may already be in the log: not "No cluster leader", which
            // promises nothing was written.
            _ = self.lease_lost() => Err(WriteError::LeadershipLost),
        }
    }

    /// Checks what `consistency` requires before a local read.
    pub(crate) async fn read_barrier(
        &self,
        consistency: Consistency,
        deadline: Instant,
    ) -> Result<ReadMeta, ReadError> {
        if consistency != Consistency::Stale {
            self.hold_for_leadership(deadline).await;
        }
        let (known_leader, is_leader) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (
                self.leader_id(&m).is_some(),
                self.leader_id(&m) == Some(self.id),
            )
        };
        let meta = ReadMeta {
            known_leader,
            last_contact: if is_leader {
                Duration::ZERO
            } else {
                self.last_contact().unwrap_or(Duration::ZERO)
            },
        };
        match consistency {
            Consistency::Stale => Ok(meta),
            Consistency::Default if is_leader => {
                self.applied_in_term(deadline).await?;
                Ok(meta)
            }
            Consistency::Default => Err(ReadError::NoLeader),
            Consistency::Consistent => {
                match tokio::time::timeout_at(deadline, self.raft.ensure_linearizable()).await {
                    Err(_) => Err(ReadError::Timeout),
                    Ok(Ok(_)) => Ok(meta),
                    Ok(Err(RaftError::Fatal(_))) => Err(ReadError::ShuttingDown),
                    Ok(Err(RaftError::APIError(_))) if known_leader => Err(ReadError::NotReady),
                    Ok(Err(RaftError::APIError(_))) => Err(ReadError::NoLeader),
                }
            }
        }
    }

    /// Waits until this leader has applied an entry of its own term: the first one
    /// commits every entry before it, writes acknowledged by an earlier leader (or by
    /// this server before a restart) among them. Until then its catalog may lack them.
    async fn applied_in_term(&self, deadline: Instant) -> Result<(), ReadError> {
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.last_applied
                    .is_some_and(|l| l.leader_id.term >= m.current_term)
                    || m.running_state.is_err()
                {
                    return Ok(());
                }
                if m.current_leader != Some(self.id) {
                    return Err(ReadError::NoLeader);
                }
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ReadError::ShuttingDown),
                Err(_) => return Err(ReadError::Timeout),
            }
        }
    }

    /// The leader's Raft ID and its record, if one is known.
    pub(crate) fn leader(&self) -> Option<(NodeId, ServerNode)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = self.leader_id(&m)?;
        let node = m.membership_config.membership().get_node(&id)?;
        Some((id, node.clone()))
    }

    /// Checks what an AppendEntries (already checked by [`guard::append_entries`]) says
    /// of this server's committed log against the log ([`guard::agrees_with_committed`]).
    async fn check_committed(
        &self,
        request: &openraft::raft::AppendEntriesRequest<TypeConfig>,
    ) -> Result<(), guard::Refused> {
        // What this server has applied is committed; reading it from the metrics costs
        // nothing, where asking Raft's core for its commit index would cost a round trip
        // to it on every AppendEntries.
        let committed = self.raft.metrics().borrow().last_applied;
        let local = match guard::below_committed(request, committed) {
            Some(range) => self.log_ids(range).await.map_err(|e| {
                guard::Refused::new(format!("this server's log could not be read: {e}"))
            })?,
            None => Vec::new(),
        };
        guard::agrees_with_committed(request, committed, &local)
    }

    /// The log IDs this server's log holds over `range`, in order.
    async fn log_ids(
        &self,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Vec<openraft::LogId<NodeId>>, openraft::StorageError<NodeId>> {
        use openraft::storage::RaftLogReader;
        let entries = match &self.reader {
            LogReader::Memory(log) => log.clone().try_get_log_entries(range).await?,
            LogReader::Disk(log) => match log.upgrade() {
                Some(mut log) => log.try_get_log_entries(range).await?,
                None => Vec::new(),
            },
        };
        Ok(entries.into_iter().map(|e| e.log_id).collect())
    }

    /// The term this server is in.
    pub(crate) fn current_term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// This server's Raft ID.
    pub(crate) fn id(&self) -> NodeId {
        self.id
    }

    /// Waits until a leader is known, for at most [`RPC_HOLD_TIMEOUT`] or until
    /// `deadline`, and returns it.
    pub(crate) async fn wait_for_leader(&self, deadline: Instant) -> Option<(NodeId, ServerNode)> {
        let hold = deadline.min(Instant::now() + RPC_HOLD_TIMEOUT);
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            if metrics.borrow_and_update().running_state.is_err() {
                return None;
            }
            // Leases expire without a metrics change, so look again now and then too.
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return None },
                _ = tokio::time::sleep(LEASE_CHECK) => {}
                _ = tokio::time::sleep_until(hold) => return self.leader(),
            }
        }
    }

    /// Waits until `leader` is no longer the leader this server trusts: another was
    /// elected, or nothing was heard from it for a follower's lease, or Raft stopped.
    pub(crate) async fn leader_gone(&self, leader: NodeId) {
        self.until_leader(|trusted| trusted != Some(leader)).await;
    }

    /// Waits until `done` holds of the leader this server trusts; `false` when Raft
    /// stopped first.
    async fn until_leader(&self, mut done: impl FnMut(Option<NodeId>) -> bool) -> bool {
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.running_state.is_err() {
                    return false;
                }
                if done(self.leader_id(&m)) {
                    return true;
                }
            }
            // Leases expire without a metrics change, so look again now and then too.
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return false },
                _ = tokio::time::sleep(LEASE_CHECK) => {}
            }
        }
    }

    /// Hands a snapshot chunk (already checked by [`guard::install_snapshot`]) to Raft.
    /// The last chunk of a snapshot is refused when the snapshot it completes is not one
    /// the state machine can read: openraft would stop on it.
    async fn install_snapshot(
        &self,
        request: openraft::raft::InstallSnapshotRequest<TypeConfig>,
    ) -> Result<
        Result<
            openraft::raft::InstallSnapshotResponse<NodeId>,
            RaftError<NodeId, openraft::error::InstallSnapshotError>,
        >,
        guard::Refused,
    > {
        self.snapshot.before(&request, store::check_snapshot_data)?;
        // A chunk before the last is mirrored once Raft has taken it (chunks are a few MiB).
        let copy = (!request.done).then(|| request.clone());
        let answer = self.raft.install_snapshot(request).await;
        if let (Some(copy), Ok(_)) = (copy, &answer) {
            self.snapshot.accepted(&copy);
        }
        Ok(answer)
    }

    /// Whether this server is the leader right now.
    pub(crate) fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        self.leader_id(&m) == Some(self.id)
    }

    /// Waits until this server's leadership changes; `false` when Raft stopped instead.
    pub(crate) async fn leadership_changed(&self, was_leader: bool) -> bool {
        let me = self.id;
        self.until_leader(|trusted| (trusted == Some(me)) != was_leader)
            .await
    }

    /// This server's view of Raft.
    pub(crate) fn status(&self) -> RaftStatus {
        let servers = self.configuration();
        let m = self.raft.metrics();
        let m = m.borrow();
        let addr_of = |id: &NodeId| {
            servers
                .iter()
                .find(|s| s.raft_id == *id)
                .map(|s| s.node.rpc_addr.clone())
        };
        RaftStatus {
            leader: self.leader_id(&m).as_ref().and_then(addr_of),
            peers: servers
                .iter()
                .filter(|s| s.voter)
                .map(|s| s.node.rpc_addr.clone())
                .collect(),
            state: format!("{:?}", m.state),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            configuration_index: m.membership_config.log_id().map(|l| l.index).unwrap_or(0),
            servers,
        }
    }

    /// Stops Raft, and waits (within [`LOG_CLOSE_TIMEOUT`]) until its log on disk is
    /// closed, so that the same data dir can be opened again at once (an embedding
    /// program, or a test, restarting the agent in the same process).
    pub(crate) async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::debug!(error = %e, "raft did not stop cleanly");
        }
        let Some(closing) = &self.closing else {
            return;
        };
        let deadline = Instant::now() + LOG_CLOSE_TIMEOUT;
        // openraft's replication tasks let go of the log when their last call ends.
        while !closing.is_closed() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !closing.is_closed() {
            tracing::warn!("the raft log is still open after raft stopped");
        }
    }
}

/// How long leadership is trusted after the last word from the other side.
///
/// A leader whose AppendEntries a quorum has not acknowledged within `leader` acts as if
/// it had stepped down (Consul's `leader_lease_timeout`): it takes no writes and serves
/// no default reads. openraft 0.9 keeps such a leader in the leader state until it hears
/// a higher term, so this is where we stop trusting it. The lease must end before the
/// others can elect someone else: followers refuse votes for `election_timeout_max`
/// after their last heartbeat and only campaign after `election_timeout_min`, so the
/// leader lease is `election_timeout_min` less half a heartbeat interval, counted from
/// when the acknowledged request was sent. A follower forgets a leader it has not heard
/// from for `follower` (`election_timeout_max`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Leases {
    leader: Duration,
    follower: Duration,
}

impl Leases {
    fn from(timing: &RaftTiming) -> Leases {
        Leases {
            leader: timing
                .election_timeout_min
                .saturating_sub(timing.heartbeat_interval / 2),
            follower: timing.election_timeout_max,
        }
    }
}

/// Follows Raft's metrics until `shutdown`: mirrors its term into `term` (which the
/// network checks answers against) and reports on `fatal` if Raft stops by itself. A
/// stop after `shutdown` (the agent stopping) is not a failure.
async fn watch(
    raft: Raft<TypeConfig>,
    term: Arc<std::sync::atomic::AtomicU64>,
    fatal: tokio::sync::watch::Sender<Option<String>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut metrics = raft.metrics();
    let reason = loop {
        {
            let m = metrics.borrow_and_update();
            term.store(m.current_term, std::sync::atomic::Ordering::Relaxed);
            match &m.running_state {
                Ok(()) => {}
                Err(openraft::error::Fatal::Stopped) => return,
                Err(e) => break format!("raft stopped: {e}"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() {
                // The core task ended without a word: it panicked (the panic is on
                // stderr).
                break "raft stopped: its core task ended unexpectedly".to_string();
            },
        }
    };
    if shutdown.is_cancelled() {
        return;
    }
    tracing::error!(error = %reason, "raft has stopped and cannot restart in this process; the agent will exit");
    fatal.send_replace(Some(reason));
}

/// How long a stopped Raft's log may take to close.
const LOG_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a write waiting for its commit checks that the lease still holds.
const LEASE_CHECK: Duration = Duration::from_millis(100);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
