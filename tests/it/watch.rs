//! Blocking reads held at once on a client agent, which shares identical ones in one read
//! to a server: requests that differ (token, `?filter`) each get their own answer, and
//! identical ones all wake with the new index.

use hyper::Method;
use serde_json::{Value, json};

use crate::support::cluster::{Cluster, Member};
use crate::support::{eventually, secs};

const MANAGEMENT: &str = "0c6e3f52-7a1b-4d9e-8f20-5b3c4d5e6f70";

fn index(r: &proconsul::client::Response) -> u64 {
    r.header("x-consul-index")
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The nodes of a `/v1/health/service` answer, in order.
fn nodes(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["Node"]["Node"].as_str().unwrap().to_owned())
        .collect()
}

/// The outputs of the checks of a `/v1/health/service` answer.
fn outputs(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["Checks"].as_array().unwrap().clone())
        .map(|c| c["Output"].as_str().unwrap().to_owned())
        .collect()
}

async fn put(m: &Member, path: &str, body: Value) -> Value {
    let path = format!("{path}?token={MANAGEMENT}");
    let r = m.call(Method::PUT, &path, &body.to_string()).await;
    assert_eq!(r.status, 200, "PUT {path}: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or(Value::Null)
}

async fn register(m: &Member, node: &str, output: &str) {
    put(
        m,
        "/v1/catalog/register",
        json!({
            "Node": node, "Address": "127.0.0.1",
            "Service": {"ID": "web", "Service": "web", "Port": 80},
            "Check": {"CheckID": "web-alive", "Name": "alive", "ServiceID": "web",
                      "Status": "passing", "Output": output},
        }),
    )
    .await;
}

/// A token whose one policy holds `rules`.
async fn token(m: &Member, name: &str, rules: &str) -> String {
    put(m, "/v1/acl/policy", json!({"Name": name, "Rules": rules})).await;
    let t = put(
        m,
        "/v1/acl/token",
        json!({"Description": name, "Policies": [{"Name": name}]}),
    )
    .await;
    t["SecretID"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_blocking_reads_on_a_client_agent_share_an_answer_and_different_ones_do_not() {
    let config = json!({
        "acl": {"enabled": true, "default_policy": "deny",
                "tokens": {"initial_management": MANAGEMENT, "agent": MANAGEMENT}}
    })
    .to_string();
    let cluster = Cluster::start(1, |s| s.config = Some(config.clone())).await;
    let (server, client) = (cluster.server(), &cluster.members[1]);
    eventually(secs(30), "the initial management token", || async {
        let r = server
            .get(&format!("/v1/acl/token/self?token={MANAGEMENT}"))
            .await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await;
    register(server, "n1", "0").await;
    register(server, "n2", "0").await;
    // Both may read the service; only `all` may read n2.
    let all = token(
        server,
        "all-nodes",
        "service \"web\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }",
    )
    .await;
    let one = token(
        server,
        "node-n1",
        "service \"web\" { policy = \"read\" }\nnode \"n1\" { policy = \"read\" }",
    )
    .await;

    let path = |token: &str| format!("/v1/health/service/web?token={token}");
    let first = client.get(&path(&all)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(nodes(&first.body), ["n1", "n2"]);
    let seen = index(&first);
    let limited = client.get(&path(&one)).await;
    assert_eq!(nodes(&limited.body), ["n1"]);
    assert_eq!(
        limited.header("x-consul-results-filtered-by-acls"),
        Some("true")
    );

    // Held at once on the client agent, all at the same index: three identical reads,
    // one with another token, one with a filter.
    let blocking = |token: &str, extra: &str| {
        format!("/v1/health/service/web?token={token}&index={seen}&wait=30s{extra}")
    };
    let filter = "&filter=Node.Node%20%3D%3D%20%22n1%22";
    let requests = [
        blocking(&all, ""),
        blocking(&all, ""),
        blocking(&all, ""),
        blocking(&one, ""),
        blocking(&all, filter),
    ];
    let held: Vec<_> = requests
        .iter()
        .map(|p| {
            let http = client.http.clone();
            let p = p.clone();
            tokio::spawn(async move { http.call(Method::GET, &p, None).await.unwrap() })
        })
        .collect();
    // Give them time to be held, then change n2's check.
    tokio::time::sleep(secs(1)).await;
    for h in &held {
        assert!(
            !h.is_finished(),
            "a blocking read answered before the write"
        );
    }
    register(server, "n2", "changed").await;
    let mut answers = Vec::new();
    for h in held {
        let r = tokio::time::timeout(secs(20), h)
            .await
            .expect("a held read was answered")
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        answers.push(r);
    }
    for r in &answers {
        assert!(index(r) > seen, "a new index: {} <= {seen}", index(r));
        assert_eq!(r.header("x-consul-knownleader"), Some("true"));
        assert!(r.header("x-consul-lastcontact").is_some());
    }
    for r in &answers[..3] {
        assert_eq!(nodes(&r.body), ["n1", "n2"]);
        assert_eq!(outputs(&r.body), ["0", "changed"]);
        assert_eq!(r.body, answers[0].body);
        assert_eq!(index(r), index(&answers[0]));
    }
    // The token that may not read n2 sees n1 alone, and is told something was left out.
    assert_eq!(nodes(&answers[3].body), ["n1"]);
    assert_eq!(outputs(&answers[3].body), ["0"]);
    assert_eq!(
        answers[3].header("x-consul-results-filtered-by-acls"),
        Some("true")
    );
    assert!(
        answers[0]
            .header("x-consul-results-filtered-by-acls")
            .is_none()
    );
    // The filter applies to its own request only.
    assert_eq!(nodes(&answers[4].body), ["n1"]);

    // A blocking read with a short wait among long ones answers at its own deadline,
    // with the index unchanged.
    let now = index(&answers[0]);
    let long: Vec<_> = (0..2)
        .map(|_| {
            let http = client.http.clone();
            let p = format!("/v1/health/service/web?token={all}&index={now}&wait=30s");
            tokio::spawn(async move { http.call(Method::GET, &p, None).await.unwrap() })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let short = client
        .get(&format!(
            "/v1/health/service/web?token={all}&index={now}&wait=1s"
        ))
        .await;
    assert_eq!(short.status, 200, "{}", short.body);
    assert_eq!(index(&short), now);
    // It answered at its own deadline, not at the others'.
    for h in &long {
        assert!(!h.is_finished(), "the long waits are still held");
    }
    register(server, "n1", "changed too").await;
    for h in long {
        let r = tokio::time::timeout(secs(20), h).await.unwrap().unwrap();
        assert!(index(&r) > now);
        assert_eq!(outputs(&r.body), ["changed too", "changed"]);
    }
    cluster.shutdown().await;
}
