//! Datacenters of three servers: one Raft cluster bootstrapped through gossip, writes
//! forwarded to the leader, a new leader after the old one dies with every acknowledged
//! write kept, restarts from disk, a minority that cannot write, and a client agent that
//! keeps answering stale reads without a quorum.

use hyper::Method;
use serde_json::{Value, json};

use crate::support::cluster::{Member, Spec, leader_of, leader_other_than, servers};
use crate::support::{eventually, secs};

/// Registers external node `ext-<i>` through `agent`; returns whether it was acknowledged.
async fn register(agent: &Member, i: usize) -> bool {
    let body = json!({
        "Node": format!("ext-{i}"),
        "Address": "10.9.0.1",
        "Service": {"Service": "db", "ID": format!("db-{i}"), "Port": 5432},
    })
    .to_string();
    let r = agent.call(Method::PUT, "/v1/catalog/register", &body).await;
    r.status == 200 && r.body.trim() == "true"
}

/// The `ext-*` nodes `agent` returns for `/v1/catalog/nodes` with `query`.
async fn ext_nodes(agent: &Member, query: &str) -> Result<Vec<usize>, String> {
    let r = agent.get(&format!("/v1/catalog/nodes{query}")).await;
    if r.status != 200 {
        return Err(format!("{} {}", r.status, r.body.trim()));
    }
    let nodes: Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
    let mut out: Vec<usize> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["Node"].as_str()?.strip_prefix("ext-")?.parse().ok())
        .collect();
    out.sort();
    Ok(out)
}

