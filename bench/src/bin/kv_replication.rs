//! `kv-replication-bench`: how far behind its source datacenter a KV replica is, per
//! write, under a steady write rate (not a test).
//!
//! ```text
//! kv-replication-bench --bin PATH [--delay-ms D] [--rate R] [--seconds S] [--keys K]
//!                      [--value-size B] [--drain-seconds T] [--pid-file FILE]
//! ```
//!
//! Two datacenters of one server each ([`proconsul_bench::federation`]: the real binary
//! at PATH, federated over QUIC with mutual TLS, each WAN port behind a proxy that holds
//! every datagram D ms, 10 by default, in each direction): `s1` of dc1 holds the keys,
//! `s2` of dc2 copies dc1's `repl/` with `kv_replication`:
//!
//! ```text
//!  writer ─PUT─▶ s1 (dc1) ◀──D ms── proxy 127.0.0.2 ◀──QUIC── s2 (dc2) ◀─blocking GET─ follower
//!                        ──────────────▶ D ms ─────────────▶  (copy)
//! ```
//!
//! After the K keys `repl/k00000`… have been written once and copied, the writer sends
//! R writes a second for S seconds, open loop: write i is due at i/R s whatever the
//! earlier ones did, to key `repl/k{i mod K}`, with the value `i` (zero-padded, then
//! padding up to B bytes), on as many keep-alive connections as it needs. Meanwhile a
//! follower holds a blocking read of `repl/?recurse` on s2 and, each time it returns,
//! notes for every key the newest write the copy holds. A write's lag is the time from
//! its acknowledgement by s1 until s2 first served it or a later write of the same key
//! (the copy takes the source's state, so a value overwritten in between may never be
//! seen by itself). After the writes the bench waits up to T s for the copy to catch up.
//!
//! The servers are stopped when the driver ends; a driver killed by a signal cannot, so
//! with `--pid-file` it appends each server's PID to FILE as it starts it, for the
//! caller to stop.
//!
//! Output: human lines on stderr, then one `JSON {…}` line: lag percentiles, write rate
//! achieved, the writer's own acknowledgement latency, s2's `/v1/operator/kv-replication`
//! and the proxies' counters.

#![allow(clippy::print_stdout, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use proconsul_bench::delay::DelayProxy;
use proconsul_bench::federation::{self, Federation, Launch, POLL_INTERVAL, Server, get, poll};
use proconsul_bench::http::Conn;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const USAGE: &str = "usage: kv-replication-bench --bin PATH [--delay-ms D] [--rate R] \
                     [--seconds S] [--keys K] [--value-size B] [--drain-seconds T] \
                     [--pid-file FILE]";

/// The replicated prefix.
const PREFIX: &str = "repl/";
/// Most connections the writer opens; a write due while all are busy waits for one
/// (and the rate achieved says so).
const MAX_CONNECTIONS: usize = 512;
/// A write unanswered this long is an error.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The follower's blocking reads: long enough never to end while writes flow.
const FOLLOW_WAIT: &str = "30s";
/// Digits of the write number at the start of each value.
const SEQ_DIGITS: usize = 10;
/// Most writes a run may plan (rate × seconds), to keep the per-write tables small.
const MAX_WRITES: u64 = 10_000_000;

struct Options {
    bin: PathBuf,
    delay: Duration,
    rate: u64,
    seconds: u64,
    keys: u64,
    value_size: usize,
    drain: Duration,
    pid_file: Option<PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            bin: PathBuf::new(),
            delay: Duration::from_millis(10),
            rate: 1000,
            seconds: 20,
            keys: 1000,
            value_size: 64,
            drain: Duration::from_secs(30),
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
                "--rate" => o.rate = number()?,
                "--seconds" => o.seconds = number()?,
                "--keys" => o.keys = number()?,
                "--value-size" => o.value_size = number()? as usize,
                "--drain-seconds" => o.drain = Duration::from_secs(number()?),
                "--pid-file" => o.pid_file = Some(PathBuf::from(value)),
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if o.bin.as_os_str().is_empty() {
            return Err("--bin is needed".into());
        }
        if o.rate == 0 || o.seconds == 0 || o.keys == 0 {
            return Err("--rate, --seconds and --keys must be above 0".into());
        }
        if o.rate.saturating_mul(o.seconds) > MAX_WRITES {
            return Err(format!("at most {MAX_WRITES} writes (rate × seconds)"));
        }
        if o.value_size < SEQ_DIGITS {
            return Err(format!("--value-size must be at least {SEQ_DIGITS}"));
        }
        Ok(o)
    }

    fn writes(&self) -> u64 {
        self.rate * self.seconds
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
    federation::run("kv-replication-bench", async |root, tasks, stop| {
        federate_and_measure(&options, root, tasks, stop).await
    })
}

