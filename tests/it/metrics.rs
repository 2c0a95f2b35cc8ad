//! `/v1/agent/metrics`: Consul's JSON shape, Prometheus's text format read by the
//! Prometheus project's own Python parser (Debian's `python3-prometheus-client`), and
//! series that move when their events happen: a DNS query, a read of another
//! datacenter.
//!
//! The recorder is per process, so the datacenters here have names no other test
//! uses: their labelled series move only with this test's requests.

use std::process::{Command, Stdio};

use hickory_proto::rr::RecordType;
use serde_json::{Value, json};

use crate::support::cluster::{Member, leader_of};
use crate::support::{eventually, secs};
use crate::wan::federated_pair;

/// A Python interpreter with the Prometheus client library, which CI installs.
fn python_with_prometheus() -> &'static str {
    for candidate in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(candidate)
            .args(["-c", "import prometheus_client.parser"])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return candidate;
        }
    }
    panic!("this test needs python3-prometheus-client: apt-get install python3-prometheus-client");
}

const PARSE: &str = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = {
        "type": family.type,
        "samples": [
            [s.name, s.labels, s.value if math.isfinite(s.value) else None]
            for s in family.samples
        ],
    }
print(json.dumps(out))
"#;

/// The families of a Prometheus text answer, as the reference parser reads them
/// (it fails on text that breaks the format).
fn parse_prometheus(text: &str) -> Value {
    use std::io::Write;
    let mut child = Command::new(python_with_prometheus())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of `sample` in `family` whose labels include `labels`.
fn value(families: &Value, family: &str, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families[family]["samples"]
        .as_array()?
        .iter()
        .find(|s| {
            // The parser names a counter's sample `<name>_total`, whatever the text said
            // (ours says `<name>`, as Consul's does).
            let name = s[0].as_str().unwrap_or_default();
            (name == sample || name.strip_suffix("_total") == Some(sample))
                && labels.iter().all(|(k, v)| s[1][*k].as_str() == Some(*v))
        })
        .and_then(|s| s[2].as_f64())
}

async fn prometheus(m: &Member) -> Value {
    let r = m.get("/v1/agent/metrics?format=prometheus").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.header("content-type")
    );
    parse_prometheus(&r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_come_in_both_formats_and_move_with_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let ca = wan::tls::create_ca("consul", 30).unwrap();
    let (a, b) = federated_pair(
        dir.path(),
        &ca,
        ("ma0", "metricsa"),
        ("mb0", "metricsb"),
        [
            json!({"telemetry": {"prometheus_retention_time": "30s"}}),
            Value::Null,
        ],
    )
    .await;
    leader_of(&[&a], 1).await;
    leader_of(&[&b], 1).await;

    // Consul's JSON: the last interval's gauges, counters and samples.
    let summary = eventually(secs(15), "the sampled gauges in the JSON", || async {
        let r = a.get("/v1/agent/metrics").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        let has =
            v["Gauges"].as_array().unwrap().iter().any(|g| {
                g["Name"] == "consul.runtime.alloc_bytes" && g["Value"].as_f64() > Some(0.0)
            });
        if has {
            Ok(v)
        } else {
            Err(format!("no alloc_bytes gauge yet: {v}"))
        }
    })
    .await;
    for field in ["Gauges", "Points", "Counters", "Samples"] {
        assert!(summary[field].is_array(), "{field}: {summary}");
    }
    assert!(
        summary["Timestamp"]
            .as_str()
            .unwrap()
            .ends_with(" +0000 UTC")
    );

    // The series dashboards written for Consul read, under Consul's names.
    let families = eventually(secs(15), "Consul's series", || async {
        let f = prometheus(&a).await;
        let missing: Vec<&str> = [
            "consul_raft_apply",
            "consul_raft_commitTime",
            "consul_raft_leader_lastContact",
            "consul_serf_member_join",
            "consul_memberlist_gossip",
            "consul_rpc_request",
            "consul_dns_domain_query",
            "consul_catalog_register",
            "consul_runtime_alloc_bytes",
            "consul_api_http",
            "consul_server_isLeader",
            "consul_raft_fsm_apply",
            "consul_dns_stale_queries",
            "consul_session_ttl_active",
        ]
        .into_iter()
        .filter(|n| f.get(*n).is_none())
        .collect();
        if missing.is_empty() {
            Ok(f)
        } else {
            Err(format!("missing {missing:?}"))
        }
    })
    .await;
    assert_eq!(families["consul_raft_apply"]["type"], "counter");
    // Counters keep Consul's names: no `_total` suffix in the text itself.
    let text = a.get("/v1/agent/metrics?format=prometheus").await.body;
    assert!(
        text.lines().any(|l| l.starts_with("consul_raft_apply ")),
        "{text}"
    );
    assert!(!text.contains("consul_raft_apply_total"), "{text}");
    assert_eq!(families["consul_raft_commitTime"]["type"], "summary");
    assert_eq!(families["consul_runtime_alloc_bytes"]["type"], "gauge");
    // The leader applied its own entries: the state machine's timer counted them.
    let applied = value(
        &families,
        "consul_raft_fsm_apply",
        "consul_raft_fsm_apply_count",
        &[],
    );
    assert!(applied.is_some_and(|n| n >= 1.0), "{applied:?}");
    // Sampled every two seconds: the leader says so within a few.
    eventually(secs(15), "isLeader 1", || async {
        let f = prometheus(&a).await;
        match value(&f, "consul_server_isLeader", "consul_server_isLeader", &[]) {
            Some(1.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // A DNS query moves the DNS timer.
    let count = |f: &Value| {
        value(
            f,
            "consul_dns_domain_query",
            "consul_dns_domain_query_count",
            &[("node", "ma0")],
        )
        .unwrap_or(0.0)
    };
    let before = count(&families);
    for _ in 0..3 {
        a.dig("consul.service.consul", RecordType::A).await;
    }
    let after = count(&prometheus(&a).await);
    assert!(after >= before + 3.0, "{before} → {after}");

    // A read of the other datacenter moves its series.
    let cross = |f: &Value, family: &str, sample: &str| {
        value(f, family, sample, &[("datacenter", "metricsb")]).unwrap_or(0.0)
    };
    let f0 = prometheus(&a).await;
    for _ in 0..2 {
        let r = a.get("/v1/catalog/services?dc=metricsb").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let f1 = prometheus(&a).await;
    for (family, sample) in [
        ("consul_rpc_cross_dc", "consul_rpc_cross_dc"),
        ("consul_gateway_requests", "consul_gateway_requests"),
        ("consul_gateway_latency", "consul_gateway_latency_count"),
    ] {
        let (was, now) = (cross(&f0, family, sample), cross(&f1, family, sample));
        assert!(now >= was + 2.0, "{sample}: {was} → {now}: {}", f1[family]);
    }
    assert_eq!(
        cross(&f1, "consul_gateway_errors", "consul_gateway_errors"),
        0.0
    );
    // The sampled federation gauges: the other datacenter reachable, its RTT, its
    // servers by state.
    eventually(secs(15), "the federation gauges", || async {
        let f = prometheus(&a).await;
        let reachable = value(
            &f,
            "consul_gateway_reachable",
            "consul_gateway_reachable",
            &[("datacenter", "metricsb")],
        );
        let rtt = value(
            &f,
            "consul_gateway_rtt",
            "consul_gateway_rtt",
            &[("datacenter", "metricsb")],
        );
        let alive = value(
            &f,
            "consul_wan_members",
            "consul_wan_members",
            &[("datacenter", "metricsb"), ("status", "alive")],
        );
        if reachable == Some(1.0) && rtt.is_some() && alive == Some(1.0) {
            Ok(())
        } else {
            Err(format!(
                "reachable {reachable:?}, rtt {rtt:?}, alive {alive:?}"
            ))
        }
    })
    .await;

    // Bad input, and Prometheus off where its retention time is not positive.
    let r = a.get("/v1/agent/metrics?format=xml").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("Unknown format \"xml\""), "{}", r.body);
    let r = b.get("/v1/agent/metrics?format=prometheus").await;
    assert_eq!(
        (r.status, r.body.trim()),
        (
            415,
            "Prometheus is not enabled since its retention time is not positive"
        )
    );
    let r = b.get("/v1/agent/metrics").await;
    assert_eq!(r.status, 200, "JSON is always served: {}", r.body);
    a.agent.stop(false).await;
    b.agent.stop(false).await;
}
