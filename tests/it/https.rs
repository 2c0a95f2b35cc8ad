//! The HTTPS API of the real binary: served with the configured certificate, client
//! certificates required with `verify_incoming`, plain HTTP turned off with
//! `ports.http = -1`, and the CLI and py-consul reaching it with Consul's flags and
//! environment.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use proconsul::client::{Client, TlsOptions};
use wan::tls::{self, CertKind, CertRequest, Pem};

use crate::support::process::{Proc, binary, run};

/// A CA and, written into `dir`, its certificate, a server certificate (SANs
/// `server.dc1.consul`, `localhost`, `127.0.0.1`) and a CLI certificate.
struct Material {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    cli: (PathBuf, PathBuf),
}

fn write(dir: &Path, name: &str, pem: &Pem) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, &pem.cert).unwrap();
    std::fs::write(&key, &pem.key).unwrap();
    (cert, key)
}

fn material(dir: &Path) -> Material {
    let ca = tls::create_ca("consul", 30).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.cert).unwrap();
    let server = tls::create_cert(&ca, &CertRequest::new(CertKind::Server, "dc1")).unwrap();
    let cli = tls::create_cert(&ca, &CertRequest::new(CertKind::Cli, "dc1")).unwrap();
    Material {
        ca: ca_file,
        server: write(dir, "server", &server),
        cli: write(dir, "cli", &cli),
    }
}

