//! How one server's Raft reaches the others.
//!
//! A datacenter in this version has a single server, so Raft never has a peer to call:
//! every call answers `Unreachable`, which openraft treats as "back off and retry". The
//! server-to-server transport on the server port replaces this when datacenters grow to
//! several servers.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::{NodeId, ServerNode, TypeConfig};

/// Why a peer cannot be called.
#[derive(Debug, thiserror::Error)]
#[error("no server-to-server transport to {addr}: this server runs alone")]
pub(crate) struct NoTransport {
    addr: String,
}

/// Hands out [`Peer`]s.
#[derive(Debug, Clone, Default)]
pub(crate) struct Network;

/// One peer as Raft sees it.
#[derive(Debug)]
pub(crate) struct Peer {
    addr: String,
}

impl Peer {
    fn unreachable(&self) -> Unreachable {
        Unreachable::new(&NoTransport {
            addr: self.addr.clone(),
        })
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, _target: NodeId, node: &ServerNode) -> Peer {
        Peer {
            addr: node.rpc_addr.clone(),
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, ServerNode, RaftError<NodeId, E>>>;

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }
}
