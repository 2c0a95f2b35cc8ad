//! The catalog state machine: what Raft applies, one command at a time.
//!
//! Every change carries the Raft log index it was applied at; that index becomes the
//! `CreateIndex`/`ModifyIndex` of what changed and the index of the table it lives in,
//! which blocking queries wait on. A write that changes nothing (the anti-entropy sync
//! re-sending what is already there) leaves every index alone, so it wakes no one.
//!
//! Node names, service IDs and check IDs are compared case-insensitively, as in Consul.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::acl::{AclSnapshot, AclTables, AclWrite};
use super::autopilot::AutopilotConfig;
use super::kv::{Kv, KvEntry, KvRefusal, KvWrite};
use super::names::ServiceNames;
use super::packed::{PackedSnapshot, RestorePart, StagedRestore};
use super::sessions::{Session, SessionWrite, Sessions};
use super::txn::{TxnOp, TxnOutcome};
use super::types::{Check, Health, Node, PreparedQuery, Service};
use super::wake::Changes;

/// A change to the catalog, as it is written to the Raft log.
// Commands are built once and moved into the log; boxing the large variant would only
// add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create or update a node, and optionally one service and some checks on it.
    Register(Registration),
    /// Remove a node (with everything on it), one service (with its checks) or one check.
    Deregister(Deregistration),
    /// Replace the whole catalog (`snapshot restore`); packed in the log and on the wire
    /// when large.
    Restore(PackedSnapshot),
    /// One part of a restore written in several entries; the last part replaces the
    /// whole catalog as [`Command::Restore`] does.
    RestorePart(RestorePart),
    /// Create (`create`) or replace a prepared query.
    SetQuery {
        /// The query; its index fields are ignored.
        query: Box<PreparedQuery>,
        /// Whether it must be new (else it must exist).
        create: bool,
    },
    /// Delete a prepared query.
    DeleteQuery {
        /// Its ID.
        id: String,
    },
    /// A change to the key/value store.
    Kv(KvWrite),
    /// A KV transaction: every operation or none.
    Txn(Vec<TxnOp>),
    /// A change to the session table.
    Session(SessionWrite),
    /// Keys copied from another datacenter by KV replication, in order: plain sets and
    /// deletes. Only the replicator writes these; other writes to a replicated prefix
    /// are refused by the leader.
    KvReplicate(Vec<KvWrite>),
    /// A write to the ACL tables.
    Acl(AclWrite),
    /// Autopilot's settings; with `cas`, only if their `modify_index` is that (0: only
    /// if never written).
    Autopilot {
        /// The settings; their index fields are ignored.
        config: AutopilotConfig,
        /// The check-and-set index, if any.
        cas: Option<u64>,
    },
}

/// What an applied command produced besides its index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Nothing more.
    Done,
    /// A transaction's results, or why it changed nothing.
    Txn(TxnOutcome),
    /// Whether a check-and-set write was made.
    Set(bool),
}

/// The body of a catalog registration (Consul's `RegisterRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The node; its index fields are ignored.
    pub node: Node,
    /// Keep the node as it is in the catalog and only add the service and checks.
    pub skip_node_update: bool,
    /// A service instance on the node.
    pub service: Option<Service>,
    /// Checks on the node; each check's `node` is set to the node's name.
    pub checks: Vec<Check>,
}

/// The body of a catalog deregistration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deregistration {
    /// The node.
    pub node: String,
    /// Remove only this service instance (and its checks).
    pub service_id: Option<String>,
    /// Remove only this check.
    pub check_id: Option<String>,
}

/// Why a command was refused; the catalog is unchanged.
///
/// These are deterministic: every server refuses the same command the same way, so the
/// caller should report them to the user rather than retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    /// A registration named no node.
    #[error("Must provide node")]
    MissingNode,
    /// A registration gave no address for a new node.
    #[error("Must provide address")]
    MissingAddress,
    /// A service without a name.
    #[error("Must provide service name")]
    MissingServiceName,
    /// A check refers to a service the node does not have.
    #[error(
        "Missing service registration for check {check_id:?}: no service {service_id:?} on node {node:?}"
    )]
    MissingService {
        /// The node.
        node: String,
        /// The check.
        check_id: String,
        /// The service it named.
        service_id: String,
    },
    /// A check without an ID.
    #[error("Must provide a check ID")]
    MissingCheckId,
    /// Deregistering a service or check of a node that is not registered.
    #[error("Unknown node {0:?}")]
    UnknownNode(String),
    /// A prepared query that cannot be stored, created, changed or deleted; the text says
    /// why (Consul's wording).
    #[error("{0}")]
    Query(String),
    /// A KV write that cannot be made; the text says why (Consul's wording).
    #[error("{0}")]
    Kv(String),
    /// A conditional KV write whose condition did not hold (the HTTP API answers `false`).
    #[error(transparent)]
    KvRefused(#[from] KvRefusal),
    /// A session that cannot be created; the text says why (Consul's wording).
    #[error("{0}")]
    Session(String),
    /// A renewal of a session that does not exist (Consul's text).
    #[error("Session id '{0}' not found")]
    UnknownSession(String),
    /// An ACL write that cannot be made; the text says why.
    #[error("{0}")]
    Acl(String),
    /// A second bootstrap without the reset index of the last one (Consul's text; the
    /// HTTP API answers 403 with "Permission denied: " before it).
    #[error("ACL bootstrap no longer allowed (reset index: {0})")]
    AclBootstrap(u64),
    /// A restore whose packed snapshot does not unpack (the same bytes on every server,
    /// so every server refuses it).
    #[error("{0}")]
    Snapshot(String),
}

/// Per-table indexes: the Raft index of the last change to each table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Indexes {
    /// Last change to any node.
    pub nodes: u64,
    /// Last change to any service instance.
    pub services: u64,
    /// Last change to any check.
    pub checks: u64,
    /// Last change to any prepared query.
    #[serde(default)]
    pub queries: u64,
    /// Last change to any key (a write or a deletion).
    #[serde(default)]
    pub kv: u64,
    /// Last change to any session.
    #[serde(default)]
    pub sessions: u64,
    /// Last change to any ACL token, policy or role.
    #[serde(default)]
    pub acl: u64,
}

