//! The catalog's domain types: nodes, services, checks and their health.
//!
//! These types go into the Raft log, so they use Rust field names and are never renamed
//! for the HTTP API; `api::http::json` converts them into Consul's PascalCase shapes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A datacenter name: lower-case ASCII letters, digits, `-` and `_`, as Consul requires.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Datacenter(String);

/// Why a datacenter name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatacenterError {
    /// The name is empty; give a name such as `dc1`.
    #[error("datacenter name must not be empty")]
    Empty,
    /// The name has characters Consul does not allow; the text is Consul's own.
    #[error("datacenter can only contain lowercase alphanumeric, - or _ characters.")]
    Invalid,
}

impl Datacenter {
    /// Checks and wraps a datacenter name. Upper-case letters are refused rather than
    /// folded, because a silently changed name is a routing surprise later.
    pub fn new(name: &str) -> Result<Datacenter, DatacenterError> {
        if name.is_empty() {
            return Err(DatacenterError::Empty);
        }
        let ok = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Datacenter(name.to_owned()))
        } else {
            Err(DatacenterError::Invalid)
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Datacenter {
    type Err = DatacenterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Datacenter::new(s)
    }
}

impl TryFrom<String> for Datacenter {
    type Error = DatacenterError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Datacenter::new(&s)
    }
}

impl From<Datacenter> for String {
    fn from(dc: Datacenter) -> String {
        dc.0
    }
}

impl fmt::Display for Datacenter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Health of a check, and of anything its checks cover.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum Health {
    /// The check succeeds.
    Passing,
    /// The check reports a problem that does not remove the instance from DNS.
    Warning,
    /// The check fails; the instance is left out of DNS and `?passing`. New checks start
    /// here, as Consul's do.
    #[default]
    Critical,
}

impl Health {
    /// Consul's lower-case name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }

    /// Parses Consul's status names (`passing`, `warning`, `critical`).
    pub fn parse(s: &str) -> Option<Health> {
        match s {
            "passing" => Some(Health::Passing),
            "warning" => Some(Health::Warning),
            "critical" => Some(Health::Critical),
            _ => None,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Node {
    /// The node's UUID (may be empty for nodes registered through the catalog API).
    pub id: String,
    /// The node name, unique in the datacenter (compared case-insensitively).
    pub name: String,
    /// The address other nodes and DNS answers use.
    pub address: String,
    /// The datacenter the node belongs to.
    pub datacenter: String,
    /// Extra addresses by purpose (`lan`, `wan`, …).
    pub tagged_addresses: BTreeMap<String, String>,
    /// User and agent metadata.
    pub meta: BTreeMap<String, String>,
    /// Raft index at which the node was created.
    pub create_index: u64,
    /// Raft index at which the node last changed.
    pub modify_index: u64,
}

/// An address and port a service can be reached at for a given purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceAddress {
    /// IP address or host name.
    pub address: String,
    /// Port number.
    pub port: u16,
}

/// SRV weights of an instance by health, as Consul's `Weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    /// Weight while all checks pass.
    pub passing: u32,
    /// Weight while a check warns.
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// A service instance registered on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Service {
    /// Instance ID, unique on its node (defaults to the name).
    pub id: String,
    /// Service name, shared by all instances.
    pub name: String,
    /// Tags, matched case-insensitively by queries.
    pub tags: Vec<String>,
    /// Address of the instance; empty means the node's address.
    pub address: String,
    /// Addresses by purpose (`lan`, `wan`, …).
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    /// User metadata.
    pub meta: BTreeMap<String, String>,
    /// Port of the instance.
    pub port: u16,
    /// SRV weights.
    pub weights: Weights,
    /// Whether catalog updates to the tags win over the agent's definition.
    pub enable_tag_override: bool,
    /// Raft index at which the instance was created.
    pub create_index: u64,
    /// Raft index at which the instance last changed.
    pub modify_index: u64,
}

/// A health check on a node, possibly bound to one service instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Check {
    /// Name of the node the check runs on.
    pub node: String,
    /// Check ID, unique on its node.
    pub check_id: String,
    /// Human-readable name.
    pub name: String,
    /// Current status.
    pub status: Health,
    /// Free-text notes from the definition.
    pub notes: String,
    /// Output of the last run.
    pub output: String,
    /// ID of the service instance this check covers; empty for a node-level check.
    pub service_id: String,
    /// Name of that service (filled in by the catalog).
    pub service_name: String,
    /// Tags of that service (filled in by the catalog).
    pub service_tags: Vec<String>,
    /// Kind of check: `ttl`, `http`, `tcp`, `script`, `serf` or empty.
    pub check_type: String,
    /// Run interval for interval checks, in Consul's duration syntax (`10s`); empty otherwise.
    pub interval: String,
    /// Timeout for interval checks, in Consul's duration syntax; empty otherwise.
    pub timeout: String,
    /// Raft index at which the check was created.
    pub create_index: u64,
    /// Raft index at which the check last changed.
    pub modify_index: u64,
}

