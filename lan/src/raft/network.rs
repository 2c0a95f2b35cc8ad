//! How one server's Raft reaches the others: its RPCs travel on the server port (8300)
//! through [`crate::rpc`], each bounded by the time budget openraft gives it.
//!
//! Raft's messages ([`super::Message`]) ride inside the server port's requests, which
//! this module does not know: it is generic over a [`Carrier`], the port's request type,
//! which wraps a message into a request and finds Raft's answer in the port's answer.
//! `crate::server` implements it for its request enum and the assembly in `lib.rs` picks
//! it, so the modules import each other one way only: `server` → `raft` → `rpc`.
//!
//! A peer that cannot be reached is `Unreachable` (openraft backs off before the next
//! attempt); a call that runs out of time is a `Timeout`; an error the remote Raft
//! returned comes back as it was.

use std::collections::HashMap;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;

use catalog::ServerNode;

use super::{Answer, AppendEntries, InstallSnapshot, Message, NodeId, TypeConfig, Vote};
use crate::rpc::{self, RpcError};
use gossip::Member;

/// The requests of the port Raft's messages travel in, as Raft needs them: one carries
/// a message, and the port's answer to it holds Raft's answer, or something else (a
/// refusal, say) that Raft reports as a network failure.
pub(crate) trait Carrier: Serialize + Send + Sync + 'static {
    /// The port's answer to a request.
    type Answer: DeserializeOwned + Debug + Send;

    /// The request that carries `message`.
    fn carry(message: Message) -> Self;

    /// Raft's answer inside `answer`; the answer itself when it holds none.
    fn answer(answer: Self::Answer) -> Result<Answer, Self::Answer>;
}

/// When each follower last acknowledged this server as leader (answered an
/// AppendEntries in its term), for the leader's lease.
pub(crate) type Acks = Arc<std::sync::Mutex<HashMap<NodeId, Instant>>>;

/// What the followers have made of the entries sent ahead ([`super::ahead`]), shared by
/// the sender and openraft's replication streams.
///
/// A follower answers an AppendEntries once the entries are durable in its log, and a
/// success means its log matches the leader's up to the last of them. When openraft's
/// stream then sends the same entries (it does so only after the leader's own fsync),
/// the follower's answer is already known: the stream takes it from here instead of
/// waiting for one more round trip, and waits for an answer still on its way. Only a
/// success under the very vote of the stream's request counts; anything else sends the
/// request as usual.
#[derive(Debug, Default)]
pub(crate) struct AheadAcks {
    peers: std::sync::Mutex<HashMap<NodeId, AheadPeer>>,
    answered: tokio::sync::Notify,
}

/// One follower's state in [`AheadAcks`], for one vote of this server.
#[derive(Debug, Clone)]
struct AheadPeer {
    vote: openraft::Vote<NodeId>,
    /// The last log index the follower's log is known to match this leader's through.
    matched: Option<u64>,
    /// Last indexes of the batches sent and not yet answered.
    pending: std::collections::BTreeSet<u64>,
}