/// Starts `agent -dev` with `config` as a config file and the other ports chosen by the
/// OS; returns the process and its HTTPS address.
fn https_agent(dir: &Path, config: serde_json::Value, extra: &[&str]) -> (Proc, String) {
    let file = dir.join("https.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let mut args = vec![
        "agent".to_string(),
        "-dev".into(),
        "-node=https-node".into(),
        "-server-port=0".into(),
        "-serf-lan-port=0".into(),
        "-serf-wan-port=0".into(),
        "-dns-port=-1".into(),
        "-log-level=info".into(),
        format!("-config-file={}", file.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proc::spawn(&args);
    let https = p.listening("https").to_string();
    (p, https)
}

/// Runs a CLI verb with `env` set (and no CONSUL_* variable of the test's own).
fn run_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(binary());
    command.args(args);
    for name in [
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_SSL",
        "CONSUL_HTTP_SSL_VERIFY",
        "CONSUL_CACERT",
        "CONSUL_CAPATH",
        "CONSUL_CLIENT_CERT",
        "CONSUL_CLIENT_KEY",
        "CONSUL_TLS_SERVER_NAME",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `members` until the agent answers over HTTPS with the given flags.
fn wait_for_members(flags: &[&str]) -> String {
    let mut args = vec!["members"];
    args.extend_from_slice(flags);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, out, err) = run_env(&args, &[]);
        if code == 0 && out.contains("https-node") {
            return out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "members never answered over HTTPS: {code} {out} {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn get(client: &Client, path: &str) -> Result<String, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(client.get(path))
        .map_err(|e| e.to_string())
}

#[test]
fn an_https_only_agent_with_verify_incoming_serves_clients_with_a_certificate_from_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let m = material(dir.path());
    // The CA as Consul's ca_path gives it: a directory, here with a file that is no
    // certificate.
    let cas = dir.path().join("cas");
    std::fs::create_dir(&cas).unwrap();
    std::fs::copy(&m.ca, cas.join("ca.pem")).unwrap();
    std::fs::write(cas.join("README"), "the CA of the HTTPS API's clients").unwrap();
    let (p, https) = https_agent(
        dir.path(),
        serde_json::json!({
            "ports": {"http": -1, "https": 0},
            "tls": {
                "defaults": {"cert_file": m.server.0, "key_file": m.server.1},
                "https": {"verify_incoming": true, "ca_path": cas},
            },
        }),
        &[],
    );
    let url = format!("https://{https}");
    let ca = m.ca.display().to_string();
    let (cert, key) = (m.cli.0.display().to_string(), m.cli.1.display().to_string());

    // Flags: the CA to check the agent, the certificate to present.
    let out = wait_for_members(&[
        &format!("-http-addr={url}"),
        &format!("-ca-file={ca}"),
        &format!("-client-cert={cert}"),
        &format!("-client-key={key}"),
    ]);
    assert!(out.contains("alive"), "{out}");
    // No plain HTTP listener: none was logged before the HTTPS one.
    assert!(!p.output().contains("proto=http "), "{}", p.output());
    assert!(p.output().contains("HTTPS: "), "{}", p.output());

    // The environment, as Consul's CLI reads it.
    let env = [
        ("CONSUL_HTTP_ADDR", url.as_str()),
        ("CONSUL_CACERT", ca.as_str()),
        ("CONSUL_CLIENT_CERT", cert.as_str()),
        ("CONSUL_CLIENT_KEY", key.as_str()),
    ];
    let (code, out, err) = run_env(&["catalog", "services"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("consul"), "{out}");
    let (code, _, err) = run_env(&["kv", "put", "tls/key", "v"], &env);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run_env(&["kv", "get", "tls/key"], &env);
    assert_eq!((code, out.trim()), (0, "v"), "{err}");
    // CONSUL_HTTP_SSL=true for an address without a scheme; the name checked is
    // -tls-server-name's.
    let (code, out, err) = run_env(
        &[
            "members",
            &format!("-http-addr={https}"),
            "-tls-server-name=server.dc1.consul",
        ],
        &[
            ("CONSUL_HTTP_SSL", "true"),
            ("CONSUL_CACERT", &ca),
            ("CONSUL_CLIENT_CERT", &cert),
            ("CONSUL_CLIENT_KEY", &key),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("https-node"), "{out}");

    // py-consul, a client we did not write, over HTTPS from CONSUL_HTTP_ADDR, with the
    // CA to check the agent and a client certificate.
    let script = r#"
import sys, consul
c = consul.Consul(verify=sys.argv[1], cert=(sys.argv[2], sys.argv[3]))
assert c.http.base_uri.startswith("https://"), c.http.base_uri
assert c.kv.put("py/tls", "yes")
index, item = c.kv.get("py/tls")
assert item["Value"] == b"yes", item
print(c.agent.self()["Config"]["NodeName"])
"#;
    let out = Command::new(crate::process::python_with_py_consul())
        .args(["-c", script, &ca, &cert, &key])
        .env("CONSUL_HTTP_ADDR", &url)
        .env_remove("CONSUL_HTTP_SSL")
        .env_remove("CONSUL_HTTP_SSL_VERIFY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "https-node");

    // Without a client certificate the handshake fails, as it does with another CA's.
    let (code, _, err) = run_env(
        &[
            "members",
            &format!("-http-addr={url}"),
            &format!("-ca-file={ca}"),
        ],
        &[],
    );
    assert_eq!(code, 1, "a client without a certificate is refused: {err}");
    let other = tempfile::tempdir().unwrap();
    let foreign = material(other.path());
    let (code, _, err) = run_env(
        &[
            "members",
            &format!("-http-addr={url}"),
            &format!("-ca-file={ca}"),
            &format!("-client-cert={}", foreign.cli.0.display()),
            &format!("-client-key={}", foreign.cli.1.display()),
        ],
        &[],
    );
    assert_eq!(code, 1, "another CA's certificate is refused: {err}");
    // A CLI that does not trust the agent's CA refuses the agent.
    let (code, _, err) = run_env(
        &[
            "members",
            &format!("-http-addr={url}"),
            &format!("-ca-file={}", foreign.ca.display()),
            &format!("-client-cert={cert}"),
            &format!("-client-key={key}"),
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("TLS handshake"), "{err}");
    // Plain HTTP to the HTTPS port gets no answer.
    assert!(get(&Client::new(&https).unwrap(), "/v1/status/leader").is_err());

    // /v1/agent/self reports the ports as Consul's DebugConfig does.
    let client = Client::with_tls(
        &url,
        false,
        &TlsOptions {
            ca_file: Some(m.ca.clone()),
            client_cert: Some(m.cli.0.clone()),
            client_key: Some(m.cli.1.clone()),
            ..TlsOptions::default()
        },
    )
    .unwrap();
    let body: serde_json::Value =
        serde_json::from_str(&get(&client, "/v1/agent/self").unwrap()).unwrap();
    let config = &body["DebugConfig"];
    assert_eq!(config["HTTPPort"], -1);
    assert_eq!(config["HTTPAddrs"], serde_json::json!([]));
    assert!(
        config["HTTPSAddrs"][0]
            .as_str()
            .is_some_and(|a| a.starts_with("tcp://127.0.0.1:")),
        "{config}"
    );
    drop(p);
}

#[test]
fn https_without_verify_incoming_serves_any_client_that_trusts_the_ca_next_to_http() {
    let dir = tempfile::tempdir().unwrap();
    let m = material(dir.path());
    let (p, https) = https_agent(
        dir.path(),
        serde_json::json!({
            "cert_file": m.server.0, "key_file": m.server.1,
            "limits": {"http_max_conns_per_client": 1, "http_header_timeout": "1s"},
        }),
        &["-http-port=0", "-https-port=0"],
    );
    let http = p.listening("http").to_string();
    let url = format!("https://{https}");
    let out = wait_for_members(&[
        &format!("-http-addr={url}"),
        &format!("-ca-file={}", m.ca.display()),
    ]);
    assert!(out.contains("alive"), "{out}");
    // A directory of CA files does as well (files without a certificate add nothing),
    // and so does not checking at all.
    let cas = dir.path().join("cas");
    std::fs::create_dir(&cas).unwrap();
    std::fs::copy(&m.ca, cas.join("ca.pem")).unwrap();
    std::fs::write(cas.join("README"), "the agent's CA").unwrap();
    let out = wait_for_members(&[
        &format!("-http-addr={url}"),
        &format!("-ca-path={}", cas.display()),
    ]);
    assert!(out.contains("https-node"), "{out}");
    let (code, out, err) = run_env(
        &["members", &format!("-http-addr={url}")],
        &[("CONSUL_HTTP_SSL_VERIFY", "false")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("https-node"), "{out}");
    // Plain HTTP stays.
    let out = run(&["members", &format!("-http-addr={http}")]);
    assert!(out.status.success(), "{out:?}");

    // A client that opens a connection and never starts its handshake holds its place
    // (the only one its address has here) until the handshake's deadline closes it.
    let mut half_open = std::net::TcpStream::connect(&https).unwrap();
    half_open
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(half_open.read(&mut buf).unwrap(), 0, "closed by the agent");
    let out = wait_for_members(&[
        &format!("-http-addr={url}"),
        &format!("-ca-file={}", m.ca.display()),
    ]);
    assert!(out.contains("alive"), "{out}");
    drop(half_open);
    drop(p);
}

#[test]
fn an_agent_refuses_to_start_with_https_but_no_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let m = material(dir.path());
    let file = dir.path().join("bad.json");
    std::fs::write(
        &file,
        serde_json::json!({
            "ports": {"https": 0},
            "ca_file": m.ca,
            "verify_incoming": true,
        })
        .to_string(),
    )
    .unwrap();
    let out = run(&[
        "agent",
        "-dev",
        "-server-port=0",
        "-serf-lan-port=0",
        "-serf-wan-port=0",
        "-http-port=0",
        "-dns-port=-1",
        &format!("-config-file={}", file.display()),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("VerifyIncoming set but neither a Cert/Key pair was provided nor was auto_encrypt/auto_config enabled"),
        "{err}"
    );
    // `validate` says the same.
    let out = run(&["validate", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
}
