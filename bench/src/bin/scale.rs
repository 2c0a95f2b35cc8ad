//! `scale-bench`: the loads of `bench/scale.sh`, a catalog filled to Consul's benchmark
//! size and read while it grows.
//!
//! ```text
//! scale-bench load  --addr A --from F --to T --services S [--clients C]
//! scale-bench read  --addr A --path P --requests N [--clients C]
//! scale-bench first --addr A --path P [--timeout SECONDS]
//! ```
//!
//! `load` registers nodes `node-F` … `node-(T-1)` through `PUT /v1/catalog/register`, one
//! request per service instance: node `node-i` gets services `svc-0` … `svc-(S-1)` (ID
//! `svc-j`, port 20000+j, a tag `v(j mod 3)`), each with one passing check `svc-j:alive`
//! of that service. C clients, each on its own keep-alive connection with one request in
//! flight, take the next (node, service) pair from a shared counter, nodes in order.
//!
//! `read` sends `GET P` N times over C such clients (all answers must be 200) and reports
//! the latency of each request and the size of the answer.
//!
//! `first` polls `GET P` every 10 ms until it answers 200 and prints the time since this
//! process started (the script starts it right after the agent's process).
//!
//! Output: one `RESULT ...` line and one `JSON {...}` line on stdout.

#![allow(clippy::print_stdout, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use proconsul_bench::http::Conn;
use proconsul_bench::measure::{ms, pct};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Tries of one request before the driver gives up (the agent is gone or refusing).
const TRIES: usize = 5;