impl Indexes {
    /// The newest of them all.
    pub fn max(&self) -> u64 {
        self.nodes
            .max(self.services)
            .max(self.checks)
            .max(self.queries)
            .max(self.kv)
            .max(self.sessions)
            .max(self.acl)
    }
}

type Key = (String, String);

/// The replicated catalog of one datacenter.
#[derive(Debug, Clone, Default)]
pub struct State {
    // Nodes, instances and checks are shared with the snapshots taken of them: a
    // snapshot copies pointers under the lock (not every string of 170,000 instances),
    // and a change made while a snapshot still holds the old value copies that one
    // value (`Arc::make_mut`).
    pub(super) nodes: BTreeMap<String, Arc<Node>>,
    pub(super) services: BTreeMap<Key, Arc<Service>>,
    pub(super) checks: BTreeMap<Key, Arc<Check>>,
    /// The checks not passing, by state then key, derived from `checks`:
    /// `/v1/health/state/warning` and `critical` read these rather than every check.
    /// Passing checks are not indexed (a healthy catalog's are nearly all of them, and
    /// an answer listing them is as long as the walk).
    pub(super) failing: BTreeSet<(Health, Key)>,
    /// `(address, node key)` of every node, derived from `nodes`, for reverse lookups.
    pub(super) node_addresses: BTreeSet<(String, String)>,
    /// `(address, service key)` of every instance with an address of its own, derived
    /// from `services`, for reverse lookups. (Those without one are not indexed: they
    /// are most instances, and no lookup is for an empty address.)
    pub(super) service_addresses: BTreeSet<(String, Key)>,
    /// `(meta key, value, node key)` of every pair of every node's meta, derived from
    /// `nodes`, for `?node-meta=` filters.
    pub(super) node_meta: BTreeSet<(String, String, String)>,
    /// Lower-case service name → instances, derived from `services`.
    pub(super) by_name: BTreeMap<String, BTreeSet<Key>>,
    /// Service names as registered with their tags, derived from `services`, for
    /// `/v1/catalog/services`.
    pub(super) names: ServiceNames,
    /// Lower-case service name → index of the last change to anything a health query of
    /// that service returns: its instances, their checks, their nodes and node checks.
    /// Blocking queries on one service wait on this, so changes elsewhere do not wake
    /// them. A name without instances has no entry: its index is then the services
    /// table's, which is at least the index of the removal of its last instance.
    pub(super) service_index: BTreeMap<String, u64>,
    /// Prepared queries by ID.
    pub(super) queries: BTreeMap<String, PreparedQuery>,
    /// The key/value store.
    pub(super) kv: Kv,
    /// Sessions and the locks they hold.
    pub(super) sessions: Sessions,
    /// ACL tokens, policies and roles.
    pub(super) acl: AclTables,
    /// Autopilot's settings, once written.
    pub(super) autopilot: Option<AutopilotConfig>,
    /// The parts received of a restore written in parts, until its last arrives.
    pub(super) restoring: Option<StagedRestore>,
    pub(super) indexes: Indexes,
    /// What applies changed since the writer last took it: whom to wake.
    pub(super) changed: Changes,
}

/// A catalog built ahead of the command that replaces the whole catalog with it.
pub(crate) struct Built {
    state: State,
    /// For the last part of a restore, the parts it was built on.
    staged: Option<StagedRestore>,
}

/// The serialised form of the catalog used for Raft snapshots (and `/v1/snapshot`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    nodes: Vec<Arc<Node>>,
    /// Each instance with its node's key (shared by the instances of one node).
    services: Vec<(Arc<str>, Arc<Service>)>,
    checks: Vec<Arc<Check>>,
    indexes: Indexes,
    #[serde(default)]
    service_index: BTreeMap<String, u64>,
    #[serde(default)]
    queries: Vec<PreparedQuery>,
    #[serde(default)]
    kv: Vec<Arc<KvEntry>>,
    /// Deleted keys and the index each was deleted at.
    #[serde(default)]
    tombstones: Vec<(String, u64)>,
    /// The newest deletion index whose tombstones are gone. Snapshots written before it
    /// was kept lack it: the KV index is taken then, which only makes a reader of
    /// changes compare its whole prefix once.
    #[serde(default)]
    kv_reaped: Option<u64>,
    #[serde(default)]
    sessions: Vec<Session>,
    #[serde(default)]
    acl: AclSnapshot,
    #[serde(default)]
    autopilot: Option<AutopilotConfig>,
    /// A restore whose parts are being written (a snapshot taken between them must hold
    /// them); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) restoring: Option<StagedRestore>,
}

impl Snapshot {
    /// Checks that the snapshot holds a catalog this one could have built: names and IDs
    /// present and unique (case-insensitively, as the catalog compares them), every
    /// service and check on a node of the snapshot, and every check of a service on that
    /// node naming one there. A snapshot file from elsewhere (`/v1/snapshot`) is checked
    /// before it replaces the catalog.
    pub fn validate(&self) -> Result<(), String> {
        let mut nodes: BTreeSet<String> = BTreeSet::new();
        for node in &self.nodes {
            if node.name.is_empty() {
                return Err("a node has no name".into());
            }
            if !nodes.insert(fold(&node.name)) {
                return Err(format!("node {:?} appears twice", node.name));
            }
        }
        let mut services = BTreeSet::new();
        for (node_key, service) in &self.services {
            if !nodes.contains(&**node_key) {
                return Err(format!(
                    "service {:?} is on node {node_key:?}, which the snapshot does not hold (node keys are lower-case node names)",
                    service.id
                ));
            }
            if service.id.is_empty() {
                return Err(format!("a service on node {node_key:?} has no ID"));
            }
            if !services.insert((node_key.to_string(), fold(&service.id))) {
                return Err(format!(
                    "service {:?} appears twice on node {node_key:?}",
                    service.id
                ));
            }
        }
        let mut checks = BTreeSet::new();
        for check in &self.checks {
            let node_key = fold(&check.node);
            if !nodes.contains(&node_key) {
                return Err(format!(
                    "check {:?} is on node {:?}, which the snapshot does not hold",
                    check.check_id, check.node
                ));
            }
            if check.check_id.is_empty() {
                return Err(format!("a check on node {:?} has no ID", check.node));
            }
            if !checks.insert((node_key.clone(), fold(&check.check_id))) {
                return Err(format!(
                    "check {:?} appears twice on node {:?}",
                    check.check_id, check.node
                ));
            }
            if !check.service_id.is_empty()
                && !services.contains(&(node_key, fold(&check.service_id)))
            {
                return Err(format!(
                    "check {:?} is for service {:?}, which node {:?} does not have",
                    check.check_id, check.service_id, check.node
                ));
            }
        }
        let mut queries = BTreeSet::new();
        for query in &self.queries {
            if query.id.is_empty() {
                return Err("a prepared query has no ID".into());
            }
            if !queries.insert(query.id.as_str()) {
                return Err(format!("prepared query {:?} appears twice", query.id));
            }
        }
        let mut keys = BTreeSet::new();
        for entry in &self.kv {
            if entry.key.is_empty() {
                return Err("a key/value entry has an empty key".into());
            }
            if !keys.insert(entry.key.as_str()) {
                return Err(format!("key {:?} appears twice", entry.key));
            }
        }
        Ok(())
    }
}

