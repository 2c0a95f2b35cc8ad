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
    let targets: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.target.to_string()),
            _ => None,
        })
        .collect();
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
        match a_records(&m).as_slice() {
            [ip] if ip == "10.3.0.7" => Ok(()),
            _ => Err(format!("{:?}", m.metadata.response_code)),
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
