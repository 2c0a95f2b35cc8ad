//! What a datacenter's servers report about their Raft (`/v1/status/*`,
//! `/v1/operator/raft/configuration`): plain data, so that any layer can carry it.

use serde::{Deserialize, Serialize};

/// What Raft's membership records about a server: enough to reach and name it.
///
/// The address is where the server was when it was added; the network resolves the
/// current one through gossip by name first, so a server that comes back on another
/// address (or port) is still reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerNode {
    /// The server's node name.
    pub name: String,
    /// `ip:port` of its server RPC port.
    pub rpc_addr: String,
    /// The server's node UUID (Consul's Raft server ID).
    #[serde(default)]
    pub node_id: String,
}

/// One server of the Raft configuration (`/v1/operator/raft/configuration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftServer {
    /// Raft's numeric ID.
    pub raft_id: u64,
    /// The server as recorded.
    pub node: ServerNode,
    /// Whether it votes (else it is a learner catching up).
    pub voter: bool,
    /// Whether it is the leader.
    pub leader: bool,
}

/// A snapshot of this server's view of Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// Server RPC address of the leader, if one is known.
    pub leader: Option<String>,
    /// Server RPC addresses of the voters.
    pub peers: Vec<String>,
    /// This server's role: `Leader`, `Follower`, `Candidate` or `Learner`.
    pub state: String,
    /// Current term.
    pub term: u64,
    /// Index of the last entry in the log.
    pub last_log_index: u64,
    /// Index of the last applied entry.
    pub applied_index: u64,
    /// Every server of the configuration.
    #[serde(default)]
    pub servers: Vec<RaftServer>,
    /// Index of the log entry that holds the configuration.
    #[serde(default)]
    pub configuration_index: u64,
}