pub(super) fn fold(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// The entries of one node in a `(node, id)`-keyed map.
/// The entries of the node-meta index for `node` under `key`.
fn meta_entries(key: &str, node: &Node) -> Vec<(String, String, String)> {
    node.meta
        .iter()
        .map(|(k, v)| (k.clone(), v.clone(), key.to_owned()))
        .collect()
}

pub(super) fn on_node<'a, V>(
    map: &'a BTreeMap<Key, V>,
    node_key: &'a str,
) -> impl Iterator<Item = (&'a Key, &'a V)> + 'a {
    map.range((node_key.to_owned(), String::new())..)
        .take_while(move |(k, _)| k.0 == node_key)
}

impl State {
    /// An empty catalog.
    pub fn new() -> State {
        State::default()
    }

    /// The table indexes.
    pub fn indexes(&self) -> Indexes {
        self.indexes
    }

    /// How many nodes, service instances and keys the catalog holds.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.nodes.len(), self.services.len(), self.kv.entries.len())
    }

    /// The index of the last change to what a query about service `name` returns.
    pub fn service_index(&self, name: &str) -> u64 {
        self.service_index
            .get(&fold(name))
            .copied()
            .unwrap_or(self.indexes.services)
    }

    /// Records a change at `index` to service `name_key` (lower case).
    fn touch_service(&mut self, name_key: &str, index: u64) {
        self.changed.service(name_key);
        if self.by_name.contains_key(name_key) {
            self.service_index.insert(name_key.to_owned(), index);
        } else {
            self.service_index.remove(name_key);
        }
    }

    /// Records a change at `index` to every service on node `node_key`.
    fn touch_services_on(&mut self, node_key: &str, index: u64) {
        let names: BTreeSet<String> = on_node(&self.services, node_key)
            .map(|(_, s)| fold(&s.name))
            .collect();
        for name in names {
            self.touch_service(&name, index);
        }
    }

    /// Records a change at `index` to what check `check` (on `node_key`) covers.
    fn touch_check(&mut self, node_key: &str, check: &Check, index: u64) {
        if check.service_id.is_empty() {
            self.touch_services_on(node_key, index);
        } else if let Some(s) = self
            .services
            .get(&(node_key.to_owned(), fold(&check.service_id)))
        {
            let name = fold(&s.name);
            self.touch_service(&name, index);
        }
    }

    /// Applies one command at Raft index `index`.
    pub fn apply(&mut self, index: u64, command: &Command) -> Result<Applied, ApplyError> {
        match command {
            Command::Register(r) => {
                self.register(index, r)?;
                self.check_sessions_of(&fold(&r.node.name), index);
            }
            Command::Deregister(d) => {
                self.deregister(index, d)?;
                self.check_sessions_of(&fold(&d.node), index);
            }
            Command::Restore(s) => self.restore(index, s.snapshot().map_err(ApplyError::Snapshot)?),
            Command::RestorePart(part) => {
                let last =
                    StagedRestore::take(&mut self.restoring, part).map_err(ApplyError::Snapshot)?;
                if let Some(packed) = last {
                    self.restore(index, packed.snapshot().map_err(ApplyError::Snapshot)?);
                }
            }
            Command::SetQuery { query, create } => self.set_query(index, query, *create)?,
            Command::DeleteQuery { id } => self.delete_query(index, id)?,
            Command::Kv(write) => self.apply_kv(index, write)?,
            Command::Txn(ops) => return Ok(Applied::Txn(self.apply_txn(index, ops)?)),
            Command::Session(write) => self.apply_session(index, write)?,
            Command::Acl(write) => {
                self.apply_acl(index, write)?;
                self.indexes.acl = self.acl.index();
            }
            Command::Autopilot { config, cas } => {
                let current = self.autopilot.as_ref().map_or(0, |c| c.modify_index);
                if cas.is_some_and(|cas| cas != current) {
                    return Ok(Applied::Set(false));
                }
                self.autopilot = Some(AutopilotConfig {
                    create_index: self.autopilot.as_ref().map_or(index, |c| c.create_index),
                    modify_index: index,
                    ..config.clone()
                });
                return Ok(Applied::Set(true));
            }
            Command::KvReplicate(writes) => {
                // Checked whole first, so that a refusal leaves nothing behind.
                let plain = writes.iter().all(|w| match w {
                    KvWrite::Set { key, cas: None, .. } | KvWrite::Delete { key, cas: None } => {
                        !key.is_empty()
                    }
                    _ => false,
                });
                if !plain {
                    return Err(ApplyError::Kv(
                        "replication writes only sets and deletes of named keys".into(),
                    ));
                }
                for write in writes {
                    self.apply_kv(index, write)?;
                }
            }
        }
        Ok(Applied::Done)
    }

    /// Replaces everything with `snapshot`, as changed at `index`: every table and
    /// service moves to `index`, so blocking queries on anything wake.
    fn restore(&mut self, index: u64, snapshot: &Snapshot) {
        *self = State::restored(index, snapshot);
    }

    /// The catalog a restore of `snapshot` at `index` leaves.
    pub(crate) fn restored(index: u64, snapshot: &Snapshot) -> State {
        let mut state = State::from_snapshot(snapshot.clone());
        // (A file saved while another restore was being written holds its parts.)
        state.restoring = None;
        // Keys this catalog held and the snapshot does not vanish without tombstones:
        // the changes after any earlier index cannot be listed.
        state.kv.reaped = index;
        state.indexes = Indexes {
            nodes: index,
            services: index,
            checks: index,
            queries: index,
            kv: index,
            sessions: index,
            acl: index,
        };
        state.acl.touch_all(index);
        let names: Vec<String> = state.by_name.keys().cloned().collect();
        state.service_index.clear();
        for name in names {
            state.service_index.insert(name, index);
        }
        state.changed.everything();
        state
    }

    /// For a command at `index` that replaces the whole catalog (a restore, or the last
    /// part of one, completing the parts `staged`), the catalog it leaves; `None` for any
    /// other command, or one that would be refused. Slow for a large catalog: the writer
    /// builds it without holding the catalog's lock, then swaps it in with
    /// [`State::apply_built`].
    pub(crate) fn build_replacement(
        index: u64,
        command: &Command,
        staged: Option<&StagedRestore>,
    ) -> Option<Built> {
        match command {
            Command::Restore(s) => Some(Built {
                state: State::restored(index, s.snapshot().ok()?),
                staged: None,
            }),
            Command::RestorePart(part) => {
                let staged = staged.filter(|s| s.completed_by(part))?;
                let mut text = String::with_capacity(staged.len() + part.data.len());
                text.push_str(staged.text());
                text.push_str(&part.data);
                let packed = PackedSnapshot::from_packed(&text);
                Some(Built {
                    state: State::restored(index, packed.snapshot().ok()?),
                    staged: Some(staged.clone()),
                })
            }
            _ => None,
        }
    }

    /// Applies `command` at `index` as [`State::apply`] does, taking `built` (from
    /// [`State::build_replacement`]) as the catalog it leaves when this catalog is still
    /// the one it was built from; the catalog replaced goes to `retired`, for the caller
    /// to drop after releasing its lock.
    pub(crate) fn apply_built(
        &mut self,
        index: u64,
        command: &Command,
        built: Built,
        retired: &mut Vec<State>,
    ) -> Result<Applied, ApplyError> {
        let current = match command {
            Command::Restore(_) => true,
            Command::RestorePart(_) => built.staged.is_some() && self.restoring == built.staged,
            _ => false,
        };
        if !current {
            return self.apply(index, command);
        }
        retired.push(std::mem::replace(self, built.state));
        Ok(Applied::Done)
    }

    /// What changed since the last call: the readers to wake.
    pub(super) fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changed)
    }

    fn register(&mut self, index: u64, r: &Registration) -> Result<(), ApplyError> {
        if r.node.name.is_empty() {
            return Err(ApplyError::MissingNode);
        }
        let node_key = fold(&r.node.name);
        let exists = self.nodes.contains_key(&node_key);
        if (!exists || !r.skip_node_update) && r.node.address.is_empty() {
            return Err(ApplyError::MissingAddress);
        }
        if let Some(service) = &r.service
            && service.name.is_empty()
        {
            return Err(ApplyError::MissingServiceName);
        }
        // Validate the checks before touching anything, so a refused command changes nothing.
        for check in &r.checks {
            if check.check_id.is_empty() {
                return Err(ApplyError::MissingCheckId);
            }
            if !check.service_id.is_empty() {
                let key = (node_key.clone(), fold(&check.service_id));
                let in_request = r
                    .service
                    .as_ref()
                    .is_some_and(|s| fold(&service_id(s)) == key.1);
                if !in_request && !self.services.contains_key(&key) {
                    return Err(ApplyError::MissingService {
                        node: r.node.name.clone(),
                        check_id: check.check_id.clone(),
                        service_id: check.service_id.clone(),
                    });
                }
            }
        }

        if !exists || !r.skip_node_update {
            self.upsert_node(index, &node_key, &r.node);
        }
        let node_name = self
            .nodes
            .get(&node_key)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| r.node.name.clone());
        if let Some(service) = &r.service {
            self.upsert_service(index, &node_key, service);
        }
        for check in &r.checks {
            self.upsert_check(index, &node_key, &node_name, check);
        }
        Ok(())
    }

    fn upsert_node(&mut self, index: u64, key: &str, node: &Node) {
        let mut new = node.clone();
        match self.nodes.get(key) {
            Some(old) => {
                new.create_index = old.create_index;
                new.modify_index = old.modify_index;
                if **old == new {
                    return;
                }
                new.modify_index = index;
            }
            None => {
                new.create_index = index;
                new.modify_index = index;
            }
        }
        let address = new.address.clone();
        let meta = meta_entries(key, &new);
        if let Some(old) = self.nodes.insert(key.to_owned(), Arc::new(new)) {
            self.node_addresses
                .remove(&(old.address.clone(), key.to_owned()));
            for entry in meta_entries(key, &old) {
                self.node_meta.remove(&entry);
            }
        }
        self.node_addresses.insert((address, key.to_owned()));
        self.node_meta.extend(meta);
        self.indexes.nodes = index;
        self.touch_services_on(key, index);
    }

    fn upsert_service(&mut self, index: u64, node_key: &str, service: &Service) {
        let mut new = service.clone();
        new.id = service_id(service);
        let key = (node_key.to_owned(), fold(&new.id));
        match self.services.get(&key) {
            Some(old) => {
                new.create_index = old.create_index;
                new.modify_index = old.modify_index;
                if **old == new {
                    return;
                }
                new.modify_index = index;
                let old_name = fold(&old.name);
                if old_name != fold(&new.name) {
                    self.unindex_name(&old_name, &key);
                    self.touch_service(&old_name, index);
                }
            }
            None => {
                new.create_index = index;
                new.modify_index = index;
            }
        }
        let name_key = fold(&new.name);
        self.by_name
            .entry(name_key.clone())
            .or_default()
            .insert(key.clone());
        self.touch_service(&name_key, index);
        // Checks carry the service's name and tags; keep them in step.
        let (name, tags) = (new.name.clone(), new.tags.clone());
        self.names.add(&new);
        let address = new.address.clone();
        if let Some(old) = self.services.insert(key.clone(), Arc::new(new)) {
            self.names.remove(&old);
            self.service_addresses
                .remove(&(old.address.clone(), key.clone()));
        }
        if !address.is_empty() {
            self.service_addresses.insert((address, key.clone()));
        }
        self.indexes.services = index;
        let mut touched = false;
        // Only this node's checks can be this instance's: a range, not the whole table.
        let on_this_node = self
            .checks
            .range_mut((node_key.to_owned(), String::new())..)
            .take_while(|((n, _), _)| n == node_key);
        for (_, check) in on_this_node {
            if check.service_id.eq_ignore_ascii_case(&key.1)
                && (check.service_name != name || check.service_tags != tags)
            {
                let check = Arc::make_mut(check);
                check.service_name = name.clone();
                check.service_tags = tags.clone();
                check.modify_index = index;
                touched = true;
            }
        }
        if touched {
            self.indexes.checks = index;
        }
    }

    fn upsert_check(&mut self, index: u64, node_key: &str, node_name: &str, check: &Check) {
        let mut new = check.clone();
        new.node = node_name.to_owned();
        new.service_name.clear();
        new.service_tags.clear();
        if !new.service_id.is_empty()
            && let Some(service) = self
                .services
                .get(&(node_key.to_owned(), fold(&new.service_id)))
        {
            new.service_id = service.id.clone();
            new.service_name = service.name.clone();
            new.service_tags = service.tags.clone();
        }
        let key = (node_key.to_owned(), fold(&new.check_id));
        match self.checks.get(&key) {
            Some(old) => {
                new.create_index = old.create_index;
                new.modify_index = old.modify_index;
                if **old == new {
                    return;
                }
                new.modify_index = index;
            }
            None => {
                new.create_index = index;
                new.modify_index = index;
            }
        }
        self.touch_check(node_key, &new, index);
        let status = new.status;
        if let Some(old) = self.checks.insert(key.clone(), Arc::new(new)) {
            self.failing.remove(&(old.status, key.clone()));
        }
        if status != Health::Passing {
            self.failing.insert((status, key));
        }
        self.indexes.checks = index;
    }

    fn unindex_name(&mut self, name: &str, key: &Key) {
        if let Some(set) = self.by_name.get_mut(name) {
            set.remove(key);
            if set.is_empty() {
                self.by_name.remove(name);
            }
        }
    }

    fn deregister(&mut self, index: u64, d: &Deregistration) -> Result<(), ApplyError> {
        if d.node.is_empty() {
            return Err(ApplyError::MissingNode);
        }
        let node_key = fold(&d.node);
        if !self.nodes.contains_key(&node_key) {
            // Removing a node that is gone already is a success; removing part of one is
            // a mistake worth reporting.
            return match (&d.service_id, &d.check_id) {
                (None, None) => Ok(()),
                _ => Err(ApplyError::UnknownNode(d.node.clone())),
            };
        }
        match (&d.service_id, &d.check_id) {
            (Some(service_id), _) => self.remove_service(index, &node_key, &fold(service_id)),
            (None, Some(check_id)) => {
                let key = (node_key.clone(), fold(check_id));
                if let Some(old) = self.checks.remove(&key) {
                    self.failing.remove(&(old.status, key));
                    self.indexes.checks = index;
                    self.touch_check(&node_key, &old, index);
                }
            }
            (None, None) => {
                let ids: Vec<String> = on_node(&self.services, &node_key)
                    .map(|((_, id), _)| id.clone())
                    .collect();
                for id in ids {
                    self.remove_service(index, &node_key, &id);
                }
                let check_keys: Vec<Key> = on_node(&self.checks, &node_key)
                    .map(|(k, _)| k.clone())
                    .collect();
                if !check_keys.is_empty() {
                    for k in check_keys {
                        self.remove_check(k);
                    }
                    self.indexes.checks = index;
                }
                if let Some(old) = self.nodes.remove(&node_key) {
                    for entry in meta_entries(&node_key, &old) {
                        self.node_meta.remove(&entry);
                    }
                    self.node_addresses.remove(&(old.address.clone(), node_key));
                }
                self.indexes.nodes = index;
            }
        }
        Ok(())
    }

    fn remove_service(&mut self, index: u64, node_key: &str, id_key: &str) {
        let key = (node_key.to_owned(), id_key.to_owned());
        let Some(old) = self.services.remove(&key) else {
            return;
        };
        let name_key = fold(&old.name);
        self.unindex_name(&name_key, &key);
        self.names.remove(&old);
        self.service_addresses
            .remove(&(old.address.clone(), key.clone()));
        self.touch_service(&name_key, index);
        self.indexes.services = index;
        let its_checks: Vec<Key> = on_node(&self.checks, node_key)
            .filter(|(_, c)| c.service_id.eq_ignore_ascii_case(id_key))
            .map(|(k, _)| k.clone())
            .collect();
        if !its_checks.is_empty() {
            for k in its_checks {
                self.remove_check(k);
            }
            self.indexes.checks = index;
        }
    }

    fn remove_check(&mut self, key: Key) {
        if let Some(old) = self.checks.remove(&key) {
            self.failing.remove(&(old.status, key));
        }
    }

    /// The checks in `status`, in key order, when it is one that is indexed (not
    /// passing).
    pub(super) fn checks_failing(
        &self,
        status: Health,
    ) -> Option<impl Iterator<Item = &Arc<Check>>> {
        if status == Health::Passing {
            return None;
        }
        let from = (status, (String::new(), String::new()));
        Some(
            self.failing
                .range(from..)
                .take_while(move |(s, _)| *s == status)
                .filter_map(|(_, key)| self.checks.get(key)),
        )
    }

    /// Nodes, then instances, whose address is `address`, each in key order (as a walk
    /// of the tables finds them).
    pub(super) fn at_address(&self, address: &str) -> (Vec<Arc<Node>>, Vec<Arc<Service>>) {
        let nodes = self
            .node_addresses
            .range((address.to_owned(), String::new())..)
            .take_while(|(a, _)| a == address)
            .filter_map(|(_, key)| self.nodes.get(key))
            .cloned()
            .collect();
        let services = if address.is_empty() {
            self.services
                .values()
                .filter(|s| s.address.is_empty())
                .cloned()
                .collect()
        } else {
            self.service_addresses
                .range((address.to_owned(), (String::new(), String::new()))..)
                .take_while(|(a, _)| a == address)
                .filter_map(|(_, key)| self.services.get(key))
                .cloned()
                .collect()
        };
        (nodes, services)
    }

    /// The catalog as a serialisable value, for Raft snapshots.
    pub fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            nodes: self.nodes.values().cloned().collect(),
            services: {
                // One copy of each node's key, shared by its instances (adjacent in key
                // order).
                let mut node: Option<Arc<str>> = None;
                self.services
                    .iter()
                    .map(|((n, _), s)| {
                        let key = match &node {
                            Some(key) if **key == **n => key.clone(),
                            _ => node.insert(Arc::from(n.as_str())).clone(),
                        };
                        (key, s.clone())
                    })
                    .collect()
            },
            checks: self.checks.values().cloned().collect(),
            indexes: self.indexes,
            service_index: self.service_index.clone(),
            queries: self.queries.values().cloned().collect(),
            kv: self.kv.entries.values().cloned().collect(),
            tombstones: self
                .kv
                .tombstones
                .iter()
                .map(|(k, i)| (k.clone(), *i))
                .collect(),
            kv_reaped: Some(self.kv.reaped),
            sessions: self.sessions.by_id.values().cloned().collect(),
            acl: self.acl.to_snapshot(),
            autopilot: self.autopilot.clone(),
            restoring: self.restoring.clone(),
        }
    }

    /// Rebuilds a catalog from a snapshot.
    pub fn from_snapshot(snapshot: Snapshot) -> State {
        let mut state = State {
            indexes: snapshot.indexes,
            service_index: snapshot.service_index,
            queries: snapshot
                .queries
                .into_iter()
                .map(|q| (q.id.clone(), q))
                .collect(),
            kv: Kv {
                entries: snapshot
                    .kv
                    .into_iter()
                    .map(|e| (e.key.clone(), e))
                    .collect(),
                tombstones: snapshot.tombstones.into_iter().collect(),
                reaped: snapshot.kv_reaped.unwrap_or(snapshot.indexes.kv),
            },
            acl: AclTables::from_snapshot(snapshot.acl),
            autopilot: snapshot.autopilot,
            restoring: snapshot.restoring,
            ..State::default()
        };
        // The big maps are built whole (`collect` sorts, then fills every tree node),
        // not by one insert after another in key order, which leaves each node about
        // half full: after a restart the agent takes about a quarter less memory. A
        // key that appears twice keeps its last value either way.
        state.nodes = snapshot
            .nodes
            .into_iter()
            .map(|node| (fold(&node.name), node))
            .collect();
        let mut by_name: BTreeMap<String, Vec<Key>> = BTreeMap::new();
        let mut services = Vec::with_capacity(snapshot.services.len());
        for (node_key, service) in snapshot.services {
            let key = (node_key.to_string(), fold(&service.id));
            by_name
                .entry(fold(&service.name))
                .or_default()
                .push(key.clone());
            services.push((key, service));
        }
        state.services = services.into_iter().collect();
        for service in state.services.values() {
            state.names.add(service);
        }
        state.by_name = by_name
            .into_iter()
            .map(|(name, keys)| (name, keys.into_iter().collect()))
            .collect();
        state.checks = snapshot
            .checks
            .into_iter()
            .map(|check| ((fold(&check.node), fold(&check.check_id)), check))
            .collect();
        state.node_addresses = state
            .nodes
            .iter()
            .map(|(key, n)| (n.address.clone(), key.clone()))
            .collect();
        state.node_meta = state
            .nodes
            .iter()
            .flat_map(|(key, n)| meta_entries(key, n))
            .collect();
        state.service_addresses = state
            .services
            .iter()
            .filter(|(_, s)| !s.address.is_empty())
            .map(|(key, s)| (s.address.clone(), key.clone()))
            .collect();
        state.failing = state
            .checks
            .iter()
            .filter(|(_, c)| c.status != Health::Passing)
            .map(|(key, c)| (c.status, key.clone()))
            .collect();
        for session in snapshot.sessions {
            state.sessions.insert(session);
        }
        let held: Vec<(String, String)> = state
            .kv
            .entries
            .values()
            .filter_map(|e| Some((e.session.clone()?, e.key.clone())))
            .collect();
        for (session, key) in held {
            state.hold(&session, &key);
        }
        state
    }
}

