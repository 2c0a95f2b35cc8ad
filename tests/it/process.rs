//! The real binary: `agent -dev` as a process, driven by its own CLI verbs, by `dig`, and
//! by python-consul (Debian's `python3-consul`), a Consul client we did not write.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::support::process::{Proc, binary, run};

/// Starts `agent -dev` on OS-chosen ports; returns the process and its HTTP and DNS
/// addresses.
pub(crate) fn dev_agent(extra: &[&str]) -> (Proc, String, String) {
    let mut args = vec![
        "agent",
        "-dev",
        "-http-port=0",
        "-server-port=0",
        "-serf-lan-port=0",
        "-dns-port",
        "0",
        "-node=proc-node",
        "-log-level=info",
    ];
    args.extend_from_slice(extra);
    let p = Proc::spawn(&args);
    let http = p.listening("http").to_string();
    let dns = p.listening("dns-udp").to_string();
    // Wait until the agent has registered itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = run(&["catalog", "services", &format!("-http-addr={http}")]);
        if String::from_utf8_lossy(&out.stdout).contains("consul") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent never registered itself:\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, http, dns)
}

pub(crate) fn text(out: &std::process::Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_and_help_list_what_exists() {
    let (code, out, _) = text(&run(&["version"]));
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("proconsul v{}\n", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(out.contains("Protocol 2 spoken by default"), "{out}");
    let (code, out, _) = text(&run(&["-help"]));
    assert_eq!(code, 0);
    for verb in [
        "agent", "catalog", "kv", "leave", "members", "reload", "validate", "version", "watch",
    ] {
        assert!(out.contains(verb), "{verb} in help:\n{out}");
    }
    let (code, _, err) = text(&run(&["agent", "-no-such-flag"]));
    assert_eq!(code, 1);
    assert!(err.contains("no-such-flag"), "{err}");
}

#[test]
fn cli_verbs_work_against_a_running_agent_and_sigterm_exits_cleanly() {
    let (mut p, http, _dns) = dev_agent(&[]);
    let banner = p.wait_for_line(Duration::from_secs(5), |l| l.contains("Node name:"));
    assert!(banner.contains("'proc-node'"), "{banner}");
    let addr = format!("-http-addr={http}");

    let (code, out, err) = text(&run(&["members", &addr]));
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "Node", "Address", "Status", "Type", "Build", "Protocol", "DC"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[0], "proc-node");
    assert_eq!(row[2], "alive");
    assert_eq!(row[3], "server");
    assert_eq!(row[6], "dc1");
    let (code, out, _) = text(&run(&["members", "-detailed", &addr]));
    assert_eq!(code, 0);
    assert!(out.contains("role=consul"), "{out}");
    let (code, _, _) = text(&run(&["members", "-status=failed", &addr]));
    assert_eq!(code, 2, "no member matches: exit 2");

    // CONSUL_HTTP_ADDR works as -http-addr.
    let out = Command::new(binary())
        .args(["catalog", "nodes"])
        .env("CONSUL_HTTP_ADDR", &http)
        .output()
        .unwrap();
    let (code, out, err) = text(&out);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Node"), "{out}");
    assert!(out.contains("proc-node"), "{out}");
    let (_, out, _) = text(&run(&["catalog", "datacenters", &addr]));
    assert_eq!(out, "dc1\n");

    // Raft and agent figures.
    let (code, out, err) = text(&run(&["operator", "raft", "list-peers", &addr]));
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["Node", "ID", "Address", "State", "Voter", "RaftProtocol"]
    );
    assert_eq!(rows[1][0], "proc-node");
    assert_eq!(rows[1][3], "leader");
    assert_eq!(rows[1][4], "true");
    // A peer that is not in the configuration: Consul's text, exit 1, nothing removed.
    let (code, _, err) = text(&run(&[
        "operator",
        "raft",
        "remove-peer",
        "-address=127.0.0.1:1",
        &addr,
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(r#"address "127.0.0.1:1" was not found in the Raft configuration"#),
        "{err}"
    );
    let (code, _, err) = text(&run(&["operator", "raft", "remove-peer", &addr]));
    assert_eq!(code, 1, "neither -id nor -address: {err}");
    let (code, out, _) = text(&run(&["operator", "raft", "list-peers", &addr]));
    assert_eq!(code, 0);
    assert!(out.contains("proc-node"), "{out}");
    let (code, out, err) = text(&run(&["info", &addr]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("consul:\n"), "{out}");
    assert!(out.contains("\tleader = true\n"), "{out}");
    assert!(out.contains("serf_lan:\n"), "{out}");
    assert!(out.contains("\tmembers = 1\n"), "{out}");

    // snapshot save, a change, snapshot restore: the change is undone.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.snap");
    let file_text = file.display().to_string();
    let (code, out, err) = text(&run(&["snapshot", "save", &addr, &file_text]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("Saved and verified snapshot to index "),
        "{out}"
    );
    let register = r#"{"Node": "later", "Address": "10.1.1.1"}"#;
    let r = get_or_put(
        &http,
        hyper::Method::PUT,
        "/v1/catalog/register",
        Some(register),
    );
    assert_eq!(r, 200);
    let (_, out, _) = text(&run(&["catalog", "nodes", &addr]));
    assert!(out.contains("later"), "{out}");
    let first_row = |out: &str| out.lines().nth(1).unwrap_or("").to_owned();
    assert!(first_row(&out).starts_with("later"), "{out}");
    // The agent's node has a network coordinate and `later` none: nearest first.
    let (code, out, err) = text(&run(&["catalog", "nodes", "-near=_agent", &addr]));
    assert_eq!(code, 0, "{err}");
    assert!(first_row(&out).starts_with("proc-node"), "{out}");
    let (code, out, err) = text(&run(&["snapshot", "restore", &addr, &file_text]));
    assert_eq!((code, out.as_str()), (0, "Restored snapshot\n"), "{err}");
    let (_, out, _) = text(&run(&["catalog", "nodes", &addr]));
    assert!(!out.contains("later") && out.contains("proc-node"), "{out}");
    std::fs::write(&file, "{\"not\": \"a snapshot\"}").unwrap();
    let (code, _, err) = text(&run(&["snapshot", "restore", &addr, &file_text]));
    assert_eq!(code, 1);
    assert!(err.contains("not a snapshot file"), "{err}");

    p.signal("TERM");
    let status = p.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", p.output());
    let (code, _, err) = text(&run(&["members", &addr]));
    assert_eq!(code, 1);
    assert!(err.contains("Error"), "{err}");
}

#[test]
fn leave_stops_the_agent() {
    let (mut p, http, _) = dev_agent(&[]);
    let (code, out, err) = text(&run(&["leave", &format!("-http-addr={http}")]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "Graceful leave complete\n");
    assert_eq!(p.wait(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn interrupt_exits_cleanly() {
    let (mut p, _, _) = dev_agent(&[]);
    p.signal("INT");
    assert_eq!(
        p.wait(Duration::from_secs(10)).code(),
        Some(0),
        "{}",
        p.output()
    );
}

#[test]
fn config_dir_services_are_served_to_dig() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("web.json"),
        r#"{"service": {"name": "web", "tags": ["rails"], "port": 80}}"#,
    )
    .unwrap();
    let config_dir = format!("-config-dir={}", dir.path().display());
    let (p, _http, dns) = dev_agent(&[&config_dir]);
    let (host, port) = dns.rsplit_once(':').unwrap();
    let dig = |args: &[&str]| {
        let out = Command::new("dig")
            .args([
                &format!("@{host}"),
                "-p",
                port,
                "+short",
                "+time=2",
                "+tries=1",
            ])
            .args(args)
            .output()
            .expect("dig is needed for this test: apt-get install dnsutils");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while dig(&["web.service.consul"]).trim() != "127.0.0.1" {
        assert!(
            std::time::Instant::now() < deadline,
            "web never answered:\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        dig(&["web.service.consul", "SRV"]).trim(),
        "1 1 80 proc-node.node.dc1.consul."
    );
    assert_eq!(dig(&["rails.web.service.consul"]).trim(), "127.0.0.1");
    assert_eq!(dig(&["proc-node.node.consul"]).trim(), "127.0.0.1");
    let out = Command::new("dig")
        .args([
            &format!("@{host}"),
            "-p",
            port,
            "+time=2",
            "+tries=1",
            "nope.service.consul",
        ])
        .output()
        .unwrap();
    let full = String::from_utf8_lossy(&out.stdout);
    assert!(full.contains("status: NXDOMAIN"), "{full}");
    assert!(full.contains("hostmaster.consul."), "{full}");
    let tcp = Command::new("dig")
        .args([
            &format!("@{host}"),
            "-p",
            port,
            "+tcp",
            "+short",
            "web.service.consul",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&tcp.stdout).trim(), "127.0.0.1");
}

/// A Python interpreter with Debian's python3-consul, which is what CI installs.
fn python_with_consul() -> String {
    for candidate in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(candidate)
            .args(["-c", "import consul"])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return candidate.to_owned();
        }
    }
    panic!("this test needs python3-consul: apt-get install python3-consul");
}

#[test]
fn python_consul_client_sees_consul_shapes() {
    let python = python_with_consul();
    let (_p, http, _) = dev_agent(&[]);
    let (host, port) = http.rsplit_once(':').unwrap();
    let script = r#"
import json, sys, time
import consul
c = consul.Consul(host=sys.argv[1], port=int(sys.argv[2]))
out = {}
out["leader"] = c.status.leader()
out["peers"] = c.status.peers()
out["register"] = c.agent.service.register("web", service_id="web1", port=8080, tags=["v1"],
                                          check=consul.Check.ttl("30s"))
out["check_pass"] = c.agent.check.register("extra", check=consul.Check.ttl("30s"), check_id="extra-ttl")
deadline = time.time() + 20
while True:
    index, services = c.catalog.service("web")
    if services or time.time() > deadline:
        break
    time.sleep(0.05)
out["catalog_index"] = int(index)
out["catalog_service"] = services
index, nodes = c.catalog.nodes()
out["nodes"] = [n["Node"] for n in nodes]
index, health = c.health.service("web")
out["health_all"] = len(health)
index, passing = c.health.service("web", passing=True)
out["health_passing"] = len(passing)
out["members"] = [m["Name"] for m in c.agent.members()]
out["self_node"] = c.agent.self()["Config"]["NodeName"]
out["datacenters"] = c.catalog.datacenters()
out["agent_services"] = sorted(c.agent.services().keys())
index, checks = c.health.state("critical")
out["critical"] = sorted(ch["CheckID"] for ch in checks)
out["catalog_register"] = c.catalog.register("db-host", "10.1.1.1", service={"Service": "db", "Port": 5432})
index, db = c.catalog.service("db")
out["db"] = [(s["Node"], s["ServiceAddress"], s["ServicePort"]) for s in db]
print(json.dumps(out))
"#;
    let output = Command::new(&python)
        .args(["-c", script, host, port])
        .output()
        .unwrap();
    let (code, out, err) = text(&output);
    assert_eq!(code, 0, "python-consul failed:\n{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // The server port was chosen by the OS (-server-port=0): the leader is this agent.
    assert!(
        v["leader"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{v}"
    );
    assert_eq!(v["peers"][0], v["leader"]);
    assert_eq!(v["peers"].as_array().unwrap().len(), 1);
    assert_eq!(v["register"], true);
    assert_eq!(v["check_pass"], true);
    assert!(v["catalog_index"].as_u64().unwrap() >= 1);
    let svc = &v["catalog_service"][0];
    assert_eq!(svc["ServiceID"], "web1");
    assert_eq!(svc["ServicePort"], 8080);
    assert_eq!(svc["ServiceTags"], serde_json::json!(["v1"]));
    assert_eq!(v["nodes"], serde_json::json!(["proc-node"]));
    assert_eq!(v["health_all"], 1);
    assert_eq!(v["health_passing"], 0, "a new TTL check starts critical");
    assert_eq!(v["members"], serde_json::json!(["proc-node"]));
    assert_eq!(v["self_node"], "proc-node");
    assert_eq!(v["datacenters"], serde_json::json!(["dc1"]));
    assert_eq!(v["agent_services"], serde_json::json!(["web1"]));
    assert_eq!(v["catalog_register"], true);
    assert_eq!(v["db"], serde_json::json!([["db-host", "", 5432]]));
}

/// A Python interpreter with py-consul (the maintained Consul client on PyPI): the one in
/// `$PY_CONSUL_PYTHON`, else the virtualenv `.ci/run` makes (`.venv-py-consul`).
pub(crate) fn python_with_py_consul() -> String {
    let python = std::env::var("PY_CONSUL_PYTHON")
        .unwrap_or_else(|_| format!("{}/.venv-py-consul/bin/python", env!("CARGO_MANIFEST_DIR")));
    let ok = Command::new(&python)
        .args(["-c", "import consul.api.kv"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "this test needs py-consul: python3 -m venv .venv-py-consul && \
         .venv-py-consul/bin/pip install py-consul (or set PY_CONSUL_PYTHON)"
    );
    python
}

#[test]
fn py_consul_drives_the_key_value_store() {
    let python = python_with_py_consul();
    let (_p, http, _) = dev_agent(&[]);
    let (host, port) = http.rsplit_once(':').unwrap();
    let script = r#"
import json, sys, threading
import consul
c = consul.Consul(host=sys.argv[1], port=int(sys.argv[2]))
out = {}
out["put"] = c.kv.put("app/config/db", "postgres://db:5432", flags=7)
index, entry = c.kv.get("app/config/db")
out["get"] = [entry["Key"], entry["Value"].decode(), entry["Flags"]]
out["missing"] = c.kv.get("no/such/key")[1]
out["cas_create_again"] = c.kv.put("app/config/db", "x", cas=0)
out["cas_stale"] = c.kv.put("app/config/db", "x", cas=entry["ModifyIndex"] + 1000)
out["cas_ok"] = c.kv.put("app/config/db", "mysql://db:3306", cas=entry["ModifyIndex"])
c.kv.put("app/config/cache", "redis")
c.kv.put("app/name", "shop")
c.kv.put("app/empty", "")
out["empty"] = c.kv.get("app/empty")[1]["Value"]
index, entries = c.kv.get("app/", recurse=True)
out["recurse"] = [e["Key"] for e in entries]
out["keys"] = c.kv.get("app/", keys=True, separator="/")[1]
# A blocking read of the prefix returns when a key under it is deleted.
result = {}
def watch():
    result["answer"] = c.kv.get("app/", recurse=True, index=index, wait="20s")
t = threading.Thread(target=watch)
t.start()
out["delete"] = c.kv.delete("app/name")
t.join(25)
new_index, after = result["answer"]
out["woke_with_higher_index"] = int(new_index) > int(index)
out["after_delete"] = [e["Key"] for e in after]
out["delete_tree"] = c.kv.delete("app/config/", recurse=True)
out["left"] = c.kv.get("", keys=True)[1]
print(json.dumps(out))
"#;
    let output = Command::new(&python)
        .args(["-c", script, host, port])
        .output()
        .unwrap();
    let (code, out, err) = text(&output);
    assert_eq!(code, 0, "py-consul failed:\n{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let expected = serde_json::json!({
        "put": true,
        "get": ["app/config/db", "postgres://db:5432", 7],
        "missing": null,
        "cas_create_again": false,
        "cas_stale": false,
        "cas_ok": true,
        "empty": null,
        "recurse": ["app/config/cache", "app/config/db", "app/empty", "app/name"],
        "keys": ["app/config/", "app/empty", "app/name"],
        "delete": true,
        "woke_with_higher_index": true,
        "after_delete": ["app/config/cache", "app/config/db", "app/empty"],
        "delete_tree": true,
        "left": ["app/empty"],
    });
    assert_eq!(v, expected);
}

/// Runs `proconsul kv VERB -http-addr=HTTP REST…` (`-http-addr` first, as flags must
/// come before arguments), feeding it `stdin`; returns the exit code, stdout (bytes) and
/// stderr.
fn kv_with_stdin(http: &str, args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    use std::io::Write;
    let addr = format!("-http-addr={http}");
    let (verb, rest) = args.split_first().unwrap();
    let mut child = Command::new(binary())
        .arg("kv")
        .arg(verb)
        .arg(&addr)
        .args(rest)
        .env_remove("CONSUL_HTTP_ADDR")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `proconsul kv ARGS…` against the agent at `http`: exit code, stdout, stderr.
fn kv(http: &str, args: &[&str]) -> (i32, String, String) {
    let (code, out, err) = kv_with_stdin(http, args, b"");
    (code, String::from_utf8_lossy(&out).into_owned(), err)
}

/// The ModifyIndex `kv get -detailed` shows for `key`.
fn modify_index(http: &str, key: &str) -> u64 {
    let (code, out, err) = kv(http, &["get", "-detailed", key]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .find_map(|l| l.strip_prefix("ModifyIndex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn kv_verbs_put_get_and_delete_with_consul_s_lines_and_exit_codes() {
    let (_p, http, _) = dev_agent(&[]);
    let ok = |line: &str| (0, format!("{line}\n"), String::new());
    let fail = |line: &str| (1, String::new(), format!("{line}\n"));

    assert_eq!(
        kv(&http, &["put", "app/name", "proconsul"]),
        ok("Success! Data written to: app/name")
    );
    assert_eq!(kv(&http, &["get", "app/name"]), ok("proconsul"));
    assert_eq!(kv(&http, &["get", "/app/name"]), ok("proconsul"));
    let index = modify_index(&http, "app/name");
    let (code, out, _) = kv(&http, &["get", "-detailed", "app/name"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!(
            "CreateIndex      {index}\nFlags            0\nKey              app/name\n\
             LockIndex        0\nModifyIndex      {index}\nSession          -\n\
             Value            proconsul\n"
        )
    );
    assert_eq!(
        kv(&http, &["get", "app/nope"]),
        fail("Error! No key exists at: app/nope")
    );

    // Check-and-set, on put and delete.
    assert_eq!(
        kv(&http, &["put", "-cas", "-modify-index=0", "app/name", "x"]),
        fail(
            "Error! Did not write to app/name: CAS performed with index=0 and key already exists."
        )
    );
    let stale = (index + 1000).to_string();
    assert_eq!(
        kv(
            &http,
            &["put", "-cas", "-modify-index", &stale, "app/name", "x"]
        ),
        fail("Error! Did not write to app/name: CAS failed")
    );
    let current = format!("-modify-index={index}");
    assert_eq!(
        kv(&http, &["put", "-cas", &current, "app/name", "v2"]),
        ok("Success! Data written to: app/name")
    );
    assert_eq!(kv(&http, &["get", "app/name"]), ok("v2"));
    assert_eq!(
        kv(&http, &["put", "-cas", "-modify-index=0", "app/new", "n"]),
        ok("Success! Data written to: app/new")
    );
    assert_eq!(
        kv(&http, &["delete", "-cas", &current, "app/name"]),
        fail("Error! Did not delete key app/name: CAS failed")
    );
    let current = format!("-modify-index={}", modify_index(&http, "app/name"));
    assert_eq!(
        kv(&http, &["delete", "-cas", &current, "app/name"]),
        ok("Success! Deleted key: app/name")
    );
    assert_eq!(
        kv(&http, &["delete", "app/name"]),
        ok("Success! Deleted key: app/name"),
        "an absent key is no error"
    );

    // Flags, stdin and files; -recurse, -keys with and without a separator.
    assert_eq!(kv(&http, &["put", "-flags=42", "app/config/db", "pg"]).0, 0);
    let (code, _, err) = kv_with_stdin(&http, &["put", "app/config/cache", "-"], b"redis");
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("value.txt");
    std::fs::write(&file, "from a file").unwrap();
    let at_file = format!("@{}", file.display());
    assert_eq!(kv(&http, &["put", "app/file", &at_file]).0, 0);
    assert_eq!(kv(&http, &["put", "app/dash", "-x"]).0, 0, "-x is data");
    assert_eq!(
        kv(&http, &["get", "-recurse", "app/"]),
        ok(
            "app/config/cache:redis\napp/config/db:pg\napp/dash:-x\napp/file:from a file\napp/new:n"
        )
    );
    assert_eq!(
        kv(&http, &["get", "-keys", "app/"]),
        ok("app/config/\napp/dash\napp/file\napp/new")
    );
    assert_eq!(
        kv(&http, &["get", "-keys", "-separator=", "app/c"]),
        ok("app/config/cache\napp/config/db")
    );
    assert_eq!(
        kv(&http, &["get", "-keys", "-recurse", "app/config"]),
        ok("app/config/cache\napp/config/db")
    );
    let (code, out, _) = kv(&http, &["get", "-recurse", "-detailed", "app/config/"]);
    assert_eq!(code, 0);
    let blocks: Vec<&str> = out.split("\n\n").collect();
    assert_eq!(blocks.len(), 2, "{out}");
    assert!(
        blocks[0].contains("Key              app/config/cache\n"),
        "{out}"
    );
    assert!(blocks[1].contains("Flags            42\n"), "{out}");
    assert!(blocks[1].ends_with("Value            pg\n"), "{out}");
    assert_eq!(
        kv(&http, &["get", "-recurse", "nothing/"]),
        (0, String::new(), String::new())
    );

    // Binary data through -base64, both ways.
    assert_eq!(kv(&http, &["put", "-base64", "bin", "AP8BCg=="]).0, 0);
    assert_eq!(kv(&http, &["get", "-base64", "bin"]), ok("AP8BCg=="));
    let (code, raw, _) = kv_with_stdin(&http, &["get", "bin"], b"");
    assert_eq!((code, raw), (0, vec![0, 255, 1, b'\n', b'\n']));
    assert!(
        kv(&http, &["get", "-detailed", "-base64", "bin"])
            .1
            .ends_with("\nValue            AP8BCg==\n")
    );
    let (code, _, err) = kv(&http, &["put", "-base64", "bin", "not base64!"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("Error! Cannot base 64 decode data: "),
        "{err}"
    );

    assert_eq!(
        kv(&http, &["delete", "-recurse", "app/"]),
        ok("Success! Deleted keys with prefix: app/")
    );
    assert_eq!(kv(&http, &["get", "-keys"]), ok("bin"));

    // Usage errors, and a lock for a session that does not exist.
    assert_eq!(kv(&http, &["get"]), fail("Error! Missing KEY argument"));
    assert_eq!(
        kv(&http, &["get", "a", "-detailed"]),
        fail("Too many arguments (expected 1, got 2)"),
        "flags come before arguments, as in Consul"
    );
    assert_eq!(
        kv(&http, &["delete", "-modify-index=3", "k"]),
        fail("Cannot specify -modify-index without -cas!")
    );
    let (code, _, err) = kv(&http, &["put", "-acquire", "-session=s1", "k", "v"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid session \"s1\""), "{err}");
    assert_eq!(kv(&http, &["get", "k"]).0, 1, "nothing was written");
    let (code, _, err) = kv(&http, &["get", "-no-such-flag", "k"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no-such-flag") && err.contains("Usage"),
        "{err}"
    );
    assert_eq!(kv(&http, &["get", "-stale", "-datacenter=dc1", "bin"]).0, 0);
    assert_eq!(
        kv(&http, &["get", "-datacenter=dc9", "bin"]),
        fail("Error querying Consul agent: Unexpected response code: 500 (No path to datacenter)")
    );
}

#[test]
fn kv_export_then_import_restores_every_key_with_its_flags_and_bytes() {
    let (_p, http, _) = dev_agent(&[]);
    assert_eq!(kv(&http, &["put", "-flags=7", "app/name", "shop"]).0, 0);
    assert_eq!(kv(&http, &["put", "-base64", "app/bin", "AP8B"]).0, 0);
    assert_eq!(kv(&http, &["put", "app/folder/"]).0, 0);
    assert_eq!(kv(&http, &["put", "zz", "outside"]).0, 0);

    let (code, exported, err) = kv(&http, &["export", "app/"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        exported,
        "[\n\t{\n\t\t\"key\": \"app/bin\",\n\t\t\"flags\": 0,\n\t\t\"value\": \"AP8B\"\n\t},\n\
         \t{\n\t\t\"key\": \"app/folder/\",\n\t\t\"flags\": 0,\n\t\t\"value\": \"\"\n\t},\n\
         \t{\n\t\t\"key\": \"app/name\",\n\t\t\"flags\": 7,\n\t\t\"value\": \"c2hvcA==\"\n\t}\n]\n"
    );
    assert_eq!(
        kv(&http, &["export", "none/"]),
        (0, "[]\n".into(), String::new())
    );

    assert_eq!(kv(&http, &["delete", "-recurse", "app/"]).0, 0);
    assert_eq!(
        kv(&http, &["get", "-keys", "app/"]),
        (0, String::new(), String::new())
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    std::fs::write(&file, &exported).unwrap();
    let (code, out, err) = kv(&http, &["import", &format!("@{}", file.display())]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "Imported: app/bin\nImported: app/folder/\nImported: app/name\n"
    );
    let (_, again, _) = kv(&http, &["export", "app/"]);
    assert_eq!(again, exported, "the same keys, flags and values");

    // From stdin under a prefix; the folder keeps its slash.
    let (code, out, err) =
        kv_with_stdin(&http, &["import", "-prefix=copy", "-"], exported.as_bytes());
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "Imported: copy/app/bin\nImported: copy/app/folder/\nImported: copy/app/name\n"
    );
    let (_, out, _) = kv(&http, &["get", "-detailed", "copy/app/name"]);
    assert!(out.contains("Flags            7\n") && out.ends_with("Value            shop\n"));

    // Bad input stops before or at the bad entry.
    let (code, _, err) = kv(&http, &["import", "not json"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("Cannot unmarshal data: "), "{err}");
    let (code, out, err) = kv(
        &http,
        &[
            "import",
            r#"[{"key": "ok", "value": ""}, {"key": "bad", "value": "%%"}]"#,
        ],
    );
    assert_eq!((code, out.as_str()), (1, "Imported: ok\n"));
    assert_eq!(
        err,
        "Error base 64 decoding value for key bad: illegal base64 data at input byte 0\n"
    );
    assert_eq!(
        kv(&http, &["import"]),
        (1, String::new(), "Error! Missing DATA argument\n".into())
    );
}

#[test]
fn py_consul_drives_sessions_locks_and_transactions() {
    let python = python_with_py_consul();
    let (_p, http, _) = dev_agent(&[]);
    let (host, port) = http.rsplit_once(':').unwrap();
    let script = r#"
import base64, json, sys
import consul
c = consul.Consul(host=sys.argv[1], port=int(sys.argv[2]))
out = {}
a = c.session.create(name="a", lock_delay=0, ttl=30)
b = c.session.create(name="b", behavior="delete")
index, info = c.session.info(a)
out["info"] = [info["Name"], info["TTL"], info["Behavior"], info["Node"]]
out["list"] = sorted(s["Name"] for s in c.session.list()[1])
out["node"] = sorted(s["Name"] for s in c.session.node("proc-node")[1])
out["acquire_a"] = c.kv.put("service/leader", "a", acquire=a)
out["acquire_b"] = c.kv.put("service/leader", "b", acquire=b)
entry = c.kv.get("service/leader")[1]
out["holder_is_a"] = entry["Session"] == a
out["lock_index"] = entry["LockIndex"]
out["renew"] = c.session.renew(a)["ID"] == a
out["release_a"] = c.kv.put("service/leader", "free", release=a)
out["acquire_b_after"] = c.kv.put("service/leader", "b", acquire=b)
c.session.destroy(b)
out["deleted_with_b"] = c.kv.get("service/leader")[1]
out["info_after_destroy"] = c.session.info(b)[1]
enc = lambda s: base64.b64encode(s.encode()).decode()
ok = c.txn.put([
    {"KV": {"Verb": "set", "Key": "txn/x", "Value": enc("1")}},
    {"KV": {"Verb": "set", "Key": "txn/y", "Value": enc("2")}},
    {"KV": {"Verb": "get", "Key": "txn/x"}},
])
out["txn_ok"] = [r["KV"]["Key"] for r in ok["Results"]]
try:
    c.txn.put([
        {"KV": {"Verb": "delete", "Key": "txn/x"}},
        {"KV": {"Verb": "check-index", "Key": "txn/y", "Index": 1}},
    ])
    out["txn_conflict"] = "no error"
except Exception as e:
    out["txn_conflict"] = type(e).__name__
out["after_rollback"] = c.kv.get("txn/", keys=True)[1]
print(json.dumps(out))
"#;
    let output = Command::new(&python)
        .args(["-c", script, host, port])
        .output()
        .unwrap();
    let (code, out, err) = text(&output);
    assert_eq!(code, 0, "py-consul failed:\n{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let expected = serde_json::json!({
        "info": ["a", "30s", "release", "proc-node"],
        "list": ["a", "b"],
        "node": ["a", "b"],
        "acquire_a": true,
        "acquire_b": false,
        "holder_is_a": true,
        "lock_index": 1,
        "renew": true,
        "release_a": true,
        "acquire_b_after": true,
        "deleted_with_b": null,
        "info_after_destroy": null,
        "txn_ok": ["txn/x", "txn/y", "txn/x"],
        "txn_conflict": "ClientError",
        "after_rollback": ["txn/x", "txn/y"],
    });
    assert_eq!(v, expected);
}

#[test]
fn validate_names_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        r#"{"service": {"name": "web", "port": 80, "check": {"ttl": "10s"}}}"#,
    )
    .unwrap();
    let (code, out, _) = text(&run(&["validate", good.to_str().unwrap()]));
    assert_eq!((code, out.as_str()), (0, "Configuration is valid!\n"));

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"services": [{"name": "web", "port": 80, "chekcs": []}]}"#,
    )
    .unwrap();
    let (code, _, err) = text(&run(&["validate", dir.path().to_str().unwrap()]));
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.json: services[0].chekcs: unknown key"),
        "{err}"
    );

    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"ports": {"dns": "x"}"#).unwrap();
    let (code, _, err) = text(&run(&["validate", broken.to_str().unwrap()]));
    assert_eq!(code, 1);
    assert!(err.contains("broken.json: ports.dns"), "{err}");
}

#[test]
fn an_agent_reads_encryption_and_services_from_hcl_files_in_its_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key, _) = text(&run(&["keygen"]));
    let key = key.trim();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    // JSON and HCL side by side, read in lexical order; the key and the service are only
    // in HCL files, and a file of another kind is skipped with Consul's warning.
    write("00-meta.json", r#"{"node_meta": {"from": "json"}}"#);
    write("10-gossip.hcl", &format!("# gossip\nencrypt = \"{key}\"\n"));
    write(
        "20-web.hcl",
        "service {\n  name = \"web\"\n  port = 8080\n  tags = [\"hcl\"]\n  check {\n    ttl = \"30s\"\n  }\n}\n",
    );
    write("notes.txt", "not configuration");
    let config_dir = format!("-config-dir={}", dir.path().display());
    let (code, _, err) = text(&run(&["validate", &dir.path().display().to_string()]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("notes.txt, extension must be .hcl or .json, or config format must be set"),
        "{err}"
    );

    let (p, http, _) = dev_agent(&[&config_dir, "-hcl=node_meta { via = \"flag\" }"]);
    let banner = p.wait_for_line(Duration::from_secs(5), |l| l.contains("Gossip Encryption:"));
    assert!(
        banner.trim_end().ends_with("Gossip Encryption: true"),
        "{banner}"
    );
    let warning = p.wait_for_line(Duration::from_secs(5), |l| l.contains("skipping file"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("notes.txt"), "{warning}");

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let web = loop {
        let web = get_json(&http, "/v1/catalog/service/web");
        if let Some(web) = web.filter(|w| w.as_array().is_some_and(|a| !a.is_empty())) {
            break web;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "web never reached the catalog:\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(web[0]["ServicePort"], 8080, "{web}");
    assert_eq!(web[0]["ServiceTags"], serde_json::json!(["hcl"]), "{web}");
    let node = get_json(&http, "/v1/catalog/node/proc-node").unwrap();
    let meta = &node["Node"]["Meta"];
    assert_eq!(
        (&meta["from"], &meta["via"]),
        (&"json".into(), &"flag".into()),
        "{node}"
    );
}

#[test]
fn a_malformed_hcl_file_stops_the_agent_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.hcl"),
        "datacenter = \"dc1\"\nports {\n  htpp = 1\n}\n",
    )
    .unwrap();
    let out = run(&[
        "agent",
        "-dev",
        &format!("-config-dir={}", dir.path().display()),
    ]);
    let (code, _, err) = text(&out);
    assert_eq!(code, 1);
    assert!(err.contains("a.hcl:3: ports.htpp: unknown field"), "{err}");
}

#[test]
fn a_broken_config_file_stops_the_agent_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.json"), r#"{"datacenter": "Not Valid!"}"#).unwrap();
    let out = run(&[
        "agent",
        "-dev",
        &format!("-config-dir={}", dir.path().display()),
    ]);
    let (code, _, err) = text(&out);
    assert_eq!(code, 1);
    assert!(err.contains("a.json: datacenter:"), "{err}");
}

/// Runs `f` in a fresh network namespace when the test runs as root with `ip`; the
/// namespace is removed afterwards, even if `f` panics.
fn in_netns(name: &str, setup: &[&str], f: impl FnOnce(&str)) {
    struct Guard(String);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let ns = format!("{name}-{}", std::process::id());
    let created = Command::new("ip")
        .args(["netns", "add", &ns])
        .output()
        .is_ok_and(|o| o.status.success());
    if !created {
        println!("skipped: creating a network namespace needs root and iproute2");
        return;
    }
    let _guard = Guard(ns.clone());
    for cmd in setup {
        let args: Vec<&str> = ["netns", "exec", &ns]
            .into_iter()
            .chain(cmd.split_whitespace())
            .collect();
        let status = Command::new("ip").args(&args).status().unwrap();
        assert!(status.success(), "{cmd}");
    }
    f(&ns);
}

#[test]
fn the_agent_refuses_to_guess_between_private_addresses() {
    in_netns(
        "proconsul-bind",
        &[
            "ip link set lo up",
            "ip link add d1 type veth peer name d2",
            "ip addr add 10.10.0.1/24 dev d1",
            "ip addr add 192.168.7.1/24 dev d2",
            "ip link set d1 up",
            "ip link set d2 up",
        ],
        |ns| {
            let dir = tempfile::tempdir().unwrap();
            let data = format!("-data-dir={}", dir.path().display());
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    binary(),
                    "agent",
                    "-server",
                    "-bootstrap-expect=1",
                    &data,
                    "-http-port=0",
                    "-server-port=0",
                    "-serf-lan-port=0",
                    "-dns-port=0",
                ])
                .output()
                .unwrap();
            let (code, _, err) = text(&out);
            assert_eq!(code, 1, "{err}");
            assert!(
                err.contains("Multiple private IPv4 addresses found"),
                "{err}"
            );
            assert!(
                err.contains("10.10.0.1") && err.contains("192.168.7.1"),
                "{err}"
            );
        },
    );
}

#[test]
fn a_single_private_address_is_chosen_and_the_node_id_kept() {
    in_netns(
        "proconsul-bind1",
        &[
            "ip link set lo up",
            "ip link add d1 type veth peer name d2",
            "ip addr add 10.20.0.5/24 dev d1",
            "ip link set d1 up",
        ],
        |ns| {
            let dir = tempfile::tempdir().unwrap();
            let data = format!("-data-dir={}", dir.path().display());
            let start = || {
                Proc::spawn_in(
                    ns,
                    &[
                        "agent",
                        "-server",
                        "-bootstrap-expect=1",
                        &data,
                        "-http-port=0",
                        "-server-port=0",
                        "-serf-lan-port=0",
                        "-dns-port=0",
                        "-node=ns-node",
                    ],
                )
            };
            let mut p = start();
            let line = p.wait_for_line(Duration::from_secs(20), |l| l.contains("Cluster Addr:"));
            assert!(line.contains("10.20.0.5"), "{line}");
            let id_line = p.wait_for_line(Duration::from_secs(5), |l| l.contains("Node ID:"));
            p.signal("TERM");
            assert_eq!(p.wait(Duration::from_secs(10)).code(), Some(0));
            let saved = std::fs::read_to_string(dir.path().join("node-id")).unwrap();
            assert!(id_line.contains(saved.trim()), "{id_line} vs {saved}");
            let mut p = start();
            let again = p.wait_for_line(Duration::from_secs(20), |l| l.contains("Node ID:"));
            assert_eq!(again, id_line, "the node ID survives a restart");
            p.signal("TERM");
            assert_eq!(p.wait(Duration::from_secs(10)).code(), Some(0));
        },
    );
}

#[test]
fn sighup_reloads_config_files_and_node_meta_is_served() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.json"),
        r#"{"service": {"name": "before"}}"#,
    )
    .unwrap();
    let config_dir = format!("-config-dir={}", dir.path().display());
    let (p, http, _dns) = dev_agent(&[&config_dir, "-node-meta=rack:r1"]);
    let addr = format!("-http-addr={http}");
    let services =
        || String::from_utf8_lossy(&run(&["catalog", "services", &addr]).stdout).into_owned();
    let wait_for = |what: &str, pred: &dyn Fn(&str) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let now = services();
            if pred(&now) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {now}\n{}",
                p.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("before", &|s| s.contains("before"));
    std::fs::write(
        dir.path().join("a.json"),
        r#"{"service": {"name": "after"}}"#,
    )
    .unwrap();
    p.signal("HUP");
    wait_for("after replaces before", &|s| {
        s.contains("after") && !s.contains("before")
    });
    let (code, out, _) = text(&run(&["catalog", "nodes", "-detailed", &addr]));
    assert_eq!(code, 0);
    assert!(out.contains("rack=r1"), "{out}");
}

/// `catalog nodes -service=ext` of a restarted agent, once it answers (within 30 s).
pub(crate) fn ext_listing_after_restart(p: &Proc) -> String {
    let http = p.listening("http").to_string();
    let client_addr = format!("-http-addr={http}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(&["catalog", "nodes", "-service=ext", &client_addr]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !text.is_empty() {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "restarted agent never answered:\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Registers `ext-<i>` through the catalog API until the agent stops answering; returns
/// the IDs it acknowledged.
pub(crate) fn register_until_failure(http: &str, stop_after: usize) -> Vec<usize> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = proconsul::client::Client::new(http).unwrap();
    let mut acknowledged = Vec::new();
    runtime.block_on(async {
        for i in 0..stop_after {
            let body = serde_json::json!({"Node": format!("ext-{i}"), "Address": "10.4.0.1",
                                          "Service": {"Service": "ext", "ID": format!("ext{i}")}});
            match client
                .call(
                    hyper::Method::PUT,
                    "/v1/catalog/register",
                    Some(body.to_string()),
                )
                .await
            {
                Ok(r) if r.status == 200 => acknowledged.push(i),
                _ => break,
            }
        }
    });
    acknowledged
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let data_arg = format!("-data-dir={}", data.path().display());
    let args = [
        "agent",
        "-server",
        "-bootstrap-expect=1",
        "-bind=127.0.0.1",
        &data_arg,
        "-http-port=0",
        "-server-port=0",
        "-serf-lan-port=0",
        "-dns-port=0",
        "-node=durable",
        "-log-level=info",
    ];
    let mut p = Proc::spawn(&args);
    let http = p.listening("http").to_string();
    let writer = {
        let http = http.clone();
        std::thread::spawn(move || register_until_failure(&http, 100_000))
    };
    // Kill the server while writes are in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(&[
            "catalog",
            "nodes",
            "-service=ext",
            &format!("-http-addr={http}"),
        ]);
        if String::from_utf8_lossy(&out.stdout).lines().count() > 50 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "writes did not start:\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p.signal("KILL");
    p.wait(Duration::from_secs(10));
    let acknowledged = writer.join().unwrap();
    // At least 50 writes were visible before the kill; the last ones may have been
    // applied without their acknowledgement reaching the writer.
    assert!(acknowledged.len() > 40, "{}", acknowledged.len());

    let p = Proc::spawn(&args);
    let present = ext_listing_after_restart(&p);
    for i in &acknowledged {
        let name = format!("ext-{i} ");
        assert!(
            present.contains(&name),
            "acknowledged ext-{i} lost after kill -9"
        );
    }
}

/// Whether a table printed by a CLI verb has a row for node `name` (its first column; a
/// node ID elsewhere in a row may end with the same characters).
fn has_row(out: &str, name: &str) -> bool {
    out.lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// Waits until `check` passes on the output of a CLI verb, or fails with the last one.
fn wait_for_cli(args: &[&str], what: &str, check: impl Fn(i32, &str) -> bool) -> String {
    // Generous: failure detection stretches on a loaded machine (Lifeguard backs off).
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (code, out, err) = text(&run(args));
        if check(code, &out) {
            return out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: last answer (exit {code}):\n{out}{err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn five_agent_processes_form_a_datacenter_and_see_kill_9_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = |name: &str| format!("-data-dir={}", dir.path().join(name).display());
    let common = [
        "-bind=127.0.0.1",
        "-client=127.0.0.1",
        "-http-port=0",
        "-dns-port=0",
        "-server-port=0",
        "-serf-lan-port=0",
        "-log-level=info",
    ];
    let mut server_args = vec!["agent", "-server", "-bootstrap-expect=1", "-node=srv"];
    let server_data = data("srv");
    server_args.push(&server_data);
    server_args.extend(common);
    let server = Proc::spawn(&server_args);
    let gossip = server.listening("serf-lan-udp").to_string();
    let server_http = server.listening("http").to_string();
    let join = format!("-join={gossip}");
    let web_dir = dir.path().join("web.d");
    std::fs::create_dir(&web_dir).unwrap();
    std::fs::write(
        web_dir.join("web.json"),
        r#"{"service": {"name": "web", "port": 8080}}"#,
    )
    .unwrap();
    let web_config = format!("-config-dir={}", web_dir.display());
    let mut clients = Vec::new();
    for i in 1..=4 {
        let node = format!("-node=c{i}");
        let client_data = data(&format!("c{i}"));
        let mut args = vec!["agent", node.as_str(), client_data.as_str(), join.as_str()];
        if i == 1 {
            args.push(&web_config);
        }
        args.extend(common);
        let p = Proc::spawn(&args);
        let http = p.listening("http").to_string();
        let dns = p.listening("dns-udp");
        clients.push((p, http, dns));
    }
    let at = |http: &str| format!("-http-addr={http}");

    // Every agent sees five live members, the server first.
    let out = wait_for_cli(
        &["members", &at(&clients[1].1)],
        "five alive members",
        |code, out| code == 0 && out.lines().filter(|l| l.contains(" alive ")).count() == 5,
    );
    let rows: Vec<&str> = out.lines().collect();
    assert!(rows[0].starts_with("Node"), "{out}");
    assert!(
        rows[1].starts_with("srv ") && rows[1].contains("server"),
        "{out}"
    );
    assert_eq!(out.matches(" client ").count(), 4, "{out}");

    // A client's catalog reads and DNS answers come from the server.
    wait_for_cli(
        &["catalog", "services", &at(&clients[2].1)],
        "web in the catalog",
        |code, out| code == 0 && out.lines().any(|l| l == "web"),
    );
    let dns = clients[3].2;
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &dns.port().to_string(),
            "web.service.consul",
            "SRV",
            "+short",
        ])
        .output()
        .expect("dig is needed for this test: apt-get install dnsutils");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains("8080 c1.node.dc1.consul."), "{answer}");

    // kill -9 of c1: the others declare it failed and its service leaves `?passing`.
    clients[0].0.signal("KILL");
    wait_for_cli(
        &["members", "-status=failed", &at(&server_http)],
        "c1 failed",
        |code, out| code == 0 && has_row(out, "c1"),
    );
    wait_for_cli(
        &["catalog", "nodes", "-service=web", &at(&clients[2].1)],
        "web still registered on the failed node",
        |code, out| code == 0 && has_row(out, "c1"),
    );
    // force-leave -prune forgets it for good.
    let (code, _, err) = text(&run(&["force-leave", "-prune", "c1", &at(&server_http)]));
    assert_eq!(code, 0, "{err}");
    wait_for_cli(&["members", &at(&server_http)], "c1 pruned", |code, out| {
        code == 0 && !has_row(out, "c1")
    });
    // ...and the leader removes its node from the catalog.
    wait_for_cli(
        &["catalog", "nodes", &at(&server_http)],
        "c1 deregistered",
        |code, out| code == 0 && !has_row(out, "c1") && has_row(out, "c2"),
    );

    // SIGTERM on a client leaves gracefully (Consul's default for clients) and exits 0.
    clients[1].0.signal("TERM");
    assert!(clients[1].0.wait(Duration::from_secs(15)).success());
    wait_for_cli(
        &["members", "-status=left", &at(&server_http)],
        "c2 left",
        |code, out| code == 0 && has_row(out, "c2"),
    );
}

/// GET `path` on the agent at `http`, as JSON (None while it does not answer 200).
fn get_json(http: &str, path: &str) -> Option<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = proconsul::client::Client::new(http).unwrap();
    runtime.block_on(async {
        let r = client.call(hyper::Method::GET, path, None).await.ok()?;
        (r.status == 200)
            .then(|| serde_json::from_str(&r.body).ok())
            .flatten()
    })
}

/// Registers `ext-<i>` for i = 0, 1, … through `http` until `stop`, carrying on past
/// failures; returns the IDs that were acknowledged.
fn register_while(http: &str, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<usize> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = proconsul::client::Client::new(http).unwrap();
    let mut acknowledged = Vec::new();
    runtime.block_on(async {
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 1_000_000 {
            let body = serde_json::json!({"Node": format!("ext-{i}"), "Address": "10.4.0.1"});
            if let Ok(r) = client
                .call(
                    hyper::Method::PUT,
                    "/v1/catalog/register",
                    Some(body.to_string()),
                )
                .await
                && r.status == 200
            {
                acknowledged.push(i);
            }
            i += 1;
        }
    });
    acknowledged
}

/// The `ext-*` node IDs the agent at `http` holds (a stale read: any server answers).
fn ext_nodes(http: &str) -> Option<std::collections::BTreeSet<usize>> {
    let nodes = get_json(http, "/v1/catalog/nodes?stale")?;
    Some(
        nodes
            .as_array()?
            .iter()
            .filter_map(|n| n["Node"].as_str()?.strip_prefix("ext-")?.parse().ok())
            .collect(),
    )
}

#[test]
fn three_server_processes_keep_every_acknowledged_write_through_a_kill_9_of_the_leader() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let common = [
        "agent",
        "-server",
        "-bootstrap-expect=3",
        "-bind=127.0.0.1",
        "-http-port=0",
        "-dns-port=-1",
        "-server-port=0",
        "-serf-lan-port=0",
        "-log-level=info",
    ];
    let start = |i: usize, join: Option<&str>| {
        let mut args: Vec<String> = common.iter().map(|s| s.to_string()).collect();
        args.push(format!("-node=s{i}"));
        args.push(format!(
            "-data-dir={}",
            dir.path().join(format!("s{i}")).display()
        ));
        if let Some(j) = join {
            args.push(format!("-join={j}"));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = Proc::spawn(&refs);
        let http = p.listening("http").to_string();
        (p, http)
    };
    let first = start(0, None);
    let seed = first.0.listening("serf-lan-udp").to_string();
    let mut servers = vec![first, start(1, Some(&seed)), start(2, Some(&seed))];

    // One leader, three voters.
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    let leader = loop {
        let config = get_json(&servers[0].1, "/v1/operator/raft/configuration");
        let found = config.as_ref().and_then(|c| {
            let list = c["Servers"].as_array()?;
            let voters = list.iter().filter(|s| s["Voter"] == true).count();
            let leader = list.iter().find(|s| s["Leader"] == true)?["Node"].as_str()?;
            (voters == 3).then(|| leader.to_owned())
        });
        if let Some(l) = found {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leader with three voters: {config:?}\n{}",
            servers[0].0.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let leader_at: usize = leader[1..].parse().unwrap();
    let writer_at = (leader_at + 1) % 3;

    // Writes through a follower, which forwards them to the leader; the leader is
    // killed while they are in flight.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (http, stop) = (servers[writer_at].1.clone(), stop.clone());
        std::thread::spawn(move || register_while(&http, stop))
    };
    let wait_for = |http: &str, count: usize, what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if ext_nodes(http).is_some_and(|n| n.len() >= count) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(&servers[writer_at].1, 100, "writes did not start");
    servers[leader_at].0.signal("KILL");
    servers[leader_at].0.wait(Duration::from_secs(10));
    let before = ext_nodes(&servers[writer_at].1).unwrap().len();
    wait_for(
        &servers[writer_at].1,
        before + 100,
        "writes did not resume under a new leader",
    );
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.join().unwrap();
    assert!(acknowledged.len() >= 190, "{}", acknowledged.len());

    // Every acknowledged write is on both survivors, and on the old leader once it is
    // back from its data dir.
    let killed = servers.remove(leader_at);
    drop(killed);
    let back = start(leader_at, Some(&seed_of(&servers)));
    servers.push(back);
    for (p, http) in &servers {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let have = ext_nodes(http).unwrap_or_default();
            let missing: Vec<&usize> = acknowledged.iter().filter(|i| !have.contains(i)).collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} acknowledged writes missing on {http}: {:?}…\n{}",
                missing.len(),
                &missing[..missing.len().min(10)],
                p.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The gossip address of the first of `servers`.
fn seed_of(servers: &[(Proc, String)]) -> String {
    servers[0].0.listening("serf-lan-udp").to_string()
}

/// Sends one request to the agent at `http`; returns the status code.
fn get_or_put(http: &str, method: hyper::Method, path: &str, body: Option<&str>) -> u16 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = proconsul::client::Client::new(http).unwrap();
    runtime.block_on(async {
        client
            .call(method, path, body.map(str::to_owned))
            .await
            .map(|r| r.status)
            .unwrap_or(0)
    })
}

#[test]
fn retry_join_gives_up_after_retry_max_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let data = format!("-data-dir={}", dir.path().display());
    // Nothing listens on port 1 of this address: every attempt fails.
    let mut p = Proc::spawn(&[
        "agent",
        "-node=lonely",
        &data,
        "-bind=127.0.0.1",
        "-http-port=0",
        "-dns-port=-1",
        "-serf-lan-port=0",
        "-retry-join=127.0.0.1:1",
        "-retry-interval=100ms",
        "-retry-max=3",
    ]);
    let status = p.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", p.output());
    assert!(
        p.output().contains("max join retry exhausted"),
        "{}",
        p.output()
    );
}

/// The README's two-datacenter walkthrough, verb for verb: a CA and a server
/// certificate per datacenter, one server in each on its own loopback address with
/// Consul's default ports, `join -wan`, `members -wan`, `catalog datacenters`,
/// `keyring -list` across both pools; then dc2 is killed and comes back from its data dir
/// with no join flag and finds dc1 again.
#[test]
fn two_datacenters_federate_as_the_readme_says() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for args in [
        &["tls", "ca", "create"][..],
        &["tls", "cert", "create", "-server", "-dc", "dc1"],
        &["tls", "cert", "create", "-server", "-dc", "dc2"],
    ] {
        let (code, out, err) = text(&crate::support::process::run_in(d, args));
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    let (_, key, _) = text(&run(&["keygen"]));
    let key = key.trim().to_owned();
    // Addresses of their own, so that Consul's default ports are free on them.
    let base = 200 + (std::process::id() % 50) as u8;
    let ips = [format!("127.{base}.0.11"), format!("127.{base}.0.12")];
    let start = |dc: &str, node: &str, ip: &str, data: &str| {
        let config_dir = d.join(format!("{dc}.d"));
        std::fs::create_dir_all(&config_dir).unwrap();
        let tls = serde_json::json!({
            "ca_file": d.join("consul-agent-ca.pem"),
            "cert_file": d.join(format!("{dc}-server-consul-0.pem")),
            "key_file": d.join(format!("{dc}-server-consul-0-key.pem")),
            "verify_incoming": true,
            "verify_outgoing": true,
            "verify_server_hostname": true,
        });
        std::fs::write(config_dir.join("tls.json"), tls.to_string()).unwrap();
        let p = Proc::spawn(&[
            "agent",
            "-server",
            "-bootstrap-expect=1",
            &format!("-datacenter={dc}"),
            &format!("-node={node}"),
            &format!("-data-dir={}", d.join(data).display()),
            &format!("-bind={ip}"),
            &format!("-client={ip}"),
            &format!("-config-dir={}", config_dir.display()),
            &format!("-encrypt={key}"),
        ]);
        p.listening("serf-wan-quic");
        p.listening("http");
        p
    };
    let _dc1 = start("dc1", "s1", &ips[0], "d1");
    let mut dc2 = start("dc2", "s2", &ips[1], "d2");
    let at = |ip: &str| format!("-http-addr={ip}:8500");
    let (code, out, err) = text(&run(&["join", "-wan", &ips[1], &at(&ips[0])]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Successfully joined cluster by contacting 1 nodes"),
        "{out}"
    );
    for ip in &ips {
        let out = wait_for_cli(
            &["members", "-wan", &at(ip)],
            "both servers alive",
            |_, out| out.lines().filter(|l| l.contains(" alive ")).count() == 2,
        );
        assert!(out.contains(&format!("s1.dc1  {}:8302", ips[0])), "{out}");
        assert!(out.contains(&format!("s2.dc2  {}:8302", ips[1])), "{out}");
    }
    let (_, out, _) = text(&run(&["catalog", "datacenters", &at(&ips[1])]));
    assert_eq!(out, "dc2\ndc1\n");
    // dc1 answers for dc2: its catalog through the CLI, its servers through DNS.
    let (code, out, err) = text(&run(&[
        "catalog",
        "services",
        "-datacenter",
        "dc2",
        &at(&ips[0]),
    ]));
    assert_eq!((code, out.as_str()), (0, "consul\n"), "{err}");
    let dig = Command::new("dig")
        .args([
            &format!("@{}", ips[0]),
            "-p",
            "8600",
            "consul.service.dc2.consul",
            "+short",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&dig.stdout).trim(), ips[1]);
    // A service only dc2 has, found from dc1 by a prepared query that fails over.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = proconsul::client::Client::new(&format!("{}:8500", ips[0])).unwrap();
    runtime.block_on(async {
        for (path, body) in [
            (
                "/v1/catalog/register?dc=dc2",
                r#"{"Node": "web-2", "Address": "10.2.0.7", "Service": {"Service": "web", "Port": 80}}"#,
            ),
            (
                "/v1/query",
                r#"{"Name": "web", "Service": {"Service": "web", "Failover": {"NearestN": 1}}}"#,
            ),
        ] {
            let method = if path == "/v1/query" {
                hyper::Method::POST
            } else {
                hyper::Method::PUT
            };
            let r = client.call(method, path, Some(body.into())).await.unwrap();
            assert_eq!(r.status, 200, "{path}: {}", r.body);
        }
    });
    let dig = Command::new("dig")
        .args([
            &format!("@{}", ips[0]),
            "-p",
            "8600",
            "web.query.consul",
            "+short",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&dig.stdout).trim(), "10.2.0.7");
    let (code, out, err) = text(&run(&["keyring", "-list", &at(&ips[0])]));
    assert_eq!(code, 0, "{out}{err}");
    for pool in ["WAN:", "dc1 (LAN):", "dc2 (LAN):"] {
        assert!(out.contains(pool), "{pool} in\n{out}");
    }
    assert!(out.contains(&format!("{key} [2/2]")), "{out}");

    // Network coordinates estimate the round trip between the two servers (WAN probes
    // every 5 s, so the first sample takes a few seconds).
    let out = wait_for_cli(
        &["rtt", "-wan", "s1.dc1", "s2.dc2", &at(&ips[0])],
        "a WAN round-trip estimate",
        |_, out| out.starts_with("Estimated s1.dc1 <-> s2.dc2 rtt: "),
    );
    assert!(
        out.trim_end().ends_with("ms (using WAN coordinates)"),
        "{out}"
    );
    let (code, _, err) = text(&run(&["rtt", "nobody", &at(&ips[0])]));
    assert_eq!(code, 1);
    assert!(
        err.contains("Could not find a coordinate for node \"nobody\""),
        "{err}"
    );

    // dc2 dies and comes back from its data dir, with no join flag. (The WAN peers are
    // saved within half a second of a change; wait for that first.)
    let peers = d.join("d2").join("serf").join("remote.peers");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&peers).is_ok_and(|t| t.contains(&ips[0])) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never written",
            peers.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    dc2.signal("KILL");
    dc2.wait(Duration::from_secs(10));
    let _dc2 = start("dc2", "s2", &ips[1], "d2");
    wait_for_cli(
        &["members", "-wan", &at(&ips[1])],
        "dc2 back in the federation",
        |_, out| out.lines().filter(|l| l.contains(" alive ")).count() == 2,
    );
}

// `proconsul lock`: processes that take turns on a prefix of the key/value store.

/// `proconsul lock -http-addr=HTTP ARGS…` as a running process.
fn lock_process(http: &str, args: &[&str]) -> Proc {
    let addr = format!("-http-addr={http}");
    let mut all = vec!["lock", addr.as_str()];
    all.extend_from_slice(args);
    Proc::spawn(&all)
}

/// A shell command that appends `start ID` to `log`, waits (at most 10 s) for the file
/// `go` to exist, then appends `end ID`.
fn gated(log: &std::path::Path, go: &std::path::Path, id: &str) -> String {
    let (log, go) = (log.display(), go.display());
    format!(
        "echo start {id} >> '{log}'; i=0; \
         while [ ! -e '{go}' ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; \
         echo end {id} >> '{log}'"
    )
}

fn log_lines(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits (at most 20 s) until `ready` holds.
fn wait_until(what: &str, ready: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn session_count(http: &str) -> usize {
    get_json(http, "/v1/session/list")
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0)
}

/// The keys under `prefix` (none when the prefix is empty: a 404).
fn keys_under(http: &str, prefix: &str) -> Vec<String> {
    get_json(http, &format!("/v1/kv/{prefix}?keys"))
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

#[test]
fn two_lock_processes_on_one_prefix_run_their_commands_in_turn() {
    let (_agent, http, _) = dev_agent(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (log, go) = (dir.path().join("log"), dir.path().join("go"));
    let mut a = lock_process(&http, &["-verbose", "locks/job", &gated(&log, &go, "a")]);
    wait_until("a runs", || log_lines(&log) == ["start a"]);
    // The lock is Consul's: PREFIX/.lock with Consul's flags, held by a's session.
    let lock = get_json(&http, "/v1/kv/locks/job/.lock").unwrap();
    assert_eq!(lock[0]["Flags"], 0x2ddc_cbc0_58a5_0c18_u64);
    let holder = lock[0]["Session"].as_str().unwrap().to_owned();
    let session = get_json(&http, &format!("/v1/session/info/{holder}")).unwrap();
    assert_eq!(
        session[0]["Name"],
        format!("Consul lock for '{}' at 'locks/job'", gated(&log, &go, "a"))
    );
    assert_eq!(session[0]["TTL"], "15s");

    let mut b = lock_process(&http, &["-verbose", "locks/job", &gated(&log, &go, "b")]);
    b.wait_for_line(Duration::from_secs(10), |l| {
        l == "Attempting lock acquisition"
    });
    wait_until("b has its session", || session_count(&http) == 2);
    // b waits while a holds the lock.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(log_lines(&log), ["start a"], "{}", b.output());

    std::fs::write(&go, "").unwrap();
    for p in [&mut a, &mut b] {
        let status = p.wait(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "{}", p.output());
    }
    assert_eq!(log_lines(&log), ["start a", "end a", "start b", "end b"]);
    // The last holder found nobody waiting: the lock key and the sessions are gone.
    assert!(b.output().contains("Cleanup succeeded"), "{}", b.output());
    assert_eq!(keys_under(&http, "locks/"), Vec::<String>::new());
    assert_eq!(session_count(&http), 0);
}

#[test]
fn a_semaphore_of_two_runs_two_commands_at_once_and_makes_a_third_wait() {
    let (_agent, http, _) = dev_agent(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (log, go) = (dir.path().join("log"), dir.path().join("go"));
    let starts = |log: &std::path::Path| {
        log_lines(log)
            .iter()
            .filter(|l| l.starts_with("start"))
            .count()
    };
    let mut a = lock_process(&http, &["-n", "2", "locks/sem", &gated(&log, &go, "a")]);
    let mut b = lock_process(&http, &["-n=2", "locks/sem", &gated(&log, &go, "b")]);
    wait_until("a and b both run", || starts(&log) == 2);
    // Consul's layout: a contender key per session, and .lock listing the holders.
    let lock = get_json(&http, "/v1/kv/locks/sem/.lock").unwrap();
    assert_eq!(lock[0]["Flags"], 0xe0f6_9a2b_aa41_4de0_u64);
    let value = lock[0]["Value"].as_str().unwrap();
    let value = base64_decode(value);
    let state: serde_json::Value = serde_json::from_slice(&value).unwrap();
    assert_eq!(state["Limit"], 2);
    assert_eq!(state["Holders"].as_object().unwrap().len(), 2);

    let mut c = lock_process(&http, &["-n", "2", "locks/sem", &gated(&log, &go, "c")]);
    wait_until("c has its contender key", || {
        keys_under(&http, "locks/sem/").len() == 4
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(starts(&log), 2, "c waits: {:?}", log_lines(&log));

    std::fs::write(&go, "").unwrap();
    for p in [&mut a, &mut b, &mut c] {
        let status = p.wait(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "{}", p.output());
    }
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert!(
        lines[..2].iter().all(|l| l.starts_with("start")),
        "{lines:?}"
    );
    let c_start = lines.iter().position(|l| l == "start c").unwrap();
    assert!(
        lines[..c_start].iter().any(|l| l.starts_with("end")),
        "c started before anyone left: {lines:?}"
    );
    // Never more than two at once.
    let mut running = 0;
    for l in &lines {
        running += if l.starts_with("start") { 1 } else { -1 };
        assert!(running <= 2, "{lines:?}");
    }
    assert_eq!(keys_under(&http, "locks/"), Vec::<String>::new());
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

#[test]
fn lock_timeout_gives_up_with_exit_1_and_sigterm_stops_the_holder() {
    let (_agent, http, _) = dev_agent(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (log, go) = (dir.path().join("log"), dir.path().join("go"));
    let mut holder = lock_process(&http, &["-verbose", "locks/t", &gated(&log, &go, "a")]);
    wait_until("the holder runs", || log_lines(&log) == ["start a"]);
    let never = format!("echo never >> '{}'", log.display());
    let addr = format!("-http-addr={http}");
    let (code, _, err) = text(&run(&["lock", &addr, "-timeout=500ms", "locks/t", &never]));
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.trim(),
        "Shutdown triggered or timeout during lock acquisition"
    );
    // The waiter's session went with it.
    assert_eq!(session_count(&http), 1);

    // SIGTERM stops the child, then releases and cleans up.
    holder.signal("TERM");
    let status = holder.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", holder.output());
    let out = holder.output();
    assert!(out.contains("Shutdown triggered, killing child"), "{out}");
    assert!(out.contains("Cleanup succeeded"), "{out}");
    assert_eq!(log_lines(&log), ["start a"], "never ran, and a never ended");
    assert_eq!(keys_under(&http, "locks/"), Vec::<String>::new());
}

#[test]
fn lock_exit_codes_are_consuls() {
    let (_agent, http, _) = dev_agent(&[]);
    let addr = format!("-http-addr={http}");
    let lock = |args: &[&str]| {
        let mut all = vec!["lock", addr.as_str()];
        all.extend_from_slice(args);
        text(&run(&all))
    };
    // The child's status is not passed on, unless -child-exit-code: then exit 2.
    let (code, _, err) = lock(&["locks/c", "exit 7"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("Error running handler: exit status 7"),
        "{err}"
    );
    let (code, _, err) = lock(&["-child-exit-code", "locks/c", "exit 7"]);
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = lock(&["-child-exit-code", "locks/c", "echo held=$CONSUL_LOCK_HELD"]);
    assert_eq!((code, out.as_str()), (0, "held=true\n"), "{err}");
    // -shell=false runs the words as a program: `$HOME` stays as it is.
    let (code, out, err) = lock(&["-shell=false", "locks/c", "echo", "-n", "$HOME"]);
    assert_eq!((code, out.as_str()), (0, "$HOME"), "{err}");
    let (code, _, err) = lock(&["-shell=false", "-child-exit-code", "locks/c", "false"]);
    assert_eq!(code, 2, "{err}");
    // Usage errors and an agent that is not there: 1, with Consul's lines.
    for (args, want) in [
        (
            &["locks/c"][..],
            "Key prefix and child command must be specified",
        ),
        (
            &["-n=0", "locks/c", "true"],
            "Lock holder limit must be positive",
        ),
        (
            &["-timeout=-1s", "locks/c", "true"],
            "Timeout must be positive",
        ),
        (
            &["-monitor-retry=-1", "locks/c", "true"],
            "Number for 'monitor-retry' must be >= 0",
        ),
    ] {
        let (code, _, err) = lock(args);
        assert_eq!((code, err.trim()), (1, want), "{args:?}");
    }
    // A lock and a semaphore on one prefix refuse each other.
    let (code, _, err) = text(&run(&["kv", "put", &addr, "locks/s/.lock", "x"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = lock(&["locks/s", "true"]);
    assert_eq!(
        (code, err.trim()),
        (
            1,
            "Lock acquisition failed: Existing key does not match lock use"
        )
    );
    let (code, _, err) = lock(&["-n=2", "locks/s", "true"]);
    assert_eq!(
        (code, err.trim()),
        (
            1,
            "Lock acquisition failed: Existing key does not match semaphore use"
        )
    );
    let (code, _, err) = text(&run(&["lock", "-http-addr=127.0.0.1:1", "locks/c", "true"]));
    assert_eq!(code, 1);
    assert!(err.starts_with("Error querying Consul agent: "), "{err}");
}

#[test]
fn destroying_the_holders_session_stops_its_command() {
    let (_agent, http, _) = dev_agent(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (log, pid_file) = (dir.path().join("log"), dir.path().join("pid"));
    let forever = format!(
        "echo $$ > '{}'; echo start >> '{}'; i=0; \
         while [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; echo end >> '{}'",
        pid_file.display(),
        log.display(),
        log.display()
    );
    let mut holder = lock_process(&http, &["-verbose", "locks/d", &forever]);
    wait_until("the command runs", || log_lines(&log) == ["start"]);
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    let lock = get_json(&http, "/v1/kv/locks/d/.lock").unwrap();
    let session = lock[0]["Session"].as_str().unwrap().to_owned();
    let r = get_or_put(
        &http,
        hyper::Method::PUT,
        &format!("/v1/session/destroy/{session}"),
        None,
    );
    assert_eq!(r, 200);
    let status = holder.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", holder.output());
    let out = holder.output();
    assert!(out.contains("Lock lost, killing child"), "{out}");
    assert!(
        out.contains(&format!("Terminating child pid {pid}")),
        "{out}"
    );
    assert_eq!(log_lines(&log), ["start"], "the command was stopped");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the command's shell is gone"
    );
    assert_eq!(keys_under(&http, "locks/"), Vec::<String>::new());
}

/// Two federated single-server datacenters in this process, dc1 (`a0`) and dc2 (`b0`,
/// with `dc2_config` added to its config), for CLI processes to talk to; the runtime
/// runs them while the test blocks, and they are stopped when this is dropped (a
/// failed assertion included).
struct TwoDatacenters {
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    a: Option<crate::support::cluster::Member>,
    b: Option<crate::support::cluster::Member>,
}

impl TwoDatacenters {
    fn start(dc2_config: serde_json::Value) -> TwoDatacenters {
        use crate::support::cluster::{Member, Spec, leader_of};
        use crate::wan::{server, tls_config};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = runtime.block_on(async {
            let ca = wan::tls::create_ca("consul", 30).unwrap();
            let a = Member::start(server(
                "a0",
                "dc1",
                1,
                vec![],
                tls_config(dir.path(), &ca, "a0", "dc1"),
            ))
            .await;
            let mut config: serde_json::Value =
                serde_json::from_str(&tls_config(dir.path(), &ca, "b0", "dc2")).unwrap();
            for (k, v) in dc2_config.as_object().unwrap() {
                config[k] = v.clone();
            }
            let b = Member::start(Spec {
                join_wan: vec![a.wan_addr()],
                ..server("b0", "dc2", 1, vec![], config.to_string())
            })
            .await;
            leader_of(&[&a], 1).await;
            leader_of(&[&b], 1).await;
            (a, b)
        });
        let two = TwoDatacenters {
            runtime,
            dir,
            a: Some(a),
            b: Some(b),
        };
        let http_a = two.http_a();
        wait_until("dc1 reaches dc2's KV store", || {
            get_or_put(&http_a, hyper::Method::GET, "/v1/kv/probe?dc=dc2", None) == 404
        });
        two
    }

    fn http_a(&self) -> String {
        let a = self.a.as_ref().expect("running");
        a.agent.http_addr().unwrap().to_string()
    }

    fn http_b(&self) -> String {
        let b = self.b.as_ref().expect("running");
        b.agent.http_addr().unwrap().to_string()
    }
}

impl Drop for TwoDatacenters {
    fn drop(&mut self) {
        let members = [self.a.take(), self.b.take()];
        self.runtime.block_on(async {
            for m in members.into_iter().flatten() {
                m.agent.stop(false).await;
            }
        });
    }
}

#[test]
fn lock_with_datacenter_holds_its_session_and_key_in_that_datacenter() {
    let two = TwoDatacenters::start(serde_json::json!({}));
    let (http_a, http_b) = (two.http_a(), two.http_b());
    let dir = two.dir.path();
    let (log, go) = (dir.join("log"), dir.join("go"));
    let mut p = lock_process(
        &http_a,
        &[
            "-verbose",
            "-datacenter=dc2",
            "locks/job",
            &gated(&log, &go, "a"),
        ],
    );
    p.wait_for_line(Duration::from_secs(20), |l| l == "Starting handler");
    wait_until("the command runs", || log_lines(&log) == ["start a"]);
    let lock = get_json(&http_b, "/v1/kv/locks/job/.lock").unwrap();
    let holder = lock[0]["Session"].as_str().unwrap().to_owned();
    // It belongs to dc2's server: dc1's agent is no node of dc2.
    let session = get_json(&http_b, &format!("/v1/session/info/{holder}")).unwrap();
    assert_eq!(session[0]["Node"], "b0");
    assert_eq!(session[0]["NodeChecks"], serde_json::json!([]));
    assert_eq!(session_count(&http_b), 1);
    assert_eq!(session_count(&http_a), 0, "no session in dc1");
    assert_eq!(keys_under(&http_a, "locks/"), Vec::<String>::new());

    std::fs::write(&go, "").unwrap();
    let status = p.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", p.output());
    assert_eq!(log_lines(&log), ["start a", "end a"]);
    // Released, the session destroyed and the key removed, all in dc2.
    assert_eq!(keys_under(&http_b, "locks/"), Vec::<String>::new());
    assert_eq!(session_count(&http_b), 0);
}

#[test]
fn info_shows_where_kv_replication_stands() {
    let two = TwoDatacenters::start(serde_json::json!({"kv_replication": {
        "source_datacenter": "dc1",
        "prefixes": ["config/"],
        "exclude": ["config/local/"],
    }}));
    let (http_a, http_b) = (two.http_a(), two.http_b());
    assert_eq!(
        get_or_put(&http_a, hyper::Method::PUT, "/v1/kv/config/a", Some("1")),
        200
    );
    wait_until("dc2 has the copy and says so", || {
        get_json(&http_b, "/v1/kv/config/a").is_some()
            && get_json(&http_b, "/v1/operator/kv-replication")
                .is_some_and(|s| s["Prefixes"][0]["Keys"] == 1)
    });
    let (code, out, err) = text(&run(&["info", &format!("-http-addr={http_b}")]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("consul:\n"), "{out}");
    let section = out
        .split_once("kv_replication:\n")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no kv_replication section:\n{out}"));
    for line in [
        "\tsource_datacenter = dc1\n",
        "\tprefixes = config/\n",
        "\texclude = config/local/\n",
        "kv_replication \"config/\":\n",
        "\trunning = true\n",
        "\tkeys = 1\n",
        "\tlast_error = \n",
    ] {
        assert!(section.contains(line), "{line:?} in\n{out}");
    }
    let index: u64 = section
        .lines()
        .find_map(|l| l.strip_prefix("\treplicated_index = "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(index > 0, "{out}");
    assert!(section.contains("\tlast_success = 20"), "{out}");
    // A server that copies nothing has no such section.
    let (code, out, _) = text(&run(&["info", &format!("-http-addr={http_a}")]));
    assert_eq!(code, 0);
    assert!(!out.contains("kv_replication"), "{out}");
}

/// Waits (at most 20 s) until the file at `path` exists and `pred` holds for its text;
/// returns the text.
pub(crate) fn wait_for_file(
    path: &std::path::Path,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && pred(&text)
        {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {:?}",
            std::fs::read_to_string(path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn watch_prints_a_view_once_and_runs_a_handler_on_each_change() {
    let (_agent, http, _) = dev_agent(&[]);
    let addr = format!("-http-addr={http}");
    assert_eq!(kv(&http, &["put", "app/x", "v1"]).0, 0);

    // -type key without a handler: the current value as Consul's indented JSON, once,
    // then exit 0 (as Consul's watch does); after a put, the new value.
    let (code, printed, _) = text(&run(&["watch", "-type=key", "-key", "app/x", &addr]));
    assert_eq!(code, 0, "{printed}");
    let mut lines = printed.lines();
    assert_eq!(lines.next(), Some("{"), "{printed}");
    assert_eq!(lines.next(), Some(r#"    "Key": "app/x","#), "{printed}");
    assert!(printed.contains(r#"    "Value": "djE=","#), "{printed}");
    assert!(printed.ends_with("    \"Session\": \"\"\n}\n"), "{printed}");
    assert_eq!(kv(&http, &["put", "app/x", "v2"]).0, 0);
    let (code, printed, _) = text(&run(&["watch", "-type=key", "-key", "app/x", &addr]));
    assert_eq!(code, 0);
    assert!(printed.contains(r#"    "Value": "djI=","#), "{printed}");

    // -type keyprefix with a handler run through the shell: JSON on stdin, the index
    // in CONSUL_INDEX; first `null` (no key under the prefix yet), then the keys.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("prefix.out");
    let handler = format!(
        "echo \"index=$CONSUL_INDEX\" >> '{0}'; cat >> '{0}'",
        out.display()
    );
    let _prefix = Proc::spawn(&[
        "watch",
        "-type",
        "keyprefix",
        "-prefix=conf/",
        &addr,
        &handler,
    ]);
    wait_for_file(&out, "first call", |t| t.ends_with("null\n"));
    assert_eq!(kv(&http, &["put", "conf/a", "1"]).0, 0);
    let calls = wait_for_file(&out, "call after the put", |t| t.contains("conf/a"));
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines.len(), 4, "{calls}");
    assert!(
        lines[0].starts_with("index=") && lines[2].starts_with("index="),
        "{calls}"
    );
    assert_eq!(lines[1], "null");
    assert!(
        lines[3].starts_with(r#"[{"Key":"conf/a","CreateIndex":"#)
            && lines[3].ends_with(r#""Flags":0,"Value":"MQ==","Session":""}]"#),
        "{calls}"
    );

    // -type service: no instance yet, then the one registered.
    let (code, printed, _) = text(&run(&["watch", "-type=service", "-service=web", &addr]));
    assert_eq!((code, printed.as_str()), (0, "[]\n"));
    let register = r#"{"Node": "n2", "Address": "10.0.0.2",
                       "Service": {"Service": "web", "ID": "web-1", "Port": 80}}"#;
    assert_eq!(
        get_or_put(
            &http,
            hyper::Method::PUT,
            "/v1/catalog/register",
            Some(register)
        ),
        200
    );
    let (code, printed, _) = text(&run(&["watch", "-type=service", "-service=web", &addr]));
    assert_eq!(code, 0);
    assert!(printed.contains(r#""ID": "web-1","#), "{printed}");

    // A failing handler stops the watch with Consul's line and exit 1.
    let mut failing = Proc::spawn(&["watch", "-type=nodes", &addr, "exit 3"]);
    assert_eq!(failing.wait(Duration::from_secs(20)).code(), Some(1));
    assert!(
        failing
            .output()
            .contains("Error executing handler: exit status 3"),
        "{}",
        failing.output()
    );
    let (code, _, err) = text(&run(&["watch", "-type=key", &addr]));
    assert_eq!(
        (code, err.as_str()),
        (1, "Must specify a single key to watch\n")
    );
}

#[test]
fn an_agent_runs_the_watches_of_its_config_and_replaces_them_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let watch = |key: &str, out: &std::path::Path| {
        serde_json::json!({"watches": [{
            "type": "key", "key": key, "handler_type": "script",
            "args": ["/bin/sh", "-c", format!("cat > '{0}.tmp' && mv '{0}.tmp' '{0}'", out.display())]
        }]})
        .to_string()
    };
    let first = dir.path().join("first.out");
    std::fs::write(config.join("watches.json"), watch("app/flag", &first)).unwrap();
    let config_dir = format!("-config-dir={}", config.display());
    let (agent, http, _) = dev_agent(&[&config_dir]);
    // The handler runs once at start (no key yet), then on the change.
    wait_for_file(&first, "first call", |t| t == "null\n");
    assert_eq!(kv(&http, &["put", "app/flag", "on"]).0, 0);
    let text = wait_for_file(&first, "call after the put", |t| t != "null\n");
    assert!(
        text.starts_with(r#"{"Key":"app/flag","#)
            && text.ends_with("\"Value\":\"b24=\",\"Session\":\"\"}\n"),
        "{text}"
    );

    // A reload replaces the watches: the new one runs, the old one no longer does.
    let second = dir.path().join("second.out");
    std::fs::write(config.join("watches.json"), watch("app/other", &second)).unwrap();
    agent.signal("HUP");
    wait_for_file(&second, "the new watch's first call", |t| t == "null\n");
    assert_eq!(kv(&http, &["put", "app/flag", "off"]).0, 0);
    assert_eq!(kv(&http, &["put", "app/other", "x"]).0, 0);
    wait_for_file(&second, "the new watch's call after the put", |t| {
        t.contains("eA==")
    });
    assert_eq!(
        std::fs::read_to_string(&first).unwrap(),
        text,
        "the old watch stopped"
    );
}
