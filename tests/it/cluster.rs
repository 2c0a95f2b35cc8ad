//! Datacenters of several in-process agents: one server and client agents that find
//! each other by gossip, notice failures, leave, rejoin, survive partitions and rotate
//! their gossip key, all over real sockets on loopback.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use hyper::Method;
use serde_json::{Value, json};

use crate::support::cluster::{Cluster, Member, Spec};
use crate::support::{eventually, secs};

const WEB: &str = r#"{"service": {"name": "web", "port": 8080}}"#;

/// The node names of the `?passing` instances of a service, as `agent` sees them.
async fn passing(agent: &Member, service: &str) -> Result<Vec<String>, String> {
    let r = agent
        .get(&format!("/v1/health/service/{service}?passing"))
        .await;
    if r.status != 200 {
        return Err(format!("{} {}", r.status, r.body));
    }
    let list: Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
    let mut nodes: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Node"]["Node"].as_str().unwrap().to_owned())
        .collect();
    nodes.sort();
    Ok(nodes)
}

fn status_of(seen: &[(String, u64)], name: &str) -> Option<u64> {
    seen.iter().find(|(n, _)| n == name).map(|(_, s)| *s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_agents_join_detect_a_failure_see_a_leave_and_take_back_a_rejoin() {
    // One server and seven clients; client-1 and client-2 run `web`.
    let cluster = Cluster::start(7, |s| {
        if s.name == "client-1" || s.name == "client-2" {
            s.config = Some(WEB.into());
        }
    })
    .await;
    cluster.converged(&cluster.names()).await;
    let reader = &cluster.members[5];

    // Every client's node reached the catalog through the server, with its serfHealth,
    // and a client answers catalog reads (HTTP and DNS) by asking the server.
    eventually(secs(20), "web on both clients", || async {
        match passing(reader, "web").await? {
            n if n == ["client-1", "client-2"] => Ok(()),
            n => Err(format!("{n:?}")),
        }
    })
    .await;
    let nodes = reader.json("/v1/catalog/nodes").await;
    assert_eq!(nodes.as_array().unwrap().len(), 8, "{nodes}");
    let answer = reader.dig("web.service.consul", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let mut ips: Vec<IpAddr> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    ips.sort();
    let mut want = vec![cluster.members[1].ip, cluster.members[2].ip];
    want.sort();
    assert_eq!(ips, want);

    // client-1 stops without leaving: it is declared failed, its serfHealth goes
    // critical and its instance leaves `?passing` and DNS.
    let mut members = cluster.members;
    let crashed = members.remove(1);
    let crashed_dir = crashed.dir;
    crashed.agent.stop(false).await;
    eventually(secs(30), "client-1 failed everywhere", || async {
        for m in &members {
            let seen = m.member_status().await;
            if status_of(&seen, "client-1") != Some(4) {
                return Err(format!("{} sees {seen:?}", m.name));
            }
        }
        Ok(())
    })
    .await;
    eventually(secs(20), "web only on client-2", || async {
        match passing(&members[4], "web").await? {
            n if n == ["client-2"] => Ok(()),
            n => Err(format!("{n:?}")),
        }
    })
    .await;
    let checks = members[0].json("/v1/health/node/client-1").await;
    let serf = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "serfHealth")
        .unwrap();
    assert_eq!(serf["Status"], "critical");
    let answer = members[4].dig("web.service.consul", RecordType::A).await;
    assert_eq!(answer.answers.len(), 1, "{answer:?}");

    // client-3 leaves gracefully: it is `left` (not failed) and its node is removed.
    let leaver = members.remove(2);
    assert_eq!(leaver.name, "client-3");
    leaver.agent.shutdown().await;
    eventually(secs(20), "client-3 left and deregistered", || async {
        let seen = members[0].member_status().await;
        let nodes = members[0].json("/v1/catalog/nodes").await;
        let gone = !nodes.to_string().contains("\"client-3\"");
        if status_of(&seen, "client-3") == Some(3) && gone {
            Ok(())
        } else {
            Err(format!("{seen:?} {nodes}"))
        }
    })
    .await;

    // client-1 comes back from its data dir: alive again and its service passes.
    let back = Member::start_in(
        Spec {
            name: "client-1".into(),
            join: vec![server_addr(&members)],
            config: Some(WEB.into()),
            ..Spec::default()
        },
        crashed_dir,
    )
    .await
    .unwrap();
    eventually(secs(30), "client-1 back", || async {
        match passing(&members[0], "web").await? {
            n if n == ["client-1", "client-2"] => Ok(()),
            n => Err(format!("{n:?}")),
        }
    })
    .await;
    eventually(
        secs(20),
        "every agent to see client-1 alive again",
        || async {
            for m in &members {
                let seen = m.member_status().await;
                if status_of(&seen, "client-1") != Some(1) {
                    return Err(format!("{} sees {seen:?}", m.name));
                }
            }
            Ok(())
        },
    )
    .await;
    back.agent.stop(false).await;
    Cluster { members }.shutdown().await;
}

fn server_addr(members: &[Member]) -> String {
    members[0].gossip_addr()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_another_key_cannot_join_and_both_sides_say_why() {
    let k1 = gossip::keyring::Key::generate().to_base64();
    let k2 = gossip::keyring::Key::generate().to_base64();
    let server = Member::start(Spec {
        name: "server-0".into(),
        server: true,
        key: Some(k1),
        ..Spec::default()
    })
    .await;
    let stranger = Member::start(Spec {
        name: "stranger".into(),
        key: Some(k2),
        ..Spec::default()
    })
    .await;
    let r = stranger
        .call(
            Method::PUT,
            &format!("/v1/agent/join/{}", server.gossip_addr()),
            "",
        )
        .await;
    assert_eq!(r.status, 500);
    assert!(
        r.body
            .contains("No installed keys could decrypt the message"),
        "{}",
        r.body
    );
    let plain = Member::start(Spec {
        name: "plain".into(),
        ..Spec::default()
    })
    .await;
    let r = plain
        .call(
            Method::PUT,
            &format!("/v1/agent/join/{}", server.gossip_addr()),
            "",
        )
        .await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("encryption is required"), "{}", r.body);
    // A start with only unreachable join targets fails, as Consul's does.
    let e = Member::try_start(Spec {
        name: "lonely".into(),
        key: Some(gossip::keyring::Key::generate().to_base64()),
        join: vec![server.gossip_addr()],
        ..Spec::default()
    })
    .await
    .err()
    .unwrap();
    assert!(
        format!("{e:#}").contains("Failed to join any nodes"),
        "{e:#}"
    );
    assert_eq!(server.member_status().await, [("server-0".to_string(), 1)]);
    for m in [server, stranger, plain] {
        m.agent.stop(false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gossip_key_rotates_across_eight_agents_without_losing_one() {
    let k1 = gossip::keyring::Key::generate().to_base64();
    let k2 = gossip::keyring::Key::generate().to_base64();
    let cluster = Cluster::start(7, |s| s.key = Some(k1.clone())).await;
    cluster.converged(&cluster.names()).await;
    // Operations go through a client agent, which asks the server to run them.
    let client = &cluster.members[3];
    let body = json!({ "Key": k2 }).to_string();
    let r = client
        .call(Method::POST, "/v1/operator/keyring", &body)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let list = client.json("/v1/operator/keyring").await;
    assert_eq!(list[0]["Keys"][&k2], 8, "{list}");
    assert_eq!(list[0]["NumNodes"], 8);
    assert_eq!(list[0]["WAN"], false);
    let r = client
        .call(Method::PUT, "/v1/operator/keyring", &body)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let old = json!({ "Key": k2 }).to_string();
    let r = client
        .call(Method::DELETE, "/v1/operator/keyring", &old)
        .await;
    assert_eq!(r.status, 500, "the primary cannot be removed");
    assert!(
        r.body.contains("Removing the primary key is not allowed"),
        "{}",
        r.body
    );
    let old = json!({ "Key": k1 }).to_string();
    let r = client
        .call(Method::DELETE, "/v1/operator/keyring", &old)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let list = client.json("/v1/operator/keyring").await;
    assert_eq!(list[0]["Keys"], json!({ k2.clone(): 8 }), "{list}");
    assert_eq!(list[0]["PrimaryKeys"], json!({ k2.clone(): 8 }), "{list}");
    // Each agent saved its keyring, and nobody was marked failed along the way.
    let saved = std::fs::read_to_string(
        cluster.members[5]
            .dir
            .path()
            .join("data/serf/local.keyring"),
    )
    .unwrap();
    assert_eq!(saved, json!([k2]).to_string());
    cluster.converged(&cluster.names()).await;
    // An agent holding only the new key joins; one holding only the old key cannot.
    let newcomer = Member::start(Spec {
        name: "newcomer".into(),
        key: Some(k2.clone()),
        join: vec![cluster.server().gossip_addr()],
        ..Spec::default()
    })
    .await;
    eventually(secs(20), "the newcomer seen by the server", || async {
        let seen = cluster.server().member_status().await;
        match status_of(&seen, "newcomer") {
            Some(1) => Ok(()),
            _ => Err(format!("{seen:?}")),
        }
    })
    .await;
    let stale = Member::try_start(Spec {
        name: "stale".into(),
        key: Some(k1),
        join: vec![cluster.server().gossip_addr()],
        ..Spec::default()
    })
    .await;
    assert!(stale.is_err());
    newcomer.agent.stop(false).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_seen_on_both_sides_and_heals() {
    let cluster = Cluster::start(4, |s| s.proxied = true).await;
    cluster.converged(&cluster.names()).await;
    // {server-0, client-1, client-2} | {client-3, client-4}
    let (left, right) = cluster.members.split_at(3);
    let ips = |side: &[Member]| side.iter().map(|m| m.ip).collect::<Vec<_>>();
    for m in left {
        m.proxy.as_ref().unwrap().block(ips(right));
    }
    for m in right {
        m.proxy.as_ref().unwrap().block(ips(left));
    }
    eventually(secs(30), "each side to see the other failed", || async {
        for (side, other) in [(left, right), (right, left)] {
            for m in side {
                let seen = m.member_status().await;
                for o in other {
                    if status_of(&seen, &o.name) != Some(4) {
                        return Err(format!("{} sees {seen:?}", m.name));
                    }
                }
                for s in side {
                    if status_of(&seen, &s.name) != Some(1) {
                        return Err(format!("{} sees {seen:?}", m.name));
                    }
                }
            }
        }
        Ok(())
    })
    .await;
    for m in &cluster.members {
        m.proxy.as_ref().unwrap().heal();
    }
    // Failed members are tried again (reconnect) and push-pull merges the views.
    cluster.converged(&cluster.names()).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_packet_loss_marks_no_member_failed() {
    let cluster = Cluster::start(7, |s| s.proxied = true).await;
    cluster.converged(&cluster.names()).await;
    for m in &cluster.members {
        m.proxy.as_ref().unwrap().set_loss(0.05);
    }
    // Watch for a bounded time (about 40 probe rounds): nobody may be declared failed.
    let end = tokio::time::Instant::now() + secs(8);
    while tokio::time::Instant::now() < end {
        for m in &cluster.members {
            let seen = m.member_status().await;
            assert!(
                seen.iter().all(|(_, s)| *s == 1),
                "{} sees {seen:?} under 5% loss",
                m.name
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyring_file_wins_over_the_configured_key_after_a_restart() {
    let k1 = gossip::keyring::Key::generate().to_base64();
    let k2 = gossip::keyring::Key::generate().to_base64();
    let spec = |key: Option<String>| Spec {
        name: "server-0".into(),
        server: true,
        key,
        ..Spec::default()
    };
    let first = Member::start(spec(Some(k1.clone()))).await;
    assert_eq!(keys(&first).await, json!({ k1.clone(): 1 }));
    let dir = first.dir;
    first.agent.stop(false).await;
    // Another key in the config: the file (serf/local.keyring) wins, as in Consul.
    let second = Member::start_in(spec(Some(k2)), dir).await.unwrap();
    assert_eq!(keys(&second).await, json!({ k1.clone(): 1 }));
    let dir = second.dir;
    second.agent.stop(false).await;
    // No key in the config: encryption stays on with the file's keys.
    let third = Member::start_in(spec(None), dir).await.unwrap();
    assert!(third.agent.lan().encrypted());
    assert_eq!(keys(&third).await, json!({ k1: 1 }));
    third.agent.stop(false).await;
}

async fn keys(m: &Member) -> Value {
    m.json("/v1/operator/keyring").await[0]["Keys"].clone()
}