struct Args {
    command: String,
    addr: SocketAddr,
    from: u64,
    to: u64,
    services: u64,
    clients: usize,
    path: String,
    requests: u64,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let command = it
        .next()
        .ok_or("a command is needed: load, read or first")?;
    let mut args = Args {
        command,
        addr: "127.0.0.1:8500".parse().expect("an address"),
        from: 0,
        to: 0,
        services: 1,
        clients: 8,
        path: "/v1/catalog/services".into(),
        requests: 100,
        timeout: Duration::from_secs(60),
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--addr" => args.addr = value.parse().map_err(|e| format!("--addr: {e}"))?,
            "--from" => args.from = number()?,
            "--to" => args.to = number()?,
            "--services" => args.services = number()?.max(1),
            "--clients" => args.clients = number()?.max(1) as usize,
            "--path" => args.path = value,
            "--requests" => args.requests = number()?.max(1),
            "--timeout" => args.timeout = Duration::from_secs(number()?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn fail(why: &str) -> ! {
    eprintln!("scale-bench: {why}");
    std::process::exit(1)
}

fn report(fields: Value) {
    let map = fields.as_object().expect("an object");
    let line: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RESULT {}", line.join(" "));
    println!("JSON {fields}");
}

/// The body registering service `j` of node `i`, with its check. Node meta `rack` puts
/// every hundred nodes in a rack of their own (`r0` for nodes 0-99), so that a
/// `?node-meta=rack:r7` filter matches 100 nodes at any size from 800 nodes on.
fn registration(i: u64, j: u64) -> Bytes {
    let body = json!({
        "Node": format!("node-{i}"),
        "Address": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        "NodeMeta": { "rack": format!("r{}", i / 100) },
        "Service": {
            "Service": format!("svc-{j}"),
            "ID": format!("svc-{j}"),
            "Port": 20000 + j,
            "Tags": [format!("v{}", j % 3)],
        },
        "Check": {
            "CheckID": format!("svc-{j}:alive"),
            "Name": format!("svc-{j} alive"),
            "Status": "passing",
            "ServiceID": format!("svc-{j}"),
        },
    });
    Bytes::from(body.to_string())
}

/// Sends one request, reconnecting and retrying on a transport error or a non-200
/// answer; the latency of the attempt that succeeded and the answer's size.
async fn call(
    conn: &mut Conn,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
) -> (f64, usize) {
    let mut last = String::new();
    for _ in 0..TRIES {
        let t = Instant::now();
        match conn.call(method.clone(), path, body.clone()).await {
            Ok((StatusCode::OK, _, answer)) => return (t.elapsed().as_secs_f64(), answer.len()),
            Ok((status, _, answer)) => {
                last = format!("{path}: {status}: {}", String::from_utf8_lossy(&answer));
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        *conn = Conn::open(addr).await.unwrap_or_else(|e| fail(&e));
    }
    fail(&last)
}

/// Runs `clients` closed-loop clients over the items `0..count`; each item is one
/// request built by `request`. Latencies of every request, answer size of the last.
async fn closed_loop(
    addr: SocketAddr,
    clients: usize,
    count: u64,
    request: impl Fn(u64) -> (Method, String, Bytes) + Send + Sync + 'static,
) -> (Vec<f64>, usize, f64) {
    let next = Arc::new(AtomicU64::new(0));
    let request = Arc::new(request);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.min(count as usize).max(1) {
        let (next, request) = (next.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await.unwrap_or_else(|e| fail(&e));
            let mut latencies = Vec::new();
            let mut size = 0;
            loop {
                let item = next.fetch_add(1, Ordering::Relaxed);
                if item >= count {
                    break;
                }
                let (method, path, body) = request(item);
                let (latency, bytes) = call(&mut conn, addr, method, &path, body).await;
                latencies.push(latency);
                size = bytes;
            }
            (latencies, size)
        }));
    }
    let mut latencies = Vec::new();
    let mut size = 0;
    for t in tasks {
        let (l, s) = t.await.unwrap_or_else(|e| fail(&e.to_string()));
        latencies.extend(l);
        size = size.max(s);
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    (latencies, size, seconds)
}

async fn run_load(args: &Args) {
    let (from, services) = (args.from, args.services);
    let count = args.to.saturating_sub(from) * services;
    let (latencies, _, seconds) = closed_loop(args.addr, args.clients, count, move |item| {
        let (i, j) = (from + item / services, item % services);
        (
            Method::PUT,
            "/v1/catalog/register".into(),
            registration(i, j),
        )
    })
    .await;
    report(json!({
        "op": "register",
        "nodes": args.to.saturating_sub(from),
        "requests": latencies.len(),
        "seconds": (seconds * 100.0).round() / 100.0,
        "ops_s": (latencies.len() as f64 / seconds).round(),
        "p50_ms": ms(pct(&latencies, 50.0)),
        "p99_ms": ms(pct(&latencies, 99.0)),
        "max_ms": ms(latencies.last().copied()),
    }));
}

async fn run_read(args: &Args) {
    let path = args.path.clone();
    let (latencies, size, seconds) =
        closed_loop(args.addr, args.clients, args.requests, move |_| {
            (Method::GET, path.clone(), Bytes::new())
        })
        .await;
    report(json!({
        "op": "read",
        "path": args.path,
        "requests": latencies.len(),
        "ops_s": (latencies.len() as f64 / seconds).round(),
        "bytes": size,
        "p50_ms": ms(pct(&latencies, 50.0)),
        "p99_ms": ms(pct(&latencies, 99.0)),
    }));
}

async fn run_first(args: &Args, started: Instant) {
    let deadline = started + args.timeout;
    let mut tries = 0u64;
    while Instant::now() < deadline {
        tries += 1;
        if let Ok(mut conn) = Conn::open(args.addr).await
            && let Ok((StatusCode::OK, _, _)) =
                conn.call(Method::GET, &args.path, Bytes::new()).await
        {
            report(json!({
                "op": "first",
                "path": args.path,
                "tries": tries,
                "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            }));
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fail(&format!(
        "no 200 from {} within {:?}",
        args.path, args.timeout
    ))
}

fn main() -> std::process::ExitCode {
    let started = Instant::now();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("scale-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // One thread: the driver shares the machine with the agent it measures.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        match args.command.as_str() {
            "load" => run_load(&args).await,
            "read" => run_read(&args).await,
            "first" => run_first(&args, started).await,
            other => fail(&format!("unknown command {other}")),
        }
    });
    std::process::ExitCode::SUCCESS
}
