//! The gateway across three in-process datacenters whose WAN ports sit behind fault
//! proxies: every query form reaches another datacenter, blocking and consistency modes
//! work there, a silent server is passed over for the next one within the deadline, and
//! a datacenter black-holed by the proxies fails fast and comes back after the heal.

use std::net::IpAddr;
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use serde_json::{Value, json};
use wan::tls;

use crate::support::cluster::{Member, Spec, leader_of};
use crate::support::{eventually, secs};
use crate::wan::{a_records, server, tls_config, wan_alive, wan_join, wan_status};

fn header(r: &proconsul::client::Response, name: &str) -> Option<String> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// The targets of the SRV answers of `m`.
fn srv_targets(m: &hickory_proto::op::Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.target.to_string()),
            _ => None,
        })
        .collect()
}

fn index(r: &proconsul::client::Response) -> u64 {
    header(r, "x-consul-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no X-Consul-Index in {:?}", r.headers))
}

/// Cuts every WAN path between the two sides, both ways.
fn partition(left: &[&Member], right: &[&Member]) {
    let ips = |side: &[&Member]| side.iter().map(|m| m.ip).collect::<Vec<IpAddr>>();
    for m in left {
        m.wan_proxy.as_ref().unwrap().block(ips(right));
    }
    for m in right {
        m.wan_proxy.as_ref().unwrap().block(ips(left));
    }
}

fn heal(members: &[&Member]) {
    for m in members {
        m.wan_proxy.as_ref().unwrap().heal();
    }
}

