//! Raft storage: the log (and vote) store, and the state machine that applies committed
//! entries to the catalog.
//!
//! [`MemLog`] keeps the log in memory, as `agent -dev` does in Consul; `disk::DiskLog`
//! keeps it in redb for every other server. The state machine keeps the catalog in memory
//! (as Consul's does) and, on a server with a data dir, writes each snapshot to a file
//! (`raft/snapshot.json`, replaced atomically) that a restart loads before openraft
//! re-applies the log entries after it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use super::{NodeId, TypeConfig};
use catalog::{Applied, ApplyError, CatalogWriter, ServerNode};

#[derive(Debug, Default)]
struct LogInner {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

/// The Raft log and vote, in memory. Cloning gives another handle to the same log, which
/// is what openraft's replication tasks use as readers.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemLog {
    inner: Arc<Mutex<LogInner>>,
}

/// `raft.fsm.apply`: time to apply one log entry to the catalog.
static FSM_APPLY: std::sync::LazyLock<metrics::Histogram> =
    std::sync::LazyLock::new(|| metrics::histogram!("raft.fsm.apply"));

impl MemLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().expect("raft log lock poisoned")
    }
}

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = MemLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut inner = self.lock();
            for entry in entries {
                inner.entries.insert(entry.log_id.index, entry);
            }
        }
        // Memory is as durable as this store gets.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.lock().entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        let keep = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = keep;
        inner.last_purged = Some(log_id);
        Ok(())
    }
}

/// What a snapshot carries: the catalog. (The snapshot file wraps it with its Raft
/// metadata, see [`StoredFile`].)
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    catalog: catalog::Snapshot,
}

/// Whether `data` is a snapshot this state machine can install (checked before openraft
/// is handed the last chunk of one: a snapshot it cannot read would stop Raft).
pub(crate) fn check_snapshot_data(data: &[u8]) -> Result<(), String> {
    serde_json::from_slice::<SnapshotFile>(data)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A snapshot as written to disk: its Raft metadata and its data.
#[derive(Debug, Serialize, Deserialize)]
struct StoredFile {
    meta: SnapshotMeta<NodeId, ServerNode>,
    data: Vec<u8>,
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one:
/// a temporary file, fsynced, renamed over the old one, then the directory fsynced.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, ServerNode>,
    data: Vec<u8>,
}

#[derive(Debug)]
struct MachineInner {
    catalog: CatalogWriter,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, ServerNode>,
    snapshot: Option<StoredSnapshot>,
    snapshot_seq: u64,
    /// Where snapshots are kept on disk; `None` keeps them in memory only (`-dev`).
    snapshot_path: Option<PathBuf>,
}

/// The state machine: applies committed entries to the catalog and builds snapshots of it.
#[derive(Debug, Clone)]
pub(crate) struct StateMachine {
    inner: Arc<Mutex<MachineInner>>,
}

/// The snapshot file could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// It could not be read at all (permissions, an I/O error).
    #[error("reading the raft snapshot {path}: {reason}")]
    Unreadable { path: String, reason: String },
    /// It was read, but its checksum does not match or it does not decode: it must not
    /// be believed.
    #[error("the raft snapshot {path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
}

/// Hex SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A snapshot file's contents: the hex SHA-256 of the JSON, a newline, then the JSON, so
/// that one changed byte anywhere is found when it is read again.
fn with_checksum(json: Vec<u8>) -> Vec<u8> {
    let mut out = sha256_hex(&json).into_bytes();
    out.push(b'\n');
    out.extend_from_slice(&json);
    out
}

/// The JSON of a snapshot file, once its checksum is verified. A file that starts with
/// the JSON itself was written before files carried a checksum, and is read as it is.
fn verified(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.first() == Some(&b'{') {
        return Ok(bytes);
    }
    let at = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no checksum line")?;
    let (sum, json) = (&bytes[..at], &bytes[at + 1..]);
    if sum != sha256_hex(json).as_bytes() {
        return Err("its checksum does not match its contents".into());
    }
    Ok(json)
}

