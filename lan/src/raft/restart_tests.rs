//! Three servers restarting on their logs on disk, one of them holding an entry its old
//! leader lost: what a leader killed between sending its entries ahead
//! ([`super::ahead`]) and its own fsync leaves behind.
//!
//! The servers run openraft with the real log ([`DiskLog`]) and state machine, and call
//! each other's Raft directly: the server port's transport is not what is under test.

// openraft's `RPCError` is what its network trait returns; the helpers return it too.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Raft, Vote};

use super::disk::DiskLog;
use super::store::StateMachine;
use super::{NodeId, TypeConfig};
use catalog::{Answer, Catalog, Command, KvAnswer, KvRead, KvWrite, Query, ServerNode};

/// The servers by Raft ID; a server not in it is down.
#[derive(Clone, Default)]
struct Router(Arc<Mutex<HashMap<NodeId, Raft<TypeConfig>>>>);

struct Conn {
    target: NodeId,
    router: Router,
}

#[derive(Debug, thiserror::Error)]
#[error("server {0} is down")]
struct Down(NodeId);

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, ServerNode, RaftError<NodeId, E>>>;

impl Conn {
    fn raft<E: std::error::Error>(&self) -> RpcResult<Raft<TypeConfig>, E> {
        let raft = self.router.0.lock().unwrap().get(&self.target).cloned();
        raft.ok_or_else(|| RPCError::Unreachable(Unreachable::new(&Down(self.target))))
    }

    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, ServerNode, RaftError<NodeId, E>> {
        match e {
            RaftError::Fatal(f) => RPCError::Network(NetworkError::new(&f)),
            e => RPCError::RemoteError(RemoteError::new(self.target, e)),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _node: &ServerNode) -> Conn {
        Conn {
            target,
            router: self.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.raft()?
            .append_entries(rpc)
            .await
            .map_err(|e| self.remote(e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.raft()?
            .install_snapshot(rpc)
            .await
            .map_err(|e| self.remote(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.raft()?.vote(rpc).await.map_err(|e| self.remote(e))
    }
}

const LEADER: NodeId = 1;

fn put(key: &str) -> Vec<Command> {
    vec![Command::Kv(KvWrite::Set {
        key: key.into(),
        value: b"v".to_vec(),
        flags: 0,
        cas: None,
    })]
}

fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, LEADER), index),
        payload,
    }
}

/// Writes a log of term 1 under leader 1, with the vote every server of that term saved:
/// the configuration of servers 1-3 and a key, and `lost` after them when given.
async fn write_log(dir: &Path, lost: Option<&str>) {
    let mut log = DiskLog::open(&dir.join("raft.db")).unwrap();
    let nodes: BTreeMap<NodeId, ServerNode> = (1..=3)
        .map(|id| {
            let node = ServerNode {
                name: format!("s{id}"),
                rpc_addr: format!("127.0.0.1:{}", 8300 + id),
                node_id: format!("uuid-{id}"),
            };
            (id, node)
        })
        .collect();
    let voters: BTreeSet<NodeId> = nodes.keys().copied().collect();
    let mut entries = vec![
        entry(
            0,
            EntryPayload::Membership(Membership::new(vec![voters], nodes)),
        ),
        entry(1, EntryPayload::Normal(put("before"))),
    ];
    if let Some(key) = lost {
        entries.push(entry(2, EntryPayload::Normal(put(key))));
    }
    log.save_vote(&Vote::new_committed(1, LEADER))
        .await
        .unwrap();
    log.save_committed(Some(entries[1].log_id)).await.unwrap();
    log.blocking_append(entries).await.unwrap();
}

/// Waits up to 10 s for `check` to hold on the metrics of `raft`.
async fn until(
    raft: &Raft<TypeConfig>,
    what: &str,
    check: impl Fn(&openraft::RaftMetrics<NodeId, ServerNode>) -> bool + Send + 'static,
) {
    raft.wait(Some(Duration::from_secs(10)))
        .metrics(check, what)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_entries_it_sent_ahead_does_not_lead_its_old_term_again() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Server 2 holds entry 2, sent ahead by leader 1, which was killed before its own
    // copy was durable.
    for (id, dir) in (1..=3).zip(&dirs) {
        write_log(dir.path(), (id == 2).then_some("lost")).await;
    }
    let config = Arc::new(
        openraft::Config {
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            ..Default::default()
        }
        .validate()
        .unwrap(),
    );
    let router = Router::default();
    let mut servers = Vec::new();
    for (id, dir) in (1..=3).zip(&dirs) {
        let log = DiskLog::open(&dir.path().join("raft.db")).unwrap();
        let (catalog, writer) = Catalog::new();
        let machine = StateMachine::new(writer, Some(dir.path().join("snapshot.json"))).unwrap();
        let raft = Raft::new(id, config.clone(), router.clone(), log, machine)
            .await
            .unwrap();
        router.0.lock().unwrap().insert(id, raft.clone());
        servers.push((raft, catalog));
    }
    let (first, _) = &servers[0];
    until(first, "a leader", |m| m.current_leader.is_some()).await;
    let leader = first.metrics().borrow().current_leader.unwrap();
    let (raft, _) = &servers[leader as usize - 1];
    let written = raft.client_write(put("after")).await.unwrap();
    assert!(
        written.log_id.leader_id.term > 1,
        "the leader of term 1 came back as leader of term 1: {:?}",
        written.log_id
    );
    let index = written.log_id.index;
    for (raft, _) in &servers {
        until(raft, "the write applied", move |m| {
            m.last_applied.is_some_and(|l| l.index >= index)
        })
        .await;
    }
    // Every server applied the same entries: the same keys, at the same indexes.
    let keys = |catalog: &Catalog| {
        let query = Query::Kv {
            key: String::new(),
            read: KvRead::Tree,
        };
        match catalog.query(&query).0 {
            Answer::Kv(KvAnswer::Entries(entries)) => entries
                .into_iter()
                .map(|e| (e.key, e.modify_index))
                .collect::<Vec<_>>(),
            other => panic!("not entries: {other:?}"),
        }
    };
    let first_keys = keys(&servers[0].1);
    assert!(
        first_keys.iter().any(|(k, _)| k == "after"),
        "{first_keys:?}"
    );
    for (id, (_, catalog)) in (1..=3).zip(&servers) {
        assert_eq!(
            keys(catalog),
            first_keys,
            "server {id} applied other entries"
        );
    }
    for (raft, _) in servers {
        raft.shutdown().await.unwrap();
    }
}
