//! ACL replication: the leader of a secondary datacenter keeps a copy of the primary's
//! policies, roles and (with `acl.enable_token_replication`) global tokens, so that
//! tokens made in the primary work here, and keep working while the primary is away.
//!
//! One follower per kind, each as KV replication does it: a blocking read of the
//! primary's list (over the WAN, with the replication token), a comparison with the
//! local copy by ID, and the differences written as one [`AclWrite::Replicate`] entry
//! per chunk (deletions first). A new leader, a restart or a healed partition starts
//! with a full comparison; an index that goes backwards starts over. Local tokens of
//! either datacenter are never copied nor deleted. A revocation in the primary reaches
//! the secondary within one round trip plus one local write, or, when the primary
//! cannot be reached, as soon as it can.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use catalog::acl::{AclAnswer, AclRead, AclWrite, HIDDEN_SECRET, Policy, Role, Token};
use catalog::{Answer, Command, Consistency, Principal, Query, ReadOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Gateway;

/// How long one blocking read of the primary waits for a change.
const FOLLOW_WAIT: Duration = Duration::from_secs(60);
/// Budget of a local read or write.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(10);
/// First and longest pause after a failed round (Consul backs off to 64 s).
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(64);
/// How often a server that does not lead looks again.
const IDLE: Duration = Duration::from_secs(1);
/// Most objects in one log entry.
const CHUNK: usize = 256;

/// What is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Policies,
    Roles,
    Tokens,
}

impl Kind {
    /// Consul's `leader.replication.acl-<kind>.status`: 1 while the last round
    /// succeeded, else 0.
    fn status_series(self) -> &'static str {
        match self {
            Kind::Policies => "leader.replication.acl-policies.status",
            Kind::Roles => "leader.replication.acl-roles.status",
            Kind::Tokens => "leader.replication.acl-tokens.status",
        }
    }

    /// Consul's `leader.replication.acl-<kind>.index`: the primary's index reached.
    fn index_series(self) -> &'static str {
        match self {
            Kind::Policies => "leader.replication.acl-policies.index",
            Kind::Roles => "leader.replication.acl-roles.index",
            Kind::Tokens => "leader.replication.acl-tokens.index",
        }
    }
}

/// Where ACL replication stands on this server (`/v1/acl/replication`).
#[derive(Debug)]
pub struct AclReplicationStatus {
    source: String,
    tokens: bool,
    state: Mutex<BTreeMap<Kind, KindState>>,
}

#[derive(Debug, Clone, Default)]
struct KindState {
    running: bool,
    index: u64,
    last_success: Option<SystemTime>,
    last_error: Option<SystemTime>,
    last_error_message: String,
}

/// A snapshot of the status, in Consul's fields.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AclReplicationReport {
    /// Replication is configured here (a secondary).
    pub enabled: bool,
    /// This server runs it now (it leads).
    pub running: bool,
    /// The primary datacenter.
    pub source_datacenter: String,
    /// `policies`, or `tokens` when tokens are copied too.
    pub replication_type: String,
    /// The primary's policy index reached.
    pub replicated_index: u64,
    /// The primary's role index reached.
    pub replicated_role_index: u64,
    /// The primary's token index reached.
    pub replicated_token_index: u64,
    /// When every kind last succeeded (RFC 3339; the zero time when never).
    pub last_success: String,
    /// When a kind last failed (RFC 3339; the zero time when never).
    pub last_error: String,
    /// Why.
    pub last_error_message: String,
}

/// Go's zero time, as Consul reports "never".
const NEVER: &str = "0001-01-01T00:00:00Z";

impl AclReplicationStatus {
    /// The status in Consul's shape.
    pub fn report(&self) -> AclReplicationReport {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let of = |k: Kind| state.get(&k).cloned().unwrap_or_default();
        let kinds: Vec<KindState> = state.values().cloned().collect();
        let success = kinds
            .iter()
            .map(|k| k.last_success)
            .collect::<Option<Vec<_>>>()
            .and_then(|all| all.into_iter().min());
        let error = kinds.iter().filter_map(|k| k.last_error).max();
        let message = kinds
            .iter()
            .filter(|k| k.last_error.is_some() && k.last_error == error)
            .map(|k| k.last_error_message.clone())
            .next()
            .unwrap_or_default();
        AclReplicationReport {
            enabled: true,
            running: kinds.iter().any(|k| k.running),
            source_datacenter: self.source.clone(),
            replication_type: if self.tokens { "tokens" } else { "policies" }.into(),
            replicated_index: of(Kind::Policies).index,
            replicated_role_index: of(Kind::Roles).index,
            replicated_token_index: of(Kind::Tokens).index,
            last_success: success.map_or(NEVER.into(), catalog::clock::rfc3339),
            last_error: error.map_or(NEVER.into(), catalog::clock::rfc3339),
            last_error_message: message,
        }
    }

