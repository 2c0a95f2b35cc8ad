//! A Jepsen-style history test of the catalog under faults.
//!
//! Three servers of dc1 run as real processes, each in a network namespace of its own
//! (`support::netns`). Four clients register services with unique ids, deregister some of
//! their own acknowledged ones and read the whole service with `?consistent`, each
//! operation sent to a random server and recorded with its invocation, completion and
//! outcome (ok; failed = refused or never sent; unknown = a timeout, a broken connection or
//! an answer such as 500 `leadership lost while committing log` that leaves open whether
//! the write was applied). Meanwhile a nemesis, one fault at a time, kills the leader with
//! SIGKILL and restarts it from its data dir, cuts a server off entirely (its bridge port
//! down), cuts a server off from its peers only (the clients still reach it, which is where
//! a deposed leader must refuse consistent reads), or kills and restarts a follower. Then
//! everything is healed and restarted, the datacenter must recover (a leader, a consistent
//! read through every server) and a final consistent read is taken. The checks
//! (`support::history`): every acknowledged registration not (possibly) deregistered is in
//! the final read, no acknowledged deregistration is undone, no id that was never
//! registered appears, and all the consistent reads together with the writes form a
//! linearizable history.
//!
//! The second test does the same with a second datacenter: one server of dc2, federated
//! over the WAN (QUIC, mutual TLS) with dc1; the writes go to it with `?dc=dc1`, so they
//! travel over the WAN to dc1, while the reads stay `?consistent` on dc1's servers and
//! the nemesis works on dc1.
//!
//! The third test runs another workload on dc1 under the same nemesis: a compare-and-set
//! register in the KV store. Four clients read the register's key with `?consistent`
//! (its value and `ModifyIndex`, or 404) and write new unique values with `PUT
//! ?cas=<the ModifyIndex they last read>`, each request to a random server: `true` is
//! ok, `false` a refusal (the write was ordered and its index was not the current one),
//! a refused or unsent request failed, and a timeout, a 5xx or a closed connection
//! unknown. Every 15 s the clients move to a new key, and a client makes at most 200
//! operations on one key: that keeps each key's history small enough for an exact
//! search, and since linearizability is local, checking each key on its own checks the
//! whole. After the heal every key is read once more. The check
//! (`support::register`): each key's history is linearizable for a register whose cas
//! succeeds iff it names the current `ModifyIndex` (0: the key is absent), versions
//! growing with each write; this catches a stale read after an acknowledged cas, two
//! acknowledged cas from the same index, a refusal with nothing to explain it, a
//! refused write taking effect, and a read of a value never written.
//!
//! Run: `cargo test --test it jepsen -- --nocapture` (60 s of faults for the first and
//! third tests, 30 s for the second). Environment: `JEPSEN_SECONDS=600` runs each test
//! that long (`bench/jepsen.sh` does, in release mode); `JEPSEN_SEED=<n>` repeats the
//! random choices of clients and nemesis (timing still differs); `JEPSEN_KEEP=1` keeps
//! the agents' logs and the history in the temp dir even when the test passes (a
//! failing run always keeps them and prints where). Needs root and `ip netns`;
//! otherwise the tests say `skipped` and pass. The tests take turns (a lock), so
//! running them together does not put seven agents on two cores at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use proconsul::client::{Client, RequestError, Response};

use crate::support::history::{self, Nanos, Op, Outcome, Record};
use crate::support::netns::{Net, ProcId};
use crate::support::process::run_in;
use crate::support::register;

/// Concurrent clients.
const CLIENTS: usize = 4;
/// Budget of one client operation (the server's own write budget is 10 s).
const OP_TIMEOUT: Duration = Duration::from_secs(12);
/// Budget of one health probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the datacenter may take to recover after the final heal: generous, for a
/// loaded two-core machine.
const RECOVERY_LIMIT: Duration = Duration::from_secs(120);
/// A client deregisters before it holds more than this many live ids, which keeps
/// every read small.
const MAX_LIVE: usize = 16;
/// dc1's servers are hosts 0..DC1; in the WAN test host DC1 is dc2's server.
const DC1: usize = 3;
const SERVICE: &str = "jepsen";
/// The register workload moves to a new key this often (see the module documentation).
const KEY_PERIOD: Duration = Duration::from_secs(15);
/// A client makes at most this many operations on one key, which bounds the size of
/// each key's history and so the search.
const MAX_OPS_PER_KEY: usize = 200;
/// The register's keys are this prefix and a number.
const KEY_PREFIX: &str = "jepsen/register/";

/// One test at a time: each starts several agents on a two-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn consistent_catalog_reads_stay_linearizable_under_kills_and_partitions() {
    run(Part::Local, 60);
}

#[test]
fn writes_through_another_datacenter_stay_linearizable_under_faults() {
    run(Part::Wan, 30);
}

#[test]
fn a_cas_register_in_kv_stays_linearizable_under_kills_and_partitions() {
    run(Part::Register, 60);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The catalog: writes and reads to dc1's servers.
    Local,
    /// The catalog: writes to dc2's server with `?dc=dc1`, reads to dc1's servers.
    Wan,
    /// A KV register: reads and cas writes to dc1's servers.
    Register,
}

/// splitmix64: small, seedable, good enough for choosing operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

