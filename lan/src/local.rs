//! This agent's own services and checks, and the anti-entropy sync that keeps the
//! catalog's copy of them in step.
//!
//! The agent is the authority for what runs on its node: services and checks registered
//! through config files or `/v1/agent/...` live here, health checks update them here, and
//! [`run_sync`] writes the difference to the catalog whenever something changes, and in
//! full every sync interval, so a catalog that lost or changed an entry is repaired.
//! Consul calls this anti-entropy. Entries the leader owns (`serfHealth`, and the `consul`
//! service of a server) are never touched by the sync.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::catalog::{
    Answer, Check, Command, Deregistration, Health, Node, Query, Registration, SERF_HEALTH_CHECK,
    Service,
};
use crate::checks::{CheckKind, Runner};
use crate::{Consistency, Lan, ReadOptions};

/// The most output a check keeps, in bytes, unless its `output_max_size` says otherwise
/// (Consul's default).
pub const CHECK_OUTPUT_MAX: usize = 4096;
/// The largest `output_max_size` accepted: check output is stored in the catalog, so it
/// must stay small.
pub const CHECK_OUTPUT_LIMIT: usize = 64 * 1024;

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
    /// The most output kept, in bytes (at most [`CHECK_OUTPUT_LIMIT`]).
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

#[derive(Debug)]
struct Inner {
    node: Node,
    services: BTreeMap<String, (Service, Source)>,
    checks: BTreeMap<String, LocalCheck>,
}