/// Most metadata pairs on one node or service (Consul's limit).
pub const META_MAX_PAIRS: usize = 64;
/// Longest metadata key, in bytes (Consul's limit).
pub const META_KEY_MAX: usize = 128;
/// Longest metadata value, in bytes (Consul's limit).
pub const META_VALUE_MAX: usize = 512;
/// The prefix Consul reserves for the agent's own metadata keys.
pub const META_RESERVED_PREFIX: &str = "consul-";

/// Checks user metadata against Consul's rules: at most 64 pairs, keys of 1 to 128
/// letters, digits, `_` or `-` that do not start with `consul-`, values up to 512 bytes.
/// The message names the offending key.
pub fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > META_MAX_PAIRS {
        return Err(format!(
            "too many metadata pairs: {} (at most {META_MAX_PAIRS})",
            meta.len()
        ));
    }
    for (key, value) in meta {
        let valid_key = !key.is_empty()
            && key.len() <= META_KEY_MAX
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_key {
            return Err(format!(
                "metadata key {key:?} must be 1 to {META_KEY_MAX} letters, digits, '_' or '-'"
            ));
        }
        if key.starts_with(META_RESERVED_PREFIX) {
            return Err(format!(
                "metadata key {key:?} uses the reserved prefix {META_RESERVED_PREFIX:?}"
            ));
        }
        if value.len() > META_VALUE_MAX {
            return Err(format!(
                "metadata value of {key:?} is longer than {META_VALUE_MAX} bytes"
            ));
        }
    }
    Ok(())
}

/// The name of the check the leader keeps for every member's gossip health.
pub const SERF_HEALTH_CHECK: &str = "serfHealth";

/// A node with one of its service instances (`/v1/catalog/service/:name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNode {
    /// The node.
    pub node: Arc<Node>,
    /// The instance.
    pub service: Arc<Service>,
}

/// A service instance with its node and every check that covers it (node checks and its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHealth {
    /// The node.
    pub node: Arc<Node>,
    /// The instance.
    pub service: Arc<Service>,
    /// Node-level checks followed by the instance's own checks.
    pub checks: Vec<Arc<Check>>,
}

impl ServiceHealth {
    /// The worst status among the checks; passing when there are none.
    pub fn aggregate(&self) -> Health {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Health::Passing)
    }
}

/// A node with all of its service instances (`/v1/catalog/node/:node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeServices {
    /// The node.
    pub node: Arc<Node>,
    /// Its instances, by ID.
    pub services: Vec<Arc<Service>>,
}

/// A node with its instances and all of its checks (`/v1/internal/ui/nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node.
    pub node: Arc<Node>,
    /// Its instances, by ID.
    pub services: Vec<Arc<Service>>,
    /// Its checks, node-level and of its instances, by ID.
    pub checks: Vec<Arc<Check>>,
}

