//! `kv-bench`: the KV loads of `bench/kv.sh` that the team's Python client cannot drive
//! efficiently, against proconsul's Consul API (`/v1/kv`) or etcd's v3 JSON gateway, the
//! same load for both.
//!
//! ```text
//! kv-bench load  --api consul|etcd --url URL --prefix P --count N [--value-size B] [--concurrency C]
//! kv-bench range --api consul|etcd --url URL --prefix P --expect N --clients C --seconds S
//! kv-bench watch --api consul|etcd --url URL --pid PID --mode key|prefix --watchers W
//!                [--writes K] [--timeout SECONDS]
//! ```
//!
//! `load` writes keys `P00000`, `P00001`, ... (values of B bytes), C writes in flight.
//!
//! `range` is a closed loop of C clients, each on its own keep-alive connection with one
//! request in flight, reading every key under the prefix: `GET /v1/kv/P?recurse` (Consul's
//! default consistency) or `POST /v3/kv/range` with `range_end` (etcd's default,
//! linearizable). Every client checks that its first answer holds N keys.
//!
//! `watch` holds W watchers on the server whose process is PID, then writes K times and
//! times how long the watchers take to see each write:
//!   consul  one connection per watcher, each a blocking read (`?index=&wait=10m`) that is
//!           sent again with the new index as soon as it is answered, as Consul's clients
//!           do; `--mode key`: watcher i reads `watch/k{i:05}`, `--mode prefix`: every
//!           watcher reads `watchp/?recurse` (ten keys)
//!   etcd    one `POST /v3/watch` stream of the JSON gateway per watch, each on its own
//!           connection: watch i watches `watch/k{i:05}`, or every watch the prefix
//!           `watchp/`. (One stream cannot carry more watches over HTTP/1.1: the gateway
//!           answers the first `create_request` before it has read the next ones, and Go's
//!           HTTP/1 server then discards the rest of the request body.)
//!
//! Figures: the server's resident memory before and after the watchers are held (after
//! its CPU went idle), divided by W; per write, the time from sending the write until the
//! first and until the last watcher expected to see it (one in key mode, all W in prefix
//! mode) has read it, the write's own acknowledgement, watchers that answered without
//! being concerned, and the server's CPU time per write (from /proc/PID/stat).
//!
//! Output: human lines on stderr, then one `RESULT ...` line and one `JSON {...}` line.

#![allow(clippy::print_stdout, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use proconsul_bench::http::Conn;
use proconsul_bench::measure::{self, ms, pct};
use rand::seq::SliceRandom;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

/// Blocking reads ask for the longest wait Consul allows; no phase lasts that long.
const WAIT: &str = "10m";
/// Keys under the prefix every watcher of `--mode prefix` reads.
const PREFIX_KEYS: usize = 10;
/// Watchers set up at once (connect, first read).
const SETUP_CONCURRENCY: usize = 256;
/// Longest time to set up the watchers and for the server to go idle after.
const SETUP_TIMEOUT: Duration = Duration::from_secs(180);
/// Linux's USER_HZ: the unit of utime and stime in /proc/PID/stat.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Api {
    Consul,
    Etcd,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Consul => "consul",
            Api::Etcd => "etcd",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Key,
    Prefix,
}

