//! ACLs on a server and a client agent with `default_policy = "deny"`: bootstrap once;
//! policies, roles and tokens through `/v1/acl/*`; then, endpoint by endpoint, a token
//! with exactly the rule it needs, one without it, none and an unknown one; filtered lists
//! and their header; DNS under the anonymous token; and a revoked token refused at once.

use hyper::Method;
use serde_json::{Value, json};

use crate::support::cluster::{Cluster, Member};
use crate::support::{eventually, secs};

const MANAGEMENT: &str = "5f3c7a0e-2b1d-4c8e-9f6a-1d2e3f4a5b6c";

fn config() -> String {
    json!({
        "acl": {
            "enabled": true,
            "default_policy": "deny",
            "tokens": {"initial_management": MANAGEMENT, "agent": MANAGEMENT}
        }
    })
    .to_string()
}

/// `path` with `token` added to its query (none: anonymous).
fn with(path: &str, token: Option<&str>) -> String {
    match token {
        None => path.to_owned(),
        Some(t) if path.contains('?') => format!("{path}&token={t}"),
        Some(t) => format!("{path}?token={t}"),
    }
}

async fn call(
    m: &Member,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let r = m.call(method, &with(path, token), body).await;
    (r.status, r.body)
}

async fn create(m: &Member, path: &str, body: Value) -> Value {
    let (status, text) = call(m, Method::PUT, path, Some(MANAGEMENT), &body.to_string()).await;
    assert_eq!(status, 200, "PUT {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Waits until `m`'s datacenter has a leader that made the initial management token.
async fn management_ready(m: &Member) {
    eventually(secs(30), "the initial management token", || async {
        let (status, body) = call(m, Method::GET, "/v1/acl/token/self", Some(MANAGEMENT), "").await;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_decided_by_its_token_on_servers_and_client_agents() {
    let cluster = Cluster::start(1, |s| s.config = Some(config())).await;
    let server = cluster.server();
    let client = &cluster.members[1];

    // The leader makes the management token it was given.
    management_ready(server).await;

    // Bootstrap once; the second is refused with the index of the first.
    let (status, body) = call(server, Method::PUT, "/v1/acl/bootstrap", None, "").await;
    assert_eq!(status, 200, "{body}");
    let root: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(root["Description"], "Bootstrap Token (Global Management)");
    assert_eq!(root["ID"], root["SecretID"]);
    assert_eq!(root["Policies"][0]["Name"], "global-management");
    let (status, body) = call(client, Method::PUT, "/v1/acl/bootstrap", None, "").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.starts_with("Permission denied: ACL bootstrap no longer allowed (reset index: "),
        "{body}"
    );
    // The reset rule: the index written to the data dir of the agent asked allows one more.
    let reset: String = body.chars().filter(char::is_ascii_digit).collect();
    let reset_file = server.dir.path().join("data").join("acl-bootstrap-reset");
    std::fs::write(&reset_file, format!("{reset}\n")).unwrap();
    let (status, body) = call(server, Method::PUT, "/v1/acl/bootstrap", None, "").await;
    assert_eq!(status, 200, "a reset bootstrap: {body}");
    assert!(!reset_file.exists(), "the reset index is used up");
    let (status, body) = call(server, Method::PUT, "/v1/acl/bootstrap", None, "").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        !body.contains(&format!("reset index: {reset})")),
        "a new index: {body}"
    );

    // A policy, a role holding it and a token holding the role.
    let rules = r#"
key_prefix "app/" { policy = "write" }
service "web" { policy = "read" }
node_prefix "" { policy = "read" }
"#;
    let policy = create(
        server,
        "/v1/acl/policy",
        json!({"Name": "app", "Rules": rules}),
    )
    .await;
    assert_eq!(policy["Rules"], rules);
    let (status, body) = call(
        server,
        Method::PUT,
        "/v1/acl/policy",
        Some(MANAGEMENT),
        &json!({"Name": "broken", "Rules": "key \"a\" {\n  policy = \"all\"\n}"}).to_string(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body.contains("At 2:"),
        "a rules error names its line: {body}"
    );
    let role = create(
        client,
        "/v1/acl/role",
        json!({"Name": "app-role", "Policies": [{"Name": "app"}]}),
    )
    .await;
    assert_eq!(role["Policies"][0]["ID"], policy["ID"]);
    let token = create(
        client,
        "/v1/acl/token",
        json!({"Description": "app", "Roles": [{"ID": role["ID"]}]}),
    )
    .await;
    let app_secret = token["SecretID"].as_str().unwrap().to_owned();
    let app = Some(app_secret.as_str());
    let unknown = Some("0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b");

    // Something to read: a key outside the token's prefix and the `web` service.
    for m in [server, client] {
        let (status, body) = call(m, Method::PUT, "/v1/kv/secret/db", Some(MANAGEMENT), "pw").await;
        assert_eq!(status, 200, "{body}");
    }
    let web = json!({"Name": "web", "Port": 80}).to_string();
    let (status, body) = call(
        client,
        Method::PUT,
        "/v1/agent/service/register",
        Some(MANAGEMENT),
        &web,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eventually(secs(30), "web in the catalog", || async {
        let (_, body) = call(
            server,
            Method::GET,
            "/v1/health/service/web",
            Some(MANAGEMENT),
            "",
        )
        .await;
        let list: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if list.as_array().is_some_and(|l| !l.is_empty()) {
            Ok(())
        } else {
            Err(body)
        }
    })
    .await;

    // Endpoint by endpoint: (method, path, body, token, status), on both agents.
    let cases: Vec<(Method, &str, &str, Option<&str>, u16)> = vec![
        (Method::PUT, "/v1/kv/app/x", "1", app, 200),
        (Method::PUT, "/v1/kv/secret/x", "1", app, 403),
        (Method::PUT, "/v1/kv/app/x", "1", None, 403),
        (Method::PUT, "/v1/kv/app/x", "1", unknown, 403),
        (Method::GET, "/v1/kv/app/x", "", app, 200),
        (Method::GET, "/v1/kv/secret/db", "", app, 403),
        (Method::DELETE, "/v1/kv/app/?recurse", "", app, 200),
        (Method::DELETE, "/v1/kv/?recurse", "", app, 403),
        (Method::GET, "/v1/health/service/web", "", app, 200),
        (Method::GET, "/v1/health/service/db", "", app, 403),
        (Method::GET, "/v1/catalog/service/web", "", None, 403),
        (Method::PUT, "/v1/agent/service/register", &web, app, 403),
        (Method::GET, "/v1/agent/self", "", app, 403),
        (Method::GET, "/v1/agent/self", "", Some(MANAGEMENT), 200),
        (Method::PUT, "/v1/agent/reload", "", app, 403),
        (Method::GET, "/v1/operator/raft/configuration", "", app, 403),
        (
            Method::GET,
            "/v1/operator/raft/configuration",
            "",
            Some(MANAGEMENT),
            200,
        ),
        (Method::GET, "/v1/operator/keyring", "", app, 403),
        (Method::GET, "/v1/acl/tokens", "", app, 403),
        (Method::GET, "/v1/acl/tokens", "", Some(MANAGEMENT), 200),
        (Method::GET, "/v1/acl/token/self", "", app, 200),
        (Method::GET, "/v1/acl/token/self", "", unknown, 403),
        (Method::GET, "/v1/snapshot", "", app, 403),
        (Method::GET, "/v1/status/leader", "", None, 200),
        (Method::PUT, "/v1/session/create", "{}", app, 403),
    ];
    for m in [server, client] {
        for (method, path, body, token, want) in &cases {
            let (status, text) = call(m, method.clone(), path, *token, body).await;
            assert_eq!(
                status, *want,
                "{} {method} {path} with {token:?}: {text}",
                m.name
            );
            if status == 403 && token.is_some() && *token != unknown {
                assert!(
                    text.starts_with("Permission denied: token with AccessorID '"),
                    "{text}"
                );
            }
            if *token == unknown && *path != "/v1/status/leader" {
                assert_eq!(text, "ACL not found", "{method} {path}");
            }
        }
    }

    // A transaction's reads are not refused: what the token may not read is left out
    // of the results, in a transaction that writes and in one that only reads.
    for m in [server, client] {
        let ops = json!([
            {"KV": {"Verb": "set", "Key": "app/t", "Value": "MQ=="}},
            {"KV": {"Verb": "get", "Key": "secret/db"}},
            {"KV": {"Verb": "get-tree", "Key": ""}},
            {"KV": {"Verb": "delete", "Key": "app/t"}},
        ]);
        let (status, text) = call(m, Method::PUT, "/v1/txn", app, &ops.to_string()).await;
        assert_eq!(status, 200, "{}: {text}", m.name);
        assert!(
            text.contains("app/t") && !text.contains("secret/db"),
            "{text}"
        );
        let ops = json!([{"KV": {"Verb": "get", "Key": "secret/db"}}]);
        let (status, text) = call(m, Method::PUT, "/v1/txn", app, &ops.to_string()).await;
        assert_eq!(status, 200, "{}: {text}", m.name);
        assert!(!text.contains("secret/db"), "{text}");
        let ops = json!([{"KV": {"Verb": "check-index", "Key": "secret/db", "Index": 1}}]);
        let (status, text) = call(m, Method::PUT, "/v1/txn", app, &ops.to_string()).await;
        assert_eq!(status, 409, "{}: {text}", m.name);
    }

    // Lists are filtered, and say so.
    for m in [server, client] {
        let (status, _) = call(m, Method::PUT, "/v1/kv/app/y", Some(MANAGEMENT), "2").await;
        assert_eq!(status, 200);
        let r = m.get(&with("/v1/kv/?recurse", app)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let keys: Vec<String> = serde_json::from_str::<Value>(&r.body)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["Key"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(keys, ["app/y"], "secret/db is left out");
        assert_eq!(r.header("x-consul-results-filtered-by-acls"), Some("true"));
        let r = m.get("/v1/catalog/nodes").await;
        assert_eq!(r.body, "[]", "anonymous sees no node under default deny");
        assert_eq!(r.header("x-consul-results-filtered-by-acls"), Some("true"));
        let r = m.get(&with("/v1/agent/services", app)).await;
        let want = if m.name == client.name {
            "{\"web\":"
        } else {
            "{}"
        };
        assert!(r.body.starts_with(want), "{}: {}", m.name, r.body);
        let r = m.get("/v1/agent/members").await;
        assert_eq!(r.body, "[]");
    }

    // DNS answers as the anonymous token: nothing until it may read web and the nodes.
    let dns_name = "web.service.consul";
    let empty = server.dig(dns_name, hickory_proto::rr::RecordType::A).await;
    assert!(empty.answers.is_empty(), "{empty:?}");
    let dns = create(server, "/v1/acl/policy", json!({"Name": "dns", "Rules": "service_prefix \"\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }"})).await;
    create(
        server,
        "/v1/acl/token/00000000-0000-0000-0000-000000000002",
        json!({"Description": "Anonymous Token", "Policies": [{"ID": dns["ID"]}]}),
    )
    .await;
    for m in [server, client] {
        eventually(secs(30), "DNS under the anonymous token", || async {
            let found = m.dig(dns_name, hickory_proto::rr::RecordType::A).await;
            if found.answers.is_empty() {
                Err(format!("{found:?}"))
            } else {
                Ok(())
            }
        })
        .await;
    }

    // The agent's default token, set while it runs, is what anonymous requests act as
    // there, at once; other agents are not changed. Setting it needs `agent:write` on
    // the node.
    let set_default = |token: &str| json!({"Token": token}).to_string();
    let (status, body) = call(
        client,
        Method::PUT,
        "/v1/agent/token/default",
        app,
        &set_default(&app_secret),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("lacks permission 'agent:write' on \"client-1\""),
        "{body}"
    );
    let (status, body) = call(
        client,
        Method::PUT,
        "/v1/agent/token/bogus",
        Some(MANAGEMENT),
        &set_default(""),
    )
    .await;
    assert_eq!((status, body.as_str()), (404, "Token \"bogus\" is unknown"));
    let (status, body) = call(
        client,
        Method::PUT,
        "/v1/agent/token/acl_token",
        Some(MANAGEMENT),
        &set_default(&app_secret),
    )
    .await;
    assert_eq!(status, 200, "the old name of default: {body}");
    let (status, body) = call(client, Method::GET, "/v1/kv/app/y", None, "").await;
    assert_eq!(
        status, 200,
        "anonymous acts as the new default token: {body}"
    );
    assert!(body.contains("\"Key\":\"app/y\""), "{body}");
    let (status, _) = call(server, Method::GET, "/v1/kv/app/y", None, "").await;
    assert_eq!(status, 403, "the server's default token is unchanged");
    let (status, body) = call(
        client,
        Method::PUT,
        "/v1/agent/token/default",
        Some(MANAGEMENT),
        &set_default(""),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(client, Method::GET, "/v1/kv/app/y", None, "").await;
    assert_eq!(status, 403, "an empty token unsets the default");

    // A revoked token stops working at once for what servers decide.
    let (status, body) = call(
        server,
        Method::DELETE,
        &format!("/v1/acl/token/{}", token["AccessorID"].as_str().unwrap()),
        Some(MANAGEMENT),
        "",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "true"));
    for m in [server, client] {
        let (status, body) = call(m, Method::GET, "/v1/kv/app/y", app, "").await;
        assert_eq!(
            (status, body.as_str()),
            (403, "ACL not found"),
            "{}",
            m.name
        );
    }
    let (status, body) = call(
        server,
        Method::DELETE,
        "/v1/acl/token/00000000-0000-0000-0000-000000000002",
        Some(MANAGEMENT),
        "",
    )
    .await;
    assert_eq!(status, 400, "the anonymous token stays: {body}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn acl_endpoints_say_acls_are_off_when_they_are() {
    let agent = crate::support::TestAgent::dev().await;
    for path in ["/v1/acl/tokens", "/v1/acl/policies", "/v1/acl/token/self"] {
        let r = agent.get(path).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (401, "ACL support disabled"),
            "{path}"
        );
    }
    let r = agent.put("/v1/acl/bootstrap", "").await;
    assert_eq!((r.status, r.body.as_str()), (401, "ACL support disabled"));
    let r = agent
        .put("/v1/agent/token/default", r#"{"Token":"x"}"#)
        .await;
    assert_eq!((r.status, r.body.as_str()), (401, "ACL support disabled"));
    agent.shutdown().await;
}

/// A primary datacenter `dc1` (ACLs on, deny, the management token) and a secondary
/// `dc2` WAN-joined to it with `dc2_acl` as its `acl` block, both led, the management
/// token working in the primary.
async fn primary_and_secondary(dir: &std::path::Path, dc2_acl: Value) -> (Member, Member) {
    let ca = wan::tls::create_ca("consul", 30).unwrap();
    primary_and_secondary_of(dir, &ca, dc2_acl).await
}

/// [`primary_and_secondary`] with certificates from `ca`.
async fn primary_and_secondary_of(
    dir: &std::path::Path,
    ca: &wan::tls::Pem,
    dc2_acl: Value,
) -> (Member, Member) {
    use crate::support::cluster::Spec;
    use crate::wan::{server, tls_config};

    let config = |name: &str, dc: &str, acl: Value| {
        let mut c: Value = serde_json::from_str(&tls_config(dir, ca, name, dc)).unwrap();
        c["primary_datacenter"] = json!("dc1");
        c["acl"] = acl;
        c.to_string()
    };
    let a = Member::start(server(
        "a0",
        "dc1",
        1,
        vec![],
        config(
            "a0",
            "dc1",
            json!({"enabled": true, "default_policy": "deny",
                   "tokens": {"initial_management": MANAGEMENT}}),
        ),
    ))
    .await;
    let b = Member::start(Spec {
        join_wan: vec![a.wan_addr()],
        ..server("b0", "dc2", 1, vec![], config("b0", "dc2", dc2_acl))
    })
    .await;
    for m in [&a, &b] {
        // `/v1/status/leader` needs no token.
        eventually(secs(30), "a leader", || async {
            let r = m.get("/v1/status/leader").await;
            if r.status == 200 && r.body != "\"\"" {
                Ok(())
            } else {
                Err(r.body)
            }
        })
        .await;
    }
    management_ready(&a).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_copies_the_primarys_acls_and_keeps_them_when_the_primary_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = primary_and_secondary(
        dir.path(),
        // A token asked of the primary before the first copy is kept for `token_ttl`;
        // once the tokens are copied, the copy decides (a revocation is not held up by
        // what the primary said before).
        json!({"enabled": true, "default_policy": "deny", "token_ttl": "10m",
               "enable_token_replication": true,
               "tokens": {"replication": MANAGEMENT}}),
    )
    .await;

    // Made in the primary; one made through the secondary lands in the primary too.
    create(
        &a,
        "/v1/acl/policy",
        json!({"Name": "app", "Rules": "key_prefix \"app/\" { policy = \"write\" }"}),
    )
    .await;
    let token = create(&a, "/v1/acl/token", json!({"Policies": [{"Name": "app"}]})).await;
    let doomed = create(&a, "/v1/acl/token", json!({"Policies": [{"Name": "app"}]})).await;
    let kept = token["SecretID"].as_str().unwrap().to_owned();
    let revoked = doomed["SecretID"].as_str().unwrap().to_owned();
    for secret in [&kept, &revoked] {
        eventually(secs(30), "the token to work in dc2", || async {
            let (status, body) =
                call(&b, Method::PUT, "/v1/kv/app/x", Some(secret.as_str()), "1").await;
            if status == 200 {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        })
        .await;
    }
    let via_dc2 = create(
        &b,
        "/v1/acl/policy",
        json!({"Name": "made-in-dc2", "Rules": "operator = \"read\""}),
    )
    .await;
    let (status, body) = call(
        &a,
        Method::GET,
        "/v1/acl/policy/name/made-in-dc2",
        Some(MANAGEMENT),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["ID"],
        via_dc2["ID"]
    );

    // A revocation in the primary reaches the secondary.
    let accessor = doomed["AccessorID"].as_str().unwrap();
    let (status, _) = call(
        &a,
        Method::DELETE,
        &format!("/v1/acl/token/{accessor}"),
        Some(MANAGEMENT),
        "",
    )
    .await;
    assert_eq!(status, 200);
    eventually(secs(30), "the revocation to reach dc2", || async {
        let (status, body) =
            call(&b, Method::PUT, "/v1/kv/app/x", Some(revoked.as_str()), "1").await;
        if status == 403 {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    let report: Value = serde_json::from_str(
        &call(&b, Method::GET, "/v1/acl/replication", Some(MANAGEMENT), "")
            .await
            .1,
    )
    .unwrap();
    assert_eq!(report["Enabled"], true);
    assert_eq!(report["Running"], true);
    assert_eq!(report["SourceDatacenter"], "dc1");
    assert_eq!(report["ReplicationType"], "tokens");
    assert!(
        report["ReplicatedTokenIndex"].as_u64().unwrap() > 0,
        "{report}"
    );
    let primary: Value = serde_json::from_str(
        &call(&a, Method::GET, "/v1/acl/replication", Some(MANAGEMENT), "")
            .await
            .1,
    )
    .unwrap();
    assert_eq!(primary["Enabled"], false);

    // The primary goes away: what was copied keeps working, what was revoked stays so.
    a.agent.stop(false).await;
    let (status, body) = call(&b, Method::PUT, "/v1/kv/app/y", Some(kept.as_str()), "2").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(&b, Method::PUT, "/v1/kv/app/y", None, "2").await;
    assert_eq!(status, 403, "anonymous writes stay refused");
    let (status, body) = call(&b, Method::PUT, "/v1/kv/app/y", Some(revoked.as_str()), "2").await;
    assert_eq!((status, body.as_str()), (403, "ACL not found"));
    b.agent.stop(false).await;
}

/// Without token replication a secondary asks the primary about global tokens, keeps
/// the answer for `token_ttl`, and under `down_policy = "extend-cache"` keeps using it
/// while the primary cannot be asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_without_token_replication_asks_the_primary() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = primary_and_secondary(
        dir.path(),
        json!({"enabled": true, "default_policy": "deny", "token_ttl": "1s",
               "tokens": {"replication": MANAGEMENT}}),
    )
    .await;
    create(
        &a,
        "/v1/acl/policy",
        json!({"Name": "app", "Rules": "key_prefix \"app/\" { policy = \"write\" }"}),
    )
    .await;
    let kept = create(&a, "/v1/acl/token", json!({"Policies": [{"Name": "app"}]})).await;
    let doomed = create(&a, "/v1/acl/token", json!({"Policies": [{"Name": "app"}]})).await;
    let kept_secret = kept["SecretID"].as_str().unwrap().to_owned();
    let doomed_secret = doomed["SecretID"].as_str().unwrap().to_owned();
    for secret in [&kept_secret, &doomed_secret] {
        let (status, body) =
            call(&b, Method::PUT, "/v1/kv/app/x", Some(secret.as_str()), "1").await;
        assert_eq!(status, 200, "resolved at the primary: {body}");
        let (status, body) = call(
            &b,
            Method::PUT,
            "/v1/kv/other/x",
            Some(secret.as_str()),
            "1",
        )
        .await;
        assert_eq!(status, 403, "with the primary's rules: {body}");
    }
    let (status, body) = call(
        &b,
        Method::PUT,
        "/v1/kv/app/x",
        Some("9d3c7a0e-2b1d-4c8e-9f6a-1d2e3f4a5b6c"),
        "1",
    )
    .await;
    assert_eq!((status, body.as_str()), (403, "ACL not found"));

    // Revoked in the primary: refused in the secondary once its answer is older than
    // token_ttl.
    let accessor = doomed["AccessorID"].as_str().unwrap();
    let (status, _) = call(
        &a,
        Method::DELETE,
        &format!("/v1/acl/token/{accessor}"),
        Some(MANAGEMENT),
        "",
    )
    .await;
    assert_eq!(status, 200);
    eventually(secs(10), "the revocation to reach dc2", || async {
        let (status, body) = call(
            &b,
            Method::PUT,
            "/v1/kv/app/x",
            Some(doomed_secret.as_str()),
            "1",
        )
        .await;
        if (status, body.as_str()) == (403, "ACL not found") {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;

    // The primary goes away: the known token keeps its rights past token_ttl
    // (extend-cache), a token never seen is refused.
    a.agent.stop(false).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (status, body) = call(
        &b,
        Method::PUT,
        "/v1/kv/app/y",
        Some(kept_secret.as_str()),
        "2",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(
        &b,
        Method::PUT,
        "/v1/kv/other/y",
        Some(kept_secret.as_str()),
        "2",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &b,
        Method::PUT,
        "/v1/kv/app/y",
        Some("7d3c7a0e-2b1d-4c8e-9f6a-1d2e3f4a5b6c"),
        "2",
    )
    .await;
    assert_eq!(status, 403);
    b.agent.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_default_allow_only_rules_take_away_and_acls_stay_closed() {
    let config = json!({
        "acl": {"enabled": true, "default_policy": "allow",
                "tokens": {"initial_management": MANAGEMENT, "agent": MANAGEMENT}}
    })
    .to_string();
    let cluster = Cluster::start(1, |s| s.config = Some(config.clone())).await;
    let (server, client) = (cluster.server(), &cluster.members[1]);
    management_ready(server).await;
    create(
        server,
        "/v1/acl/policy",
        json!({"Name": "no-secrets", "Rules": "key_prefix \"secret/\" { policy = \"deny\" }\noperator = \"read\""}),
    )
    .await;
    let token = create(
        server,
        "/v1/acl/token",
        json!({"Policies": [{"Name": "no-secrets"}]}),
    )
    .await;
    let limited = token["SecretID"].as_str().map(str::to_owned);
    let limited = limited.as_deref();
    let cases: Vec<(Method, &str, &str, Option<&str>, u16)> = vec![
        (Method::PUT, "/v1/kv/open/x", "1", None, 200),
        (Method::PUT, "/v1/kv/secret/x", "1", None, 200),
        (Method::PUT, "/v1/kv/secret/x", "1", limited, 403),
        (Method::GET, "/v1/kv/open/x", "", limited, 200),
        (Method::GET, "/v1/kv/secret/x", "", limited, 403),
        (Method::GET, "/v1/agent/self", "", None, 200),
        (
            Method::GET,
            "/v1/operator/raft/configuration",
            "",
            limited,
            200,
        ),
        (
            Method::DELETE,
            "/v1/operator/raft/peer?id=nobody",
            "",
            limited,
            403,
        ),
        (Method::GET, "/v1/acl/tokens", "", None, 403),
        (Method::GET, "/v1/acl/policies", "", limited, 403),
        (Method::PUT, "/v1/acl/policy", r#"{"Name":"x"}"#, None, 403),
    ];
    for m in [server, client] {
        for (method, path, body, token, want) in &cases {
            let (status, text) = call(m, method.clone(), path, *token, body).await;
            assert_eq!(
                status, *want,
                "{} {method} {path} with {token:?}: {text}",
                m.name
            );
        }
        let r = m.get(&with("/v1/kv/?recurse", limited)).await;
        let keys: Vec<String> = serde_json::from_str::<Value>(&r.body)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["Key"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(keys, ["open/x"], "the denied prefix is left out");
        assert_eq!(r.header("x-consul-results-filtered-by-acls"), Some("true"));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_set_through_the_api_outlive_a_restart_only_with_persistence() {
    use crate::support::cluster::Spec;

    for persistence in [true, false] {
        let spec = || Spec {
            name: "s1".into(),
            server: true,
            config: Some(
                json!({"acl": {
                    "enabled": true,
                    "default_policy": "deny",
                    "enable_token_persistence": persistence,
                    "tokens": {"initial_management": MANAGEMENT}
                }})
                .to_string(),
            ),
            ..Spec::default()
        };
        let m = Member::start(spec()).await;
        management_ready(&m).await;
        create(
            &m,
            "/v1/acl/policy",
            json!({"Name": "read-keys", "Rules": "key_prefix \"\" { policy = \"read\" }"}),
        )
        .await;
        let token = create(
            &m,
            "/v1/acl/token",
            json!({"Policies": [{"Name": "read-keys"}]}),
        )
        .await;
        let secret = token["SecretID"].as_str().unwrap();
        // Requests without a token act as the default token once it is set.
        let (status, _) = call(&m, Method::GET, "/v1/kv/x", None, "").await;
        assert_eq!(status, 403);
        for kind in ["default", "agent"] {
            let (status, body) = call(
                &m,
                Method::PUT,
                &format!("/v1/agent/token/{kind}"),
                Some(MANAGEMENT),
                &json!({"Token": secret}).to_string(),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
        let (status, body) = call(&m, Method::GET, "/v1/kv/x", None, "").await;
        assert_eq!(status, 404, "read as the default token: {body}");

        let file = m.dir.path().join("data").join("acl-tokens.json");
        assert_eq!(file.exists(), persistence);
        let Member { agent, dir, .. } = m;
        agent.stop(false).await;
        let m = Member::start_in(spec(), dir).await.unwrap();
        management_ready(&m).await;
        let (status, body) = call(&m, Method::GET, "/v1/kv/x", None, "").await;
        let want = if persistence { 404 } else { 403 };
        assert_eq!(
            status, want,
            "persistence {persistence}: the default token after a restart: {body}"
        );
        if persistence {
            let kept: Value =
                serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            assert_eq!(kept, json!({"default": secret, "agent": secret}));
        }
        m.agent.stop(false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_live_as_long_as_they_were_given_and_are_then_deleted() {
    use crate::support::cluster::Spec;

    let m = Member::start(Spec {
        name: "s1".into(),
        server: true,
        config: Some(
            json!({"acl": {
                "enabled": true,
                "default_policy": "deny",
                "token_min_expiration_ttl": "1s",
                "token_max_expiration_ttl": "1h",
                "tokens": {"initial_management": MANAGEMENT}
            }})
            .to_string(),
        ),
        ..Spec::default()
    })
    .await;
    management_ready(&m).await;
    create(
        &m,
        "/v1/acl/policy",
        json!({"Name": "ops", "Rules": "operator = \"read\""}),
    )
    .await;

    // Consul's refusals, and nothing is created by them.
    let in_an_hour = catalog::clock::rfc3339_nanos(lan::acl::now_ns() + 3_600_000_000_000);
    let refused = [
        (
            json!({"ExpirationTTL": "2h"}),
            "ExpirationTime cannot be more than 1h0m0s in the future (was 2h0m0s)",
        ),
        (
            json!({"ExpirationTTL": "10ms"}),
            "ExpirationTime cannot be less than 1s in the future (was 10ms)",
        ),
        (
            json!({"ExpirationTTL": "-1m"}),
            "Token Expiration TTL '-1m0s' should be > 0",
        ),
        (
            json!({"ExpirationTTL": "10m", "ExpirationTime": in_an_hour}),
            "Token Expiration TTL and Expiration Time cannot both be set",
        ),
        (
            json!({"ExpirationTime": "2001-01-01T00:00:00Z"}),
            "ExpirationTime cannot be before CreateTime",
        ),
        (
            json!({"ExpirationTime": "tomorrow"}),
            "is not an RFC 3339 time",
        ),
    ];
    for (body, text) in refused {
        let mut body = body;
        body["Policies"] = json!([{"Name": "ops"}]);
        let (status, answer) = call(
            &m,
            Method::PUT,
            "/v1/acl/token",
            Some(MANAGEMENT),
            &body.to_string(),
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains(text), "{body}: {answer}");
    }

    // An ExpirationTime is kept as given; it cannot be changed by an update.
    let timed = create(
        &m,
        "/v1/acl/token",
        json!({"Policies": [{"Name": "ops"}], "ExpirationTime": in_an_hour}),
    )
    .await;
    assert_eq!(timed["ExpirationTime"], in_an_hour.as_str());
    let accessor = timed["AccessorID"].as_str().unwrap();
    for change in [
        json!({"ExpirationTTL": "5m"}),
        json!({"ExpirationTime": catalog::clock::rfc3339_nanos(lan::acl::now_ns() + 600_000_000_000)}),
    ] {
        let (status, answer) = call(
            &m,
            Method::PUT,
            &format!("/v1/acl/token/{accessor}"),
            Some(MANAGEMENT),
            &change.to_string(),
        )
        .await;
        assert_eq!(status, 400, "{change}: {answer}");
        assert_eq!(
            answer,
            format!("Cannot change expiration time of {accessor}")
        );
    }
    let same = json!({"Description": "renamed", "Policies": [{"Name": "ops"}], "ExpirationTime": in_an_hour});
    let (status, answer) = call(
        &m,
        Method::PUT,
        &format!("/v1/acl/token/{accessor}"),
        Some(MANAGEMENT),
        &same.to_string(),
    )
    .await;
    assert_eq!(status, 200, "the same time is no change: {answer}");

    // A short-lived token works, then is not found, then the leader deletes it.
    let short = create(
        &m,
        "/v1/acl/token",
        json!({"Policies": [{"Name": "ops"}], "ExpirationTTL": "2s"}),
    )
    .await;
    let (secret, short_accessor) = (
        short["SecretID"].as_str().unwrap(),
        short["AccessorID"].as_str().unwrap(),
    );
    let (status, body) = call(&m, Method::GET, "/v1/acl/token/self", Some(secret), "").await;
    assert!(
        status == 200 || body == "ACL not found",
        "works until it expires: {status} {body}"
    );
    let r = m.get(&with("/v1/acl/tokens", Some(MANAGEMENT))).await;
    let created_at: u64 = r.header("x-consul-index").unwrap().parse().unwrap();
    eventually(secs(30), "the token expires", || async {
        let (status, body) = call(
            &m,
            Method::GET,
            "/v1/operator/raft/configuration",
            Some(secret),
            "",
        )
        .await;
        if (status, body.as_str()) == (403, "ACL not found") {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    let (status, _) = call(
        &m,
        Method::GET,
        &format!("/v1/acl/token/{short_accessor}"),
        Some(MANAGEMENT),
        "",
    )
    .await;
    assert_eq!(status, 404, "an expired token is not found");
    let r = m.get(&with("/v1/acl/tokens", Some(MANAGEMENT))).await;
    assert!(!r.body.contains(short_accessor), "nor listed");
    // Only the deletion writes to the token table now.
    eventually(secs(30), "the leader deletes the expired token", || async {
        let r = m.get(&with("/v1/acl/tokens", Some(MANAGEMENT))).await;
        let index: u64 = r
            .header("x-consul-index")
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        if index > created_at {
            Ok(())
        } else {
            Err(format!("index {index}"))
        }
    })
    .await;
    m.agent.stop(false).await;
}

/// Executes `query` on `m` as `token`: the status, the instances' node names and the
/// filtered header.
async fn execute(m: &Member, query: &str, token: Option<&str>) -> (u16, Vec<String>, bool) {
    let r = m
        .call(
            Method::GET,
            &with(&format!("/v1/query/{query}/execute"), token),
            "",
        )
        .await;
    let filtered = r.header("x-consul-results-filtered-by-acls") == Some("true");
    if r.status != 200 {
        return (r.status, vec![r.body], filtered);
    }
    let body: Value = serde_json::from_str(&r.body).unwrap();
    let nodes = body["Nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Node"]["Node"].as_str().unwrap().to_owned())
        .collect();
    (r.status, nodes, filtered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_query_runs_for_anyone_filtered_by_its_own_token_or_the_callers() {
    let cluster = Cluster::start(1, |s| s.config = Some(config())).await;
    let server = cluster.server();
    let client = &cluster.members[1];
    management_ready(server).await;

    let register = json!({"Node": "web-1", "Address": "127.0.0.1",
                          "Service": {"Service": "web", "Port": 80}});
    let (status, body) = call(
        server,
        Method::PUT,
        "/v1/catalog/register",
        Some(MANAGEMENT),
        &register.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let reader_policy = create(
        server,
        "/v1/acl/policy",
        json!({"Name": "web-reader",
               "Rules": "service \"web\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }"}),
    )
    .await;
    let reader = create(
        server,
        "/v1/acl/token",
        json!({"Policies": [{"ID": reader_policy["ID"]}]}),
    )
    .await;
    let reader = reader["SecretID"].as_str().unwrap().to_owned();
    let queries_policy = create(
        server,
        "/v1/acl/policy",
        json!({"Name": "queries", "Rules": "query_prefix \"\" { policy = \"read\" }"}),
    )
    .await;
    let nobody = create(
        server,
        "/v1/acl/token",
        json!({"Policies": [{"ID": queries_policy["ID"]}]}),
    )
    .await;
    let nobody = nobody["SecretID"].as_str().unwrap().to_owned();
    let with_token = create(
        server,
        "/v1/query",
        json!({"Name": "web-as-reader", "Token": reader, "Service": {"Service": "web"}}),
    )
    .await;
    create(
        server,
        "/v1/query",
        json!({"Name": "web-as-caller", "Service": {"Service": "web"}}),
    )
    .await;

    for m in [server, client] {
        // Its own token reads web: a caller with no right on it (or no token at all)
        // gets the instance, and nothing was left out.
        for caller in [Some(nobody.as_str()), None] {
            let got = execute(m, "web-as-reader", caller).await;
            assert_eq!(got, (200, vec!["web-1".to_owned()], false), "{}", m.name);
        }
        // Without a token of its own, the caller's decides: denied web, it gets no
        // instance (not a refusal), and the answer says something was left out.
        for caller in [Some(nobody.as_str()), None] {
            let got = execute(m, "web-as-caller", caller).await;
            assert_eq!(got, (200, vec![], true), "{}", m.name);
        }
        let got = execute(m, "web-as-caller", Some(&reader)).await;
        assert_eq!(got, (200, vec!["web-1".to_owned()], false), "{}", m.name);
        // An unknown query is still not found.
        let got = execute(m, "no-such-query", Some(&nobody)).await;
        assert_eq!(got.0, 404, "{got:?}");
    }

    // The reads a client agent sends over the server port never carry the stored
    // token: the lookup answers the definition without it, and a forged execution
    // (another service, this query's ID) is run with the stored selection.
    let id = with_token["ID"].as_str().unwrap();
    let anonymous = || catalog::ReadOptions {
        consistency: catalog::Consistency::Default,
        min_index: 0,
        deadline: tokio::time::Instant::now() + secs(10),
        max_stale: None,
        principal: catalog::Principal::Anonymous,
    };
    let lookup = catalog::Query::QueryToRun {
        key: "web-as-reader".into(),
    };
    let found = client.agent.lan().read(&lookup, anonymous()).await.unwrap();
    let catalog::Answer::QueryToRun(Some(definition)) = found.answer else {
        panic!("{:?}", found.answer)
    };
    assert_eq!(
        (definition.id.as_str(), definition.token.as_str()),
        (id, "")
    );
    assert!(!format!("{definition:?}").contains(&reader));
    let forged = catalog::Query::RunServiceQuery {
        selection: Box::new(catalog::ServiceQuery {
            service: "consul".into(),
            ..Default::default()
        }),
        stored: Some(catalog::StoredQuery {
            datacenter: "dc1".into(),
            id: id.to_owned(),
        }),
    };
    let ran = client.agent.lan().read(&forged, anonymous()).await.unwrap();
    let catalog::Answer::ServiceHealth(instances) = ran.answer else {
        panic!("{:?}", ran.answer)
    };
    let names: Vec<&str> = instances.iter().map(|e| e.service.name.as_str()).collect();
    assert_eq!(names, ["web"]);

    // DNS runs the same path, as the anonymous token (which may read nothing).
    let found = server
        .dig(
            "web-as-reader.query.consul",
            hickory_proto::rr::RecordType::A,
        )
        .await;
    assert_eq!(found.answers.len(), 1, "{found:?}");
    let found = server
        .dig(
            "web-as-caller.query.consul",
            hickory_proto::rr::RecordType::A,
        )
        .await;
    assert!(found.answers.is_empty(), "{found:?}");

    // The stored token is shown to those who may write ACLs; the others see that
    // there is one. Explaining still needs `query:read`.
    for (token, want) in [(MANAGEMENT, reader.as_str()), (nobody.as_str(), "<hidden>")] {
        let (status, body) = call(
            server,
            Method::GET,
            &format!("/v1/query/{id}"),
            Some(token),
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let read: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(read[0]["Token"], want);
        let (status, body) = call(
            server,
            Method::GET,
            &format!("/v1/query/{id}/explain"),
            Some(token),
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let explained: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(explained["Query"]["Token"], want);
    }
    let (status, body) = call(
        server,
        Method::GET,
        &format!("/v1/query/{id}/explain"),
        Some(&reader),
        "",
    )
    .await;
    assert_eq!((status, body.as_str()), (403, "Permission denied"));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_query_fails_over_with_its_token_filtering_in_the_other_datacenter() {
    use crate::support::cluster::Spec;
    use crate::wan::{KEY, client_tls};

    let dir = tempfile::tempdir().unwrap();
    let ca = wan::tls::create_ca("consul", 30).unwrap();
    let (a, b) = primary_and_secondary_of(
        dir.path(),
        &ca,
        json!({"enabled": true, "default_policy": "deny",
               "tokens": {"replication": MANAGEMENT}}),
    )
    .await;
    // A client agent of dc1, whose reads of dc2 a server of dc1 relays.
    let mut client_config: Value =
        serde_json::from_str(&client_tls(dir.path(), &ca, "dc1")).unwrap();
    client_config["primary_datacenter"] = json!("dc1");
    client_config["acl"] = json!({"enabled": true, "default_policy": "deny",
                                  "tokens": {"agent": MANAGEMENT}});
    let client = Member::start(Spec {
        name: "a-client".into(),
        key: Some(KEY.into()),
        join: vec![a.gossip_addr()],
        config: Some(client_config.to_string()),
        ..Spec::default()
    })
    .await;
    // `web` only in dc2.
    let register = json!({"Node": "web-2", "Address": "127.0.0.2",
                          "Service": {"Service": "web", "Port": 80}});
    let (status, body) = call(
        &a,
        Method::PUT,
        "/v1/catalog/register?dc=dc2",
        Some(MANAGEMENT),
        &register.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    create(
        &a,
        "/v1/acl/policy",
        json!({"Name": "web-reader",
               "Rules": "service \"web\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }"}),
    )
    .await;
    let reader = create(
        &a,
        "/v1/acl/token",
        json!({"Policies": [{"Name": "web-reader"}]}),
    )
    .await;
    let reader = reader["SecretID"].as_str().unwrap().to_owned();
    let failover = json!({"Service": "web", "Failover": {"Datacenters": ["dc2"]}});
    create(
        &a,
        "/v1/query",
        json!({"Name": "web-far", "Token": reader, "Service": failover}),
    )
    .await;
    create(
        &a,
        "/v1/query",
        json!({"Name": "web-far-as-caller", "Service": failover}),
    )
    .await;

    // The anonymous caller may read nothing: dc2 filters with the query's token,
    // which a server of dc1 sends there (for the client agent too, whose read of dc2
    // it relays).
    for m in [&a, &client] {
        let r = m.get("/v1/query/web-far/execute").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let run: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(run["Datacenter"], "dc2", "{run}");
        assert_eq!(run["Failovers"], 1, "{run}");
        assert_eq!(run["Nodes"][0]["Node"]["Node"], "web-2", "{run}");
        // Without a token of its own, dc2 filters with the caller's.
        assert_eq!(
            execute(m, "web-far-as-caller", None).await,
            (200, vec![], true)
        );
        assert_eq!(
            execute(m, "web-far-as-caller", Some(&reader)).await,
            (200, vec!["web-2".to_owned()], false)
        );
    }
    client.agent.stop(false).await;
    a.agent.stop(false).await;
    b.agent.stop(false).await;
}
