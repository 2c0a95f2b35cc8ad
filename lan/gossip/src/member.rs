//! Members of the datacenter's LAN pool, as `/v1/agent/members` and `proconsul members`
//! show them.
//!
//! Until LAN gossip joins agents into a pool, the pool of an agent is the agent itself;
//! the leader turns the member list into catalog state (`serfHealth`, the `consul`
//! service) the same way whatever fills the list.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// A member's state, with Consul's numeric codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberStatus {
    /// Alive and reachable (1).
    Alive,
    /// Announced that it is leaving (2).
    Leaving,
    /// Left gracefully (3).
    Left,
    /// Stopped answering probes (4).
    Failed,
}

impl MemberStatus {
    /// Consul's numeric code (`Status` in `/v1/agent/members`).
    pub fn code(self) -> u8 {
        match self {
            MemberStatus::Alive => 1,
            MemberStatus::Leaving => 2,
            MemberStatus::Left => 3,
            MemberStatus::Failed => 4,
        }
    }

    /// Consul's name (`proconsul members`).
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Leaving => "leaving",
            MemberStatus::Left => "left",
            MemberStatus::Failed => "failed",
        }
    }
}

/// One member of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node name.
    pub name: String,
    /// Gossip address.
    pub addr: IpAddr,
    /// Gossip port.
    pub port: u16,
    /// Tags (`role`, `dc`, `port`, `id`, `build`, `vsn`, …), shared: a member list is
    /// published whole on every change, and copying a pointer here instead of every tag
    /// is what keeps that cheap in large pools.
    pub tags: Arc<BTreeMap<String, String>>,
    /// State.
    pub status: MemberStatus,
}

impl Member {
    /// Whether the member is a server (`role=consul`).
    pub fn is_server(&self) -> bool {
        self.tags.get("role").map(String::as_str) == Some("consul")
    }

    /// Whether the member belongs to datacenter `dc` (its `dc` tag).
    pub fn in_datacenter(&self, dc: &str) -> bool {
        self.tags.get("dc").map(String::as_str) == Some(dc)
    }

    /// A server's RPC address: its gossip address with the port of its `port` tag.
    pub fn rpc_addr(&self) -> Option<std::net::SocketAddr> {
        let port = self.tags.get("port")?.parse::<u16>().ok()?;
        Some(std::net::SocketAddr::new(self.addr, port))
    }
}