/// The processes of the test and what the nemesis did to them.
struct Cluster {
    net: Net,
    part: Part,
    args: Vec<Vec<String>>,
    procs: Mutex<Vec<Option<ProcId>>>,
    start: Instant,
    events: Mutex<Vec<String>>,
    /// Servers found dead without the nemesis having killed them.
    crashes: Mutex<Vec<String>>,
}

impl Cluster {
    fn http(&self, h: usize) -> String {
        SocketAddr::from((self.net.ip(h), 8500)).to_string()
    }

    fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn log(&self, what: String) {
        let line = format!("[{:8.3} s] {what}", self.elapsed());
        eprintln!("{line}");
        self.events.lock().unwrap().push(line);
    }

    fn start_server(&self, h: usize) {
        let id = self.net.spawn(h, self.net.name(h), &self.args[h]);
        self.procs.lock().unwrap()[h] = Some(id);
    }

    fn kill(&self, h: usize) {
        let id = self.procs.lock().unwrap()[h].take();
        if let Some(id) = id {
            self.net.kill(id);
        }
    }

    /// Restarts (and records) any server that should run but exited on its own.
    fn check_crashes(&self) {
        for h in 0..self.args.len() {
            let id = self.procs.lock().unwrap()[h];
            if let Some(id) = id
                && !self.net.running(id)
            {
                let log = self.net.log_path(self.net.name(h));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                let what = format!(
                    "{} exited on its own; end of {}:\n{}",
                    self.net.name(h),
                    log.display(),
                    tail.join("\n")
                );
                self.log(what.clone());
                self.crashes.lock().unwrap().push(what);
                self.start_server(h);
            }
        }
    }
}

/// Why a request has no answer.
enum CallError {
    /// It was never sent (the connection was refused): it had no effect.
    NotSent(String),
    /// It may have been received.
    Unknown(String),
}

async fn call(
    addr: &str,
    method: Method,
    path: &str,
    body: Option<String>,
    limit: Duration,
) -> Result<Response, CallError> {
    let client = Client::new(addr).unwrap();
    match tokio::time::timeout(limit, client.call(method, path, body)).await {
        Err(_) => Err(CallError::Unknown(format!("no answer within {limit:?}"))),
        // A failed connect: nothing was sent.
        Ok(Err(e @ RequestError::Connect { .. })) => Err(CallError::NotSent(e.to_string())),
        Ok(Err(e)) => Err(CallError::Unknown(e.to_string())),
        Ok(Ok(r)) => Ok(r),
    }
}

/// Short form of an answer for the error tally: status and first words, no addresses.
fn tally_key(status: Option<u16>, text: &str) -> String {
    let words: String = text
        .split_whitespace()
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
        .take(8)
        .collect::<Vec<_>>()
        .join(" ");
    match status {
        Some(s) => format!("{s} {words}"),
        None => words,
    }
}

/// What one client did.
struct ClientLog<R> {
    records: Vec<R>,
    /// Error answers and transport errors, by kind of operation and text.
    errors: BTreeMap<String, usize>,
}

impl<R> Default for ClientLog<R> {
    fn default() -> Self {
        ClientLog {
            records: Vec::new(),
            errors: BTreeMap::new(),
        }
    }
}

async fn client(
    k: usize,
    cluster: Arc<Cluster>,
    until: Instant,
    mut rng: Rng,
) -> ClientLog<Record> {
    let mut log = ClientLog::default();
    let mut live: Vec<String> = Vec::new();
    let mut next_id = 0usize;
    let nanos = |t: Instant| t.duration_since(cluster.start).as_nanos() as Nanos;
    while Instant::now() < until {
        let roll = rng.below(100);
        let reader = rng.below(DC1 as u64) as usize;
        let (writer, dc) = match cluster.part {
            Part::Wan => (DC1, "?dc=dc1"),
            Part::Local | Part::Register => (rng.below(DC1 as u64) as usize, ""),
        };
        let (op, method, target, path, body) =
            if live.len() >= MAX_LIVE || (roll < 20 && !live.is_empty()) {
                let id = live.swap_remove(rng.below(live.len() as u64) as usize);
                let body = serde_json::json!({"Node": format!("c{k}"), "ServiceID": id});
                let path = format!("/v1/catalog/deregister{dc}");
                (
                    Op::Deregister(id),
                    Method::PUT,
                    writer,
                    path,
                    Some(body.to_string()),
                )
            } else if roll < 55 {
                let id = format!("svc-{k}-{next_id}");
                next_id += 1;
                let body = serde_json::json!({
                    "Node": format!("c{k}"),
                    "Address": "10.9.9.9",
                    "Service": {"ID": id, "Service": SERVICE, "Port": 1},
                });
                let path = format!("/v1/catalog/register{dc}");
                (
                    Op::Register(id),
                    Method::PUT,
                    writer,
                    path,
                    Some(body.to_string()),
                )
            } else {
                let path = format!("/v1/catalog/service/{SERVICE}?consistent");
                (Op::Read(BTreeSet::new()), Method::GET, reader, path, None)
            };
        let kind = match &op {
            Op::Register(_) => "register",
            Op::Deregister(_) => "deregister",
            Op::Read(_) => "read",
        };
        let via = cluster.net.name(target).to_owned();
        let invoke = Instant::now();
        let answer = call(&cluster.http(target), method, &path, body, OP_TIMEOUT).await;
        let complete = Instant::now();
        let mut record = Record {
            client: k,
            via: via.clone(),
            op,
            invoke: nanos(invoke),
            complete: nanos(complete),
            outcome: Outcome::Unknown,
        };
        let mut error = |key: String| *log.errors.entry(format!("{kind}: {key}")).or_default() += 1;
        match answer {
            Ok(r) if r.status == 200 => {
                record.outcome = Outcome::Ok;
                match &mut record.op {
                    Op::Register(id) => live.push(id.clone()),
                    Op::Read(seen) => match service_ids(&r.body) {
                        Ok(ids) => *seen = ids,
                        Err(e) => {
                            record.outcome = Outcome::Unknown;
                            error(format!("200 with a body that is not the service: {e}"));
                        }
                    },
                    Op::Deregister(_) => {}
                }
            }
            Ok(r) => {
                // A refusal (4xx) was not applied; a 500 (`leadership lost while
                // committing log`, a timeout, an RPC error) or a 429 may have been.
                let refused = (400..500).contains(&r.status) && r.status != 429;
                record.outcome = if refused {
                    Outcome::Failed
                } else {
                    Outcome::Unknown
                };
                error(tally_key(Some(r.status), &r.body));
            }
            Err(CallError::NotSent(e)) => {
                record.outcome = Outcome::Failed;
                error(tally_key(None, &e));
            }
            Err(CallError::Unknown(e)) => {
                record.outcome = Outcome::Unknown;
                error(tally_key(None, &e));
            }
        }
        // A deregistration that definitely had no effect is tried again later.
        if let (Op::Deregister(id), Outcome::Failed) = (&record.op, record.outcome) {
            live.push(id.clone());
        }
        log.records.push(record);
        tokio::time::sleep(rng.millis(5, 30)).await;
    }
    log
}

