//! ACLs of the real binary, driven as Consul's users drive them: `proconsul acl …`
//! against an agent with `default_policy = "deny"` (bootstrap, policies from a rules
//! file, tokens, `set-agent-token`, refusals with Consul's texts and exit codes), then
//! py-consul constructed with `token=`.

use std::process::Command;
use std::time::{Duration, Instant};

use proconsul::client::{AgentClient, ClientError};

use crate::process::python_with_py_consul;
use crate::support::process::{Proc, run};

const MANAGEMENT: &str = "8e1c6a2f-3b4d-4e5f-9a7b-2c3d4e5f6a7b";

/// `default_policy = "deny"` and the management token the leader creates.
fn acl_config(dir: &std::path::Path) -> String {
    let path = dir.join("acl.json");
    let config = serde_json::json!({
        "acl": {
            "enabled": true,
            "default_policy": "deny",
            "tokens": {"initial_management": MANAGEMENT}
        }
    });
    std::fs::write(&path, config.to_string()).unwrap();
    format!("-config-file={}", path.display())
}

/// Starts `agent -dev` with ACLs on, on OS-chosen ports; returns it and its HTTP
/// address once the management token works.
fn acl_agent(dir: &std::path::Path) -> (Proc, String) {
    let config = acl_config(dir);
    let p = Proc::spawn(&[
        "agent",
        "-dev",
        "-http-port=0",
        "-server-port=0",
        "-serf-lan-port=0",
        "-dns-port",
        "0",
        "-node=acl-node",
        &config,
    ]);
    let http = p.listening("http").to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _, err) = acl(&http, &["token", "read", "-self", "-token", MANAGEMENT]);
        if code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the management token never worked: {err}\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, http)
}