async fn wait_for_writes(agent: &Member, query: &str, acked: &[usize]) {
    eventually(
        secs(30),
        &format!("{} to hold every acknowledged write", agent.name),
        || async {
            let have = ext_nodes(agent, query).await?;
            let missing: Vec<&usize> = acked.iter().filter(|i| !have.contains(i)).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing {missing:?}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_bootstrap_once_and_keep_every_write_when_the_leader_dies() {
    let mut members = servers(3).await;
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all, 3).await;
    // Writes through every server: followers forward them to the leader.
    let mut acked = Vec::new();
    for i in 0..30 {
        if register(&members[i % 3], i).await {
            acked.push(i);
        }
    }
    assert_eq!(
        acked.len(),
        30,
        "a healthy cluster acknowledges every write"
    );
    for m in &members {
        wait_for_writes(m, "?stale", &acked).await;
    }

    // The leader dies; the other two elect a new one and keep every write.
    let at = members.iter().position(|m| m.name == leader).unwrap();
    let old = members.remove(at);
    let old_dir = old.dir;
    old.agent.stop(false).await;
    let survivors: Vec<&Member> = members.iter().collect();
    let new_leader = leader_other_than(&survivors, 3, Some(&leader)).await;
    assert_ne!(new_leader, leader);
    for m in &members {
        wait_for_writes(m, "?consistent", &acked).await;
    }
    for i in 30..40 {
        if register(&members[i % 2], i).await {
            acked.push(i);
        }
    }
    assert!(
        acked.len() >= 38,
        "two of three servers form a quorum: {acked:?}"
    );

    // The old leader comes back from its data dir and catches up.
    let back = Member::start_in(
        Spec {
            name: leader.clone(),
            server: true,
            expect: Some(3),
            join: vec![members[0].gossip_addr()],
            ..Spec::default()
        },
        old_dir,
    )
    .await
    .unwrap();
    wait_for_writes(&back, "?stale", &acked).await;
    members.push(back);
    let all: Vec<&Member> = members.iter().collect();
    leader_of(&all, 3).await;
    for m in members {
        m.agent.stop(false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_three_servers_restart_from_disk_with_the_catalog_intact() {
    let members = servers(3).await;
    let all: Vec<&Member> = members.iter().collect();
    leader_of(&all, 3).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        if register(&members[i % 3], i).await {
            acked.push(i);
        }
    }
    assert_eq!(acked.len(), 20);
    let mut dirs = Vec::new();
    for m in members {
        dirs.push((m.name.clone(), m.dir));
        m.agent.stop(false).await;
    }
    // Back on new ports: the first one alone, the others join it by gossip, which is
    // also where Raft learns the servers' new addresses.
    let mut back: Vec<Member> = Vec::new();
    for (name, dir) in dirs {
        let join = back
            .first()
            .map(|m| vec![m.gossip_addr()])
            .unwrap_or_default();
        let spec = Spec {
            name,
            server: true,
            expect: Some(3),
            join,
            ..Spec::default()
        };
        back.push(Member::start_in(spec, dir).await.unwrap());
    }
    let all: Vec<&Member> = back.iter().collect();
    leader_of(&all, 3).await;
    for m in &back {
        wait_for_writes(m, "", &acked).await;
    }
    assert!(register(&back[1], 100).await);
    for m in back {
        m.agent.stop(false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_write_and_a_client_keeps_answering_stale_reads() {
    let mut members = servers(3).await;
    let all: Vec<&Member> = members.iter().collect();
    leader_of(&all, 3).await;
    let client = Member::start(Spec {
        name: "client-1".into(),
        join: vec![members[0].gossip_addr()],
        config: Some(r#"{"service": {"name": "web", "port": 80}}"#.into()),
        ..Spec::default()
    })
    .await;
    assert!(
        register(&client, 1).await,
        "a client's write reaches the leader"
    );
    wait_for_writes(&client, "", &[1]).await;
    eventually(secs(20), "web registered", || async {
        let r = client.get("/v1/catalog/service/web").await;
        if r.status == 200 && r.body.contains("client-1") {
            Ok(())
        } else {
            Err(r.body)
        }
    })
    .await;

    // Two of the three servers stop: the one left has no quorum. It learns that the
    // registration is committed from the leader's next message, which may still be on its
    // way: its own copy must hold it before the others go.
    let lone = members.remove(2);
    eventually(secs(20), "web in the last server's copy", || async {
        let r = lone.get("/v1/catalog/service/web?stale").await;
        if r.status == 200 && r.body.contains("client-1") {
            Ok(())
        } else {
            Err(r.body)
        }
    })
    .await;
    for m in members {
        m.agent.stop(false).await;
    }
    let r = lone
        .call(
            Method::PUT,
            "/v1/catalog/register",
            &json!({"Node": "ext-2", "Address": "10.9.0.2"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 500, "{}", r.body);
    // A follower finds no leader; the leader itself takes the write and then loses its
    // lease, and says the write may still be applied.
    assert!(
        ["No cluster leader", "leadership lost while committing log"].contains(&r.body.trim()),
        "{}",
        r.body
    );
    eventually(secs(30), "the default read to fail", || async {
        let r = lone.get("/v1/catalog/nodes").await;
        if r.status == 500 && r.body.trim() == "No cluster leader" {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await;
    // ...while stale reads keep answering, on the server and through the client, whose
    // DNS interface still finds the service.
    assert_eq!(ext_nodes(&lone, "?stale").await.unwrap(), [1]);
    let r = lone.get("/v1/catalog/nodes?stale").await;
    assert_eq!(r.header("x-consul-knownleader"), Some("false"));
    eventually(secs(30), "the client's stale read", || async {
        ext_nodes(&client, "?stale").await.and_then(|n| {
            if n == [1] {
                Ok(())
            } else {
                Err(format!("{n:?}"))
            }
        })
    })
    .await;
    let answer = client
        .dig("web.service.consul", hickory_proto::rr::RecordType::A)
        .await;
    assert_eq!(answer.answers.len(), 1, "{answer:?}");
    client.agent.stop(false).await;
    lone.agent.stop(false).await;
}

/// The servers of `agent`'s Raft configuration: (node name, ID, address).
async fn raft_servers(agent: &Member) -> Vec<(String, String, String)> {
    let config = agent.json("/v1/operator/raft/configuration").await;
    config["Servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let text = |k: &str| s[k].as_str().unwrap().to_owned();
            (text("Node"), text("ID"), text("Address"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_is_removed_by_operator_raft_remove_peer() {
    let mut members = servers(3).await;
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all, 3).await;
    // A follower dies without leaving; a survivor that is not the leader asks.
    let dead_at = members.iter().position(|m| m.name != leader).unwrap();
    let dead = members.remove(dead_at);
    let (_, dead_id, dead_addr) = raft_servers(&members[0])
        .await
        .into_iter()
        .find(|(name, _, _)| *name == dead.name)
        .unwrap();
    dead.agent.stop(false).await;
    let asker = members.iter().find(|m| m.name != leader).unwrap();

    let delete = |query: String| async move {
        asker
            .call(
                Method::DELETE,
                &format!("/v1/operator/raft/peer{query}"),
                "",
            )
            .await
    };
    let r = delete(String::new()).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Must specify either ?id"), "{}", r.body);
    let r = delete(format!("?id={dead_id}&address={dead_addr}")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = delete("?address=127.0.0.1:1".into()).await;
    assert_eq!(r.status, 500);
    assert!(
        r.body
            .contains("address \"127.0.0.1:1\" was not found in the Raft configuration"),
        "{}",
        r.body
    );

    let r = delete(format!("?address={dead_addr}")).await;
    assert_eq!((r.status, r.body.as_str()), (200, ""), "{}", r.body);
    for m in &members {
        eventually(
            secs(10),
            "the dead server to leave the configuration",
            || async {
                let names: Vec<String> = raft_servers(m).await.into_iter().map(|s| s.0).collect();
                if names.len() == 2 && !names.contains(&dead.name) {
                    Ok(())
                } else {
                    Err(format!("{} still sees {names:?}", m.name))
                }
            },
        )
        .await;
    }
    // It is gone: a second removal, by ID, finds nothing.
    let r = delete(format!("?id={dead_id}")).await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("was not found"), "{}", r.body);
    // The two that are left still commit writes.
    assert!(register(asker, 1).await);
    for m in members {
        m.agent.stop(false).await;
    }
}