/// Handle to this agent's services and checks. Cheap to clone.
#[derive(Clone)]
pub struct Local {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
    runner: Runner,
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

impl Local {
    pub(crate) fn new(node: Node, runner: Runner) -> Local {
        Local {
            inner: Arc::new(Mutex::new(Inner {
                node,
                services: BTreeMap::new(),
                checks: BTreeMap::new(),
            })),
            changed: Arc::new(Notify::new()),
            runner,
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
        let service = self.checked_service(&inner, service, &checks, &[])?;
        self.put_service(&mut inner, service, checks, source, replace_existing_checks);
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
        replacing: &[String],
    ) -> Result<Service, LocalError> {
        if service.id.is_empty() {
            service.id = service.name.clone();
        }
        if service.id.eq_ignore_ascii_case(CONSUL_SERVICE) {
            return Err(LocalError::Reserved(service.id));
        }
        let clash = inner.services.keys().find(|other| {
            other.eq_ignore_ascii_case(&service.id)
                && **other != service.id
                && !replacing.contains(other)
        });
        if let Some(other) = clash {
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
        replacing: &[String],
    ) -> Result<(), LocalError> {
        if matches!(check.kind, CheckKind::Script { .. }) && !self.runner.scripts_enabled() {
            return Err(LocalError::ScriptsDisabled);
        }
        if check.id.eq_ignore_ascii_case(SERF_HEALTH_CHECK) {
            return Err(LocalError::Reserved(check.id.clone()));
        }
        let clash = inner.checks.keys().find(|other| {
            other.eq_ignore_ascii_case(&check.id)
                && **other != check.id
                && !replacing.contains(other)
        });
        if let Some(other) = clash {
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
    ) {
        let id = service.id.clone();
        inner.services.insert(id.clone(), (service, source));
        if replace_existing_checks {
            let stale: Vec<String> = inner
                .checks
                .iter()
                .filter(|(cid, c)| c.def.service_id == id && !checks.iter().any(|n| &n.id == *cid))
                .map(|(cid, _)| cid.clone())
                .collect();
            for cid in stale {
                self.take_check(inner, &cid);
            }
        }
        for mut check in checks {
            check.service_id = id.clone();
            self.put_check(inner, check, source);
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
        let checks: Vec<String> = inner
            .checks
            .iter()
            .filter(|(_, c)| c.def.service_id == id)
            .map(|(cid, _)| cid.clone())
            .collect();
        for cid in checks {
            self.take_check(inner, &cid);
        }
        true
    }

    /// Adds or replaces a check.
    pub fn register_check(&self, check: CheckDefinition, source: Source) -> Result<(), LocalError> {
        let mut inner = self.lock();
        self.checked_check(&inner, &check, &[])?;
        if !check.service_id.is_empty() && !inner.services.contains_key(&check.service_id) {
            return Err(LocalError::UnknownService(check.service_id));
        }
        self.put_check(&mut inner, check, source);
        drop(inner);
        self.touch();
        Ok(())
    }

    /// Stores a checked check and (re)starts its runner, under the caller's lock so a
    /// concurrent removal cannot leave a runner behind.
    fn put_check(&self, inner: &mut Inner, def: CheckDefinition, source: Source) {
        let id = def.id.clone();
        let kind = def.kind.clone();
        let ttl_expires = match &def.kind {
            CheckKind::Ttl { ttl } => Some(Instant::now() + *ttl),
            _ => None,
        };
        let (status, output) = match inner.checks.get(&id) {
            // Re-registering the same check keeps its last result, as Consul does.
            Some(old) if old.def.kind == def.kind => (old.status, old.output.clone()),
            _ => (def.status, String::new()),
        };
        inner.checks.insert(
            id.clone(),
            LocalCheck {
                def,
                status,
                output,
                source,
                ttl_expires,
            },
        );
        self.runner.start(id, kind, self.clone());
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
        inner.checks.remove(id).is_some()
    }

    /// Sets a TTL check's status (`/v1/agent/check/pass|warn|fail|update`) and restarts
    /// its timer.
    pub fn update_ttl(&self, id: &str, status: Health, output: String) -> Result<(), LocalError> {
        {
            let mut inner = self.lock();
            let check = inner
                .checks
                .get_mut(id)
                .ok_or_else(|| LocalError::UnknownCheck(id.to_owned()))?;
            let CheckKind::Ttl { ttl } = check.def.kind else {
                return Err(LocalError::NotTtl(id.to_owned()));
            };
            check.status = status;
            check.output = truncate_output(output, check.def.output_max_size);
            check.ttl_expires = Some(Instant::now() + ttl);
        }
        self.runner.wake(id);
        self.touch();
        Ok(())
    }

    /// Records the result of a check run. Ignored when the check was removed meanwhile.
    ///
    /// A new status is synced to the catalog at once; new output with the same status
    /// waits for the next full sync, as Consul's `check_update_interval` holds back
    /// output-only changes, so a check whose output varies (a timestamp, a counter) does
    /// not write to Raft on every run.
    pub(crate) fn record(&self, id: &str, status: Health, output: String) {
        let status_changed = {
            let mut inner = self.lock();
            match inner.checks.get_mut(id) {
                Some(c) => {
                    let output = truncate_output(output, c.def.output_max_size);
                    let status_changed = c.status != status;
                    c.status = status;
                    c.output = output;
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
            match inner.checks.get_mut(id) {
                Some(c) if c.ttl_expires == Some(expired_at) => {
                    c.ttl_expires = None;
                    c.status = Health::Critical;
                    c.output = "TTL expired".into();
                    true
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
    /// definition leaves the agent exactly as it was.
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
        let replacing: Vec<String> = old_services.iter().chain(&old_checks).cloned().collect();
        let mut checked = Vec::with_capacity(services.len());
        for (service, service_checks) in services {
            let service = self.checked_service(&inner, service, &service_checks, &replacing)?;
            checked.push((service, service_checks));
        }
        for check in &checks {
            self.checked_check(&inner, check, &replacing)?;
            let known = check.service_id.is_empty()
                || checked.iter().any(|(s, _)| s.id == check.service_id)
                || inner
                    .services
                    .get(&check.service_id)
                    .is_some_and(|(_, src)| *src == Source::Api);
            if !known {
                return Err(LocalError::UnknownService(check.service_id.clone()));
            }
        }
        let new_check_ids: Vec<&str> = checked
            .iter()
            .flat_map(|(_, cs)| cs.iter().map(|c| c.id.as_str()))
            .chain(checks.iter().map(|c| c.id.as_str()))
            .collect();
        for id in &old_checks {
            if !new_check_ids.contains(&id.as_str()) {
                self.take_check(&mut inner, id);
            }
        }
        for id in &old_services {
            if !checked.iter().any(|(s, _)| s.id == *id) {
                self.take_service(&mut inner, id);
            }
        }
        for (service, service_checks) in checked {
            self.put_service(&mut inner, service, service_checks, Source::Config, true);
        }
        for check in checks {
            self.put_check(&mut inner, check, Source::Config);
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

/// How often the sync compares everything, even when nothing local changed.
const SYNC_INTERVAL: Duration = Duration::from_secs(60);
/// Back-off after a failed sync, doubling up to [`SYNC_RETRY_MAX`].
const SYNC_RETRY_MIN: Duration = Duration::from_millis(250);
const SYNC_RETRY_MAX: Duration = Duration::from_secs(15);
/// Budget of one catalog write made by the sync.
const SYNC_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs anti-entropy until `shutdown`: after every local change, and every
/// [`SYNC_INTERVAL`], writes what differs between `local` and the catalog.
pub(crate) async fn run_sync(lan: Lan, shutdown: CancellationToken) {
    let local = lan.local().clone();
    let mut members = lan.subscribe_members();
    let mut servers = live_servers(&members.borrow_and_update());
    let mut retry = SYNC_RETRY_MIN;
    loop {
        if let Err(e) = sync_once(&local, &lan).await {
            tracing::debug!(error = %e, "anti-entropy sync failed, will retry");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(SYNC_RETRY_MAX);
            continue;
        }
        retry = SYNC_RETRY_MIN;
        let next_full = tokio::time::sleep(SYNC_INTERVAL);
        tokio::pin!(next_full);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = local.changed() => break,
                _ = &mut next_full => break,
                changed = members.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // A server that joins (or this agent rejoining after a leave, which
                    // removed its node) gets a full sync at once, as Consul's agent does.
                    let now = live_servers(&members.borrow_and_update());
                    if now != servers {
                        servers = now;
                        break;
                    }
                }
            }
        }
    }
}

/// The names of the live servers among `members`.
fn live_servers(members: &[crate::Member]) -> Vec<String> {
    members
        .iter()
        .filter(|m| m.is_server() && m.status == crate::MemberStatus::Alive)
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

/// One anti-entropy pass.
async fn sync_once(local: &Local, lan: &Lan) -> Result<(), SyncError> {
    let node = local.node();
    let services = local.services();
    let checks = local.checks();
    let deadline = || Instant::now() + SYNC_WRITE_TIMEOUT;
    let options = || ReadOptions {
        consistency: Consistency::Default,
        min_index: 0,
        deadline: deadline(),
        max_stale: None,
    };
    let by_node = Query::NodeServices {
        node: node.name.clone(),
    };
    let checks_query = Query::NodeChecks {
        node: node.name.clone(),
    };
    let node_services = match lan.read(&by_node, options()).await?.answer {
        Answer::NodeServices(ns) => ns,
        _ => None,
    };
    let remote_checks = match lan.read(&checks_query, options()).await?.answer {
        Answer::Checks(c) => c,
        _ => Vec::new(),
    };
    let (remote_node, remote_services) = match node_services {
        Some(ns) => (Some(ns.node), ns.services),
        None => (None, Vec::new()),
    };
    let mut writes = Vec::new();

    let node_ok = remote_node.as_ref().is_some_and(|r| same_node(&node, r));
    if !node_ok {
        writes.push(Command::Register(Registration {
            node: node.clone(),
            skip_node_update: false,
            service: None,
            checks: Vec::new(),
        }));
    }
    for service in &services {
        let remote = remote_services
            .iter()
            .find(|r| r.id.eq_ignore_ascii_case(&service.id));
        let mut wanted = service.clone();
        if wanted.enable_tag_override
            && let Some(r) = remote
        {
            wanted.tags = r.tags.clone();
        }
        if !remote.is_some_and(|r| same_service(service, r)) {
            writes.push(Command::Register(Registration {
                node: node.clone(),
                skip_node_update: true,
                service: Some(wanted),
                checks: Vec::new(),
            }));
        }
    }
    for remote in &remote_services {
        let ours = services
            .iter()
            .any(|s| s.id.eq_ignore_ascii_case(&remote.id));
        if !ours && remote.id != CONSUL_SERVICE {
            writes.push(Command::Deregister(Deregistration {
                node: node.name.clone(),
                service_id: Some(remote.id.clone()),
                check_id: None,
            }));
        }
    }
    for check in &checks {
        let remote = remote_checks
            .iter()
            .find(|r| r.check_id.eq_ignore_ascii_case(&check.check_id));
        if !remote.is_some_and(|r| same_check(check, r)) {
            writes.push(Command::Register(Registration {
                node: node.clone(),
                skip_node_update: true,
                service: None,
                checks: vec![check.clone()],
            }));
        }
    }
    for remote in &remote_checks {
        let ours = checks
            .iter()
            .any(|c| c.check_id.eq_ignore_ascii_case(&remote.check_id));
        // Checks of services that are being removed go with their service.
        let service_gone = !remote.service_id.is_empty()
            && !services
                .iter()
                .any(|s| s.id.eq_ignore_ascii_case(&remote.service_id));
        if !ours && remote.check_id != SERF_HEALTH_CHECK && !service_gone {
            writes.push(Command::Deregister(Deregistration {
                node: node.name.clone(),
                service_id: None,
                check_id: Some(remote.check_id.clone()),
            }));
        }
    }
    for command in writes {
        match lan.write(command, deadline()).await {
            Ok(_) => {}
            // A refused command will be refused again; log it and move on so one bad
            // entry does not block the others.
            Err(crate::WriteError::Rejected(e)) => {
                tracing::warn!(error = %e, "catalog refused an anti-entropy update");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Why an anti-entropy pass stopped; the next pass retries.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Read(#[from] crate::ReadError),
    #[error(transparent)]
    Write(#[from] crate::WriteError),
}
