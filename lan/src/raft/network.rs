//! How one server's Raft reaches the others: its RPCs travel on the server port (8300)
//! through [`crate::rpc`], each bounded by the time budget openraft gives it.
//!
//! A peer that cannot be reached is `Unreachable` (openraft backs off before the next
//! attempt); a call that runs out of time is a `Timeout`; an error the remote Raft
//! returned comes back as it was.

use std::collections::HashMap;
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
use tokio::sync::watch;
use tokio::time::Instant;

use catalog::ServerNode;

use super::{NodeId, TypeConfig};
use crate::rpc::{self, RpcError};
use crate::server::{Request, Response};
use gossip::Member;

/// When each follower last acknowledged this server as leader (answered an
/// AppendEntries in its term), for the leader's lease.
pub(crate) type Acks = Arc<std::sync::Mutex<HashMap<NodeId, Instant>>>;

/// Hands out [`Peer`]s that share the agent's RPC connections.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub(crate) rpc: rpc::Client,
    /// The LAN pool's member list: the current address of each server.
    pub(crate) members: watch::Receiver<Arc<Vec<Member>>>,
    /// Follower acknowledgements, filled in by the peers.
    pub(crate) acks: Acks,
    /// The term this server is in, mirrored from Raft's metrics: answers carrying a term
    /// too far ahead of it are not believed ([`super::guard`]).
    pub(crate) term: Arc<AtomicU64>,
}

/// One peer as Raft sees it.
#[derive(Debug)]
pub(crate) struct Peer {
    target: NodeId,
    node: ServerNode,
    rpc: rpc::Client,
    members: watch::Receiver<Arc<Vec<Member>>>,
    acks: Acks,
    term: Arc<AtomicU64>,
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

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &ServerNode) -> Peer {
        Peer {
            target,
            node: node.clone(),
            rpc: self.rpc.clone(),
            members: self.members.clone(),
            acks: self.acks.clone(),
            term: self.term.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, ServerNode, RaftError<NodeId, E>>>;

impl Peer {
    async fn call<E: std::error::Error>(
        &self,
        request: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, ServerNode, RaftError<NodeId, E>>> {
        let found = resolve(&self.members.borrow(), self.target, &self.node);
        let addr = found.ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&Failure(format!(
                "no address for server {} ({:?})",
                self.node.name, self.node.rpc_addr
            ))))
        })?;
        let deadline = Instant::now() + option.hard_ttl();
        match self.rpc.call(addr, &request, deadline).await {
            Ok(r) => Ok(r),
            Err(RpcError::TooLarge(_)) => {
                let entries = match &request {
                    Request::AppendEntries { request, .. } => request.entries.len(),
                    _ => 1,
                };
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
        response: &Response,
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

impl RaftNetwork<TypeConfig> for Peer {
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(backoff())
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let sent = Instant::now();
        let request = Request::AppendEntries {
            to: self.target,
            request: rpc,
        };
        match self.call(request, &option).await? {
            Response::AppendEntries(Ok(r)) => {
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
            Response::AppendEntries(Err(e)) => Err(self.remote(e)),
            other => Err(Self::unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let request = Request::InstallSnapshot {
            to: self.target,
            request: rpc,
        };
        match self.call(request, &option).await? {
            Response::InstallSnapshot(Ok(r)) => {
                self.believe(&r.vote)?;
                Ok(r)
            }
            Response::InstallSnapshot(Err(e)) => Err(self.remote(e)),
            other => Err(Self::unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let request = Request::Vote {
            to: self.target,
            request: rpc,
        };
        match self.call(request, &option).await? {
            Response::Vote(Ok(r)) => {
                self.believe(&r.vote)?;
                Ok(r)
            }
            Response::Vote(Err(e)) => Err(self.remote(e)),
            other => Err(Self::unexpected(&other)),
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
