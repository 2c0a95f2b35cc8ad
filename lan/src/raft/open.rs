//! Opening a server's Raft state at start: this server's Raft ID, the log, the latest
//! snapshot, each checked before it is believed, and a manual recovery of a lost quorum.
//!
//! **Damage.** The log's file is checked (redb's checksums, then every entry) and the
//! snapshot carries a SHA-256 of its contents. A server whose state is damaged but that
//! is one of several servers moves its whole Raft directory aside (`raft.damaged-<time>`,
//! kept for inspection) and starts as a new server: it gets a new Raft ID, the leader
//! replaces its old ID with the new one and sends it a good snapshot. A server that
//! bootstraps alone has no one to fetch from, and refuses to start, saying so.
//!
//! **Recovery of a lost quorum (`raft/peers.json`).** When too many servers are lost
//! for good, the others cannot elect a leader, and no membership change can happen
//! without one. As with Consul, the operator stops every remaining server, writes the
//! same `peers.json` into each one's `<data_dir>/raft/`:
//!
//! ```json
//! [{"id": "<node ID>", "address": "10.0.0.1:8300", "non_voter": false}, …]
//! ```
//!
//! and starts them. Each appends to its own log a configuration holding exactly those
//! servers (IDs as `operator raft list-peers` shows them), in a term after any it has
//! seen, then deletes the file. The servers then elect a leader among themselves, whose
//! log wins; the others' appended entries are replaced by the leader's. Writes that the
//! lost servers held and no remaining server did are lost, as in Consul.

// `RaftStartError` carries openraft's configuration error, which is large; it is
// returned once, at start.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Vote};
use serde::Deserialize;

use super::disk::{self, DiskLog};
use super::store::{self, MemLog, StateMachine};
use super::{NodeId, RaftStartError, Storage};
use catalog::{Catalog, ServerNode};

/// The log a server runs with.
pub(crate) enum Log {
    /// In memory (`-dev`).
    Memory(MemLog),
    /// In `raft.db`.
    Disk(DiskLog),
}

/// A server's Raft state, opened and checked, before Raft starts.
pub(crate) struct Opened {
    /// This server's Raft ID.
    pub(crate) id: NodeId,
    pub(crate) log: Log,
    pub(crate) machine: StateMachine,
    pub(crate) catalog: Catalog,
}

/// Opens the Raft state in `storage` for the server whose node ID is `node_id` (its Raft
/// ID when the state predates stored IDs). `alone`: the server bootstraps by itself, so
/// a damaged state cannot be fetched again from another server.
pub(crate) fn open(
    storage: &Storage,
    node_id: &str,
    alone: bool,
) -> Result<Opened, RaftStartError> {
    let dir = match storage {
        Storage::Memory => {
            let (catalog, writer) = Catalog::new();
            let machine = StateMachine::new(writer, None)
                .map_err(|e| RaftStartError::Storage(e.to_string()))?;
            return Ok(Opened {
                id: super::raft_id(node_id),
                log: Log::Memory(MemLog::default()),
                machine,
                catalog,
            });
        }
        Storage::Disk(dir) => dir,
    };
    match open_disk(dir, node_id) {
        Ok(opened) => Ok(opened),
        Err(Failure::Damaged(reason)) if alone => Err(RaftStartError::Storage(format!(
            "{reason}. This server bootstraps alone, so no other server holds a copy: \
             restore the catalog from a snapshot (`proconsul snapshot restore`) after moving \
             {} aside",
            dir.display()
        ))),
        Err(Failure::Damaged(reason)) => {
            let aside = set_aside(dir)?;
            tracing::error!(
                error = %reason,
                moved_to = %aside.display(),
                "the raft state is damaged; it was moved aside and this server starts as a new one, to be sent a good copy by the leader"
            );
            open_disk(dir, node_id).map_err(Failure::into_start_error)
        }
        Err(failure) => Err(failure.into_start_error()),
    }
}

/// Why opening the state on disk failed.
enum Failure {
    /// The state is damaged; it must not be believed.
    Damaged(String),
    /// Anything else (I/O, permissions, a bad `peers.json`).
    Other(RaftStartError),
}

impl Failure {
    fn into_start_error(self) -> RaftStartError {
        match self {
            Failure::Damaged(reason) => RaftStartError::Storage(reason),
            Failure::Other(e) => e,
        }
    }
}

fn other(text: String) -> Failure {
    Failure::Other(RaftStartError::Storage(text))
}