struct Args {
    command: String,
    api: Api,
    addr: SocketAddr,
    prefix: String,
    count: usize,
    value_size: usize,
    concurrency: usize,
    expect: usize,
    clients: usize,
    seconds: f64,
    pid: u32,
    mode: Mode,
    watchers: usize,
    writes: usize,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let command = it
        .next()
        .ok_or("a command is needed: load, range or watch")?;
    let mut args = Args {
        command,
        api: Api::Consul,
        addr: "127.0.0.1:8500".parse().expect("an address"),
        prefix: String::new(),
        count: 0,
        value_size: 256,
        concurrency: 64,
        expect: 0,
        clients: 1,
        seconds: 5.0,
        pid: 0,
        mode: Mode::Key,
        watchers: 1000,
        writes: 20,
        timeout: Duration::from_secs(30),
    };
    let mut url = None;
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|_| format!("bad {flag}: {v}"));
        match flag.as_str() {
            "--api" => {
                args.api = match value()?.as_str() {
                    "consul" => Api::Consul,
                    "etcd" => Api::Etcd,
                    other => return Err(format!("unknown api {other}")),
                }
            }
            "--url" => url = Some(value()?),
            "--prefix" => args.prefix = value()?,
            "--count" => args.count = number(value()?)?,
            "--value-size" => args.value_size = number(value()?)?,
            "--concurrency" => args.concurrency = number(value()?)?.max(1),
            "--expect" => args.expect = number(value()?)?,
            "--clients" => args.clients = number(value()?)?.max(1),
            "--seconds" => {
                args.seconds = value()?.parse().map_err(|_| "bad --seconds")?;
            }
            "--pid" => args.pid = value()?.parse().map_err(|_| "bad --pid")?,
            "--mode" => {
                args.mode = match value()?.as_str() {
                    "key" => Mode::Key,
                    "prefix" => Mode::Prefix,
                    other => return Err(format!("unknown mode {other}")),
                }
            }
            "--watchers" => args.watchers = number(value()?)?.max(1),
            "--writes" => args.writes = number(value()?)?.max(1),
            "--timeout" => {
                let s: f64 = value()?.parse().map_err(|_| "bad --timeout")?;
                args.timeout = Duration::from_secs_f64(s);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let url = url.ok_or("--url is needed")?;
    let hostport = url
        .strip_prefix("http://")
        .ok_or("the URL must be http://IP:PORT")?
        .trim_end_matches('/');
    args.addr = hostport
        .parse()
        .map_err(|_| format!("the URL must be http://IP:PORT, not {url}"))?;
    Ok(args)
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

/// The smallest key after every key that starts with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return B64.encode(&bytes);
        }
    }
    B64.encode([0u8])
}

/// Writes `key` = `value` and checks the answer.
async fn put(conn: &mut Conn, api: Api, key: &str, value: &str) -> Result<(), String> {
    let (status, _, body) = match api {
        Api::Consul => {
            conn.call(
                Method::PUT,
                &format!("/v1/kv/{key}"),
                Bytes::from(value.to_owned()),
            )
            .await?
        }
        Api::Etcd => {
            let body = json!({"key": b64(key), "value": b64(value)}).to_string();
            conn.call(Method::POST, "/v3/kv/put", Bytes::from(body))
                .await?
        }
    };
    let ok = status == StatusCode::OK && (api == Api::Etcd || body.as_ref() == b"true");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "write of {key}: {status} {}",
            String::from_utf8_lossy(&body)
        ))
    }
}

fn ms_text(v: Option<f64>) -> String {
    v.map_or("NA".into(), |s| format!("{:.3}", s * 1e3))
}

// ---------------------------------------------------------------------------------------
// load

async fn load(api: Api, addr: SocketAddr, keys: Vec<String>, value: String, concurrency: usize) {
    let keys = Arc::new(keys);
    let next = Arc::new(AtomicUsize::new(0));
    let value = Arc::new(value);
    let mut tasks = Vec::new();
    for _ in 0..concurrency.min(keys.len()).max(1) {
        let (keys, next, value) = (keys.clone(), next.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await.unwrap_or_else(|e| fail(&e));
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(key) = keys.get(i) else { break };
                let mut tries = 0;
                while let Err(e) = put(&mut conn, api, key, &value).await {
                    tries += 1;
                    if tries == 5 {
                        fail(&e);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    conn = Conn::open(addr).await.unwrap_or_else(|e| fail(&e));
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| fail(&e.to_string()));
    }
}

fn fail(why: &str) -> ! {
    eprintln!("kv-bench: {why}");
    std::process::exit(1)
}

/// The process's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    measure::rss_kib(pid).unwrap_or_else(|e| fail(&e))
}

/// The process's CPU time (user and system) in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    measure::cpu_ticks(pid).unwrap_or_else(|e| fail(&e))
}

async fn run_load(args: &Args) {
    let keys: Vec<String> = (0..args.count)
        .map(|i| format!("{}{i:05}", args.prefix))
        .collect();
    let t = Instant::now();
    load(
        args.api,
        args.addr,
        keys,
        "v".repeat(args.value_size),
        args.concurrency,
    )
    .await;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "RESULT api={} op=load keys={} seconds={secs:.2} keys/s={:.0}",
        args.api.name(),
        args.count,
        args.count as f64 / secs
    );
}

// ---------------------------------------------------------------------------------------
// range

/// Reads every key under `prefix` once; the number of keys in the answer.
async fn read_prefix(
    conn: &mut Conn,
    api: Api,
    prefix: &str,
    check: bool,
) -> Result<usize, String> {
    let (status, _, body) = match api {
        Api::Consul => {
            conn.call(
                Method::GET,
                &format!("/v1/kv/{prefix}?recurse"),
                Bytes::new(),
            )
            .await?
        }
        Api::Etcd => {
            let body = json!({"key": b64(prefix), "range_end": prefix_end(prefix)}).to_string();
            conn.call(Method::POST, "/v3/kv/range", Bytes::from(body))
                .await?
        }
    };
    if status != StatusCode::OK {
        return Err(format!("range read: {status}"));
    }
    if !check {
        return Ok(0);
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| format!("range answer: {e}"))?;
    Ok(match api {
        Api::Consul => v.as_array().map_or(0, Vec::len),
        Api::Etcd => v["kvs"].as_array().map_or(0, Vec::len),
    })
}

