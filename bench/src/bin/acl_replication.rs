//! `acl-replication-bench`: how long after a token's creation in the primary datacenter
//! it works in a secondary one (not a test).
//!
//! ```text
//! acl-replication-bench --bin PATH [--delay-ms D] [--tokens N]
//!                       [--token-replication true|false] [--pid-file FILE]
//! ```
//!
//! Two datacenters of one server each ([`proconsul_bench::federation`]: the real binary
//! at PATH, federated over QUIC with mutual TLS, each WAN port behind a proxy that holds
//! every datagram D ms, 10 by default, in each direction). dc1 is the primary; dc2
//! replicates its policies and roles, and its global tokens with
//! `--token-replication true` (the default), under `default_policy = "deny"`.
//!
//! One after the other, N tokens (100 by default) holding a policy that may read every
//! key are created in dc1. From the moment dc1 acknowledges a creation, two clients of
//! dc2 run side by side: one reads a key with the new token until dc2 stops refusing it
//! ("works": what a user sees; dc2 asks dc1 about a token it does not hold yet), the
//! other polls dc2's `/v1/acl/replication` until its `ReplicatedTokenIndex` reaches the
//! token's `CreateIndex` ("replicated": the token is in dc2's own tables, where it keeps
//! working if dc1 is lost; only with token replication).
//!
//! Output: human lines on stderr, then one `JSON {…}` line with the percentiles.

#![allow(clippy::print_stdout, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use proconsul_bench::federation::{self, Federation, Launch, REQUEST_TIMEOUT, Server, get, poll};
use proconsul_bench::http::Conn;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const USAGE: &str = "usage: acl-replication-bench --bin PATH [--delay-ms D] [--tokens N] \
                     [--token-replication true|false] [--pid-file FILE]";

/// The management token both datacenters are configured with (dc1 makes it; dc2
/// replicates with it).
const MANAGEMENT: &str = "9d3f6c2a-7b1e-4e8f-a5d4-3c2b1a0f9e8d";
/// The policy each measured token holds.
const POLICY: &str = "bench-read-keys";
/// Time between two polls of dc2 while waiting for one token.
const POLL_GAP: Duration = Duration::from_millis(1);
/// A token not working in dc2 this long after its creation is a failure.
const TOKEN_DEADLINE: Duration = Duration::from_secs(30);
/// Most tokens a run may create.
const MAX_TOKENS: u64 = 100_000;

struct Options {
    bin: PathBuf,
    delay: Duration,
    tokens: u64,
    token_replication: bool,
    pid_file: Option<PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            bin: PathBuf::new(),
            delay: Duration::from_millis(10),
            tokens: 100,
            token_replication: true,
            pid_file: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{flag}: not a number: {value}"))
            };
            match flag.as_str() {
                "--bin" => o.bin = PathBuf::from(value),
                "--delay-ms" => o.delay = Duration::from_millis(number()?),
                "--tokens" => o.tokens = number()?,
                "--token-replication" => {
                    o.token_replication = value
                        .parse()
                        .map_err(|_| format!("{flag}: true or false, not {value}"))?;
                }
                "--pid-file" => o.pid_file = Some(PathBuf::from(value)),
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if o.bin.as_os_str().is_empty() {
            return Err("--bin is needed".into());
        }
        if o.tokens == 0 || o.tokens > MAX_TOKENS {
            return Err(format!("--tokens must be between 1 and {MAX_TOKENS}"));
        }
        Ok(o)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    federation::run("acl-replication-bench", async |root, tasks, stop| {
        federate_and_measure(&options, root, tasks, stop).await
    })
}

async fn federate_and_measure(
    o: &Options,
    root: &Path,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(), String> {
    let acl = |tokens: Value| {
        json!({
            "primary_datacenter": "dc1",
            "acl": {
                "enabled": true,
                "default_policy": "deny",
                "enable_token_replication": o.token_replication,
                "tokens": tokens,
            },
        })
    };
    let launch = Launch {
        bin: &o.bin,
        pid_file: o.pid_file.as_deref(),
    };
    let f = Federation::start(
        &launch,
        root,
        o.delay,
        (
            acl(json!({"initial_management": MANAGEMENT, "agent": MANAGEMENT})),
            acl(json!({"replication": MANAGEMENT, "agent": MANAGEMENT})),
        ),
        tasks,
        stop,
    )
    .await?;
    let result = measure(o, &f).await;
    if result.is_err() {
        f.report_logs();
    }
    result
}

/// `path` with the management token.
fn managed(path: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}token={MANAGEMENT}")
}

/// Creates a token holding [`POLICY`] in dc1: (SecretID, CreateIndex).
async fn create_token(conn: &mut Conn) -> Result<(String, u64), String> {
    let body = json!({"Policies": [{"Name": POLICY}]}).to_string();
    let (status, _, reply) = timeout(
        REQUEST_TIMEOUT,
        conn.call(Method::PUT, &managed("/v1/acl/token"), Bytes::from(body)),
    )
    .await
    .map_err(|_| "a token creation: no answer".to_owned())??;
    if status != StatusCode::OK {
        return Err(format!(
            "a token creation: {status} {}",
            String::from_utf8_lossy(&reply)
        ));
    }
    let token: Value = serde_json::from_slice(&reply).map_err(|e| e.to_string())?;
    match (token["SecretID"].as_str(), token["CreateIndex"].as_u64()) {
        (Some(secret), Some(index)) => Ok((secret.to_owned(), index)),
        _ => Err(format!("a token creation answered {token}")),
    }
}

