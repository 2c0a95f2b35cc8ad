//! This agent's own services and checks, and the anti-entropy sync that keeps the
//! catalog's copy of them in step.
//!
//! The agent is the authority for what runs on its node: services and checks registered
//! through config files or `/v1/agent/...` live here, health checks update them here, and
//! [`run_sync`] writes them to the catalog. Consul calls this anti-entropy. Entries the
//! leader owns (`serfHealth`, and the `consul` service of a server) are never touched by
//! the sync.
//!
//! A pass costs what changed. Every local change records the entry it touched as pending
//! (Consul keeps an `InSync` flag per service and check for the same purpose), and a
//! *changes pass* writes only those entries, without reading the catalog. A *full pass*
//! reads this node's services and checks from the catalog, compares everything by ID and
//! writes the differences, which repairs a catalog that lost or changed an entry behind
//! the agent's back. Full passes run at start, when a server joins or leaves, after a
//! change the catalog refused, and every [`SYNC_INTERVAL`] plus a random spread that
//! grows with the size of the pool (Consul's `ae_interval` and its stagger).
//!
//! ```text
//!   /v1/agent, config, check runs ──▶ Local (entries + Pending) ──plan_changes──▶ writes
//!   catalog read (NodeServices, NodeChecks) ──────────────────────plan_full─────▶ writes
//!   each write taken or refused ──▶ Local::settle (pending entry cleared if unchanged)
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use catalog::{
    Answer, Check, Command, Consistency, Deregistration, Health, Node, Principal, Query,
    QueryResult, ReadError, ReadOptions, Registration, SERF_HEALTH_CHECK, Service, WriteError,
};
use gossip::Member;

use crate::checks::{CheckKind, Reports, Runner};

mod maintenance;
pub use maintenance::{
    DEFAULT_NODE_MAINTENANCE_REASON, DEFAULT_SERVICE_MAINTENANCE_REASON, Maintenance,
    NODE_MAINTENANCE_CHECK, SERVICE_MAINTENANCE_PREFIX,
};

/// The most output a check keeps, in bytes, unless its `output_max_size` says otherwise
/// (Consul's default).
pub const CHECK_OUTPUT_MAX: usize = 4096;

/// The time between two full anti-entropy passes before the random spread is added
/// (Consul's `ae_interval`).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(60);

/// Pools up to this many members spread full passes over one more [`SYNC_INTERVAL`];
/// each doubling beyond it adds another interval to the spread (Consul's scale threshold).
const SYNC_SCALE_THRESHOLD: usize = 128;

/// Removals waiting to reach the catalog, at most. Beyond this they are forgotten and the
/// next pass is a full one, which finds every entry the catalog has and the agent does not.
const PENDING_REMOVALS_MAX: usize = 4096;

/// The service ID servers register for themselves; owned by the leader, not by the sync.
pub(crate) const CONSUL_SERVICE: &str = "consul";

/// Where a definition came from. A reload replaces what came from config files and keeps
/// what was registered through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A config file.
    Config,
    /// The HTTP API.
    Api,
}

/// A check as the agent defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckDefinition {
    /// Check ID, unique on this node.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Free-text notes.
    pub notes: String,
    /// The service instance it covers, or empty for a node-level check.
    pub service_id: String,
    /// What it runs.
    pub kind: CheckKind,
    /// Initial status (Consul: critical unless given).
    pub status: Health,
    /// The most output kept, in bytes (at most [`crate::CHECK_OUTPUT_LIMIT`]).
    pub output_max_size: usize,
}

/// Why a local registration or update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    /// A check names a service this agent does not have (HTTP 404 in Consul).
    #[error("ServiceID {0:?} does not exist")]
    UnknownService(String),
    /// No check with this ID (HTTP 404).
    #[error("Unknown check ID {0:?}. Ensure that the check ID is passed, not the check name.")]
    UnknownCheck(String),
    /// A TTL update for a check that has no TTL (HTTP 500 in Consul, with this text).
    #[error("CheckID {0:?} does not have associated TTL")]
    NotTtl(String),
    /// The ID belongs to what the leader maintains (`consul`, `serfHealth`).
    #[error("{0:?} is reserved for the agent's own use")]
    Reserved(String),
    /// The ID differs only in case from another one; the catalog would see them as one.
    #[error("ID {0:?} differs only in case from the existing {1:?}")]
    CaseClash(String, String),
    /// A script check while `enable_script_checks` is off.
    #[error(
        "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or 'enable_local_script_checks' to true"
    )]
    ScriptsDisabled,
    /// Maintenance for a service this agent does not have (HTTP 404 in Consul, with
    /// this text).
    #[error(
        "Unknown service ID {0:?}. Ensure that the service ID is passed, not the service name."
    )]
    NoSuchService(String),
}

#[derive(Debug, Clone)]
struct LocalCheck {
    def: CheckDefinition,
    status: Health,
    output: String,
    source: Source,
    /// When a TTL check goes critical unless updated; `None` once expired or for other kinds.
    ttl_expires: Option<Instant>,
}