impl AheadAcks {
    /// The state of `target` for `vote`, started afresh under a new vote.
    fn peer<'a>(
        peers: &'a mut HashMap<NodeId, AheadPeer>,
        target: NodeId,
        vote: &openraft::Vote<NodeId>,
    ) -> &'a mut AheadPeer {
        let peer = peers.entry(target).or_insert_with(|| AheadPeer {
            vote: *vote,
            matched: None,
            pending: Default::default(),
        });
        if peer.vote != *vote {
            *peer = AheadPeer {
                vote: *vote,
                matched: None,
                pending: Default::default(),
            };
        }
        peer
    }

    /// A batch ending at `last` goes to `target` under `vote`.
    fn sending(&self, target: NodeId, vote: &openraft::Vote<NodeId>, last: u64) {
        let mut peers = self.peers.lock().expect("ahead acks lock");
        Self::peer(&mut peers, target, vote).pending.insert(last);
    }

    /// Records that a batch ending at `last` goes to `target`; the returned guard reports
    /// its answer, and reports it unanswered if dropped first (the sending task ended),
    /// so that no stream waits for it.
    fn send<'a>(&'a self, target: NodeId, vote: openraft::Vote<NodeId>, last: u64) -> InFlight<'a> {
        self.sending(target, &vote, last);
        InFlight {
            acks: self,
            target,
            vote,
            last,
            matched: false,
        }
    }

    /// The batch ending at `last` was answered: `matched` when the answer was a success.
    fn answered(&self, target: NodeId, vote: &openraft::Vote<NodeId>, last: u64, matched: bool) {
        {
            let mut peers = self.peers.lock().expect("ahead acks lock");
            let peer = Self::peer(&mut peers, target, vote);
            peer.pending.remove(&last);
            if matched {
                peer.matched = Some(peer.matched.map_or(last, |m| m.max(last)));
            }
        }
        self.answered.notify_waiters();
    }

    /// Whether `target` is known to hold everything up to `last` under `vote`
    /// (`Some(true)`), may soon be (`Some(false)`: a batch reaching that far is on its
    /// way), or neither (`None`).
    fn holds(&self, target: NodeId, vote: &openraft::Vote<NodeId>, last: u64) -> Option<bool> {
        let peers = self.peers.lock().expect("ahead acks lock");
        let peer = peers.get(&target).filter(|p| p.vote == *vote)?;
        if peer.matched.is_some_and(|m| m >= last) {
            return Some(true);
        }
        peer.pending.range(last..).next().map(|_| false)
    }

    /// Waits until the follower is known to hold everything up to `last`, or no batch on
    /// its way could tell, or `until`; returns whether it holds it.
    async fn wait_for(
        &self,
        target: NodeId,
        vote: &openraft::Vote<NodeId>,
        last: u64,
        until: Instant,
    ) -> bool {
        loop {
            let notified = self.answered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.holds(target, vote, last) {
                Some(true) => return true,
                None => return false,
                Some(false) => {}
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return false;
            }
        }
    }
}

/// A batch sent ahead and not yet answered ([`AheadAcks::send`]).
struct InFlight<'a> {
    acks: &'a AheadAcks,
    target: NodeId,
    vote: openraft::Vote<NodeId>,
    last: u64,
    /// Whether the follower answered with a success.
    matched: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.acks
            .answered(self.target, &self.vote, self.last, self.matched);
    }
}

/// Hands out [`Peer`]s that share the agent's RPC connections; they send Raft's messages
/// in requests of type `C`.
#[derive(Debug)]
pub(crate) struct Network<C> {
    pub(crate) rpc: rpc::Client,
    /// The LAN pool's member list: the current address of each server.
    pub(crate) members: watch::Receiver<Arc<Vec<Member>>>,
    /// Follower acknowledgements, filled in by the peers.
    pub(crate) acks: Acks,
    /// What followers answered to entries sent ahead.
    ahead: Arc<AheadAcks>,
    /// The term this server is in, mirrored from Raft's metrics: answers carrying a term
    /// too far ahead of it are not believed ([`super::guard`]).
    pub(crate) term: Arc<AtomicU64>,
    carrier: PhantomData<fn() -> C>,
}

impl<C> Network<C> {
    /// A network on `rpc`, finding servers in the LAN pool's `members`.
    pub(crate) fn new(rpc: rpc::Client, members: watch::Receiver<Arc<Vec<Member>>>) -> Self {
        Network {
            rpc,
            members,
            acks: Acks::default(),
            ahead: Arc::default(),
            term: Arc::default(),
            carrier: PhantomData,
        }
    }
}

// Not derived: a derive would ask for `C: Clone`, and no `C` is held.
impl<C> Clone for Network<C> {
    fn clone(&self) -> Self {
        Network {
            rpc: self.rpc.clone(),
            members: self.members.clone(),
            acks: self.acks.clone(),
            ahead: self.ahead.clone(),
            term: self.term.clone(),
            carrier: PhantomData,
        }
    }
}

