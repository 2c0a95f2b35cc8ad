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

/// Hands out [`Peer`]s that share the agent's RPC connections; they send Raft's messages
/// in requests of type `C`.
#[derive(Debug)]
pub(crate) struct Network<C> {
    pub(crate) rpc: rpc::Client,
    /// The LAN pool's member list: the current address of each server.
    pub(crate) members: watch::Receiver<Arc<Vec<Member>>>,
    /// Follower acknowledgements, filled in by the peers.
    pub(crate) acks: Acks,
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
        let message = Message::AppendEntries(AppendEntries {
            to: self.target,
            request: AppendEntriesRequest::clone(&request),
        });
        let answer = self
            .call::<openraft::error::Infallible>(message, &RPCOption::new(timeout))
            .await;
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
}
