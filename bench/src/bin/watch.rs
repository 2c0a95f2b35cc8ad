//! `watch-bench`: change propagation to many blocking health reads (`bench/watchers.sh`).
//!
//! ```text
//! watch-bench --agents URL,URL,... --pids PID,PID,... --servers N --services S
//!             --watchers W [--writes K] [--timeout SECONDS]
//! ```
//!
//! The first N agents are servers (the first of them the one written to), the others
//! client agents; PIDs name their processes in the same order. The driver registers S
//! services `ws000`, `ws001`, ... in the catalog (one node each, one instance with one
//! check), then holds W watchers: watcher i reads `GET /v1/health/service/ws{i % S}` on
//! agent `i % A`, each on its own connection, as a blocking read (`?index=&wait=10m`)
//! sent again with the new index as soon as it is answered, as Consul's clients do.
//!
//! Then K writes, one at a time, each to the next service in turn: the service's check
//! is registered again (`PUT /v1/catalog/register`) with the write's number as its
//! output. Per write, the time from sending it until the first and until the last of
//! that service's watchers has read it (an answer whose check output holds the number),
//! the write's own acknowledgement, and answers from watchers of other services.
//!
//! Figures: each agent's resident memory before and after the watchers are held (after
//! their CPU went idle), divided by the reads it holds; the servers' and the client
//! agents' CPU time per write (from /proc/PID/stat).
//!
//! Output: human lines on stderr, then one `JSON {...}` line.

#![allow(clippy::print_stdout, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use proconsul_bench::http::Conn;
use proconsul_bench::measure::{self, ms, pct};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

/// Blocking reads ask for the longest wait Consul allows; no phase lasts that long.
const WAIT: &str = "10m";
/// Watchers set up at once (connect, first read).
const SETUP_CONCURRENCY: usize = 256;
/// Longest time to set up the watchers.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Linux's USER_HZ: the unit of utime and stime in /proc/PID/stat.
const TICKS_PER_SECOND: f64 = 100.0;

struct Args {
    agents: Vec<SocketAddr>,
    pids: Vec<u32>,
    servers: usize,
    services: usize,
    watchers: usize,
    writes: usize,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        agents: Vec::new(),
        pids: Vec::new(),
        servers: 1,
        services: 100,
        watchers: 10_000,
        writes: 20,
        timeout: Duration::from_secs(30),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--agents" => {
                for url in value.split(',') {
                    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
                    args.agents
                        .push(hostport.parse().map_err(|e| format!("{url}: {e}"))?);
                }
            }
            "--pids" => {
                for p in value.split(',') {
                    args.pids
                        .push(p.parse().map_err(|e| format!("--pids {p}: {e}"))?);
                }
            }
            "--servers" => args.servers = number(&value)?.max(1),
            "--services" => args.services = number(&value)?.max(1),
            "--watchers" => args.watchers = number(&value)?.max(1),
            "--writes" => args.writes = number(&value)?.max(1),
            "--timeout" => args.timeout = Duration::from_secs(number(&value)? as u64),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.agents.is_empty() || args.agents.len() != args.pids.len() {
        return Err("--agents and --pids name the same agents, in the same order".into());
    }
    if args.servers > args.agents.len() {
        return Err("--servers is more than the agents named".into());
    }
    Ok(args)
}

fn fail(why: &str) -> ! {
    eprintln!("watch-bench: {why}");
    std::process::exit(1);
}

/// The process's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    measure::rss_kib(pid).unwrap_or_else(|e| fail(&e))
}

/// The process's CPU time (user and system) in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    measure::cpu_ticks(pid).unwrap_or_else(|e| fail(&e))
}

fn total_ticks(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| cpu_ticks(p)).sum()
}

/// Waits until the processes together use at most 10% of a core over 300 ms, or
/// `limit`; whether they went idle.
async fn settle(pids: &[u32], limit: Duration) -> bool {
    let end = Instant::now() + limit;
    let mut before = total_ticks(pids);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = total_ticks(pids);
        if now - before <= 3 {
            return true;
        }
        before = now;
    }
    false
}

fn service_name(j: usize) -> String {
    format!("ws{j:03}")
}

/// Registers service `j` (node `wn{j}`) with its check's output set to `seq`.
async fn register(conn: &mut Conn, j: usize, seq: u64) -> Result<(), String> {
    let name = service_name(j);
    let body = json!({
        "Node": format!("wn{j:03}"),
        "Address": "127.0.0.1",
        "Service": {"ID": name, "Service": name, "Port": 8080},
        "Check": {
            "CheckID": format!("{name}-check"), "Name": "alive", "ServiceID": name,
            "Status": "passing", "Output": seq.to_string(),
        },
    });
    match conn
        .call(
            Method::PUT,
            "/v1/catalog/register",
            Bytes::from(body.to_string()),
        )
        .await?
    {
        (StatusCode::OK, _, _) => Ok(()),
        (status, _, body) => Err(format!(
            "register {name}: {status} {}",
            String::from_utf8_lossy(&body)
        )),
    }
}

