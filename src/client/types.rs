//! Consul's JSON shapes, as the typed client reads and writes them.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Go encodes an empty map or list as `null`; read that as empty.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A node of the catalog (`/v1/catalog/nodes`, the `Node` of a health entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    /// The node's ID (a UUID; empty for nodes registered without one).
    #[serde(rename = "ID")]
    pub id: String,
    /// The node's name.
    pub node: String,
    /// Its address.
    pub address: String,
    /// Its datacenter.
    pub datacenter: String,
    /// Other addresses by name (`lan`, `wan`, …).
    #[serde(deserialize_with = "null_as_default")]
    pub tagged_addresses: BTreeMap<String, String>,
    /// Node metadata.
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    /// Raft index of its creation.
    pub create_index: u64,
    /// Raft index of its last change.
    pub modify_index: u64,
}

/// A service instance on a node (the `Service` of a health entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Service {
    /// The instance's ID, unique on its node.
    #[serde(rename = "ID")]
    pub id: String,
    /// The service name.
    pub service: String,
    /// Tags.
    #[serde(deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    /// The instance's address; empty means the node's.
    pub address: String,
    /// Service metadata.
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    /// Port.
    pub port: u16,
    /// Raft index of its creation.
    pub create_index: u64,
    /// Raft index of its last change.
    pub modify_index: u64,
}

/// A health check (`Checks` of a health entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthCheck {
    /// The node it runs on.
    pub node: String,
    /// Its ID, unique on its node.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Its name.
    pub name: String,
    /// `passing`, `warning`, `critical` or `maintenance`.
    pub status: String,
    /// Human-readable notes.
    pub notes: String,
    /// The last output of the check.
    pub output: String,
    /// The service instance it covers; empty for a node check.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// That service's name.
    pub service_name: String,
}

/// An element of `/v1/health/service/:name`: an instance with its node and checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceEntry {
    /// The node.
    pub node: Node,
    /// The instance.
    pub service: Service,
    /// The node's checks and the instance's.
    #[serde(deserialize_with = "null_as_default")]
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// Where to reach the instance: its own address, or else its node's.
    pub fn address(&self) -> &str {
        if self.service.address.is_empty() {
            &self.node.address
        } else {
            &self.service.address
        }
    }
}

/// An element of `/v1/catalog/service/:name`: node and instance fields side by side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CatalogService {
    /// The node's ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// The node's name.
    pub node: String,
    /// The node's address.
    pub address: String,
    /// The datacenter.
    pub datacenter: String,
    /// The node's other addresses.
    #[serde(deserialize_with = "null_as_default")]
    pub tagged_addresses: BTreeMap<String, String>,
    /// Node metadata.
    #[serde(deserialize_with = "null_as_default")]
    pub node_meta: BTreeMap<String, String>,
    /// The instance's ID.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// The service name.
    pub service_name: String,
    /// Tags.
    #[serde(deserialize_with = "null_as_default")]
    pub service_tags: Vec<String>,
    /// The instance's address; empty means the node's.
    pub service_address: String,
    /// Port.
    pub service_port: u16,
    /// Service metadata.
    #[serde(deserialize_with = "null_as_default")]
    pub service_meta: BTreeMap<String, String>,
    /// Raft index of the instance's creation.
    pub create_index: u64,
    /// Raft index of the instance's last change.
    pub modify_index: u64,
}

/// The DNS settings of a prepared query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct QueryDns {
    /// The TTL of its DNS answers (`10s`); empty for the agent's default.
    #[serde(rename = "TTL")]
    pub ttl: String,
}

/// What `/v1/query/:id/execute` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct QueryExecution {
    /// The service the query asks for.
    pub service: String,
    /// The healthy instances found.
    #[serde(deserialize_with = "null_as_default")]
    pub nodes: Vec<ServiceEntry>,
    /// The query's DNS settings.
    #[serde(rename = "DNS")]
    pub dns: QueryDns,
    /// The datacenter that answered (another one when the query failed over).
    pub datacenter: String,
    /// How many other datacenters were asked.
    pub failovers: u32,
}

