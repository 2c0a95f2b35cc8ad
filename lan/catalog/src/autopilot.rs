//! Autopilot's configuration (Consul's `/v1/operator/autopilot/configuration`): how the
//! leader looks after the server set. It is replicated like the rest of the catalog, so
//! every server (and a new leader) applies the same settings.

use serde::{Deserialize, Serialize};

/// Autopilot's settings, with the Raft indexes of their creation and last change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutopilotConfig {
    /// Remove servers gossip holds failed (after a grace period, never below quorum).
    pub cleanup_dead_servers: bool,
    /// A server whose last contact with the leader is older is unhealthy (ms).
    pub last_contact_threshold_ms: u64,
    /// A server this many entries behind the leader's log is unhealthy.
    pub max_trailing_logs: u64,
    /// Servers never removed below this many (0: no floor beyond quorum).
    pub min_quorum: u32,
    /// How long a new server must stay healthy before it becomes a voter (ms).
    pub server_stabilization_time_ms: u64,
    /// Index of the first write of the settings (0: never written, the defaults).
    pub create_index: u64,
    /// Index of their last change.
    pub modify_index: u64,
}

impl Default for AutopilotConfig {
    /// Consul's defaults.
    fn default() -> AutopilotConfig {
        AutopilotConfig {
            cleanup_dead_servers: true,
            last_contact_threshold_ms: 200,
            max_trailing_logs: 250,
            min_quorum: 0,
            server_stabilization_time_ms: 10_000,
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// The leader's view of its servers' health (`/v1/operator/autopilot/health`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutopilotHealth {
    /// Every server healthy.
    pub healthy: bool,
    /// Voters that may fail with the others keeping a quorum.
    pub failure_tolerance: u32,
    /// Each server of the Raft configuration.
    pub servers: Vec<ServerHealth>,
}

/// One server, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHealth {
    /// Its node ID.
    pub id: String,
    /// Its node name.
    pub name: String,
    /// Its server RPC address.
    pub address: String,
    /// Gossip's word for it: `alive`, `leaving`, `left`, `failed`, or `none` when
    /// gossip does not know it.
    pub serf_status: String,
    /// Whether it leads.
    pub leader: bool,
    /// Time since it last acknowledged the leader, in milliseconds (0 for the leader;
    /// `None` when it never did under this leader).
    pub last_contact_ms: Option<u64>,
    /// The leader's term.
    pub last_term: u64,
    /// The last log index it is known to hold.
    pub last_index: u64,
    /// Alive, in contact within the threshold, and not trailing too far.
    pub healthy: bool,
    /// Whether it votes.
    pub voter: bool,
    /// Since when it has been as healthy (or not) as it is now, in nanoseconds since the
    /// Unix epoch.
    pub stable_since_ns: u64,
}
