//! KV replication: the leader of a datacenter keeps a copy of another datacenter's keys
//! under some prefixes (what Consul leaves to the separate consul-replicate daemon).
//!
//! For each prefix the leader follows the source datacenter with blocking reads of the
//! prefix (over the WAN, through this gateway), compares what the source holds with its
//! own copy, and writes the differences (sets and deletes, never a key outside the
//! prefix or under an excluded one) as [`Command::KvReplicate`] entries, in key order.
//! A comparison is idempotent, so a leader that starts (after a restart, a partition or
//! a leadership change) begins with one full comparison and then follows from the index
//! it reached; an index that goes backwards (the source restored a snapshot or reaped
//! tombstones) starts over at 0. Other writes to the copied keys are refused by the
//! leader ([`catalog::KvReplication::refusal`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use catalog::{
    Answer, Command, Consistency, KvAnswer, KvEntry, KvRead, KvReplication, KvWrite, Principal,
    Query, ReadOptions,
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
    /// Keys under the prefix at the last round.
    pub keys: usize,
    /// Keys written or deleted since this server started replicating.
    pub writes: u64,
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
    let mut last = 0;
    let mut retry = RETRY_MIN;
    loop {
        if !gateway.lan().is_leader() {
            last = 0;
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
                last = done.index;
                status.update(&prefix, |p| {
                    p.running = true;
                    p.replicated_index = done.index;
                    p.keys = done.keys;
                    p.writes += done.writes as u64;
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
    index: u64,
    keys: usize,
    writes: usize,
}

/// Waits for the source's prefix to move past `last` (or for the wait to end), then
/// brings the local copy in line with it.
async fn round(
    gateway: &Gateway,
    config: &KvReplication,
    prefix: &str,
    last: u64,
) -> Result<Round, String> {
    let query = Query::Kv {
        key: prefix.to_owned(),
        read: KvRead::Tree,
    };
    let options = ReadOptions {
        consistency: Consistency::Default,
        min_index: last,
        deadline: Instant::now() + FOLLOW_WAIT,
        max_stale: None,
        principal: Principal::Agent,
    };
    let source = gateway
        .read(Some(&config.source), &query, options)
        .await
        .map_err(|e| format!("reading {prefix:?} in {}: {e}", config.source))?;
    let index = source.index;
    let source = entries(source.answer)?;
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
        .map_err(|e| format!("reading the local copy of {prefix:?}: {e}"))?;
    let local = entries(local.answer)?;
    let writes = differences(config, &source, &local);
    let keys = source.iter().filter(|e| config.covers(&e.key)).count();
    let count = writes.len();
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
    Ok(Round {
        index,
        keys,
        writes: count,
    })
}

fn entries(answer: Answer) -> Result<Vec<KvEntry>, String> {
    match answer {
        Answer::Kv(KvAnswer::Entries(e)) => Ok(e),
        other => Err(format!("unexpected answer to a KV read: {other:?}")),
    }
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