/// A write to the catalog (`PUT /v1/catalog/register`): a node, and optionally a service
/// instance on it and a check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogRegistration {
    /// The node's name.
    pub node: String,
    /// The node's address.
    pub address: String,
    /// The datacenter; the `dc` argument of
    /// [`AgentClient::register`](super::AgentClient::register) wins over it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    /// A service instance on the node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRegistration>,
    /// A check on the node or the instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckRegistration>,
}

/// The service instance of a [`CatalogRegistration`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    /// The instance's ID; empty means the service name.
    #[serde(rename = "ID", skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The service name.
    pub service: String,
    /// Tags.
    pub tags: Vec<String>,
    /// The instance's address; empty means the node's.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Port.
    pub port: u16,
    /// Service metadata.
    pub meta: BTreeMap<String, String>,
}

/// The check of a [`CatalogRegistration`]. The catalog stores its status; nothing runs
/// it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckRegistration {
    /// Its ID; empty means its name.
    #[serde(rename = "CheckID", skip_serializing_if = "String::is_empty")]
    pub check_id: String,
    /// Its name.
    pub name: String,
    /// `passing`, `warning` or `critical` (empty means `critical`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// The instance it covers; empty for a node check.
    #[serde(rename = "ServiceID", skip_serializing_if = "String::is_empty")]
    pub service_id: String,
}

/// `PUT /v1/catalog/deregister`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Deregistration<'a> {
    pub(crate) node: &'a str,
    #[serde(rename = "ServiceID", skip_serializing_if = "Option::is_none")]
    pub(crate) service_id: Option<&'a str>,
}

/// A key of the key/value store with its value (`GET /v1/kv/:key`, and each element of
/// `?recurse`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct KvPair {
    /// The key, without a leading `/`.
    pub key: String,
    /// The value's bytes (sent base64-encoded; `null` for an empty value).
    #[serde(deserialize_with = "base64_value")]
    pub value: Vec<u8>,
    /// An opaque number the writer chose (`?flags=`); the agent never reads it.
    pub flags: u64,
    /// The session holding the key's lock, if any.
    #[serde(deserialize_with = "empty_as_none")]
    pub session: Option<String>,
    /// How many times the key's lock was acquired.
    pub lock_index: u64,
    /// Raft index of the key's creation.
    pub create_index: u64,
    /// Raft index of the key's last change: the index a check-and-set write names.
    pub modify_index: u64,
}

/// A session to create (`PUT /v1/session/create`). Empty fields are left out, so the
/// agent applies its defaults: the agent's node, its `serfHealth` check, a 15 s lock
/// delay, behavior `release`, no TTL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionRequest {
    /// A name for people to read.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The session ends unless renewed within this Go duration (`15s`); `10s` to `24h`.
    #[serde(rename = "TTL", skip_serializing_if = "String::is_empty")]
    pub ttl: String,
    /// What happens to the keys it holds when it ends: `release` or `delete`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub behavior: String,
    /// The node it belongs to; empty: the agent's own. A session made in another
    /// datacenter needs a node of that datacenter.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// The node's checks it depends on: `None` for the agent's default (`serfHealth`),
    /// an empty list for none (only its TTL or its destruction ends it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_checks: Option<Vec<String>>,
}

/// A session as the agent shows it (`/v1/session/info/:id`, `/v1/session/renew/:id`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SessionEntry {
    /// Its ID (a UUID).
    #[serde(rename = "ID")]
    pub id: String,
    /// Its name.
    pub name: String,
    /// The node it belongs to.
    pub node: String,
    /// How long its locks stay unavailable after it is invalidated, in nanoseconds.
    pub lock_delay: u64,
    /// `release` or `delete`.
    pub behavior: String,
    /// Its TTL as a Go duration; empty without one.
    #[serde(rename = "TTL")]
    pub ttl: String,
    /// The node checks it depends on.
    #[serde(deserialize_with = "null_as_default")]
    pub node_checks: Vec<String>,
    /// Raft index of its creation.
    pub create_index: u64,
    /// Raft index of its last change.
    pub modify_index: u64,
}

/// A base64 value as Consul sends it; `null` is an empty value.
fn base64_value<'de, D>(d: D) -> Result<Vec<u8>, D::Error>
where
    D: Deserializer<'de>,
{
    use base64::Engine;
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(Vec::new());
    };
    base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|e| serde::de::Error::custom(format!("a value that is not base64: {e}")))
}

/// Go's empty string (or `null`) as `None`.
fn empty_as_none<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}
