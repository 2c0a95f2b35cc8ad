//! Bytes of one server-port connection, as a stranger sends them to a server whose port
//! has nothing to prove with (so that Raft's messages are read at all): frames split off
//! and decoded, Raft's messages checked ([`crate::raft::guard`]) and, when they pass,
//! handed to a real single-server Raft (openraft, its log in memory) bootstrapped with
//! [`SERVER_ID`]. The same bytes read as sealed records of a keyring session never open.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogReader;
use openraft::{Config, Raft};

use crate::raft::store::{self, MemLog, StateMachine};
use crate::raft::{Message, NodeId, TypeConfig, guard};
use crate::rpc::decode;
use crate::rpc::frame::{FrameReader, Seal};
use crate::server::Request;
use catalog::{Catalog, ServerNode};

/// The Raft ID of the fuzzed server; Raft messages for another are refused.
pub const SERVER_ID: u64 = 1;

/// Longest a fuzzed message may keep Raft busy.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// What the bytes of one connection came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerPort {
    /// Frames read off the connection.
    pub frames: usize,
    /// Frames that decoded as requests.
    pub requests: usize,
    /// Raft messages refused before Raft saw them.
    pub refused: usize,
    /// Raft messages Raft handled.
    pub handled: usize,
    /// Frames that opened when read as sealed records (always 0: nobody holds the key).
    pub opened: usize,
    /// Whether Raft was still running afterwards (a panic in its core stops it).
    pub raft_alive: bool,
}

/// Serves `bytes` as one server-port connection (see the module documentation). Needs a
/// Tokio runtime with timers.
pub async fn server_port(bytes: &[u8]) -> ServerPort {
    let mut out = ServerPort::default();
    let (raft, log) = one_server().await;
    let shadow = guard::SnapshotShadow::default();
    let mut reader = FrameReader::new(Box::new(Cursor::new(bytes.to_vec())), None, None);
    while let Ok(frame) = reader.read().await {
        out.frames += 1;
        let Ok(request) = decode::<Request>(&frame.payload) else {
            continue;
        };
        out.requests += 1;
        let message: Message = match request {
            Request::AppendEntries(m) => m.into(),
            Request::Vote(m) => m.into(),
            Request::InstallSnapshot(m) => m.into(),
            _ => continue,
        };
        let term = raft.metrics().borrow().current_term;
        let checked = match &message {
            Message::AppendEntries(crate::raft::AppendEntries { to, request }) => {
                let committed = raft.metrics().borrow().last_applied;
                let local = match guard::below_committed(request, committed) {
                    Some(range) => {
                        let entries = log.clone().try_get_log_entries(range).await;
                        entries
                            .unwrap_or_default()
                            .iter()
                            .map(|e| e.log_id)
                            .collect()
                    }
                    None => Vec::new(),
                };
                guard::addressed(*to, SERVER_ID)
                    .and_then(|()| guard::append_entries(request, term))
                    .and_then(|()| guard::agrees_with_committed(request, committed, &local))
            }
            Message::Vote(crate::raft::Vote { to, request }) => {
                guard::addressed(*to, SERVER_ID).and_then(|()| guard::vote_request(request, term))
            }
            Message::InstallSnapshot(crate::raft::InstallSnapshot { to, request }) => {
                guard::addressed(*to, SERVER_ID)
                    .and_then(|()| guard::install_snapshot(request, term))
                    .and_then(|()| shadow.before(request, store::check_snapshot_data))
            }
        };
        if checked.is_err() {
            out.refused += 1;
            continue;
        }
        let call = async {
            match message {
                Message::AppendEntries(m) => {
                    let _ = raft.append_entries(m.request).await;
                }
                Message::Vote(m) => {
                    let _ = raft.vote(m.request).await;
                }
                Message::InstallSnapshot(m) => {
                    let request = m.request;
                    let copy = (!request.done).then(|| request.clone());
                    if let (Ok(_), Some(copy)) = (raft.install_snapshot(request).await, copy) {
                        shadow.accepted(&copy);
                    }
                }
            }
        };
        let _ = tokio::time::timeout(CALL_TIMEOUT, call).await;
        out.handled += 1;
    }
    let key =
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[7; 32]).expect("a 32-byte key");
    let mut sealed = FrameReader::new(
        Box::new(Cursor::new(bytes.to_vec())),
        Some(Seal::new(key)),
        None,
    );
    while sealed.read().await.is_ok() {
        out.opened += 1;
    }
    // A panic inside Raft's core task ends it: the API then reports it stopped.
    out.raft_alive = raft.with_raft_state(|_| ()).await.is_ok();
    let _ = raft.shutdown().await;
    out
}

