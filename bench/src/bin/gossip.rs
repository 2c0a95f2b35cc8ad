//! `gossip-bench`: N members of proconsul's LAN gossip (the SWIM engine on its real
//! UDP/TCP transport) on loopback, measured the way `serf_gossip.py` measures N serf
//! agents, so that `bench/gossip.sh` can put both side by side.
//!
//! Per cluster size N and repetition:
//!   converge  every member starts alone, then each joins member 0 (a star join): time
//!             until every member lists all N alive
//!   join      one extra member joins a random one: time until every member lists it
//!   leave     that member leaves gracefully: time until every other lists it `left`
//!   fail      one member stops dead (its sockets close, as after kill -9): time until
//!             every survivor lists it `failed`
//!   idle      loopback UDP datagrams and IP octets per second per member while idle
//!   false_pos members any member ever listed `failed` without being stopped
//!   rss       the process's resident memory per member (all members share a process)
//!   cpu       the process's CPU use (user + system, in cores) while converging, idle and
//!             detecting failures, and the suspicions members started: all members share
//!             the process and its cores, so a process that cannot keep up shows here,
//!             and a suspicion it causes is the bench's doing, not the protocol's
//!
//! The star join runs at most `--join-concurrency` joins at once (default
//! [`MAX_INBOUND_STREAMS_PER_PEER`]): all members share one IP address, and a member
//! serves that many streams per address at once (serf's driver joins one agent after
//! another).
//!
//! The members run in one process (one tokio runtime on every core) and are observed
//! through their member-list channels, so observing costs nothing; serf's agents are
//! separate processes observed over their RPC. Timing profile `lan` is memberlist's
//! DefaultLANConfig, the same as serf's default.
//!
//! Output: one line per measurement, then `JSON {...}` per run with the same keys as
//! `serf_gossip.py`.

