//! Raft storage: the log (and vote) store, and the state machine that applies committed
//! entries to the catalog.
//!
//! [`MemLog`] keeps the log in memory, as `agent -dev` does in Consul; `disk::DiskLog`
//! keeps it in redb for every other server. The state machine keeps the catalog in memory
//! (as Consul's does) and, on a server with a data dir, writes each snapshot to a file
//! (`raft/snapshot.json`, replaced atomically, see [`super::snapshot_file`]) that a
//! restart loads before openraft re-applies the log entries after it. The snapshot's
//! bytes are then kept only in that file (read again when a follower needs them), not
//! in memory beside the catalog they encode.
//!
//! Building a snapshot copies the catalog under the locks and nothing more; encoding and
//! writing it happen on the blocking pool while entries go on being applied.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use super::snapshot_file;
use super::{NodeId, TypeConfig};
use catalog::{Applied, ApplyError, CatalogWriter, Command, PackedSnapshot, ServerNode};

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

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        let sized = inner
            .entries
            .range(start..end)
            .map(|(_, e)| (super::encoded_len(e), e));
        Ok(super::within_replication_budget(sized)
            .into_iter()
            .cloned()
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

/// What a snapshot carries: the catalog. (The snapshot file adds its Raft metadata, see
/// [`snapshot_file`].)
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

/// Where the bytes of the current snapshot are.
#[derive(Debug, Clone)]
enum Held {
    /// Here (a server without a data dir).
    Memory(Vec<u8>),
    /// In the snapshot file only.
    File,
}

#[derive(Debug, Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, ServerNode>,
    data: Held,
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
            let (meta, data) = snapshot_file::read(bytes, true).map_err(damaged)?;
            let file: SnapshotFile =
                serde_json::from_slice(&data).map_err(|e| damaged(e.to_string()))?;
            drop(data);
            inner.catalog.replace(file.catalog);
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.snapshot = Some(StoredSnapshot {
                meta,
                data: Held::File,
            });
        }
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MachineInner> {
        self.inner.lock().expect("state machine lock poisoned")
    }

    /// The lock, taken by a task on the runtime. While a snapshot copies the catalog
    /// under it (a blocking thread, for 20-40 ms at 170,000 instances: the values are
    /// shared, only pointers are copied), the wait happens in `block_in_place`: the other tasks of this runtime thread
    /// (Raft's heartbeats among them) move to another instead of waiting too.
    fn lock_on_runtime(&self) -> std::sync::MutexGuard<'_, MachineInner> {
        match self.inner.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::WouldBlock) if multi_threaded() => {
                tokio::task::block_in_place(|| self.lock())
            }
            Err(std::sync::TryLockError::WouldBlock) => self.lock(),
            Err(std::sync::TryLockError::Poisoned(_)) => panic!("state machine lock poisoned"),
        }
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
        // The catalog is copied under the locks, with the log ID it was applied up to;
        // applies wait only for the copy. The copy shares the catalog's values (pointers,
        // not strings: 20-40 ms at 170,000 instances) and is written out after the locks
        // are released; it still runs on a blocking thread, not one of the runtime's.
        let machine = self.clone();
        let copied = tokio::task::spawn_blocking(move || {
            let mut inner = machine.lock();
            let file = SnapshotFile {
                catalog: inner.catalog.snapshot(),
            };
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
            (file, meta, inner.snapshot_path.clone())
        })
        .await;
        let (file, meta, path) = copied.map_err(|e| StorageError::IO {
            source: StorageIOError::write_snapshot(None, &e),
        })?;
        let signature = meta.signature();
        let encoded = tokio::task::spawn_blocking(move || serde_json::to_vec(&file))
            .await
            .map_err(|e| StorageError::IO {
                source: StorageIOError::write_snapshot(Some(signature.clone()), &e),
            })?
            .map_err(|e| StorageError::IO {
                source: StorageIOError::write_snapshot(Some(signature), &e),
            })?;
        let (data, held) = match path {
            Some(path) => (persist(path, meta.clone(), encoded).await?, Held::File),
            None => (encoded.clone(), Held::Memory(encoded)),
        };
        self.lock().snapshot = Some(StoredSnapshot {
            meta: meta.clone(),
            data: held,
        });
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Writes a snapshot file on the blocking pool; gives the data back.
async fn persist(
    path: PathBuf,
    meta: SnapshotMeta<NodeId, ServerNode>,
    data: Vec<u8>,
) -> Result<Vec<u8>, StorageError<NodeId>> {
    let signature = meta.signature();
    tokio::task::spawn_blocking(move || snapshot_file::write(&path, &meta, &data).map(|()| data))
        .await
        .map_err(|e| StorageError::IO {
            source: StorageIOError::write_snapshot(Some(signature.clone()), &e),
        })?
        .map_err(|e| StorageError::IO {
            source: StorageIOError::write_snapshot(Some(signature), &e),
        })
}

