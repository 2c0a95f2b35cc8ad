//! Every HTTP endpoint against the permission it needs, as a table: for each row, a
//! token holding exactly the rule that suffices, a token holding the same rule one level
//! short (so it lacks the permission whatever the default), and no token at all, under
//! `default_policy = "deny"` and `"allow"`. Refusals are 403 with Consul's text naming
//! the caller's AccessorID and the missing permission. Under `allow` the anonymous token
//! may do everything except what Consul keeps for rules that say so (ACL management and
//! snapshots).
//!
//! The table runs against a client agent (which asks its server what a token may do)
//! and then against the server. Rows run in order, so a row may use what an earlier one
//! made; the deleting rows come after the rows that read what they delete, and `leave`
//! is last. Endpoints whose answers are filtered (lists) or that need nothing are rows too:
//! they must never refuse.

use hyper::Method;
use serde_json::{Value, json};

use crate::support::cluster::{Cluster, Member};
use crate::support::{eventually, secs};

const MANAGEMENT: &str = "2b9f7c1e-4d3a-4f5b-8c6d-7e8f9a0b1c2d";
const ANONYMOUS: &str = "00000000-0000-0000-0000-000000000002";
/// The node name the rows use; each pass puts its agent's in its place.
const NODE: &str = "s1";

/// What an endpoint needs.
#[derive(Clone, Copy)]
enum Need {
    /// Nothing: any caller gets an answer (perhaps an error, never a refusal).
    Nothing,
    /// Its answer is filtered to what the caller may read: never a refusal.
    Filtered,
    /// Filtered, and always answered 200, whatever the caller may read (a prepared
    /// query's execution: its instances filtered, the query found whoever asks).
    Answered,
    /// `rule` suffices; without it the answer is `status` and names `missing`
    /// (`'key:write' on "app/x"`; empty for Consul's bare `Permission denied`).
    Rule {
        rule: &'static str,
        missing: &'static str,
        status: u16,
    },
}

const fn rule(rule: &'static str, missing: &'static str) -> Need {
    Need::Rule {
        rule,
        missing,
        status: 403,
    }
}

struct Row {
    method: Method,
    /// The path; `{query}`, `{session}`, `{token}`, `{policy}`, `{role}` and their
    /// `-doomed` forms are replaced with what the set-up made.
    path: &'static str,
    body: String,
    need: Need,
}

fn row(method: Method, path: &'static str, body: &str, need: Need) -> Row {
    Row {
        method,
        path,
        body: body.to_owned(),
        need,
    }
}