fn open_disk(dir: &Path, node_id: &str) -> Result<Opened, Failure> {
    std::fs::create_dir_all(dir).map_err(|e| other(format!("creating {}: {e}", dir.display())))?;
    let log = match DiskLog::open(&dir.join("raft.db")) {
        Ok(log) => log,
        Err(e @ disk::OpenError::Damaged { .. }) => return Err(Failure::Damaged(e.to_string())),
        Err(e) => return Err(other(e.to_string())),
    };
    let (id, new) = log.server_id(super::raft_id(node_id)).map_err(other)?;
    let snapshot = dir.join("snapshot.json");
    if new && snapshot.exists() {
        // A snapshot beside an empty log belongs to a log that was wiped: this server
        // starts anew, and the file is kept aside rather than believed or deleted.
        let aside = dir.join("snapshot.json.orphan");
        std::fs::rename(&snapshot, &aside)
            .map_err(|e| other(format!("moving {} aside: {e}", snapshot.display())))?;
        tracing::warn!(moved_to = %aside.display(), "a raft snapshot without a log was moved aside; this server starts as a new one");
    }
    let (catalog, writer) = Catalog::new();
    let machine = match StateMachine::new(writer, Some(snapshot)) {
        Ok(machine) => machine,
        Err(e @ store::LoadError::Damaged { .. }) => return Err(Failure::Damaged(e.to_string())),
        Err(e) => return Err(other(e.to_string())),
    };
    let peers = dir.join("peers.json");
    if peers.exists() {
        recover(&peers, id, &log, &machine)
            .map_err(|e| other(format!("recovering from {}: {e}", peers.display())))?;
    }
    Ok(Opened {
        id,
        log: Log::Disk(log),
        machine,
        catalog,
    })
}

/// Moves a damaged Raft directory aside; returns where it went.
fn set_aside(dir: &Path) -> Result<PathBuf, RaftStartError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = format!(
        "{}.damaged-{secs}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("raft")
    );
    let aside = dir.with_file_name(name);
    std::fs::rename(dir, &aside).map_err(|e| {
        RaftStartError::Storage(format!("moving the damaged {} aside: {e}", dir.display()))
    })?;
    Ok(aside)
}

/// One server of `peers.json`, as Consul writes it (Raft protocol 3).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Peer {
    /// The server's node ID (what `operator raft list-peers` shows as ID).
    id: String,
    /// Its server RPC address, `ip:port`.
    address: String,
    /// Whether it joins without a vote.
    #[serde(default)]
    non_voter: bool,
}

