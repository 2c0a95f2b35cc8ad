//! The key/value store through `/v1/kv`: three servers with CAS races, blocking reads
//! of a key and of a prefix (deletions included) and a leader that dies; a restart from
//! disk and a snapshot restore that keep every key; a snapshot of megabytes restored on
//! three servers; another datacenter's keys through `?dc=`; and bad requests that get
//! Consul's answers and write nothing.

use hyper::Method;
use serde_json::{Value, json};

use crate::support::cluster::{Member, Spec, leader_of, leader_other_than, servers};
use crate::support::{eventually, secs};
use crate::wan::{federated_pair, server, tls_config};

/// `PUT /v1/kv/<path>` with `value`; the JSON answer (`true`/`false`).
async fn put(m: &Member, path: &str, value: &str) -> Value {
    let r = m.call(Method::PUT, &format!("/v1/kv/{path}"), value).await;
    assert_eq!(r.status, 200, "PUT {path}: {}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// The entry of `key` on `m` (read with `query`), or `None` on 404.
async fn entry(m: &Member, key: &str, query: &str) -> Option<Value> {
    let r = m.get(&format!("/v1/kv/{key}{query}")).await;
    match r.status {
        404 => {
            assert!(r.header("x-consul-index").is_some(), "a 404 has an index");
            None
        }
        200 => {
            let list: Value = serde_json::from_str(&r.body).unwrap();
            Some(list[0].clone())
        }
        other => panic!("GET {key}: {other} {}", r.body),
    }
}

fn decode(value: &Value) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str().unwrap())
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_serve_cas_races_and_blocking_reads_and_keep_every_key_when_the_leader_dies()
{
    let mut members = servers(3).await;
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all, 3).await;

    // Writes through any server; followers forward them.
    for (i, m) in members.iter().enumerate() {
        assert_eq!(
            put(m, &format!("app/config/{i}?flags=7"), &format!("v{i}")).await,
            true
        );
    }
    let e = entry(&members[0], "app/config/2", "?consistent")
        .await
        .unwrap();
    assert_eq!(decode(&e["Value"]), "v2");
    assert_eq!(e["Flags"], 7);
    assert_eq!(e["CreateIndex"], e["ModifyIndex"]);

    // A counter under CAS, raced by six writers over the three servers: every increment
    // that was acknowledged is counted exactly once.
    assert_eq!(put(&members[0], "counter?cas=0", "0").await, true);
    let mut racers = Vec::new();
    let clients: Vec<_> = members.iter().map(|m| m.http.clone()).collect();
    for w in 0..6 {
        let http = clients[w % 3].clone();
        racers.push(tokio::spawn(async move {
            let mut won = 0;
            for _ in 0..5 {
                loop {
                    let r = http
                        .call(Method::GET, "/v1/kv/counter?consistent", None)
                        .await
                        .unwrap();
                    let list: Value = serde_json::from_str(&r.body).unwrap();
                    let index = list[0]["ModifyIndex"].as_u64().unwrap();
                    let n: u64 = decode(&list[0]["Value"]).parse().unwrap();
                    let path = format!("/v1/kv/counter?cas={index}");
                    let r = http
                        .call(Method::PUT, &path, Some((n + 1).to_string()))
                        .await
                        .unwrap();
                    if r.body.trim() == "true" {
                        won += 1;
                        break;
                    }
                    assert_eq!(r.body.trim(), "false", "{}", r.body);
                }
            }
            won
        }));
    }
    let mut acknowledged = 0;
    for r in racers {
        acknowledged += r.await.unwrap();
    }
    assert_eq!(acknowledged, 30);
    let e = entry(&members[1], "counter", "?consistent").await.unwrap();
    assert_eq!(decode(&e["Value"]), "30");

    // A blocking read of one key wakes when that key changes, not for another key.
    let index = members[0]
        .get("/v1/kv/counter")
        .await
        .header("x-consul-index")
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let watcher = {
        let http = members[2].http.clone();
        tokio::spawn(async move {
            let path = format!("/v1/kv/counter?index={index}&wait=30s");
            http.call(Method::GET, &path, None).await.unwrap()
        })
    };
    assert_eq!(put(&members[0], "elsewhere", "x").await, true);
    tokio::time::sleep(secs(1)).await;
    assert!(!watcher.is_finished(), "another key's change wakes no one");
    assert_eq!(put(&members[1], "counter", "done").await, true);
    let r = watcher.await.unwrap();
    let list: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(decode(&list[0]["Value"]), "done");
    assert!(r.header("x-consul-index").unwrap().parse::<u64>().unwrap() > index);

    // A blocking read of a prefix wakes when a key under it is deleted, and its index
    // moves forward, not back.
    let r = members[0].get("/v1/kv/app/?recurse").await;
    let prefix_index: u64 = r.header("x-consul-index").unwrap().parse().unwrap();
    let watcher = {
        let http = members[1].http.clone();
        tokio::spawn(async move {
            let path = format!("/v1/kv/app/?recurse&index={prefix_index}&wait=30s");
            http.call(Method::GET, &path, None).await.unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = members[2]
        .call(Method::DELETE, "/v1/kv/app/config/1", "")
        .await;
    assert_eq!(r.body.trim(), "true");
    let r = watcher.await.unwrap();
    assert_eq!(r.status, 200);
    let after: u64 = r.header("x-consul-index").unwrap().parse().unwrap();
    assert!(after > prefix_index, "{after} > {prefix_index}");
    let keys = members[1].json("/v1/kv/app/?keys").await;
    assert_eq!(keys, json!(["app/config/0", "app/config/2"]));

    // The leader dies: the new one has every key.
    let at = members.iter().position(|m| m.name == leader).unwrap();
    let old = members.remove(at);
    old.agent.stop(false).await;
    let survivors: Vec<&Member> = members.iter().collect();
    leader_other_than(&survivors, 3, Some(&leader)).await;
    for m in &members {
        let e = eventually(secs(20), "a consistent read on the new leader", || async {
            let r = m.get("/v1/kv/counter?consistent").await;
            if r.status != 200 {
                return Err(format!("{} {}", r.status, r.body));
            }
            let list: Value = serde_json::from_str(&r.body).unwrap();
            Ok(list[0].clone())
        })
        .await;
        assert_eq!(decode(&e["Value"]), "done");
    }
    assert_eq!(put(&members[0], "after-failover", "1").await, true);
    for m in members {
        m.agent.stop(false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_a_restart_from_disk_and_come_back_with_a_snapshot_restore() {
    let spec = Spec {
        name: "kv-0".into(),
        server: true,
        ..Spec::default()
    };
    let m = Member::start(spec.clone()).await;
    leader_of(&[&m], 1).await;
    for i in 0..20 {
        assert_eq!(put(&m, &format!("svc/{i:02}"), &format!("{i}")).await, true);
    }
    assert_eq!(
        m.call(Method::DELETE, "/v1/kv/svc/19", "")
            .await
            .body
            .trim(),
        "true"
    );
    let before = m.get("/v1/kv/svc/?recurse").await;
    let before_index: u64 = before.header("x-consul-index").unwrap().parse().unwrap();
    let snapshot = m.get("/v1/snapshot").await;
    assert_eq!(snapshot.status, 200);

    // Back from its data dir: every key, and the prefix index (a tombstone's) kept.
    let dir = m.dir;
    m.agent.stop(false).await;
    let m = Member::start_in(spec, dir).await.unwrap();
    leader_of(&[&m], 1).await;
    let after = eventually(secs(20), "the keys after a restart", || async {
        let r = m.get("/v1/kv/svc/?recurse&consistent").await;
        if r.status == 200 { Ok(r) } else { Err(r.body) }
    })
    .await;
    assert_eq!(after.body, before.body);
    let after_index: u64 = after.header("x-consul-index").unwrap().parse().unwrap();
    assert_eq!(after_index, before_index);

    // Everything deleted, then the snapshot restored: the keys are back.
    assert_eq!(
        m.call(Method::DELETE, "/v1/kv/?recurse", "")
            .await
            .body
            .trim(),
        "true"
    );
    assert_eq!(m.get("/v1/kv/svc/?recurse").await.status, 404);
    let r = m.call(Method::PUT, "/v1/snapshot", &snapshot.body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let list = m.json("/v1/kv/svc/?recurse").await;
    assert_eq!(list.as_array().unwrap().len(), 19);
    assert_eq!(decode(&list[18]["Value"]), "18");
    m.agent.stop(false).await;
}

/// The entries under `big/` on `m` (read `?stale`) once there are `n` of them.
async fn big_keys(m: &Member, n: usize) -> Result<Value, String> {
    let r = m.get("/v1/kv/big/?recurse&stale").await;
    let list: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    match list.as_array() {
        Some(l) if l.len() == n => Ok(list),
        _ => Err(format!("{} {}", r.status, &r.body[..r.body.len().min(80)])),
    }
}

/// `method path` with `body` on `m` until it is answered 200; an answer that a leader
/// was lost or is not known yet is retried (for 60 s at most). For requests whose
/// repetition changes nothing (setting a key, a whole-tree delete, a restore).
async fn until_ok(m: &Member, method: Method, path: &str, body: &str) -> String {
    eventually(
        secs(60),
        &format!("{method} {path} answered 200"),
        || async {
            let r = m.call(method.clone(), path, body).await;
            if r.status == 200 {
                return Ok(r.body);
            }
            let transient =
                r.body.contains("leadership lost") || r.body.contains("No cluster leader");
            assert!(transient, "{method} {path}: {} {}", r.status, r.body);
            Err(format!("{} {}", r.status, r.body))
        },
    )
    .await
}

/// A snapshot of a megabyte or more travels packed in the Raft command (deflated, then
/// base64), and in several entries when even that is large: a restore sent to a follower
/// is forwarded to the leader part by part, committed, and applied by every server with
/// the last part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_megabytes_is_restored_on_every_server() {
    let members = servers(3).await;
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all, 3).await;
    // Four values of 250 KiB: 1.3 MiB of JSON once encoded, which deflates to a small
    // Raft entry as a catalog's JSON does; and four of noise (hex digits of a fixed
    // pseudo-random sequence), which deflate to about half and make the restore go in
    // parts.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise = |bytes: usize| -> String {
        (0..bytes / 16)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{x:016x}")
            })
            .collect()
    };
    let values: Vec<String> = (0..8)
        .map(|i| match i {
            0..4 => (0..250 * 1024 / 32)
                .map(|line| format!("value {i}, line {line:08}, ends\n"))
                .collect(),
            _ => noise(250 * 1024),
        })
        .collect();
    // Large entries on three debug-built servers in one busy process can delay
    // heartbeats past the leader's lease (and a restore makes every server install the
    // whole catalog at once: README, "snapshot restore body"); each request is then
    // answered "leadership lost while committing log" and sent again.
    for (i, value) in values.iter().enumerate() {
        let path = format!("/v1/kv/big/{i}");
        assert_eq!(
            until_ok(&members[i % 3], Method::PUT, &path, value)
                .await
                .trim(),
            "true"
        );
    }
    let snapshot = until_ok(&members[0], Method::GET, "/v1/snapshot", "").await;
    assert!(snapshot.len() > 1 << 20, "{} bytes", snapshot.len());
    let file: Value = serde_json::from_str(&snapshot).unwrap();
    let catalog: catalog::Snapshot = serde_json::from_value(file["Catalog"].clone()).unwrap();
    let parts = catalog::PackedSnapshot::new(catalog)
        .into_commands(1)
        .unwrap()
        .len();
    assert!(parts > 1, "the restore goes in {parts} entry");
    until_ok(&members[1], Method::DELETE, "/v1/kv/big/?recurse", "").await;
    let follower = members.iter().find(|m| m.name != leader).unwrap();
    until_ok(follower, Method::PUT, "/v1/snapshot", &snapshot).await;
    for m in &members {
        let list = eventually(secs(20), "the restored keys on every server", || {
            big_keys(m, values.len())
        })
        .await;
        for (i, value) in values.iter().enumerate() {
            assert_eq!(list[i]["Key"], format!("big/{i}"));
            assert!(decode(&list[i]["Value"]) == *value, "big/{i} differs");
        }
    }
    for m in members {
        m.agent.stop(false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_datacenters_keys_are_read_and_written_through_dc() {
    let dir = tempfile::tempdir().unwrap();
    let ca = wan::tls::create_ca("consul", 30).unwrap();
    let (a, b) = federated_pair(
        dir.path(),
        &ca,
        ("a0", "dc1"),
        ("b0", "dc2"),
        [Value::Null, Value::Null],
    )
    .await;
    leader_of(&[&b], 1).await;
    leader_of(&[&a], 1).await;
    assert_eq!(put(&a, "shared/x?dc=dc2", "from-dc1").await, true);
    assert_eq!(entry(&a, "shared/x", "").await, None, "dc1 has no such key");
    let e = entry(&b, "shared/x", "").await.unwrap();
    assert_eq!(decode(&e["Value"]), "from-dc1");
    let e = entry(&a, "shared/x", "?dc=dc2").await.unwrap();
    assert_eq!(decode(&e["Value"]), "from-dc1");
    // CAS across datacenters answers as at home.
    assert_eq!(put(&a, "shared/x?dc=dc2&cas=1", "stale").await, false);

    // A blocking read through dc1 wakes on a write in dc2.
    let index: u64 = a
        .get("/v1/kv/shared/x?dc=dc2")
        .await
        .header("x-consul-index")
        .unwrap()
        .parse()
        .unwrap();
    let watcher = {
        let http = a.http.clone();
        tokio::spawn(async move {
            let path = format!("/v1/kv/shared/x?dc=dc2&index={index}&wait=30s");
            http.call(Method::GET, &path, None).await.unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(put(&b, "shared/x", "changed").await, true);
    let r = watcher.await.unwrap();
    let list: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(decode(&list[0]["Value"]), "changed");

    // A value at the limit crosses the WAN whole.
    let big = "v".repeat(catalog::KV_MAX_VALUE_SIZE);
    assert_eq!(put(&a, "shared/big?dc=dc2", &big).await, true);
    let e = entry(&b, "shared/big", "").await.unwrap();
    assert_eq!(decode(&e["Value"]).len(), catalog::KV_MAX_VALUE_SIZE);

    let r = a.get("/v1/kv/shared/x?dc=dc9").await;
    assert_eq!((r.status, r.body.trim()), (500, "No path to datacenter"));
    a.agent.stop(false).await;
    b.agent.stop(false).await;
}

#[tokio::test]
async fn bad_requests_get_consuls_answers_and_write_nothing() {
    let m = Member::start(Spec {
        name: "kv-bad".into(),
        server: true,
        ..Spec::default()
    })
    .await;
    leader_of(&[&m], 1).await;
    assert_eq!(put(&m, "k", "v").await, true);
    let index = |r: &proconsul::client::Response| -> u64 {
        r.header("x-consul-index").unwrap().parse().unwrap()
    };
    let before = index(&m.get("/v1/kv/k").await);

    let cases: &[(Method, &str, String, u16, &str)] = &[
        (Method::PUT, "/v1/kv/", "v".into(), 400, "Missing key name"),
        (
            Method::GET,
            "/v1/kv/",
            String::new(),
            400,
            "Missing key name",
        ),
        (
            Method::DELETE,
            "/v1/kv/",
            String::new(),
            400,
            "Missing key name",
        ),
        (
            Method::PUT,
            "/v1/kv/k?cas=0&acquire=s",
            "v".into(),
            400,
            "Conflicting flags: acquire=s&cas=0",
        ),
        (
            Method::DELETE,
            "/v1/kv/k?recurse&cas=3",
            String::new(),
            400,
            "Conflicting flags: cas=3&recurse=",
        ),
        (
            Method::PUT,
            "/v1/kv/k?cas=abc",
            "v".into(),
            500,
            "strconv.ParseUint: parsing \"abc\": invalid syntax",
        ),
        (
            Method::PUT,
            "/v1/kv/k?flags=-1",
            "v".into(),
            500,
            "strconv.ParseUint: parsing \"-1\": invalid syntax",
        ),
        (
            Method::PUT,
            "/v1/kv/k",
            "v".repeat(catalog::KV_MAX_VALUE_SIZE + 1),
            413,
            "Request body(524289 bytes) too large, max size: 524288 bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.",
        ),
        (
            Method::PUT,
            "/v1/kv/k?acquire=",
            "v".into(),
            500,
            "missing session",
        ),
    ];
    for (method, path, body, status, text) in cases {
        let r = m.call(method.clone(), path, body).await;
        assert_eq!(
            (r.status, r.body.trim()),
            (*status, *text),
            "{method} {path}"
        );
    }
    // A traversal segment is refused, wherever it is.
    let r = m.call(Method::PUT, "/v1/kv/a/../k", "x").await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = m.get("/v1/kv/k").await;
    assert_eq!(index(&r), before, "nothing was written");
    let list: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(decode(&list[0]["Value"]), "v");
    m.agent.stop(false).await;
}

/// Creates a session on `m` with `body`; its ID.
async fn session(m: &Member, body: Value) -> String {
    let r = m
        .call(Method::PUT, "/v1/session/create", &body.to_string())
        .await;
    assert_eq!(r.status, 200, "session create: {}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["ID"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_is_exclusive_and_freed_when_its_holders_node_fails() {
    let cluster = crate::support::cluster::Cluster::start(1, |_| {}).await;
    cluster.converged(&cluster.names()).await;
    let (server, client) = (&cluster.members[0], &cluster.members[1]);
    leader_of(&[server], 1).await;
    // The client's node must be in the catalog before a session can name it.
    eventually(secs(20), "the client's node in the catalog", || async {
        let r = server.get("/v1/catalog/node/client-1").await;
        if r.status == 200 && r.body.contains("client-1") {
            Ok(())
        } else {
            Err(r.body)
        }
    })
    .await;
    let held = session(client, json!({"Name": "holder", "LockDelay": "1s"})).await;
    let waiting = session(server, json!({"Name": "waiter", "LockDelay": "1s"})).await;
    let info = server.json(&format!("/v1/session/info/{held}")).await;
    assert_eq!(info[0]["Node"], "client-1");
    assert_eq!(info[0]["LockDelay"], 1_000_000_000u64);
    assert_eq!(info[0]["NodeChecks"], json!(["serfHealth"]));

    assert_eq!(
        put(client, &format!("jobs/leader?acquire={held}"), "client-1").await,
        true
    );
    assert_eq!(
        put(
            server,
            &format!("jobs/leader?acquire={waiting}"),
            "server-0"
        )
        .await,
        false
    );
    let e = entry(server, "jobs/leader", "").await.unwrap();
    assert_eq!(
        (e["Session"].as_str(), e["LockIndex"].as_u64()),
        (Some(held.as_str()), Some(1))
    );
    // Only the holder can release; a plain write keeps the holder.
    assert_eq!(
        put(server, &format!("jobs/leader?release={waiting}"), "").await,
        false
    );
    assert_eq!(put(server, "jobs/leader", "plain").await, true);
    let e = entry(server, "jobs/leader", "").await.unwrap();
    assert_eq!(e["Session"].as_str(), Some(held.as_str()));

    // The holder's agent dies: gossip marks its node failed, serfHealth goes critical,
    // the session ends and the lock is free (after the lock delay) for the waiter.
    let index: u64 = server
        .get("/v1/kv/jobs/leader")
        .await
        .header("x-consul-index")
        .unwrap()
        .parse()
        .unwrap();
    let mut members = cluster.members;
    let client = members.pop().unwrap();
    client.agent.stop(false).await;
    let server = &members[0];
    let r = server
        .get(&format!("/v1/kv/jobs/leader?index={index}&wait=60s"))
        .await;
    let list: Value = serde_json::from_str(&r.body).unwrap();
    assert!(list[0].get("Session").is_none(), "{list}");
    assert_eq!(
        server.json(&format!("/v1/session/info/{held}")).await,
        json!([])
    );
    eventually(
        secs(10),
        "the waiter takes the lock after the delay",
        || async {
            if put(
                server,
                &format!("jobs/leader?acquire={waiting}"),
                "server-0",
            )
            .await
                == true
            {
                Ok(())
            } else {
                Err("still in the lock delay".to_owned())
            }
        },
    )
    .await;
    let e = entry(server, "jobs/leader", "").await.unwrap();
    assert_eq!(
        (e["Session"].as_str(), e["LockIndex"].as_u64()),
        (Some(waiting.as_str()), Some(2))
    );
    // Destroying the session with behavior "release" frees the key, which stays.
    let r = server
        .call(Method::PUT, &format!("/v1/session/destroy/{waiting}"), "")
        .await;
    assert_eq!(r.body.trim(), "true");
    let e = entry(server, "jobs/leader", "").await.unwrap();
    assert!(e.get("Session").is_none());
    for m in members {
        m.agent.stop(false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ttl_runs_out_on_a_new_leader_and_deletes_its_keys() {
    let mut members = servers(3).await;
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all, 3).await;
    let follower = members.iter().find(|m| m.name != leader).unwrap();
    let id = session(
        follower,
        json!({"TTL": "10s", "Behavior": "delete", "LockDelay": "0s", "NodeChecks": []}),
    )
    .await;
    assert_eq!(
        put(follower, &format!("ttl/key?acquire={id}"), "x").await,
        true
    );
    // Renewals answer with the session; an unknown one is 404.
    let r = follower
        .call(Method::PUT, &format!("/v1/session/renew/{id}"), "")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let renewed: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(renewed[0]["TTL"], "10s");
    let r = follower
        .call(
            Method::PUT,
            "/v1/session/renew/00000000-0000-4000-8000-000000000000",
            "",
        )
        .await;
    assert_eq!(
        (r.status, r.body.trim()),
        (
            404,
            "Session id '00000000-0000-4000-8000-000000000000' not found"
        )
    );
    // The leader dies; the new one times the TTL afresh and ends the session.
    let at = members.iter().position(|m| m.name == leader).unwrap();
    let old = members.remove(at);
    old.agent.stop(false).await;
    let survivors: Vec<&Member> = members.iter().collect();
    leader_other_than(&survivors, 3, Some(&leader)).await;
    eventually(secs(45), "the session to run out", || async {
        let list = members[0]
            .json(&format!("/v1/session/info/{id}?consistent"))
            .await;
        if list == json!([]) {
            Ok(())
        } else {
            Err(list.to_string())
        }
    })
    .await;
    assert_eq!(entry(&members[1], "ttl/key", "?consistent").await, None);
    for m in members {
        m.agent.stop(false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_applies_every_operation_or_none() {
    let m = Member::start(Spec {
        name: "txn-0".into(),
        server: true,
        ..Spec::default()
    })
    .await;
    leader_of(&[&m], 1).await;
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let txn = |ops: Value| {
        let m = &m;
        async move { m.call(Method::PUT, "/v1/txn", &ops.to_string()).await }
    };
    let r = txn(json!([
        {"KV": {"Verb": "set", "Key": "t/a", "Value": b64("1")}},
        {"KV": {"Verb": "cas", "Key": "t/b", "Value": b64("2"), "Index": 0}},
        {"KV": {"Verb": "get", "Key": "t/a"}},
    ]))
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["Errors"], Value::Null);
    let results = v["Results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(
        results[0]["KV"]["Value"],
        Value::Null,
        "a write returns no value"
    );
    assert_eq!(decode(&results[2]["KV"]["Value"]), "1");
    let index = results[0]["KV"]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(
        results[1]["KV"]["ModifyIndex"].as_u64(),
        Some(index),
        "one entry"
    );

    // A failed operation rolls back the others; every failure is listed.
    let r = txn(json!([
        {"KV": {"Verb": "set", "Key": "t/a", "Value": b64("changed")}},
        {"KV": {"Verb": "delete", "Key": "t/b"}},
        {"KV": {"Verb": "cas", "Key": "t/a", "Value": b64("x"), "Index": 1}},
        {"KV": {"Verb": "check-not-exists", "Key": "t/b"}},
    ]))
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["Results"], Value::Null);
    assert_eq!(
        v["Errors"],
        json!([{"OpIndex": 2, "What": "failed to set key \"t/a\", index is stale"}])
    );
    assert_eq!(decode(&entry(&m, "t/a", "").await.unwrap()["Value"]), "1");
    assert!(entry(&m, "t/b", "").await.is_some());

    // A read-only transaction is a read: consistency headers, no index.
    let r = m
        .call(
            Method::PUT,
            "/v1/txn?consistent",
            &json!([{"KV": {"Verb": "get-tree", "Key": "t/"}},
                    {"KV": {"Verb": "check-index", "Key": "t/b", "Index": index}}])
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("x-consul-index").is_none());
    assert_eq!(r.header("x-consul-knownleader"), Some("true"));
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["Results"].as_array().unwrap().len(), 3);

    // Locks in a transaction follow the session.
    let node = m.json("/v1/agent/self").await["Config"]["NodeName"].clone();
    let id = session(&m, json!({"Node": node})).await;
    let r = txn(json!([
        {"KV": {"Verb": "lock", "Key": "t/lock", "Session": id, "Value": b64("me")}},
        {"KV": {"Verb": "check-session", "Key": "t/lock", "Session": id}},
    ]))
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = txn(json!([{"KV": {"Verb": "unlock", "Key": "t/lock", "Session": "nobody"}}])).await;
    assert_eq!(r.status, 409);
    assert!(
        r.body.contains("failed to unlock key \\\"t/lock\\\""),
        "{}",
        r.body
    );

    // Bad bodies: Consul's statuses, nothing written.
    let r = txn(json!([{"KV": {"Verb": "frobnicate", "Key": "t/a"}}])).await;
    assert_eq!(r.status, 409);
    assert!(r.body.contains("unknown KV verb"), "{}", r.body);
    let many: Vec<Value> = (0..65)
        .map(|i| json!({"KV": {"Verb": "set", "Key": format!("t/{i}")}}))
        .collect();
    let r = txn(Value::Array(many)).await;
    assert_eq!(
        (r.status, r.body.trim()),
        (413, "Transaction contains too many operations (65 > 64)")
    );
    let r = m.call(Method::PUT, "/v1/txn", "[{").await;
    assert_eq!(r.status, 400);
    assert!(r.body.starts_with("Failed to parse body: "), "{}", r.body);
    assert_eq!(
        m.json("/v1/kv/t/?keys").await,
        json!(["t/a", "t/b", "t/lock"])
    );
    m.agent.stop(false).await;
}

/// The keys under `prefix` in `m` with their values (and flags), read `?consistent`.
async fn tree(m: &Member, prefix: &str) -> Vec<(String, String, u64)> {
    let r = m.get(&format!("/v1/kv/{prefix}?recurse&consistent")).await;
    if r.status == 404 {
        return Vec::new();
    }
    assert_eq!(r.status, 200, "{}", r.body);
    let list: Value = serde_json::from_str(&r.body).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = if e["Value"].is_null() {
                String::new()
            } else {
                decode(&e["Value"])
            };
            (
                e["Key"].as_str().unwrap().to_owned(),
                value,
                e["Flags"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// What dc2 should hold of dc1's `config/`: all but `config/local/`.
fn copied(source: Vec<(String, String, u64)>) -> Vec<(String, String, u64)> {
    source
        .into_iter()
        .filter(|(k, _, _)| !k.starts_with("config/local/"))
        .collect()
}

async fn replicated_equal(a: &Member, b: &Member, what: &str) {
    eventually(secs(60), what, || async {
        let want = copied(tree(a, "config/").await);
        let have: Vec<_> = tree(b, "config/")
            .await
            .into_iter()
            .filter(|(k, _, _)| !k.starts_with("config/local/"))
            .collect();
        if want == have {
            Ok(())
        } else {
            Err(format!("dc1 {want:?}\ndc2 {have:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_replication_copies_a_prefix_through_loss_and_a_partition_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let ca = wan::tls::create_ca("consul", 30).unwrap();
    let a = Member::start(Spec {
        proxied_wan: true,
        ..server(
            "a0",
            "dc1",
            1,
            vec![],
            tls_config(dir.path(), &ca, "a0", "dc1"),
        )
    })
    .await;
    let mut config: Value =
        serde_json::from_str(&tls_config(dir.path(), &ca, "b0", "dc2")).unwrap();
    config["kv_replication"] = json!({
        "source_datacenter": "dc1",
        "prefixes": ["config/"],
        "exclude": ["config/local/"],
    });
    let b = Member::start(Spec {
        join_wan: vec![a.wan_addr()],
        proxied_wan: true,
        ..server("b0", "dc2", 1, vec![], config.to_string())
    })
    .await;
    leader_of(&[&a], 1).await;
    leader_of(&[&b], 1).await;
    for i in 0..10 {
        assert_eq!(
            put(&a, &format!("config/app/{i}?flags={i}"), &format!("v{i}")).await,
            true
        );
    }
    assert_eq!(put(&a, "config/local/dc1-only", "x").await, true);
    assert_eq!(put(&a, "other/not-copied", "x").await, true);
    // dc2's own keys under the excluded prefix are its own.
    assert_eq!(put(&b, "config/local/dc2-only", "mine").await, true);
    replicated_equal(&a, &b, "the first copy").await;
    assert_eq!(entry(&b, "other/not-copied", "").await, None);
    assert_eq!(entry(&b, "config/local/dc1-only", "").await, None);

    // Writes to the copy are refused, in any form; nothing changes.
    let r = b.call(Method::PUT, "/v1/kv/config/app/0", "mine").await;
    assert_eq!(r.status, 500);
    assert!(
        r.body.contains("replicated from datacenter \"dc1\""),
        "{}",
        r.body
    );
    assert_eq!(
        b.call(Method::DELETE, "/v1/kv/?recurse", "").await.status,
        500
    );
    let r = b
        .call(
            Method::PUT,
            "/v1/txn",
            &json!([{"KV": {"Verb": "delete", "Key": "config/app/1"}}]).to_string(),
        )
        .await;
    assert_eq!(r.status, 500, "{}", r.body);
    let status = b.json("/v1/operator/kv-replication").await;
    assert_eq!(status["Enabled"], true);
    assert_eq!(status["SourceDatacenter"], "dc1");
    assert_eq!(status["Prefixes"][0]["Prefix"], "config/");
    assert_eq!(status["Prefixes"][0]["Running"], true);
    assert_eq!(status["Prefixes"][0]["Keys"], 10);
    assert!(status["Prefixes"][0]["ReplicatedIndex"].as_u64().unwrap() > 0);
    assert_eq!(
        a.json("/v1/operator/kv-replication").await,
        json!({"Enabled": false})
    );

    // 10% of WAN datagrams lost each way while dc1 changes and deletes keys.
    for m in [&a, &b] {
        m.wan_proxy.as_ref().unwrap().set_loss(0.1);
    }
    for i in 0..10 {
        if i % 3 == 0 {
            let r = a
                .call(Method::DELETE, &format!("/v1/kv/config/app/{i}"), "")
                .await;
            assert_eq!(r.status, 200);
        } else {
            assert_eq!(
                put(&a, &format!("config/app/{i}"), &format!("w{i}")).await,
                true
            );
        }
    }
    replicated_equal(&a, &b, "the copy under loss").await;
    // After the first full comparison, rounds move only what changed, deletions included.
    eventually(secs(30), "the copy's status after the changes", || async {
        let p = b.json("/v1/operator/kv-replication").await["Prefixes"][0].clone();
        let incremental = p["IncrementalRounds"].as_u64().unwrap_or(0);
        if p["Keys"] == 6 && p["FullRounds"] == 1 && incremental > 0 {
            Ok(())
        } else {
            Err(format!("{p}"))
        }
    })
    .await;

    // A 30 s partition: dc1 keeps changing; dc2 catches up after the heal.
    a.wan_proxy.as_ref().unwrap().block([b.ip]);
    b.wan_proxy.as_ref().unwrap().block([a.ip]);
    for i in 10..20 {
        assert_eq!(put(&a, &format!("config/new/{i}"), "during").await, true);
    }
    let r = a
        .call(Method::DELETE, "/v1/kv/config/app/?recurse", "")
        .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(secs(30)).await;
    for m in [&a, &b] {
        m.wan_proxy.as_ref().unwrap().heal();
    }
    replicated_equal(&a, &b, "the copy after the partition").await;
    assert_eq!(
        tree(&b, "config/local/").await,
        [("config/local/dc2-only".to_owned(), "mine".to_owned(), 0)],
        "nothing outside the copied keys changed"
    );
    assert_eq!(entry(&b, "other/not-copied", "").await, None);
    a.agent.stop(false).await;
    b.agent.stop(false).await;
}

/// Deleted keys the source can no longer list (here: a snapshot restore takes them away
/// without tombstones) send the copy back to a full comparison, which removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_replication_compares_the_whole_prefix_when_the_source_cannot_list_its_changes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = wan::tls::create_ca("consul", 30).unwrap();
    let a = Member::start(server(
        "a0",
        "dc1",
        1,
        vec![],
        tls_config(dir.path(), &ca, "a0", "dc1"),
    ))
    .await;
    let mut config: Value =
        serde_json::from_str(&tls_config(dir.path(), &ca, "b0", "dc2")).unwrap();
    config["kv_replication"] = json!({
        "source_datacenter": "dc1",
        "prefixes": ["config/"],
        "exclude": ["config/local/"],
    });
    let b = Member::start(Spec {
        join_wan: vec![a.wan_addr()],
        ..server("b0", "dc2", 1, vec![], config.to_string())
    })
    .await;
    leader_of(&[&a], 1).await;
    leader_of(&[&b], 1).await;
    assert_eq!(put(&a, "config/a", "1").await, true);
    replicated_equal(&a, &b, "the first copy").await;
    let snapshot = a.get("/v1/snapshot").await;
    assert_eq!(snapshot.status, 200);

    // A key set and one deleted after the first copy: listed by the source.
    assert_eq!(put(&a, "config/b", "2").await, true);
    assert_eq!(put(&a, "config/c", "3").await, true);
    let r = a.call(Method::DELETE, "/v1/kv/config/a", "").await;
    assert_eq!(r.status, 200);
    replicated_equal(&a, &b, "the copy after a delete").await;
    assert_eq!(entry(&b, "config/a", "").await, None);
    let rounds = |status: Value| {
        let p = &status["Prefixes"][0];
        (p["FullRounds"].as_u64(), p["Keys"].as_u64())
    };
    eventually(secs(30), "one full round, two keys", || async {
        let status = b.json("/v1/operator/kv-replication").await;
        match rounds(status.clone()) {
            (Some(1), Some(2)) => Ok(()),
            _ => Err(status.to_string()),
        }
    })
    .await;

    // The snapshot from before brings config/a back and takes config/b and config/c
    // away, with no tombstones to list: dc2 compares the whole prefix.
    let r = a.call(Method::PUT, "/v1/snapshot", &snapshot.body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    replicated_equal(&a, &b, "the copy after the restore").await;
    assert_eq!(entry(&b, "config/b", "").await, None);
    eventually(secs(30), "a second full round, one key", || async {
        let status = b.json("/v1/operator/kv-replication").await;
        match rounds(status.clone()) {
            (Some(2), Some(1)) => Ok(()),
            _ => Err(status.to_string()),
        }
    })
    .await;
    a.agent.stop(false).await;
    b.agent.stop(false).await;
}