/// The ID a service is stored under: its ID, or its name when the ID is empty.
fn service_id(service: &Service) -> String {
    if service.id.is_empty() {
        service.name.clone()
    } else {
        service.id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Health;

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            address: "10.0.0.1".into(),
            datacenter: "dc1".into(),
            ..Node::default()
        }
    }

    fn web(id: &str) -> Service {
        Service {
            id: id.into(),
            name: "web".into(),
            port: 80,
            ..Service::default()
        }
    }

    fn register(state: &mut State, index: u64, r: Registration) -> Result<(), ApplyError> {
        state.apply(index, &Command::Register(r)).map(|_| ())
    }

    fn reg(node_name: &str, service: Option<Service>, checks: Vec<Check>) -> Registration {
        Registration {
            node: node(node_name),
            skip_node_update: false,
            service,
            checks,
        }
    }

    #[test]
    fn registration_sets_create_and_modify_indexes() {
        let mut s = State::new();
        register(&mut s, 5, reg("a", Some(web("web1")), vec![])).unwrap();
        let n = &s.nodes["a"];
        assert_eq!((n.create_index, n.modify_index), (5, 5));
        let svc = &s.services[&("a".into(), "web1".into())];
        assert_eq!((svc.create_index, svc.modify_index), (5, 5));
        assert_eq!(s.indexes().max(), 5);
    }

    #[test]
    fn identical_registration_changes_no_index() {
        let mut s = State::new();
        register(&mut s, 5, reg("a", Some(web("web1")), vec![])).unwrap();
        register(&mut s, 9, reg("a", Some(web("web1")), vec![])).unwrap();
        assert_eq!(s.indexes().max(), 5);
        let mut changed = web("web1");
        changed.port = 81;
        register(&mut s, 10, reg("a", Some(changed), vec![])).unwrap();
        assert_eq!(s.indexes().services, 10);
        assert_eq!(s.indexes().nodes, 5);
        let svc = &s.services[&("a".into(), "web1".into())];
        assert_eq!((svc.create_index, svc.modify_index), (5, 10));
    }

    #[test]
    fn a_check_for_a_missing_service_is_refused_and_changes_nothing() {
        let mut s = State::new();
        let check = Check {
            check_id: "c1".into(),
            service_id: "nope".into(),
            ..Check::default()
        };
        let err = register(&mut s, 3, reg("a", None, vec![check])).unwrap_err();
        assert!(matches!(err, ApplyError::MissingService { .. }));
        assert!(s.nodes.is_empty());
        assert_eq!(s.indexes().max(), 0);
    }

    #[test]
    fn checks_take_the_service_name_and_tags() {
        let mut s = State::new();
        let mut svc = web("web1");
        svc.tags = vec!["v1".into()];
        let check = Check {
            check_id: "c1".into(),
            service_id: "WEB1".into(),
            status: Health::Passing,
            ..Check::default()
        };
        register(&mut s, 3, reg("a", Some(svc.clone()), vec![check])).unwrap();
        let c = &s.checks[&("a".into(), "c1".into())];
        assert_eq!(c.service_name, "web");
        assert_eq!(c.service_id, "web1");
        assert_eq!(c.node, "a");
        svc.tags = vec!["v2".into()];
        register(&mut s, 4, reg("a", Some(svc), vec![])).unwrap();
        let c = &s.checks[&("a".into(), "c1".into())];
        assert_eq!(c.service_tags, vec!["v2".to_string()]);
        assert_eq!(s.indexes().checks, 4);
    }

    #[test]
    fn deregistering_a_service_removes_its_checks_only() {
        let mut s = State::new();
        let svc_check = Check {
            check_id: "c1".into(),
            service_id: "web1".into(),
            ..Check::default()
        };
        let node_check = Check {
            check_id: "n1".into(),
            ..Check::default()
        };
        register(
            &mut s,
            3,
            reg("a", Some(web("web1")), vec![svc_check, node_check]),
        )
        .unwrap();
        s.apply(
            4,
            &Command::Deregister(Deregistration {
                node: "A".into(),
                service_id: Some("web1".into()),
                check_id: None,
            }),
        )
        .unwrap();
        assert!(s.services.is_empty());
        assert!(s.by_name.is_empty());
        assert_eq!(s.checks.len(), 1);
        assert_eq!(s.indexes().services, 4);
    }

    #[test]
    fn deregistering_a_node_removes_everything_on_it() {
        let mut s = State::new();
        register(&mut s, 3, reg("a", Some(web("web1")), vec![])).unwrap();
        register(&mut s, 4, reg("b", Some(web("web1")), vec![])).unwrap();
        s.apply(
            5,
            &Command::Deregister(Deregistration {
                node: "a".into(),
                service_id: None,
                check_id: None,
            }),
        )
        .unwrap();
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.by_name["web"].len(), 1);
        // Gone already: still a success.
        s.apply(
            6,
            &Command::Deregister(Deregistration {
                node: "a".into(),
                service_id: None,
                check_id: None,
            }),
        )
        .unwrap();
    }

    #[test]
    fn snapshot_round_trip_keeps_everything() {
        let mut s = State::new();
        let check = Check {
            check_id: "c1".into(),
            service_id: "web1".into(),
            ..Check::default()
        };
        register(&mut s, 3, reg("a", Some(web("web1")), vec![check])).unwrap();
        let json = serde_json::to_vec(&s.to_snapshot()).unwrap();
        let back = State::from_snapshot(serde_json::from_slice(&json).unwrap());
        assert_eq!(back.nodes, s.nodes);
        assert_eq!(back.services, s.services);
        assert_eq!(back.checks, s.checks);
        assert_eq!(back.by_name, s.by_name);
        assert_eq!(back.indexes(), s.indexes());
    }

    mod properties {
        use super::*;
        use crate::{Answer, Query, ServiceNode};
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![Just("a"), Just("A"), Just("b"), Just("c")].prop_map(str::to_owned)
        }

        fn address() -> impl Strategy<Value = String> {
            prop_oneof![Just(""), Just("10.0.0.1"), Just("10.0.0.2")].prop_map(str::to_owned)
        }

        fn meta_key() -> impl Strategy<Value = String> {
            prop_oneof![Just("k"), Just("m")].prop_map(str::to_owned)
        }

        fn command() -> impl Strategy<Value = Command> {
            let tags = proptest::collection::vec(name(), 0..3);
            let service = (name(), name(), any::<u16>(), tags, address()).prop_map(
                |(id, n, port, tags, address)| Service {
                    id,
                    name: n,
                    port,
                    tags,
                    address,
                    ..Service::default()
                },
            );
            let status = prop_oneof![
                Just(Health::Passing),
                Just(Health::Warning),
                Just(Health::Critical)
            ];
            let check =
                (name(), proptest::option::of(name()), status).prop_map(|(id, sid, status)| {
                    Check {
                        check_id: id,
                        service_id: sid.unwrap_or_default(),
                        status,
                        ..Check::default()
                    }
                });
            let register = (
                name(),
                any::<bool>(),
                proptest::option::of(service),
                proptest::collection::vec(check, 0..3),
                address(),
                proptest::collection::btree_map(meta_key(), name(), 0..3),
            )
                .prop_map(|(n, skip, service, checks, address, meta)| {
                    Command::Register(Registration {
                        node: Node {
                            address: if address.is_empty() {
                                "10.0.0.1".into()
                            } else {
                                address
                            },
                            meta,
                            ..node(&n)
                        },
                        skip_node_update: skip,
                        service,
                        checks,
                    })
                });
            let deregister = (
                name(),
                proptest::option::of(name()),
                proptest::option::of(name()),
            )
                .prop_map(|(n, service_id, check_id)| {
                    Command::Deregister(Deregistration {
                        node: n,
                        service_id,
                        check_id,
                    })
                });
            prop_oneof![register, deregister]
        }

        fn check_invariants(s: &State) {
            for (node_key, _) in s.services.keys() {
                assert!(s.nodes.contains_key(node_key), "service on a missing node");
            }
            for ((node_key, _), c) in &s.checks {
                assert!(s.nodes.contains_key(node_key), "check on a missing node");
                if !c.service_id.is_empty() {
                    let key = (node_key.clone(), fold(&c.service_id));
                    assert!(s.services.contains_key(&key), "check of a missing service");
                }
            }
            let mut by_name: BTreeMap<String, BTreeSet<Key>> = BTreeMap::new();
            for (key, svc) in &s.services {
                by_name
                    .entry(fold(&svc.name))
                    .or_default()
                    .insert(key.clone());
            }
            assert_eq!(by_name, s.by_name, "the name index follows the services");
            let failing: BTreeSet<(Health, Key)> = s
                .checks
                .iter()
                .filter(|(_, c)| c.status != Health::Passing)
                .map(|(key, c)| (c.status, key.clone()))
                .collect();
            assert_eq!(failing, s.failing, "the failing index follows the checks");
            for address in ["", "10.0.0.1", "10.0.0.2", "10.0.0.3"] {
                let walked = (
                    s.nodes
                        .values()
                        .filter(|n| n.address == address)
                        .cloned()
                        .collect::<Vec<_>>(),
                    s.services
                        .values()
                        .filter(|x| x.address == address)
                        .cloned()
                        .collect::<Vec<_>>(),
                );
                assert_eq!(
                    s.at_address(address),
                    walked,
                    "reverse lookup of {address:?}"
                );
            }
            let node_addresses: BTreeSet<(String, String)> = s
                .nodes
                .iter()
                .map(|(k, n)| (n.address.clone(), k.clone()))
                .collect();
            assert_eq!(node_addresses, s.node_addresses);
            let service_addresses: BTreeSet<(String, Key)> = s
                .services
                .iter()
                .filter(|(_, x)| !x.address.is_empty())
                .map(|(k, x)| (x.address.clone(), k.clone()))
                .collect();
            assert_eq!(service_addresses, s.service_addresses);
            let node_meta: BTreeSet<(String, String, String)> = s
                .nodes
                .iter()
                .flat_map(|(key, n)| {
                    n.meta
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone(), key.clone()))
                })
                .collect();
            assert_eq!(node_meta, s.node_meta, "the meta index follows the nodes");
            let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
            let filters = [
                vec![pair("k", "a")],
                vec![pair("m", "b")],
                vec![pair("k", "a"), pair("m", "b")],
                vec![pair("m", "c"), pair("k", "A")],
                vec![pair("k", "a"), pair("k", "b")],
                vec![pair("x", "a")],
            ];
            for filter in &filters {
                let nodes: Vec<&Arc<Node>> = s
                    .nodes
                    .values()
                    .filter(|n| filter.iter().all(|(k, v)| n.meta.get(k) == Some(v)))
                    .collect();
                let on_them = |key: &String| {
                    s.nodes
                        .get(key)
                        .is_some_and(|n| nodes.iter().any(|m| m.name == n.name))
                };
                let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                let mut instances = Vec::new();
                for ((node_key, _), x) in &s.services {
                    if on_them(node_key) {
                        names
                            .entry(x.name.clone())
                            .or_default()
                            .extend(x.tags.iter().cloned());
                        instances.push(ServiceNode {
                            node: s.nodes[node_key].clone(),
                            service: x.clone(),
                        });
                    }
                }
                let names: BTreeMap<String, Vec<String>> = names
                    .into_iter()
                    .map(|(k, v)| (k, v.into_iter().collect()))
                    .collect();
                assert_eq!(s.services_on_nodes_with(filter), names, "{filter:?}");
                let query = |q| s.query(&q).0;
                assert_eq!(
                    query(Query::Nodes {
                        node_meta: filter.clone()
                    }),
                    Answer::Nodes(nodes.into_iter().cloned().collect()),
                    "{filter:?}"
                );
                assert_eq!(
                    query(Query::ServiceInstances {
                        node_meta: filter.clone()
                    }),
                    Answer::ServiceInstances(instances),
                    "{filter:?}"
                );
            }
            for status in [Health::Warning, Health::Critical] {
                let walked: Vec<&Arc<Check>> =
                    s.checks.values().filter(|c| c.status == status).collect();
                let indexed: Vec<&Arc<Check>> = s.checks_failing(status).unwrap().collect();
                assert_eq!(walked, indexed, "{status:?} in the same order as a walk");
            }
            assert_eq!(
                s.names.list(),
                s.services_on_nodes_with(&[]),
                "the names and tags follow the services"
            );
            for name in s.service_index.keys() {
                assert!(
                    s.by_name.contains_key(name),
                    "an index entry for a gone service"
                );
            }
        }

        proptest! {
            #[test]
            fn any_command_sequence_keeps_the_catalog_consistent(
                commands in proptest::collection::vec(command(), 1..40)
            ) {
                let mut s = State::new();
                let mut last = 0;
                // A snapshot taken halfway shares its values with the catalog: the
                // commands after it must not change it.
                let mut held: Option<(Snapshot, Vec<u8>)> = None;
                for (i, c) in commands.iter().enumerate() {
                    if i == commands.len() / 2 {
                        let snapshot = s.to_snapshot();
                        let json = serde_json::to_vec(&snapshot).unwrap();
                        held = Some((snapshot, json));
                    }
                    let index = i as u64 + 1;
                    let before = s.indexes();
                    if s.apply(index, c).is_err() {
                        prop_assert_eq!(s.indexes(), before, "a refused command changes nothing");
                    }
                    prop_assert!(s.indexes().max() >= last);
                    last = s.indexes().max();
                    check_invariants(&s);
                }
                if let Some((snapshot, json)) = held {
                    prop_assert_eq!(serde_json::to_vec(&snapshot).unwrap(), json);
                }
                let back = State::from_snapshot(s.to_snapshot());
                prop_assert_eq!(&back.service_index, &s.service_index);
                prop_assert_eq!(&back.nodes, &s.nodes);
                prop_assert_eq!(&back.services, &s.services);
                prop_assert_eq!(&back.checks, &s.checks);
                prop_assert_eq!(&back.by_name, &s.by_name);
                prop_assert_eq!(&back.names, &s.names);
                prop_assert_eq!(&back.failing, &s.failing);
                prop_assert_eq!(&back.node_addresses, &s.node_addresses);
                prop_assert_eq!(&back.service_addresses, &s.service_addresses);
                prop_assert_eq!(&back.node_meta, &s.node_meta);
            }
        }
    }
}
