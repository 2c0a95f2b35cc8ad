//! User events: fired on one agent, carried by gossip, kept and listed by every agent
//! they are meant for; filters; Consul's size limit; ACLs; and an event fired in dc1 for
//! dc2 reaching a blocking list on a client agent of dc2.

use hyper::Method;
use serde_json::{Value, json};

use crate::support::cluster::{Cluster, Member, Spec, leader_of};
use crate::support::{eventually, secs};
use crate::wan::{KEY, client_tls, federated_pair};

/// Fires `name` with `body` as payload; returns the status and the answer.
async fn fire(m: &Member, name_and_query: &str, body: &str) -> (u16, String) {
    let r = m
        .call(
            Method::PUT,
            &format!("/v1/event/fire/{name_and_query}"),
            body,
        )
        .await;
    (r.status, r.body)
}

/// The names of the events `m` lists (with `query`, e.g. `?name=x`).
async fn listed(m: &Member, query: &str) -> Vec<Value> {
    let list = m.json(&format!("/v1/event/list{query}")).await;
    list.as_array().unwrap().clone()
}

/// Waits until `m` lists an event with ID `id`.
async fn sees(m: &Member, id: &str) {
    eventually(
        secs(20),
        &format!("{} to list event {id}", m.name),
        || async {
            let events = listed(m, "").await;
            if events.iter().any(|e| e["ID"] == id) {
                Ok(())
            } else {
                Err(format!("{events:?}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_fired_on_one_agent_is_listed_by_those_it_is_meant_for() {
    let web =
        json!({"service": {"id": "web-1", "name": "web", "tags": ["v1"], "port": 80}}).to_string();
    let cluster = Cluster::start(2, |s| {
        if s.name == "client-1" {
            s.config = Some(web.clone());
        }
    })
    .await;
    cluster.converged(&cluster.names()).await;
    let (server, web, other) = (cluster.server(), &cluster.members[1], &cluster.members[2]);

    // Fired on a client agent, the event reaches every agent, the firing one included.
    let (status, body) = fire(other, "deploy", "v1.2.3").await;
    assert_eq!(status, 200, "{body}");
    let fired: Value = serde_json::from_str(&body).unwrap();
    let id = fired["ID"].as_str().unwrap().to_owned();
    assert_eq!(fired["Name"], "deploy");
    assert_eq!(fired["Payload"], "djEuMi4z", "base64 of the payload");
    assert_eq!(fired["Version"], 1);
    for m in &cluster.members {
        sees(m, &id).await;
    }
    let on_server = listed(server, "?name=deploy").await;
    assert_eq!(on_server.len(), 1);
    assert_eq!(on_server[0], fired, "every agent keeps it as fired");
    assert!(listed(server, "?name=other").await.is_empty());

    // Filters are decided by each agent: only the one running web with tag v1 keeps it.
    let (status, body) = fire(server, "restart?service=web&tag=v1", "").await;
    assert_eq!(status, 200, "{body}");
    let filtered: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(filtered["Payload"], Value::Null);
    assert_eq!(filtered["ServiceFilter"], "web");
    let restart_id = filtered["ID"].as_str().unwrap().to_owned();
    sees(web, &restart_id).await;
    // A node filter that matches one node: fired after the service one, so once it is
    // listed there, the service-filtered one has had its chance too.
    let (_, body) = fire(server, "ping?node=^client-2$", "").await;
    let ping: Value = serde_json::from_str(&body).unwrap();
    sees(other, ping["ID"].as_str().unwrap()).await;
    for m in [server, other] {
        assert!(
            listed(m, "?name=restart").await.is_empty(),
            "{} runs no web",
            m.name
        );
    }
    assert!(listed(web, "?name=ping").await.is_empty());
    sees(web, &restart_id).await;

    // A blocking list returns when a new event arrives, with an index from its ID.
    let r = web.get("/v1/event/list").await;
    let index: u64 = r.header("x-consul-index").unwrap().parse().unwrap();
    let waiter = {
        let http = web.http.clone();
        tokio::spawn(async move {
            let path = format!("/v1/event/list?index={index}&wait=20s");
            http.call(Method::GET, &path, None).await.unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "the list blocks while nothing arrives"
    );
    let (_, body) = fire(server, "late", "").await;
    let late: Value = serde_json::from_str(&body).unwrap();
    let r = waiter.await.unwrap();
    let list: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(list.as_array().unwrap().last().unwrap()["ID"], late["ID"]);
    assert_ne!(r.header("x-consul-index").unwrap(), index.to_string());
    // With nothing new, a blocking list waits for `wait`.
    let index = r.header("x-consul-index").unwrap().to_owned();
    let started = std::time::Instant::now();
    let r = web
        .get(&format!("/v1/event/list?index={index}&wait=1s"))
        .await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    cluster.shutdown().await;
}

#[tokio::test]
async fn bad_events_get_consuls_answers() {
    let m = Member::start(Spec {
        name: "event-bad".into(),
        server: true,
        ..Spec::default()
    })
    .await;
    // Over serf's 512 bytes (name, payload, filters and ID together).
    let (status, body) = fire(&m, "big", &"x".repeat(600)).await;
    assert_eq!(
        (status, body.trim()),
        (
            500,
            "user event exceeds configured limit of 512 bytes before encoding"
        )
    );
    let (status, body) = fire(&m, "tagged?tag=v1", "").await;
    assert_eq!(
        (status, body.trim()),
        (500, "Cannot provide tag filter without service filter")
    );
    let (status, body) = fire(&m, "bad?node=(", "").await;
    assert_eq!(status, 500);
    assert!(body.starts_with("Invalid node filter: "), "{body}");
    let (status, body) = fire(&m, "", "").await;
    assert_eq!((status, body.trim()), (400, "Missing name"));
    assert!(listed(&m, "").await.is_empty(), "nothing was fired");
    let r = m.get("/v1/event/list").await;
    assert_eq!(r.header("x-consul-index"), Some("1"));
    // Within the limit, it goes.
    let (status, body) = fire(&m, "small", &"x".repeat(400)).await;
    assert_eq!(status, 200, "{body}");
    m.agent.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_acls_need_write_to_fire_and_read_to_list() {
    const MANAGEMENT: &str = "0b6a3c2e-7d41-4f0a-9c1e-5a2b3c4d5e6f";
    let config = json!({
        "acl": {
            "enabled": true,
            "default_policy": "deny",
            "tokens": {"initial_management": MANAGEMENT, "agent": MANAGEMENT}
        }
    })
    .to_string();
    let m = Member::start(Spec {
        name: "event-acl".into(),
        server: true,
        config: Some(config),
        ..Spec::default()
    })
    .await;
    let with = |path: &str, token: &str| {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{path}{sep}token={token}")
    };
    eventually(secs(30), "the initial management token", || async {
        let r = m.get(&with("/v1/acl/token/self", MANAGEMENT)).await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await;
    let policy =
        json!({"Name": "deploys", "Rules": "event_prefix \"deploy\" { policy = \"write\" }"});
    let r = m
        .call(
            Method::PUT,
            &with("/v1/acl/policy", MANAGEMENT),
            &policy.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = json!({"Policies": [{"Name": "deploys"}]}).to_string();
    let r = m
        .call(Method::PUT, &with("/v1/acl/token", MANAGEMENT), &body)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t: Value = serde_json::from_str(&r.body).unwrap();
    let token = t["SecretID"].as_str().unwrap().to_owned();
    let r = m
        .call(Method::PUT, &with("/v1/event/fire/deploy-web", &token), "")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = m
        .call(Method::PUT, &with("/v1/event/fire/other", &token), "")
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("Permission denied"), "{}", r.body);
    let r = m.call(Method::PUT, "/v1/event/fire/deploy-web", "").await;
    assert_eq!(r.status, 403, "anonymous: {}", r.body);
    let r = m
        .call(Method::PUT, &with("/v1/event/fire/other", MANAGEMENT), "")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(secs(10), "both events listed", || async {
        let n = m
            .json(&with("/v1/event/list", MANAGEMENT))
            .await
            .as_array()
            .unwrap()
            .len();
        if n == 2 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;
    // The token reads what it may write (write implies read); the other is hidden.
    let r = m.get(&with("/v1/event/list", &token)).await;
    let list: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["Name"], "deploy-web");
    assert_eq!(r.header("x-consul-results-filtered-by-acls"), Some("true"));
    m.agent.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_fired_in_dc1_for_dc2_reaches_a_blocking_list_on_a_client_of_dc2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = wan::tls::create_ca("consul", 30).unwrap();
    let (a, b) = federated_pair(
        dir.path(),
        &ca,
        ("ev-a0", "dc1"),
        ("ev-b0", "dc2"),
        [Value::Null, Value::Null],
    )
    .await;
    let client = Member::start(Spec {
        name: "ev-b-client".into(),
        datacenter: Some("dc2".into()),
        key: Some(KEY.into()),
        join: vec![b.gossip_addr()],
        config: Some(client_tls(dir.path(), &ca, "dc2")),
        ..Spec::default()
    })
    .await;
    leader_of(&[&b], 1).await;
    leader_of(&[&a], 1).await;
    eventually(secs(30), "the client in dc2's pool", || async {
        let n = b.member_status().await.len();
        if n == 2 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;

    let r = client.get("/v1/event/list").await;
    let index = r.header("x-consul-index").unwrap().to_owned();
    let waiter = {
        let http = client.http.clone();
        tokio::spawn(async move {
            let path = format!("/v1/event/list?name=rollout&index={index}&wait=30s");
            http.call(Method::GET, &path, None).await.unwrap()
        })
    };
    let (status, body) = fire(&a, "rollout?dc=dc2", "to dc2").await;
    assert_eq!(status, 200, "{body}");
    let fired: Value = serde_json::from_str(&body).unwrap();
    let r = waiter.await.unwrap();
    let list: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["ID"], fired["ID"]);
    assert_eq!(list[0]["Payload"], "dG8gZGMy");
    assert!(listed(&a, "").await.is_empty(), "dc1 does not get it");

    // A client agent of dc2 fires in dc1 through its server.
    let (status, body) = fire(&client, "back?dc=dc1", "").await;
    assert_eq!(status, 200, "{body}");
    let back: Value = serde_json::from_str(&body).unwrap();
    sees(&a, back["ID"].as_str().unwrap()).await;
    // Too large is refused by the datacenter that fires it, with the same words.
    let (status, body) = fire(&a, "big?dc=dc2", &"x".repeat(600)).await;
    assert_eq!(status, 500);
    assert!(
        body.contains("user event exceeds configured limit of 512 bytes"),
        "{body}"
    );
    for m in [&a, &client] {
        let (status, body) = fire(m, "x?dc=dc9", "").await;
        assert_eq!(
            (status, body.trim()),
            (500, "No path to datacenter"),
            "{}",
            m.name
        );
    }
    client.agent.stop(false).await;
    b.agent.stop(false).await;
    a.agent.stop(false).await;
}

#[test]
fn the_event_verb_and_an_event_watch_speak_as_consul_s_cli() {
    use crate::process::{dev_agent, text, wait_for_file};
    use crate::support::process::{Proc, run};

    let (_agent, http, _) = dev_agent(&[]);
    let addr = format!("-http-addr={http}");
    // A watch with a handler: each call gets the events that are new since the last.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.out");
    let handler = format!("cat >> '{}'", out.display());
    let _watch = Proc::spawn(&["watch", "-type=event", "-name=deploy", &addr, &handler]);
    wait_for_file(&out, "the first call", |t| t == "[]\n");

    let (code, printed, err) = text(&run(&["event", "-name=deploy", &addr, "v1"]));
    assert_eq!(code, 0, "{err}");
    let id = printed
        .strip_prefix("Event ID: ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("{printed}"))
        .to_owned();
    assert_eq!(id.len(), 36, "{printed}");
    let calls = wait_for_file(&out, "the call for the event", |t| t.contains(&id));
    assert!(calls.contains(r#""Payload":"djE=""#), "{calls}");
    let (code, printed, _) = text(&run(&["event", "-name=deploy", &addr, "v2"]));
    assert_eq!(code, 0);
    let second = printed
        .trim()
        .strip_prefix("Event ID: ")
        .unwrap()
        .to_owned();
    let calls = wait_for_file(&out, "the call for the second", |t| t.contains(&second));
    let last = calls.lines().last().unwrap();
    assert!(
        last.contains(&second) && !last.contains(&id),
        "only the new event: {calls}"
    );

    // Without a handler: the list as indented JSON, once.
    let (code, printed, _) = text(&run(&["watch", "-type", "event", &addr]));
    assert_eq!(code, 0);
    assert!(printed.starts_with("[\n    {\n"), "{printed}");
    assert!(
        printed.contains(&format!(r#""ID": "{second}","#)),
        "{printed}"
    );

    let big = "x".repeat(600);
    for (args, expected) in [
        (
            vec!["event", "-name=deploy", &addr, &big],
            "Error firing event: Unexpected response code: 500 (user event exceeds configured limit of 512 bytes before encoding)\n",
        ),
        (vec!["event", &addr], "Event name must be specified\n"),
        (
            vec!["event", "-name=x", "-tag=v1", &addr],
            "Cannot provide tag filter without service filter.\n",
        ),
    ] {
        let (code, printed, err) = text(&run(&args));
        assert_eq!((code, printed.as_str(), err.as_str()), (1, "", expected));
    }
    let (code, _, err) = text(&run(&["exec", "uptime"]));
    assert_eq!(code, 1);
    assert!(
        err.starts_with("proconsul does not implement exec"),
        "{err}"
    );
}

#[test]
fn py_consul_fires_and_lists_events() {
    use crate::process::{dev_agent, python_with_py_consul, text};

    let python = python_with_py_consul();
    let (_agent, http, _) = dev_agent(&[]);
    let (host, port) = http.rsplit_once(':').unwrap();
    let script = r#"
import json, sys, threading
import consul
c = consul.Consul(host=sys.argv[1], port=int(sys.argv[2]))
out = {}
fired = c.event.fire("deploy", "v1")
out["fired"] = [fired["Name"], fired["Payload"], fired["Version"], len(fired["ID"])]
index, events = c.event.list()
out["listed"] = [e["ID"] == fired["ID"] for e in events]
result = {}
def wait():
    result["answer"] = c.event.list(name="deploy", index=index, wait="20s")
t = threading.Thread(target=wait)
t.start()
second = c.event.fire("deploy", "v2", service="nothing-runs-this")
third = c.event.fire("deploy", "v3")
t.join(25)
new_index, after = result["answer"]
out["woke"] = new_index != index and after[-1]["ID"] == third["ID"]
out["filtered_out"] = all(e["ID"] != second["ID"] for e in after)
try:
    c.event.fire("big", "x" * 600)
    out["too_large"] = "accepted"
except Exception as e:
    out["too_large"] = str(e)
print(json.dumps(out))
"#;
    let output = std::process::Command::new(&python)
        .args(["-c", script, host, port])
        .output()
        .unwrap();
    let (code, out, err) = text(&output);
    assert_eq!(code, 0, "py-consul failed:\n{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["fired"], json!(["deploy", "djE=", 1, 36]));
    assert_eq!(v["listed"], json!([true]));
    assert_eq!(v["woke"], true, "{v}");
    assert_eq!(v["filtered_out"], true, "{v}");
    let too_large = v["too_large"].as_str().unwrap();
    assert!(
        too_large.contains("user event exceeds configured limit of 512 bytes"),
        "{too_large}"
    );
}
