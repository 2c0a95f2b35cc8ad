//! Group commit for catalog writes: concurrent writes share one Raft entry.
//!
//! openraft 0.9 waits for each entry's log flush before it submits the next entry it
//! was given, so one entry per write means one fsync per write, whatever the storage
//! does. Writes therefore go through a queue: a task takes whatever is waiting (up to
//! [`MAX_BATCH`] commands), proposes them as one entry, and, while that entry commits,
//! the next writes gather for the next one. A lone write is proposed at once, so nothing
//! waits on a timer. Every command of an entry is applied at the entry's index, in
//! order, and gets its own result.
//!
//! With the log on disk, the next entry is proposed once the last one is durable here
//! (or its write is over), not as soon as a slot is free: openraft would only queue it
//! behind the fsync under way and then give it an fsync of its own, while the writes
//! that arrive during that fsync can all share the next entry.

use std::sync::Arc;

use openraft::Raft;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::TypeConfig;
use catalog::{Command, WriteError, Written};

/// Most commands in one Raft entry.
pub(crate) const MAX_BATCH: usize = 256;
/// Most bytes of commands (as encoded) in one Raft entry, so that an entry of several
/// writes fits in one AppendEntries of [`super::REPLICATION_BYTES`].
pub(crate) const MAX_BATCH_BYTES: usize = super::REPLICATION_BYTES;
/// Largest single command. Writes are far smaller (a key's value is bounded by
/// `kv_max_value_size`, a restore travels in parts of [`catalog::RESTORE_PART_BYTES`]);
/// an entry this large still replicates, alone in its AppendEntries.
pub(crate) const MAX_COMMAND_BYTES: usize = 48 * 1024 * 1024;
/// Writes waiting for a batch; a writer waits (within its deadline) when it is full.
pub(crate) const WRITE_QUEUE: usize = 4096;
/// Entries being committed at once.
const IN_FLIGHT: usize = 4;

/// A write waiting for its batch: the command and where its result goes.
pub(crate) type Pending = (Command, oneshot::Sender<Result<Written, WriteError>>);

/// Starts the batcher; returns the queue writes go to.
/// `flushes` is told when the log on disk has made appends durable (`None` for a log
/// in memory).
pub(crate) fn start(
    raft: Raft<TypeConfig>,
    flushes: Option<Arc<Notify>>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> mpsc::Sender<Pending> {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    tasks.spawn(run(raft, rx, flushes, tasks.clone(), shutdown));
    tx
}

async fn run(
    raft: Raft<TypeConfig>,
    mut queue: mpsc::Receiver<Pending>,
    flushes: Option<Arc<Notify>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        // Take a slot first: while all are busy, writes keep gathering in the queue.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        let first = match carried.take() {
            Some(w) => w,
            None => tokio::select! {
                _ = shutdown.cancelled() => return,
                w = queue.recv() => match w {
                    Some(w) => w,
                    None => return,
                },
            },
        };
        let mut bytes = super::encoded_len(&first.0);
        if bytes > MAX_COMMAND_BYTES {
            let _ = first.1.send(Err(WriteError::TooLarge(bytes)));
            continue;
        }
        let mut batch = vec![first];
        // A command that would overflow this batch starts the next one.
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(w) => {
                    let size = super::encoded_len(&w.0);
                    if size > MAX_COMMAND_BYTES {
                        let _ = w.1.send(Err(WriteError::TooLarge(size)));
                    } else if bytes + size > MAX_BATCH_BYTES {
                        carried = Some(w);
                        break;
                    } else {
                        bytes += size;
                        batch.push(w);
                    }
                }
                Err(_) => break,
            }
        }
        // Listening from before the proposal, so that its flush cannot be missed.
        let flushed = flushes.as_ref().map(|f| f.clone().notified_owned());
        // Closed when the write below is over (answered, failed or dropped).
        let (over_tx, over) = oneshot::channel::<()>();
        let raft = raft.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let _over = over_tx;
            let (commands, waiters): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
            let entries = commands.len() as u64;
            let start = std::time::Instant::now();
            match raft.client_write(commands).await {
                Ok(response) => {
                    metrics::counter!("raft.apply").increment(entries);
                    metrics::histogram!("raft.commitTime")
                        .record(start.elapsed().as_secs_f64() * 1000.0);
                    let index = response.log_id.index;
                    let mut results = response.data.into_iter();
                    for waiter in waiters {
                        let result = match results.next() {
                            Some(Ok(applied)) => Ok(Written { index, applied }),
                            Some(Err(e)) => Err(WriteError::Rejected(e)),
                            None => Err(WriteError::Rpc("no result for a batched write".into())),
                        };
                        let _ = waiter.send(result);
                    }
                }
                Err(e) => {
                    // openraft (0.9) answers ForwardToLeader when this server is not the
                    // leader as the entry is submitted, and when a new leader's log
                    // truncates the entry (a conflicting suffix). Either way the entry is
                    // not and will not be applied, so "No cluster leader" is true. An
                    // entry a new leader keeps is answered when it is applied.
                    let error = match e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(_))
                        | RaftError::APIError(ClientWriteError::ChangeMembershipError(_)) => {
                            WriteError::NoLeader
                        }
                        RaftError::Fatal(_) => WriteError::ShuttingDown,
                    };
                    for waiter in waiters {
                        let _ = waiter.send(Err(error.clone()));
                    }
                }
            }
        });
        if let Some(flushed) = flushed {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = flushed => {}
                _ = over => {}
            }
        }
    }
}