async fn register(m: &Member, dc: &str, node: &str, address: &str, tags: &[&str]) {
    let body = json!({"Node": node, "Address": address,
        "Service": {"Service": "web", "ID": "web", "Port": 80, "Tags": tags}});
    let r = m
        .call(
            hyper::Method::PUT,
            &format!("/v1/catalog/register?dc={dc}"),
            &body.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "register {node} in {dc}: {}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_form_reaches_other_datacenters_past_silent_servers_and_black_holes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::create_ca("consul", 30).unwrap();
    let spec = |name: &str, dc: &str, expect: u32, join: Vec<String>| Spec {
        proxied_wan: true,
        ..server(
            name,
            dc,
            expect,
            join,
            tls_config(dir.path(), &ca, name, dc),
        )
    };
    let a = Member::start(spec("a0", "dc1", 1, vec![])).await;
    let b0 = Member::start(spec("b0", "dc2", 2, vec![])).await;
    let b1 = Member::start(spec("b1", "dc2", 2, vec![b0.gossip_addr()])).await;
    let c = Member::start(spec("c0", "dc3", 1, vec![])).await;
    leader_of(&[&b0, &b1], 2).await;
    leader_of(&[&c], 1).await;
    wan_join(&b0, &a.wan_addr()).await;
    wan_join(&c, &a.wan_addr()).await;
    let everyone = ["a0.dc1", "b0.dc2", "b1.dc2", "c0.dc3"];
    for m in [&a, &b0, &b1, &c] {
        eventually(secs(30), "every server in every WAN list", || async {
            let alive = wan_alive(m).await;
            if alive == everyone {
                Ok(())
            } else {
                Err(format!("{} sees {alive:?}", m.name))
            }
        })
        .await;
    }
    register(&a, "dc2", "web-2", "10.2.0.7", &["v2"]).await;
    register(&a, "dc3", "web-3", "10.3.0.7", &[]).await;

    // Every read endpoint answers for dc2 with dc2's data.
    for (path, expect) in [
        ("/v1/catalog/nodes", "web-2"),
        ("/v1/catalog/services", "web"),
        ("/v1/catalog/service/web", "10.2.0.7"),
        ("/v1/catalog/node/web-2", "10.2.0.7"),
        ("/v1/health/service/web", "10.2.0.7"),
        ("/v1/health/node/b1", "serfHealth"),
        ("/v1/health/checks/web", "[]"),
        ("/v1/health/state/any", "b1"),
    ] {
        let r = a.get(&format!("{path}?dc=dc2")).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(r.body.contains(expect), "{path}: {}", r.body);
        assert!(!r.body.contains("\"a0\""), "{path} is dc2's: {}", r.body);
    }
    let services = a.json("/v1/catalog/services?dc=dc2").await;
    assert_eq!(services["web"], json!(["v2"]), "{services}");
    // Every DNS form, answered by dc2 (SRV targets name dc2).
    for name in [
        "web.service.dc2.consul",
        "v2.web.service.dc2.consul",
        "web-2.node.dc2.consul",
    ] {
        let m = a.dig(name, RecordType::A).await;
        assert_eq!(a_records(&m), ["10.2.0.7"], "{name}: {m:?}");
    }
    let m = a.dig("_web._v2.service.dc2.consul", RecordType::SRV).await;
    let targets = srv_targets(&m);
    assert_eq!(targets, ["web-2.node.dc2.consul."], "{m:?}");
    let m = a.dig("0a020007.addr.dc2.consul", RecordType::A).await;
    assert_eq!(a_records(&m), ["10.2.0.7"]);

    // Consistency modes and blocking queries are dc2's, headers included.
    let r = a.get("/v1/catalog/nodes?dc=dc2&consistent").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(header(&r, "x-consul-knownleader").as_deref(), Some("true"));
    let r = a.get("/v1/catalog/nodes?dc=dc2&stale").await;
    assert!(
        header(&r, "x-consul-lastcontact").is_some(),
        "{:?}",
        r.headers
    );
    let r = a.get("/v1/health/service/web?dc=dc2").await;
    let before = index(&r);
    assert_eq!(index(&b0.get("/v1/health/service/web").await), before);
    let waiting = {
        let http = a.http.clone();
        tokio::spawn(async move {
            let path = format!("/v1/health/service/web?dc=dc2&index={before}&wait=60s");
            http.call(hyper::Method::GET, &path, None).await.unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a blocking query waits for a change"
    );
    register(&b1, "dc2", "web-2b", "10.2.0.8", &[]).await;
    let woken = tokio::time::timeout(secs(30), waiting)
        .await
        .expect("the change in dc2 wakes the query")
        .unwrap();
    assert_eq!(woken.status, 200);
    assert!(index(&woken) > before);
    assert!(woken.body.contains("web-2b"), "{}", woken.body);
    let started = Instant::now();
    let idle = a
        .get(&format!(
            "/v1/health/service/web?dc=dc2&index={}&wait=1s",
            index(&woken)
        ))
        .await;
    assert_eq!(idle.status, 200);
    assert_eq!(index(&idle), index(&woken));
    assert!(started.elapsed() >= secs(1), "waited out the wait");

    // The dc2 server dc1 would ask first goes silent: the other one answers, within
    // the deadline, and keeps answering.
    let order = a.agent.gateway().federation().unwrap().servers("dc2");
    let first = if order[0].0 == "b0.dc2" { &b0 } else { &b1 };
    first.wan_proxy.as_ref().unwrap().block([a.ip]);
    for _ in 0..3 {
        let started = Instant::now();
        let m = a.dig("web.service.dc2.consul", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
        assert_eq!(a_records(&m).len(), 2, "{m:?}");
        assert!(started.elapsed() < secs(3), "{:?}", started.elapsed());
        let r = a.get("/v1/catalog/nodes?dc=dc2&stale").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    heal(&[first]);

    // A read that asks for the cache is kept, and served while young enough.
    let cached = |age: u64| format!("/v1/catalog/service/web?dc=dc3&cached&max-age={age}");
    let r = a.get(&cached(600)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(header(&r, "x-cache").as_deref(), Some("MISS"));
    let r = a.get(&cached(600)).await;
    assert_eq!(header(&r, "x-cache").as_deref(), Some("HIT"));
    assert!(header(&r, "age").is_some(), "{:?}", r.headers);
    register(&c, "dc3", "web-3b", "10.3.0.8", &[]).await;
    let r = a.get(&cached(600)).await;
    assert!(!r.body.contains("web-3b"), "the cached answer: {}", r.body);
    let r = a.get(&cached(0)).await;
    assert_eq!(header(&r, "x-cache").as_deref(), Some("MISS"));
    assert!(r.body.contains("web-3b"), "a fresh answer: {}", r.body);
    let r = a.get("/v1/catalog/nodes?dc=dc3&cached&consistent").await;
    assert_eq!(r.status, 400, "{}", r.body);

    // Identical reads at the same time share one request to dc3.
    let served = || c.agent.gateway().federation().unwrap().endpoint().served();
    let before = served();
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let gateway = a.agent.gateway().clone();
        reads.spawn(async move {
            let options = catalog::ReadOptions {
                consistency: catalog::Consistency::Stale,
                min_index: 0,
                deadline: tokio::time::Instant::now() + secs(10),
                max_stale: None,
                principal: catalog::Principal::Anonymous,
            };
            let query = catalog::Query::Nodes { node_meta: vec![] };
            gateway.read(Some("dc3"), &query, options).await
        });
    }
    while let Some(read) = reads.join_next().await {
        assert!(read.unwrap().is_ok());
    }
    let asked = served() - before;
    assert!(
        (1..=4).contains(&asked),
        "32 reads cost dc3 {asked} requests"
    );

    // dc3 is black-holed: asking it fails within the deadline, with Consul's error,
    // while dc1 and dc2 answer as before.
    partition(&[&a, &b0, &b1], &[&c]);
    let started = Instant::now();
    let r = a.get("/v1/catalog/nodes?dc=dc3").await;
    assert_eq!(
        (r.status, r.body.trim()),
        (500, "Remote DC has no server currently reachable")
    );
    assert!(started.elapsed() < secs(11), "{:?}", started.elapsed());
    let started = Instant::now();
    let m = a.dig("web.service.dc3.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < secs(4), "{:?}", started.elapsed());
    assert_eq!(a.get("/v1/catalog/nodes").await.status, 200);
    let m = a.dig("web.service.dc2.consul", RecordType::A).await;
    assert_eq!(a_records(&m).len(), 2);
    // A cached answer stands in for the unreachable datacenter when asked to.
    let r = a
        .get("/v1/catalog/service/web?dc=dc3&cached&max-age=0&stale-if-error=600")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(header(&r, "x-cache").as_deref(), Some("HIT"));
    let nodes: Value = c.json("/v1/catalog/nodes").await;
    assert!(
        nodes.to_string().contains("web-3"),
        "dc3 answers for itself"
    );
    eventually(secs(60), "dc1 sees dc3's server failed", || async {
        match wan_status(&a, "c0.dc3").await {
            Some(4) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // After the heal, the WAN pool takes dc3 back and queries reach it again.
    heal(&[&a, &b0, &b1, &c]);
    let healed = Instant::now();
    eventually(secs(90), "dc3 answers again after the heal", || async {
        let m = a.dig("web.service.dc3.consul", RecordType::A).await;
        let ips = a_records(&m);
        if ips.iter().any(|ip| ip == "10.3.0.7") {
            Ok(())
        } else {
            Err(format!("{:?} {ips:?}", m.metadata.response_code))
        }
    })
    .await;
    eventually(
        secs(90),
        "every server alive in the WAN pool again",
        || async {
            let alive = wan_alive(&a).await;
            if alive == everyone {
                Ok(())
            } else {
                Err(format!("{alive:?}"))
            }
        },
    )
    .await;
    eprintln!(
        "dc3 answered and was alive again {:?} after the heal",
        healed.elapsed()
    );
}

/// Registers `web` on `node` in `dc` (through `m`) with one check in `status`.
async fn register_checked(m: &Member, dc: &str, node: &str, address: &str, status: &str) {
    let body = json!({"Node": node, "Address": address,
        "Service": {"Service": "web", "ID": "web", "Port": 80},
        "Check": {"CheckID": "web-ok", "Name": "web ok", "Status": status, "ServiceID": "web"}});
    let r = m
        .call(
            hyper::Method::PUT,
            &format!("/v1/catalog/register?dc={dc}"),
            &body.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "register {node} in {dc}: {}", r.body);
}

async fn create_query(m: &Member, path: &str, body: Value) -> String {
    let r = m.call(hyper::Method::POST, path, &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let created: Value = serde_json::from_str(&r.body).unwrap();
    created["ID"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_queries_and_the_default_failover_policy_serve_a_healthy_datacenter() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::create_ca("consul", 30).unwrap();
    let failover = json!({"dns_config": {"failover": {"nearest_n": 2}}});
    let with_failover = |tls: String| {
        let mut config: Value = serde_json::from_str(&tls).unwrap();
        config
            .as_object_mut()
            .unwrap()
            .extend(failover.as_object().unwrap().clone());
        config.to_string()
    };
    let a = Member::start(server(
        "a0",
        "dc1",
        1,
        vec![],
        with_failover(tls_config(dir.path(), &ca, "a0", "dc1")),
    ))
    .await;
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
    let client = Member::start(Spec {
        name: "a-client".into(),
        key: Some(crate::wan::KEY.into()),
        join: vec![a.gossip_addr()],
        config: Some(with_failover(crate::wan::client_tls(
            dir.path(),
            &ca,
            "dc1",
        ))),
        ..Spec::default()
    })
    .await;
    leader_of(&[&b], 1).await;
    leader_of(&[&c], 1).await;
    wan_join(&b, &a.wan_addr()).await;
    wan_join(&c, &a.wan_addr()).await;
    eventually(secs(30), "three datacenters federated", || async {
        let alive = wan_alive(&a).await;
        if alive.len() == 3 {
            Ok(())
        } else {
            Err(format!("{alive:?}"))
        }
    })
    .await;
    let dcs = client.json("/v1/catalog/datacenters").await;
    assert_eq!(
        dcs.as_array().unwrap().len(),
        3,
        "a client lists them too: {dcs}"
    );
    assert_eq!(dcs[0], "dc1");
    register_checked(&a, "dc1", "web-1", "10.1.0.7", "passing").await;
    register_checked(&a, "dc2", "web-2", "10.2.0.7", "passing").await;
    register_checked(&a, "dc3", "web-3", "10.3.0.7", "passing").await;

    // Create, list, read (by ID and by name) and explain.
    let listed = create_query(
        &a,
        "/v1/query",
        json!({"Name": "web-listed", "Service": {"Service": "web",
            "Failover": {"Datacenters": ["dc9", "dc2", "dc3"]}}, "DNS": {"TTL": "7s"}}),
    )
    .await;
    let nearest = create_query(
        &a,
        "/v1/query",
        json!({"Name": "web-nearest", "Service": {"Service": "web", "OnlyPassing": true,
            "Failover": {"NearestN": 2}}}),
    )
    .await;
    let all = a.json("/v1/query").await;
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    let one = a.json(&format!("/v1/query/{listed}")).await;
    assert_eq!(one[0]["Name"], "web-listed");
    assert_eq!(one[0]["Service"]["Failover"]["Datacenters"][1], "dc2");
    assert_eq!(one[0]["DNS"]["TTL"], "7s");
    assert_eq!(
        a.json("/v1/query/web-nearest").await[0]["ID"],
        nearest.as_str()
    );
    let explained = a.json("/v1/query/web-listed/explain").await;
    assert_eq!(explained["Query"]["ID"], listed.as_str());
    let r = a
        .call(
            hyper::Method::POST,
            "/v1/query",
            &json!({"Name": "web-listed", "Service": {"Service": "web"}}).to_string(),
        )
        .await;
    assert_eq!(r.status, 500, "names are unique: {}", r.body);
    assert!(
        r.body.contains("aliases an existing query name"),
        "{}",
        r.body
    );
    let r = a.call(hyper::Method::POST, "/v1/query", "{not json").await;
    assert_eq!(r.status, 400, "{}", r.body);

    // Healthy here: answered by dc1.
    let run = a.json("/v1/query/web-listed/execute").await;
    assert_eq!(
        (&run["Datacenter"], &run["Failovers"], &run["Service"]),
        (&json!("dc1"), &json!(0), &json!("web"))
    );
    assert_eq!(run["Nodes"][0]["Node"]["Node"], "web-1", "{run}");
    assert_eq!(run["DNS"]["TTL"], "7s");
    let m = a.dig("web-listed.query.consul", RecordType::A).await;
    assert_eq!(a_records(&m), ["10.1.0.7"]);
    assert_eq!(m.answers[0].ttl, 7);
    let m = client.dig("web-nearest.query.consul", RecordType::A).await;
    assert_eq!(
        a_records(&m),
        ["10.1.0.7"],
        "a client agent runs queries too"
    );

    // dc1's instance goes critical: the listed datacenters are asked in order (dc9 is
    // unknown and passed over), the nearest ones for the other query.
    register_checked(&a, "dc1", "web-1", "10.1.0.7", "critical").await;
    let run = a.json("/v1/query/web-listed/execute").await;
    assert_eq!(
        (&run["Datacenter"], &run["Failovers"]),
        (&json!("dc2"), &json!(2))
    );
    assert_eq!(run["Nodes"][0]["Node"]["Node"], "web-2", "{run}");
    let run = a.json(&format!("/v1/query/{nearest}/execute")).await;
    let dc = run["Datacenter"].as_str().unwrap().to_owned();
    assert!(dc == "dc2" || dc == "dc3", "{run}");
    assert!(run["Failovers"].as_u64().unwrap() >= 1, "{run}");
    let m = a
        .dig("_web-listed._tcp.query.consul", RecordType::SRV)
        .await;
    let targets = srv_targets(&m);
    assert_eq!(targets, ["web-2.node.dc2.consul."], "SRV targets name dc2");

    // The default failover policy serves plain lookups from the nearest healthy
    // datacenter, on the server and through a client agent; a name that names a
    // datacenter, and an agent without the policy, keep Consul's NXDOMAIN.
    let m = a.dig("web.service.consul", RecordType::A).await;
    let ip = a_records(&m);
    assert!(ip == ["10.2.0.7"] || ip == ["10.3.0.7"], "{m:?}");
    let m = client.dig("web.service.consul", RecordType::A).await;
    assert_eq!(a_records(&m).len(), 1, "{m:?}");
    let m = a.dig("web.service.dc1.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    register_checked(&a, "dc2", "web-2", "10.2.0.7", "critical").await;
    let m = b.dig("web.service.consul", RecordType::A).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NXDomain,
        "off by default"
    );
    let m = a.dig("web.service.consul", RecordType::A).await;
    assert_eq!(a_records(&m), ["10.3.0.7"]);
    let run = a.json("/v1/query/web-listed/execute").await;
    assert_eq!(
        (&run["Datacenter"], &run["Failovers"]),
        (&json!("dc3"), &json!(3))
    );
    let m = a.dig("web-nearest.query.consul", RecordType::A).await;
    assert_eq!(a_records(&m), ["10.3.0.7"]);

    // Nothing healthy anywhere: empty, and NXDOMAIN in DNS.
    register_checked(&a, "dc3", "web-3", "10.3.0.7", "critical").await;
    let run = a.json("/v1/query/web-listed/execute").await;
    assert_eq!(run["Nodes"], json!([]), "{run}");
    assert_eq!(run["Datacenter"], "dc1");
    let m = a.dig("web-listed.query.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // Update, queries of another datacenter, delete.
    let r = a
        .call(
            hyper::Method::PUT,
            &format!("/v1/query/{listed}"),
            &json!({"Name": "web-listed", "Service": {"Service": "web", "OnlyPassing": true}})
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let one = a.json(&format!("/v1/query/{listed}")).await;
    assert_eq!(one[0]["Service"]["OnlyPassing"], true);
    assert!(one[0]["ModifyIndex"].as_u64() > one[0]["CreateIndex"].as_u64());
    let remote = create_query(
        &a,
        "/v1/query?dc=dc2",
        json!({"Name": "in-dc2", "Service": {"Service": "web"}}),
    )
    .await;
    assert_eq!(b.json("/v1/query/in-dc2").await[0]["ID"], remote.as_str());
    assert_eq!(a.get("/v1/query/in-dc2").await.status, 404);
    let run = a.json("/v1/query/in-dc2/execute?dc=dc2").await;
    assert_eq!(run["Datacenter"], "dc2");
    let r = a
        .call(hyper::Method::DELETE, &format!("/v1/query/{listed}"), "")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = a.get(&format!("/v1/query/{listed}")).await;
    assert_eq!((r.status, r.body.trim()), (404, "Query not found"));
    assert_eq!(a.get("/v1/query/web-listed/execute").await.status, 404);
    let m = a.dig("web-listed.query.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}