/// Reads a key in dc2 with `secret` until dc2 stops refusing it; when it did.
async fn works(conn: &mut Conn, secret: &str, deadline: Instant) -> Result<Instant, String> {
    let path = format!("/v1/kv/bench/probe?token={secret}");
    loop {
        let (status, _, body) =
            timeout(REQUEST_TIMEOUT, conn.call(Method::GET, &path, Bytes::new()))
                .await
                .map_err(|_| "a read in dc2: no answer".to_owned())??;
        let now = Instant::now();
        match status {
            StatusCode::OK | StatusCode::NOT_FOUND => return Ok(now),
            StatusCode::FORBIDDEN if now < deadline => sleep(POLL_GAP).await,
            _ => {
                return Err(format!(
                    "a read in dc2 with a new token: {status} {}",
                    String::from_utf8_lossy(&body)
                ));
            }
        }
    }
}

/// Polls dc2's replication status until its token index reaches `index`; when it did.
async fn replicated(conn: &mut Conn, index: u64, deadline: Instant) -> Result<Instant, String> {
    let path = managed("/v1/acl/replication");
    loop {
        let (_, _, body) = timeout(REQUEST_TIMEOUT, conn.call(Method::GET, &path, Bytes::new()))
            .await
            .map_err(|_| "dc2's replication status: no answer".to_owned())??;
        let now = Instant::now();
        let status: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if status["ReplicatedTokenIndex"].as_u64().unwrap_or(0) >= index {
            return Ok(now);
        }
        if now >= deadline {
            return Err(format!("token index {index} not replicated: {status}"));
        }
        sleep(POLL_GAP).await;
    }
}

async fn measure(o: &Options, f: &Federation) -> Result<(), String> {
    let (s1, s2) = (&f.s1, &f.s2);
    eprintln!(
        "== waiting for leaders, the federation and the first replication (WAN one-way delay {:?})",
        o.delay
    );
    for s in [s1, s2] {
        leader(s).await?;
    }
    poll("dc2 replicating dc1's ACLs", async || {
        let (_, _, body) = get(s2.http, &managed("/v1/acl/replication")).await?;
        let status: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if status["Running"] == true && status["ReplicatedIndex"].as_u64().unwrap_or(0) > 0 {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await?;
    let mut primary = Conn::open(s1.http).await?;
    let rules = r#"key_prefix "" { policy = "read" }"#;
    let body = json!({"Name": POLICY, "Rules": rules}).to_string();
    let (status, _, reply) = primary
        .call(Method::PUT, &managed("/v1/acl/policy"), Bytes::from(body))
        .await?;
    if status != StatusCode::OK {
        return Err(format!(
            "the policy: {status} {}",
            String::from_utf8_lossy(&reply)
        ));
    }
    // A first token, unmeasured, makes sure the policy is in dc2 and the links are warm.
    let (probe, _) = create_token(&mut primary).await?;
    let mut reader = Conn::open(s2.http).await?;
    poll("a first token working in dc2", async || {
        works(&mut reader, &probe, Instant::now()).await.map(|_| ())
    })
    .await?;

    eprintln!(
        "== {} tokens created in dc1 one after the other; waiting for each in dc2 (token replication {})",
        o.tokens, o.token_replication
    );
    let mut status_conn = Conn::open(s2.http).await?;
    let (mut worked, mut copied) = (Vec::new(), Vec::new());
    for _ in 0..o.tokens {
        let (secret, index) = create_token(&mut primary).await?;
        let acked = Instant::now();
        let deadline = acked + TOKEN_DEADLINE;
        let ms = |at: Instant| at.duration_since(acked).as_secs_f64() * 1e3;
        if o.token_replication {
            let (w, r) = tokio::join!(
                works(&mut reader, &secret, deadline),
                replicated(&mut status_conn, index, deadline)
            );
            worked.push(ms(w?));
            copied.push(ms(r?));
        } else {
            worked.push(ms(works(&mut reader, &secret, deadline).await?));
        }
    }
    worked.sort_by(f64::total_cmp);
    copied.sort_by(f64::total_cmp);
    let links: Vec<Value> = f
        .links
        .iter()
        .map(|l| {
            let (relayed, dropped, late_mean, late_max) = l.stats.summary();
            json!({"relayed": relayed, "dropped": dropped, "late_mean_ms": late_mean, "late_max_ms": late_max})
        })
        .collect();
    let report = json!({
        "tokens": o.tokens,
        "token_replication": o.token_replication,
        "delay_ms": o.delay.as_secs_f64() * 1e3,
        "works_ms": percentiles(&worked),
        "replicated_ms": percentiles(&copied),
        "links": links,
    });
    eprintln!(
        "works in dc2: p50 {} ms; in dc2's tables: p50 {} ms",
        report["works_ms"]["p50"], report["replicated_ms"]["p50"]
    );
    println!("JSON {report}");
    Ok(())
}

async fn leader(s: &Server) -> Result<(), String> {
    let http: SocketAddr = s.http;
    poll(&format!("a leader in {}", s.name), async || {
        let (status, _, body) = get(http, "/v1/status/leader").await?;
        if status == StatusCode::OK && body.len() > 2 {
            Ok(())
        } else {
            Err(format!("{status} {}", String::from_utf8_lossy(&body)))
        }
    })
    .await
}

fn percentiles(v: &[f64]) -> Value {
    let at = |q: f64| -> Value {
        if v.is_empty() {
            return Value::Null;
        }
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        json!(v[i.min(v.len() - 1)])
    };
    json!({"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0), "n": v.len()})
}