/// A single server, bootstrapped, whose calls to other servers all fail.
async fn one_server() -> (Raft<TypeConfig>, MemLog) {
    let config = Config {
        cluster_name: "fuzz".into(),
        ..Config::default()
    }
    .validate()
    .expect("openraft's defaults are valid");
    let (_, writer) = Catalog::new();
    let machine = StateMachine::new(writer, None).expect("no file to read");
    let log = MemLog::default();
    let raft = Raft::new(SERVER_ID, Arc::new(config), Nowhere, log.clone(), machine)
        .await
        .expect("raft starts in memory");
    let node = ServerNode {
        name: "fuzzed".into(),
        rpc_addr: "127.0.0.1:8300".into(),
        node_id: "fuzzed".into(),
    };
    let _ = raft.initialize(BTreeMap::from([(SERVER_ID, node)])).await;
    // Once it leads and has applied its first entry, nothing but the fuzzed messages
    // changes its state.
    let _ = raft
        .wait(Some(CALL_TIMEOUT))
        .metrics(
            |m| m.current_leader == Some(SERVER_ID) && m.last_applied.is_some_and(|l| l.index >= 1),
            "the fuzzed server leads",
        )
        .await;
    (raft, log)
}

/// A network on which no other server answers.
#[derive(Clone)]
struct Nowhere;

#[derive(Debug, thiserror::Error)]
#[error("no other server while fuzzing")]
struct NoServer;

fn unreachable<E: std::error::Error>() -> RPCError<NodeId, ServerNode, RaftError<NodeId, E>> {
    RPCError::Unreachable(Unreachable::new(&NoServer))
}

impl RaftNetworkFactory<TypeConfig> for Nowhere {
    type Network = Nowhere;

    async fn new_client(&mut self, _target: NodeId, _node: &ServerNode) -> Nowhere {
        Nowhere
    }
}

impl RaftNetwork<TypeConfig> for Nowhere {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ServerNode, RaftError<NodeId>>>
    {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ServerNode, RaftError<NodeId, openraft::error::InstallSnapshotError>>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ServerNode, RaftError<NodeId>>> {
        Err(unreachable())
    }
}

/// Frames of a connection: `[length][JSON]` for each request given.
pub fn server_port_frames(requests: &[serde_json::Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, body) in requests.iter().enumerate() {
        let payload = serde_json::json!({"id": id, "body": body}).to_string();
        let len = u32::try_from(payload.len()).expect("a small frame");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    }

    fn append(term: u64, to: u64) -> serde_json::Value {
        json!({"AppendEntries": {"to": to, "request": {
            "vote": {"leader_id": {"term": term, "node_id": 9}, "committed": true},
            "prev_log_id": null, "entries": [], "leader_commit": null
        }}})
    }

    #[test]
    fn the_poisoned_frame_is_refused_and_a_sane_one_reaches_raft() {
        let bytes = server_port_frames(&[
            append(u64::MAX - 1, SERVER_ID),
            append(1, SERVER_ID + 1),
            append(5, SERVER_ID),
            json!({"Vote": {"to": SERVER_ID, "request": {
                "vote": {"leader_id": {"term": 6, "node_id": 9}, "committed": false},
                "last_log_id": null
            }}}),
            json!("Status"),
        ]);
        let out = runtime().block_on(server_port(&bytes));
        assert_eq!(
            out,
            ServerPort {
                frames: 5,
                requests: 5,
                refused: 2,
                handled: 2,
                opened: 0,
                raft_alive: true,
            }
        );
    }

    #[test]
    fn the_seeds_are_read_as_requests() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/server_port");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let out = runtime().block_on(server_port(&bytes));
            assert!(out.requests >= 1 && out.requests == out.frames, "{out:?}");
            assert!(out.raft_alive, "{out:?}");
            seen += 1;
        }
        assert!(seen >= 5);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_port_or_raft(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let out = runtime().block_on(server_port(&bytes));
            prop_assert_eq!(out.opened, 0);
            prop_assert!(out.raft_alive);
        }

        #[test]
        fn raft_messages_of_any_term_and_index_never_panic_raft(
            term in prop_oneof![0u64..8, any::<u64>()],
            index in prop_oneof![0u64..16, any::<u64>()],
            entries in 0usize..4,
            commit in prop_oneof![0u64..16, any::<u64>()],
        ) {
            let entries: Vec<serde_json::Value> = (0..entries as u64)
                .map(|i| json!({"log_id": {"leader_id": {"term": term, "node_id": 0}, "index": index.wrapping_add(i + 1)},
                                "payload": "Blank"}))
                .collect();
            let bytes = server_port_frames(&[json!({"AppendEntries": {"to": SERVER_ID, "request": {
                "vote": {"leader_id": {"term": term, "node_id": 9}, "committed": true},
                "prev_log_id": {"leader_id": {"term": term, "node_id": 0}, "index": index},
                "entries": entries,
                "leader_commit": {"leader_id": {"term": term, "node_id": 0}, "index": commit}
            }}})]);
            let out = runtime().block_on(server_port(&bytes));
            prop_assert_eq!(out.requests, 1);
            prop_assert!(out.raft_alive);
        }
    }
}