async fn federate_and_measure(
    o: &Options,
    root: &Path,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(), String> {
    let replication = json!({"kv_replication": {
        "source_datacenter": "dc1",
        "prefixes": [PREFIX],
    }});
    let launch = Launch {
        bin: &o.bin,
        pid_file: o.pid_file.as_deref(),
    };
    let f = Federation::start(
        &launch,
        root,
        o.delay,
        (json!({}), replication),
        tasks,
        stop,
    )
    .await?;
    let result = measure(o, &f.s1, &f.s2, &f.links).await;
    if result.is_err() {
        f.report_logs();
    }
    result
}

// ---------------------------------------------------------------------------------------
// Measurement

/// Per write, when something happened, in µs since the bench's epoch plus one (0: not
/// yet).
struct Times(Vec<AtomicU64>);

impl Times {
    fn new(n: u64) -> Times {
        Times((0..n).map(|_| AtomicU64::new(0)).collect())
    }

    fn set(&self, i: u64, epoch: Instant, at: Instant) {
        if let Some(slot) = self.0.get(i as usize) {
            let us = at.saturating_duration_since(epoch).as_micros() as u64 + 1;
            let _ = slot.compare_exchange(0, us, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// In ms since the epoch.
    fn get(&self, i: u64) -> Option<f64> {
        let us = self.0.get(i as usize)?.load(Ordering::Relaxed);
        (us > 0).then(|| (us - 1) as f64 / 1e3)
    }

    fn count(&self) -> usize {
        self.0
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) > 0)
            .count()
    }
}

fn key(k: u64) -> String {
    format!("{PREFIX}k{k:05}")
}

fn value(seq: u64, size: usize) -> Bytes {
    let mut v = format!("{seq:0width$}", width = SEQ_DIGITS).into_bytes();
    v.resize(size, b'.');
    Bytes::from(v)
}

async fn measure(
    o: &Options,
    s1: &Server,
    s2: &Server,
    links: &[DelayProxy],
) -> Result<(), String> {
    eprintln!(
        "== waiting for leaders and the federation (WAN one-way delay {:?})",
        o.delay
    );
    for s in [s1, s2] {
        poll(&format!("a leader in {}", s.name), async || {
            let (status, _, body) = get(s.http, "/v1/status/leader").await?;
            if status == StatusCode::OK && body.len() > 2 {
                Ok(())
            } else {
                Err(format!("{status} {}", String::from_utf8_lossy(&body)))
            }
        })
        .await?;
    }
    poll("dc2 reaching dc1", async || {
        let (status, _, body) = get(s2.http, &format!("/v1/kv/{PREFIX}?keys&dc=dc1")).await?;
        match status {
            StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
            _ => Err(format!("{status} {}", String::from_utf8_lossy(&body))),
        }
    })
    .await?;

    eprintln!(
        "== writing the {} keys once and waiting for the copy",
        o.keys
    );
    let mut conn = Conn::open(s1.http).await?;
    // Not a write number: the follower ignores these values.
    let first = Bytes::from(vec![b'-'; o.value_size]);
    for k in 0..o.keys {
        put(&mut conn, &key(k), first.clone()).await?;
    }
    poll("the first copy", async || {
        let (status, _, body) = get(s2.http, &format!("/v1/kv/{PREFIX}?keys")).await?;
        let n = if status == StatusCode::OK {
            serde_json::from_slice::<Vec<String>>(&body)
                .map_err(|e| e.to_string())?
                .len()
        } else {
            0
        };
        if n as u64 == o.keys {
            Ok(())
        } else {
            Err(format!("{n} of {} keys copied", o.keys))
        }
    })
    .await?;

    let n = o.writes();
    let acks = Arc::new(Times::new(n));
    let seen = Arc::new(Times::new(n));
    let sent = Arc::new(Times::new(n));
    let epoch = Instant::now();
    let done = CancellationToken::new();
    let follower = tokio::spawn(follow(
        s2.http,
        o.keys,
        n,
        seen.clone(),
        epoch,
        done.clone(),
    ));
    eprintln!(
        "== {} writes/s for {} s to dc1, open loop; following dc2's copy",
        o.rate, o.seconds
    );
    let errors = write_paced(o, s1.http, &sent, &acks, epoch).await;
    let writes_end = Instant::now();
    // The copy catches up, or the drain time ends.
    let drain_deadline = writes_end + o.drain;
    while seen.count() < n as usize && Instant::now() < drain_deadline {
        sleep(POLL_INTERVAL).await;
    }
    done.cancel();
    let follow_stats = follower.await.map_err(|e| format!("the follower: {e}"))??;

    let status = get(s2.http, "/v1/operator/kv-replication")
        .await
        .and_then(|(_, _, body)| {
            serde_json::from_slice::<Value>(&body).map_err(|e| e.to_string())
        })?;
    let (_, headers, _) = get(s1.http, &format!("/v1/kv/{PREFIX}?keys")).await?;
    let source_index: u64 = headers
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);

    // Lags, and the writer's own figures.
    let mut lags = Vec::new();
    let mut early = 0;
    let mut ack_latency = Vec::new();
    let mut dispatch_late_max: f64 = 0.0;
    let (mut first_sent, mut last_ack) = (f64::MAX, 0.0_f64);
    let interval_ms = 1e3 / o.rate as f64;
    for i in 0..n {
        let (Some(s), Some(a)) = (sent.get(i), acks.get(i)) else {
            continue;
        };
        first_sent = first_sent.min(s);
        last_ack = last_ack.max(a);
        ack_latency.push(a - s);
        dispatch_late_max = dispatch_late_max.max(s - i as f64 * interval_ms);
        if let Some(v) = seen.get(i) {
            if v < a {
                early += 1;
            }
            lags.push((v - a).max(0.0));
        }
    }
    let acked = ack_latency.len();
    let achieved = if last_ack > first_sent {
        acked as f64 / ((last_ack - first_sent) / 1e3)
    } else {
        0.0
    };
    lags.sort_by(f64::total_cmp);
    ack_latency.sort_by(f64::total_cmp);
    let unseen = acked - lags.len();
    let link_json: Vec<Value> = links
        .iter()
        .map(|l| {
            let (relayed, dropped, late_mean, late_max) = l.stats.summary();
            json!({"addr": l.addr.to_string(), "relayed": relayed, "dropped": dropped,
                   "late_mean_ms": late_mean, "late_max_ms": late_max})
        })
        .collect();
    let result = json!({
        "delay_ms": o.delay.as_secs_f64() * 1e3,
        "rtt_ms": 2.0 * o.delay.as_secs_f64() * 1e3,
        "rate": o.rate,
        "seconds": o.seconds,
        "keys": o.keys,
        "value_size": o.value_size,
        "planned": n,
        "acked": acked,
        "errors": errors,
        "achieved_per_s": achieved,
        "dispatch_late_max_ms": dispatch_late_max,
        "ack_ms": percentiles(&ack_latency),
        "lag_ms": percentiles(&lags),
        "seen": lags.len(),
        "unseen": unseen,
        "seen_before_ack": early,
        "follower_reads": follow_stats.reads,
        "follower_entries_per_read": follow_stats.entries as f64 / follow_stats.reads.max(1) as f64,
        "source_index": source_index,
        "status": status,
        "links": link_json,
    });
    let p = &result["lag_ms"];
    eprintln!(
        "writes: {acked} of {n} acknowledged ({errors} errors), {achieved:.0}/s achieved; \
         acknowledgement p50 {:.2} ms p99 {:.2} ms; dispatch at most {dispatch_late_max:.1} ms late",
        result["ack_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        result["ack_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
    );
    eprintln!(
        "lag (acknowledged in dc1 → served by dc2): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         {unseen} never seen; {early} seen before their acknowledgement arrived",
        p["p50"].as_f64().unwrap_or(f64::NAN),
        p["p90"].as_f64().unwrap_or(f64::NAN),
        p["p99"].as_f64().unwrap_or(f64::NAN),
        p["max"].as_f64().unwrap_or(f64::NAN),
    );
    eprintln!("replication status on s2: {status}");
    println!("JSON {result}");
    Ok(())
}

/// Percentiles of sorted `v`, in its unit.
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

/// Sends the `o.writes()` writes on schedule; returns how many failed.
async fn write_paced(
    o: &Options,
    http: SocketAddr,
    sent: &Arc<Times>,
    acks: &Arc<Times>,
    epoch: Instant,
) -> u64 {
    let (give_back, mut pool) = mpsc::channel::<Conn>(MAX_CONNECTIONS);
    let errors = Arc::new(AtomicU64::new(0));
    let mut opened = 0;
    let mut ticks = tokio::time::interval_at(epoch, Duration::from_secs(1) / o.rate as u32);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let writers = TaskTracker::new();
    for i in 0..o.writes() {
        ticks.tick().await;
        let conn = match pool.try_recv() {
            Ok(c) => Some(c),
            Err(_) if opened < MAX_CONNECTIONS => {
                opened += 1;
                Conn::open(http).await.ok()
            }
            Err(_) => pool.recv().await,
        };
        let Some(mut conn) = conn else {
            errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (sent, acks, errors, give_back) = (
            sent.clone(),
            acks.clone(),
            errors.clone(),
            give_back.clone(),
        );
        let body = value(i, o.value_size);
        let path = format!("/v1/kv/{}", key(i % o.keys));
        writers.spawn(async move {
            sent.set(i, epoch, Instant::now());
            let r = timeout(WRITE_TIMEOUT, conn.call(Method::PUT, &path, body)).await;
            match r {
                Ok(Ok((StatusCode::OK, _, b))) if b.as_ref() == b"true" => {
                    acks.set(i, epoch, Instant::now());
                    let _ = give_back.try_send(conn);
                }
                Ok(Ok(_)) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    let _ = give_back.try_send(conn);
                }
                // A broken or stuck connection is not given back.
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    writers.close();
    writers.wait().await;
    errors.load(Ordering::Relaxed)
}

struct FollowStats {
    reads: u64,
    entries: u64,
}

/// Blocking reads of the copy on `http` until `done`: each answer marks, per key, every
/// write up to the one it holds as seen.
async fn follow(
    http: SocketAddr,
    keys: u64,
    writes: u64,
    seen: Arc<Times>,
    epoch: Instant,
    done: CancellationToken,
) -> Result<FollowStats, String> {
    let mut conn = Conn::open(http).await?;
    // The next write of each key not yet seen.
    let mut next: Vec<u64> = (0..keys).collect();
    let mut index = 0;
    let mut stats = FollowStats {
        reads: 0,
        entries: 0,
    };
    loop {
        let path = format!("/v1/kv/{PREFIX}?recurse&index={index}&wait={FOLLOW_WAIT}");
        let answer = tokio::select! {
            _ = done.cancelled() => return Ok(stats),
            r = conn.call(Method::GET, &path, Bytes::new()) => r?,
        };
        let at = Instant::now();
        let (status, headers, body) = answer;
        if status != StatusCode::OK {
            return Err(format!("the follower's read: {status}"));
        }
        index = headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or("an answer without X-Consul-Index")?;
        let entries: Vec<Value> = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        stats.reads += 1;
        stats.entries += entries.len() as u64;
        for e in &entries {
            let Some(k) = e["Key"].as_str().and_then(|k| {
                k.strip_prefix(PREFIX)?
                    .strip_prefix('k')?
                    .parse::<u64>()
                    .ok()
            }) else {
                continue;
            };
            let Some(held) = e["Value"]
                .as_str()
                .and_then(|v| B64.decode(v).ok())
                .and_then(|v| {
                    std::str::from_utf8(v.get(..SEQ_DIGITS)?)
                        .ok()?
                        .parse::<u64>()
                        .ok()
                })
            else {
                continue;
            };
            let Some(next) = next.get_mut(k as usize) else {
                continue;
            };
            while *next <= held && *next < writes {
                seen.set(*next, epoch, at);
                *next += keys;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Plumbing

async fn put(conn: &mut Conn, key: &str, value: Bytes) -> Result<(), String> {
    let (status, _, body) = conn
        .call(Method::PUT, &format!("/v1/kv/{key}"), value)
        .await?;
    if status == StatusCode::OK && body.as_ref() == b"true" {
        Ok(())
    } else {
        Err(format!(
            "PUT {key}: {status} {}",
            String::from_utf8_lossy(&body)
        ))
    }
}
