//! The federation under faults, through the WAN fault proxies: 10% of datagrams lost each
//! way (with some delayed, duplicated and reordered) while the gossip keys of every pool
//! are rotated, then one datacenter partitioned away for 30 s and healed.

use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use serde_json::json;
use wan::tls;

use crate::support::cluster::{Member, Spec, leader_of};
use crate::support::proxy::{Link, Way};
use crate::support::{eventually, secs};
use crate::wan::{KEY, a_records, server, tls_config, wan_alive, wan_join};

const NEW_KEY: &str = "HvY8ubRZMgafUOWvrOadwOckVa1wN3QWAo46FVKbVN8=";

async fn keyring(m: &Member, method: hyper::Method, key: &str) {
    let r = m
        .call(
            method,
            "/v1/operator/keyring",
            &json!({"Key": key}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "keyring on {}: {}", m.name, r.body);
}

/// Every key every pool reports, with how many members hold it.
async fn keys(m: &Member) -> serde_json::Value {
    m.json("/v1/operator/keyring").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_federation_rides_out_loss_key_rotation_and_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::create_ca("consul", 30).unwrap();
    let spec = |name: &str, dc: &str| Spec {
        proxied_wan: true,
        ..server(name, dc, 1, vec![], tls_config(dir.path(), &ca, name, dc))
    };
    let a = Member::start(spec("a0", "dc1")).await;
    let b = Member::start(spec("b0", "dc2")).await;
    let c = Member::start(spec("c0", "dc3")).await;
    for m in [&a, &b, &c] {
        leader_of(&[m], 1).await;
    }
    wan_join(&b, &a.wan_addr()).await;
    wan_join(&c, &a.wan_addr()).await;
    let everyone = ["a0.dc1", "b0.dc2", "c0.dc3"];
    for m in [&a, &b, &c] {
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
    for (m, dc, ip) in [(&b, "dc2", "10.2.0.7"), (&c, "dc3", "10.3.0.7")] {
        let body = json!({"Node": format!("web-{dc}"), "Address": ip,
            "Service": {"Service": "web", "Port": 80}});
        let r = m
            .call(
                hyper::Method::PUT,
                "/v1/catalog/register",
                &body.to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // 10% loss each way on every WAN link, some datagrams late, doubled or overtaken.
    let lossy = Link {
        loss: 0.10,
        delay: Duration::from_millis(2),
        duplicate: 0.02,
        reorder: 0.05,
    };
    for m in [&a, &b, &c] {
        m.wan_proxy.as_ref().unwrap().set_link(Way::Both, lossy);
    }
    // Meanwhile: rotate the gossip key of every pool, and ask across datacenters.
    let started = Instant::now();
    let mut asked = 0;
    let mut answered = 0;
    let mut rotated = false;
    while started.elapsed() < secs(20) {
        for (dc, ip) in [("dc2", "10.2.0.7"), ("dc3", "10.3.0.7")] {
            asked += 1;
            let m = a
                .dig(&format!("web.service.{dc}.consul"), RecordType::A)
                .await;
            if a_records(&m) == [ip] {
                answered += 1;
            }
        }
        if !rotated && started.elapsed() > secs(3) {
            keyring(&a, hyper::Method::POST, NEW_KEY).await;
            keyring(&a, hyper::Method::PUT, NEW_KEY).await;
            keyring(&a, hyper::Method::DELETE, KEY).await;
            rotated = true;
        }
        for m in [&a, &b, &c] {
            let list = m.json("/v1/agent/members?wan=1").await;
            for member in list.as_array().unwrap() {
                assert_eq!(
                    member["Status"], 1,
                    "{} sees {} not alive under 10% loss",
                    m.name, member["Name"]
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("under 10% WAN loss: {answered} of {asked} cross-datacenter lookups answered");
    assert_eq!(answered, asked, "every cross-datacenter lookup answered");
    // The rotation reached every member of every pool, and lost none.
    let pools = keys(&a).await;
    for pool in pools.as_array().unwrap() {
        let name = format!("{} {}", pool["Datacenter"], pool["WAN"]);
        let members = pool["NumNodes"].as_u64().unwrap();
        assert_eq!(
            pool["Keys"][NEW_KEY].as_u64(),
            Some(members),
            "{name}: {pool}"
        );
        assert!(pool["Keys"].get(KEY).is_none(), "{name}: {pool}");
    }
    for m in [&a, &b, &c] {
        m.wan_proxy
            .as_ref()
            .unwrap()
            .set_link(Way::Both, Link::default());
    }

    // dc3 partitioned away for 30 s: everyone keeps answering for itself, dc3 fails
    // fast for the others, and after the heal the pool converges again.
    for m in [&a, &b] {
        m.wan_proxy.as_ref().unwrap().block([c.ip]);
    }
    c.wan_proxy.as_ref().unwrap().block([a.ip, b.ip]);
    let cut = Instant::now();
    let mut failures: Vec<Duration> = Vec::new();
    while cut.elapsed() < secs(30) {
        for m in [&a, &b, &c] {
            assert_eq!(
                m.get("/v1/catalog/nodes").await.status,
                200,
                "{} local",
                m.name
            );
        }
        let m = a.dig("web.service.dc2.consul", RecordType::A).await;
        assert_eq!(a_records(&m), ["10.2.0.7"], "dc1 still reaches dc2");
        let asked = Instant::now();
        let r = a.get("/v1/catalog/nodes?dc=dc3").await;
        failures.push(asked.elapsed());
        assert_eq!(r.status, 500, "{}", r.body);
        assert!(asked.elapsed() < secs(11), "within the deadline");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for m in [&a, &b, &c] {
        m.wan_proxy.as_ref().unwrap().heal();
    }
    let healed = Instant::now();
    for m in [&a, &b, &c] {
        eventually(
            secs(60),
            "the WAN pool converged after the heal",
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
    let converged = healed.elapsed();
    eventually(secs(30), "dc3 answers again", || async {
        let m = a.dig("web.service.dc3.consul", RecordType::A).await;
        if a_records(&m) == ["10.3.0.7"] {
            Ok(())
        } else {
            Err(format!("{:?}", m.metadata.response_code))
        }
    })
    .await;
    let first = failures[0];
    failures.sort();
    eprintln!(
        "partition of 30 s: {} queries to dc3 failed, the first in {first:?} (before gossip \
         marked dc3's server failed), median {:?}, slowest {:?}; WAN pool converged {converged:?} \
         after the heal, dc3 answered {:?} after it",
        failures.len(),
        failures[failures.len() / 2],
        failures[failures.len() - 1],
        healed.elapsed()
    );
}
