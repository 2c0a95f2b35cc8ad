//! The HTTP API of in-process agents.

use serde_json::{Value, json};

use crate::support::{Setup, TestAgent, eventually, secs};

fn ids(entries: &Value, key: &str) -> Vec<String> {
    let mut out: Vec<String> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.pointer(key).unwrap().as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn dev_agent_registers_itself_and_elects_a_leader() {
    let a = TestAgent::dev().await;
    let leader = a.json("/v1/status/leader").await;
    let server = a.agent.lan().server_addr().unwrap();
    assert_eq!(leader, json!(server.to_string()));
    assert_eq!(a.json("/v1/status/peers").await, json!([leader]));
    assert_eq!(a.json("/v1/catalog/datacenters").await, json!(["dc1"]));

    let r = a.get("/v1/catalog/nodes").await;
    assert_eq!(r.status, 200);
    let index: u64 = r.header("x-consul-index").unwrap().parse().unwrap();
    assert!(index >= 1);
    assert_eq!(r.header("x-consul-knownleader"), Some("true"));
    assert_eq!(r.header("x-consul-lastcontact"), Some("0"));
    let nodes: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(nodes[0]["Node"], "node-1");
    assert_eq!(nodes[0]["Datacenter"], "dc1");
    assert_eq!(nodes[0]["TaggedAddresses"]["lan"], "127.0.0.1");

    let consul = a.json("/v1/health/service/consul").await;
    assert_eq!(consul[0]["Service"]["Port"], server.port());
    let check = &consul[0]["Checks"][0];
    assert_eq!(check["CheckID"], "serfHealth");
    assert_eq!(check["Status"], "passing");
    assert_eq!(check["Output"], "Agent alive and reachable");

    let members = a.json("/v1/agent/members").await;
    assert_eq!(members[0]["Name"], "node-1");
    assert_eq!(members[0]["Status"], 1);
    assert_eq!(members[0]["Tags"]["role"], "consul");
    let me = a.json("/v1/agent/self").await;
    assert_eq!(me["Config"]["NodeName"], "node-1");
    assert_eq!(me["Config"]["Server"], true);
    assert_eq!(me["Member"]["Name"], "node-1");
    a.shutdown().await;
}

#[tokio::test]
async fn agent_services_reach_the_catalog_and_leave_it_on_deregistration() {
    let a = TestAgent::dev().await;
    let body = json!({"Name": "web", "ID": "web1", "Tags": ["rails"], "Port": 8080,
                      "Meta": {"version": "2"}});
    let r = a.put("/v1/agent/service/register", &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let local = a.json("/v1/agent/services").await;
    assert_eq!(local["web1"]["Service"], "web");
    assert_eq!(local["web1"]["Port"], 8080);

    let entries = eventually(secs(10), "web in the catalog", || async {
        let v = a.json("/v1/catalog/service/web").await;
        if v.as_array().unwrap().len() == 1 {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert_eq!(entries[0]["ServiceID"], "web1");
    assert_eq!(entries[0]["ServiceTags"], json!(["rails"]));
    assert_eq!(entries[0]["ServiceMeta"]["version"], "2");
    assert_eq!(entries[0]["Node"], "node-1");
    let services = a.json("/v1/catalog/services").await;
    assert_eq!(services["web"], json!(["rails"]));
    let node = a.json("/v1/catalog/node/node-1").await;
    assert_eq!(node["Services"]["web1"]["Port"], 8080);
    let tagged = a.json("/v1/catalog/service/web?tag=RAILS").await;
    assert_eq!(tagged.as_array().unwrap().len(), 1);
    let none = a.json("/v1/catalog/service/web?tag=nope").await;
    assert_eq!(none, json!([]));

    let r = a.put("/v1/agent/service/deregister/web1", "").await;
    assert_eq!(r.status, 200);
    eventually(secs(10), "web gone from the catalog", || async {
        let v = a.json("/v1/catalog/service/web").await;
        if v == json!([]) {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })
    .await;
    a.shutdown().await;
}

#[tokio::test]
async fn ttl_checks_drive_passing_filters() {
    let a = TestAgent::dev().await;
    let body = json!({"Name": "api", "Port": 9000, "Check": {"CheckID": "api-ttl", "TTL": "30s"}});
    let r = a.put("/v1/agent/service/register", &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let passing = || async { a.json("/v1/health/service/api?passing").await };
    eventually(secs(10), "api registered, critical", || async {
        let all = a.json("/v1/health/service/api").await;
        let critical = all[0]["Checks"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["CheckID"] == "api-ttl" && c["Status"] == "critical")
        });
        if critical {
            Ok(())
        } else {
            Err(all.to_string())
        }
    })
    .await;
    assert_eq!(passing().await, json!([]));

    let r = a
        .put("/v1/agent/check/pass/api-ttl?note=all%20good", "")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let entry = eventually(secs(10), "api passing", || async {
        let v = passing().await;
        if v.as_array().unwrap().len() == 1 {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    let check = entry[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "api-ttl")
        .unwrap()
        .clone();
    assert_eq!(check["Output"], "all good");
    assert_eq!(check["ServiceName"], "api");
    assert_eq!(check["Type"], "ttl");

    let r = a
        .put(
            "/v1/agent/check/update/api-ttl",
            r#"{"Status": "warning", "Output": "slow"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(secs(10), "api warning", || async {
        let v = a.json("/v1/health/state/warning").await;
        if ids(&v, "/CheckID") == ["api-ttl"] {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert_eq!(passing().await, json!([]));

    let r = a
        .put(
            "/v1/agent/check/update/api-ttl",
            r#"{"Status": "sideways"}"#,
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body, "Invalid check status: 'sideways'");
    let r = a.put("/v1/agent/check/pass/no-such-check", "").await;
    assert_eq!(r.status, 404, "{}", r.body);
    let checks = a.json("/v1/agent/checks").await;
    assert_eq!(checks["api-ttl"]["Status"], "warning");
    a.shutdown().await;
}

/// A TCP listener that answers every connection with a fixed HTTP response.
async fn http_responder(status_line: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let body = "ok";
                let reply = format!(
                    "HTTP/1.1 {status_line}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http_and_tcp_checks_run_on_their_interval() {
    let healthy = http_responder("200 OK").await;
    let limited = http_responder("429 Too Many Requests").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let config = json!({"services": [
        {"name": "up", "check": {"http": format!("http://{healthy}/health"), "interval": "1s"}},
        {"name": "busy", "check": {"http": format!("http://{limited}/"), "interval": "1s"}},
        {"name": "down", "check": {"tcp": closed.to_string(), "interval": "1s", "timeout": "1s"}},
        {"name": "tcp-up", "check": {"tcp": healthy.to_string(), "interval": "1s"}}
    ]});
    let a = TestAgent::with_config(&config.to_string()).await;
    let status_of = |service: &'static str| {
        let a = &a;
        async move {
            let v = a.json(&format!("/v1/health/checks/{service}")).await;
            v[0]["Status"]
                .as_str()
                .map(str::to_owned)
                .ok_or(v.to_string())
        }
    };
    for (service, want) in [
        ("up", "passing"),
        ("busy", "warning"),
        ("down", "critical"),
        ("tcp-up", "passing"),
    ] {
        eventually(secs(15), &format!("{service} {want}"), || async {
            match status_of(service).await {
                Ok(s) if s == want => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    let up = a.json("/v1/health/checks/up").await;
    let output = up[0]["Output"].as_str().unwrap();
    assert!(
        output.starts_with(&format!(
            "HTTP GET http://{healthy}/health: 200 OK Output: ok"
        )),
        "{output}"
    );
    assert_eq!(up[0]["Type"], "http");
    assert_eq!(up[0]["Interval"], "1s");
    a.shutdown().await;
}

#[tokio::test]
async fn blocking_queries_wait_for_a_change_or_the_timeout() {
    let a = TestAgent::dev().await;
    let r = a.get("/v1/catalog/services").await;
    let index: u64 = r.header("x-consul-index").unwrap().parse().unwrap();

    // Times out with the same index when nothing changes.
    let r = a
        .get(&format!("/v1/catalog/services?index={index}&wait=200ms"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-consul-index").unwrap(), index.to_string());

    // Returns early with a newer index on a change.
    let waiter = {
        let http = a.http.clone();
        tokio::spawn(async move {
            http.call(
                hyper::Method::GET,
                &format!("/v1/catalog/services?index={index}&wait=60s"),
                None,
            )
            .await
            .unwrap()
        })
    };
    let r = a
        .put("/v1/agent/service/register", r#"{"Name": "late"}"#)
        .await;
    assert_eq!(r.status, 200);
    let r = tokio::time::timeout(secs(30), waiter)
        .await
        .unwrap()
        .unwrap();
    let new_index: u64 = r.header("x-consul-index").unwrap().parse().unwrap();
    assert!(new_index > index, "{new_index} > {index}");
    assert!(r.body.contains("late"), "{}", r.body);
    a.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_consul_errors() {
    let a = TestAgent::dev().await;
    let r = a.put("/v1/agent/service/register", "{not json").await;
    assert_eq!(r.status, 400);
    assert!(r.body.starts_with("Request decode failed: "), "{}", r.body);
    let r = a.put("/v1/agent/service/register", r#"{"Port": 80}"#).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Missing service name"), "{}", r.body);
    let r = a
        .put(
            "/v1/agent/service/register",
            r#"{"Name": "x", "Port": "eighty"}"#,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Port"), "{}", r.body);
    let r = a
        .put("/v1/catalog/register", r#"{"Address": "10.0.0.1"}"#)
        .await;
    assert_eq!((r.status, r.body.as_str()), (400, "Must provide node"));

    let r = a.get("/v1/no/such/endpoint").await;
    assert_eq!(r.status, 404);
    let r = a.get("/v1/agent/service/register").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.body, "method GET not allowed");

    let big = "x".repeat(2 * 1024 * 1024);
    let r = a.put("/v1/agent/service/register", &big).await;
    assert_eq!(r.status, 413, "{}", r.body);

    for (query, text) in [
        ("?index=abc", "Invalid index"),
        ("?index=1&wait=soon", "Invalid wait time"),
        (
            "?stale&consistent",
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ),
    ] {
        let r = a.get(&format!("/v1/catalog/nodes{query}")).await;
        assert_eq!((r.status, r.body.as_str()), (400, text), "{query}");
    }
    let r = a.get("/v1/health/service/web?passing=maybe").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, "Invalid value for ?passing")
    );
    let r = a.get("/v1/health/state/bogus").await;
    assert_eq!(r.status, 400);
    // Consul takes ?filter= here and ignores it; proconsul refuses it.
    let r = a.get("/v1/query?filter=Name%20==%20x").await;
    assert_eq!(
        r.status, 400,
        "unsupported parameters are refused, not ignored"
    );

    let r = a.get("/v1/catalog/nodes?dc=nowhere").await;
    assert_eq!((r.status, r.body.as_str()), (500, "No path to datacenter"));
    let r = a
        .put(
            "/v1/catalog/register?dc=nowhere",
            r#"{"Node": "n", "Address": "1.2.3.4"}"#,
        )
        .await;
    assert_eq!((r.status, r.body.as_str()), (500, "No path to datacenter"));

    // Still healthy after all of that.
    assert_eq!(a.get("/v1/catalog/nodes").await.status, 200);
    a.shutdown().await;
}

#[tokio::test]
async fn catalog_registrations_of_external_services() {
    let a = TestAgent::dev().await;
    let body = json!({
        "Node": "google", "Address": "www.google.com",
        "NodeMeta": {"external-node": "true"},
        "Service": {"ID": "search1", "Service": "search", "Port": 80, "Tags": ["web"]},
        "Check": {"CheckID": "search-ok", "Name": "reachable", "Status": "passing", "ServiceID": "search1"}
    });
    let r = a.put("/v1/catalog/register", &body.to_string()).await;
    assert_eq!((r.status, r.body.as_str()), (200, "true"));
    let entries = a.json("/v1/health/service/search?passing=true").await;
    assert_eq!(entries[0]["Node"]["Node"], "google");
    assert_eq!(entries[0]["Node"]["Meta"]["external-node"], "true");
    assert_eq!(entries[0]["Service"]["ID"], "search1");
    assert_eq!(entries[0]["Checks"][0]["ServiceName"], "search");
    let nodes = a
        .json("/v1/catalog/nodes?node-meta=external-node:true")
        .await;
    assert_eq!(ids(&nodes, "/Node"), ["google"]);

    // A check for a service the node does not have is refused and changes nothing.
    let bad = json!({"Node": "google", "Address": "www.google.com",
                     "Check": {"CheckID": "c", "ServiceID": "missing"}});
    let r = a.put("/v1/catalog/register", &bad.to_string()).await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("missing"), "{}", r.body);

    let r = a
        .put(
            "/v1/catalog/deregister",
            r#"{"Node": "google", "ServiceID": "search1"}"#,
        )
        .await;
    assert_eq!((r.status, r.body.as_str()), (200, "true"));
    assert_eq!(a.json("/v1/catalog/service/search").await, json!([]));
    let r = a
        .put("/v1/catalog/deregister", r#"{"Node": "google"}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(a.json("/v1/catalog/node/google").await, Value::Null);
    a.shutdown().await;
}

#[tokio::test]
async fn near_puts_the_nodes_with_coordinates_first() {
    let a = TestAgent::dev().await;
    // Nodes registered through the catalog have no network coordinate; the agent's own
    // node (node-1) has one, so it comes first from `_agent`, though it sorts last by name.
    for node in ["aaa", "bbb"] {
        let body = json!({"Node": node, "Address": "10.0.0.1",
                          "Service": {"Service": "web", "Port": 80},
                          "Check": {"CheckID": "up", "Name": "up", "Status": "passing"}});
        let r = a.put("/v1/catalog/register", &body.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let names = |v: &Value, key: &str| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e.pointer(key).unwrap().as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&a.json("/v1/catalog/nodes").await, "/Node"),
        ["aaa", "bbb", "node-1"]
    );
    let near = a.json("/v1/catalog/nodes?near=_agent").await;
    assert_eq!(names(&near, "/Node")[0], "node-1");
    let near = a.json("/v1/catalog/nodes?near=node-1&stale").await;
    assert_eq!(names(&near, "/Node")[0], "node-1");
    // Checks too: node-1's serfHealth moves ahead of the checks of aaa and bbb.
    let checks = a.json("/v1/health/state/any").await;
    assert_eq!(names(&checks, "/Node"), ["aaa", "bbb", "node-1"]);
    let checks = a.json("/v1/health/state/any?near=_agent").await;
    assert_eq!(names(&checks, "/Node"), ["node-1", "aaa", "bbb"]);
    // A node without a coordinate leaves the usual order.
    let web = a.json("/v1/catalog/service/web?near=aaa").await;
    assert_eq!(names(&web, "/Node"), ["aaa", "bbb"]);
    let web = a.json("/v1/health/service/web?near=_agent").await;
    assert_eq!(names(&web, "/Node/Node"), ["aaa", "bbb"]);
    // Another datacenter's coordinates are not known here.
    let r = a.get("/v1/catalog/nodes?near=x&dc=dc2").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("?near=x"), "{}", r.body);
    // Reads that Consul does not sort still refuse the parameter.
    let r = a.get("/v1/catalog/node/aaa?near=_agent").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("?near"), "{}", r.body);
    a.shutdown().await;
}

#[tokio::test]
async fn pretty_output_and_consistency_modes() {
    let a = TestAgent::dev().await;
    let r = a.get("/v1/catalog/datacenters?pretty").await;
    assert_eq!(r.body, "[\n    \"dc1\"\n]\n");
    let r = a.get("/v1/catalog/nodes?stale").await;
    assert_eq!(r.header("x-consul-effective-consistency"), Some("stale"));
    let r = a.get("/v1/catalog/nodes?consistent").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("x-consul-effective-consistency"),
        Some("consistent")
    );
    assert_eq!(r.header("x-consul-default-acl-policy"), Some("allow"));
    a.shutdown().await;
}

#[tokio::test]
async fn reload_replaces_services_from_config_files() {
    let a = TestAgent::with_config(r#"{"service": {"name": "web", "port": 80}}"#).await;
    eventually(secs(10), "web from the config file", || async {
        let v = a.json("/v1/catalog/service/web").await;
        if v[0]["ServicePort"] == 80 {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })
    .await;
    // An API registration survives a reload; config-file services follow the files.
    let r = a
        .put("/v1/agent/service/register", r#"{"Name": "from-api"}"#)
        .await;
    assert_eq!(r.status, 200);
    std::fs::write(
        a.config_dir().join("test.json"),
        r#"{"services": [{"name": "web", "port": 8080}, {"name": "db", "port": 5432}]}"#,
    )
    .unwrap();
    let r = a.put("/v1/agent/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(secs(10), "reloaded services", || async {
        let v = a.json("/v1/catalog/services").await;
        let web = a.json("/v1/catalog/service/web").await;
        let ok =
            v.get("db").is_some() && v.get("from-api").is_some() && web[0]["ServicePort"] == 8080;
        if ok {
            Ok(())
        } else {
            Err(format!("{v} {web}"))
        }
    })
    .await;
    // A broken file makes the reload fail and changes nothing.
    std::fs::write(
        a.config_dir().join("test.json"),
        r#"{"services": [{"name": 1}]}"#,
    )
    .unwrap();
    let r = a.put("/v1/agent/reload", "").await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("test.json"), "{}", r.body);
    assert!(a.json("/v1/agent/services").await.get("db").is_some());
    a.shutdown().await;
}

#[tokio::test]
async fn leave_endpoint_asks_the_agent_to_stop() {
    let a = TestAgent::dev().await;
    let r = a.put("/v1/agent/leave", "").await;
    assert_eq!(r.status, 200);
    tokio::time::timeout(secs(5), a.agent.left()).await.unwrap();
    a.shutdown().await;
}

#[tokio::test]
async fn blocking_on_one_service_ignores_changes_to_others() {
    let a = TestAgent::dev().await;
    let r = a
        .put(
            "/v1/agent/service/register",
            r#"{"Name": "web", "Port": 80}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    let index = eventually(secs(10), "web registered", || async {
        let r = a.get("/v1/health/service/web").await;
        if r.body.contains("\"web\"") {
            Ok(r.header("x-consul-index").unwrap().parse::<u64>().unwrap())
        } else {
            Err(r.body)
        }
    })
    .await;
    let other = json!({"Node": "elsewhere", "Address": "10.1.1.1", "Service": {"Service": "db"}});
    assert_eq!(
        a.put("/v1/catalog/register", &other.to_string())
            .await
            .status,
        200
    );
    let r = a
        .get(&format!("/v1/health/service/web?index={index}&wait=300ms"))
        .await;
    assert_eq!(
        r.header("x-consul-index").unwrap(),
        index.to_string(),
        "db's change does not move web's index"
    );
    // An index from before a restart (higher than anything here) answers at once.
    let r = tokio::time::timeout(
        secs(5),
        a.get("/v1/health/service/web?index=999999&wait=10m"),
    )
    .await
    .expect("answered without waiting");
    assert_eq!(r.status, 200);
    a.shutdown().await;
}

#[tokio::test]
async fn check_output_is_cut_to_its_limit() {
    let a = TestAgent::dev().await;
    let body = json!({"Name": "api", "Checks": [
        {"CheckID": "small", "TTL": "30s", "OutputMaxSize": 10},
        {"CheckID": "default", "TTL": "30s"}
    ]});
    assert_eq!(
        a.put("/v1/agent/service/register", &body.to_string())
            .await
            .status,
        200
    );
    let long = "x".repeat(10_000);
    for id in ["small", "default"] {
        let r = a
            .put(
                &format!("/v1/agent/check/update/{id}"),
                &json!({"Status": "passing", "Output": long}).to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let checks = a.json("/v1/agent/checks").await;
    assert_eq!(checks["small"]["Output"].as_str().unwrap().len(), 10);
    assert_eq!(checks["default"]["Output"].as_str().unwrap().len(), 4096);
    a.shutdown().await;
}

#[tokio::test]
async fn unsupported_and_unsafe_registrations_are_refused() {
    let a = TestAgent::with_config(r#"{"enable_local_script_checks": true}"#).await;
    let script = json!({"Name": "s", "Check": {"Args": ["true"], "Interval": "10s"}});
    let r = a
        .put("/v1/agent/service/register", &script.to_string())
        .await;
    assert_eq!(r.status, 500, "API script checks need enable_script_checks");
    assert_eq!(
        r.body.trim(),
        "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true"
    );
    let https = json!({"Name": "h", "Check": {"HTTP": "https://127.0.0.1/", "Interval": "10s"}});
    let r = a
        .put("/v1/agent/service/register", &https.to_string())
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("http://"), "{}", r.body);
    let reserved = a
        .put("/v1/agent/service/register", r#"{"Name": "consul"}"#)
        .await;
    assert_eq!(reserved.status, 400, "{}", reserved.body);
    assert_eq!(
        a.put("/v1/agent/service/register", r#"{"Name": "Web"}"#)
            .await
            .status,
        200
    );
    let clash = a
        .put("/v1/agent/service/register", r#"{"Name": "web"}"#)
        .await;
    assert_eq!(clash.status, 400, "{}", clash.body);
    let long_meta = json!({"Node": "n", "Address": "10.0.0.9", "NodeMeta": {"k": "v".repeat(600)}});
    let r = a.put("/v1/catalog/register", &long_meta.to_string()).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("512"), "{}", r.body);
    let r = a.get("/v1/agent/members?filter=Bogus%20==%20web").await;
    assert_eq!(r.status, 400, "{}", r.body);
    a.shutdown().await;
}

#[tokio::test]
async fn catalog_tags_win_with_enable_tag_override() {
    let a = TestAgent::start(Setup {
        config: Some(
            r#"{"services": [{"name": "over", "tags": ["a"], "enable_tag_override": true}, {"name": "plain", "tags": ["a"]}]}"#
                .into(),
        ),
        ae_interval: Some(std::time::Duration::from_millis(300)),
        ..Setup::default()
    })
    .await;
    eventually(secs(10), "services synced", || async {
        let v = a.json("/v1/catalog/services").await;
        if v.get("over").is_some() && v.get("plain").is_some() {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })
    .await;
    for name in ["over", "plain"] {
        let body = json!({"Node": "node-1", "Address": "127.0.0.1", "SkipNodeUpdate": true,
                          "Service": {"Service": name, "Tags": ["b"], "EnableTagOverride": name == "over"}});
        assert_eq!(
            a.put("/v1/catalog/register", &body.to_string())
                .await
                .status,
            200
        );
    }
    // The next full sync repairs the plain service and leaves the override alone.
    eventually(secs(10), "plain repaired", || async {
        let plain = a.json("/v1/catalog/service/plain").await;
        if plain[0]["ServiceTags"] == json!(["a"]) {
            Ok(())
        } else {
            Err(plain.to_string())
        }
    })
    .await;
    let over = a.json("/v1/catalog/service/over").await;
    assert_eq!(over[0]["ServiceTags"], json!(["b"]));
    a.shutdown().await;
}

#[tokio::test]
async fn a_reload_with_a_bad_reference_changes_nothing() {
    let a = TestAgent::with_config(r#"{"service": {"name": "web"}}"#).await;
    std::fs::write(
        a.config_dir().join("test.json"),
        r#"{"service": {"name": "db"}, "check": {"name": "c", "ttl": "10s", "service_id": "missing"}}"#,
    )
    .unwrap();
    let r = a.put("/v1/agent/reload", "").await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("missing"), "{}", r.body);
    let services = a.json("/v1/agent/services").await;
    assert!(
        services.get("web").is_some() && services.get("db").is_none(),
        "{services}"
    );
    a.shutdown().await;
}

#[tokio::test]
async fn a_server_restarts_from_its_data_dir_with_the_catalog_intact() {
    let data = tempfile::tempdir().unwrap();
    let setup = || Setup {
        data_dir: Some(data.path().to_owned()),
        ..Setup::default()
    };
    let a = TestAgent::start(setup()).await;
    for i in 0..20 {
        let body = json!({"Node": format!("ext-{i}"), "Address": format!("10.3.0.{i}"),
                          "Service": {"Service": "ext", "ID": format!("ext{i}"), "Port": 1000 + i}});
        assert_eq!(
            a.put("/v1/catalog/register", &body.to_string())
                .await
                .status,
            200
        );
    }
    let before = a.json("/v1/catalog/nodes").await;
    let node_id = before
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["Node"] == "node-1")
        .unwrap()["ID"]
        .clone();
    a.shutdown().await;

    let a = TestAgent::start(setup()).await;
    let after = a.json("/v1/catalog/service/ext").await;
    assert_eq!(
        after.as_array().unwrap().len(),
        20,
        "every acknowledged registration is back"
    );
    let nodes = a.json("/v1/catalog/nodes").await;
    let me = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["Node"] == "node-1")
        .unwrap()
        .clone();
    assert_eq!(me["ID"], node_id, "the node ID is kept in the data dir");
    a.shutdown().await;
}
