//! KV replication: the leader of a datacenter keeps a copy of another datacenter's keys
//! under some prefixes (what Consul leaves to the separate consul-replicate daemon).
//!
//! For each prefix the leader follows the source datacenter over the WAN, through this
//! gateway, and writes what it learns (sets and deletes, never a key outside the prefix
//! or under an excluded one) as [`Command::KvReplicate`] entries. Rounds are of two
//! kinds, both reads of [`KvRead::Changes`]:
//!
//! ```text
//!   no index yet ──▶ full round: the whole prefix + the source's KV index K
//!        ▲              compare with the local copy, write the differences (key order)
//!        │              │
//!        │              ▼
//!        └─ unlisted ─ incremental round: blocking read of what changed after K
//!           (reaped,     (entries set, keys deleted), written in index order;
//!            behind,     K moves to the index the source listed them at
//!            too many)
//! ```
//!
//! The source says when it cannot list the changes completely (it has reaped tombstones
//! of deletions after K, restored a snapshot, is behind K, or more changed than one
//! answer carries); the follower then does a full round. A full round is idempotent, so a
//! leader that starts (after a restart, a partition or a leadership change) begins with
//! one and then follows from the index it reached. Other writes to the copied keys are
//! refused by the leader ([`catalog::KvReplication::refusal`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use catalog::{
    Answer, Command, Consistency, KvAnswer, KvChange, KvChanges, KvEntry, KvRead, KvReplication,
    KvWrite, Principal, Query, ReadOptions, Unlisted,
};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Gateway;

/// How long one blocking read of the source waits for a change.
const FOLLOW_WAIT: Duration = Duration::from_secs(60);
/// Budget of a local read or write.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(10);
/// First and longest pause after a failed round.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often a server that does not lead looks again.
const IDLE: Duration = Duration::from_secs(1);
/// Most writes, and bytes of values, in one log entry.
const CHUNK_WRITES: usize = 256;
const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Where replication of each prefix stands, as this server knows it.
#[derive(Debug)]
pub struct KvReplicationStatus {
    config: Arc<KvReplication>,
    prefixes: Mutex<BTreeMap<String, PrefixStatus>>,
}

/// One prefix's replication.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PrefixStatus {
    /// The prefix.
    pub prefix: String,
    /// The source's index this copy is at (0 before the first round, and on a server
    /// that does not lead).
    pub replicated_index: u64,
    /// Keys the copy holds under the prefix (outside the exclusions) after the last
    /// round.
    pub keys: usize,
    /// Keys written or deleted since this server started replicating.
    pub writes: u64,
    /// Rounds that read and compared the whole prefix since this server started
    /// replicating (the first after gaining leadership, and each time the source could
    /// not list its changes).
    pub full_rounds: u64,
    /// Rounds that applied only the source's changes.
    pub incremental_rounds: u64,
    /// When the last round ended well (RFC 3339), if one did.
    pub last_success: Option<String>,
    /// Why the last failed round failed, if the last round failed.
    pub last_error: Option<String>,
    /// When that was (RFC 3339).
    pub last_error_at: Option<String>,
    /// Whether this server runs the replication now (it leads).
    pub running: bool,
}

impl KvReplicationStatus {
    /// The configuration.
    pub fn config(&self) -> &KvReplication {
        &self.config
    }

    /// Each prefix's state.
    pub fn prefixes(&self) -> Vec<PrefixStatus> {
        self.prefixes
            .lock()
            .expect("status lock")
            .values()
            .cloned()
            .collect()
    }

    fn update(&self, prefix: &str, f: impl FnOnce(&mut PrefixStatus)) {
        let mut all = self.prefixes.lock().expect("status lock");
        if let Some(p) = all.get_mut(prefix) {
            f(p);
        }
    }
}

