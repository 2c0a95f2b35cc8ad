//! Maintenance mode and agent-local health: a node or service taken out of service
//! stays out across a restart and is seen so from another datacenter, by HTTP and DNS;
//! a load balancer reads each health state from the agent's status codes.

use hickory_proto::rr::RecordType;
use serde_json::{Value, json};

use crate::support::cluster::{Member, leader_of};
use crate::support::{TestAgent, eventually, secs};
use crate::wan::{server, tls_config};

/// dc2's server config: TLS for the WAN, and `web` from a config file (so that it is
/// back after a restart).
fn dc2_config(dir: &std::path::Path, ca: &wan::tls::Pem) -> String {
    let mut config: Value = serde_json::from_str(&tls_config(dir, ca, "b0", "dc2")).unwrap();
    config["services"] = json!([{"id": "web-1", "name": "web", "port": 8080}]);
    config.to_string()
}

/// `web` in dc2 as dc1 sees it: all instances, and the passing ones. Right after dc2's
/// server restarts, dc1 may answer that no server of dc2 is reachable (Consul's 500)
/// until the WAN pool has it back: that is an error to wait through, not a failure.
async fn web_from_dc1(a: &Member) -> Result<(Value, Value), String> {
    let mut got = Vec::new();
    for path in [
        "/v1/health/service/web?dc=dc2",
        "/v1/health/service/web?dc=dc2&passing",
    ] {
        let r = a.get(path).await;
        if r.status != 200 {
            return Err(format!("GET {path}: {} {}", r.status, r.body));
        }
        got.push(serde_json::from_str(&r.body).map_err(|e| format!("GET {path}: {e}"))?);
    }
    let passing = got.pop().unwrap_or_default();
    let all = got.pop().unwrap_or_default();
    Ok((all, passing))
}

