//! # proconsul-api: the front doors
//!
//! Consul's HTTP API ([`http`]) and DNS interface ([`dns`]). Both parse a request into a
//! catalog query or write for a datacenter, hand it to the [`gateway::Gateway`], and
//! render the answer in Consul's shapes; errors become Consul's status codes, texts and
//! DNS response codes.
//!
//! ```text
//!   curl ─▶ http (axum) ──┐                        ┌─▶ answer in Consul's JSON + headers
//!                         ├─▶ Gateway::read/write ─┤
//!   dig ──▶ dns (UDP/TCP) ┘                        └─▶ records, TTLs, rcode, TC bit
//! ```
//!
//! With `ui_config.enabled`, the HTTP port also serves the web UI (`http::ui`): a page,
//! a style sheet and a script built into the binary, which read this same API.
//!
//! Service and check definitions (config files and `/v1/agent/service/register`) are
//! decoded by [`definition`], shared with the agent's config loader.
//!
//! The agent's log reaches `/v1/agent/monitor` through a [`monitor::Monitor`]: the
//! binary's log layer publishes each line to it, and each reader has a bounded queue; a
//! reader that falls behind is cut off rather than slowing the agent.
//!
//! Invariants: this crate never calls Raft or another datacenter directly; every
//! listener bounds its connections, and every request has a deadline.

#![warn(missing_docs)]

pub mod definition;
pub mod dns;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod monitor;
pub mod telemetry;

use std::sync::Arc;

use gateway::Gateway;
use lan::Lan;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What `/v1/agent/self` reports about the agent.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    /// Node name.
    pub node_name: String,
    /// Node UUID.
    pub node_id: String,
    /// Datacenter.
    pub datacenter: String,
    /// Whether the agent is a server.
    pub server: bool,
    /// Whether it bootstraps alone.
    pub bootstrap: bool,
    /// Version (`0.1.0`).
    pub version: String,
    /// Source revision, when known.
    pub revision: String,
    /// Script checks may be registered through the API (`enable_script_checks`).
    pub enable_script_checks: bool,
    /// The largest KV value, in bytes (`limits.kv_max_value_size`).
    pub kv_max_value_size: usize,
    /// The data directory (`None` in `-dev` mode), where an operator leaves
    /// `acl-bootstrap-reset`.
    pub data_dir: Option<std::path::PathBuf>,
    /// `telemetry.prometheus_retention_time`: Prometheus's format is served only when
    /// it is positive (the recorder is per process; this setting is per agent).
    pub prometheus_retention: std::time::Duration,
    /// The resolved runtime configuration (`DebugConfig`).
    pub debug_config: serde_json::Value,
}

/// A reload request: the agent answers on the channel when done.
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// How the API asks the agent to act on itself.
#[derive(Debug, Clone)]
pub struct Control {
    /// Cancelled to make the agent leave and stop (`/v1/agent/leave`).
    pub leave: CancellationToken,
    /// Reload requests (`/v1/agent/reload`).
    pub reload: mpsc::Sender<ReloadRequest>,
}

/// Everything the HTTP API needs from the agent. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// Catalog reads and writes, in any datacenter.
    pub gateway: Gateway,
    /// This agent's members, services and checks (never its Raft).
    pub lan: Lan,
    /// Static facts about the agent.
    pub agent: Arc<AgentInfo>,
    /// Leave and reload.
    pub control: Control,
    /// Cancelled when the agent stops; blocking queries return at once.
    pub shutdown: CancellationToken,
    /// Where KV replication from another datacenter stands, when configured.
    pub kv_replication: Option<Arc<gateway::KvReplicationStatus>>,
    /// The web UI's settings.
    pub ui: http::UiConfig,
    /// Where ACL replication from the primary datacenter stands, on a server of a
    /// secondary.
    pub acl_replication: Option<Arc<gateway::AclReplicationStatus>>,
    /// The process's metrics (`/v1/agent/metrics`).
    pub telemetry: Arc<telemetry::Telemetry>,
    /// The agent's log, for `/v1/agent/monitor`.
    pub monitor: monitor::Monitor,
}