/// Starts replicating `config`'s prefixes through `gateway` (on this server whenever
/// it leads) until `shutdown`.
pub fn start(
    gateway: Gateway,
    config: Arc<KvReplication>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Arc<KvReplicationStatus> {
    let status = Arc::new(KvReplicationStatus {
        config: config.clone(),
        prefixes: Mutex::new(
            config
                .prefixes
                .iter()
                .map(|p| {
                    (
                        p.clone(),
                        PrefixStatus {
                            prefix: p.clone(),
                            ..PrefixStatus::default()
                        },
                    )
                })
                .collect(),
        ),
    });
    for prefix in &config.prefixes {
        tasks.spawn(follow(
            gateway.clone(),
            config.clone(),
            prefix.clone(),
            status.clone(),
            shutdown.clone(),
        ));
    }
    status
}

async fn follow(
    gateway: Gateway,
    config: Arc<KvReplication>,
    prefix: String,
    status: Arc<KvReplicationStatus>,
    shutdown: CancellationToken,
) {
    // The source's KV index the copy is in line with; `None` until a full round.
    let mut last = None;
    let mut retry = RETRY_MIN;
    loop {
        if !gateway.lan().is_leader() {
            last = None;
            status.update(&prefix, |p| {
                p.running = false;
                p.replicated_index = 0;
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(IDLE) => continue,
            }
        }
        let round = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = round(&gateway, &config, &prefix, last) => r,
        };
        match round {
            Ok(done) => {
                retry = RETRY_MIN;
                last = Some(done.index);
                status.update(&prefix, |p| {
                    p.running = true;
                    p.replicated_index = done.index;
                    if let Some(keys) = done.keys {
                        p.keys = keys;
                    }
                    p.writes += done.writes as u64;
                    if done.full {
                        p.full_rounds += 1;
                    } else {
                        p.incremental_rounds += 1;
                    }
                    p.last_success = Some(catalog::clock::rfc3339(SystemTime::now()));
                    p.last_error = None;
                });
            }
            Err(why) => {
                tracing::warn!(prefix = %prefix, source = %config.source, error = %why, "KV replication round failed; will retry");
                status.update(&prefix, |p| {
                    p.last_error = Some(why);
                    p.last_error_at = Some(catalog::clock::rfc3339(SystemTime::now()));
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

/// What one round did.
struct Round {
    /// The source's KV index the copy is now in line with.
    index: u64,
    /// Keys the copy holds, when the round counted them (`None`: as before).
    keys: Option<usize>,
    writes: usize,
    /// Whether the round compared the whole prefix.
    full: bool,
}

/// Brings the local copy in line with the source: from the changes after `last` when
/// the source can list them (waiting for one), else by comparing the whole prefix.
async fn round(
    gateway: &Gateway,
    config: &KvReplication,
    prefix: &str,
    last: Option<u64>,
) -> Result<Round, String> {
    if let Some(since) = last {
        match incremental(gateway, config, prefix, since).await? {
            Ok(done) => return Ok(done),
            Err(why) => {
                tracing::debug!(prefix = %prefix, source = %config.source, reason = %why, "KV replication compares the whole prefix");
            }
        }
    }
    full(gateway, config, prefix).await
}

/// A read of `prefix` in the source datacenter: of every entry, at once; or of what
/// changed after `since`, once something did (or the wait ends).
async fn read_source(
    gateway: &Gateway,
    config: &KvReplication,
    prefix: &str,
    since: Option<u64>,
) -> Result<KvChanges, String> {
    let query = Query::Kv {
        key: prefix.to_owned(),
        read: KvRead::Changes { since },
    };
    let options = ReadOptions {
        consistency: Consistency::Default,
        // A prefix's index is never below 1, so waiting past 1 waits for a first write
        // to a source that has none yet.
        min_index: since.map_or(0, |i| i.max(1)),
        deadline: Instant::now() + FOLLOW_WAIT,
        max_stale: None,
        principal: Principal::Agent,
    };
    let answer = gateway
        .read(Some(&config.source), &query, options)
        .await
        .map_err(|e| format!("reading {prefix:?} in {}: {e}", config.source))?
        .answer;
    match answer {
        Answer::Kv(KvAnswer::Changes(changes)) => Ok(changes),
        other => Err(format!(
            "unexpected answer to a read of KV changes: {other:?}"
        )),
    }
}

/// Applies what changed in the source after `since`, or says why it cannot be listed.
async fn incremental(
    gateway: &Gateway,
    config: &KvReplication,
    prefix: &str,
    since: u64,
) -> Result<Result<Round, Unlisted>, String> {
    let (changes, kv_index) = match read_source(gateway, config, prefix, Some(since)).await? {
        KvChanges::Listed { changes, kv_index } => (changes, kv_index),
        KvChanges::Unlisted(why) => return Ok(Err(why)),
        KvChanges::Whole { .. } => {
            return Err("the source answered a read of changes with every entry".into());
        }
    };
    let (writes, keys_changed) = changes_to_writes(config, since, changes);
    let count = writes.len();
    write_copy(gateway, prefix, writes).await?;
    let keys = if keys_changed {
        Some(count_copy(gateway, config, prefix).await?)
    } else {
        None
    };
    Ok(Ok(Round {
        index: since.max(kv_index),
        keys,
        writes: count,
        full: false,
    }))
}

/// Reads the whole prefix in the source and brings the local copy in line with it.
async fn full(gateway: &Gateway, config: &KvReplication, prefix: &str) -> Result<Round, String> {
    let (source, kv_index) = match read_source(gateway, config, prefix, None).await? {
        KvChanges::Whole { entries, kv_index } => (entries, kv_index),
        other => {
            return Err(format!(
                "unexpected answer to a read of the whole prefix: {other:?}"
            ));
        }
    };
    let local = match gateway
        .lan()
        .read(&tree(prefix), local_options())
        .await
        .map_err(|e| format!("reading the local copy of {prefix:?}: {e}"))?
        .answer
    {
        Answer::Kv(KvAnswer::Entries(e)) => e,
        other => return Err(format!("unexpected answer to a KV read: {other:?}")),
    };
    let writes = differences(config, &source, &local);
    let keys = source.iter().filter(|e| config.covers(&e.key)).count();
    let count = writes.len();
    write_copy(gateway, prefix, writes).await?;
    Ok(Round {
        index: kv_index,
        keys: Some(keys),
        writes: count,
        full: true,
    })
}

fn tree(prefix: &str) -> Query {
    Query::Kv {
        key: prefix.to_owned(),
        read: KvRead::Tree,
    }
}

fn local_options() -> ReadOptions {
    ReadOptions {
        consistency: Consistency::Default,
        min_index: 0,
        deadline: Instant::now() + LOCAL_TIMEOUT,
        max_stale: None,
        principal: Principal::Agent,
    }
}

/// Writes `writes` to the local copy, in order, in bounded log entries.
async fn write_copy(gateway: &Gateway, prefix: &str, writes: Vec<KvWrite>) -> Result<(), String> {
    for chunk in chunks(writes) {
        gateway
            .lan()
            .write(
                Command::KvReplicate(chunk),
                Instant::now() + LOCAL_TIMEOUT,
                &Principal::Agent,
            )
            .await
            .map_err(|e| format!("writing the copy of {prefix:?}: {e}"))?;
    }
    Ok(())
}

/// How many keys the local copy holds under `prefix`, outside the exclusions.
async fn count_copy(
    gateway: &Gateway,
    config: &KvReplication,
    prefix: &str,
) -> Result<usize, String> {
    let query = Query::Kv {
        key: prefix.to_owned(),
        read: KvRead::Keys { separator: None },
    };
    match gateway
        .lan()
        .read(&query, local_options())
        .await
        .map_err(|e| format!("counting the local copy of {prefix:?}: {e}"))?
        .answer
    {
        Answer::Kv(KvAnswer::Keys(keys)) => Ok(keys.iter().filter(|k| config.covers(k)).count()),
        other => Err(format!("unexpected answer to a KV read: {other:?}")),
    }
}

/// The writes that apply the source's `changes` after `since` (oldest first) to a copy
/// in line with the source at `since`, for the keys `config` copies, in the same order;
/// and whether the set of copied keys may have changed (a key deleted, or created after
/// `since`), so that it needs counting again.
fn changes_to_writes(
    config: &KvReplication,
    since: u64,
    changes: Vec<KvChange>,
) -> (Vec<KvWrite>, bool) {
    let mut keys_changed = false;
    let writes = changes
        .into_iter()
        .filter(|c| config.covers(c.key()))
        .map(|c| match c {
            KvChange::Set(e) => {
                // A key that existed at `since` and was deleted and created again since
                // has a newer CreateIndex too: only a key with an older one surely was
                // in the copy all along.
                keys_changed |= e.create_index > since;
                KvWrite::Set {
                    key: e.key,
                    value: e.value,
                    flags: e.flags,
                    cas: None,
                }
            }
            KvChange::Deleted { key, .. } => {
                keys_changed = true;
                KvWrite::Delete { key, cas: None }
            }
        })
        .collect();
    (writes, keys_changed)
}

/// The writes that make `local` hold what `source` holds, for the keys `config` copies:
/// sets of what is missing or different (value or flags), deletes of what the source
/// no longer has, in key order.
fn differences(config: &KvReplication, source: &[KvEntry], local: &[KvEntry]) -> Vec<KvWrite> {
    let here: BTreeMap<&str, &KvEntry> = local
        .iter()
        .filter(|e| config.covers(&e.key))
        .map(|e| (e.key.as_str(), e))
        .collect();
    let there: BTreeMap<&str, &KvEntry> = source
        .iter()
        .filter(|e| config.covers(&e.key))
        .map(|e| (e.key.as_str(), e))
        .collect();
    let mut writes = Vec::new();
    for (key, e) in &there {
        let same = here
            .get(key)
            .is_some_and(|h| h.value == e.value && h.flags == e.flags);
        if !same {
            writes.push(KvWrite::Set {
                key: (*key).to_owned(),
                value: e.value.clone(),
                flags: e.flags,
                cas: None,
            });
        }
    }
    for key in here.keys().filter(|k| !there.contains_key(*k)) {
        writes.push(KvWrite::Delete {
            key: (*key).to_owned(),
            cas: None,
        });
    }
    writes
}

/// `writes` in log entries of at most [`CHUNK_WRITES`] writes and about [`CHUNK_BYTES`].
fn chunks(writes: Vec<KvWrite>) -> Vec<Vec<KvWrite>> {
    let mut out: Vec<Vec<KvWrite>> = Vec::new();
    let mut bytes = 0;
    for write in writes {
        let size = match &write {
            KvWrite::Set { key, value, .. } => key.len() + value.len(),
            other => other.key().len(),
        };
        let full = out
            .last()
            .is_none_or(|c| c.len() >= CHUNK_WRITES || bytes + size > CHUNK_BYTES);
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(chunk) = out.last_mut() {
            chunk.push(write);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str, flags: u64) -> KvEntry {
        KvEntry {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            flags,
            session: None,
            lock_index: 0,
            create_index: 1,
            modify_index: 1,
        }
    }

    fn config() -> KvReplication {
        KvReplication {
            source: "dc1".into(),
            prefixes: vec!["config/".into()],
            exclude: vec!["config/local/".into()],
        }
    }

    #[test]
    fn only_differences_under_the_prefix_and_outside_the_exclusions_are_written() {
        let source = [
            entry("config/a", "1", 0),
            entry("config/b", "2", 0),
            entry("config/c", "3", 7),
            entry("config/local/x", "source", 0),
        ];
        let local = [
            entry("config/a", "1", 0),
            entry("config/c", "3", 0),
            entry("config/gone", "x", 0),
            entry("config/local/y", "mine", 0),
        ];
        let writes = differences(&config(), &source, &local);
        let keys: Vec<(&str, bool)> = writes
            .iter()
            .map(|w| (w.key(), matches!(w, KvWrite::Set { .. })))
            .collect();
        assert_eq!(
            keys,
            [
                ("config/b", true),
                ("config/c", true),
                ("config/gone", false)
            ]
        );
    }

    #[test]
    fn changes_become_writes_in_their_order_for_the_copied_keys_only() {
        let set = |key: &str, create: u64, modify: u64| {
            KvChange::Set(KvEntry {
                create_index: create,
                modify_index: modify,
                ..entry(key, "v", 3)
            })
        };
        let deleted = |key: &str, index: u64| KvChange::Deleted {
            key: key.into(),
            index,
        };
        let changes = vec![
            set("config/b", 2, 11),
            deleted("config/a", 12),
            set("config/local/x", 13, 13),
            deleted("config/local/y", 14),
            set("config/a", 15, 15),
        ];
        let (writes, keys_changed) = changes_to_writes(&config(), 10, changes);
        assert_eq!(
            writes,
            [
                KvWrite::Set {
                    key: "config/b".into(),
                    value: b"v".to_vec(),
                    flags: 3,
                    cas: None
                },
                KvWrite::Delete {
                    key: "config/a".into(),
                    cas: None
                },
                KvWrite::Set {
                    key: "config/a".into(),
                    value: b"v".to_vec(),
                    flags: 3,
                    cas: None
                },
            ]
        );
        assert!(keys_changed);
        // Changes of keys the copy held all along leave its keys as they were.
        let (writes, keys_changed) = changes_to_writes(&config(), 10, vec![set("config/b", 2, 11)]);
        assert_eq!(writes.len(), 1);
        assert!(!keys_changed);
        // A key created after the index is new to the copy; so is one deleted.
        assert!(changes_to_writes(&config(), 10, vec![set("config/n", 11, 11)]).1);
        assert!(changes_to_writes(&config(), 10, vec![deleted("config/b", 11)]).1);
        // Excluded keys count for nothing.
        assert!(!changes_to_writes(&config(), 10, vec![deleted("config/local/y", 11)]).1);
    }

    #[test]
    fn writes_go_in_bounded_chunks() {
        let writes: Vec<KvWrite> = (0..600)
            .map(|i| KvWrite::Delete {
                key: format!("k{i}"),
                cas: None,
            })
            .collect();
        let sizes: Vec<usize> = chunks(writes).iter().map(Vec::len).collect();
        assert_eq!(sizes, [256, 256, 88]);
        let big: Vec<KvWrite> = (0..20)
            .map(|i| KvWrite::Set {
                key: format!("k{i}"),
                value: vec![0; 512 * 1024],
                flags: 0,
                cas: None,
            })
            .collect();
        assert!(chunks(big).iter().all(|c| c.len() <= 8));
    }

    #[test]
    fn writes_to_copied_keys_are_refused_with_the_source_named() {
        let c = config();
        let set = |key: &str| {
            Command::Kv(KvWrite::Set {
                key: key.into(),
                value: Vec::new(),
                flags: 0,
                cas: None,
            })
        };
        assert!(c.refusal(&set("config/a")).unwrap().contains("dc1"));
        assert_eq!(c.refusal(&set("config/local/a")), None);
        assert_eq!(c.refusal(&set("other")), None);
        let tree = |prefix: &str| {
            Command::Kv(KvWrite::DeleteTree {
                prefix: prefix.into(),
            })
        };
        assert!(
            c.refusal(&tree("")).is_some(),
            "deleting everything touches copies"
        );
        assert!(c.refusal(&tree("conf")).is_some());
        assert_eq!(c.refusal(&tree("config/local/")), None);
        assert_eq!(c.refusal(&Command::KvReplicate(vec![])), None);
    }
}