/// What the catalog has not been told yet.
///
/// Every change takes a new generation and records it against the entry it touched; a
/// write settles an entry only if the entry still has the generation the write was
/// planned with, so a change made while its write was on the way is sent again. Each map
/// holds only IDs of entries that exist locally (or were just removed), and removals are
/// bounded by [`PENDING_REMOVALS_MAX`].
#[derive(Debug, Default)]
struct Pending {
    /// The newest generation handed out.
    generation: u64,
    /// The next pass must compare everything with the catalog.
    full: bool,
    /// Services to register, by ID, with the generation of their last change.
    services: BTreeMap<String, u64>,
    /// Services to deregister.
    removed_services: BTreeMap<String, u64>,
    /// Checks to register.
    checks: BTreeMap<String, u64>,
    /// Checks to deregister, with the service they covered (empty for a node check).
    removed_checks: BTreeMap<String, (u64, String)>,
}

impl Pending {
    fn next(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn service_changed(&mut self, id: &str) {
        let generation = self.next();
        self.removed_services.remove(id);
        self.services.insert(id.to_owned(), generation);
    }

    fn service_removed(&mut self, id: &str) {
        let generation = self.next();
        self.services.remove(id);
        self.removed_services.insert(id.to_owned(), generation);
        self.bound_removals();
    }

    fn check_changed(&mut self, id: &str) {
        let generation = self.next();
        self.removed_checks.remove(id);
        self.checks.insert(id.to_owned(), generation);
    }

    fn check_removed(&mut self, id: &str, service_id: &str) {
        let generation = self.next();
        self.checks.remove(id);
        self.removed_checks
            .insert(id.to_owned(), (generation, service_id.to_owned()));
        self.bound_removals();
    }

    fn bound_removals(&mut self) {
        if self.removed_services.len() + self.removed_checks.len() > PENDING_REMOVALS_MAX {
            self.removed_services.clear();
            self.removed_checks.clear();
            self.full = true;
        }
    }

    /// Forgets everything pending: a full pass is about to cover it.
    fn clear(&mut self) {
        self.full = false;
        self.services.clear();
        self.removed_services.clear();
        self.checks.clear();
        self.removed_checks.clear();
    }

    fn settle(&mut self, settles: &Settles) {
        fn clear_if<V>(map: &mut BTreeMap<String, V>, id: &str, current: impl Fn(&V) -> bool) {
            if map.get(id).is_some_and(current) {
                map.remove(id);
            }
        }
        match settles {
            Settles::Nothing => {}
            Settles::Service(id, g) => clear_if(&mut self.services, id, |v| v == g),
            Settles::ServiceRemoval(id, g) => clear_if(&mut self.removed_services, id, |v| v == g),
            Settles::Check(id, g) => clear_if(&mut self.checks, id, |v| v == g),
            Settles::CheckRemoval(id, g) => {
                clear_if(&mut self.removed_checks, id, |(v, _)| v == g);
            }
        }
    }
}

/// The pending entry a write of a changes pass settles once the catalog took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settles {
    /// Nothing: a full pass cleared what it covers when it was planned.
    Nothing,
    /// The registration of a service, at a generation.
    Service(String, u64),
    /// The deregistration of a service.
    ServiceRemoval(String, u64),
    /// The registration of a check.
    Check(String, u64),
    /// The deregistration of a check.
    CheckRemoval(String, u64),
}

/// One catalog write of a pass.
#[derive(Debug)]
pub(crate) struct Write {
    /// What to write.
    pub(crate) command: Command,
    /// What it settles once the catalog took or refused it.
    pub(crate) settles: Settles,
}

/// The catalog writes one anti-entropy pass makes, in order: the node, services to
/// register, services to deregister, checks to register, checks to deregister (a check
/// needs its service in the catalog first).
#[derive(Debug)]
pub(crate) struct Plan {
    /// Whether the pass compares everything with the catalog.
    pub(crate) full: bool,
    /// Local and catalog entries the plan looked at: the work the pass cost.
    pub(crate) examined: usize,
    /// The writes.
    pub(crate) writes: Vec<Write>,
}

/// This node's entries as the catalog holds them, read for a full pass.
#[derive(Debug, Default)]
pub(crate) struct Remote {
    /// The node, `None` when the catalog does not have it.
    pub(crate) node: Option<Node>,
    /// Its service instances.
    pub(crate) services: Vec<Service>,
    /// Its checks.
    pub(crate) checks: Vec<Check>,
}

#[derive(Debug)]
struct Inner {
    node: Node,
    services: BTreeMap<String, (Service, Source)>,
    checks: BTreeMap<String, LocalCheck>,
    /// Lower-case service ID → the ID as registered, to find clashes and catalog entries
    /// (which compare IDs case-insensitively) without a scan.
    service_keys: BTreeMap<String, String>,
    /// Lower-case check ID → the ID as registered.
    check_keys: BTreeMap<String, String>,
    /// Service ID → the IDs of the checks that cover it.
    service_checks: BTreeMap<String, BTreeSet<String>>,
    pending: Pending,
}

/// Whether storing a definition that equals the stored one is sent to the catalog again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Yes: an API registration is a request to (re)register, as in Consul.
    Always,
    /// No: a reload sends only what it changed.
    IfChanged,
}