impl StateMachine {
    /// A state machine over `catalog`. With `snapshot_path`, snapshots are written there,
    /// and one found there now is loaded into the catalog.
    pub(crate) fn new(
        catalog: CatalogWriter,
        snapshot_path: Option<PathBuf>,
    ) -> Result<StateMachine, LoadError> {
        let mut inner = MachineInner {
            catalog,
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
            snapshot_seq: 0,
            snapshot_path,
        };
        if let Some(path) = &inner.snapshot_path
            && path.exists()
        {
            let damaged = |reason: String| LoadError::Damaged {
                path: path.display().to_string(),
                reason,
            };
            let bytes = std::fs::read(path).map_err(|e| LoadError::Unreadable {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let json = verified(&bytes).map_err(damaged)?;
            let stored: StoredFile =
                serde_json::from_slice(json).map_err(|e| damaged(e.to_string()))?;
            let file: SnapshotFile =
                serde_json::from_slice(&stored.data).map_err(|e| damaged(e.to_string()))?;
            inner.catalog.replace(file.catalog);
            inner.last_applied = stored.meta.last_log_id;
            inner.membership = stored.meta.last_membership.clone();
            inner.snapshot = Some(StoredSnapshot {
                meta: stored.meta,
                data: stored.data,
            });
        }
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MachineInner> {
        self.inner.lock().expect("state machine lock poisoned")
    }

    /// The configuration the applied state holds (from its snapshot, before Raft starts).
    pub(crate) fn membership(&self) -> openraft::Membership<NodeId, ServerNode> {
        self.lock().membership.membership().clone()
    }

    /// The last log ID applied (from its snapshot, before Raft starts).
    pub(crate) fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.lock().last_applied
    }
}

fn io_error(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::read_state_machine(&e),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (stored, path) = {
            let mut inner = self.lock();
            let file = SnapshotFile {
                catalog: inner.catalog.snapshot(),
            };
            let data = serde_json::to_vec(&file).map_err(io_error)?;
            inner.snapshot_seq += 1;
            let snapshot_id = match inner.last_applied {
                Some(last) => format!("{}-{}-{}", last.leader_id, last.index, inner.snapshot_seq),
                None => format!("--{}", inner.snapshot_seq),
            };
            let meta = SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
                snapshot_id,
            };
            (StoredSnapshot { meta, data }, inner.snapshot_path.clone())
        };
        let (meta, data) = (stored.meta.clone(), stored.data.clone());
        if let Some(path) = path {
            persist(path, &stored).await?;
        }
        self.lock().snapshot = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Writes a snapshot file on the blocking pool.
async fn persist(path: PathBuf, snapshot: &StoredSnapshot) -> Result<(), StorageError<NodeId>> {
    let file = StoredFile {
        meta: snapshot.meta.clone(),
        data: snapshot.data.clone(),
    };
    let signature = snapshot.meta.signature();
    let bytes = serde_json::to_vec(&file).map_err(|e| StorageError::IO {
        source: StorageIOError::write_snapshot(Some(signature.clone()), &e),
    })?;
    let bytes = with_checksum(bytes);
    tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
        .await
        .map_err(|e| StorageError::IO {
            source: StorageIOError::write_snapshot(Some(signature.clone()), &e),
        })?
        .map_err(|e| StorageError::IO {
            source: StorageIOError::write_snapshot(Some(signature), &e),
        })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, ServerNode>), StorageError<NodeId>>
    {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<Vec<Result<Applied, ApplyError>>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => out.push(Vec::new()),
                EntryPayload::Normal(commands) => {
                    let start = std::time::Instant::now();
                    out.push(inner.catalog.apply_all(entry.log_id.index, &commands));
                    FSM_APPLY.record(start.elapsed().as_secs_f64() * 1000.0);
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m);
                    out.push(Vec::new());
                }
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ServerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let file: SnapshotFile = serde_json::from_slice(&data).map_err(|e| StorageError::IO {
            source: StorageIOError::read_snapshot(Some(meta.signature()), &e),
        })?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let path = self.lock().snapshot_path.clone();
        if let Some(path) = path {
            // On disk first: once the catalog is replaced, the snapshot must survive.
            persist(path, &stored).await?;
        }
        let mut inner = self.lock();
        inner.catalog.replace(file.catalog);
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.lock().snapshot.clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::Catalog;
    use openraft::testing::{StoreBuilder, Suite};

    struct InMemory;

    impl StoreBuilder<TypeConfig, MemLog, StateMachine> for InMemory {
        async fn build(&self) -> Result<((), MemLog, StateMachine), StorageError<NodeId>> {
            let (_, writer) = Catalog::new();
            let machine = StateMachine::new(writer, None).expect("no file to read");
            Ok(((), MemLog::default(), machine))
        }
    }

    #[test]
    fn the_memory_log_passes_openraft_storage_suite() {
        Suite::test_all(InMemory).unwrap();
    }

    #[tokio::test]
    async fn a_snapshot_file_with_one_changed_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        let (_, writer) = Catalog::new();
        let mut machine = StateMachine::new(writer, Some(path.clone())).unwrap();
        machine.build_snapshot().await.unwrap();
        let (_, writer) = Catalog::new();
        assert!(StateMachine::new(writer, Some(path.clone())).is_ok());
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 3;
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let (_, writer) = Catalog::new();
        let e = StateMachine::new(writer, Some(path.clone())).err().unwrap();
        assert!(matches!(e, LoadError::Damaged { .. }), "{e}");
        // A file from before checksums is still read.
        let json = verified(&std::fs::read(&path).unwrap()).err();
        assert!(json.is_some());
        let legacy = bytes[bytes.iter().position(|b| *b == b'\n').unwrap() + 1..].to_vec();
        let mut fixed = legacy.clone();
        fixed[at - 65] ^= 0x01;
        std::fs::write(&path, &fixed).unwrap();
        let (_, writer) = Catalog::new();
        assert!(StateMachine::new(writer, Some(path)).is_ok());
    }
}
