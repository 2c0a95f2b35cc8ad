//! # proconsul-catalog: the service catalog of one datacenter
//!
//! Its types, the state machine Raft applies (services and checks, prepared queries, the
//! key/value store), read queries and prepared queries, the
//! shared handle readers use, and the read/write contract every layer shares
//! ([`Consistency`], [`ReadOptions`], [`ReadMeta`], [`ReadError`], [`WriteError`],
//! deadlines as requests carry them). Consul's durations ([`duration`]) and UUIDs
//! ([`uuid`]) are here too, as the catalog's values use them.
//!
//! ```text
//!   Raft log ──apply(index, Command)──▶ State ──query(&Query)──▶ (Answer, index)
//!                                        │
//!                       watch<u64> ◀─────┘ newest index, for blocking queries
//! ```
//!
//! Invariants: nothing here does I/O or knows Raft, gossip or HTTP; replication is
//! crate `proconsul-lan`'s. Applying a command is deterministic: every server that
//! applies the same log holds the same catalog.

#![warn(missing_docs)]

mod contract;
pub mod duration;
mod kv;
mod prepared;
mod query;
mod sessions;
mod state;
mod status;
mod txn;
mod types;
pub mod uuid;

use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tokio::time::Instant;

pub use contract::{
    Consistency, QueryResult, ReadError, ReadMeta, ReadOptions, SentReadOptions, WriteError,
    Written, deadline_in, remaining_ms,
};
pub use kv::{
    KV_MAX_VALUE_SIZE, KvAnswer, KvEntry, KvRead, KvRefusal, KvReplication, KvWrite, TOMBSTONE_TTL,
};
pub use query::{Answer, Query};
pub use sessions::{
    Behavior, DEFAULT_LOCK_DELAY, MAX_LOCK_DELAY, SESSION_TTL_MAX, SESSION_TTL_MIN, Session,
    SessionRead, SessionWrite,
};
pub use state::{
    Applied, ApplyError, Command, Deregistration, Indexes, Registration, Snapshot, State,
};
pub use status::{RaftServer, RaftStatus, ServerNode};
pub use txn::{TXN_MAX_OPS, TxnError, TxnOp, TxnOutcome, TxnVerb, too_many};
pub use types::{
    Check, Datacenter, DatacenterError, Failover, Health, META_KEY_MAX, META_MAX_PAIRS,
    META_RESERVED_PREFIX, META_VALUE_MAX, Node, NodeServices, PreparedQuery, SERF_HEALTH_CHECK,
    Service, ServiceAddress, ServiceHealth, ServiceNode, ServiceQuery, Weights, validate_meta,
};

/// Shared, read-mostly access to the catalog. Cheap to clone.
///
/// Readers take the lock only for the synchronous work of a query; the Raft state
/// machine is the only writer.
#[derive(Clone, Debug)]
pub struct Catalog {
    state: Arc<RwLock<State>>,
    index: watch::Receiver<u64>,
}

/// The writing side of a [`Catalog`], held by the Raft state machine (its only writer).
#[derive(Debug)]
pub struct CatalogWriter {
    state: Arc<RwLock<State>>,
    index: watch::Sender<u64>,
}

impl Catalog {
    /// An empty catalog and the writer that fills it.
    pub fn new() -> (Catalog, CatalogWriter) {
        let state = Arc::new(RwLock::new(State::new()));
        let (tx, rx) = watch::channel(0);
        (
            Catalog {
                state: state.clone(),
                index: rx,
            },
            CatalogWriter { state, index: tx },
        )
    }