/// One peer as Raft sees it.
#[derive(Debug)]
pub(crate) struct Peer<C> {
    target: NodeId,
    node: ServerNode,
    rpc: rpc::Client,
    members: watch::Receiver<Arc<Vec<Member>>>,
    acks: Acks,
    ahead: Arc<AheadAcks>,
    term: Arc<AtomicU64>,
    carrier: PhantomData<fn() -> C>,
}

/// The server RPC address of server `id` (recorded as `node`) now: what gossip says for
/// that node name (a server may come back on another address or port), else what Raft
/// recorded. `None` when the member of that name now runs under another Raft ID: the
/// server `id` is gone, and whoever answers there is someone else.
pub(crate) fn resolve(members: &[Member], id: NodeId, node: &ServerNode) -> Option<SocketAddr> {
    match members
        .iter()
        .find(|m| m.name == node.name && m.is_server())
    {
        Some(m) if crate::raft::member_raft_id(m) != Some(id) => None,
        Some(m) => m.rpc_addr(),
        None => node.rpc_addr.parse().ok(),
    }
}

impl<C> Network<C> {
    /// The peer `target`, recorded as `node`.
    pub(crate) fn peer(&self, target: NodeId, node: ServerNode) -> Peer<C> {
        Peer {
            target,
            node,
            rpc: self.rpc.clone(),
            members: self.members.clone(),
            acks: self.acks.clone(),
            ahead: self.ahead.clone(),
            term: self.term.clone(),
            carrier: PhantomData,
        }
    }
}

impl<C: Carrier> RaftNetworkFactory<TypeConfig> for Network<C> {
    type Network = Peer<C>;

    async fn new_client(&mut self, target: NodeId, node: &ServerNode) -> Peer<C> {
        self.peer(target, node.clone())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, ServerNode, RaftError<NodeId, E>>>;

impl<C: Carrier> Peer<C> {
    /// Sends `message` and returns Raft's answer, or the port's answer when it holds none.
    async fn call<E: std::error::Error>(
        &self,
        message: Message,
        option: &RPCOption,
    ) -> Result<Result<Answer, C::Answer>, RPCError<NodeId, ServerNode, RaftError<NodeId, E>>> {
        let found = resolve(&self.members.borrow(), self.target, &self.node);
        let addr = found.ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&Failure(format!(
                "no address for server {} ({:?})",
                self.node.name, self.node.rpc_addr
            ))))
        })?;
        let deadline = Instant::now() + option.hard_ttl();
        let entries = match &message {
            Message::AppendEntries(m) => m.request.entries.len(),
            _ => 1,
        };
        let request = C::carry(message);
        match self.rpc.call(addr, &request, deadline).await {
            Ok(r) => Ok(C::answer(r)),
            Err(RpcError::TooLarge(_)) => {
                // Halving until one entry is left; openraft treats one as unreachable.
                Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint((entries / 2).max(1) as u64),
                ))
            }
            Err(RpcError::Timeout) => Err(RPCError::Network(NetworkError::new(&Failure(format!(
                "no answer from {addr} in {:?}",
                option.hard_ttl()
            ))))),
            Err(e @ RpcError::Busy(_)) => Err(RPCError::Network(NetworkError::new(&Failure(
                e.to_string(),
            )))),
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(&Failure(
                e.to_string(),
            )))),
        }
    }

    /// Sends `request` ahead of openraft's own stream ([`super::ahead`]) and drops the
    /// answer, whatever it is: only openraft's stream counts acknowledgements.
    pub(crate) async fn send_ahead(
        &self,
        request: Arc<AppendEntriesRequest<TypeConfig>>,
        timeout: Duration,
    ) {
        let vote = request.vote;
        let Some(last) = request.entries.last().map(|e| e.log_id.index) else {
            return;
        };
        let message = Message::AppendEntries(AppendEntries {
            to: self.target,
            request: AppendEntriesRequest::clone(&request),
        });
        let sent = Instant::now();
        let mut in_flight = self.ahead.send(self.target, vote, last);
        let answer = self
            .call::<openraft::error::Infallible>(message, &RPCOption::new(timeout))
            .await;
        let matched = matches!(
            answer,
            Ok(Ok(Answer::AppendEntries(Ok(
                AppendEntriesResponse::Success
            ))))
        );
        if matched {
            // Acknowledges this leadership as any AppendEntries in its term does.
            self.acks
                .lock()
                .expect("acks lock")
                .insert(self.target, sent);
        }
        in_flight.matched = matched;
        drop(in_flight);
        if let Err(e) = answer {
            tracing::trace!(node = %self.node.name, error = %e, "entries sent ahead did not arrive");
        }
    }

    /// Refuses an answer whose vote this server cannot believe (see [`super::guard`]).
    #[allow(clippy::result_large_err)] // openraft's error type, returned as it is.
    fn believe<E: std::error::Error>(
        &self,
        vote: &openraft::Vote<NodeId>,
    ) -> Result<(), RPCError<NodeId, ServerNode, RaftError<NodeId, E>>> {
        let term = self.term.load(Ordering::Relaxed);
        super::guard::vote(vote, term).map_err(|e| {
            tracing::warn!(node = %self.node.name, error = %e, "refused a raft answer");
            RPCError::Network(NetworkError::new(&Failure(format!(
                "refused an answer from {}: {e}",
                self.node.name
            ))))
        })
    }

    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, ServerNode, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            e,
        ))
    }

    fn unexpected<E: std::error::Error>(
        response: &dyn Debug,
    ) -> RPCError<NodeId, ServerNode, RaftError<NodeId, E>> {
        RPCError::Network(NetworkError::new(&Failure(format!(
            "unexpected answer {response:?}"
        ))))
    }
}

