//! Anti-entropy from the outside: a client agent's own services and checks reach the
//! servers' catalog with their latest status, and a full sync puts back what was removed
//! from the catalog behind the agent's back.

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};

use crate::support::cluster::Cluster;
use crate::support::{Setup, TestAgent, eventually, secs};

/// Check ID → status, of the checks the catalog holds for `node` (without `serfHealth`).
fn statuses(checks: &Value) -> BTreeMap<String, String> {
    checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["CheckID"] != "serfHealth")
        .map(|c| {
            (
                c["CheckID"].as_str().unwrap().to_owned(),
                c["Status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_agents_ttl_updates_reach_the_servers_catalog_with_their_last_status() {
    const SERVICES: usize = 500;
    let cluster = Cluster::start(1, |_| {}).await;
    cluster.converged(&cluster.names()).await;
    let (server, client) = (&cluster.members[0], &cluster.members[1]);

    let mut want = BTreeMap::new();
    for n in 0..SERVICES {
        let body = json!({"Name": format!("svc-{n}"), "Port": 9000,
                          "Check": {"CheckID": format!("ttl-{n}"), "TTL": "10m"}});
        let r = client
            .call(Method::PUT, "/v1/agent/service/register", &body.to_string())
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        want.insert(format!("ttl-{n}"), "critical".to_owned());
    }
    let wait_for = |want: BTreeMap<String, String>, what: &'static str| async move {
        eventually(secs(60), what, || {
            let want = &want;
            async move {
                let seen = statuses(&server.json("/v1/health/node/client-1").await);
                if seen == *want {
                    Ok(())
                } else {
                    let differ = want
                        .iter()
                        .filter(|(k, v)| seen.get(*k) != Some(*v))
                        .count();
                    Err(format!("{differ} of {} differ", want.len()))
                }
            }
        })
        .await;
    };
    wait_for(want.clone(), "every check in the servers' catalog").await;

    // Every check passes, then every third warns and every seventh fails, each update
    // a separate call: the catalog ends with the last status of each.
    for n in 0..SERVICES {
        let r = client
            .call(Method::PUT, &format!("/v1/agent/check/pass/ttl-{n}"), "")
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        want.insert(format!("ttl-{n}"), "passing".to_owned());
    }
    for n in (0..SERVICES).step_by(3) {
        let r = client
            .call(Method::PUT, &format!("/v1/agent/check/warn/ttl-{n}"), "")
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        want.insert(format!("ttl-{n}"), "warning".to_owned());
    }
    for n in (0..SERVICES).step_by(7) {
        let r = client
            .call(Method::PUT, &format!("/v1/agent/check/fail/ttl-{n}"), "")
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        want.insert(format!("ttl-{n}"), "critical".to_owned());
    }
    wait_for(
        want,
        "the last status of every check in the servers' catalog",
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_service_deregistered_through_the_catalog_comes_back_at_the_next_full_sync() {
    let a = TestAgent::start(Setup {
        ae_interval: Some(Duration::from_millis(300)),
        ..Setup::default()
    })
    .await;
    let body = json!({"Name": "web", "Check": {"CheckID": "web-ttl", "TTL": "10m"}});
    assert_eq!(
        a.put("/v1/agent/service/register", &body.to_string())
            .await
            .status,
        200
    );
    assert_eq!(a.put("/v1/agent/check/pass/web-ttl", "").await.status, 200);
    let passing = || async {
        let v = a.json("/v1/health/service/web?passing").await;
        if v.as_array().unwrap().len() == 1 {
            Ok(())
        } else {
            Err(v.to_string())
        }
    };
    eventually(secs(10), "web passing in the catalog", passing).await;

    let r = a
        .put(
            "/v1/catalog/deregister",
            r#"{"Node": "node-1", "ServiceID": "web"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(secs(10), "web back in the catalog, passing", passing).await;
    a.shutdown().await;
}