/// One client of the register workload: reads the current key with `?consistent` and
/// writes new values with `?cas=` the `ModifyIndex` it last read (once it has read one).
async fn register_client(
    k: usize,
    cluster: Arc<Cluster>,
    begin: Instant,
    until: Instant,
    mut rng: Rng,
) -> ClientLog<register::Record> {
    use register::Outcome as O;
    let mut log = ClientLog::default();
    let nanos = |t: Instant| t.duration_since(cluster.start).as_nanos() as Nanos;
    let mut key_no = u128::MAX;
    // The ModifyIndex of the key as this client last read it (0: absent).
    let mut last: Option<u64> = None;
    let mut ops_on_key = 0;
    let mut next_value = 0usize;
    while Instant::now() < until {
        let period = begin.elapsed().as_millis() / KEY_PERIOD.as_millis();
        if period != key_no {
            key_no = period;
            last = None;
            ops_on_key = 0;
        }
        if ops_on_key >= MAX_OPS_PER_KEY {
            let next_key = begin + KEY_PERIOD * (key_no + 1) as u32;
            tokio::time::sleep_until(next_key.min(until).into()).await;
            continue;
        }
        ops_on_key += 1;
        let key = format!("{KEY_PREFIX}{key_no}");
        let last_was_cas = log
            .records
            .last()
            .is_some_and(|r: &register::Record| matches!(r.op, register::Op::Cas { .. }));
        let target = rng.below(DC1 as u64) as usize;
        // Mostly a read and then a cas from what it returned; now and then a second cas
        // from the same index (which must be refused if the first took effect) or a
        // second read.
        let write = if last_was_cas {
            rng.below(4) == 0
        } else {
            rng.below(4) != 0
        };
        let op = match last {
            Some(expect) if write => {
                next_value += 1;
                register::Op::Cas {
                    expect,
                    value: format!("c{k}-{next_value}"),
                }
            }
            _ => register::Op::Read(None),
        };
        let (kind, method, path, body) = match &op {
            register::Op::Read(_) => (
                "kv read",
                Method::GET,
                format!("/v1/kv/{key}?consistent"),
                None,
            ),
            register::Op::Cas { expect, value } => (
                "kv cas",
                Method::PUT,
                format!("/v1/kv/{key}?cas={expect}"),
                Some(value.clone()),
            ),
        };
        let invoke = Instant::now();
        let answer = call(&cluster.http(target), method, &path, body, OP_TIMEOUT).await;
        let complete = Instant::now();
        let mut record = register::Record {
            client: k,
            key,
            via: cluster.net.name(target).to_owned(),
            op,
            invoke: nanos(invoke),
            complete: nanos(complete),
            outcome: O::Unknown,
        };
        let mut error = |key: String| *log.errors.entry(format!("{kind}: {key}")).or_default() += 1;
        match (answer, &mut record.op) {
            (Ok(r), register::Op::Read(seen)) if r.status == 200 || r.status == 404 => {
                match kv_version(&r.body, r.status) {
                    Ok(version) => {
                        last = Some(version.as_ref().map_or(0, |v| v.index));
                        *seen = version;
                        record.outcome = O::Ok;
                    }
                    Err(e) => error(format!(
                        "{} with a body that is not an entry: {e}",
                        r.status
                    )),
                }
            }
            (Ok(r), register::Op::Cas { .. }) if r.status == 200 => match r.body.trim() {
                "true" => record.outcome = O::Ok,
                "false" => record.outcome = O::Refused,
                other => error(format!("200 with neither true nor false: {other:.40}")),
            },
            (Ok(r), _) => {
                // As in the catalog: a 4xx other than 429 was refused before anything
                // was written; a 5xx or a 429 may have been applied.
                if (400..500).contains(&r.status) && r.status != 429 {
                    record.outcome = O::Failed;
                }
                error(tally_key(Some(r.status), &r.body));
            }
            (Err(CallError::NotSent(e)), _) => {
                record.outcome = O::Failed;
                error(tally_key(None, &e));
            }
            (Err(CallError::Unknown(e)), _) => error(tally_key(None, &e)),
        }
        log.records.push(record);
        tokio::time::sleep(rng.millis(20, 120)).await;
    }
    log
}

