//! A leader's new entries sent to the followers while its own fsync runs.
//!
//! openraft 0.9 writes a leader's new entries to its log and waits until that write is
//! durable before its replication streams send them on. One write therefore waits for
//! two fsyncs in a row, the leader's and then a follower's, with a network round trip
//! around the second. Raft lets the leader write its log in parallel with replicating
//! (the Raft thesis, §10.2.1): what keeps it safe is that the leader counts itself
//! towards a commit only once its own copy is durable, which openraft still does.
//!
//! So the log on disk hands this module a copy of each batch of entries the leader
//! appends in its own term ([`Ahead::offer`]), and a task sends it at once to every
//! other voter as an ordinary AppendEntries of that term. The follower appends and
//! fsyncs it while the leader fsyncs its own.
//!
//! A follower answers once the entries are durable in its log. Its answer is recorded
//! ([`super::network::AheadAcks`]): when openraft's stream sends the same entries after
//! the leader's fsync, a success under the same vote already says what the follower's
//! answer would be (its log matches the leader's up to them), so the stream takes it
//! instead of a second round trip, and waits for an answer still on its way. A refusal,
//! a timeout or another vote lets the stream's request go as usual. The leader still
//! counts itself only once its own fsync is done: openraft replicates only then. A
//! message is one the leader could always have sent (entries of its log, its vote, a
//! commit index it has saved), so a follower treats one that arrives late, twice or out
//! of order as any delayed AppendEntries: it refuses or ignores it. When a queue is
//! full, or the entry before a batch is not known here (after a truncation, at start),
//! the batch simply goes the usual way, later.
//!
//! **The one new duty.** A leader killed before its fsync comes back without entries a
//! follower may hold. It must never write in that term again: it would put other
//! entries under the same term and index, and the follower, taking the two for one,
//! would keep and apply its own. openraft would restore it as leader of that term, so
//! the log on disk reads a saved vote back as not yet granted (`DiskLog::read_vote`),
//! and a restarted server leads only after winning a later term.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use openraft::raft::AppendEntriesRequest;
use openraft::{Entry, LogId, Raft, Vote};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::network::{Carrier, Network};
use super::{NodeId, TypeConfig};

/// Batches waiting to be sent; a batch offered when it is full is not sent ahead.
const QUEUE: usize = 64;
/// Batches waiting for one follower.
const PEER_QUEUE: usize = 16;
/// AppendEntries in flight to one follower at once.
const PEER_IN_FLIGHT: usize = 4;
/// How long one is given: a follower that takes longer is behind, and openraft's own
/// stream deals with it.
const TIMEOUT: Duration = Duration::from_secs(1);

/// What the log knows of Raft's state, to tell whether an append is the leader's own
/// and what comes before it.
#[derive(Debug, Default)]
struct Seen {
    /// The last vote saved.
    vote: Option<Vote<NodeId>>,
    /// The last commit index saved.
    committed: Option<LogId<NodeId>>,
    /// The last entry appended, when known: `None` at start and after a truncation.
    last: Option<LogId<NodeId>>,
}

/// The log's side: it reports votes, commits, truncations and appends; appends of the
/// leader's own entries go to the sender task once it runs.
#[derive(Debug, Default)]
pub(crate) struct Ahead {
    seen: Mutex<Seen>,
    sender: std::sync::OnceLock<Sender>,
}

/// One batch as it is sent, shared by the followers' tasks.
type Batch = Arc<AppendEntriesRequest<TypeConfig>>;

#[derive(Debug)]
struct Sender {
    me: NodeId,
    queue: mpsc::Sender<Batch>,
}

impl Ahead {
    pub(crate) fn saved_vote(&self, vote: &Vote<NodeId>) {
        self.seen.lock().expect("ahead lock").vote = Some(*vote);
    }

    pub(crate) fn saved_committed(&self, committed: Option<LogId<NodeId>>) {
        self.seen.lock().expect("ahead lock").committed = committed;
    }

    pub(crate) fn truncated(&self) {
        self.seen.lock().expect("ahead lock").last = None;
    }

    /// The log takes `entries` (in order, contiguous): queues them to be sent ahead
    /// when they are this server's own, as leader, and follow the last entry appended.
    pub(crate) fn offer(&self, entries: &[Entry<TypeConfig>]) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return;
        };
        let mut seen = self.seen.lock().expect("ahead lock");
        let prev = seen.last.replace(last.log_id);
        let Some(sender) = self.sender.get() else {
            return;
        };
        let Some(vote) = seen.vote else { return };
        let own = vote.is_committed()
            && vote.leader_id().voted_for() == Some(sender.me)
            && entries
                .iter()
                .all(|e| e.log_id.leader_id == *vote.leader_id());
        let follows = prev.is_some_and(|p| p.index + 1 == first.log_id.index);
        if !own || !follows {
            return;
        }
        let request = AppendEntriesRequest {
            vote,
            prev_log_id: prev,
            entries: entries.to_vec(),
            leader_commit: seen.committed,
        };
        drop(seen);
        // Full: the entries go with openraft's own stream.
        let _ = sender.queue.try_send(Arc::new(request));
    }

    /// Starts sending ahead for server `me`, through `network`, to the voters `raft`
    /// knows. Does nothing the second time.
    pub(crate) fn start<C: Carrier>(
        &self,
        me: NodeId,
        raft: Raft<TypeConfig>,
        network: Network<C>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        if let Some(rx) = self.queue_for(me) {
            tasks.spawn(send(me, raft, network, rx, tasks.clone(), shutdown));
        }
    }

    /// Makes the queue of server `me`; `None` when there is one already.
    fn queue_for(&self, me: NodeId) -> Option<mpsc::Receiver<Batch>> {
        let (queue, rx) = mpsc::channel(QUEUE);
        self.sender.set(Sender { me, queue }).ok().map(|()| rx)
    }
}