    fn update(&self, kind: Kind, f: impl FnOnce(&mut KindState)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(state.entry(kind).or_default());
    }
}

/// Starts copying the ACL tables of `source` (the primary) into this datacenter,
/// reading with `token` (the replication token), on this server whenever it leads.
pub fn start(
    gateway: Gateway,
    source: String,
    token: Option<String>,
    tokens: bool,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Arc<AclReplicationStatus> {
    let mut kinds = vec![Kind::Policies, Kind::Roles];
    if tokens {
        kinds.push(Kind::Tokens);
    }
    let status = Arc::new(AclReplicationStatus {
        source: source.clone(),
        tokens,
        state: Mutex::new(kinds.iter().map(|k| (*k, KindState::default())).collect()),
    });
    let principal = Principal::from_wire(token);
    for kind in kinds {
        tasks.spawn(follow(
            gateway.clone(),
            source.clone(),
            principal.clone(),
            kind,
            status.clone(),
            shutdown.clone(),
        ));
    }
    status
}

async fn follow(
    gateway: Gateway,
    source: String,
    principal: Principal,
    kind: Kind,
    status: Arc<AclReplicationStatus>,
    shutdown: CancellationToken,
) {
    let mut last = 0;
    let mut retry = RETRY_MIN;
    loop {
        if !gateway.lan().is_leader() {
            last = 0;
            status.update(kind, |k| k.running = false);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(IDLE) => continue,
            }
        }
        let round = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = round(&gateway, &source, &principal, kind, last) => r,
        };
        match round {
            Ok(index) => {
                retry = RETRY_MIN;
                last = index;
                metrics::gauge!(kind.status_series()).set(1.0);
                metrics::gauge!(kind.index_series()).set(index as f64);
                status.update(kind, |k| {
                    k.running = true;
                    k.index = index;
                    k.last_success = Some(SystemTime::now());
                });
            }
            Err(why) => {
                tracing::warn!(kind = ?kind, source = %source, error = %why, "ACL replication round failed; will retry");
                metrics::gauge!(kind.status_series()).set(0.0);
                status.update(kind, |k| {
                    k.last_error = Some(SystemTime::now());
                    k.last_error_message = why;
                });
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// The objects of one kind, by ID, with what replication compares (indexes left out).
enum Objects {
    Policies(BTreeMap<String, Policy>),
    Roles(BTreeMap<String, Role>),
    Tokens(BTreeMap<String, Token>),
}

fn objects(answer: Answer, kind: Kind) -> Result<Objects, String> {
    let Answer::Acl(answer) = answer else {
        return Err(format!("unexpected answer to an ACL list: {answer:?}"));
    };
    Ok(match (kind, answer) {
        (Kind::Policies, AclAnswer::Policies(list)) => Objects::Policies(
            list.into_iter()
                .map(|mut p| {
                    (p.create_index, p.modify_index) = (0, 0);
                    (p.id.clone(), p)
                })
                .collect(),
        ),
        (Kind::Roles, AclAnswer::Roles(list)) => Objects::Roles(
            list.into_iter()
                .map(|mut r| {
                    (r.create_index, r.modify_index) = (0, 0);
                    (r.id.clone(), r)
                })
                .collect(),
        ),
        (Kind::Tokens, AclAnswer::Tokens(list)) => Objects::Tokens(
            list.into_iter()
                .filter(|t| !t.local)
                .map(|mut t| {
                    (t.create_index, t.modify_index) = (0, 0);
                    (t.accessor_id.clone(), t)
                })
                .collect(),
        ),
        (kind, other) => return Err(format!("unexpected answer to a {kind:?} list: {other:?}")),
    })
}

fn list_of(kind: Kind) -> Query {
    Query::Acl(match kind {
        Kind::Policies => AclRead::Policies,
        Kind::Roles => AclRead::Roles,
        Kind::Tokens => AclRead::Tokens {
            policy: None,
            role: None,
            service_name: None,
        },
    })
}

/// Upserts and deletions that make `local` what `remote` is.
fn differences<T: PartialEq + Clone>(
    remote: &BTreeMap<String, T>,
    local: &BTreeMap<String, T>,
) -> (Vec<T>, Vec<String>) {
    let upserts = remote
        .iter()
        .filter(|(id, r)| local.get(*id) != Some(r))
        .map(|(_, r)| r.clone())
        .collect();
    let deletes = local
        .keys()
        .filter(|id| !remote.contains_key(*id))
        .cloned()
        .collect();
    (upserts, deletes)
}

/// Waits for the primary's list to move past `last` (or the wait to end), then brings
/// the local copy in line; the primary's index reached.
async fn round(
    gateway: &Gateway,
    source: &str,
    principal: &Principal,
    kind: Kind,
    last: u64,
) -> Result<u64, String> {
    let query = list_of(kind);
    let options = ReadOptions {
        consistency: Consistency::Stale,
        min_index: last,
        deadline: Instant::now() + FOLLOW_WAIT,
        max_stale: None,
        principal: principal.clone(),
    };
    let remote = gateway
        .read(Some(source), &query, options)
        .await
        .map_err(|e| format!("reading the {kind:?} of {source}: {e}"))?;
    let index = remote.index;
    let remote = objects(remote.answer, kind)?;
    let local_options = ReadOptions {
        consistency: Consistency::Default,
        min_index: 0,
        deadline: Instant::now() + LOCAL_TIMEOUT,
        max_stale: None,
        principal: Principal::Agent,
    };
    let local = gateway
        .lan()
        .read(&query, local_options)
        .await
        .map_err(|e| format!("reading the local {kind:?}: {e}"))?;
    let local = objects(local.answer, kind)?;
    let writes = match (remote, local) {
        (Objects::Policies(r), Objects::Policies(l)) => {
            let (up, del) = differences(&r, &l);
            chunks(up, del, |policies, delete_policies| AclWrite::Replicate {
                policies,
                roles: vec![],
                tokens: vec![],
                delete_policies,
                delete_roles: vec![],
                delete_tokens: vec![],
            })
        }
        (Objects::Roles(r), Objects::Roles(l)) => {
            let (up, del) = differences(&r, &l);
            chunks(up, del, |roles, delete_roles| AclWrite::Replicate {
                policies: vec![],
                roles,
                tokens: vec![],
                delete_policies: vec![],
                delete_roles,
                delete_tokens: vec![],
            })
        }
        (Objects::Tokens(r), Objects::Tokens(l)) => {
            if r.values().any(|t| t.secret_id == HIDDEN_SECRET) {
                return Err("failed to retrieve unredacted tokens - replication token in use does not grant acl:write".into());
            }
            let (up, del) = differences(&r, &l);
            chunks(up, del, |tokens, delete_tokens| AclWrite::Replicate {
                policies: vec![],
                roles: vec![],
                tokens,
                delete_policies: vec![],
                delete_roles: vec![],
                delete_tokens,
            })
        }
        _ => return Err("mismatched ACL answers".into()),
    };
    for write in writes {
        gateway
            .lan()
            .write(
                Command::Acl(write),
                Instant::now() + LOCAL_TIMEOUT,
                &Principal::Agent,
            )
            .await
            .map_err(|e| format!("writing the copy of the {kind:?}: {e}"))?;
    }
    // An index that went back (the primary restored a snapshot) starts over.
    Ok(if index < last { 0 } else { index })
}

/// The writes that carry `upserts` and `deletes`, at most [`CHUNK`] objects each,
/// deletions first.
fn chunks<T>(
    upserts: Vec<T>,
    deletes: Vec<String>,
    write: impl Fn(Vec<T>, Vec<String>) -> AclWrite,
) -> Vec<AclWrite> {
    let mut out = Vec::new();
    for part in deletes.chunks(CHUNK) {
        out.push(write(Vec::new(), part.to_vec()));
    }
    let mut upserts = upserts.into_iter().peekable();
    while upserts.peek().is_some() {
        out.push(write(upserts.by_ref().take(CHUNK).collect(), Vec::new()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_what_changed_what_is_new_and_what_is_gone() {
        let remote: BTreeMap<String, u32> =
            [("a".into(), 1), ("b".into(), 2), ("c".into(), 3)].into();
        let local: BTreeMap<String, u32> =
            [("a".into(), 1), ("b".into(), 9), ("d".into(), 4)].into();
        let (up, del) = differences(&remote, &local);
        assert_eq!(up, [2, 3]);
        assert_eq!(del, ["d"]);
    }

    #[test]
    fn writes_come_in_chunks_with_deletions_first() {
        let writes = chunks(
            (0..600).collect::<Vec<u32>>(),
            vec!["x".into()],
            |up, del| AclWrite::Replicate {
                policies: vec![],
                roles: vec![],
                tokens: vec![],
                delete_policies: del,
                delete_roles: vec![],
                delete_tokens: up.iter().map(u32::to_string).collect(),
            },
        );
        assert_eq!(writes.len(), 4);
        assert!(
            matches!(&writes[0], AclWrite::Replicate { delete_policies, .. } if delete_policies == &["x"])
        );
        assert!(
            matches!(&writes[3], AclWrite::Replicate { delete_tokens, .. } if delete_tokens.len() == 88)
        );
        assert!(chunks(Vec::<u32>::new(), vec![], |_, _| unreachable!()).is_empty());
    }
}