/// The value and `ModifyIndex` of a `/v1/kv/:key` answer (`None` for a 404).
fn kv_version(body: &str, status: u16) -> Result<Option<register::Version>, String> {
    use base64::Engine as _;
    if status == 404 {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let [entry] = v.as_array().map(Vec::as_slice).ok_or("not an array")? else {
        return Err(format!("not one entry: {body:.80}"));
    };
    let index = entry["ModifyIndex"]
        .as_u64()
        .ok_or_else(|| format!("no ModifyIndex: {entry}"))?;
    let value = match entry["Value"].as_str() {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("Value: {e}"))?;
            String::from_utf8(bytes).map_err(|e| format!("Value: {e}"))?
        }
        None => String::new(),
    };
    Ok(Some(register::Version { value, index }))
}

/// The `ServiceID`s of a `/v1/catalog/service/:name` answer.
fn service_ids(body: &str) -> Result<BTreeSet<String>, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let entries = v.as_array().ok_or("not an array")?;
    entries
        .iter()
        .map(|e| {
            e["ServiceID"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("an entry without ServiceID: {e}"))
        })
        .collect()
}

/// The leader as some live server of dc1 names it.
async fn leader(cluster: &Cluster, rng: &mut Rng) -> Option<usize> {
    let first = rng.below(DC1 as u64) as usize;
    for h in (0..DC1).map(|i| (first + i) % DC1) {
        let Ok(r) = call(
            &cluster.http(h),
            Method::GET,
            "/v1/status/leader",
            None,
            PROBE_TIMEOUT,
        )
        .await
        else {
            continue;
        };
        let Ok(addr) = serde_json::from_str::<String>(&r.body) else {
            continue;
        };
        if let Some(h) = addr.parse::<SocketAddr>().ok().and_then(|a| match a.ip() {
            std::net::IpAddr::V4(ip) => cluster.net.host_of(ip),
            std::net::IpAddr::V6(_) => None,
        }) {
            return Some(h);
        }
    }
    None
}

/// Whether every server of dc1 names the same leader and answers a consistent read
/// (and, in the WAN test, dc2's server reaches dc1).
async fn healthy(cluster: &Cluster) -> Result<(), String> {
    let mut leaders = BTreeSet::new();
    for h in 0..DC1 {
        let name = cluster.net.name(h);
        let r = call(
            &cluster.http(h),
            Method::GET,
            "/v1/status/leader",
            None,
            PROBE_TIMEOUT,
        )
        .await
        .map_err(|e| match e {
            CallError::NotSent(e) | CallError::Unknown(e) => format!("{name}: {e}"),
        })?;
        let leader: String = serde_json::from_str(&r.body).unwrap_or_default();
        if r.status != 200 || leader.is_empty() {
            return Err(format!("{name} knows no leader: {} {}", r.status, r.body));
        }
        leaders.insert(leader);
    }
    if leaders.len() != 1 {
        return Err(format!("the servers name different leaders: {leaders:?}"));
    }
    let path = format!("/v1/catalog/service/{SERVICE}?consistent");
    let mut reads: Vec<(String, String, String)> = (0..DC1)
        .map(|h| {
            (
                cluster.net.name(h).to_owned(),
                cluster.http(h),
                path.clone(),
            )
        })
        .collect();
    if cluster.part == Part::Wan {
        let name = format!("{} (?dc=dc1)", cluster.net.name(DC1));
        reads.push((name, cluster.http(DC1), format!("{path}&dc=dc1")));
    }
    for (name, addr, path) in reads {
        match call(&addr, Method::GET, &path, None, PROBE_TIMEOUT * 2).await {
            Ok(r) if r.status == 200 => {}
            Ok(r) => return Err(format!("{name}: consistent read: {} {}", r.status, r.body)),
            Err(CallError::NotSent(e) | CallError::Unknown(e)) => {
                return Err(format!("{name}: consistent read: {e}"));
            }
        }
    }
    Ok(())
}

