//! WAN federation of in-process datacenters: servers with certificates from one CA join
//! over QUIC, one join per datacenter brings in every server (flood join), keyring
//! operations reach every pool, and a datacenter that dies is marked failed, comes back
//! by itself from its data dir, and can be removed for good with `force-leave -prune`.

use std::path::Path;

use serde_json::{Value, json};
use wan::tls::{self, CertKind, CertRequest, Pem};

use crate::support::cluster::{Member, Spec, leader_of};
use crate::support::{eventually, secs};

pub(crate) const KEY: &str = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=";

/// A server certificate for `dc` and the config that uses it.
pub(crate) fn tls_config(dir: &Path, ca: &Pem, name: &str, dc: &str) -> String {
    let ca_file = dir.join("consul-agent-ca.pem");
    if !ca_file.exists() {
        std::fs::write(&ca_file, &ca.cert).unwrap();
    }
    let pem = tls::create_cert(ca, &CertRequest::new(CertKind::Server, dc)).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, &pem.cert).unwrap();
    std::fs::write(&key, &pem.key).unwrap();
    json!({
        "ca_file": ca_file,
        "cert_file": cert,
        "key_file": key,
        "verify_incoming": true,
        "verify_outgoing": true,
        "verify_server_hostname": true,
    })
    .to_string()
}

pub(crate) fn server(name: &str, dc: &str, expect: u32, join: Vec<String>, config: String) -> Spec {
    Spec {
        name: name.into(),
        server: true,
        expect: Some(expect),
        datacenter: Some(dc.into()),
        key: Some(KEY.into()),
        join,
        config: Some(config),
        ..Spec::default()
    }
}

/// Two one-server datacenters with certificates from `ca` (files in `dir`): `a`
/// (`(node, datacenter)`) alone, then `b` WAN-joined to it; `extra` adds keys to each
/// config (`a`'s, then `b`'s; `Value::Null` for none). Leaders are the caller's to wait for.
pub(crate) async fn federated_pair(
    dir: &Path,
    ca: &Pem,
    a: (&str, &str),
    b: (&str, &str),
    extra: [Value; 2],
) -> (Member, Member) {
    let config = |(name, dc): (&str, &str), extra: &Value| {
        let mut c: Value = serde_json::from_str(&tls_config(dir, ca, name, dc)).unwrap();
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        c.to_string()
    };
    let first = Member::start(server(a.0, a.1, 1, vec![], config(a, &extra[0]))).await;
    let second = Member::start(Spec {
        join_wan: vec![first.wan_addr()],
        ..server(b.0, b.1, 1, vec![], config(b, &extra[1]))
    })
    .await;
    (first, second)
}