/// A stored prepared query (Consul's `PreparedQuery`, without sessions or templates).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedQuery {
    /// The ID (a UUID), chosen when it is created.
    pub id: String,
    /// An optional name it can also be executed by; unique, case-insensitive.
    pub name: String,
    /// What it selects.
    pub service: ServiceQuery,
    /// The secret of the token whose rights filter its results when it is executed;
    /// empty: the caller's. Shown only to callers that may write ACLs.
    #[serde(default)]
    pub token: String,
    /// The TTL of its DNS answers, as given (`"10s"`); empty means the agent's
    /// `service_ttl`.
    pub dns_ttl: String,
    /// Index of the creation.
    pub create_index: u64,
    /// Index of the last change.
    pub modify_index: u64,
}

/// Everything but the token's secret, which stays out of logs.
impl std::fmt::Debug for PreparedQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedQuery")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("service", &self.service)
            .field("has_token", &!self.token.is_empty())
            .field("dns_ttl", &self.dns_ttl)
            .field("create_index", &self.create_index)
            .field("modify_index", &self.modify_index)
            .finish()
    }
}

/// Which stored prepared query an execution runs: only the servers of its datacenter
/// hold it, with its token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StoredQuery {
    /// The datacenter that stores it.
    pub datacenter: String,
    /// Its ID there.
    pub id: String,
}

/// The service selection of a prepared query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceQuery {
    /// Service name.
    pub service: String,
    /// Where to look when the queried datacenter has no healthy instance.
    pub failover: Failover,
    /// Keep only instances whose checks all pass (else passing and warning).
    pub only_passing: bool,
    /// Checks that do not count for health.
    pub ignore_check_ids: Vec<String>,
    /// Sort by estimated round-trip time from this node (`_agent`: the agent that
    /// runs the query); empty shuffles.
    pub near: String,
    /// Tags every instance must have; a `!tag` must be absent.
    pub tags: Vec<String>,
    /// Node metadata every instance's node must have.
    pub node_meta: BTreeMap<String, String>,
    /// Service metadata every instance must have.
    pub service_meta: BTreeMap<String, String>,
}

/// A failover policy: other datacenters asked, in order, until one has a healthy
/// instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Failover {
    /// The nearest this many other datacenters (by estimated round-trip time), first.
    pub nearest_n: usize,
    /// Then these, in this order (each datacenter is asked once).
    pub datacenters: Vec<String>,
}

impl Failover {
    /// Whether it asks any other datacenter.
    pub fn is_empty(&self) -> bool {
        self.nearest_n == 0 && self.datacenters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datacenter_names_follow_consul_rules() {
        assert!(Datacenter::new("dc1").is_ok());
        assert!(Datacenter::new("us-east_1").is_ok());
        assert_eq!(Datacenter::new("DC1"), Err(DatacenterError::Invalid));
        assert_eq!(Datacenter::new("dc.1"), Err(DatacenterError::Invalid));
        assert_eq!(Datacenter::new(""), Err(DatacenterError::Empty));
    }

    #[test]
    fn metadata_follows_consul_limits() {
        let ok: BTreeMap<String, String> = [("rack".to_string(), "r1".to_string())].into();
        assert!(validate_meta(&ok).is_ok());
        for (k, v) in [
            ("", "x"),
            ("has space", "x"),
            ("consul-version", "x"),
            ("k", &"v".repeat(513)),
            (&"k".repeat(129), "x"),
        ] {
            let m: BTreeMap<String, String> = [(k.to_string(), v.to_string())].into();
            assert!(validate_meta(&m).is_err(), "{k:?}");
        }
        let many: BTreeMap<String, String> =
            (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_meta(&many).is_err());
    }

    #[test]
    fn aggregate_health_is_the_worst_check() {
        let mut entry = ServiceHealth {
            node: Node::default().into(),
            service: Service::default().into(),
            checks: vec![],
        };
        assert_eq!(entry.aggregate(), Health::Passing);
        entry.checks.push(
            Check {
                status: Health::Warning,
                ..Check::default()
            }
            .into(),
        );
        entry.checks.push(
            Check {
                status: Health::Passing,
                ..Check::default()
            }
            .into(),
        );
        assert_eq!(entry.aggregate(), Health::Warning);
    }
}