/// Handle to this agent's services and checks. Cheap to clone.
#[derive(Clone)]
pub struct Local {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
    runner: Runner,
    /// What is in maintenance, published on every change for whoever keeps it on disk.
    maintenance: Arc<watch::Sender<Maintenance>>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").finish_non_exhaustive()
    }
}

fn truncate_output(mut output: String, max: usize) -> String {
    if output.len() > max {
        let mut cut = max;
        while !output.is_char_boundary(cut) {
            cut -= 1;
        }
        output.truncate(cut);
    }
    output
}

/// An ID as the catalog compares it.
fn fold(id: &str) -> String {
    id.to_ascii_lowercase()
}

impl Inner {
    /// The registered ID that `id` clashes with: one that differs only in case and is not
    /// being replaced.
    fn clash<'a>(
        keys: &'a BTreeMap<String, String>,
        id: &str,
        replacing: &BTreeSet<String>,
    ) -> Option<&'a String> {
        keys.get(&fold(id))
            .filter(|other| *other != id && !replacing.contains(*other))
    }
}

impl Local {
    pub(crate) fn new(node: Node, runner: Runner) -> Local {
        Local {
            inner: Arc::new(Mutex::new(Inner {
                node,
                services: BTreeMap::new(),
                checks: BTreeMap::new(),
                service_keys: BTreeMap::new(),
                check_keys: BTreeMap::new(),
                service_checks: BTreeMap::new(),
                // The first pass compares everything.
                pending: Pending {
                    full: true,
                    ..Pending::default()
                },
            })),
            changed: Arc::new(Notify::new()),
            runner,
            maintenance: Arc::new(watch::Sender::new(Maintenance::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("local state lock poisoned")
    }

    fn touch(&self) {
        self.changed.notify_one();
    }

    /// This node as the agent registers it.
    pub fn node(&self) -> Node {
        self.lock().node.clone()
    }

    /// Adds or replaces a service and its checks. With `replace_existing_checks`, checks
    /// of the service that are not in `checks` are removed.
    pub fn register_service(
        &self,
        service: Service,
        checks: Vec<CheckDefinition>,
        source: Source,
        replace_existing_checks: bool,
    ) -> Result<(), LocalError> {
        let mut inner = self.lock();
        let service = self.checked_service(&inner, service, &checks, &BTreeSet::new())?;
        self.put_service(
            &mut inner,
            service,
            checks,
            source,
            replace_existing_checks,
            Resend::Always,
        );
        drop(inner);
        self.touch();
        Ok(())
    }

    /// Checks a service and its checks against the rules and the existing definitions
    /// (ignoring services in `replacing`); returns the service with its ID filled in.
    fn checked_service(
        &self,
        inner: &Inner,
        mut service: Service,
        checks: &[CheckDefinition],
        replacing: &BTreeSet<String>,
    ) -> Result<Service, LocalError> {
        if service.id.is_empty() {
            service.id = service.name.clone();
        }
        if service.id.eq_ignore_ascii_case(CONSUL_SERVICE) {
            return Err(LocalError::Reserved(service.id));
        }
        if let Some(other) = Inner::clash(&inner.service_keys, &service.id, replacing) {
            return Err(LocalError::CaseClash(service.id, other.clone()));
        }
        for check in checks {
            self.checked_check(inner, check, replacing)?;
        }
        Ok(service)
    }

    /// Checks one check against the rules and the existing definitions.
    fn checked_check(
        &self,
        inner: &Inner,
        check: &CheckDefinition,
        replacing: &BTreeSet<String>,
    ) -> Result<(), LocalError> {
        if matches!(check.kind, CheckKind::Script { .. }) && !self.runner.scripts_enabled() {
            return Err(LocalError::ScriptsDisabled);
        }
        if check.id.eq_ignore_ascii_case(SERF_HEALTH_CHECK) {
            return Err(LocalError::Reserved(check.id.clone()));
        }
        if let Some(other) = Inner::clash(&inner.check_keys, &check.id, replacing) {
            return Err(LocalError::CaseClash(check.id.clone(), other.clone()));
        }
        Ok(())
    }

    /// Stores a checked service with its checks and starts them.
    fn put_service(
        &self,
        inner: &mut Inner,
        service: Service,
        checks: Vec<CheckDefinition>,
        source: Source,
        replace_existing_checks: bool,
        resend: Resend,
    ) {
        let id = service.id.clone();
        let changed = inner
            .services
            .get(&id)
            .is_none_or(|(old, _)| *old != service);
        if changed || resend == Resend::Always {
            inner.pending.service_changed(&id);
            if service.enable_tag_override {
                // The catalog's tags win for this service, so writing it means reading
                // them first: a full pass does.
                inner.pending.full = true;
            }
        }
        inner.service_keys.insert(fold(&id), id.clone());
        inner.services.insert(id.clone(), (service, source));
        if replace_existing_checks {
            let stale: Vec<String> = inner
                .service_checks
                .get(&id)
                .into_iter()
                .flatten()
                .filter(|cid| !checks.iter().any(|n| &n.id == *cid))
                // Maintenance is switched off only by asking for it: a reload or a
                // re-registration replacing the service's checks keeps it.
                .filter(|cid| {
                    inner
                        .checks
                        .get(*cid)
                        .is_none_or(|c| c.def.kind != CheckKind::Maintenance)
                })
                .cloned()
                .collect();
            for cid in stale {
                self.take_check(inner, &cid);
            }
        }
        for mut check in checks {
            check.service_id = id.clone();
            self.put_check(inner, check, source, resend);
        }
    }

    /// Removes a service and its checks. Unknown IDs are a no-op, as in Consul.
    pub fn deregister_service(&self, id: &str) {
        let mut inner = self.lock();
        if self.take_service(&mut inner, id) {
            drop(inner);
            self.touch();
        }
    }

    fn take_service(&self, inner: &mut Inner, id: &str) -> bool {
        if inner.services.remove(id).is_none() {
            return false;
        }
        let key = fold(id);
        if inner.service_keys.get(&key).is_some_and(|k| k == id) {
            inner.service_keys.remove(&key);
        }
        inner.pending.service_removed(id);
        for cid in inner.service_checks.remove(id).unwrap_or_default() {
            self.take_check(inner, &cid);
        }
        true
    }

    /// Adds or replaces a check.
    pub fn register_check(&self, check: CheckDefinition, source: Source) -> Result<(), LocalError> {
        let mut inner = self.lock();
        self.checked_check(&inner, &check, &BTreeSet::new())?;
        if !check.service_id.is_empty() && !inner.services.contains_key(&check.service_id) {
            return Err(LocalError::UnknownService(check.service_id));
        }
        self.put_check(&mut inner, check, source, Resend::Always);
        drop(inner);
        self.touch();
        Ok(())
    }

    /// Stores a checked check and (re)starts its runner, under the caller's lock so a
    /// concurrent removal cannot leave a runner behind.
    fn put_check(&self, inner: &mut Inner, def: CheckDefinition, source: Source, resend: Resend) {
        let id = def.id.clone();
        let kind = def.kind.clone();
        let ttl_expires = match &def.kind {
            CheckKind::Ttl { ttl } => Some(Instant::now() + *ttl),
            _ => None,
        };
        let before = inner.checks.get(&id).map(|c| to_catalog_check(inner, c));
        let (status, output) = match inner.checks.get(&id) {
            // Re-registering the same check keeps its last result, as Consul does.
            Some(old) if old.def.kind == def.kind => (old.status, old.output.clone()),
            _ => (def.status, String::new()),
        };
        if let Some(old) = inner.checks.get(&id)
            && old.def.service_id != def.service_id
            && let Some(set) = inner.service_checks.get_mut(&old.def.service_id)
        {
            set.remove(&id);
            if set.is_empty() {
                inner.service_checks.remove(&old.def.service_id);
            }
        }
        if !def.service_id.is_empty() {
            inner
                .service_checks
                .entry(def.service_id.clone())
                .or_default()
                .insert(id.clone());
        }
        inner.check_keys.insert(fold(&id), id.clone());
        let check = LocalCheck {
            def,
            status,
            output,
            source,
            ttl_expires,
        };
        let after = to_catalog_check(inner, &check);
        self.note_maintenance(&id, Some(&check.def));
        inner.checks.insert(id.clone(), check);
        let changed = before.is_none_or(|b| !same_check(&b, &after));
        if changed || resend == Resend::Always {
            inner.pending.check_changed(&id);
        }
        self.runner.start(id, kind, Arc::new(self.clone()));
    }

    /// Removes a check. Unknown IDs are a no-op.
    pub fn deregister_check(&self, id: &str) {
        let mut inner = self.lock();
        if self.take_check(&mut inner, id) {
            drop(inner);
            self.touch();
        }
    }

    fn take_check(&self, inner: &mut Inner, id: &str) -> bool {
        self.runner.stop(id);
        let Some(check) = inner.checks.remove(id) else {
            return false;
        };
        self.note_maintenance(id, None);
        let key = fold(id);
        if inner.check_keys.get(&key).is_some_and(|k| k == id) {
            inner.check_keys.remove(&key);
        }
        let service_id = &check.def.service_id;
        if let Some(set) = inner.service_checks.get_mut(service_id) {
            set.remove(id);
            if set.is_empty() {
                inner.service_checks.remove(service_id);
            }
        }
        inner.pending.check_removed(id, service_id);
        true
    }

    /// Sets a TTL check's status (`/v1/agent/check/pass|warn|fail|update`) and restarts
    /// its timer. Only a new status or output is sent to the catalog.
    pub fn update_ttl(&self, id: &str, status: Health, output: String) -> Result<(), LocalError> {
        let changed = {
            let mut inner = self.lock();
            let Inner {
                checks, pending, ..
            } = &mut *inner;
            let check = checks
                .get_mut(id)
                .ok_or_else(|| LocalError::UnknownCheck(id.to_owned()))?;
            let CheckKind::Ttl { ttl } = check.def.kind else {
                return Err(LocalError::NotTtl(id.to_owned()));
            };
            let output = truncate_output(output, check.def.output_max_size);
            let changed = check.status != status || check.output != output;
            check.status = status;
            check.output = output;
            check.ttl_expires = Some(Instant::now() + ttl);
            if changed {
                pending.check_changed(id);
            }
            changed
        };
        self.runner.wake(id);
        if changed {
            self.touch();
        }
        Ok(())
    }

    /// Records the result of a check run. Ignored when the check was removed meanwhile.
    ///
    /// A new status is synced to the catalog at once; new output with the same status
    /// waits for the next full pass, as Consul's `check_update_interval` holds back
    /// output-only changes, so a check whose output varies (a timestamp, a counter) does
    /// not write to Raft on every run.
    pub(crate) fn record(&self, id: &str, status: Health, output: String) {
        let status_changed = {
            let mut inner = self.lock();
            let Inner {
                checks, pending, ..
            } = &mut *inner;
            match checks.get_mut(id) {
                Some(c) => {
                    let output = truncate_output(output, c.def.output_max_size);
                    let status_changed = c.status != status;
                    c.status = status;
                    c.output = output;
                    if status_changed {
                        pending.check_changed(id);
                    }
                    status_changed
                }
                None => false,
            }
        };
        if status_changed {
            self.touch();
        }
    }

    /// When the TTL check `id` expires, if it is still counting down.
    pub(crate) fn ttl_expiry(&self, id: &str) -> Option<Option<Instant>> {
        self.lock().checks.get(id).map(|c| c.ttl_expires)
    }

    /// Marks the TTL check critical if `expired_at` is still its expiry.
    pub(crate) fn expire_ttl(&self, id: &str, expired_at: Instant) {
        let changed = {
            let mut inner = self.lock();
            let Inner {
                checks, pending, ..
            } = &mut *inner;
            match checks.get_mut(id) {
                Some(c) if c.ttl_expires == Some(expired_at) => {
                    const EXPIRED: &str = "TTL expired";
                    let changed = c.status != Health::Critical || c.output != EXPIRED;
                    c.ttl_expires = None;
                    c.status = Health::Critical;
                    c.output = EXPIRED.into();
                    if changed {
                        pending.check_changed(id);
                    }
                    changed
                }
                _ => false,
            }
        };
        if changed {
            self.touch();
        }
    }

    /// Replaces every definition that came from config files with `services` and `checks`
    /// (a reload). API registrations stay. Everything is checked first: a refused
    /// definition leaves the agent exactly as it was. Only what the reload changed is
    /// sent to the catalog.
    pub fn replace_config(
        &self,
        services: Vec<(Service, Vec<CheckDefinition>)>,
        checks: Vec<CheckDefinition>,
    ) -> Result<(), LocalError> {
        let mut inner = self.lock();
        let old_services: Vec<String> = inner
            .services
            .iter()
            .filter(|(_, (_, src))| *src == Source::Config)
            .map(|(id, _)| id.clone())
            .collect();
        let old_checks: Vec<String> = inner
            .checks
            .iter()
            .filter(|(_, c)| c.source == Source::Config)
            .map(|(id, _)| id.clone())
            .collect();
        let replacing: BTreeSet<String> = old_services.iter().chain(&old_checks).cloned().collect();
        let mut checked = Vec::with_capacity(services.len());
        for (service, service_checks) in services {
            let service = self.checked_service(&inner, service, &service_checks, &replacing)?;
            checked.push((service, service_checks));
        }
        let new_service_ids: BTreeSet<String> = checked.iter().map(|(s, _)| s.id.clone()).collect();
        for check in &checks {
            self.checked_check(&inner, check, &replacing)?;
            let known = check.service_id.is_empty()
                || new_service_ids.contains(&check.service_id)
                || inner
                    .services
                    .get(&check.service_id)
                    .is_some_and(|(_, src)| *src == Source::Api);
            if !known {
                return Err(LocalError::UnknownService(check.service_id.clone()));
            }
        }
        let new_check_ids: BTreeSet<String> = checked
            .iter()
            .flat_map(|(_, cs)| cs.iter().map(|c| c.id.clone()))
            .chain(checks.iter().map(|c| c.id.clone()))
            .collect();
        for id in &old_checks {
            if !new_check_ids.contains(id) {
                self.take_check(&mut inner, id);
            }
        }
        for id in &old_services {
            if !new_service_ids.contains(id) {
                self.take_service(&mut inner, id);
            }
        }
        for (service, service_checks) in checked {
            self.put_service(
                &mut inner,
                service,
                service_checks,
                Source::Config,
                true,
                Resend::IfChanged,
            );
        }
        for check in checks {
            self.put_check(&mut inner, check, Source::Config, Resend::IfChanged);
        }
        drop(inner);
        self.touch();
        Ok(())
    }

    /// The services, by ID.
    pub fn services(&self) -> Vec<Service> {
        self.lock()
            .services
            .values()
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// One service.
    pub fn service(&self, id: &str) -> Option<Service> {
        self.lock().services.get(id).map(|(s, _)| s.clone())
    }

    /// The checks with their current status, as the catalog will hold them.
    pub fn checks(&self) -> Vec<Check> {
        let inner = self.lock();
        inner
            .checks
            .values()
            .map(|c| to_catalog_check(&inner, c))
            .collect()
    }

    /// Waits until something changed since the last call.
    async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Whether the next pass must compare everything with the catalog.
    pub(crate) fn full_due(&self) -> bool {
        self.lock().pending.full
    }

    /// Makes the next pass a full one.
    pub(crate) fn request_full(&self) {
        self.lock().pending.full = true;
    }

    /// The writes for what changed since it was last written, or `None` when the next
    /// pass must be a full one. Looks only at pending entries: its cost is the number of
    /// changes, whatever the number of services and checks.
    pub(crate) fn plan_changes(&self) -> Option<Plan> {
        let mut inner = self.lock();
        if inner.pending.full {
            return None;
        }
        let inner = &mut *inner;
        let pending = &inner.pending;
        let node = &inner.node;
        let mut examined = 0;
        let mut writes = Vec::new();
        for (id, &generation) in &pending.services {
            examined += 1;
            let (service, _) = inner
                .services
                .get(id)
                .expect("a pending service is a local one (removal moves it)");
            writes.push(Write {
                command: register_service(node, service.clone()),
                settles: Settles::Service(id.clone(), generation),
            });
        }
        for (id, &generation) in &pending.removed_services {
            examined += 1;
            writes.push(Write {
                command: deregister(node, Some(id.clone()), None),
                settles: Settles::ServiceRemoval(id.clone(), generation),
            });
        }
        for (id, &generation) in &pending.checks {
            examined += 1;
            let check = inner
                .checks
                .get(id)
                .expect("a pending check is a local one (removal moves it)");
            writes.push(Write {
                command: register_check(node, to_catalog_check(inner, check)),
                settles: Settles::Check(id.clone(), generation),
            });
        }
        let mut gone_with_service = Vec::new();
        for (id, (generation, service_id)) in &pending.removed_checks {
            examined += 1;
            // Checks of a service that is being removed go with their service.
            if !service_id.is_empty() && !inner.services.contains_key(service_id) {
                gone_with_service.push(id.clone());
                continue;
            }
            writes.push(Write {
                command: deregister(node, None, Some(id.clone())),
                settles: Settles::CheckRemoval(id.clone(), *generation),
            });
        }
        for id in gone_with_service {
            inner.pending.removed_checks.remove(&id);
        }
        Some(Plan {
            full: false,
            examined,
            writes,
        })
    }

    /// The writes that make the catalog's copy of this node (`remote`, as just read)
    /// match the agent's, comparing entries by ID through maps. Everything pending is
    /// covered, so it is cleared.
    pub(crate) fn plan_full(&self, remote: Remote) -> Plan {
        let remote_services: HashMap<String, &Service> =
            remote.services.iter().map(|s| (fold(&s.id), s)).collect();
        let remote_checks: HashMap<String, &Check> = remote
            .checks
            .iter()
            .map(|c| (fold(&c.check_id), c))
            .collect();
        let mut inner = self.lock();
        inner.pending.clear();
        let inner = &*inner;
        let node = &inner.node;
        let mut examined = 1;
        let mut writes = Vec::new();
        let mut write = |command| {
            writes.push(Write {
                command,
                settles: Settles::Nothing,
            });
        };

        if !remote.node.as_ref().is_some_and(|r| same_node(node, r)) {
            write(Command::Register(Registration {
                node: node.clone(),
                skip_node_update: false,
                service: None,
                checks: Vec::new(),
            }));
        }
        for (service, _) in inner.services.values() {
            examined += 1;
            let theirs = remote_services.get(&fold(&service.id)).copied();
            if !theirs.is_some_and(|r| same_service(service, r)) {
                let mut wanted = service.clone();
                if wanted.enable_tag_override
                    && let Some(r) = theirs
                {
                    wanted.tags = r.tags.clone();
                }
                write(register_service(node, wanted));
            }
        }
        for theirs in &remote.services {
            examined += 1;
            let ours = inner.service_keys.contains_key(&fold(&theirs.id));
            if !ours && theirs.id != CONSUL_SERVICE {
                write(deregister(node, Some(theirs.id.clone()), None));
            }
        }
        for check in inner.checks.values() {
            examined += 1;
            let check = to_catalog_check(inner, check);
            let theirs = remote_checks.get(&fold(&check.check_id));
            if !theirs.is_some_and(|r| same_check(&check, r)) {
                write(register_check(node, check));
            }
        }
        for theirs in &remote.checks {
            examined += 1;
            let ours = inner.check_keys.contains_key(&fold(&theirs.check_id));
            // Checks of services that are being removed go with their service.
            let service_gone = !theirs.service_id.is_empty()
                && !inner.service_keys.contains_key(&fold(&theirs.service_id));
            if !ours && theirs.check_id != SERF_HEALTH_CHECK && !service_gone {
                write(deregister(node, None, Some(theirs.check_id.clone())));
            }
        }
        Plan {
            full: true,
            examined,
            writes,
        }
    }

    /// Records that the catalog took a write, or refused it (`refused`). Either way the
    /// entry stops being pending unless it changed again meanwhile: a refused command
    /// would be refused again. A refusal in a changes pass usually means the catalog lost
    /// something this write relied on (the check's service, the node), so the next pass
    /// is a full one, which repairs that first.
    pub(crate) fn settle(&self, settles: &Settles, refused: bool) {
        let mut inner = self.lock();
        inner.pending.settle(settles);
        if refused && *settles != Settles::Nothing {
            inner.pending.full = true;
        }
    }
}

fn register_service(node: &Node, service: Service) -> Command {
    Command::Register(Registration {
        node: node.clone(),
        skip_node_update: true,
        service: Some(service),
        checks: Vec::new(),
    })
}

fn register_check(node: &Node, check: Check) -> Command {
    Command::Register(Registration {
        node: node.clone(),
        skip_node_update: true,
        service: None,
        checks: vec![check],
    })
}

fn deregister(node: &Node, service_id: Option<String>, check_id: Option<String>) -> Command {
    Command::Deregister(Deregistration {
        node: node.name.clone(),
        service_id,
        check_id,
    })
}

fn to_catalog_check(inner: &Inner, c: &LocalCheck) -> Check {
    let (service_name, service_tags) = inner
        .services
        .get(&c.def.service_id)
        .map(|(s, _)| (s.name.clone(), s.tags.clone()))
        .unwrap_or_default();
    let (check_type, interval, timeout) = c.def.kind.describe();
    Check {
        node: inner.node.name.clone(),
        check_id: c.def.id.clone(),
        name: c.def.name.clone(),
        status: c.status,
        notes: c.def.notes.clone(),
        output: c.output.clone(),
        service_id: c.def.service_id.clone(),
        service_name,
        service_tags,
        check_type: check_type.into(),
        interval,
        timeout,
        create_index: 0,
        modify_index: 0,
    }
}

/// Back-off after a failed sync, doubling up to [`SYNC_RETRY_MAX`].
const SYNC_RETRY_MIN: Duration = Duration::from_millis(250);
const SYNC_RETRY_MAX: Duration = Duration::from_secs(15);
/// Budget of one catalog read or write made by the sync.
const SYNC_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many [`SYNC_INTERVAL`]s the random spread of full passes covers in a pool of
/// `members`: one up to [`SYNC_SCALE_THRESHOLD`], one more each time the pool doubles.
fn pool_scale(members: usize) -> u32 {
    let mut scale = 1;
    let mut covered = SYNC_SCALE_THRESHOLD;
    while covered < members {
        covered = covered.saturating_mul(2);
        scale += 1;
    }
    scale
}

/// The wait from one full pass to the next: `interval`, plus `unit` (a random number in
/// `[0, 1)`) of the spread for a pool of `members`, so that the agents of a large pool
/// do not all read the catalog at once.
fn full_sync_delay(interval: Duration, members: usize, unit: f64) -> Duration {
    interval + interval.mul_f64(f64::from(pool_scale(members)) * unit.clamp(0.0, 1.0))
}

/// The catalog as anti-entropy reaches it (a server of this datacenter, or this one),
/// and the pool whose servers and size time its full passes.
pub(crate) trait Upstream: Send + Sync + 'static {
    /// Reads the catalog.
    fn read(
        &self,
        query: &Query,
        options: ReadOptions,
    ) -> impl Future<Output = Result<QueryResult, ReadError>> + Send;
    /// Writes to the catalog.
    fn write(
        &self,
        command: Command,
        deadline: Instant,
    ) -> impl Future<Output = Result<u64, WriteError>> + Send;
    /// The LAN pool's members and every change of them.
    fn subscribe_members(&self) -> watch::Receiver<Arc<Vec<Member>>>;
}

/// Runs anti-entropy of `local` against `upstream` until `shutdown`: a changes pass after
/// every local change, a full pass at start, when the live servers change and every
/// [`full_sync_delay`] after `interval`.
pub(crate) async fn run_sync(
    upstream: impl Upstream,
    local: Local,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut members = upstream.subscribe_members();
    let mut servers = live_servers(&members.borrow_and_update());
    let mut retry = SYNC_RETRY_MIN;
    let next_full_after = |members: &watch::Receiver<Arc<Vec<Member>>>| {
        let size = members.borrow().len();
        Instant::now() + full_sync_delay(interval, size, rand::random())
    };
    let mut next_full = next_full_after(&members);
    loop {
        match sync_once(&local, &upstream).await {
            Err(e) => {
                tracing::debug!(error = %e, "anti-entropy sync failed, will retry");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(SYNC_RETRY_MAX);
                continue;
            }
            Ok(pass) => {
                retry = SYNC_RETRY_MIN;
                tracing::debug!(
                    full = pass.full,
                    examined = pass.examined,
                    writes = pass.writes,
                    refused = pass.refused,
                    "anti-entropy pass done"
                );
                if pass.full {
                    next_full = next_full_after(&members);
                }
            }
        }
        if local.full_due() {
            // A change the catalog refused asks for a full pass at once.
            continue;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = local.changed() => break,
                _ = tokio::time::sleep_until(next_full) => {
                    local.request_full();
                    break;
                }
                changed = members.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // A server that joins (or this agent rejoining after a leave, which
                    // removed its node) gets a full sync at once, as Consul's agent does.
                    let now = live_servers(&members.borrow_and_update());
                    if now != servers {
                        servers = now;
                        local.request_full();
                        break;
                    }
                }
            }
        }
    }
}

/// The names of the live servers among `members`.
fn live_servers(members: &[gossip::Member]) -> Vec<String> {
    members
        .iter()
        .filter(|m| m.is_server() && m.status == gossip::MemberStatus::Alive)
        .map(|m| m.name.clone())
        .collect()
}

fn same_service(a: &Service, b: &Service) -> bool {
    let strip = |s: &Service| Service {
        create_index: 0,
        modify_index: 0,
        ..s.clone()
    };
    let (a, b) = (strip(a), strip(b));
    if a.enable_tag_override {
        // The catalog's tags win for this service (Consul's enable_tag_override).
        Service {
            tags: b.tags.clone(),
            ..a
        } == b
    } else {
        a == b
    }
}

fn same_check(a: &Check, b: &Check) -> bool {
    a.name == b.name
        && a.status == b.status
        && a.notes == b.notes
        && a.output == b.output
        && a.service_id.eq_ignore_ascii_case(&b.service_id)
        && a.check_type == b.check_type
        && a.interval == b.interval
        && a.timeout == b.timeout
}

fn same_node(a: &Node, b: &Node) -> bool {
    a.id == b.id
        && a.address == b.address
        && a.datacenter == b.datacenter
        && a.tagged_addresses == b.tagged_addresses
        && a.meta == b.meta
}

/// What one pass did, for the log.
#[derive(Debug, Clone, Copy)]
struct PassReport {
    full: bool,
    examined: usize,
    writes: usize,
    refused: usize,
}

/// One anti-entropy pass: the pending changes, or a full comparison when one is due.
async fn sync_once(local: &Local, upstream: &impl Upstream) -> Result<PassReport, SyncError> {
    let plan = match local.plan_changes() {
        Some(plan) => plan,
        None => local.plan_full(read_remote(local, upstream).await?),
    };
    let full = plan.full;
    let result = write_plan(local, upstream, plan).await;
    if result.is_err() && full {
        // What the full pass cleared is known again only by comparing.
        local.request_full();
    }
    result
}

/// This node's services and checks as the catalog holds them.
async fn read_remote(local: &Local, upstream: &impl Upstream) -> Result<Remote, SyncError> {
    let node = local.node().name;
    let options = || ReadOptions {
        consistency: Consistency::Default,
        min_index: 0,
        deadline: Instant::now() + SYNC_WRITE_TIMEOUT,
        max_stale: None,
        principal: Principal::Agent,
    };
    let by_node = Query::NodeServices { node: node.clone() };
    let checks_query = Query::NodeChecks { node };
    let node_services = match upstream.read(&by_node, options()).await?.answer {
        Answer::NodeServices(ns) => ns,
        _ => None,
    };
    let checks = match upstream.read(&checks_query, options()).await?.answer {
        Answer::Checks(c) => c.into_iter().map(Arc::unwrap_or_clone).collect(),
        _ => Vec::new(),
    };
    Ok(match node_services {
        Some(ns) => Remote {
            node: Some(Arc::unwrap_or_clone(ns.node)),
            services: ns.services.into_iter().map(Arc::unwrap_or_clone).collect(),
            checks,
        },
        None => Remote {
            node: None,
            services: Vec::new(),
            checks,
        },
    })
}

/// Makes the writes of `plan` in order, settling each one the catalog took or refused;
/// stops at the first that failed otherwise (its entry stays pending for the retry).
async fn write_plan(
    local: &Local,
    upstream: &impl Upstream,
    plan: Plan,
) -> Result<PassReport, SyncError> {
    let mut pass = PassReport {
        full: plan.full,
        examined: plan.examined,
        writes: 0,
        refused: 0,
    };
    for Write { command, settles } in plan.writes {
        pass.writes += 1;
        match upstream
            .write(command, Instant::now() + SYNC_WRITE_TIMEOUT)
            .await
        {
            Ok(_) => local.settle(&settles, false),
            // A refused command will be refused again; log it and move on so one bad
            // entry does not block the others.
            Err(WriteError::Rejected(e)) => {
                tracing::warn!(error = %e, "catalog refused an anti-entropy update");
                pass.refused += 1;
                local.settle(&settles, true);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(pass)
}

/// Why an anti-entropy pass stopped; the next pass retries.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl Reports for Local {
    fn record(&self, id: &str, status: Health, output: String) {
        Local::record(self, id, status, output);
    }

    fn ttl_expiry(&self, id: &str) -> Option<Option<Instant>> {
        Local::ttl_expiry(self, id)
    }

    fn expire_ttl(&self, id: &str, expired_at: Instant) {
        Local::expire_ttl(self, id, expired_at);
    }
}

#[cfg(test)]
mod tests;
