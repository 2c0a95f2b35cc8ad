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

pub mod acl;
mod autopilot;
pub mod clock;
mod contract;
pub mod duration;
mod kv;
mod names;
mod packed;
mod prepared;
mod query;
mod sessions;
mod state;
mod status;
mod txn;
mod types;
pub mod uuid;
mod wake;

use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tokio::time::Instant;

pub use autopilot::{AutopilotConfig, AutopilotHealth, ServerHealth};
pub use contract::{
    Consistency, Principal, QueryResult, ReadError, ReadMeta, ReadOptions, SentReadOptions,
    WriteError, Written, deadline_in, remaining_ms,
};
pub use kv::{
    KV_CHANGES_MAX, KV_CHANGES_MAX_BYTES, KV_MAX_VALUE_SIZE, KvAnswer, KvChange, KvChanges,
    KvEntry, KvRead, KvRefusal, KvReplication, KvWrite, TOMBSTONE_TTL, Unlisted,
};
pub use packed::{
    MAX_STAGED_BYTES, PackedSnapshot, RESTORE_PART_BYTES, RestorePart, StagedRestore,
};
use query::WaitsOn;
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
    META_RESERVED_PREFIX, META_VALUE_MAX, Node, NodeInfo, NodeServices, PreparedQuery,
    SERF_HEALTH_CHECK, Service, ServiceAddress, ServiceHealth, ServiceNode, ServiceQuery,
    StoredQuery, Weights, validate_meta,
};
use wake::{Changes, Waiters};

/// Shared, read-mostly access to the catalog. Cheap to clone.
///
/// Readers take the lock only for the synchronous work of a query; the Raft state
/// machine is the only writer.
#[derive(Clone, Debug)]
pub struct Catalog {
    state: Arc<RwLock<State>>,
    /// The newest index of any table.
    index: watch::Receiver<u64>,
    /// The newest index of nodes, services, checks and prepared queries.
    tables: watch::Receiver<u64>,
    /// Readers of one key, prefix or service.
    waiters: Waiters,
}

/// The writing side of a [`Catalog`], held by the Raft state machine (its only writer).
/// Dropping it ends every blocking read.
#[derive(Debug)]
pub struct CatalogWriter {
    state: Arc<RwLock<State>>,
    index: watch::Sender<u64>,
    tables: watch::Sender<u64>,
    waiters: Waiters,
}

/// The index of the tables [`WaitsOn::Catalog`] readers wait on.
fn tables_index(ix: Indexes) -> u64 {
    ix.nodes.max(ix.services).max(ix.checks).max(ix.queries)
}

/// Sets `tx` to `value`, waking its receivers only if that is a change.
fn advance(tx: &watch::Sender<u64>, value: u64) {
    tx.send_if_modified(|current| {
        let changed = *current != value;
        *current = value;
        changed
    });
}

