//! Servers that come back wrong: with a wiped log (a new Raft ID at a known name), with a
//! damaged snapshot, or to a datacenter that lost its quorum for good (`peers.json`).

use hyper::Method;
use serde_json::json;

use crate::support::cluster::{Member, Spec, leader_of, servers, servers_with};
use crate::support::{eventually, secs};

/// Registers external node `ext-<i>`; whether it was acknowledged.
async fn register(agent: &Member, i: usize) -> bool {
    let body = json!({"Node": format!("ext-{i}"), "Address": "10.9.0.1"}).to_string();
    let r = agent.call(Method::PUT, "/v1/catalog/register", &body).await;
    r.status == 200 && r.body.trim() == "true"
}

/// Waits until `agent`'s stale reads hold `ext-0` … `ext-<n-1>`.
async fn holds(agent: &Member, n: usize) {
    eventually(
        secs(30),
        &format!("{} to hold {n} nodes", agent.name),
        || async {
            let r = agent.get("/v1/catalog/nodes?stale").await;
            let have = (0..n)
                .filter(|i| r.body.contains(&format!("\"ext-{i}\"")))
                .count();
            if have == n {
                Ok(())
            } else {
                Err(format!("{have} of {n}"))
            }
        },
    )
    .await;
}

/// The Raft configuration `m` sees: (node name, Raft ID, voter).
async fn configuration(m: &Member) -> Vec<(String, u64, bool)> {
    let deadline = tokio::time::Instant::now() + secs(5);
    match m.agent.lan().raft_status(deadline).await {
        Ok(s) => s
            .servers
            .into_iter()
            .map(|s| (s.node.name, s.raft_id, s.voter))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Starts `name` again from `dir`, joining `via`.
async fn restart(
    name: &str,
    dir: tempfile::TempDir,
    via: &Member,
    config: Option<String>,
) -> Member {
    Member::start_in(
        Spec {
            name: name.into(),
            server: true,
            expect: Some(3),
            join: vec![via.gossip_addr()],
            config,
            ..Spec::default()
        },
        dir,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_back_with_a_wiped_log_replaces_its_old_voter_and_its_loss_keeps_the_quorum() {
    let mut members = servers(3).await;
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all, 3).await;
    let at = members.iter().position(|m| m.name != leader).unwrap();
    let gone = members.remove(at);
    let name = gone.name.clone();
    let leader_member = members.iter().find(|m| m.name == leader).unwrap();
    let old_id = configuration(leader_member)
        .await
        .into_iter()
        .find(|(n, _, _)| *n == name)
        .unwrap()
        .1;
    let dir = gone.dir;
    gone.agent.stop(false).await;
    // Its Raft state is wiped; its node ID (data/node-id) is kept.
    std::fs::remove_dir_all(dir.path().join("data/raft")).unwrap();
    let back = restart(&name, dir, leader_member, None).await;

    // Until the new ID votes, the configuration never holds more than three voters, nor
    // two voters of that name.
    let new_id = eventually(secs(60), "the new raft ID to vote", || async {
        let config = configuration(leader_member).await;
        let voters = config.iter().filter(|s| s.2).count();
        let named: Vec<&(String, u64, bool)> = config.iter().filter(|s| s.0 == name).collect();
        assert!(voters <= 3, "four voters: {config:?}");
        assert!(named.iter().filter(|s| s.2).count() <= 1, "{config:?}");
        match named.as_slice() {
            [(_, id, true)] if *id != old_id => Ok(*id),
            _ => Err(format!("{config:?}")),
        }
    })
    .await;
    assert_ne!(new_id, old_id);

    // It dies at once: the two others are two of three voters and keep writing.
    back.agent.stop(false).await;
    eventually(secs(30), "a write without the returned server", || async {
        if register(&members[0], 1).await {
            Ok(())
        } else {
            Err("not acknowledged".to_string())
        }
    })
    .await;
    for m in members {
        m.agent.stop(false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_json_brings_back_a_datacenter_that_lost_its_quorum() {
    let mut members = servers(3).await;
    let all: Vec<&Member> = members.iter().collect();
    leader_of(&all, 3).await;
    for i in 0..5 {
        assert!(register(&members[i % 3], i).await);
    }
    // Two servers are lost for good; the third cannot elect itself.
    let survivor = members.remove(0);
    holds(&survivor, 5).await;
    for m in members {
        m.agent.stop(false).await;
    }
    let node_id = survivor.agent.lan().config().node_id.clone();
    let name = survivor.name.clone();
    let dir = survivor.dir;
    survivor.agent.stop(false).await;

    // The operator writes peers.json with the one server left, and starts it.
    let peers = json!([{"id": node_id, "address": "127.0.0.1:8300", "non_voter": false}]);
    let file = dir.path().join("data/raft/peers.json");
    std::fs::write(&file, peers.to_string()).unwrap();
    let back = Member::start_in(
        Spec {
            name,
            server: true,
            expect: Some(3),
            ..Spec::default()
        },
        dir,
    )
    .await
    .unwrap();
    assert!(!file.exists(), "peers.json is deleted once used");
    leader_of(&[&back], 1).await;
    holds(&back, 5).await;
    eventually(secs(20), "a write after the recovery", || async {
        if register(&back, 5).await {
            Ok(())
        } else {
            Err("not acknowledged".to_string())
        }
    })
    .await;
    back.agent.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_damaged_snapshot_starts_anew_and_gets_the_leaders_catalog() {
    // Snapshots every 5 entries, so that every server writes one soon.
    let config = Some(r#"{"raft_snapshot_threshold": 5}"#.to_string());
    let mut members = servers_with(3, config.clone()).await;
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all, 3).await;
    for i in 0..20 {
        assert!(register(&members[i % 3], i).await);
    }
    let at = members.iter().position(|m| m.name != leader).unwrap();
    let follower = members.remove(at);
    holds(&follower, 20).await;
    let snapshot = follower.dir.path().join("data/raft/snapshot.json");
    eventually(secs(30), "the follower's snapshot file", || async {
        if snapshot.exists() {
            Ok(())
        } else {
            Err("none yet".to_string())
        }
    })
    .await;
    let name = follower.name.clone();
    let dir = follower.dir;
    follower.agent.stop(false).await;

    // One byte of the snapshot changes on disk.
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&snapshot, &bytes).unwrap();

    let back = restart(&name, dir, &members[0], config).await;
    holds(&back, 20).await;
    let data = back.dir.path().join("data");
    let aside = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("raft.damaged-"));
    assert!(aside, "the damaged state is kept aside");
    members.push(back);
    let all: Vec<&Member> = members.iter().collect();
    leader_of(&all, 3).await;
    for m in members {
        m.agent.stop(false).await;
    }
}