#![allow(clippy::print_stdout, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use gossip::keyring::{Key, Keyring};
use gossip::swim;
use gossip::transport::MAX_INBOUND_STREAMS_PER_PEER;
use gossip::{Encryption, Member, MemberStatus, Pool, PoolConfig};
use proconsul_bench::measure::cpu_ticks;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Args {
    sizes: Vec<usize>,
    repeats: usize,
    joins: usize,
    kills: usize,
    idle: Duration,
    timeout: Duration,
    profile: String,
    encrypt: bool,
    join_concurrency: usize,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        sizes: vec![8, 32],
        repeats: 3,
        joins: 3,
        kills: 3,
        idle: Duration::from_secs(10),
        timeout: Duration::from_secs(90),
        profile: "lan".into(),
        encrypt: false,
        join_concurrency: MAX_INBOUND_STREAMS_PER_PEER,
        threads: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => {
                args.sizes = value()?
                    .split(',')
                    .map(|s| s.parse().map_err(|_| format!("bad size {s}")))
                    .collect::<Result<_, _>>()?
            }
            "--repeats" => args.repeats = value()?.parse().map_err(|_| "bad --repeats")?,
            "--joins" => args.joins = value()?.parse().map_err(|_| "bad --joins")?,
            "--kills" => args.kills = value()?.parse().map_err(|_| "bad --kills")?,
            "--idle" => {
                args.idle = Duration::from_secs_f64(value()?.parse().map_err(|_| "bad --idle")?)
            }
            "--timeout" => {
                args.timeout =
                    Duration::from_secs_f64(value()?.parse().map_err(|_| "bad --timeout")?)
            }
            "--profile" => args.profile = value()?,
            "--encrypt" => args.encrypt = true,
            "--join-concurrency" => {
                args.join_concurrency = value()?
                    .parse::<usize>()
                    .map_err(|_| "bad --join-concurrency")?
                    .max(1)
            }
            "--threads" => args.threads = value()?.parse().map_err(|_| "bad --threads")?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// One member of the bench cluster.
struct Node {
    name: String,
    pool: Pool,
    stop: CancellationToken,
    dead: bool,
}

struct Cluster {
    nodes: Vec<Node>,
    tasks: TaskTracker,
    config: swim::Config,
    key: Option<Key>,
    /// Members stopped on purpose (their failure is expected).
    killed: Arc<Mutex<BTreeSet<String>>>,
    /// Members some member listed as failed without being stopped.
    false_pos: Arc<Mutex<BTreeSet<String>>>,
}

impl Cluster {
    async fn spawn(&mut self, name: &str) -> usize {
        let stop = CancellationToken::new();
        // Each member on an address of its own (all of 127.0.0.0/8 is loopback), as each
        // would be on a host of its own: what a pool bounds per address (streams served
        // at once) then bounds one member, not the whole bench.
        let host = self.nodes.len() + 1;
        let ip = std::net::Ipv4Addr::new(127, 1, (host / 250) as u8, (host % 250 + 1) as u8);
        let tags = BTreeMap::from([
            ("role".to_string(), "node".to_string()),
            ("dc".into(), "dc1".into()),
            ("id".into(), format!("{name}-0000-4000-8000-000000000000")),
            ("vsn".into(), "2".into()),
            ("build".into(), "0.1.0:proconsul".into()),
        ]);
        let encryption = self.key.as_ref().map(|k| Encryption {
            keyring: Keyring::new(k.clone()),
            file: None,
            verify_incoming: true,
            verify_outgoing: true,
        });
        let pool = Pool::start(
            PoolConfig {
                name: name.to_owned(),
                bind: SocketAddr::new(ip.into(), 0),
                advertise: ip.into(),
                advertise_port: None,
                tags,
                gossip: self.config.clone(),
                encryption,
            },
            &self.tasks,
            stop.clone(),
        )
        .await
        .expect("a loopback port");
        self.nodes.push(Node {
            name: name.to_owned(),
            pool,
            stop,
            dead: false,
        });
        self.nodes.len() - 1
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| !self.nodes[*i].dead)
            .collect()
    }

    /// Watches every live member for failure verdicts about members not stopped.
    fn watch_false_positives(&self, done: CancellationToken) {
        for node in self.nodes.iter().filter(|n| !n.dead) {
            let mut rx = node.pool.subscribe();
            let (killed, false_pos, done) =
                (self.killed.clone(), self.false_pos.clone(), done.clone());
            self.tasks.spawn(async move {
                loop {
                    {
                        let list = rx.borrow_and_update().clone();
                        let killed = killed.lock().expect("lock");
                        for m in list.iter() {
                            if m.status == MemberStatus::Failed && !killed.contains(&m.name) {
                                false_pos.lock().expect("lock").insert(m.name.clone());
                            }
                        }
                    }
                    tokio::select! {
                        _ = done.cancelled() => return,
                        r = rx.changed() => if r.is_err() { return },
                    }
                }
            });
        }
    }

    /// Seconds from `t0` until each observer's member list satisfied `pred`. The
    /// predicate reads the published list as it is (no copy): with a thousand members,
    /// each seeing a thousand changes, a copy per change would cost more than the
    /// members themselves.
    async fn until(
        &self,
        observers: &[usize],
        t0: Instant,
        timeout: Duration,
        pred: impl Fn(&[Member]) -> bool + Clone + Send + 'static,
    ) -> Vec<f64> {
        let waits = observers.iter().map(|&i| {
            let mut rx = self.nodes[i].pool.subscribe();
            let pred = pred.clone();
            async move {
                let deadline = t0 + timeout;
                loop {
                    let list = rx.borrow_and_update().clone();
                    if pred(&list) {
                        return Some(t0.elapsed().as_secs_f64());
                    }
                    match tokio::time::timeout_at(deadline, rx.changed()).await {
                        Ok(Ok(())) => {}
                        _ => return None,
                    }
                }
            }
        });
        let results = futures_util::future::join_all(waits).await;
        results.into_iter().flatten().collect()
    }
}

/// Whether `list` holds every name of `want` alive, and nothing else.
fn exactly_alive(list: &[Member], want: &BTreeSet<String>) -> bool {
    list.len() == want.len()
        && list
            .iter()
            .all(|m| m.status == MemberStatus::Alive && want.contains(&m.name))
}

/// Whether `name` is in `list` with `status`.
fn has(list: &[Member], name: &str, status: MemberStatus) -> bool {
    list.iter().any(|m| m.name == name && m.status == status)
}