/// First pause before calling an unreachable server again.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between calls to an unreachable server: a server that is down costs
/// the leader one failed call (and its log lines) per this interval, not several a
/// second, and is found again within it once it is back.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The pauses between calls to an unreachable server: doubling from [`BACKOFF_FIRST`] to
/// [`BACKOFF_MAX`].
fn backoff() -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(BACKOFF_FIRST), |d| Some((*d * 2).min(BACKOFF_MAX)))
}

impl<C: Carrier> RaftNetwork<TypeConfig> for Peer<C> {
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(backoff())
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        // Entries the follower already confirmed, or is about to, sent ahead: its answer
        // is known (see `AheadAcks`). Half the time openraft gives the request at most is
        // spent waiting for it, so that the request can still go when it does not come.
        if let Some(last) = rpc.entries.last().map(|e| e.log_id.index) {
            let until = Instant::now() + option.hard_ttl() / 2;
            if self
                .ahead
                .wait_for(self.target, &rpc.vote, last, until)
                .await
            {
                return Ok(AppendEntriesResponse::Success);
            }
        }
        let sent = Instant::now();
        let message = Message::AppendEntries(AppendEntries {
            to: self.target,
            request: rpc,
        });
        match self.call(message, &option).await? {
            Ok(Answer::AppendEntries(Ok(r))) => {
                if let AppendEntriesResponse::HigherVote(vote) = &r {
                    self.believe(vote)?;
                }
                // Any answer but a higher vote acknowledges our leadership; the lease
                // counts from when the request left, the safe end.
                if !matches!(r, AppendEntriesResponse::HigherVote(_)) {
                    self.acks
                        .lock()
                        .expect("acks lock")
                        .insert(self.target, sent);
                }
                Ok(r)
            }
            Ok(Answer::AppendEntries(Err(e))) => Err(self.remote(e)),
            Ok(other) => Err(Self::unexpected(&other)),
            Err(other) => Err(Self::unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let message = Message::InstallSnapshot(InstallSnapshot {
            to: self.target,
            request: rpc,
        });
        match self.call(message, &option).await? {
            Ok(Answer::InstallSnapshot(Ok(r))) => {
                self.believe(&r.vote)?;
                Ok(r)
            }
            Ok(Answer::InstallSnapshot(Err(e))) => Err(self.remote(e)),
            Ok(other) => Err(Self::unexpected(&other)),
            Err(other) => Err(Self::unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let message = Message::Vote(Vote {
            to: self.target,
            request: rpc,
        });
        match self.call(message, &option).await? {
            Ok(Answer::Vote(Ok(r))) => {
                self.believe(&r.vote)?;
                Ok(r)
            }
            Ok(Answer::Vote(Err(e))) => Err(self.remote(e)),
            Ok(other) => Err(Self::unexpected(&other)),
            Err(other) => Err(Self::unexpected(&other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_to_an_unreachable_server_back_off_to_one_per_interval() {
        let pauses: Vec<Duration> = backoff().take(8).collect();
        assert_eq!(pauses[0], BACKOFF_FIRST);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(pauses[7], BACKOFF_MAX);
    }

    #[test]
    fn only_a_success_under_the_same_vote_tells_what_a_follower_holds() {
        let acks = AheadAcks::default();
        let (vote, next) = (
            openraft::Vote::new_committed(3, 1),
            openraft::Vote::new_committed(4, 2),
        );
        assert_eq!(acks.holds(2, &vote, 10), None, "nothing sent");
        acks.sending(2, &vote, 10);
        acks.sending(2, &vote, 12);
        assert_eq!(acks.holds(2, &vote, 10), Some(false), "on its way");
        assert_eq!(
            acks.holds(2, &vote, 13),
            None,
            "nothing on its way reaches 13"
        );
        acks.answered(2, &vote, 10, true);
        assert_eq!(acks.holds(2, &vote, 9), Some(true));
        assert_eq!(acks.holds(2, &vote, 10), Some(true));
        assert_eq!(acks.holds(2, &vote, 11), Some(false), "12 is on its way");
        acks.answered(2, &vote, 12, false);
        assert_eq!(acks.holds(2, &vote, 11), None, "12 was refused");
        assert_eq!(acks.holds(3, &vote, 1), None, "another follower");
        assert_eq!(acks.holds(2, &next, 1), None, "another vote");
        // A batch whose sending ends without an answer is not waited for.
        drop(acks.send(2, vote, 14));
        assert_eq!(acks.holds(2, &vote, 13), None, "14 went unanswered");
        // A new vote starts over.
        acks.sending(2, &next, 20);
        assert_eq!(acks.holds(2, &vote, 1), None);
        acks.answered(2, &next, 20, true);
        assert_eq!(acks.holds(2, &next, 20), Some(true));
    }

    #[tokio::test]
    async fn a_stream_waits_for_an_answer_on_its_way_and_no_longer() {
        let acks = Arc::new(AheadAcks::default());
        let vote = openraft::Vote::new_committed(3, 1);
        let soon = || Instant::now() + Duration::from_secs(5);
        // Nothing on its way: at once.
        assert!(!acks.wait_for(2, &vote, 5, soon()).await);
        // Answered later with a success, or a refusal: the answering task runs only once
        // the waiter has found the batch on its way and waits (one runtime thread).
        for (last, success) in [(7, true), (8, false)] {
            acks.sending(2, &vote, last);
            let answer = {
                let acks = acks.clone();
                tokio::spawn(async move { acks.answered(2, &vote, last, success) })
            };
            assert_eq!(acks.wait_for(2, &vote, last, soon()).await, success);
            answer.await.unwrap();
        }
        // An answer that does not come in time.
        acks.sending(2, &vote, 9);
        assert!(!acks.wait_for(2, &vote, 9, Instant::now()).await);
    }
}