    /// Runs `f` on the current state under the read lock.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let state = self.state.read().expect("catalog lock poisoned");
        f(&state)
    }

    /// The newest index of any table: it changes whenever anything in the catalog does.
    pub fn index(&self) -> u64 {
        *self.index.borrow()
    }

    /// Answers `query` now.
    pub fn query(&self, query: &Query) -> (Answer, u64) {
        self.read(|s| s.query(query))
    }

    /// Answers `query` once its index exceeds `min_index`, or at `deadline` with whatever
    /// is there then. `min_index == 0` answers at once, as Consul's blocking queries do.
    pub async fn query_blocking(
        &self,
        query: &Query,
        min_index: u64,
        deadline: Instant,
    ) -> (Answer, u64) {
        let mut changes = self.index.clone();
        loop {
            // Mark the current value seen before reading, so a change that lands between
            // the read and the wait still wakes us.
            let newest = *changes.borrow_and_update();
            let (answer, index) = self.query(query);
            // An index from the future (the client saw a catalog from before a restart
            // or from another server's longer log) answers at once, so that the client
            // resets instead of waiting out the whole wait.
            if min_index == 0 || index > min_index || min_index > newest.max(index) {
                return (answer, index);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                // Deadline reached, or the writer is gone (shutting down): answer as is.
                Ok(Err(_)) | Err(_) => return self.query(query),
            }
        }
    }
}

impl CatalogWriter {
    /// Applies several commands at one Raft index (a batched entry), in order, under one
    /// lock, and wakes blocking queries once.
    pub fn apply_all(&self, index: u64, commands: &[Command]) -> Vec<Result<Applied, ApplyError>> {
        let mut state = self.state.write().expect("catalog lock poisoned");
        let results = commands.iter().map(|c| state.apply(index, c)).collect();
        let newest = state.indexes().max();
        self.index.send_if_modified(|current| {
            let changed = *current != newest;
            *current = newest;
            changed
        });
        results
    }

    /// The catalog as a serialisable snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.state
            .read()
            .expect("catalog lock poisoned")
            .to_snapshot()
    }

    /// Replaces the whole catalog (snapshot install).
    pub fn replace(&self, snapshot: Snapshot) {
        let mut state = self.state.write().expect("catalog lock poisoned");
        *state = State::from_snapshot(snapshot);
        self.index.send_replace(state.indexes().max());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn register(index: u64) -> Command {
        Command::Register(Registration {
            node: Node {
                name: format!("n{index}"),
                address: "10.0.0.1".into(),
                ..Node::default()
            },
            skip_node_update: false,
            service: None,
            checks: vec![],
        })
    }

    #[tokio::test]
    async fn blocking_query_wakes_on_a_change() {
        let (catalog, writer) = Catalog::new();
        assert_eq!(writer.apply_all(3, &[register(3)]), [Ok(Applied::Done)]);
        let q = Query::Nodes { node_meta: vec![] };
        let reader = catalog.clone();
        let far = Instant::now() + Duration::from_secs(60);
        let waiter = tokio::spawn(async move { reader.query_blocking(&q, 3, far).await });
        tokio::task::yield_now().await;
        assert_eq!(writer.apply_all(4, &[register(4)]), [Ok(Applied::Done)]);
        let (answer, index) = waiter.await.unwrap();
        assert_eq!(index, 4);
        assert!(matches!(answer, Answer::Nodes(n) if n.len() == 2));
    }

    #[tokio::test]
    async fn an_index_from_the_future_answers_at_once() {
        let (catalog, writer) = Catalog::new();
        assert_eq!(writer.apply_all(3, &[register(3)]), [Ok(Applied::Done)]);
        let q = Query::Nodes { node_meta: vec![] };
        let far = Instant::now() + Duration::from_secs(3600);
        let (_, index) = tokio::time::timeout(
            Duration::from_secs(5),
            catalog.query_blocking(&q, 5000, far),
        )
        .await
        .expect("answers without waiting");
        assert_eq!(index, 3);
    }

    #[tokio::test]
    async fn blocking_query_returns_at_the_deadline() {
        let (catalog, writer) = Catalog::new();
        assert_eq!(writer.apply_all(3, &[register(3)]), [Ok(Applied::Done)]);
        let q = Query::Nodes { node_meta: vec![] };
        let (_, index) = catalog
            .query_blocking(&q, 3, Instant::now() + Duration::from_millis(20))
            .await;
        assert_eq!(index, 3);
    }
}
