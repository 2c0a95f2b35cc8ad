//! The Raft log and vote on disk, in redb.
//!
//! One database file (`<data_dir>/raft/raft.db`) with two tables: `log` maps a log index to
//! the JSON of its entry, `meta` holds the vote, the last purged log ID and the committed
//! log ID.
//!
//! **Group commit.** Every change goes to one writer thread, in the order openraft asked
//! for it. The thread takes everything queued, applies it in one write transaction and
//! commits it with `Durability::Immediate` (one fsync for the lot); only then are the
//! appends reported durable to openraft (`LogFlushed`) and the vote, truncate and purge
//! callers answered. `append` itself returns as soon as its entries are queued, so
//! openraft keeps accepting writes and replicating while the fsync runs, and the writes
//! that arrive meanwhile share the next one. Entries queued but not yet written are kept
//! in memory and served to readers (replication reads them at once). The committed
//! pointer is an optimisation (a restarted server re-applies its log before hearing from
//! a leader), so it is written without an fsync of its own.
//!
//! Why redb: pure Rust (no C++ build on two cores), ACID with one fsync per commit, MVCC
//! readers next to one writer, well maintained; a Raft log needs nothing more (an LSM
//! store such as RocksDB or fjall brings compaction threads and tuning it does not need).

// openraft's `StorageError` is what its storage traits return; helpers return it too.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{Notify, mpsc, oneshot};

use super::ahead::Ahead;
use super::{NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const PURGED: &str = "last_purged";
const COMMITTED: &str = "committed";
/// This server's Raft ID ([`DiskLog::server_id`]).
const SERVER_ID: &str = "server_id";
/// The vote, for [`DiskLog::write_now`].
pub(crate) const VOTE_KEY: &str = VOTE;

/// Changes waiting for the writer; openraft waits (asynchronously) when it is full.
const JOB_QUEUE: usize = 4096;
/// Most queued changes applied in one transaction; the rest wait for the next one.
const MAX_BATCH: usize = 1024;
/// redb's page cache. Its default (1 GiB) would keep every page read in memory: the
/// check at start reads the whole log, up to a snapshot threshold of entries, and its
/// pages would then stay in the agent's memory for nothing. Entries are read again only
/// to replicate them to a follower that is behind, recent ones first.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// A change for the writer thread.
enum Job {
    /// Write these entries (index, JSON), then report through the callback.
    Append {
        entries: Vec<(u64, Vec<u8>)>,
        seq: u64,
        callback: LogFlushed<TypeConfig>,
    },
    /// Remove entries from `from` on.
    Truncate {
        from: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Remove entries up to `to` and record the purge point.
    Purge {
        to: u64,
        purged: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Set a meta key; `durable` asks for the fsync before answering.
    Meta {
        key: &'static str,
        value: Vec<u8>,
        durable: bool,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// Entries handed to the writer but not yet committed, by index, with the sequence
/// number of the append that queued them.
type Pending = BTreeMap<u64, (u64, Entry<TypeConfig>)>;

struct Shared {
    db: Arc<Database>,
    /// `None` once dropping has begun.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    pending: Arc<Mutex<Pending>>,
    seq: std::sync::atomic::AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// What the leader sends ahead of its own fsync ([`super::ahead`]).
    ahead: Arc<Ahead>,
    /// Told each time appends have been written and reported durable.
    flushed: Arc<Notify>,
    /// Set once everything above is dropped, the database included (fields drop in
    /// order, after [`Shared`]'s own `drop` has let the writer finish).
    closed: Closed,
}

/// Sets its flag when dropped.
struct Closed(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Shared {
    /// Closes the queue and waits for the writer to finish what was queued, so that the
    /// database is closed when the last handle is gone (a restart can reopen it at once).
    fn drop(&mut self) {
        self.jobs.lock().expect("job queue lock").take();
        if let Some(writer) = self.writer.lock().expect("writer lock").take() {
            let _ = writer.join();
        }
    }
}

/// The Raft log in a redb database. Cloning gives another handle to the same database.
#[derive(Clone)]
pub(crate) struct DiskLog {
    shared: Arc<Shared>,
}

/// A handle to a [`DiskLog`] that does not keep its database open.
pub(crate) struct WeakDiskLog(std::sync::Weak<Shared>);

impl WeakDiskLog {
    /// The log, while it is open.
    pub(crate) fn upgrade(&self) -> Option<DiskLog> {
        self.0.upgrade().map(|shared| DiskLog { shared })
    }
}

/// Tells when every handle of a [`DiskLog`] is gone, and with them the open database.
/// (Not the handles' count: that is zero while the last one is still being dropped, with
/// the database still open.)
pub(crate) struct Closing(Arc<std::sync::atomic::AtomicBool>);

impl Closing {
    /// Whether the database is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Debug for DiskLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskLog").finish_non_exhaustive()
    }
}

/// The database could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// The file could not be opened or created (permissions, a full disk).
    #[error("opening the raft log {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: redb::Error,
    },
    /// The file opened but what it holds is damaged: it must not be believed.
    #[error("the raft log {path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
}

fn read_err(e: impl Into<redb::Error>) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::read_logs(&e.into()),
    }
}

fn write_failed(e: &str) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::write_logs(&std::io::Error::other(e.to_owned())),
    }
}