/// The table: every route of the HTTP API (`api/src/http/mod.rs`), in an order where
/// each row finds what it acts on.
fn table(new_key: &str, old_key: &str) -> Vec<Row> {
    use Method as M;
    use Need::{Answered, Filtered, Nothing};
    const ACL_READ: Need = rule(r#"acl = "read""#, "'acl:read'");
    const ACL_WRITE: Need = rule(r#"acl = "write""#, "'acl:write'");
    const OP_READ: Need = rule(r#"operator = "read""#, "'operator:read'");
    const OP_WRITE: Need = rule(r#"operator = "write""#, "'operator:write'");
    const AGENT_READ: Need = rule(
        r#"agent "s1" { policy = "read" }"#,
        r#"'agent:read' on "s1""#,
    );
    const AGENT_WRITE: Need = rule(
        r#"agent "s1" { policy = "write" }"#,
        r#"'agent:write' on "s1""#,
    );
    const NODE_WRITE: Need = rule(
        r#"node "s1" { policy = "write" }"#,
        r#"'node:write' on "s1""#,
    );
    const WEB_READ: Need = rule(
        r#"service "web" { policy = "read" }"#,
        r#"'service:read' on "web""#,
    );
    const WEB_WRITE: Need = rule(
        r#"service "web" { policy = "write" }"#,
        r#"'service:write' on "web""#,
    );
    const SESSION_WRITE: Need = rule(
        r#"session "s1" { policy = "write" }"#,
        r#"'session:write' on "s1""#,
    );
    let query = json!({"Name": "q2", "Service": {"Service": "web"}}).to_string();
    let query_update = json!({"Name": "q1", "Service": {"Service": "web"}}).to_string();
    vec![
        // Needing nothing.
        row(M::GET, "/", "", Nothing),
        row(M::GET, "/v1/catalog/datacenters", "", Nothing),
        row(M::GET, "/v1/internal/ui/datacenters", "", Nothing),
        row(M::GET, "/v1/coordinate/datacenters", "", Nothing),
        row(M::GET, "/v1/status/leader", "", Nothing),
        row(M::GET, "/v1/status/peers", "", Nothing),
        row(M::GET, "/v1/agent/version", "", Nothing),
        row(M::PUT, "/v1/event/fire/", "", Nothing),
        row(M::PUT, "/v1/agent/service/maintenance/", "", Nothing),
        row(M::GET, "/v1/agent/health/service/id/", "", Nothing),
        row(M::GET, "/v1/agent/health/service/name/", "", Nothing),
        // Filtered to what the caller may read.
        row(M::GET, "/v1/internal/ui/services", "", Filtered),
        row(M::GET, "/v1/internal/ui/nodes", "", Filtered),
        row(M::GET, "/v1/catalog/nodes", "", Filtered),
        row(M::GET, "/v1/catalog/services", "", Filtered),
        row(M::GET, "/v1/health/state/any", "", Filtered),
        row(M::GET, "/v1/health/checks/web", "", Filtered),
        row(M::GET, "/v1/health/node/s1", "", Filtered),
        row(M::GET, "/v1/coordinate/nodes", "", Filtered),
        row(M::GET, "/v1/event/list", "", Filtered),
        row(M::GET, "/v1/agent/members", "", Filtered),
        row(M::GET, "/v1/agent/services", "", Filtered),
        row(M::GET, "/v1/agent/checks", "", Filtered),
        row(M::GET, "/v1/query", "", Filtered),
        row(M::GET, "/v1/query/{query}/execute", "", Answered),
        row(M::GET, "/v1/session/list", "", Filtered),
        row(M::GET, "/v1/session/node/s1", "", Filtered),
        row(M::GET, "/v1/session/info/{session}", "", Filtered),
        row(M::GET, "/v1/kv/?recurse", "", Filtered),
        row(M::GET, "/v1/internal/ui/node/s1", "", Filtered),
        row(M::GET, "/v1/catalog/node/s1", "", Filtered),
        row(M::GET, "/v1/catalog/node-services/s1", "", Filtered),
        // One rule each.
        row(M::GET, "/v1/catalog/service/web", "", WEB_READ),
        row(M::GET, "/v1/health/service/web", "", WEB_READ),
        row(
            M::PUT,
            "/v1/catalog/register",
            r#"{"Node": "ext", "Address": "10.0.0.9"}"#,
            rule(
                r#"node "ext" { policy = "write" }"#,
                r#"'node:write' on "ext""#,
            ),
        ),
        row(
            M::PUT,
            "/v1/catalog/deregister",
            r#"{"Node": "ext"}"#,
            rule(
                r#"node "ext" { policy = "write" }"#,
                r#"'node:write' on "ext""#,
            ),
        ),
        row(
            M::GET,
            "/v1/coordinate/node/s1",
            "",
            rule(r#"node "s1" { policy = "read" }"#, r#"'node:read' on "s1""#),
        ),
        row(
            M::PUT,
            "/v1/event/fire/deploy",
            "",
            rule(
                r#"event "deploy" { policy = "write" }"#,
                r#"'event:write' on "deploy""#,
            ),
        ),
        row(M::GET, "/v1/agent/self", "", AGENT_READ),
        row(M::GET, "/v1/agent/metrics", "", AGENT_READ),
        row(M::GET, "/v1/agent/monitor?loglevel=bogus", "", AGENT_READ),
        row(M::GET, "/v1/agent/host", "", OP_READ),
        row(M::GET, "/v1/agent/service/web", "", WEB_READ),
        row(M::GET, "/v1/agent/health/service/id/web", "", WEB_READ),
        row(M::GET, "/v1/agent/health/service/name/web", "", WEB_READ),
        row(
            M::PUT,
            "/v1/agent/service/register",
            r#"{"ID": "web2", "Name": "web2"}"#,
            rule(
                r#"service "web2" { policy = "write" }"#,
                r#"'service:write' on "web2""#,
            ),
        ),
        row(
            M::PUT,
            "/v1/agent/service/deregister/web2",
            "",
            rule(
                r#"service "web2" { policy = "write" }"#,
                r#"'service:write' on "web2""#,
            ),
        ),
        row(
            M::PUT,
            "/v1/agent/check/register",
            r#"{"ID": "node-ttl2", "Name": "node-ttl2", "TTL": "1h"}"#,
            NODE_WRITE,
        ),
        row(
            M::PUT,
            "/v1/agent/check/deregister/node-ttl2",
            "",
            NODE_WRITE,
        ),
        row(M::PUT, "/v1/agent/check/pass/web-ttl", "", WEB_WRITE),
        row(M::PUT, "/v1/agent/check/warn/node-ttl", "", NODE_WRITE),
        row(M::PUT, "/v1/agent/check/fail/node-ttl", "", NODE_WRITE),
        row(
            M::PUT,
            "/v1/agent/check/update/web-ttl",
            r#"{"Status": "passing"}"#,
            WEB_WRITE,
        ),
        row(M::PUT, "/v1/agent/maintenance?enable=false", "", NODE_WRITE),
        row(
            M::PUT,
            "/v1/agent/service/maintenance/web?enable=false",
            "",
            WEB_WRITE,
        ),
        row(M::PUT, "/v1/agent/join/127.0.0.1:1", "", AGENT_WRITE),
        row(M::PUT, "/v1/agent/force-leave/nobody", "", OP_WRITE),
        row(M::PUT, "/v1/agent/reload", "", AGENT_WRITE),
        row(
            M::PUT,
            "/v1/agent/token/config_file_service_registration",
            r#"{"Token": ""}"#,
            AGENT_WRITE,
        ),
        row(
            M::GET,
            "/v1/operator/keyring",
            "",
            rule(r#"keyring = "read""#, "'keyring:read'"),
        ),
        row(
            M::POST,
            "/v1/operator/keyring",
            &json!({"Key": new_key}).to_string(),
            rule(r#"keyring = "write""#, "'keyring:write'"),
        ),
        row(
            M::PUT,
            "/v1/operator/keyring",
            &json!({"Key": old_key}).to_string(),
            rule(r#"keyring = "write""#, "'keyring:write'"),
        ),
        row(
            M::DELETE,
            "/v1/operator/keyring",
            &json!({"Key": new_key}).to_string(),
            rule(r#"keyring = "write""#, "'keyring:write'"),
        ),
        row(
            M::POST,
            "/v1/query",
            &query,
            rule(
                r#"query "q2" { policy = "write" }"#,
                r#"'query:write' on "q2""#,
            ),
        ),
        row(
            M::GET,
            "/v1/query/{query}",
            "",
            Need::Rule {
                rule: r#"query "q1" { policy = "read" }"#,
                missing: "",
                status: 403,
            },
        ),
        row(
            M::GET,
            "/v1/query/{query}/explain",
            "",
            Need::Rule {
                rule: r#"query "q1" { policy = "read" }"#,
                missing: "",
                status: 403,
            },
        ),
        row(
            M::PUT,
            "/v1/query/{query}",
            &query_update,
            rule(
                r#"query "q1" { policy = "write" }"#,
                r#"'query:write' on "q1""#,
            ),
        ),
        row(
            M::DELETE,
            "/v1/query/{query-doomed}",
            "",
            rule(
                r#"query "qdel" { policy = "write" }"#,
                r#"'query:write' on "qdel""#,
            ),
        ),
        row(
            M::GET,
            "/v1/kv/app/x",
            "",
            rule(
                r#"key "app/x" { policy = "read" }"#,
                r#"'key:read' on "app/x""#,
            ),
        ),
        row(
            M::PUT,
            "/v1/kv/app/x",
            "1",
            rule(
                r#"key "app/x" { policy = "write" }"#,
                r#"'key:write' on "app/x""#,
            ),
        ),
        row(
            M::DELETE,
            "/v1/kv/app/y",
            "",
            rule(
                r#"key "app/y" { policy = "write" }"#,
                r#"'key:write' on "app/y""#,
            ),
        ),
        row(
            M::PUT,
            "/v1/txn",
            r#"[{"KV": {"Verb": "set", "Key": "app/x", "Value": "MQ=="}}]"#,
            Need::Rule {
                rule: r#"key "app/x" { policy = "write" }"#,
                missing: r#"'key:write' on "app/x""#,
                status: 409,
            },
        ),
        row(M::PUT, "/v1/session/create", "{}", SESSION_WRITE),
        row(M::PUT, "/v1/session/renew/{session}", "", SESSION_WRITE),
        row(
            M::PUT,
            "/v1/session/destroy/{session-doomed}",
            "",
            SESSION_WRITE,
        ),
        row(M::GET, "/v1/operator/kv-replication", "", OP_READ),
        row(M::GET, "/v1/operator/autopilot/configuration", "", OP_READ),
        row(
            M::PUT,
            "/v1/operator/autopilot/configuration",
            r#"{"CleanupDeadServers": true}"#,
            OP_WRITE,
        ),
        row(M::GET, "/v1/operator/autopilot/health", "", OP_READ),
        row(M::GET, "/v1/operator/autopilot/state", "", OP_READ),
        row(M::GET, "/v1/operator/raft/configuration", "", OP_READ),
        row(M::DELETE, "/v1/operator/raft/peer?id=nobody", "", OP_WRITE),
        row(M::GET, "/v1/snapshot", "", ACL_WRITE),
        row(M::PUT, "/v1/snapshot", "not a snapshot", ACL_WRITE),
        row(M::GET, "/v1/acl/replication", "", ACL_READ),
        row(M::GET, "/v1/acl/tokens", "", ACL_READ),
        row(M::GET, "/v1/acl/token/{token}", "", ACL_READ),
        row(
            M::PUT,
            "/v1/acl/token",
            r#"{"Policies": [{"Name": "fixture"}]}"#,
            ACL_WRITE,
        ),
        row(
            M::PUT,
            "/v1/acl/token/{token}",
            r#"{"Description": "changed", "Policies": [{"Name": "fixture"}]}"#,
            ACL_WRITE,
        ),
        row(M::PUT, "/v1/acl/token/{token}/clone", "", ACL_WRITE),
        row(M::DELETE, "/v1/acl/token/{token-doomed}", "", ACL_WRITE),
        row(M::GET, "/v1/acl/policies", "", ACL_READ),
        row(M::GET, "/v1/acl/policy/{policy}", "", ACL_READ),
        row(M::GET, "/v1/acl/policy/name/fixture", "", ACL_READ),
        row(
            M::PUT,
            "/v1/acl/policy",
            r#"{"Name": "made", "Rules": ""}"#,
            ACL_WRITE,
        ),
        row(
            M::PUT,
            "/v1/acl/policy/{policy}",
            r#"{"Name": "fixture", "Description": "changed", "Rules": ""}"#,
            ACL_WRITE,
        ),
        row(M::DELETE, "/v1/acl/policy/{policy-doomed}", "", ACL_WRITE),
        row(M::GET, "/v1/acl/roles", "", ACL_READ),
        row(M::GET, "/v1/acl/role/{role}", "", ACL_READ),
        row(M::GET, "/v1/acl/role/name/fixture", "", ACL_READ),
        row(
            M::PUT,
            "/v1/acl/role",
            r#"{"Name": "made", "Policies": [{"Name": "fixture"}]}"#,
            ACL_WRITE,
        ),
        row(
            M::PUT,
            "/v1/acl/role/{role}",
            r#"{"Name": "fixture", "Description": "changed", "Policies": [{"Name": "fixture"}]}"#,
            ACL_WRITE,
        ),
        row(M::DELETE, "/v1/acl/role/{role-doomed}", "", ACL_WRITE),
        row(M::PUT, "/v1/agent/service/deregister/web", "", WEB_WRITE),
        row(M::PUT, "/v1/agent/leave", "", AGENT_WRITE),
    ]
}

/// The rule of `rule` one level short: write becomes read, read becomes deny.
fn short_of(rule: &str) -> String {
    if rule.contains("\"write\"") {
        rule.replace("\"write\"", "\"read\"")
    } else {
        rule.replace("\"read\"", "\"deny\"")
    }
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
    method: &Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let r = m.call(method.clone(), &with(path, token), body).await;
    (r.status, r.body)
}

async fn made(m: &Member, method: Method, path: &str, body: Value) -> Value {
    let (status, text) = call(m, &method, path, Some(MANAGEMENT), &body.to_string()).await;
    assert_eq!(status, 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A token holding one policy with `rules`: (SecretID, AccessorID).
async fn token_with(m: &Member, name: &str, rules: &str) -> (String, String) {
    made(
        m,
        Method::PUT,
        "/v1/acl/policy",
        json!({"Name": name, "Rules": rules}),
    )
    .await;
    let t = made(
        m,
        Method::PUT,
        "/v1/acl/token",
        json!({"Policies": [{"Name": name}]}),
    )
    .await;
    (
        t["SecretID"].as_str().unwrap().to_owned(),
        t["AccessorID"].as_str().unwrap().to_owned(),
    )
}

/// Runs the table with `default_policy` against a client agent, then against the
/// server it joined (the server last: its pass ends with its `leave`).
async fn every_endpoint_under(default_policy: &str) {
    let old_key = gossip::keyring::Key::generate().to_base64();
    let new_key = gossip::keyring::Key::generate().to_base64();
    let config = json!({"acl": {
        "enabled": true,
        "default_policy": default_policy,
        "tokens": {"initial_management": MANAGEMENT, "agent": MANAGEMENT}
    }})
    .to_string();
    let cluster = Cluster::start(1, |s| {
        s.key = Some(old_key.clone());
        s.config = Some(config.clone());
    })
    .await;
    let mut wrong = Vec::new();
    let (server, client) = (&cluster.members[0], &cluster.members[1]);
    for (pass, m) in [client, server].into_iter().enumerate() {
        one_agent(m, pass, default_policy, (&new_key, &old_key), &mut wrong).await;
    }
    assert!(
        wrong.is_empty(),
        "{} refusals wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    cluster.shutdown().await;
}

/// The table against agent `m`; `pass` tells apart the objects each pass makes. The
/// rows name the node `s1`, the fixtures `fixture` and `doomed`, and the queries `q1`,
/// `q2` and `qdel`: here they become `m`'s node and names of this pass.
async fn one_agent(
    m: &Member,
    pass: usize,
    default_policy: &str,
    (new_key, old_key): (&str, &str),
    wrong: &mut Vec<String>,
) {
    let local = |text: &str| {
        let mut out = text.replace(&format!("\"{NODE}\""), &format!("\"{}\"", m.name));
        out = out.replace(&format!("/{NODE}"), &format!("/{}", m.name));
        for name in ["fixture", "doomed", "made", "qdel", "q1", "q2"] {
            out = out.replace(name, &format!("{name}-{pass}"));
        }
        out
    };
    eventually(secs(30), "the initial management token", || async {
        let (status, body) =
            call(m, &Method::GET, "/v1/acl/token/self", Some(MANAGEMENT), "").await;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    let r = m.get("/v1/status/leader").await;
    if r.header("x-consul-default-acl-policy") != Some(default_policy) {
        wrong.push(format!("{}: every answer says the default policy", m.name));
    }

    // What the rows act on.
    let service = json!({"ID": "web", "Name": "web", "Check": {"CheckID": "web-ttl", "TTL": "1h"}});
    made(m, Method::PUT, "/v1/agent/service/register", service).await;
    let check = json!({"ID": "node-ttl", "Name": "node-ttl", "TTL": "1h"});
    made(m, Method::PUT, "/v1/agent/check/register", check).await;
    for key in ["app/x", "app/y"] {
        made(m, Method::PUT, &format!("/v1/kv/{key}"), json!(1)).await;
    }
    let q = |name: &str| json!({"Name": name, "Service": {"Service": "web"}});
    let query = made(m, Method::POST, "/v1/query", q(&local("q1"))).await;
    let query_doomed = made(m, Method::POST, "/v1/query", q(&local("qdel"))).await;
    let session = made(m, Method::PUT, "/v1/session/create", json!({})).await;
    let session_doomed = made(m, Method::PUT, "/v1/session/create", json!({})).await;
    let mut ids: Vec<(String, Value)> = vec![
        ("{query}".into(), query["ID"].clone()),
        ("{query-doomed}".into(), query_doomed["ID"].clone()),
        ("{session}".into(), session["ID"].clone()),
        ("{session-doomed}".into(), session_doomed["ID"].clone()),
    ];
    for (kind, body) in [
        ("policy", json!({"Rules": ""})),
        ("role", json!({"Policies": [{"Name": local("fixture")}]})),
    ] {
        for name in ["fixture", "doomed"] {
            let mut body = body.clone();
            body["Name"] = json!(local(name));
            let made = made(m, Method::PUT, &format!("/v1/acl/{kind}"), body).await;
            let slot = match name {
                "fixture" => format!("{{{kind}}}"),
                _ => format!("{{{kind}-doomed}}"),
            };
            ids.push((slot, made["ID"].clone()));
        }
    }
    for slot in ["{token}", "{token-doomed}"] {
        let t = made(
            m,
            Method::PUT,
            "/v1/acl/token",
            json!({"Policies": [{"Name": local("fixture")}]}),
        )
        .await;
        ids.push((slot.into(), t["AccessorID"].clone()));
    }
    // The slots first: renaming would change `{query-doomed}`.
    let fill = |path: &str| {
        let mut out = path.to_owned();
        for (slot, id) in &ids {
            out = out.replace(slot.as_str(), id.as_str().unwrap());
        }
        local(&out)
    };

    // A token with each rule, and one with the rule one level short.
    let rows = table(new_key, old_key);
    let mut tokens = std::collections::HashMap::new();
    for r in &rows {
        if let Need::Rule { rule, .. } = r.need
            && !tokens.contains_key(&local(rule))
        {
            let n = tokens.len();
            let rule = local(rule);
            let exact = token_with(m, &format!("exact-{n}-{pass}"), &rule).await;
            let short = token_with(m, &format!("short-{n}-{pass}"), &short_of(&rule)).await;
            tokens.insert(rule, (exact, short));
        }
    }

    // A token whose one rule no row needs.
    let (unrelated, _) = token_with(
        m,
        &format!("unrelated-{pass}"),
        r#"event "unrelated" { policy = "read" }"#,
    )
    .await;

    let allow = default_policy == "allow";
    // `token/self` needs a token and nothing more: each reads itself; none finds nothing.
    let ((exact, _), _) = tokens.values().next().cloned().unwrap();
    for secret in [exact, unrelated.clone()] {
        let (status, body) = call(m, &Method::GET, "/v1/acl/token/self", Some(&secret), "").await;
        if status != 200 || !body.contains(&secret) {
            wrong.push(format!("GET /v1/acl/token/self: {status} {body}"));
        }
    }
    let (status, body) = call(m, &Method::GET, "/v1/acl/token/self", None, "").await;
    if (status, body.as_str()) != (403, "ACL not found") {
        wrong.push(format!(
            "GET /v1/acl/token/self with no token: {status} {body}"
        ));
    }
    for r in &rows {
        let path = fill(r.path);
        let what = format!("{}: {} {path}", m.name, r.method);
        // A gossip key is random base64, which the renaming could touch.
        let body = if r.path == "/v1/operator/keyring" {
            r.body.clone()
        } else {
            local(&r.body)
        };
        let mut check = |who: &str, got: (u16, String), want_refused: Option<(u16, String)>| {
            let (status, text) = got;
            match want_refused {
                Some((want, denied)) => {
                    if status != want || !text.contains(&denied) {
                        wrong.push(format!(
                            "{what} {who}: want {want} {denied:?}, got {status} {text:?}"
                        ));
                    }
                }
                None => {
                    if status == 403 || text.contains("Permission denied") {
                        wrong.push(format!("{what} {who}: refused: {status} {text:?}"));
                    }
                }
            }
        };
        let is_leave = r.path == "/v1/agent/leave";
        match r.need {
            Need::Answered => {
                for (who, token) in [
                    ("with an unrelated token", Some(unrelated.as_str())),
                    ("with no token", None),
                    ("with management", Some(MANAGEMENT)),
                ] {
                    let (status, text) = call(m, &r.method, &path, token, &body).await;
                    if status != 200 {
                        wrong.push(format!("{what} {who}: want 200, got {status} {text:?}"));
                    }
                }
            }
            Need::Nothing | Need::Filtered => {
                check(
                    "with an unrelated token",
                    call(m, &r.method, &path, Some(&unrelated), &body).await,
                    None,
                );
                check(
                    "with no token",
                    call(m, &r.method, &path, None, &body).await,
                    None,
                );
                check(
                    "with management",
                    call(m, &r.method, &path, Some(MANAGEMENT), &body).await,
                    None,
                );
            }
            Need::Rule {
                rule,
                missing,
                status,
            } => {
                let ((exact, _), (short, short_accessor)) = tokens[&local(rule)].clone();
                let missing = local(missing);
                let refusal = |accessor: &str| {
                    if missing.is_empty() {
                        // A query the caller may not read: Consul's bare refusal.
                        "Permission denied".to_owned()
                    } else if status == 403 {
                        format!(
                            "Permission denied: token with AccessorID '{accessor}' lacks permission {missing}"
                        )
                    } else {
                        // In a transaction the refusal is one of its errors (Consul's).
                        "Permission denied".to_owned()
                    }
                };
                check(
                    "with the rule one level short",
                    call(m, &r.method, &path, Some(&short), &body).await,
                    Some((status, refusal(&short_accessor))),
                );
                // Consul's anonymous token under allow may do all but ACL management
                // and snapshots.
                let kept_for_rules = missing.starts_with("'acl:");
                let anonymous_refused = !allow || kept_for_rules;
                // An anonymous leave that succeeds would end the agent before the
                // exact-rule check: only a refused one is tried.
                if anonymous_refused || !is_leave {
                    check(
                        "with no token",
                        call(m, &r.method, &path, None, &body).await,
                        anonymous_refused.then(|| (status, refusal(ANONYMOUS))),
                    );
                }
                check(
                    "with exactly the rule",
                    call(m, &r.method, &path, Some(&exact), &body).await,
                    None,
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_needs_its_rule_under_default_deny() {
    every_endpoint_under("deny").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_needs_its_rule_under_default_allow() {
    every_endpoint_under("allow").await;
}