/// The highest write number among the check outputs of a health answer.
fn newest_seq(body: &[u8]) -> Option<u64> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.as_array()?
        .iter()
        .filter_map(|e| e["Checks"].as_array())
        .flatten()
        .filter_map(|c| c["Output"].as_str()?.parse::<u64>().ok())
        .max()
}

/// A watcher's report: the service it watches, the write number it read, when.
type Event = (usize, u64, Instant);

#[derive(Default)]
struct Counters {
    armed: AtomicUsize,
    lost: AtomicUsize,
    /// Answers with no new index (a blocking read that returned unchanged).
    empty: AtomicU64,
}

async fn watcher(
    addr: SocketAddr,
    service: usize,
    setup: Arc<Semaphore>,
    counters: Arc<Counters>,
    events: mpsc::UnboundedSender<Event>,
) {
    let path = format!("/v1/health/service/{}", service_name(service));
    let lost = |why: String| {
        if counters.lost.fetch_add(1, Ordering::Relaxed) < 3 {
            eprintln!("watcher of {path} on {addr}: {why}");
        }
    };
    let index_of = |headers: &hyper::HeaderMap| {
        headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    };
    let (mut conn, mut index) = {
        let Ok(_permit) = setup.acquire().await else {
            return;
        };
        let mut conn = match Conn::open(addr).await {
            Ok(c) => c,
            Err(e) => return lost(e),
        };
        match conn.call(Method::GET, &path, Bytes::new()).await {
            Ok((StatusCode::OK, headers, _)) => {
                let index = index_of(&headers).unwrap_or(0);
                (conn, index)
            }
            Ok((status, _, body)) => {
                return lost(format!("{status} {}", String::from_utf8_lossy(&body)));
            }
            Err(e) => return lost(e),
        }
    };
    counters.armed.fetch_add(1, Ordering::Relaxed);
    loop {
        let blocking = format!("{path}?index={index}&wait={WAIT}");
        match conn.call(Method::GET, &blocking, Bytes::new()).await {
            Ok((StatusCode::OK, headers, body)) => {
                let at = Instant::now();
                let new_index = index_of(&headers).unwrap_or(index);
                match newest_seq(&body) {
                    Some(seq) if new_index != index => {
                        let _ = events.send((service, seq, at));
                    }
                    _ => {
                        counters.empty.fetch_add(1, Ordering::Relaxed);
                    }
                }
                index = new_index;
            }
            Ok((status, _, body)) => {
                return lost(format!("{status} {}", String::from_utf8_lossy(&body)));
            }
            Err(e) => return lost(e),
        }
    }
}

struct Timed {
    ack: f64,
    first: Option<f64>,
    last: Option<f64>,
}