async fn run_range(args: &Args) {
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (api, addr, prefix, expect) = (args.api, args.addr, args.prefix.clone(), args.expect);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await.unwrap_or_else(|e| fail(&e));
            let n = read_prefix(&mut conn, api, &prefix, true)
                .await
                .unwrap_or_else(|e| fail(&e));
            if n != expect {
                fail(&format!("{prefix}: {n} keys read, {expect} expected"));
            }
            let mut lat = Vec::new();
            let mut errors = 0usize;
            while Instant::now() < deadline {
                let t = Instant::now();
                match read_prefix(&mut conn, api, &prefix, false).await {
                    Ok(_) => lat.push(t.elapsed().as_secs_f64()),
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        conn = Conn::open(addr).await.unwrap_or_else(|e| fail(&e));
                    }
                }
            }
            (lat, errors)
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap_or_else(|e| fail(&e.to_string()));
        lat.extend(l);
        errors += e;
    }
    lat.sort_by(f64::total_cmp);
    let ops = lat.len() as f64 / args.seconds;
    println!(
        "RESULT api={} op=range keys={} clients={} ops/s={ops:.1} p50={}ms p99={}ms max={}ms errors={errors}",
        args.api.name(),
        args.expect,
        args.clients,
        ms_text(pct(&lat, 50.0)),
        ms_text(pct(&lat, 99.0)),
        ms_text(lat.last().copied()),
    );
    println!(
        "JSON {}",
        json!({"api": args.api.name(), "op": "range", "keys": args.expect, "clients": args.clients,
               "ops": lat.len(), "ops_per_s": (ops * 10.0).round() / 10.0, "errors": errors,
               "p50_ms": ms(pct(&lat, 50.0)), "p99_ms": ms(pct(&lat, 99.0))})
    );
}

// ---------------------------------------------------------------------------------------
// watch

/// Waits until the process uses at most 10% of a core over 300 ms, or `limit`; whether
/// it went idle.
async fn settle(pid: u32, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    let mut before = cpu_ticks(pid);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = cpu_ticks(pid);
        if now - before <= 3 {
            return true;
        }
        before = now;
    }
    false
}

/// What a watcher reports to the measuring loop: it read the write with that number
/// at that instant.
type Event = (u64, Instant);

/// Counters the watchers keep.
#[derive(Default)]
struct Counters {
    /// Watchers whose first read or watch creation is done.
    armed: AtomicUsize,
    /// Watchers that failed (connection lost, error answer) and stopped.
    lost: AtomicUsize,
    /// Answers with no new write in them (a blocking read that returned unchanged).
    empty: AtomicU64,
}

/// The highest write number among base64 values of the entries of a KV answer.
fn newest_seq<'a>(values: impl Iterator<Item = &'a Value>) -> Option<u64> {
    values
        .filter_map(|v| v.as_str())
        .filter_map(|s| B64.decode(s).ok())
        .filter_map(|b| String::from_utf8(b).ok()?.parse::<u64>().ok())
        .max()
}