/// The IDs and notes of the critical checks on `web`'s instances in `entries`.
fn critical_checks(entries: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = entries
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["Checks"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["Status"] == "critical")
        .map(|c| {
            (
                c["CheckID"].as_str().unwrap_or_default().to_owned(),
                c["Notes"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits until dc1 sees `web` in dc2 with exactly these critical checks and no passing
/// instance (or, with none, with one passing instance), by HTTP and by DNS.
async fn dc1_sees(a: &Member, critical: &[(&str, &str)]) {
    let want: Vec<(String, String)> = critical
        .iter()
        .map(|(id, notes)| ((*id).to_owned(), (*notes).to_owned()))
        .collect();
    let healthy = want.is_empty();
    eventually(secs(30), "dc1's view of web in dc2", || async {
        let (all, passing) = web_from_dc1(a).await?;
        let got = critical_checks(&all);
        let passing_count = passing.as_array().map_or(0, Vec::len);
        let listed = all.as_array().map_or(0, Vec::len);
        if listed == 1 && got == want && passing_count == usize::from(healthy) {
            Ok(())
        } else {
            Err(format!(
                "critical {got:?}, {passing_count} passing of {listed}"
            ))
        }
    })
    .await;
    let answers = a
        .dig("web.service.dc2.consul", RecordType::SRV)
        .await
        .answers
        .len();
    assert_eq!(answers, usize::from(healthy), "SRV answers through dc1");
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_survives_a_restart_and_is_seen_from_another_datacenter() {
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
    let b_spec = || crate::support::cluster::Spec {
        join_wan: vec![a.wan_addr()],
        ..server("b0", "dc2", 1, vec![], dc2_config(dir.path(), &ca))
    };
    let b = Member::start(b_spec()).await;
    leader_of(&[&a], 1).await;
    leader_of(&[&b], 1).await;
    dc1_sees(&a, &[]).await;

    // The node in maintenance: every service of it leaves DNS and ?passing everywhere.
    let r = b
        .call(
            hyper::Method::PUT,
            "/v1/agent/maintenance?enable=true&reason=rack+move",
            "",
        )
        .await;
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    dc1_sees(&a, &[("_node_maintenance", "rack move")]).await;

    // The instance too, with the default reason.
    let r = b
        .call(
            hyper::Method::PUT,
            "/v1/agent/service/maintenance/web-1?enable=true",
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let default = lan::DEFAULT_SERVICE_MAINTENANCE_REASON;
    let both = [
        ("_node_maintenance", "rack move"),
        ("_service_maintenance:web-1", default),
    ];
    dc1_sees(&a, &both).await;

    // dc2's agent restarts from its data dir: both are still on, at home and from dc1.
    let Member {
        agent, dir: b_dir, ..
    } = b;
    agent.stop(false).await;
    let b = Member::start_in(b_spec(), b_dir).await.unwrap();
    leader_of(&[&b], 1).await;
    let checks = b.json("/v1/agent/checks").await;
    assert_eq!(checks["_node_maintenance"]["Notes"], "rack move");
    assert_eq!(checks["_node_maintenance"]["Status"], "critical");
    assert_eq!(
        checks["_service_maintenance:web-1"]["ServiceID"], "web-1",
        "{checks}"
    );
    dc1_sees(&a, &both).await;

    // Off again, one after the other: the instance is back only when both are off.
    let r = b
        .call(hyper::Method::PUT, "/v1/agent/maintenance?enable=false", "")
        .await;
    assert_eq!(r.status, 200);
    dc1_sees(&a, &[("_service_maintenance:web-1", default)]).await;
    let r = b
        .call(
            hyper::Method::PUT,
            "/v1/agent/service/maintenance/web-1?enable=false",
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    dc1_sees(&a, &[]).await;

    // And it stays off across the next restart.
    let Member {
        agent, dir: b_dir, ..
    } = b;
    agent.stop(false).await;
    let b = Member::start_in(b_spec(), b_dir).await.unwrap();
    leader_of(&[&b], 1).await;
    let checks = b.json("/v1/agent/checks").await;
    assert_eq!(checks, json!({}));
    dc1_sees(&a, &[]).await;
}

/// `GET path` on `agent`: status, `X-Consul-Reason`, body.
async fn health(agent: &TestAgent, path: &str) -> (u16, String, String) {
    let r = agent.get(path).await;
    let reason = r.header("x-consul-reason").unwrap_or_default().to_owned();
    (r.status, reason, r.body)
}

#[tokio::test]
async fn agent_local_health_gives_each_state_its_status_code() {
    let agent = TestAgent::dev().await;
    let register = |id: &str, check: &str| {
        json!({
            "Name": "web",
            "ID": id,
            "Port": 80,
            "Check": {"CheckID": check, "Name": check, "TTL": "300s"},
        })
        .to_string()
    };
    let r = agent
        .put("/v1/agent/service/register", &register("web-1", "ttl-1"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // A TTL check starts critical, then each state its code, by ID and by name, as
    // JSON and as text.
    let steps = [
        (None, 503, "critical"),
        (Some("pass"), 200, "passing"),
        (Some("warn"), 429, "warning"),
        (Some("fail"), 503, "critical"),
        (Some("pass"), 200, "passing"),
    ];
    for (update, code, status) in steps {
        if let Some(update) = update {
            let r = agent
                .put(&format!("/v1/agent/check/{update}/ttl-1"), "")
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let (c, reason, body) = health(&agent, "/v1/agent/health/service/id/web-1").await;
        assert_eq!((c, reason.as_str()), (code, status), "by ID");
        let info: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(info["AggregatedStatus"], status);
        assert_eq!(info["Service"]["ID"], "web-1");
        assert_eq!(info["Checks"][0]["CheckID"], "ttl-1");
        let (c, _, body) = health(&agent, "/v1/agent/health/service/id/web-1?format=text").await;
        assert_eq!((c, body.as_str()), (code, status), "by ID, text");
        let (c, _, body) = health(&agent, "/v1/agent/health/service/name/web").await;
        assert_eq!(c, code, "by name");
        let list: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list[0]["AggregatedStatus"], status);
        let (c, _, body) = health(&agent, "/v1/agent/health/service/name/web?format=text").await;
        assert_eq!((c, body.as_str()), (code, status), "by name, text");
    }

    // By name, the worst instance decides.
    let r = agent
        .put("/v1/agent/service/register", &register("web-2", "ttl-2"))
        .await;
    assert_eq!(r.status, 200);
    agent.put("/v1/agent/check/warn/ttl-2", "").await;
    let (c, _, body) = health(&agent, "/v1/agent/health/service/name/web?format=text").await;
    assert_eq!((c, body.as_str()), (429, "warning"));
    let (c, _, _) = health(&agent, "/v1/agent/health/service/id/web-1").await;
    assert_eq!(c, 200, "web-1 alone is passing");

    // Maintenance of the instance, then of the node, answers 503 "maintenance".
    for (enable, disable) in [
        (
            "/v1/agent/service/maintenance/web-1?enable=true",
            "/v1/agent/service/maintenance/web-1?enable=false",
        ),
        (
            "/v1/agent/maintenance?enable=true",
            "/v1/agent/maintenance?enable=false",
        ),
    ] {
        assert_eq!(agent.put(enable, "").await.status, 200);
        let (c, reason, _) = health(&agent, "/v1/agent/health/service/id/web-1").await;
        assert_eq!((c, reason.as_str()), (503, "maintenance"), "{enable}");
        let (c, _, body) = health(&agent, "/v1/agent/health/service/name/web?format=text").await;
        assert_eq!((c, body.as_str()), (503, "maintenance"));
        assert_eq!(agent.put(disable, "").await.status, 200);
        let (c, _, _) = health(&agent, "/v1/agent/health/service/id/web-1").await;
        assert_eq!(c, 200, "{disable}");
    }

    // Unknown instances and names are 404, with Consul's bodies.
    let (c, reason, body) = health(&agent, "/v1/agent/health/service/id/nope").await;
    assert_eq!((c, reason.as_str()), (404, "ServiceId nope not found"));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"AggregatedStatus": "critical", "Service": null, "Checks": null})
    );
    let (c, _, body) = health(&agent, "/v1/agent/health/service/id/nope?format=text").await;
    assert_eq!((c, body.as_str()), (404, "ServiceId nope not found"));
    let (c, reason, body) = health(&agent, "/v1/agent/health/service/name/nope").await;
    assert_eq!(
        (c, reason.as_str(), body.as_str()),
        (404, "ServiceName nope Not Found", "[]")
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn maintenance_requests_that_cannot_apply_are_refused_with_consul_s_texts() {
    let agent = TestAgent::dev().await;
    let cases = [
        (
            "/v1/agent/service/maintenance/nope?enable=true",
            404,
            r#"Unknown service ID "nope". Ensure that the service ID is passed, not the service name."#,
        ),
        (
            "/v1/agent/service/maintenance/nope?enable=false",
            404,
            r#"Unknown service ID "nope". Ensure that the service ID is passed, not the service name."#,
        ),
        ("/v1/agent/maintenance", 400, "Missing value for enable"),
        (
            "/v1/agent/maintenance?enable=maybe",
            400,
            r#"Invalid value for enable: "maybe""#,
        ),
        (
            "/v1/agent/service/maintenance/?enable=true",
            400,
            "Missing service ID",
        ),
    ];
    for (path, code, text) in cases {
        let r = agent.put(path, "").await;
        assert_eq!((r.status, r.body.as_str()), (code, text), "PUT {path}");
    }
    let r = agent.get("/v1/agent/maintenance?enable=true").await;
    assert_eq!(r.status, 405, "maintenance is PUT only");
    assert_eq!(agent.json("/v1/agent/checks").await, json!({}));
    agent.shutdown().await;
}

#[tokio::test]
async fn host_and_version_answer_in_consul_s_shape() {
    let agent = TestAgent::dev().await;
    let version = agent.json("/v1/agent/version").await;
    assert_eq!(version["HumanVersion"], proconsul::VERSION);
    for key in ["SHA", "BuildDate", "FIPS"] {
        assert!(version[key].is_string(), "{key} in {version}");
    }
    let host = agent.json("/v1/agent/host").await;
    assert!(host["Memory"]["total"].as_u64().unwrap() > 0, "{host}");
    assert!(!host["CPU"].as_array().unwrap().is_empty());
    assert!(host["Disk"]["total"].as_u64().unwrap() > 0);
    assert!(host["CollectionTime"].as_u64().unwrap() > 0);
    assert_eq!(host["Host"]["hostId"], "", "no machine ID leaves the host");
    agent.shutdown().await;
}

/// What a CLI run gives: exit code, stdout, stderr.
type Outcome = (i32, String, String);

/// Runs the binary with `args`.
fn cli(args: &[&str]) -> Outcome {
    let out = crate::support::process::run(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn maint_and_services_verbs_speak_as_consul_s_cli() {
    let (_agent, http, _) = crate::process::dev_agent(&[]);
    let addr = format!("-http-addr={http}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.json");
    std::fs::write(
        &file,
        r#"{"service": {"id": "web-1", "name": "web", "port": 8080}}"#,
    )
    .unwrap();
    let file = file.display().to_string();
    let ok = |out: &str| (0, out.to_owned(), String::new());

    let steps: Vec<(Vec<&str>, Outcome)> = vec![
        (
            vec!["services", "register", &addr, &file],
            ok("Registered service: web\n"),
        ),
        (vec!["maint", &addr], ok("")),
        (
            vec!["maint", "-enable", "-service", "web-1", "-reason", "deploy", &addr],
            ok("Service maintenance is now enabled for \"web-1\"\n"),
        ),
        (
            vec!["maint", "-enable", &addr],
            ok("Node maintenance is now enabled\n"),
        ),
        (
            vec!["maint", &addr],
            ok(&format!(
                "Node:\n  Name:   proc-node\n  Reason: {}\n\nService:\n  ID:     web-1\n  Reason: deploy\n\n",
                lan::DEFAULT_NODE_MAINTENANCE_REASON
            )),
        ),
        (
            vec!["maint", "-enable", "-service", "nope", &addr],
            (
                1,
                String::new(),
                "Error enabling service maintenance: Unexpected response code: 404 (Unknown service ID \"nope\". Ensure that the service ID is passed, not the service name.)\n".into(),
            ),
        ),
        (
            vec!["maint", "-disable", "-reason", "x", &addr],
            (
                1,
                String::new(),
                "Reason may only be provided with -enable\n".into(),
            ),
        ),
        (
            vec!["maint", "-disable", &addr],
            ok("Node maintenance is now disabled\n"),
        ),
        (
            vec!["maint", "-disable", "-service", "web-1", &addr],
            ok("Service maintenance is now disabled for \"web-1\"\n"),
        ),
        (vec!["maint", &addr], ok("")),
        (
            vec!["services", "deregister", &addr, &file],
            ok("Deregistered service: web-1\n"),
        ),
        (
            vec!["services", "register", &addr],
            (
                1,
                String::new(),
                "Service registration requires at least one argument or flags.\n".into(),
            ),
        ),
    ];
    for (args, want) in steps {
        assert_eq!(cli(&args), want, "proconsul {}", args.join(" "));
    }

    // From flags, repeatable ones collecting every value.
    let register = [
        "services", "register", "-name", "api", "-port", "81", "-tag", "v1", "-tag", "v2", "-meta",
        "team=x", &addr,
    ];
    assert_eq!(cli(&register), ok("Registered service: api\n"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, out, _) = cli(&["catalog", "services", "-tags", &addr]);
        if out.contains("api     v1,v2\n") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "api never synced: {out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        cli(&["services", "deregister", "-id", "api", &addr]),
        ok("Deregistered service: api\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_needs_write_and_agent_health_read_under_acls() {
    const MANAGEMENT: &str = "0b7f1c9e-3d2a-4e6f-8a1b-2c3d4e5f6a7b";
    let config = json!({
        "acl": {
            "enabled": true,
            "default_policy": "deny",
            "tokens": {"initial_management": MANAGEMENT, "agent": MANAGEMENT}
        },
        "services": [{"id": "web-1", "name": "web", "port": 8080}],
    })
    .to_string();
    let cluster = crate::support::cluster::Cluster::start(0, |s| {
        s.config = Some(config.clone());
    })
    .await;
    let m = cluster.server();
    let put = |path: String, body: String| async move {
        let r = m.call(hyper::Method::PUT, &path, &body).await;
        (r.status, r.body)
    };
    let token = |rules: &'static str, name: &'static str| {
        let put = &put;
        async move {
            eventually(
                secs(30),
                "a policy made with the management token",
                || async {
                    let body = json!({"Name": name, "Rules": rules}).to_string();
                    match put(format!("/v1/acl/policy?token={MANAGEMENT}"), body).await {
                        (200, _) => Ok(()),
                        (status, text) => Err(format!("{status} {text}")),
                    }
                },
            )
            .await;
            let body = json!({"Policies": [{"Name": name}]}).to_string();
            let (status, text) = put(format!("/v1/acl/token?token={MANAGEMENT}"), body).await;
            assert_eq!(status, 200, "{text}");
            let token: Value = serde_json::from_str(&text).unwrap();
            token["SecretID"].as_str().unwrap().to_owned()
        }
    };
    let reader = token(
        "service \"web\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }",
        "reader",
    )
    .await;
    let writer = token(
        "service \"web\" { policy = \"write\" }\nnode_prefix \"\" { policy = \"write\" }\noperator = \"read\"",
        "writer",
    )
    .await;
    let status = |path: &str, method: hyper::Method, token: &str| {
        let path = format!(
            "{path}{}token={token}",
            if path.contains('?') { "&" } else { "?" }
        );
        async move { m.call(method, &path, "").await.status }
    };
    use hyper::Method;
    let cases = [
        (
            "/v1/agent/maintenance?enable=true",
            Method::PUT,
            &reader,
            403,
        ),
        (
            "/v1/agent/service/maintenance/web-1?enable=true",
            Method::PUT,
            &reader,
            403,
        ),
        ("/v1/agent/host", Method::GET, &reader, 403),
        (
            "/v1/agent/health/service/id/web-1",
            Method::GET,
            &reader,
            200,
        ),
        (
            "/v1/agent/health/service/name/web",
            Method::GET,
            &reader,
            200,
        ),
        (
            "/v1/agent/maintenance?enable=true",
            Method::PUT,
            &writer,
            200,
        ),
        (
            "/v1/agent/service/maintenance/web-1?enable=true",
            Method::PUT,
            &writer,
            200,
        ),
        ("/v1/agent/host", Method::GET, &writer, 200),
        (
            "/v1/agent/health/service/id/web-1",
            Method::GET,
            &reader,
            503,
        ),
        (
            "/v1/agent/health/service/name/web",
            Method::GET,
            &String::new(),
            403,
        ),
        ("/v1/agent/version", Method::GET, &String::new(), 200),
    ];
    for (path, method, token, want) in cases {
        assert_eq!(
            status(path, method.clone(), token).await,
            want,
            "{method} {path}"
        );
    }
}