impl Catalog {
    /// An empty catalog and the writer that fills it.
    pub fn new() -> (Catalog, CatalogWriter) {
        let state = Arc::new(RwLock::new(State::new()));
        let (index_tx, index) = watch::channel(0);
        let (tables_tx, tables) = watch::channel(0);
        let waiters = Waiters::default();
        (
            Catalog {
                state: state.clone(),
                index,
                tables,
                waiters: waiters.clone(),
            },
            CatalogWriter {
                state,
                index: index_tx,
                tables: tables_tx,
                waiters,
            },
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
    ///
    /// The read waits only on what its answer is made of ([`Query::waits_on`]): a read
    /// of one key is not woken by writes to other keys, nor a service's health by
    /// another service's checks.
    pub async fn query_blocking(
        &self,
        query: &Query,
        min_index: u64,
        deadline: Instant,
    ) -> (Answer, u64) {
        if min_index == 0 {
            return self.query(query);
        }
        // Held for the whole wait: a topic's slot lives as long as a reader holds it.
        let mut topic;
        let mut table;
        let changes = match query.waits_on() {
            WaitsOn::Topic(t) => {
                topic = self.waiters.subscribe(t);
                topic.changes()
            }
            WaitsOn::Catalog => {
                table = self.tables.clone();
                &mut table
            }
            WaitsOn::Everything => {
                table = self.index.clone();
                &mut table
            }
        };
        loop {
            // Mark the current value seen before reading, so a change that lands between
            // the read and the wait still wakes us.
            changes.borrow_and_update();
            let (answer, index) = self.query(query);
            // An index from the future (the client saw a catalog from before a restart
            // or from another server's longer log) answers at once, so that the client
            // resets instead of waiting out the whole wait.
            if index > min_index || min_index > self.index().max(index) {
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
    /// lock, and wakes the blocking queries they concern once.
    ///
    /// A command that replaces the whole catalog (a restore, or its last part) builds the
    /// new catalog before the lock is taken and drops the old one after it is released:
    /// for 170,000 instances that is seconds, during which readers would otherwise wait,
    /// and with them the runtime threads they block (Raft's heartbeats among them).
    pub fn apply_all(&self, index: u64, commands: &[Command]) -> Vec<Result<Applied, ApplyError>> {
        let mut built = self.build_replacements(index, commands);
        let mut retired = Vec::new();
        let mut state = self.state.write().expect("catalog lock poisoned");
        let results = commands
            .iter()
            .enumerate()
            .map(|(i, c)| match built.get_mut(i).and_then(Option::take) {
                Some(b) => state.apply_built(index, c, b, &mut retired),
                None => state.apply(index, c),
            })
            .collect();
        let changes = state.take_changes();
        let indexes = state.indexes();
        drop(state);
        // After the write, so that a reader woken here reads what woke it.
        self.waiters.announce(&changes);
        advance(&self.tables, tables_index(indexes));
        advance(&self.index, indexes.max());
        drop(retired);
        results
    }

    /// For each of `commands` that replaces the whole catalog, the catalog it leaves,
    /// built without the lock; empty when there is none. (What it is built from is
    /// checked again under the lock: `State::apply_built`.)
    fn build_replacements(&self, index: u64, commands: &[Command]) -> Vec<Option<state::Built>> {
        let replaces = |c: &Command| matches!(c, Command::Restore(_) | Command::RestorePart(_));
        if !commands.iter().any(replaces) {
            return Vec::new();
        }
        let staged = if commands
            .iter()
            .any(|c| matches!(c, Command::RestorePart(_)))
        {
            let state = self.state.read().expect("catalog lock poisoned");
            state.restoring.clone()
        } else {
            None
        };
        commands
            .iter()
            .map(|c| State::build_replacement(index, c, staged.as_ref()))
            .collect()
    }

    /// The catalog as a serialisable snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.state
            .read()
            .expect("catalog lock poisoned")
            .to_snapshot()
    }

    /// Replaces the whole catalog (snapshot install) and wakes every blocking query.
    pub fn replace(&self, snapshot: Snapshot) {
        // Built before the lock is taken, and the old catalog dropped after: see
        // `apply_all`.
        let built = State::from_snapshot(snapshot);
        let mut state = self.state.write().expect("catalog lock poisoned");
        let old = std::mem::replace(&mut *state, built);
        let indexes = state.indexes();
        drop(state);
        drop(old);
        let mut everything = Changes::default();
        everything.everything();
        self.waiters.announce(&everything);
        self.tables.send_replace(tables_index(indexes));
        self.index.send_replace(indexes.max());
    }
}

impl Drop for CatalogWriter {
    fn drop(&mut self) {
        self.waiters.close();
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

    fn put(key: &str, value: &str) -> Command {
        Command::Kv(KvWrite::Set {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            flags: 0,
            cas: None,
        })
    }

    fn web_on(node: &str, index: u64) -> Command {
        Command::Register(Registration {
            node: Node {
                name: node.into(),
                address: "10.0.0.2".into(),
                ..Node::default()
            },
            skip_node_update: false,
            service: Some(Service {
                id: format!("web-{index}"),
                name: "web".into(),
                ..Service::default()
            }),
            checks: vec![],
        })
    }

    /// Starts a blocking read of `q` from `min` and lets it reach its wait.
    async fn held(catalog: &Catalog, q: Query, min: u64) -> tokio::task::JoinHandle<(Answer, u64)> {
        let reader = catalog.clone();
        let far = Instant::now() + Duration::from_secs(3600);
        let handle = tokio::spawn(async move { reader.query_blocking(&q, min, far).await });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        handle
    }

    #[tokio::test]
    async fn a_key_read_answers_when_its_key_changes_and_not_for_others() {
        let (catalog, writer) = Catalog::new();
        writer.apply_all(5, &[put("a", "1"), put("b", "1")]);
        let key = |k: &str, read| Query::Kv {
            key: k.into(),
            read,
        };
        let one = held(&catalog, key("a", KvRead::Entry), 5).await;
        let tree = held(&catalog, key("", KvRead::Tree), 5).await;
        let other_tree = held(&catalog, key("c/", KvRead::Tree), 5).await;
        assert_eq!(catalog.waiters.topics(), 3);
        writer.apply_all(6, &[put("b", "2")]);
        tokio::task::yield_now().await;
        assert!(
            !one.is_finished(),
            "a write to b does not answer a read of a"
        );
        assert_eq!(tree.await.unwrap().1, 6, "but answers a read of every key");
        writer.apply_all(
            7,
            &[Command::Kv(KvWrite::Delete {
                key: "a".into(),
                cas: None,
            })],
        );
        assert_eq!(
            one.await.unwrap().1,
            7,
            "a deletion answers with the table index"
        );
        assert!(!other_tree.is_finished());
        other_tree.abort();
        let _ = other_tree.await;
        assert_eq!(catalog.waiters.topics(), 0, "slots go with their readers");
    }

    #[tokio::test]
    async fn a_service_read_answers_for_its_service_and_catalog_reads_ignore_keys() {
        let (catalog, writer) = Catalog::new();
        writer.apply_all(3, &[web_on("n1", 3)]);
        let health = Query::ServiceHealth {
            service: "WEB".into(),
            tags: vec![],
            passing_only: false,
            node_meta: vec![],
        };
        let web = held(&catalog, health, 3).await;
        let nodes = held(&catalog, Query::Nodes { node_meta: vec![] }, 3).await;
        writer.apply_all(4, &[put("k", "v"), register(4)]);
        assert_eq!(nodes.await.unwrap().1, 4);
        assert!(
            !web.is_finished(),
            "another node does not answer web's health"
        );
        writer.apply_all(5, &[web_on("n2", 5)]);
        let (answer, index) = web.await.unwrap();
        assert_eq!(index, 5);
        assert!(matches!(answer, Answer::ServiceHealth(l) if l.len() == 2));
    }

    #[tokio::test]
    async fn a_snapshot_install_answers_every_reader_and_a_closed_writer_ends_them() {
        let (catalog, writer) = Catalog::new();
        writer.apply_all(3, &[put("a", "1")]);
        let mut other = State::new();
        other.apply(9, &put("a", "2")).unwrap();
        let a = || Query::Kv {
            key: "a".into(),
            read: KvRead::Entry,
        };
        let before = held(&catalog, a(), 3).await;
        writer.replace(other.to_snapshot());
        assert_eq!(before.await.unwrap().1, 9);
        let last = held(&catalog, a(), 9).await;
        drop(writer);
        assert_eq!(last.await.unwrap().1, 9, "shutting down answers as is");
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
