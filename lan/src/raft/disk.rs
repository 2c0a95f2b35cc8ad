//! The Raft log and vote on disk, in redb.
//!
//! One database file (`<data_dir>/raft/raft.db`) with two tables: `log` maps a log index to
//! the JSON of its entry, `meta` holds the vote, the last purged log ID and the committed
//! log ID. An append is one write transaction committed with `Durability::Immediate`
//! (an fsync) before openraft is told the entries are durable; the vote is saved the same
//! way. The committed pointer is an optimisation (it lets a restarted server re-apply its
//! log before hearing from a leader), so it is written without an fsync: losing it only
//! means waiting for the leader's next commit.
//!
//! Why redb: pure Rust (no C++ build on two cores), ACID with one fsync per commit, MVCC
//! readers next to one writer, well maintained; a Raft log needs nothing more (an LSM
//! store such as RocksDB or fjall brings compaction threads and tuning it does not need).
//! Commits block, so they run on tokio's blocking pool.

// openraft's `StorageError` is what its storage traits return; helpers return it too.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const PURGED: &str = "last_purged";
const COMMITTED: &str = "committed";

/// The Raft log in a redb database. Cloning gives another handle to the same database.
#[derive(Clone)]
pub(crate) struct DiskLog {
    db: Arc<Database>,
}

impl Debug for DiskLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskLog").finish_non_exhaustive()
    }
}

/// The database could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("opening the raft log {path}: {source}")]
pub(crate) struct OpenError {
    path: String,
    #[source]
    source: redb::Error,
}

fn read_err(e: impl Into<redb::Error>) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::read_logs(&e.into()),
    }
}

fn write_err(e: impl Into<redb::Error>) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::write_logs(&e.into()),
    }
}

fn decode_err(e: serde_json::Error) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::read_logs(&e),
    }
}

fn join_err(e: tokio::task::JoinError) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::write_logs(&e),
    }
}

impl DiskLog {
    /// Opens (or creates) the log database at `path`.
    pub(crate) fn open(path: &Path) -> Result<DiskLog, OpenError> {
        let open = || -> Result<Database, redb::Error> {
            let db = Database::create(path)?;
            // Create the tables up front so that readers never meet a missing table.
            let txn = db.begin_write()?;
            txn.open_table(LOG)?;
            txn.open_table(META)?;
            txn.commit()?;
            Ok(db)
        };
        let db = open().map_err(|source| OpenError {
            path: path.display().to_string(),
            source,
        })?;
        Ok(DiskLog { db: Arc::new(db) })
    }

    fn meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        match table.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(decode_err)?)),
            None => Ok(None),
        }
    }

    /// Runs a write transaction on the blocking pool and commits it with `durability`.
    async fn write<F>(&self, durability: Durability, f: F) -> Result<(), StorageError<NodeId>>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError<NodeId>> {
            let mut txn = db.begin_write().map_err(write_err)?;
            txn.set_durability(durability).map_err(write_err)?;
            f(&txn).map_err(write_err)?;
            txn.commit().map_err(write_err)?;
            Ok(())
        })
        .await
        .map_err(join_err)?
    }

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(value).map_err(decode_err)?;
        self.write(durability, move |txn| {
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
        .await
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for DiskLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let mut out = Vec::new();
        for item in table.range(bounds(&range)).map_err(read_err)? {
            let (_, value) = item.map_err(read_err)?;
            out.push(serde_json::from_slice(value.value()).map_err(decode_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for DiskLog {
    type LogReader = DiskLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.meta(PURGED)?;
        let last = {
            let txn = self.db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            match table.last().map_err(read_err)? {
                Some((_, value)) => {
                    let entry: Entry<TypeConfig> =
                        serde_json::from_slice(value.value()).map_err(decode_err)?;
                    Some(entry.log_id)
                }
                None => None,
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta(VOTE, vote, Durability::Immediate).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.meta(VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.put_meta(COMMITTED, &committed, Durability::None).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
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
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(decode_err)?;
            encoded.push((entry.log_id.index, bytes));
        }
        let result = self
            .write(Durability::Immediate, move |txn| {
                let mut table = txn.open_table(LOG)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice())?;
                }
                Ok(())
            })
            .await;
        // The entries are durable once the commit returned: only then tell openraft.
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write(Durability::Immediate, move |txn| {
            txn.open_table(LOG)?
                .retain_in(log_id.index.., |_, _| false)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let purged = serde_json::to_vec(&log_id).map_err(decode_err)?;
        self.write(Durability::Immediate, move |txn| {
            txn.open_table(META)?.insert(PURGED, purged.as_slice())?;
            txn.open_table(LOG)?
                .retain_in(..=log_id.index, |_, _| false)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::raft::store::StateMachine;
    use openraft::testing::{StoreBuilder, Suite};

    struct OnDisk;

    impl StoreBuilder<TypeConfig, DiskLog, StateMachine, tempfile::TempDir> for OnDisk {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, DiskLog, StateMachine), StorageError<NodeId>> {
            let dir = tempfile::tempdir().expect("temp dir");
            let log = DiskLog::open(&dir.path().join("raft.db")).expect("open log");
            let (_, writer) = Catalog::new();
            let machine = StateMachine::new(writer, Some(dir.path().join("snapshot.json")))
                .expect("state machine");
            Ok((dir, log, machine))
        }
    }

    #[test]
    fn the_disk_log_passes_openraft_storage_suite() {
        Suite::test_all(OnDisk).unwrap();
    }

    #[tokio::test]
    async fn the_log_and_vote_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.db");
        {
            let mut log = DiskLog::open(&path).unwrap();
            log.save_vote(&Vote::new(3, 7)).await.unwrap();
            log.purge(LogId::new(openraft::CommittedLeaderId::new(1, 7), 4))
                .await
                .unwrap();
        }
        let mut log = DiskLog::open(&path).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(4));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(4));
    }
}