/// Hands each batch to one task per voter, so that a slow follower holds up only itself.
async fn send<C: Carrier>(
    me: NodeId,
    raft: Raft<TypeConfig>,
    network: Network<C>,
    mut queue: mpsc::Receiver<Batch>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut peers: HashMap<NodeId, mpsc::Sender<Batch>> = HashMap::new();
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = queue.recv() => match r {
                Some(r) => r,
                None => return,
            },
        };
        let voters: Vec<_> = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            membership
                .voter_ids()
                .filter(|id| *id != me)
                .filter_map(|id| Some((id, membership.get_node(&id)?.clone())))
                .collect()
        };
        // A server that left the voters: dropping its queue ends its task.
        peers.retain(|id, _| voters.iter().any(|(v, _)| v == id));
        for (id, node) in voters {
            let peer = peers.entry(id).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                let peer = network.peer(id, node);
                tasks.spawn(to_peer(peer, rx, shutdown.clone()));
                tx
            });
            let _ = peer.try_send(request.clone());
        }
    }
}

/// Sends one follower its batches in the order they came, up to [`PEER_IN_FLIGHT`] at
/// once; a batch that arrives while that many are in flight is not sent ahead.
async fn to_peer<C: Carrier>(
    peer: super::network::Peer<C>,
    mut queue: mpsc::Receiver<Batch>,
    shutdown: CancellationToken,
) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            r = queue.recv() => match r {
                None => return,
                Some(_) if in_flight.len() >= PEER_IN_FLIGHT => {}
                Some(request) => in_flight.push(peer.send_ahead(request, TIMEOUT)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    const ME: NodeId = 7;

    fn entries(
        term: u64,
        leader: NodeId,
        indexes: std::ops::RangeInclusive<u64>,
    ) -> Vec<Entry<TypeConfig>> {
        indexes
            .map(|index| Entry {
                log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
                payload: EntryPayload::Blank,
            })
            .collect()
    }

    fn started() -> (Ahead, mpsc::Receiver<Batch>) {
        let ahead = Ahead::default();
        let rx = ahead.queue_for(ME).expect("first queue");
        (ahead, rx)
    }

    #[test]
    fn a_leaders_own_entries_that_follow_on_are_sent_ahead_with_what_it_saved() {
        let (ahead, mut rx) = started();
        ahead.saved_vote(&Vote::new_committed(3, ME));
        let committed = LogId::new(CommittedLeaderId::new(3, ME), 9);
        ahead.saved_committed(Some(committed));
        // The first append after start has no known entry before it.
        ahead.offer(&entries(3, ME, 10..=10));
        assert!(rx.try_recv().is_err());
        ahead.offer(&entries(3, ME, 11..=12));
        let sent = rx.try_recv().expect("sent ahead");
        assert_eq!(sent.vote, Vote::new_committed(3, ME));
        assert_eq!(sent.prev_log_id.map(|p| p.index), Some(10));
        assert_eq!(sent.leader_commit, Some(committed));
        let indexes: Vec<u64> = sent.entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, [11, 12]);
    }

    #[test]
    fn nothing_is_sent_ahead_by_a_follower_a_candidate_or_after_a_truncation() {
        let (ahead, mut rx) = started();
        // A follower appends its leader's entries.
        ahead.saved_vote(&Vote::new_committed(3, 2));
        ahead.offer(&entries(3, 2, 1..=1));
        ahead.offer(&entries(3, 2, 2..=2));
        assert!(rx.try_recv().is_err());
        // A vote for itself not yet granted: not a leader.
        ahead.saved_vote(&Vote::new(4, ME));
        ahead.offer(&entries(4, ME, 3..=3));
        assert!(rx.try_recv().is_err());
        // Leader now, but these entries are an earlier leader's.
        ahead.saved_vote(&Vote::new_committed(4, ME));
        ahead.offer(&entries(3, 2, 4..=4));
        assert!(rx.try_recv().is_err());
        // After a truncation the entry before the next append is not known.
        ahead.offer(&entries(4, ME, 5..=5));
        assert!(rx.try_recv().is_ok());
        ahead.truncated();
        ahead.offer(&entries(4, ME, 5..=5));
        assert!(rx.try_recv().is_err());
        // A gap is not sent either.
        ahead.offer(&entries(4, ME, 7..=7));
        assert!(rx.try_recv().is_err());
        ahead.offer(&entries(4, ME, 8..=8));
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn a_full_queue_drops_the_batch_instead_of_waiting() {
        let (ahead, mut rx) = started();
        ahead.saved_vote(&Vote::new_committed(1, ME));
        ahead.offer(&entries(1, ME, 0..=0));
        for index in 1..=(QUEUE as u64 + 10) {
            ahead.offer(&entries(1, ME, index..=index));
        }
        let mut queued = 0;
        while rx.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, QUEUE);
        assert!(ahead.queue_for(ME).is_none(), "started once");
    }
}