fn decode_err(e: serde_json::Error) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::read_logs(&e),
    }
}

impl DiskLog {
    /// Opens (or creates) the log database at `path`, checks it (the file's own
    /// checksums, then every entry: it decodes, sits at its own index, and follows the one
    /// before it), and starts its writer thread.
    pub(crate) fn open(path: &Path) -> Result<DiskLog, OpenError> {
        let io = |source: redb::Error| OpenError::Io {
            path: path.display().to_string(),
            source,
        };
        let damaged = |reason: String| OpenError::Damaged {
            path: path.display().to_string(),
            reason,
        };
        let mut db = match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(e))) => {
                return Err(damaged(e));
            }
            Err(e) => return Err(io(e.into())),
        };
        match db.check_integrity() {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(path = %path.display(), "the raft log file was damaged and has been repaired")
            }
            Err(e) => return Err(damaged(e.to_string())),
        }
        let tables = || -> Result<(), redb::Error> {
            // Create the tables up front so that readers never meet a missing table.
            let txn = db.begin_write()?;
            txn.open_table(LOG)?;
            txn.open_table(META)?;
            txn.commit()?;
            Ok(())
        };
        tables().map_err(io)?;
        check_entries(&db).map_err(damaged)?;
        let db = Arc::new(db);
        let (jobs, queue) = mpsc::channel(JOB_QUEUE);
        let pending: Arc<Mutex<Pending>> = Arc::default();
        let flushed: Arc<Notify> = Arc::default();
        let writer = {
            let (db, pending, flushed) = (db.clone(), pending.clone(), flushed.clone());
            std::thread::Builder::new()
                .name("raft-log-writer".into())
                .spawn(move || run_writer(db, queue, pending, flushed))
                .map_err(|e| io(redb::Error::Io(e)))?
        };
        let shared = Arc::new(Shared {
            db,
            jobs: Mutex::new(Some(jobs)),
            pending,
            seq: std::sync::atomic::AtomicU64::new(0),
            writer: Mutex::new(Some(writer)),
            ahead: Arc::default(),
            flushed,
            closed: Closed(Arc::default()),
        });
        Ok(DiskLog { shared })
    }

    /// Where the leader's own appends are sent ahead of its fsync, once started.
    pub(crate) fn ahead(&self) -> Arc<Ahead> {
        self.shared.ahead.clone()
    }

    /// Told each time appends have been written and reported durable: when openraft
    /// can take the next entry ([`super::batch`]).
    pub(crate) fn flushes(&self) -> Arc<Notify> {
        self.shared.flushed.clone()
    }

    /// A handle that does not keep the database open.
    pub(crate) fn downgrade(&self) -> WeakDiskLog {
        WeakDiskLog(Arc::downgrade(&self.shared))
    }

    /// What tells when this log is closed.
    pub(crate) fn closing(&self) -> Closing {
        Closing(self.shared.closed.0.clone())
    }

    /// This server's Raft ID, kept with its log. A log that holds nothing (a new server,
    /// or one whose log was wiped) gets a new random ID: a server that lost its log also
    /// lost the record of its votes, and must join as a server the others have never
    /// met rather than vote again under its old ID. A log from before the ID was kept
    /// here goes on with `legacy`, the ID it has been using.
    pub(crate) fn server_id(&self, legacy: NodeId) -> Result<(NodeId, bool), String> {
        let read = || -> Result<(Option<NodeId>, bool), redb::Error> {
            let txn = self.shared.db.begin_read()?;
            let meta = txn.open_table(META)?;
            let log = txn.open_table(LOG)?;
            let id = match meta.get(SERVER_ID)? {
                Some(v) => serde_json::from_slice(v.value()).ok(),
                None => None,
            };
            let empty =
                log.first()?.is_none() && meta.get(VOTE)?.is_none() && meta.get(PURGED)?.is_none();
            Ok((id, empty))
        };
        let (id, empty) = read().map_err(|e| e.to_string())?;
        if let Some(id) = id {
            return Ok((id, false));
        }
        let id = if empty { rand::random() } else { legacy };
        let value = serde_json::to_vec(&id).map_err(|e| e.to_string())?;
        self.write_now(&[(SERVER_ID, value)], None)
            .map_err(|e| e.to_string())?;
        Ok((id, empty))
    }

    /// Writes meta keys and (optionally) one log entry in one durable transaction, before
    /// Raft starts (a recovery from `peers.json`).
    pub(crate) fn write_now(
        &self,
        meta: &[(&'static str, Vec<u8>)],
        entry: Option<&Entry<TypeConfig>>,
    ) -> Result<(), redb::Error> {
        let mut txn = self.shared.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut table = txn.open_table(META)?;
            for (key, value) in meta {
                table.insert(*key, value.as_slice())?;
            }
            if let Some(entry) = entry {
                let bytes = serde_json::to_vec(entry).map_err(|e| redb::Error::Io(e.into()))?;
                txn.open_table(LOG)?
                    .insert(entry.log_id.index, bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// A meta value, read straight from disk (before Raft starts).
    pub(crate) fn meta_now<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, String> {
        self.meta(key).map_err(|e| e.to_string())
    }

    /// Every entry of the log, oldest first, read straight from disk (before Raft
    /// starts).
    pub(crate) fn entries_now(&self) -> Result<Vec<Entry<TypeConfig>>, String> {
        let txn = self.shared.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(LOG).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| e.to_string())? {
            let (_, value) = item.map_err(|e| e.to_string())?;
            out.push(serde_json::from_slice(value.value()).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    async fn submit(&self, job: Job) -> Result<(), StorageError<NodeId>> {
        let jobs = self.shared.jobs.lock().expect("job queue lock").clone();
        jobs.ok_or_else(|| write_failed("the raft log is closing"))?
            .send(job)
            .await
            .map_err(|_| write_failed("the raft log writer has stopped"))
    }

    /// Queues a change and waits until it is committed.
    async fn run(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Job,
    ) -> Result<(), StorageError<NodeId>> {
        let (done, answer) = oneshot::channel();
        self.submit(make(done)).await?;
        answer
            .await
            .map_err(|_| write_failed("the raft log writer has stopped"))?
            .map_err(|e| write_failed(&e))
    }

    fn meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        let txn = self.shared.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        match table.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(decode_err)?)),
            None => Ok(None),
        }
    }

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> Result<(), StorageError<NodeId>> {
        let value = serde_json::to_vec(value).map_err(decode_err)?;
        self.run(|done| Job::Meta {
            key,
            value,
            durable: true,
            done,
        })
        .await
    }
}

/// The writer thread: applies queued jobs in order, as many as are waiting per
/// transaction, one fsync per transaction. Stops when every handle is gone.
fn run_writer(
    db: Arc<Database>,
    mut queue: mpsc::Receiver<Job>,
    pending: Arc<Mutex<Pending>>,
    flushed: Arc<Notify>,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = apply_batch(&db, &batch).map_err(|e| e.to_string());
        tracing::trace!(jobs = batch.len(), "raft log batch written");
        let appended = batch.iter().any(|j| matches!(j, Job::Append { .. }));
        for job in batch {
            match job {
                Job::Append {
                    entries,
                    seq,
                    callback,
                } => {
                    {
                        let mut pending = pending.lock().expect("pending lock");
                        for (index, _) in &entries {
                            // A later append may have replaced this entry already.
                            if pending.get(index).is_some_and(|(s, _)| *s == seq) {
                                pending.remove(index);
                            }
                        }
                    }
                    let io = result.clone().map_err(std::io::Error::other);
                    callback.log_io_completed(io);
                }
                Job::Truncate { done, .. } | Job::Purge { done, .. } | Job::Meta { done, .. } => {
                    let _ = done.send(result.clone());
                }
            }
        }
        if appended {
            flushed.notify_waiters();
        }
    }
}

fn apply_batch(db: &Database, batch: &[Job]) -> Result<(), redb::Error> {
    // Only the committed pointer may skip the fsync; anything else in the batch needs it.
    let durable = batch
        .iter()
        .any(|j| !matches!(j, Job::Meta { durable: false, .. }));
    let mut txn = db.begin_write()?;
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    })?;
    {
        let mut log = txn.open_table(LOG)?;
        let mut meta = txn.open_table(META)?;
        for job in batch {
            match job {
                Job::Append { entries, .. } => {
                    for (index, bytes) in entries {
                        log.insert(*index, bytes.as_slice())?;
                    }
                }
                Job::Truncate { from, .. } => {
                    log.retain_in(*from.., |_, _| false)?;
                }
                Job::Purge { to, purged, .. } => {
                    meta.insert(PURGED, purged.as_slice())?;
                    log.retain_in(..=*to, |_, _| false)?;
                }
                Job::Meta { key, value, .. } => {
                    meta.insert(*key, value.as_slice())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Checks what the log holds: every entry decodes and sits at its own index, each
/// follows the one before it, and the meta values decode. The reason when not.
fn check_entries(db: &Database) -> Result<(), String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let log = txn.open_table(LOG).map_err(|e| e.to_string())?;
    let mut previous: Option<u64> = None;
    for item in log.iter().map_err(|e| e.to_string())? {
        let (index, value) = item.map_err(|e| e.to_string())?;
        let index = index.value();
        let entry: Entry<TypeConfig> = serde_json::from_slice(value.value())
            .map_err(|e| format!("entry {index} does not decode: {e}"))?;
        if entry.log_id.index != index {
            return Err(format!(
                "the entry stored at index {index} says it is {}",
                entry.log_id
            ));
        }
        if previous.is_some_and(|p| p + 1 != index) {
            return Err(format!("entry {index} does not follow entry {previous:?}"));
        }
        previous = Some(index);
    }
    let meta = txn.open_table(META).map_err(|e| e.to_string())?;
    for key in [VOTE, PURGED, COMMITTED, SERVER_ID] {
        if let Some(v) = meta.get(key).map_err(|e| e.to_string())? {
            serde_json::from_slice::<serde_json::Value>(v.value())
                .map_err(|e| format!("{key} does not decode: {e}"))?;
        }
    }
    Ok(())
}

fn bounds(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl DiskLog {
    /// The entries in `range`; with `limited`, only the first ones that fit in
    /// [`super::REPLICATION_BYTES`] (at least one), read no further.
    fn read_entries(
        &self,
        range: impl RangeBounds<u64>,
        limited: bool,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let range = bounds(&range);
        // Snapshot the queued entries first: one that is written meanwhile is then found
        // on disk, never missed.
        let queued: Vec<Entry<TypeConfig>> = {
            let pending = self.shared.pending.lock().expect("pending lock");
            pending.range(range).map(|(_, (_, e))| e.clone()).collect()
        };
        // Sizes as stored (or, for a queued entry, as it would be).
        let mut out: BTreeMap<u64, (usize, Entry<TypeConfig>)> = BTreeMap::new();
        let mut total = 0usize;
        // The first index not read from disk when the budget stopped the read.
        let mut cut: Option<u64> = None;
        let txn = self.shared.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        for item in table.range(range).map_err(read_err)? {
            let (index, value) = item.map_err(read_err)?;
            let size = value.value().len();
            if limited && !out.is_empty() && total.saturating_add(size) > super::REPLICATION_BYTES {
                cut = Some(index.value());
                break;
            }
            total = total.saturating_add(size);
            out.insert(
                index.value(),
                (
                    size,
                    serde_json::from_slice(value.value()).map_err(decode_err)?,
                ),
            );
        }
        // Queued entries are newer than what is on disk at the same index. Every index
        // below the cut is on disk or queued, so what is kept stays contiguous.
        for e in queued {
            let index = e.log_id.index;
            if cut.is_some_and(|cut| index >= cut) {
                break;
            }
            let size = if limited { super::encoded_len(&e) } else { 0 };
            out.insert(index, (size, e));
        }
        let sized = out.into_values();
        Ok(if limited {
            super::within_replication_budget(sized)
        } else {
            sized.map(|(_, e)| e).collect()
        })
    }
}

impl RaftLogReader<TypeConfig> for DiskLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.read_entries(range, false)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.read_entries(start..end, true)
    }
}

impl RaftLogStorage<TypeConfig> for DiskLog {
    type LogReader = DiskLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.meta(PURGED)?;
        let on_disk = {
            let txn = self.shared.db.begin_read().map_err(read_err)?;
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
        let queued = self
            .shared
            .pending
            .lock()
            .expect("pending lock")
            .last_key_value()
            .map(|(_, (_, e))| e.log_id);
        let last = match (on_disk, queued) {
            (Some(a), Some(b)) => Some(if b.index >= a.index { b } else { a }),
            (a, b) => a.or(b),
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
        self.put_meta(VOTE, vote).await?;
        self.shared.ahead.saved_vote(vote);
        Ok(())
    }

    /// The vote saved, as a vote that no quorum has granted yet.
    ///
    /// openraft reads the vote only at start, and a server whose saved vote is its own
    /// granted one would start again as leader of that term, with no election. That is
    /// unsafe here: a leader sends its new entries ahead of its own fsync
    /// ([`super::ahead`]), so a leader killed before that fsync comes back without
    /// entries a follower holds, and in the same term it would write different ones at
    /// the same indexes. The follower would then take the two for one (same term, same
    /// index), keep its own, and apply it. A vote read back as not granted still counts
    /// as this server's vote in that term (it votes for no one else in it), but the server
    /// starts as a follower, and only a new election, in a later term, makes a leader of
    /// it; that leader's entries overwrite the lost ones on every follower.
    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let vote: Option<Vote<NodeId>> = self.meta(VOTE)?;
        Ok(vote.map(|v| Vote {
            committed: false,
            ..v
        }))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Queued behind the appends, without waiting: losing it only means a restarted
        // server waits for the leader's next commit before applying.
        let value = serde_json::to_vec(&committed).map_err(decode_err)?;
        self.shared.ahead.saved_committed(committed);
        let (done, _) = oneshot::channel();
        self.submit(Job::Meta {
            key: COMMITTED,
            value,
            durable: false,
            done,
        })
        .await
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
        let seq = self
            .shared
            .seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut encoded = Vec::new();
        let mut queued = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(decode_err)?;
            encoded.push((entry.log_id.index, bytes));
            queued.push(entry);
        }
        self.shared.ahead.offer(&queued);
        {
            let mut pending = self.shared.pending.lock().expect("pending lock");
            for e in queued {
                pending.insert(e.log_id.index, (seq, e));
            }
        }
        // Durable once the writer's commit returns; it then calls `callback`.
        self.submit(Job::Append {
            entries: encoded,
            seq,
            callback,
        })
        .await
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let from = log_id.index;
        self.shared.ahead.truncated();
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .retain(|index, _| *index < from);
        self.run(|done| Job::Truncate { from, done }).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let purged = serde_json::to_vec(&log_id).map_err(decode_err)?;
        let to = log_id.index;
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .retain(|index, _| *index > to);
        self.run(|done| Job::Purge { to, purged, done }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::store::StateMachine;
    use catalog::Catalog;
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

    #[tokio::test]
    async fn a_granted_vote_is_read_back_as_not_yet_granted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.db");
        DiskLog::open(&path)
            .unwrap()
            .save_vote(&Vote::new_committed(3, 7))
            .await
            .unwrap();
        // The same term and server: it still votes for no one else in term 3.
        let mut log = DiskLog::open(&path).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
    }

    /// An entry at `index` whose encoding is about `bytes` long.
    fn entry_of(index: u64, bytes: usize) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 7), index),
            payload: openraft::EntryPayload::Normal(vec![catalog::Command::DeleteQuery {
                id: "q".repeat(bytes),
            }]),
        }
    }

    fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn replication_reads_stop_at_the_byte_budget_but_always_give_one_entry() {
        use openraft::storage::RaftLogStorageExt;
        let dir = tempfile::tempdir().unwrap();
        let mut log = DiskLog::open(&dir.path().join("raft.db")).unwrap();
        let part = super::super::REPLICATION_BYTES * 2 / 5;
        log.blocking_append((1..=5).map(|i| entry_of(i, part)))
            .await
            .unwrap();
        log.blocking_append([entry_of(6, 3 * super::super::REPLICATION_BYTES)])
            .await
            .unwrap();
        // Two entries fit in the budget, a third would not.
        assert_eq!(
            indexes(&log.limited_get_log_entries(1, 7).await.unwrap()),
            [1, 2]
        );
        assert_eq!(
            indexes(&log.limited_get_log_entries(4, 7).await.unwrap()),
            [4, 5]
        );
        // An entry over the budget goes alone, never behind another.
        assert_eq!(
            indexes(&log.limited_get_log_entries(5, 7).await.unwrap()),
            [5]
        );
        assert_eq!(
            indexes(&log.limited_get_log_entries(6, 7).await.unwrap()),
            [6]
        );
        // Reads that are not for replication are whole.
        let all = log.try_get_log_entries(1..7).await.unwrap();
        assert_eq!(indexes(&all), [1, 2, 3, 4, 5, 6]);
        assert_eq!(all[5], entry_of(6, 3 * super::super::REPLICATION_BYTES));
        // The log in memory keeps the same budget.
        let mut memory = crate::raft::store::MemLog::default();
        memory
            .blocking_append((1..=6).map(|i| entry_of(i, part)))
            .await
            .unwrap();
        assert_eq!(
            indexes(&memory.limited_get_log_entries(2, 7).await.unwrap()),
            [2, 3]
        );
    }
}