/// `proconsul acl ARGS… -http-addr=HTTP`: exit code, stdout, stderr. The address goes
/// right after the verb, before any argument, as Go's flags must.
fn acl(http: &str, args: &[&str]) -> (i32, String, String) {
    let addr = format!("-http-addr={http}");
    let verb_words = if matches!(args.first(), Some(&"bootstrap" | &"set-agent-token")) {
        1
    } else {
        2
    };
    let mut all = vec!["acl"];
    all.extend_from_slice(&args[..verb_words.min(args.len())]);
    all.push(&addr);
    all.extend_from_slice(&args[verb_words.min(args.len())..]);
    let out = run(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of a `Label:   value` line of a pretty block.
fn field(block: &str, label: &str) -> String {
    block
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label} in:\n{block}"))
        .trim()
        .to_owned()
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn acl_verbs_bootstrap_grant_and_refuse_as_consul_s_do() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, http) = acl_agent(dir.path());

    // Bootstrap once; the second is Consul's 403, exit 1.
    let (code, out, err) = acl(&http, &["bootstrap"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        field(&out, "Description:"),
        "Bootstrap Token (Global Management)"
    );
    assert!(
        out.contains("\nPolicies:\n   00000000-0000-0000-0000-000000000001 - global-management\n"),
        "{out}"
    );
    assert!(out.contains("\nLocal:            false\n"), "{out}");
    let root = field(&out, "SecretID:");
    let (code, out, err) = acl(&http, &["bootstrap"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.starts_with(
            "Failed ACL bootstrapping: Unexpected response code: 403 (Permission denied: ACL bootstrap no longer allowed (reset index: "
        ),
        "{err}"
    );

    // A policy whose rules come from a file, and a token holding it by name.
    let rules = "key_prefix \"app/\" {\n  policy = \"write\"\n}\n";
    let rules_file = dir.path().join("app.hcl");
    std::fs::write(&rules_file, rules).unwrap();
    let (code, out, err) = acl(
        &http,
        &[
            "policy",
            "create",
            "-token",
            &root,
            "-name",
            "app",
            "-description",
            "app keys",
            &format!("-rules=@{}", rules_file.display()),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(field(&out, "Name:"), "app");
    assert!(out.ends_with(&format!("Rules:\n{rules}\n")), "{out:?}");
    let policy_id = field(&out, "ID:");

    let (code, out, err) = acl(
        &http,
        &[
            "token",
            "create",
            "-token",
            MANAGEMENT,
            "-description",
            "app token",
            "-policy-name",
            "app",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let accessor = field(&out, "AccessorID:");
    let secret = field(&out, "SecretID:");
    assert!(
        out.contains(&format!("\nPolicies:\n   {policy_id} - app\n")),
        "{out}"
    );

    // Read by a unique prefix of the accessor; list shows it and the bootstrap token.
    let (code, out, err) = acl(
        &http,
        &["token", "read", "-token", MANAGEMENT, "-id", &accessor[..8]],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(field(&out, "AccessorID:"), accessor);
    assert_eq!(field(&out, "Description:"), "app token");
    let (code, out, err) = acl(
        &http,
        &[
            "token",
            "read",
            "-token",
            MANAGEMENT,
            "-id",
            &accessor,
            "-format=json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("{\n    \"CreateIndex\": "), "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["Policies"][0]["Name"], "app");
    let (code, out, err) = acl(&http, &["token", "list", "-token", MANAGEMENT]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("AccessorID:       {accessor}\n")),
        "{out}"
    );
    assert!(out.contains("Bootstrap Token (Global Management)"), "{out}");

    // A token without acl:read or acl:write is refused with the server's text.
    let (code, _, err) = acl(&http, &["token", "list", "-token", &secret]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!(
            "Failed to retrieve the token list: Unexpected response code: 403 (Permission denied: token with AccessorID '{accessor}' lacks permission 'acl:read'"
        )),
        "{err}"
    );
    let (code, _, err) = acl(
        &http,
        &["set-agent-token", "-token", &secret, "default", &secret],
    );
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "Failed to set ACL token \"default\": Unexpected response code: 403 (Permission denied: "
        ),
        "{err}"
    );

    // Anonymous requests are denied until the agent's default token is the app token;
    // then they act as it, at once.
    let anonymous = AgentClient::new(&http).unwrap();
    let denied = block_on(anonymous.kv_put("app/x", b"1", 0, None, None));
    assert!(
        matches!(denied, Err(ClientError::Http { status: 403, .. })),
        "{denied:?}"
    );
    let (code, out, err) = acl(
        &http,
        &["set-agent-token", "-token", MANAGEMENT, "default", &secret],
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "ACL token \"default\" set successfully\n"),
        "{err}"
    );
    assert_eq!(
        block_on(anonymous.kv_put("app/x", b"1", 0, None, None)),
        Ok(true)
    );
    let outside = block_on(anonymous.kv_put("other/x", b"1", 0, None, None));
    assert!(
        matches!(&outside, Err(ClientError::Http { status: 403, message }) if message.contains("lacks permission 'key:write'")),
        "{outside:?}"
    );
    let (code, _, err) = acl(
        &http,
        &["set-agent-token", "-token", MANAGEMENT, "bogus", "x"],
    );
    assert_eq!((code, err.as_str()), (1, "Unknown token type\n"));

    // Delete by accessor: Consul's line; the token no longer reads.
    let (code, out, err) = acl(
        &http,
        &["token", "delete", "-token", MANAGEMENT, "-id", &accessor],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("Token \"{accessor}\" deleted successfully\n"));
    let (code, _, err) = acl(
        &http,
        &["token", "read", "-token", MANAGEMENT, "-id", &accessor],
    );
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!(
            "Error reading token \"{accessor}\": Unexpected response code: "
        )),
        "{err}"
    );
}

#[test]
fn py_consul_with_a_token_is_held_to_its_policy() {
    let python = python_with_py_consul();
    let dir = tempfile::tempdir().unwrap();
    let (_agent, http) = acl_agent(dir.path());
    let (code, _, err) = acl(
        &http,
        &[
            "policy",
            "create",
            "-token",
            MANAGEMENT,
            "-name",
            "app",
            "-rules",
            "key_prefix \"app/\" { policy = \"write\" }",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = acl(
        &http,
        &[
            "token",
            "create",
            "-token",
            MANAGEMENT,
            "-policy-name",
            "app",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let secret = field(&out, "SecretID:");
    let (host, port) = http.rsplit_once(':').unwrap();
    let script = r#"
import json, sys
import consul
c = consul.Consul(host=sys.argv[1], port=int(sys.argv[2]), token=sys.argv[3])
out = {}
out["put"] = c.kv.put("app/config", "v1")
out["get"] = c.kv.get("app/config")[1]["Value"].decode()
out["keys"] = c.kv.get("app/", keys=True)[1]
for name, call in [("denied_put", lambda: c.kv.put("secret/db", "pw")),
                   ("denied_get", lambda: c.kv.get("secret/db"))]:
    try:
        call()
        out[name] = "allowed"
    except consul.ACLPermissionDenied as e:
        out[name] = "ACLPermissionDenied"
anonymous = consul.Consul(host=sys.argv[1], port=int(sys.argv[2]))
try:
    anonymous.kv.get("app/config")
    out["anonymous"] = "allowed"
except consul.ACLPermissionDenied:
    out["anonymous"] = "ACLPermissionDenied"
print(json.dumps(out))
"#;
    let output = Command::new(&python)
        .args(["-c", script, host, port, &secret])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "py-consul failed:\n{err}");
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "put": true,
            "get": "v1",
            "keys": ["app/config"],
            "denied_put": "ACLPermissionDenied",
            "denied_get": "ACLPermissionDenied",
            "anonymous": "ACLPermissionDenied",
        })
    );
}