/// WAN members alive as `m` sees them, by name.
pub(crate) async fn wan_alive(m: &Member) -> Vec<String> {
    let list = m.json("/v1/agent/members?wan=1").await;
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["Status"] == 1)
        .map(|x| x["Name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

pub(crate) async fn wan_status(m: &Member, name: &str) -> Option<u64> {
    let list = m.json("/v1/agent/members?wan=1").await;
    list.as_array()
        .unwrap()
        .iter()
        .find(|x| x["Name"] == name)
        .and_then(|x| x["Status"].as_u64())
}

pub(crate) async fn wan_join(m: &Member, addr: &str) {
    let r = m
        .call(
            hyper::Method::PUT,
            &format!("/v1/agent/join/{addr}?wan=1"),
            "",
        )
        .await;
    assert_eq!(r.status, 200, "WAN join from {}: {}", m.name, r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_datacenters_federate_through_one_join_each_and_share_one_keyring() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::create_ca("consul", 30).unwrap();
    // dc1 has three servers; dc2 and dc3 one each.
    let mut dc1: Vec<Member> = Vec::new();
    for i in 0..3 {
        let join = dc1
            .first()
            .map(|m| vec![m.gossip_addr()])
            .unwrap_or_default();
        let name = format!("a{i}");
        let config = tls_config(dir.path(), &ca, &name, "dc1");
        dc1.push(Member::start(server(&name, "dc1", 3, join, config)).await);
    }
    let all: Vec<&Member> = dc1.iter().collect();
    leader_of(&all, 3).await;
    let b = Member::start(server(
        "b0",
        "dc2",
        1,
        vec![],
        tls_config(dir.path(), &ca, "b0", "dc2"),
    ))
    .await;
    let c = Member::start(server(
        "c0",
        "dc3",
        1,
        vec![],
        tls_config(dir.path(), &ca, "c0", "dc3"),
    ))
    .await;

    // One join per datacenter: dc2 joins one server of dc1, dc3 joins dc2.
    wan_join(&b, &dc1[0].wan_addr()).await;
    wan_join(&c, &b.wan_addr()).await;
    let everyone = ["a0.dc1", "a1.dc1", "a2.dc1", "b0.dc2", "c0.dc3"];
    for m in dc1.iter().chain([&b, &c]) {
        eventually(
            secs(30),
            "every server in every WAN member list",
            || async {
                let alive = wan_alive(m).await;
                if alive == everyone {
                    Ok(())
                } else {
                    Err(format!("{} sees {alive:?}", m.name))
                }
            },
        )
        .await;
    }
    // Each server lists every datacenter, its own first.
    let dcs = b.json("/v1/catalog/datacenters").await;
    let dcs: Vec<&str> = dcs
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(dcs[0], "dc2");
    let mut sorted = dcs.clone();
    sorted.sort();
    assert_eq!(sorted, ["dc1", "dc2", "dc3"]);
    // WAN members carry the server tags.
    let list = c.json("/v1/agent/members?wan=1").await;
    let a0 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Name"] == "a0.dc1")
        .unwrap();
    assert_eq!(a0["Tags"]["role"], "consul");
    assert_eq!(a0["Tags"]["dc"], "dc1");

    // Network coordinates: every datacenter's servers have WAN coordinates, every node
    // of dc1 a LAN coordinate, and the estimates between them are plausible loopback
    // round trips.
    eventually(secs(20), "WAN coordinates of every server", || async {
        let dcs = c.json("/v1/coordinate/datacenters").await;
        let nodes: Vec<&str> = dcs
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|d| d["Coordinates"].as_array().unwrap())
            .map(|n| n["Node"].as_str().unwrap())
            .collect();
        if nodes.len() == 5 && dcs[0]["AreaID"] == "WAN" {
            Ok(())
        } else {
            Err(format!("{dcs}"))
        }
    })
    .await;
    eventually(secs(20), "LAN coordinates of dc1's nodes", || async {
        let nodes = dc1[0].json("/v1/coordinate/nodes").await;
        let names: Vec<&str> = nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["Node"].as_str().unwrap())
            .collect();
        let vec_len = nodes[0]["Coord"]["Vec"].as_array().map(Vec::len);
        if names == ["a0", "a1", "a2"] && vec_len == Some(8) {
            Ok(())
        } else {
            Err(format!("{nodes}"))
        }
    })
    .await;
    let r = dc1[0].get("/v1/coordinate/node/nobody").await;
    assert_eq!(r.status, 404);
    let r = dc1[0].get("/v1/coordinate/nodes?dc=dc9").await;
    assert_eq!((r.status, r.body.trim()), (500, "No path to datacenter"));

    // One keyring listing covers the WAN pool and the LAN pool of each datacenter.
    let pools = c.json("/v1/operator/keyring").await;
    let pool = |wan: bool, dc: &str| -> Value {
        pools
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["WAN"] == wan && p["Datacenter"] == dc)
            .cloned()
            .unwrap_or_else(|| panic!("no {dc} (wan: {wan}) pool in {pools}"))
    };
    assert_eq!(pool(true, "dc3")["NumNodes"], 5);
    assert_eq!(pool(true, "dc3")["Keys"][KEY], 5);
    assert_eq!(pool(false, "dc1")["NumNodes"], 3);
    assert_eq!(pool(false, "dc2")["NumNodes"], 1);
    assert_eq!(pool(false, "dc3")["NumNodes"], 1);
    let local = c.json("/v1/operator/keyring?local-only=1").await;
    assert_eq!(local.as_array().unwrap().len(), 1, "{local}");
    // A client agent of dc2 has its server run the operation on every pool.
    let client = Member::start(Spec {
        name: "b-client".into(),
        datacenter: Some("dc2".into()),
        key: Some(KEY.into()),
        join: vec![b.gossip_addr()],
        config: Some(client_tls(dir.path(), &ca, "dc2")),
        ..Spec::default()
    })
    .await;
    let pools = client.json("/v1/operator/keyring").await;
    assert_eq!(pools.as_array().unwrap().len(), 4, "{pools}");
    let dc2_lan = pools
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["WAN"] == false && p["Datacenter"] == "dc2")
        .unwrap();
    assert_eq!(dc2_lan["NumNodes"], 2, "the client counts in its LAN pool");
    let r = client.get("/v1/agent/members?wan=1").await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("this agent is a client"), "{}", r.body);

    // A new key installed from dc2 reaches every member of every pool, and can become
    // the primary everywhere.
    let new_key = "HjuSW0BBZFmBpXIjRmfuRyQzIB6gkF6Ty1bv1Yl5Mvc=";
    let body = json!({ "Key": new_key }).to_string();
    let r = b
        .call(hyper::Method::POST, "/v1/operator/keyring", &body)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = b
        .call(hyper::Method::PUT, "/v1/operator/keyring", &body)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let pools = dc1[1].json("/v1/operator/keyring").await;
    for p in pools.as_array().unwrap() {
        assert_eq!(p["PrimaryKeys"][new_key], p["NumNodes"], "{p}");
    }
    // Each server keeps its WAN keyring apart from its LAN one, as Consul does.
    for m in dc1.iter().chain([&b, &c]) {
        let serf = m.dir.path().join("data").join("serf");
        for file in ["remote.keyring", "local.keyring"] {
            let text = std::fs::read_to_string(serf.join(file)).unwrap();
            assert!(
                text.starts_with(&format!("[\"{new_key}\"")),
                "{file} of {}: {text}",
                m.name
            );
        }
    }
    // Gossip goes on with the new key: nobody is lost.
    tokio::time::sleep(secs(2)).await;
    assert_eq!(wan_alive(&dc1[2]).await, everyone);

    // One of dc1's servers leaves gracefully: it is `left` in every datacenter, the
    // others stay alive, and dc1 is still reached through its other servers.
    let leaver = dc1.pop().unwrap();
    leaver.agent.shutdown().await;
    for m in dc1.iter().chain([&b, &c]) {
        eventually(secs(20), "a2.dc1 left everywhere", || async {
            match wan_status(m, "a2.dc1").await {
                Some(3) => Ok(()),
                other => Err(format!("{} sees {other:?}", m.name)),
            }
        })
        .await;
        assert_eq!(
            wan_alive(m).await,
            ["a0.dc1", "a1.dc1", "b0.dc2", "c0.dc3"],
            "{}",
            m.name
        );
    }
    let pools = c.json("/v1/operator/keyring").await;
    let dc1_lan = pools
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["WAN"] == false && p["Datacenter"] == "dc1")
        .unwrap();
    assert_eq!(dc1_lan["NumNodes"], 2, "{pools}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datacenter_that_dies_is_marked_failed_rejoins_from_its_data_dir_and_can_be_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::create_ca("consul", 30).unwrap();
    let a_config = tls_config(dir.path(), &ca, "a0", "dc1");
    let b_config = tls_config(dir.path(), &ca, "b0", "dc2");
    let a = Member::start(server("a0", "dc1", 1, vec![], a_config)).await;
    // dc2 joins at start (`start_join_wan`, `-join-wan`).
    let b = Member::start(Spec {
        join_wan: vec![a.wan_addr()],
        ..server("b0", "dc2", 1, vec![], b_config.clone())
    })
    .await;
    eventually(secs(20), "dc2 in dc1's WAN pool", || async {
        match wan_status(&a, "b0.dc2").await {
            Some(1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // dc2 dies (no leave): dc1 marks it failed and still lists it. (First wait until it
    // saved its WAN peers, which it does right after a change.)
    let peers = b.dir.path().join("data").join("serf").join("remote.peers");
    eventually(secs(10), "dc2's WAN peers saved", || async {
        match std::fs::read_to_string(&peers) {
            Ok(text) if text.contains(&a.wan_addr()) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let Member {
        agent, dir: b_dir, ..
    } = b;
    agent.stop(false).await;
    eventually(secs(30), "dc2 marked failed in dc1", || async {
        match wan_status(&a, "b0.dc2").await {
            Some(4) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let dcs = a.json("/v1/catalog/datacenters").await;
    assert_eq!(dcs, json!(["dc1", "dc2"]));

    // dc2 comes back on other ports with its data dir and no join flag: it finds dc1
    // through the peers it remembered.
    let b = Member::start_in(server("b0", "dc2", 1, vec![], b_config), b_dir)
        .await
        .unwrap();
    for m in [&a, &b] {
        eventually(secs(30), "both datacenters alive again", || async {
            let alive = wan_alive(m).await;
            if alive == ["a0.dc1", "b0.dc2"] {
                Ok(())
            } else {
                Err(format!("{} sees {alive:?}", m.name))
            }
        })
        .await;
    }

    // Decommissioned for good: stopped, then force-left with -prune.
    let Member { agent, .. } = b;
    agent.stop(false).await;
    eventually(secs(30), "dc2 marked failed again", || async {
        match wan_status(&a, "b0.dc2").await {
            Some(4) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let r = a
        .call(
            hyper::Method::PUT,
            "/v1/agent/force-leave/b0.dc2?prune=1&wan=1",
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(secs(10), "dc2 forgotten", || async {
        match wan_status(&a, "b0.dc2").await {
            None => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(a.json("/v1/catalog/datacenters").await, json!(["dc1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_material_refuses_to_federate_and_says_how_to_fix_it() {
    let a = Member::start(Spec {
        name: "plain".into(),
        server: true,
        ..Spec::default()
    })
    .await;
    let r = a.get("/v1/agent/members?wan=1").await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("tls cert create -server"), "{}", r.body);
    let r = a
        .call(
            hyper::Method::PUT,
            "/v1/agent/join/127.0.0.1:8302?wan=1",
            "",
        )
        .await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("WAN federation needs TLS"), "{}", r.body);
    // Its catalog lists only its own datacenter, and the LAN side works as ever.
    assert_eq!(a.json("/v1/catalog/datacenters").await, json!(["dc1"]));
}

/// The A records of a DNS answer.
pub(crate) fn a_records(m: &hickory_proto::op::Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_reads_writes_and_dns_reach_another_datacenter_and_fail_fast_when_it_is_gone() {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::create_ca("consul", 30).unwrap();
    let (a, b) = federated_pair(
        dir.path(),
        &ca,
        ("a0", "dc1"),
        ("b0", "dc2"),
        [Value::Null, Value::Null],
    )
    .await;
    leader_of(&[&b], 1).await;
    // A write sent to dc1 with ?dc=dc2 is applied by dc2's leader.
    let body = json!({"Node": "web-2", "Address": "10.2.0.7",
        "Service": {"Service": "web", "ID": "web", "Port": 80, "Tags": ["v2"]}});
    let r = a
        .call(
            hyper::Method::PUT,
            "/v1/catalog/register?dc=dc2",
            &body.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let local = b.json("/v1/catalog/service/web").await;
    assert_eq!(local[0]["Node"], "web-2", "{local}");
    assert!(
        a.json("/v1/catalog/service/web")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Reads with ?dc= are answered by dc2, with dc2's index.
    let r = a.get("/v1/health/service/web?dc=dc2").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let list: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(list[0]["Node"]["Datacenter"], "dc2", "{list}");
    assert_eq!(list[0]["Service"]["Port"], 80);
    let index = |r: &proconsul::client::Response| {
        r.headers
            .iter()
            .find(|(k, _)| k == "x-consul-index")
            .map(|(_, v)| v.clone())
    };
    let direct = b.get("/v1/health/service/web").await;
    assert!(index(&r).is_some());
    assert_eq!(index(&r), index(&direct), "dc2's index");
    let r = a.get("/v1/catalog/nodes?dc=dc2&stale").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("web-2") && !r.body.contains("\"a0\""),
        "{}",
        r.body
    );
    assert_eq!(a.get("/v1/status/leader?dc=dc2").await.status, 200);

    // DNS on dc1 answers names of dc2.
    let m = a.dig("web.service.dc2.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&m), ["10.2.0.7"]);
    let m = a.dig("v2.web.service.dc2.consul", RecordType::A).await;
    assert_eq!(a_records(&m), ["10.2.0.7"]);
    let m = a.dig("web-2.node.dc2.consul", RecordType::A).await;
    assert_eq!(a_records(&m), ["10.2.0.7"]);
    let m = a.dig("web.service.dc9.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let r = a.get("/v1/catalog/nodes?dc=dc9").await;
    assert_eq!((r.status, r.body.trim()), (500, "No path to datacenter"));
    // A name Consul would not allow for a datacenter names none.
    let r = a.get("/v1/catalog/nodes?dc=DC2").await;
    assert_eq!((r.status, r.body.trim()), (500, "No path to datacenter"));

    // A client agent of dc1 has a server of dc1 ask dc2, for HTTP and DNS alike.
    let client = Member::start(Spec {
        name: "a-client".into(),
        key: Some(KEY.into()),
        join: vec![a.gossip_addr()],
        config: Some(client_tls(dir.path(), &ca, "dc1")),
        ..Spec::default()
    })
    .await;
    let nodes = client.json("/v1/catalog/service/web?dc=dc2").await;
    assert_eq!(nodes[0]["Node"], "web-2", "{nodes}");
    let leader = client.json("/v1/status/leader?dc=dc2").await;
    assert!(
        !leader.as_str().unwrap().is_empty(),
        "dc2's leader: {leader}"
    );
    let body = json!({"Node": "web-3", "Address": "10.2.0.8",
        "Service": {"Service": "web", "ID": "web", "Port": 80}});
    let r = client
        .call(
            hyper::Method::PUT,
            "/v1/catalog/register?dc=dc2",
            &body.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let m = client.dig("web.service.dc2.consul", RecordType::A).await;
    let mut ips = a_records(&m);
    ips.sort();
    assert_eq!(ips, ["10.2.0.7", "10.2.0.8"]);
    let m = client.dig("web.service.dc9.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let r = client.get("/v1/catalog/nodes?dc=dc9").await;
    assert_eq!((r.status, r.body.trim()), (500, "No path to datacenter"));
    let r = client.get("/v1/catalog/nodes?dc=dc%202").await;
    assert_eq!((r.status, r.body.trim()), (500, "No path to datacenter"));

    // dc2 goes away: dc1 keeps answering for itself, and for dc2 says so in time.
    let Member { agent, .. } = b;
    agent.stop(false).await;
    let started = std::time::Instant::now();
    let r = a.get("/v1/catalog/nodes?dc=dc2").await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.body.trim(), "Remote DC has no server currently reachable");
    assert!(started.elapsed() < secs(15), "{:?}", started.elapsed());
    let m = a.dig("web.service.dc2.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(a.get("/v1/catalog/nodes").await.status, 200);
    let r = client.get("/v1/catalog/nodes?dc=dc2").await;
    assert_eq!(
        (r.status, r.body.trim()),
        (500, "Remote DC has no server currently reachable")
    );
    let m = client.dig("web.service.dc2.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_datacenter_reaches_a_client_agents_caller_as_429() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::create_ca("consul", 30).unwrap();
    // dc1's server lets one blocking read at a time go to another datacenter.
    let a = Member::start(Spec {
        remote_read_caps: Some(gateway::Caps {
            reads: 128,
            blocking: 1,
        }),
        ..server(
            "a0",
            "dc1",
            1,
            vec![],
            tls_config(dir.path(), &ca, "a0", "dc1"),
        )
    })
    .await;
    let b = Member::start(server(
        "b0",
        "dc2",
        1,
        vec![],
        tls_config(dir.path(), &ca, "b0", "dc2"),
    ))
    .await;
    leader_of(&[&a], 1).await;
    leader_of(&[&b], 1).await;
    wan_join(&b, &a.wan_addr()).await;
    eventually(secs(30), "dc2 answers through dc1", || async {
        let r = a.get("/v1/catalog/nodes?dc=dc2").await;
        if r.status == 200 { Ok(()) } else { Err(r.body) }
    })
    .await;
    let client = Member::start(Spec {
        name: "a-client".into(),
        key: Some(KEY.into()),
        join: vec![a.gossip_addr()],
        config: Some(client_tls(dir.path(), &ca, "dc1")),
        ..Spec::default()
    })
    .await;
    assert_eq!(client.get("/v1/catalog/nodes?dc=dc2").await.status, 200);

    // One blocking read of dc2 held on the server takes its only slot. (dc2's new leader
    // may still be writing its first entries: a read whose index is passed returns at
    // once, so it is made again with the newer index.)
    let busy = "too many requests in flight to datacenter \"dc2\" (the limit is 1)";
    let mut held = None;
    for _ in 0..50 {
        let r = a.get("/v1/catalog/nodes?dc=dc2").await;
        let index = r
            .headers
            .iter()
            .find(|(k, _)| k == "x-consul-index")
            .map(|(_, v)| v.clone())
            .unwrap();
        let path = format!("/v1/catalog/nodes?dc=dc2&index={index}&wait=20s");
        let holder = {
            let http = a.http.clone();
            let path = path.clone();
            tokio::spawn(async move { http.call(hyper::Method::GET, &path, None).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if a.get(&path).await.status == 429 {
            held = Some((holder, path));
            break;
        }
        holder.abort();
    }
    let (holder, path) = held.expect("a blocking read held on the server");
    // The client agent's own slot is free; the server it relays through says Busy, and
    // the caller gets what a caller of that server gets: 429 with the same text.
    let r = client.get(&path).await;
    assert_eq!((r.status, r.body.trim()), (429, busy));
    // Reads that do not block have slots of their own.
    assert_eq!(client.get("/v1/catalog/nodes?dc=dc2").await.status, 200);
    holder.abort();
}

/// A client certificate for `dc` and the config of a client agent that uses it.
pub(crate) fn client_tls(dir: &Path, ca: &Pem, dc: &str) -> String {
    let pem = tls::create_cert(ca, &CertRequest::new(CertKind::Client, dc)).unwrap();
    let (cert, key) = (
        dir.join(format!("client-{dc}.pem")),
        dir.join(format!("client-{dc}-key.pem")),
    );
    std::fs::write(&cert, &pem.cert).unwrap();
    std::fs::write(&key, &pem.key).unwrap();
    json!({
        "ca_file": dir.join("consul-agent-ca.pem"),
        "cert_file": cert,
        "key_file": key,
        "verify_outgoing": true,
        "verify_server_hostname": true,
    })
    .to_string()
}