async fn run(args: Args) {
    let (a, s, w) = (args.agents.len(), args.services, args.watchers);
    let server = args.agents[0];
    let mut writer = Conn::open(server).await.unwrap_or_else(|e| fail(&e));
    for j in 0..s {
        register(&mut writer, j, 0)
            .await
            .unwrap_or_else(|e| fail(&e));
    }
    settle(&args.pids, Duration::from_secs(30)).await;
    let rss_before: Vec<u64> = args.pids.iter().map(|&p| rss_kib(p)).collect();

    let counters = Arc::new(Counters::default());
    let setup = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut per_service = vec![0usize; s];
    let mut per_agent = vec![0usize; a];
    let t_setup = Instant::now();
    for i in 0..w {
        let (service, agent) = (i % s, i % a);
        per_service[service] += 1;
        per_agent[agent] += 1;
        tokio::spawn(watcher(
            args.agents[agent],
            service,
            setup.clone(),
            counters.clone(),
            tx.clone(),
        ));
    }
    drop(tx);
    let setup_deadline = Instant::now() + SETUP_TIMEOUT;
    while counters.armed.load(Ordering::Relaxed) + counters.lost.load(Ordering::Relaxed) < w {
        if Instant::now() > setup_deadline {
            fail(&format!(
                "only {} of {w} watchers set up in {SETUP_TIMEOUT:?}",
                counters.armed.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let setup_secs = t_setup.elapsed().as_secs_f64();
    let idle = settle(&args.pids, Duration::from_secs(30)).await;
    let rss_held: Vec<u64> = args.pids.iter().map(|&p| rss_kib(p)).collect();
    let lost_at_setup = counters.lost.load(Ordering::Relaxed);
    if lost_at_setup > 0 {
        fail(&format!("{lost_at_setup} watchers failed at setup"));
    }
    let per_read: Vec<f64> = (0..a)
        .map(|k| (rss_held[k] as f64 - rss_before[k] as f64) * 1024.0 / per_agent[k].max(1) as f64)
        .collect();
    for k in 0..a {
        eprintln!(
            "  {} {}: {} reads held, RSS {} -> {} KiB, {:.0} bytes per read",
            if k < args.servers { "server" } else { "client" },
            args.agents[k],
            per_agent[k],
            rss_before[k],
            rss_held[k],
            per_read[k]
        );
    }
    eprintln!(
        "  {w} watchers held in {setup_secs:.1} s{}",
        if idle {
            ""
        } else {
            " (agents not idle after 30 s)"
        }
    );
    let mut early = 0usize;
    while rx.try_recv().is_ok() {
        early += 1;
    }

    let (servers, clients) = args.pids.split_at(args.servers);
    let (server_cpu0, client_cpu0) = (total_ticks(servers), total_ticks(clients));
    let mut timed = Vec::new();
    let (mut others, mut timeouts) = (0usize, 0usize);
    for n in 0..args.writes {
        let seq = n as u64 + 1;
        let service = n % s;
        let expected = per_service[service];
        let t0 = Instant::now();
        register(&mut writer, service, seq)
            .await
            .unwrap_or_else(|e| fail(&e));
        let ack = t0.elapsed().as_secs_f64();
        let deadline = t0 + args.timeout;
        let (mut first, mut last, mut seen) = (None, None, 0usize);
        while seen < expected {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((sv, sq, at))) if sv == service && sq == seq => {
                    let dt = at.duration_since(t0).as_secs_f64();
                    first.get_or_insert(dt);
                    last = Some(dt);
                    seen += 1;
                }
                Ok(Some(_)) => others += 1,
                Ok(None) | Err(_) => break,
            }
        }
        if seen < expected {
            timeouts += 1;
            eprintln!(
                "  write {seq}: {seen} of {expected} watchers saw it within {:?}",
                args.timeout
            );
        }
        timed.push(Timed {
            ack,
            first,
            last: if seen == expected { last } else { None },
        });
        settle(&args.pids, Duration::from_secs(5)).await;
        while rx.try_recv().is_ok() {
            others += 1;
        }
    }
    let per_write = |ticks: u64| ticks as f64 / TICKS_PER_SECOND / args.writes as f64;
    let server_cpu = per_write(total_ticks(servers) - server_cpu0);
    let client_cpu = per_write(total_ticks(clients) - client_cpu0);
    let sorted = |f: &dyn Fn(&Timed) -> Option<f64>| {
        let mut v: Vec<f64> = timed.iter().filter_map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let ack = sorted(&|t| Some(t.ack));
    let first = sorted(&|t| t.first);
    let last = sorted(&|t| t.last);
    let server_reads: usize = per_agent[..args.servers].iter().sum();
    let server_growth: u64 = (0..args.servers)
        .map(|k| rss_held[k].saturating_sub(rss_before[k]))
        .sum();
    let client_reads: usize = per_agent[args.servers..].iter().sum();
    let client_growth: u64 = (args.servers..a)
        .map(|k| rss_held[k].saturating_sub(rss_before[k]))
        .sum();
    let per = |kib: u64, reads: usize| {
        if reads == 0 {
            Value::Null
        } else {
            json!((kib as f64 * 1024.0 / reads as f64).round())
        }
    };
    eprintln!(
        "  write -> all p50 {:?} p99 {:?}, first p50 {:?}, ack p50 {:?}; CPU per write: servers {:.1} ms, clients {:.1} ms; timeouts {timeouts}, other answers {others}, empty {}",
        ms(pct(&last, 50.0)),
        ms(pct(&last, 99.0)),
        ms(pct(&first, 50.0)),
        ms(pct(&ack, 50.0)),
        server_cpu * 1e3,
        client_cpu * 1e3,
        counters.empty.load(Ordering::Relaxed),
    );
    println!(
        "JSON {}",
        json!({
            "agents": a, "servers": args.servers, "services": s, "watchers": w,
            "setup_s": (setup_secs * 100.0).round() / 100.0,
            "rss_before_kib": rss_before, "rss_held_kib": rss_held,
            "reads_per_agent": per_agent,
            "bytes_per_read": per(server_growth + client_growth, w),
            "server_growth_kib": server_growth, "client_growth_kib": client_growth,
            "server_bytes_per_read": per(server_growth, server_reads),
            "client_bytes_per_read": per(client_growth, client_reads),
            "writes": args.writes,
            "all_p50_ms": ms(pct(&last, 50.0)), "all_p99_ms": ms(pct(&last, 99.0)),
            "first_p50_ms": ms(pct(&first, 50.0)), "first_p99_ms": ms(pct(&first, 99.0)),
            "ack_p50_ms": ms(pct(&ack, 50.0)),
            "server_cpu_ms_per_write": (server_cpu * 1e4).round() / 10.0,
            "client_cpu_ms_per_write": (client_cpu * 1e4).round() / 10.0,
            "timeouts": timeouts, "unexpected": others, "early": early,
            "empty": counters.empty.load(Ordering::Relaxed),
            "lost": counters.lost.load(Ordering::Relaxed),
        })
    );
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("watch-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&e.to_string()));
    runtime.block_on(run(args));
    // The watchers' tasks and connections end with the process.
    std::process::exit(0);
}