/// The current snapshot's metadata and data, read from the snapshot file on the blocking
/// pool. The file holds the newest snapshot this server has, which is the current one
/// or one made since; its metadata and data are read together, so they always match.
async fn read_current(path: PathBuf) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
    let read = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
        // Checked when it was loaded or written; a follower checks the data it receives.
        snapshot_file::read(bytes, false)
    })
    .await
    .map_err(io_error)?;
    let (meta, data) = read.map_err(|e| io_error(std::io::Error::other(e)))?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data)),
    })
}

/// Unpacks the snapshots of the restores among `entries` on a blocking thread, before the
/// state machine's lock is taken: a packed 80 MiB catalog takes about a second to
/// inflate and parse, and arrives packed from the leader or the log (see
/// `catalog::PackedSnapshot`). Returns whether any command replaces the catalog (a
/// restore, or the last part of one written in parts, which is unpacked as it is
/// applied). A snapshot that does not unpack is refused when applied, on every server
/// alike.
async fn unpack_restores(entries: &[Entry<TypeConfig>]) -> bool {
    let commands = entries
        .iter()
        .filter_map(|e| match &e.payload {
            EntryPayload::Normal(commands) => Some(commands),
            _ => None,
        })
        .flatten();
    let mut last_parts = false;
    let mut restores: Vec<PackedSnapshot> = Vec::new();
    for command in commands {
        match command {
            Command::Restore(s) => restores.push(s.clone()),
            Command::RestorePart(p) => last_parts |= p.part.saturating_add(1) == p.parts,
            _ => {}
        }
    }
    if restores.is_empty() {
        return last_parts;
    }
    // Clones share what is unpacked.
    let _ = tokio::task::spawn_blocking(move || {
        for restore in &restores {
            let _ = restore.snapshot();
        }
    })
    .await;
    true
}

/// Whether this runs on a multi-threaded runtime (where `block_in_place` may be used).
fn multi_threaded() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
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
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let restores = unpack_restores(&entries).await;
        let mut inner = self.lock_on_runtime();
        let mut out = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => out.push(Vec::new()),
                EntryPayload::Normal(commands) => {
                    let start = std::time::Instant::now();
                    let index = entry.log_id.index;
                    let applied = if restores && multi_threaded() {
                        // Replacing a big catalog takes a second: the other tasks of
                        // this worker (Raft's heartbeats among them) move elsewhere.
                        tokio::task::block_in_place(|| inner.catalog.apply_all(index, &commands))
                    } else {
                        inner.catalog.apply_all(index, &commands)
                    };
                    out.push(applied);
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
        let path = self.lock().snapshot_path.clone();
        let held = match path {
            Some(path) => {
                // On disk first: once the catalog is replaced, the snapshot must survive.
                persist(path, meta.clone(), data).await?;
                Held::File
            }
            None => Held::Memory(data),
        };
        let mut inner = self.lock();
        inner.catalog.replace(file.catalog);
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some(StoredSnapshot {
            meta: meta.clone(),
            data: held,
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let (current, path) = {
            let inner = self.lock();
            (inner.snapshot.clone(), inner.snapshot_path.clone())
        };
        let Some(current) = current else {
            return Ok(None);
        };
        match (current.data, path) {
            (Held::Memory(data), _) => Ok(Some(Snapshot {
                meta: current.meta,
                snapshot: Box::new(Cursor::new(data)),
            })),
            (Held::File, Some(path)) => read_current(path).await.map(Some),
            (Held::File, None) => Err(io_error(std::io::Error::other(
                "a snapshot kept in a file has no path",
            ))),
        }
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
        let built = machine.build_snapshot().await.unwrap();
        let (_, writer) = Catalog::new();
        let mut reloaded = StateMachine::new(writer, Some(path.clone())).unwrap();
        let current = reloaded.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, built.meta);
        assert_eq!(
            current.snapshot.get_ref(),
            built.snapshot.get_ref(),
            "read from the file"
        );
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 3;
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let (_, writer) = Catalog::new();
        let e = StateMachine::new(writer, Some(path.clone())).err().unwrap();
        assert!(matches!(e, LoadError::Damaged { .. }), "{e}");
    }
}