/// Appends the configuration of `peers.json` to the log, in a term after any this
/// server has seen, with this server's vote in that term; then deletes the file.
fn recover(path: &Path, me: NodeId, log: &DiskLog, machine: &StateMachine) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let peers: Vec<Peer> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if peers.is_empty() {
        return Err("it names no server".into());
    }
    let entries = log.entries_now()?;
    // The latest configuration this server knows: the last in its log, else the one
    // its snapshot holds.
    let known: BTreeMap<NodeId, ServerNode> = entries
        .iter()
        .rev()
        .find_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some(m.nodes().map(|(i, n)| (*i, n.clone())).collect()),
            _ => None,
        })
        .unwrap_or_else(|| {
            machine
                .membership()
                .nodes()
                .map(|(i, n)| (*i, n.clone()))
                .collect()
        });
    let mut nodes = BTreeMap::new();
    let mut voters = BTreeSet::new();
    for peer in &peers {
        let found = known
            .iter()
            .find(|(_, n)| n.node_id == peer.id)
            .or_else(|| known.iter().find(|(_, n)| n.rpc_addr == peer.address))
            .ok_or_else(|| {
                format!(
                    "server {} ({}) is not in this server's Raft configuration",
                    peer.id, peer.address
                )
            })?;
        let (id, node) = found;
        let mut node = node.clone();
        node.rpc_addr.clone_from(&peer.address);
        nodes.insert(*id, node);
        if !peer.non_voter {
            voters.insert(*id);
        }
    }
    if !voters.contains(&me) {
        return Err("it does not name this server as a voter".into());
    }
    let vote: Option<Vote<NodeId>> = log.meta_now(disk::VOTE_KEY)?;
    let last_term = entries.last().map_or(0, |e| e.log_id.leader_id.term);
    let term = vote.map_or(0, |v| v.leader_id.term).max(last_term) + 1;
    let index = entries
        .last()
        .map(|e| e.log_id)
        .max(machine.last_applied())
        .map_or(0, |l| l.index + 1);
    let names: Vec<String> = nodes.values().map(|n| n.name.clone()).collect();
    let entry: Entry<super::TypeConfig> = Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, me), index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    };
    let vote = serde_json::to_vec(&Vote::new(term, me)).map_err(|e| e.to_string())?;
    log.write_now(&[(disk::VOTE_KEY, vote)], Some(&entry))
        .map_err(|e| e.to_string())?;
    std::fs::remove_file(path).map_err(|e| format!("deleting it after use: {e}"))?;
    tracing::warn!(servers = %names.join(", "), term, index, "recovered the raft configuration from peers.json");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::storage::RaftLogStorage;

    fn disk(dir: &Path) -> Storage {
        Storage::Disk(dir.join("raft"))
    }

    fn log_of(opened: Opened) -> DiskLog {
        match opened.log {
            Log::Disk(log) => log,
            Log::Memory(_) => panic!("a disk log"),
        }
    }

    #[test]
    fn a_server_with_an_empty_log_gets_a_new_id_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(&disk(dir.path()), "node-a", false).unwrap();
        assert_ne!(first.id, super::super::raft_id("node-a"));
        let id = first.id;
        drop(first);
        assert_eq!(open(&disk(dir.path()), "node-a", false).unwrap().id, id);
        // The log wiped, the node ID kept: a server the others have never met.
        std::fs::remove_dir_all(dir.path().join("raft")).unwrap();
        assert_ne!(open(&disk(dir.path()), "node-a", false).unwrap().id, id);
    }

    #[tokio::test]
    async fn a_log_from_before_stored_ids_keeps_its_derived_id() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("raft")).unwrap();
        {
            let mut log = DiskLog::open(&dir.path().join("raft/raft.db")).unwrap();
            log.save_vote(&Vote::new(2, 9)).await.unwrap();
        }
        let opened = open(&disk(dir.path()), "node-a", false).unwrap();
        assert_eq!(opened.id, super::super::raft_id("node-a"));
    }

    /// A server whose log holds a configuration of three, `ids`, the first being itself.
    async fn three(dir: &Path, ids: [NodeId; 3]) -> Opened {
        let opened = open(&disk(dir), "node-a", false).unwrap();
        let me = opened.id;
        let log = log_of(opened);
        let nodes: BTreeMap<NodeId, ServerNode> = [me, ids[1], ids[2]]
            .into_iter()
            .enumerate()
            .map(|(i, id)| {
                let node = ServerNode {
                    name: format!("s{i}"),
                    rpc_addr: format!("10.0.0.{i}:8300"),
                    node_id: format!("uuid-{i}"),
                };
                (id, node)
            })
            .collect();
        let voters: BTreeSet<NodeId> = nodes.keys().copied().collect();
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(4, me), 7),
            payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
        };
        let vote = serde_json::to_vec(&Vote::new_committed(5, ids[1])).unwrap();
        log.write_now(&[(disk::VOTE_KEY, vote)], Some(&entry))
            .unwrap();
        drop(log);
        open(&disk(dir), "node-a", false).unwrap()
    }

    #[tokio::test]
    async fn peers_json_appends_the_new_configuration_in_a_later_term() {
        let dir = tempfile::tempdir().unwrap();
        let me = three(dir.path(), [0, 2, 3]).await.id;
        std::fs::write(
            dir.path().join("raft/peers.json"),
            r#"[{"id": "uuid-0", "address": "10.0.0.9:8300", "non_voter": false}]"#,
        )
        .unwrap();
        let opened = open(&disk(dir.path()), "node-a", false).unwrap();
        assert!(!dir.path().join("raft/peers.json").exists(), "used once");
        let mut log = log_of(opened);
        let entries = log.entries_now().unwrap();
        let last = entries.last().unwrap();
        assert_eq!((last.log_id.index, last.log_id.leader_id.term), (8, 6));
        let EntryPayload::Membership(m) = &last.payload else {
            panic!("a configuration entry")
        };
        assert_eq!(m.voter_ids().collect::<Vec<_>>(), [me]);
        assert_eq!(m.get_node(&me).unwrap().rpc_addr, "10.0.0.9:8300");
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(6, me)));
    }

    #[tokio::test]
    async fn a_peers_json_naming_strangers_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        three(dir.path(), [0, 2, 3]).await;
        let peers = dir.path().join("raft/peers.json");
        std::fs::write(&peers, r#"[{"id": "uuid-7", "address": "10.0.0.7:8300"}]"#).unwrap();
        let e = open(&disk(dir.path()), "node-a", false).err().unwrap();
        assert!(
            e.to_string()
                .contains("not in this server's Raft configuration"),
            "{e}"
        );
        assert!(peers.exists());
        std::fs::write(&peers, r#"[{"id": "uuid-1", "address": "10.0.0.1:8300"}]"#).unwrap();
        let e = open(&disk(dir.path()), "node-a", false).err().unwrap();
        assert!(e.to_string().contains("does not name this server"), "{e}");
    }

    #[tokio::test]
    async fn a_damaged_log_is_set_aside_unless_the_server_is_alone() {
        let dir = tempfile::tempdir().unwrap();
        let id = three(dir.path(), [0, 2, 3]).await.id;
        // One byte of the stored entry changed.
        let db = dir.path().join("raft/raft.db");
        let mut bytes = std::fs::read(&db).unwrap();
        let at = bytes
            .windows(5)
            .position(|w| w == b"uuid-")
            .expect("the entry is in the file");
        bytes[at] = b'U';
        std::fs::write(&db, &bytes).unwrap();
        let e = open(&disk(dir.path()), "node-a", true).err().unwrap();
        assert!(e.to_string().contains("bootstraps alone"), "{e}");
        let opened = open(&disk(dir.path()), "node-a", false).unwrap();
        assert_ne!(opened.id, id, "it starts as a new server");
        let aside: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("raft.damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "kept for inspection");
    }
}