async fn wait_healthy(cluster: &Cluster, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        match healthy(cluster).await {
            Ok(()) => return Ok(started.elapsed()),
            Err(e) if started.elapsed() >= within => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// What the nemesis did.
#[derive(Default, Debug)]
struct NemesisLog {
    leader_kills: usize,
    partitions: usize,
    isolations: usize,
    follower_restarts: usize,
    skipped: usize,
    recoveries: Vec<Duration>,
    not_recovered: usize,
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn nemesis(cluster: Arc<Cluster>, until: Instant, mut rng: Rng) -> NemesisLog {
    let mut log = NemesisLog::default();
    let name = |h: usize| cluster.net.name(h).to_owned();
    // Each round of four faults has one of each kind: first a leader kill (so that even
    // a short run changes leaders), then the others in a random order.
    let mut round: Vec<u64> = Vec::new();
    loop {
        tokio::time::sleep(rng.millis(2000, 4000)).await;
        if Instant::now() >= until {
            return log;
        }
        blocking(|| cluster.check_crashes());
        if round.is_empty() {
            round = vec![1, 2, 3];
            for i in (1..round.len()).rev() {
                round.swap(i, rng.below(i as u64 + 1) as usize);
            }
            round.push(0);
        }
        match round.pop().unwrap() {
            0 => {
                let Some(h) = leader(&cluster, &mut rng).await else {
                    cluster.log("nemesis: no leader known; nothing killed, try again".into());
                    log.skipped += 1;
                    round.push(0);
                    continue;
                };
                cluster.log(format!("nemesis: kill -9 the leader {}", name(h)));
                blocking(|| cluster.kill(h));
                log.leader_kills += 1;
                // Sometimes back before the others elect (a supervisor restarting a
                // crashed server), sometimes after: openraft restores a restarted leader
                // whose term is still current as leader, without an election.
                tokio::time::sleep(rng.millis(200, 4000)).await;
                cluster.log(format!("nemesis: restart {}", name(h)));
                blocking(|| cluster.start_server(h));
            }
            kind @ (1 | 2) => {
                let h = rng.below(DC1 as u64) as usize;
                if kind == 1 {
                    cluster.log(format!("nemesis: partition {} (link down)", name(h)));
                    blocking(|| cluster.net.partition(h));
                    log.partitions += 1;
                } else {
                    // From dc1's other servers only: the clients and, in the WAN test,
                    // dc2's server still reach it.
                    cluster.log(format!(
                        "nemesis: isolate {} from the other servers of dc1 (clients still \
                         reach it)",
                        name(h)
                    ));
                    let peers: Vec<usize> = (0..DC1).filter(|o| *o != h).collect();
                    blocking(|| cluster.net.isolate_from(h, &peers));
                    log.isolations += 1;
                }
                // Shorter and longer than a server holds a request while it looks for a
                // leader (7 s, Consul's `rpc_hold_timeout`).
                tokio::time::sleep(rng.millis(3000, 10000)).await;
                cluster.log(format!("nemesis: heal {}", name(h)));
                blocking(|| cluster.net.heal(h));
            }
            _ => {
                let leader = leader(&cluster, &mut rng).await;
                let followers: Vec<usize> = (0..DC1).filter(|h| Some(*h) != leader).collect();
                let h = followers[rng.below(followers.len() as u64) as usize];
                cluster.log(format!("nemesis: kill -9 and restart {}", name(h)));
                blocking(|| cluster.kill(h));
                tokio::time::sleep(rng.millis(300, 1500)).await;
                blocking(|| cluster.start_server(h));
                log.follower_restarts += 1;
            }
        }
        match wait_healthy(&cluster, Duration::from_secs(60)).await {
            Ok(d) => {
                cluster.log(format!("healthy again after {:.1} s", d.as_secs_f64()));
                log.recoveries.push(d);
            }
            Err(e) => {
                cluster.log(format!("not healthy after 60 s: {e}"));
                log.not_recovered += 1;
            }
        }
    }
}

fn seconds(default: u64) -> u64 {
    match std::env::var("JEPSEN_SECONDS") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("JEPSEN_SECONDS={s}: not a number of seconds")),
        Err(_) => default,
    }
}

fn seed() -> u64 {
    match std::env::var("JEPSEN_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("JEPSEN_SEED={s}: not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// Arguments of every server: dc1's three, and in the WAN test dc2's one.
fn server_args(part: Part, net: &Net, dir: &std::path::Path) -> Vec<Vec<String>> {
    let tls = |dc: &str| -> Option<String> {
        if part != Part::Wan {
            return None;
        }
        let config_dir = dir.join(format!("conf-{dc}"));
        std::fs::create_dir_all(&config_dir).unwrap();
        let tls = serde_json::json!({
            "ca_file": dir.join("consul-agent-ca.pem"),
            "cert_file": dir.join(format!("{dc}-server-consul-0.pem")),
            "key_file": dir.join(format!("{dc}-server-consul-0-key.pem")),
            "verify_incoming": true,
            "verify_outgoing": true,
            "verify_server_hostname": true,
        });
        std::fs::write(config_dir.join("tls.json"), tls.to_string()).unwrap();
        Some(format!("-config-dir={}", config_dir.display()))
    };
    if part == Part::Wan {
        for args in [
            &["tls", "ca", "create"][..],
            &["tls", "cert", "create", "-server", "-dc", "dc1"],
            &["tls", "cert", "create", "-server", "-dc", "dc2"],
        ] {
            let out = run_in(dir, args);
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let common = |h: usize| {
        let ip = net.ip(h);
        vec![
            "agent".to_owned(),
            "-server".into(),
            format!("-node={}", net.name(h)),
            format!("-bind={ip}"),
            format!("-client={ip}"),
            format!("-data-dir={}", dir.join("data").join(net.name(h)).display()),
            "-dns-port=-1".into(),
            "-log-level=warn".into(),
        ]
    };
    let mut all = Vec::new();
    for h in 0..DC1 {
        let mut args = common(h);
        args.extend([
            "-bootstrap-expect=3".to_owned(),
            "-datacenter=dc1".into(),
            "-retry-interval=1s".into(),
        ]);
        args.extend(
            (0..DC1)
                .filter(|o| *o != h)
                .map(|o| format!("-retry-join={}", net.ip(o))),
        );
        args.extend(tls("dc1"));
        all.push(args);
    }
    if part == Part::Wan {
        let mut args = common(DC1);
        args.extend([
            "-bootstrap-expect=1".to_owned(),
            "-datacenter=dc2".into(),
            "-retry-interval-wan=1s".into(),
        ]);
        args.extend((0..DC1).map(|o| format!("-retry-join-wan={}", net.ip(o))));
        args.extend(tls("dc2"));
        all.push(args);
    }
    all
}

#[derive(Default)]
struct Tally {
    attempted: usize,
    ok: usize,
    failed: usize,
    unknown: usize,
}

fn run(part: Part, default_seconds: u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let label = match part {
        Part::Local => "dc1",
        Part::Wan => "dc2->dc1",
        Part::Register => "kv register",
    };
    let secs = seconds(default_seconds);
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    let (tag, hosts) = match part {
        Part::Local => ("j", &["s1", "s2", "s3"][..]),
        Part::Wan => ("w", &["s1", "s2", "s3", "w1"][..]),
        Part::Register => ("r", &["s1", "s2", "s3"][..]),
    };
    let net = match Net::create(tag, hosts, &dir.path().join("logs")) {
        Ok(net) => net,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    eprintln!(
        "jepsen [{label}]: {secs} s of faults, seed {seed} (JEPSEN_SEED), {CLIENTS} clients, \
         servers at {}..{}, logs in {}",
        net.ip(0),
        net.ip(hosts.len() - 1),
        dir.path().join("logs").display()
    );
    let args = server_args(part, &net, dir.path());
    let cluster = Arc::new(Cluster {
        part,
        procs: Mutex::new(vec![None; args.len()]),
        args,
        net,
        start: Instant::now(),
        events: Mutex::new(Vec::new()),
        crashes: Mutex::new(Vec::new()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(workload(cluster.clone(), secs, seed));
    drop(runtime);
    let events = cluster.events.lock().unwrap().clone();
    let Run {
        history,
        errors,
        nemesis,
        recovery,
    } = match outcome {
        Ok(run) => run,
        Err(e) => {
            drop(cluster);
            let path = keep(dir, &[], &events);
            panic!(
                "jepsen [{label}] (seed {seed}): {e}; logs in {}",
                path.display()
            );
        }
    };
    let crashes = cluster.crashes.lock().unwrap().clone();
    let logs_text: Vec<(String, String)> = (0..hosts.len())
        .map(|h| {
            let name = cluster.net.name(h).to_owned();
            let text = std::fs::read_to_string(cluster.net.log_path(&name)).unwrap_or_default();
            (name, text)
        })
        .collect();
    // Stop every process and remove the namespaces before checking.
    drop(cluster);

    eprintln!("jepsen [{label}] figures (seed {seed}):");
    let (mut problems, acknowledged, lines) = match history {
        History::Catalog {
            mut records,
            final_ids,
        } => {
            records.sort_by_key(|r| r.invoke);
            let (problems, acknowledged) = check_catalog(&records, &final_ids);
            let lines: Vec<String> = records.iter().map(|r| format!("{r:#}")).collect();
            (problems, acknowledged, lines)
        }
        History::Register(mut records) => {
            records.sort_by_key(|r| (r.key.clone(), r.invoke));
            let (problems, acknowledged) = check_register(&records);
            let lines: Vec<String> = records.iter().map(|r| r.to_string()).collect();
            (problems, acknowledged, lines)
        }
    };
    problems.extend(crashes.iter().map(|c| format!("crash: {c}")));
    // A run that checked next to nothing proves nothing (a very low bar, not a rate).
    let (writes, reads) = acknowledged;
    if writes < 10 || reads < 10 || nemesis.leader_kills == 0 {
        problems.push(format!(
            "the run is too thin to check: {writes} acknowledged writes, {reads} reads, \
             {} leader kills",
            nemesis.leader_kills
        ));
    }
    for (name, text) in &logs_text {
        if let Some(line) = text.lines().find(|l| l.contains("panicked")) {
            problems.push(format!("{name} panicked: {line}"));
        }
    }

    let longest = nemesis.recoveries.iter().max().copied().unwrap_or_default();
    eprintln!(
        "  nemesis: {} leader kills, {} partitions (link down), {} isolations (peers only), \
         {} follower restarts, {} skipped; healthy again after each within {:.1} s at most \
         ({} not within 60 s)",
        nemesis.leader_kills,
        nemesis.partitions,
        nemesis.isolations,
        nemesis.follower_restarts,
        nemesis.skipped,
        longest.as_secs_f64(),
        nemesis.not_recovered
    );
    eprintln!(
        "  after the final heal: healthy in {:.1} s",
        recovery.as_secs_f64()
    );
    eprintln!("  error answers:");
    for (text, n) in &errors {
        eprintln!("    {n:>5} × {text}");
    }

    if !problems.is_empty() || std::env::var_os("JEPSEN_KEEP").is_some() {
        let path = keep(dir, &lines, &events);
        eprintln!(
            "  kept {} (history.txt, nemesis.txt, logs/)",
            path.display()
        );
    }
    if !problems.is_empty() {
        for p in problems.iter().take(20) {
            eprintln!("PROBLEM: {p}");
        }
        panic!(
            "jepsen [{label}]: {} problems (seed {seed}); the first: {}",
            problems.len(),
            problems[0]
        );
    }
}

/// Checks the catalog's history and prints its figures; returns the problems and the
/// numbers of acknowledged writes and reads.
fn check_catalog(
    history: &[Record],
    final_ids: &BTreeSet<String>,
) -> (Vec<String>, (usize, usize)) {
    let started = Instant::now();
    let verdict = history::check(history);
    let check_time = started.elapsed();
    let mut problems = verdict.problems.clone();
    problems.extend(history::final_state_problems(history, final_ids));
    let acknowledged = |f: fn(&Op) -> bool| {
        history
            .iter()
            .filter(|r| r.outcome == Outcome::Ok && f(&r.op))
            .count()
    };
    let writes = acknowledged(|op| !matches!(op, Op::Read(_)));
    let reads = acknowledged(|op| matches!(op, Op::Read(_)));

    let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
    for r in history.iter().filter(|r| r.client != CLIENTS) {
        let kind = match r.op {
            Op::Register(_) => "register",
            Op::Deregister(_) => "deregister",
            Op::Read(_) => "read",
        };
        let t = tallies.entry(kind).or_default();
        t.attempted += 1;
        match r.outcome {
            Outcome::Ok => t.ok += 1,
            Outcome::Failed => t.failed += 1,
            Outcome::Unknown => t.unknown += 1,
        }
    }
    for (kind, t) in &tallies {
        eprintln!(
            "  {kind:<10} attempted {:>6}  ok {:>6}  failed {:>5}  unknown {:>5}",
            t.attempted, t.ok, t.failed, t.unknown
        );
    }
    eprintln!(
        "  reads checked {}; search over {} operations, {} steps, {:.2?}; unknown writes: \
         {} narrowed to required, {} optional, {} dropped",
        verdict.reads_checked,
        verdict.ops_searched,
        verdict.search_steps,
        check_time,
        verdict.unknown_required,
        verdict.unknown_optional,
        verdict.unknown_dropped
    );
    eprintln!("  the final read holds {} ids", final_ids.len());
    (problems, (writes, reads))
}

/// Checks the register's history, key by key, and prints its figures; returns the
/// problems and the numbers of acknowledged writes and reads.
fn check_register(history: &[register::Record]) -> (Vec<String>, (usize, usize)) {
    use register::{Op as R, Outcome as O};
    let started = Instant::now();
    let verdict = register::check_each_key(history);
    let check_time = started.elapsed();
    let clients = || history.iter().filter(|r| r.client != CLIENTS);
    let count = |cas: bool, outcome: O| {
        clients()
            .filter(|r| matches!(r.op, R::Cas { .. }) == cas && r.outcome == outcome)
            .count()
    };
    let reads = clients().filter(|r| matches!(r.op, R::Read(_))).count();
    let absent = clients()
        .filter(|r| r.op == R::Read(None) && r.outcome == O::Ok)
        .count();
    let writes = clients().count() - reads;
    eprintln!(
        "  read       attempted {reads:>6}  ok {:>6} ({absent} absent)  failed {:>5}  \
         unknown {:>5}",
        count(false, O::Ok),
        count(false, O::Failed),
        count(false, O::Unknown)
    );
    eprintln!(
        "  cas        attempted {writes:>6}  true {:>6}  false {:>6}  failed {:>5}  \
         unknown {:>5}",
        count(true, O::Ok),
        count(true, O::Refused),
        count(true, O::Failed),
        count(true, O::Unknown)
    );
    eprintln!(
        "  {} keys; reads checked {} (with a final read of each key); search over {} \
         operations, {} steps, {:.2?}; unknown cas: {} read later (required), {} optional, \
         {} dropped",
        verdict.keys,
        verdict.reads_checked,
        verdict.ops_searched,
        verdict.search_steps,
        check_time,
        verdict.unknown_required,
        verdict.unknown_optional,
        verdict.unknown_dropped
    );
    (verdict.problems, (count(true, O::Ok), count(false, O::Ok)))
}

/// What the clients recorded, with what was read after the final heal.
enum History {
    Catalog {
        records: Vec<Record>,
        /// The final read of the service.
        final_ids: BTreeSet<String>,
    },
    /// The final read of each key included.
    Register(Vec<register::Record>),
}

/// What the workload produced.
struct Run {
    history: History,
    errors: BTreeMap<String, usize>,
    nemesis: NemesisLog,
    recovery: Duration,
}

/// Keeps the temp dir (the agents' logs) and writes the history (one operation a line)
/// and the nemesis events into it.
fn keep(dir: tempfile::TempDir, history: &[String], events: &[String]) -> std::path::PathBuf {
    let path = dir.keep();
    let mut text = String::new();
    for r in history {
        text.push_str(r);
        text.push('\n');
    }
    std::fs::write(path.join("history.txt"), text).unwrap();
    std::fs::write(path.join("nemesis.txt"), events.join("\n") + "\n").unwrap();
    path
}

/// Waits for the clients and adds up what they did.
async fn gather<R>(
    clients: Vec<tokio::task::JoinHandle<ClientLog<R>>>,
) -> (Vec<R>, BTreeMap<String, usize>) {
    let mut records = Vec::new();
    let mut errors = BTreeMap::new();
    for c in clients {
        let log = c.await.unwrap();
        records.extend(log.records);
        for (k, n) in log.errors {
            *errors.entry(k).or_default() += n;
        }
    }
    (records, errors)
}

/// A consistent read after the heal, through `h`, asked again until it is answered with
/// one of `statuses`: the answer, with when it was sent and when it arrived.
async fn final_read(
    cluster: &Cluster,
    h: usize,
    path: &str,
    statuses: &[u16],
) -> Result<(proconsul::client::Response, Nanos, Nanos), String> {
    let nanos = |t: Instant| t.duration_since(cluster.start).as_nanos() as Nanos;
    let started = Instant::now();
    loop {
        let invoke = Instant::now();
        let answer = call(&cluster.http(h), Method::GET, path, None, OP_TIMEOUT).await;
        let complete = Instant::now();
        match answer {
            Ok(r) if statuses.contains(&r.status) => {
                return Ok((r, nanos(invoke), nanos(complete)));
            }
            _ if started.elapsed() > Duration::from_secs(60) => {
                return Err(format!("no final consistent read of {path} within 60 s"));
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Starts the servers, runs clients and nemesis, heals, waits for recovery and takes the
/// final reads. `Err` when the datacenter does not come up or does not recover.
async fn workload(cluster: Arc<Cluster>, secs: u64, seed: u64) -> Result<Run, String> {
    for h in 0..cluster.args.len() {
        blocking(|| cluster.start_server(h));
    }
    if let Err(e) = wait_healthy(&cluster, Duration::from_secs(120)).await {
        return Err(format!(
            "the servers did not form a datacenter within 120 s: {e}"
        ));
    }
    cluster.log(format!(
        "datacenter up; {secs} s of clients and faults begin"
    ));
    let begin = Instant::now();
    let until = begin + Duration::from_secs(secs);
    let mut rng = Rng(seed);
    let mut catalog = Vec::new();
    let mut kv = Vec::new();
    for k in 0..CLIENTS {
        let (cluster, rng) = (cluster.clone(), Rng(rng.next()));
        match cluster.part {
            Part::Local | Part::Wan => catalog.push(tokio::spawn(client(k, cluster, until, rng))),
            Part::Register => kv.push(tokio::spawn(register_client(k, cluster, begin, until, rng))),
        }
    }
    let nemesis = tokio::spawn(nemesis(cluster.clone(), until, Rng(rng.next())));
    let (catalog, mut errors) = gather(catalog).await;
    let (mut kv, kv_errors) = gather(kv).await;
    errors.extend(kv_errors);
    let nemesis = nemesis.await.unwrap();
    cluster.log("clients done; healing everything".into());
    blocking(|| {
        cluster.net.heal_all();
        cluster.check_crashes();
    });
    let recovery = match wait_healthy(&cluster, RECOVERY_LIMIT).await {
        Ok(d) => d,
        Err(e) => {
            return Err(format!(
                "not recovered within {RECOVERY_LIMIT:?} of the final heal: {e}"
            ));
        }
    };
    cluster.log(format!("recovered in {:.1} s", recovery.as_secs_f64()));
    // The final reads: consistent, through the server that names itself leader.
    let leader = leader(&cluster, &mut rng).await.unwrap_or(0);
    let via = cluster.net.name(leader).to_owned();
    let history = if cluster.part == Part::Register {
        let keys: BTreeSet<String> = kv.iter().map(|r| r.key.clone()).collect();
        for key in keys {
            let path = format!("/v1/kv/{key}?consistent");
            let (r, invoke, complete) = final_read(&cluster, leader, &path, &[200, 404]).await?;
            let seen = kv_version(&r.body, r.status)
                .map_err(|e| format!("the final read of {key}: {e}"))?;
            kv.push(register::Record {
                client: CLIENTS,
                key,
                via: via.clone(),
                op: register::Op::Read(seen),
                invoke,
                complete,
                outcome: register::Outcome::Ok,
            });
        }
        History::Register(kv)
    } else {
        let path = format!("/v1/catalog/service/{SERVICE}?consistent");
        let (r, invoke, complete) = final_read(&cluster, leader, &path, &[200]).await?;
        let final_ids = service_ids(&r.body).map_err(|e| format!("the final read: {e}"))?;
        let mut records = catalog;
        records.push(Record {
            client: CLIENTS,
            via,
            op: Op::Read(final_ids.clone()),
            invoke,
            complete,
            outcome: Outcome::Ok,
        });
        History::Catalog { records, final_ids }
    };
    Ok(Run {
        history,
        errors,
        nemesis,
        recovery,
    })
}