/// One Consul-style watcher: a blocking read of `path` sent again as soon as it is
/// answered, with the new index, until the process ends.
async fn consul_watcher(
    addr: SocketAddr,
    path: String,
    setup: Arc<Semaphore>,
    counters: Arc<Counters>,
    events: mpsc::UnboundedSender<Event>,
) {
    let lost = |why: String| {
        if counters.lost.fetch_add(1, Ordering::Relaxed) < 3 {
            eprintln!("watcher of {path}: {why}");
        }
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
                let index = headers
                    .get("x-consul-index")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(0);
                (conn, index)
            }
            Ok((status, _, body)) => {
                return lost(format!("{status} {}", String::from_utf8_lossy(&body)));
            }
            Err(e) => return lost(e),
        }
    };
    counters.armed.fetch_add(1, Ordering::Relaxed);
    let sep = if path.contains('?') { '&' } else { '?' };
    loop {
        let blocking = format!("{path}{sep}index={index}&wait={WAIT}");
        match conn.call(Method::GET, &blocking, Bytes::new()).await {
            Ok((StatusCode::OK, headers, body)) => {
                let at = Instant::now();
                let new_index = headers
                    .get("x-consul-index")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(index);
                let seq = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| newest_seq(v.as_array()?.iter().map(|e| &e["Value"])));
                match seq {
                    Some(seq) if new_index != index => {
                        let _ = events.send((seq, at));
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

/// One stream of etcd's watch gateway holding the watch `create` (a JSON
/// `create_request`) until the process ends.
async fn etcd_watcher(
    addr: SocketAddr,
    create: String,
    setup: Arc<Semaphore>,
    counters: Arc<Counters>,
    events: mpsc::UnboundedSender<Event>,
) {
    let lost = |why: String| {
        if counters.lost.fetch_add(1, Ordering::Relaxed) < 3 {
            eprintln!("etcd watch stream: {why}");
        }
    };
    let mut permit = Some(setup.acquire().await);
    let mut conn = match Conn::open(addr).await {
        Ok(c) => c,
        Err(e) => return lost(e),
    };
    let response = match conn
        .send(Method::POST, "/v3/watch", Bytes::from(create))
        .await
    {
        Ok(r) if r.status() == StatusCode::OK => r,
        Ok(r) => return lost(format!("/v3/watch: {}", r.status())),
        Err(e) => return lost(e),
    };
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    loop {
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return lost(e.to_string()),
            None => return lost("the stream ended".into()),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let at = Instant::now();
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(end + 1);
            let Ok(v) = serde_json::from_slice::<Value>(line.chunk()) else {
                continue;
            };
            let result = &v["result"];
            if result.is_null() {
                return lost(format!("/v3/watch: {v}"));
            }
            if result["canceled"].as_bool() == Some(true) {
                return lost(format!("watch canceled: {v}"));
            }
            if result["created"].as_bool() == Some(true) {
                counters.armed.fetch_add(1, Ordering::Relaxed);
                permit.take();
            }
            if let Some(list) = result["events"].as_array() {
                match newest_seq(list.iter().map(|e| &e["kv"]["value"])) {
                    Some(seq) => {
                        let _ = events.send((seq, at));
                    }
                    None => {
                        counters.empty.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// The result of one write while the watchers are held.
struct Timed {
    ack: f64,
    first: Option<f64>,
    last: Option<f64>,
    seen: usize,
}

async fn run_watch(args: &Args) {
    let (api, addr, pid, w) = (args.api, args.addr, args.pid, args.watchers);
    if pid == 0 {
        fail("--pid is needed");
    }
    // The keys: one per watcher, or the ten keys under the watched prefix.
    let keys: Vec<String> = match args.mode {
        Mode::Key => (0..w).map(|i| format!("watch/k{i:05}")).collect(),
        Mode::Prefix => (0..PREFIX_KEYS)
            .map(|i| format!("watchp/k{i:02}"))
            .collect(),
    };
    load(api, addr, keys.clone(), "0".into(), 64).await;
    settle(pid, Duration::from_secs(30)).await;
    let rss_before = rss_kib(pid);
    let cpu_before_setup = cpu_ticks(pid);

    let counters = Arc::new(Counters::default());
    let setup = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let t_setup = Instant::now();
    match api {
        Api::Consul => {
            for i in 0..w {
                let path = match args.mode {
                    Mode::Key => format!("/v1/kv/watch/k{i:05}"),
                    Mode::Prefix => "/v1/kv/watchp/?recurse".to_string(),
                };
                tokio::spawn(consul_watcher(
                    addr,
                    path,
                    setup.clone(),
                    counters.clone(),
                    tx.clone(),
                ));
            }
        }
        Api::Etcd => {
            let create = |i: usize| {
                match args.mode {
                    Mode::Key => json!({"create_request": {"key": b64(&format!("watch/k{i:05}"))}}),
                    Mode::Prefix => json!({"create_request": {
                    "key": b64("watchp/"), "range_end": prefix_end("watchp/")}}),
                }
                .to_string()
            };
            for i in 0..w {
                tokio::spawn(etcd_watcher(
                    addr,
                    create(i),
                    setup.clone(),
                    counters.clone(),
                    tx.clone(),
                ));
            }
        }
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
    let idle = settle(pid, Duration::from_secs(60)).await;
    let rss_held = rss_kib(pid);
    let setup_cpu = (cpu_ticks(pid) - cpu_before_setup) as f64 / TICKS_PER_SECOND;
    let lost_at_setup = counters.lost.load(Ordering::Relaxed);
    let held = w - lost_at_setup;
    let per_watcher = (rss_held as f64 - rss_before as f64) * 1024.0 / held.max(1) as f64;
    eprintln!(
        "  {held} watchers held ({lost_at_setup} lost) in {setup_secs:.1} s \
         (server CPU {setup_cpu:.1} s{}); server RSS {rss_before} -> {rss_held} KiB: {per_watcher:.0} bytes per watcher",
        if idle { "" } else { ", not idle after 60 s" }
    );
    // Answers before any write (there should be none).
    let mut early = 0usize;
    while rx.try_recv().is_ok() {
        early += 1;
    }

    let mut writer = Conn::open(addr).await.unwrap_or_else(|e| fail(&e));
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.shuffle(&mut rand::rng());
    let cpu_before = cpu_ticks(pid);
    let mut timed = Vec::new();
    let (mut others, mut timeouts) = (0usize, 0usize);
    for n in 0..args.writes {
        let seq = n as u64 + 1;
        let key = &keys[order[n % order.len()]];
        let expected = match args.mode {
            Mode::Key => 1,
            Mode::Prefix => w - counters.lost.load(Ordering::Relaxed),
        };
        let t0 = Instant::now();
        put(&mut writer, api, key, &seq.to_string())
            .await
            .unwrap_or_else(|e| fail(&e));
        let ack = t0.elapsed().as_secs_f64();
        let deadline = t0 + args.timeout;
        let (mut first, mut last, mut seen) = (None, None, 0usize);
        while seen < expected {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((s, at))) if s == seq => {
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
            seen,
        });
        // Let the server finish (re-armed reads) before the next write, and count
        // answers that were not expected (watchers of other keys).
        settle(pid, Duration::from_secs(5)).await;
        while rx.try_recv().is_ok() {
            others += 1;
        }
    }
    let cpu_per_write =
        (cpu_ticks(pid) - cpu_before) as f64 / TICKS_PER_SECOND / args.writes as f64;
    let sorted = |f: &dyn Fn(&Timed) -> Option<f64>| {
        let mut v: Vec<f64> = timed.iter().filter_map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let ack = sorted(&|t| Some(t.ack));
    let first = sorted(&|t| t.first);
    let last = sorted(&|t| t.last);
    let seen_min = timed.iter().map(|t| t.seen).min().unwrap_or(0);
    let mode = match args.mode {
        Mode::Key => "key",
        Mode::Prefix => "prefix",
    };
    println!(
        "RESULT api={} mode={mode} watchers={held} rss_before_kib={rss_before} \
         rss_held_kib={rss_held} bytes_per_watcher={per_watcher:.0} writes={} all_p50={}ms all_p99={}ms \
         first_p50={}ms ack_p50={}ms cpu_ms_per_write={:.1} timeouts={timeouts} unexpected={others} \
         early={early} empty={} lost={}",
        api.name(),
        args.writes,
        ms_text(pct(&last, 50.0)),
        ms_text(pct(&last, 99.0)),
        ms_text(pct(&first, 50.0)),
        ms_text(pct(&ack, 50.0)),
        cpu_per_write * 1e3,
        counters.empty.load(Ordering::Relaxed),
        counters.lost.load(Ordering::Relaxed),
    );
    println!(
        "JSON {}",
        json!({
            "api": api.name(), "mode": mode, "watchers": held,
            "setup_s": (setup_secs * 100.0).round() / 100.0, "setup_cpu_s": setup_cpu,
            "rss_before_kib": rss_before, "rss_held_kib": rss_held,
            "bytes_per_watcher": per_watcher.round(), "writes": args.writes,
            "all_p50_ms": ms(pct(&last, 50.0)), "all_p99_ms": ms(pct(&last, 99.0)),
            "first_p50_ms": ms(pct(&first, 50.0)), "first_p99_ms": ms(pct(&first, 99.0)),
            "ack_p50_ms": ms(pct(&ack, 50.0)), "ack_p99_ms": ms(pct(&ack, 99.0)),
            "cpu_ms_per_write": (cpu_per_write * 1e4).round() / 10.0,
            "timeouts": timeouts, "seen_min": seen_min, "unexpected": others, "early": early,
            "empty": counters.empty.load(Ordering::Relaxed),
            "lost": counters.lost.load(Ordering::Relaxed),
        })
    );
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kv-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        match args.command.as_str() {
            "load" => run_load(&args).await,
            "range" => run_range(&args).await,
            "watch" => run_watch(&args).await,
            other => fail(&format!("unknown command {other}")),
        }
    });
    // The watchers' tasks and connections end with the process.
    std::process::exit(0)
}
