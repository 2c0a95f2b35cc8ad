//! Autopilot: its settings in the Raft log (`/v1/operator/autopilot/configuration`, with
//! check-and-set), the leader's view of its servers (`health`, `state`, asked through
//! any agent), and `CleanupDeadServers` deciding whether a failed server is removed.

use hyper::Method;
use serde_json::{Value, json};

use crate::support::cluster::{Member, leader_of, servers};
use crate::support::{eventually, secs};

async fn json_of(m: &Member, path: &str) -> (u16, Value) {
    let r = m.get(path).await;
    let v = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body));
    (r.status, v)
}

async fn voters(m: &Member) -> usize {
    let (_, config) = json_of(m, "/v1/operator/raft/configuration").await;
    config["Servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Voter"] == true)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autopilot_settings_health_and_dead_server_cleanup() {
    let members = servers(3).await;
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all, 3).await;
    let follower = members.iter().find(|m| m.name != leader).unwrap();

    // The first leader wrote the defaults (Consul's) into the log.
    let config = eventually(secs(20), "the settings written", || async {
        let (status, c) = json_of(follower, "/v1/operator/autopilot/configuration").await;
        if status == 200 && c["CreateIndex"].as_u64() > Some(0) {
            Ok(c)
        } else {
            Err(format!("{status} {c}"))
        }
    })
    .await;
    assert_eq!(config["CleanupDeadServers"], true);
    assert_eq!(config["LastContactThreshold"], "200ms");
    assert_eq!(config["MaxTrailingLogs"], 250);
    assert_eq!(config["ServerStabilizationTime"], "10s");

    // Check-and-set: a stale index changes nothing, the current one wins.
    let index = config["ModifyIndex"].as_u64().unwrap();
    let mut off = config.clone();
    off["CleanupDeadServers"] = json!(false);
    let path = |cas: u64| format!("/v1/operator/autopilot/configuration?cas={cas}");
    let r = follower
        .call(Method::PUT, &path(index - 1), &off.to_string())
        .await;
    assert_eq!((r.status, r.body.trim()), (200, "false"));
    let r = follower
        .call(Method::PUT, &path(index), &off.to_string())
        .await;
    assert_eq!((r.status, r.body.trim()), (200, "true"));
    let (_, now) = json_of(&members[0], "/v1/operator/autopilot/configuration").await;
    assert_eq!(now["CleanupDeadServers"], false);
    assert!(now["ModifyIndex"].as_u64() > Some(index));
    let r = follower
        .call(Method::PUT, "/v1/operator/autopilot/configuration", "{")
        .await;
    assert_eq!(r.status, 400, "{}", r.body);

    // Health, asked of a follower, is the leader's view: three healthy voters, one may
    // fail.
    eventually(secs(20), "three healthy servers", || async {
        let (status, h) = json_of(follower, "/v1/operator/autopilot/health").await;
        let servers = h["Servers"].as_array().cloned().unwrap_or_default();
        let leaders = servers.iter().filter(|s| s["Leader"] == true).count();
        if status == 200
            && h["Healthy"] == true
            && h["FailureTolerance"] == 1
            && servers.len() == 3
            && leaders == 1
            && servers
                .iter()
                .all(|s| s["SerfStatus"] == "alive" && s["Voter"] == true)
        {
            Ok(())
        } else {
            Err(format!("{status} {h}"))
        }
    })
    .await;
    let (status, state) = json_of(follower, "/v1/operator/autopilot/state").await;
    assert_eq!(status, 200);
    assert_eq!(state["Voters"].as_array().unwrap().len(), 3);
    assert_eq!(state["Servers"].as_object().unwrap().len(), 3);

    // A server fails. With CleanupDeadServers off it stays past the grace period, and
    // health says the cluster is not healthy (429).
    let gone = follower.name.clone();
    drop(all);
    let (doomed, rest): (Vec<Member>, Vec<Member>) =
        members.into_iter().partition(|m| m.name == gone);
    let doomed = doomed.into_iter().next().unwrap();
    doomed.agent.stop(false).await;
    let asker = &rest[0];
    eventually(secs(30), "the failed server unhealthy", || async {
        let r = asker.get("/v1/operator/autopilot/health").await;
        let h: Value = serde_json::from_str(&r.body).unwrap_or_default();
        let bad = h["Servers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["Name"] == gone.as_str() && s["Healthy"] == false);
        if r.status == 429 && h["Healthy"] == false && bad {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await;
    tokio::time::sleep(lan::DEAD_SERVER_GRACE + secs(5)).await;
    assert_eq!(voters(asker).await, 3, "kept: CleanupDeadServers is off");

    // Turned on: the leader removes it.
    let (_, c) = json_of(asker, "/v1/operator/autopilot/configuration").await;
    let mut on = c.clone();
    on["CleanupDeadServers"] = json!(true);
    let r = asker
        .call(
            Method::PUT,
            "/v1/operator/autopilot/configuration",
            &on.to_string(),
        )
        .await;
    assert_eq!((r.status, r.body.trim()), (200, "true"));
    eventually(secs(30), "the failed server removed", || async {
        match voters(asker).await {
            2 => Ok(()),
            n => Err(format!("{n} voters")),
        }
    })
    .await;
    for m in rest {
        m.agent.stop(false).await;
    }
}

/// A server that joins later is a learner first, and votes only once it has stayed
/// caught up for `ServerStabilizationTime`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_votes_only_after_the_stabilization_time() {
    use crate::support::cluster::{Spec, servers_with};
    let config = json!({"autopilot": {"server_stabilization_time": "3s"}}).to_string();
    let first = servers_with(1, Some(config.clone())).await;
    leader_of(&[&first[0]], 1).await;
    let late = Member::start(Spec {
        name: "late".into(),
        server: true,
        expect: Some(2),
        join: vec![first[0].gossip_addr()],
        config: Some(config),
        ..Spec::default()
    })
    .await;
    eventually(secs(30), "the new server added as a learner", || async {
        match late_votes(&first[0]).await {
            Some(false) => Ok(()),
            other => Err(format!("late: {other:?}")),
        }
    })
    .await;
    eventually(secs(30), "the new server promoted", || async {
        match late_votes(&first[0]).await {
            Some(true) => Ok(()),
            other => Err(format!("late: {other:?}")),
        }
    })
    .await;
    late.agent.stop(false).await;
    for m in first {
        m.agent.stop(false).await;
    }
}

/// Whether the server named `late` votes, in `m`'s view of the Raft configuration
/// (`None`: not in it).
async fn late_votes(m: &Member) -> Option<bool> {
    let r = m.get("/v1/operator/raft/configuration").await;
    let c: Value = serde_json::from_str(&r.body).unwrap_or_default();
    c["Servers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["Node"] == "late")
        .map(|s| s["Voter"] == true)
}