/// Counts the pools' suspicions and failure verdicts (the engine's own counters,
/// `memberlist.msg.suspect` and `serf.member.failed`, summed over every member); all
/// other metrics are dropped, so recording costs nothing.
#[derive(Default)]
struct Counts {
    suspect: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl metrics::Recorder for Counts {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        match key.name() {
            "memberlist.msg.suspect" => metrics::Counter::from_arc(self.suspect.clone()),
            "serf.member.failed" => metrics::Counter::from_arc(self.failed.clone()),
            _ => metrics::Counter::noop(),
        }
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// The process's CPU time in seconds, and the counters, at one instant; [`Mark::since`]
/// turns two of them into the phase's CPU use and suspicions.
struct Mark {
    at: Instant,
    cpu_s: f64,
    suspect: u64,
    failed: u64,
}

impl Mark {
    fn now(counts: &Counts) -> Mark {
        Mark {
            at: Instant::now(),
            cpu_s: cpu_ticks(std::process::id()).unwrap_or(0) as f64 / 100.0,
            suspect: counts.suspect.load(Ordering::Relaxed),
            failed: counts.failed.load(Ordering::Relaxed),
        }
    }

    /// CPU use (cores), suspicions started and failure verdicts since `self`.
    fn since(&self, counts: &Counts) -> Value {
        let end = Mark::now(counts);
        let wall = end.at.duration_since(self.at).as_secs_f64().max(1e-3);
        json!({
            "s": (wall * 100.0).round() / 100.0,
            "cores": ((end.cpu_s - self.cpu_s) / wall * 100.0).round() / 100.0,
            "suspicions": end.suspect - self.suspect,
            "failed_verdicts": end.failed - self.failed,
        })
    }
}

fn summarize(mut times: Vec<f64>, expected: usize) -> Value {
    if times.len() < expected {
        return json!({"ok": false, "done": times.len(), "of": expected});
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    let p90 = times[(times.len() - 1).min((0.9 * times.len() as f64) as usize)];
    let r = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "ok": true,
        "all_s": r(*times.last().unwrap_or(&0.0)),
        "median_s": r(median),
        "p90_s": r(p90),
        "slower_than_5s": times.iter().filter(|x| **x > 5.0).count(),
    })
}

fn net_counters() -> (u64, u64) {
    let field = |path: &str, section: &str, name: &str| -> u64 {
        let Ok(text) = std::fs::read_to_string(path) else {
            return 0;
        };
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.windows(2) {
            let prefix = format!("{section}:");
            if pair[0].starts_with(&prefix) && pair[1].starts_with(&prefix) {
                let heads = pair[0].split_whitespace().skip(1);
                let values = pair[1].split_whitespace().skip(1);
                for (h, v) in heads.zip(values) {
                    if h == name {
                        return v.parse().unwrap_or(0);
                    }
                }
            }
        }
        0
    };
    (
        field("/proc/net/snmp", "Udp", "InDatagrams"),
        field("/proc/net/netstat", "IpExt", "InOctets"),
    )
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

async fn run_once(args: &Args, counts: &Counts, n: usize, rep: usize) -> Value {
    let config = match args.profile.as_str() {
        "local" => swim::Config::local(),
        "wan" => swim::Config::wan(),
        _ => swim::Config::lan(),
    };
    let mut cl = Cluster {
        nodes: Vec::new(),
        tasks: TaskTracker::new(),
        config,
        key: args.encrypt.then(Key::generate),
        killed: Arc::default(),
        false_pos: Arc::default(),
    };
    let mut res = json!({
        "n": n, "rep": rep, "encrypt": args.encrypt, "profile": args.profile,
        "loadavg_start": loadavg(), "impl": "proconsul",
    });
    let rss_before = rss_kb();
    for i in 0..n {
        cl.spawn(&format!("n{i:03}")).await;
    }
    let done = CancellationToken::new();
    cl.watch_false_positives(done.clone());
    let names: BTreeSet<String> = cl.nodes.iter().map(|n| n.name.clone()).collect();

    // Star join.
    let seed = cl.nodes[0].pool.addr().to_string();
    let mark = Mark::now(counts);
    let t0 = Instant::now();
    let joins = (1..n).map(|i| {
        let (pool, seed) = (cl.nodes[i].pool.clone(), seed.clone());
        async move {
            pool.join_one(&seed, Instant::now() + Duration::from_secs(10))
                .await
        }
    });
    let failed_joins = futures_util::stream::iter(joins)
        .buffer_unordered(args.join_concurrency)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await;
    if failed_joins > 0 {
        eprintln!("N={n}: {failed_joins} joins failed");
    }
    let joins_issued = t0.elapsed().as_secs_f64();
    let all: Vec<usize> = cl.live();
    let want = names.clone();
    let times = cl
        .until(&all, t0, args.timeout, move |v| exactly_alive(v, &want))
        .await;
    res["converge"] = summarize(times, n);
    res["converge"]["joins_issued_s"] = json!((joins_issued * 1000.0).round() / 1000.0);
    res["converge"]["failed_joins"] = json!(failed_joins);
    res["cpu_converge"] = mark.since(counts);
    println!(
        "N={n} rep={rep} converge: {} cpu {}",
        res["converge"], res["cpu_converge"]
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let per = |kb: u64| kb.saturating_sub(rss_before) / n as u64;
    res["rss_kb_per_member"] = json!(per(rss_kb()));

    let (u0, o0) = net_counters();
    let mark = Mark::now(counts);
    let t = Instant::now();
    tokio::time::sleep(args.idle).await;
    let (u1, o1) = net_counters();
    let dt = t.elapsed().as_secs_f64();
    res["cpu_idle"] = mark.since(counts);
    println!("N={n} rep={rep} idle cpu {}", res["cpu_idle"]);
    res["idle_per_agent"] = json!({
        "udp_dgrams_per_s": ((u1 - u0) as f64 / dt / n as f64 * 10.0).round() / 10.0,
        "ip_bytes_per_s": ((o1 - o0) as f64 / dt / n as f64).round(),
    });

    // Join and leave of one extra member at a time.
    let mut join_times = Vec::new();
    let mut leave_times = Vec::new();
    for j in 0..args.joins {
        let new = cl.spawn(&format!("x{j:02}")).await;
        let others: Vec<usize> = cl.live().into_iter().filter(|i| *i != new).collect();
        let target = *others.choose(&mut rand::rng()).expect("members");
        let addr = cl.nodes[target].pool.addr().to_string();
        let present: BTreeSet<String> = others.iter().map(|i| cl.nodes[*i].name.clone()).collect();
        let name = cl.nodes[new].name.clone();
        let t0 = Instant::now();
        if let Err(e) = cl.nodes[new]
            .pool
            .join_one(&addr, Instant::now() + Duration::from_secs(10))
            .await
        {
            eprintln!("join failed: {e}");
        }
        let everyone = cl.live();
        let (nm, ms) = (name.clone(), present.clone());
        let times = cl
            .until(&everyone, t0, args.timeout, move |v| {
                has(v, &nm, MemberStatus::Alive)
                    && v.iter()
                        .filter(|m| ms.contains(&m.name) && m.status == MemberStatus::Alive)
                        .count()
                        == ms.len()
            })
            .await;
        join_times.push(summarize(times, everyone.len()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = Instant::now();
        cl.nodes[new].pool.leave().await;
        let nm = name.clone();
        let times = cl
            .until(&others, t0, args.timeout, move |v| {
                has(v, &nm, MemberStatus::Left)
            })
            .await;
        leave_times.push(summarize(times, others.len()));
        cl.nodes[new].stop.cancel();
        cl.nodes[new].dead = true;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    res["join"] = json!(join_times);
    res["leave"] = json!(leave_times);
    println!("N={n} rep={rep} join: {}", res["join"]);
    println!("N={n} rep={rep} leave: {}", res["leave"]);

    // Failure detection: stop one non-seed member at a time.
    let mut fail_times = Vec::new();
    let mark = Mark::now(counts);
    for _ in 0..args.kills {
        let victims: Vec<usize> = cl
            .live()
            .into_iter()
            .filter(|i| *i != 0 && cl.nodes[*i].name.starts_with('n'))
            .collect();
        if cl.live().len() <= 3 || victims.is_empty() {
            break;
        }
        let v = *victims.choose(&mut rand::rng()).expect("victims");
        let name = cl.nodes[v].name.clone();
        cl.killed.lock().expect("lock").insert(name.clone());
        let t0 = Instant::now();
        cl.nodes[v].stop.cancel();
        cl.nodes[v].dead = true;
        let observers = cl.live();
        let nm = name.clone();
        let times = cl
            .until(&observers, t0, args.timeout, move |v| {
                has(v, &nm, MemberStatus::Failed)
            })
            .await;
        fail_times.push(summarize(times, observers.len()));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    res["fail"] = json!(fail_times);
    res["cpu_fail"] = mark.since(counts);
    println!(
        "N={n} rep={rep} fail: {} cpu {}",
        res["fail"], res["cpu_fail"]
    );
    res["false_positives"] = json!(
        cl.false_pos
            .lock()
            .expect("lock")
            .iter()
            .cloned()
            .collect::<Vec<_>>()
    );
    res["loadavg_end"] = json!(loadavg());
    done.cancel();
    for node in &cl.nodes {
        node.stop.cancel();
    }
    cl.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), cl.tasks.wait()).await;
    res
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gossip-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let counts = Arc::new(Counts::default());
    let recorder = Counts {
        suspect: counts.suspect.clone(),
        failed: counts.failed.clone(),
    };
    if metrics::set_global_recorder(recorder).is_err() {
        eprintln!("gossip-bench: a metrics recorder was already set");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        builder.worker_threads(args.threads);
    }
    let runtime = builder.enable_all().build().expect("a runtime");
    runtime.block_on(async {
        for &n in &args.sizes {
            for rep in 0..args.repeats {
                let res = run_once(&args, &counts, n, rep).await;
                println!("JSON {res}");
            }
        }
    });
    std::process::ExitCode::SUCCESS
}
