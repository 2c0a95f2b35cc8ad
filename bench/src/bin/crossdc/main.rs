//! Cross-datacenter DNS benchmark (not a test): what `web.service.dc2.consul` costs when
//! dc2 sits behind a WAN link with a known round trip, next to the same name answered by
//! the local datacenter.
//!
//! ```text
//! crossdc-bench [--count N] [--delay-ms D] [--concurrency C] [--seconds S]
//!               [--baseline-count M] [--agent-config JSON]
//! ```
//!
//! Everything runs in this process on 127.0.0.1: two in-process agents, `a0` (the only
//! server of dc1) and `b0` (the only server of dc2), federated over QUIC with mutual TLS
//! (certificates from one CA). dc2's WAN port is reached only through a userspace UDP
//! delay proxy that holds every datagram for D ms in each direction, so one round trip
//! across the "WAN" costs 2×D plus whatever the agents add:
//!
//! ```text
//!  bench ─UDP─▶ a0 DNS ─▶ gateway ─QUIC─▶ delay proxy ─D ms─▶ b0 WAN port (dc2 catalog)
//!        ◀───────────────────────────────        ◀─D ms──
//! ```
//!
//! Measured, in this order: N sequential A queries for `web.service.consul` (answered by
//! dc1) and for `web.service.dc2.consul` (answered by dc2); M sequential WAN pings from
//! a0 to dc2 over the same QUIC connection, and M UDP datagrams echoed through a second
//! delay proxy of the same kind (what the link alone costs); then C concurrent clients
//! asking for S seconds, cross-datacenter and local. A query unanswered after 2 s counts
//! as an error, as does a wrong answer. Output: human lines, then one `JSON {…}` line
//! per measurement. `--agent-config` is extra config JSON written into a0's config dir,
//! so that runs with different DNS settings on a0 can be compared.

#![allow(clippy::print_stdout, missing_docs)]

use proconsul_bench::delay::{DelayProxy, MAX_DATAGRAM};

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use proconsul::client::Client;
use proconsul::config::Sources;
use proconsul::config::raw::{RawConfig, RawPorts};
use proconsul::{Agent, AgentConfig};
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wan::rpc::{Delivery, Request};
use wan::tls::{self, CertKind, CertRequest, Pem};

const USAGE: &str = "usage: crossdc-bench [--count N] [--delay-ms D] [--concurrency C] \
                     [--seconds S] [--baseline-count M] [--agent-config JSON]";

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// A DNS query (or WAN ping, or echo) unanswered this long counts as an error.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Budget of each setup step (leader, registration, federation); past it the bench fails.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Time between two tries of a setup step.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Queries sent before each sequential measurement and not counted (connections,
/// caches and allocators warm up).
const WARMUP: usize = 50;
/// Most concurrent clients `--concurrency` accepts.
const MAX_CONCURRENCY: usize = 1024;
/// Longest load phase `--seconds` accepts.
const MAX_SECONDS: u64 = 600;
/// Longest one-way delay `--delay-ms` accepts (well below [`QUERY_TIMEOUT`] / 2 is
/// sensible; beyond this every query would time out).
const MAX_DELAY_MS: u64 = 900;
/// How long the proxies' tasks get to stop after the agents have.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Tries at finding a port free for UDP and TCP at once.
const FREE_PORT_TRIES: usize = 100;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("crossdc-bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("setup: a tokio runtime");
    match runtime.block_on(run(&options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crossdc-bench: setup failed: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// Options

struct Options {
    count: usize,
    delay: Duration,
    concurrency: usize,
    seconds: u64,
    baseline_count: usize,
    agent_config: Option<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            count: 2000,
            delay: Duration::from_millis(20),
            concurrency: 32,
            seconds: 5,
            baseline_count: 200,
            agent_config: None,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|e| format!("{flag} {value}: {e}"))
            };
            match flag.as_str() {
                "--count" => o.count = usize::try_from(number()?).unwrap_or(usize::MAX),
                "--delay-ms" => o.delay = Duration::from_millis(number()?),
                "--concurrency" => o.concurrency = usize::try_from(number()?).unwrap_or(usize::MAX),
                "--seconds" => o.seconds = number()?,
                "--baseline-count" => {
                    o.baseline_count = usize::try_from(number()?).unwrap_or(usize::MAX)
                }
                "--agent-config" => {
                    serde_json::from_str::<Value>(value)
                        .map_err(|e| format!("--agent-config is not JSON: {e}"))?;
                    o.agent_config = Some(value.clone());
                }
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if o.count == 0 {
            return Err("--count must be at least 1".into());
        }
        if o.delay > Duration::from_millis(MAX_DELAY_MS) {
            return Err(format!("--delay-ms is at most {MAX_DELAY_MS}"));
        }
        if !(1..=MAX_CONCURRENCY).contains(&o.concurrency) {
            return Err(format!("--concurrency is 1 to {MAX_CONCURRENCY}"));
        }
        if !(1..=MAX_SECONDS).contains(&o.seconds) {
            return Err(format!("--seconds is 1 to {MAX_SECONDS}"));
        }
        Ok(o)
    }

    fn delay_ms(&self) -> f64 {
        self.delay.as_secs_f64() * 1e3
    }
}

// ---------------------------------------------------------------------------------------
// The run: federation up, measurements, everything stopped

async fn run(o: &Options) -> Result<(), String> {
    let root = tempfile::tempdir().map_err(|e| format!("a temp dir: {e}"))?;
    let ca = tls::create_ca("consul", 30).map_err(|e| format!("the CA: {e}"))?;
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let result = federate_and_measure(o, root.path(), &ca, &tasks, &stop).await;
    stop.cancel();
    tasks.close();
    if timeout(SHUTDOWN_GRACE, tasks.wait()).await.is_err() {
        eprintln!("warning: {} proxy tasks did not stop in time", tasks.len());
    }
    result
}

async fn federate_and_measure(
    o: &Options,
    root: &Path,
    ca: &Pem,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(), String> {
    // b0 binds a port picked here so that the proxy can point at it before b0 starts.
    let b_wan_port = free_port()?;
    let link = DelayProxy::start(
        SocketAddr::new(LOOPBACK, b_wan_port),
        o.delay,
        tasks,
        stop.child_token(),
    )
    .await
    .map_err(|e| format!("the delay proxy: {e}"))?;
    let started = Instant::now();
    let b0 = start_server(
        root,
        ca,
        ServerSpec {
            name: "b0",
            datacenter: "dc2",
            extra_config: None,
            wan: Some((b_wan_port, link.addr.port())),
            join_wan: vec![],
        },
    )
    .await?;
    let a0 = start_server(
        root,
        ca,
        ServerSpec {
            name: "a0",
            datacenter: "dc1",
            extra_config: o.agent_config.as_deref(),
            wan: None,
            join_wan: vec![link.addr.to_string()],
        },
    )
    .await;
    let a0 = match a0 {
        Ok(a0) => a0,
        Err(e) => {
            b0.stop(false).await;
            return Err(e);
        }
    };
    let result = measure(o, &a0, &b0, &link, started, tasks, stop).await;
    a0.stop(false).await;
    b0.stop(false).await;
    result
}

async fn measure(
    o: &Options,
    a0: &Agent,
    b0: &Agent,
    link: &DelayProxy,
    started: Instant,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(), String> {
    let dns = a0.dns_addr().ok_or("a0 has no DNS address")?;
    let local = Name::from_ascii("web.service.consul.").map_err(|e| e.to_string())?;
    let remote = Name::from_ascii("web.service.dc2.consul.").map_err(|e| e.to_string())?;
    let local_ip = Ipv4Addr::new(10, 0, 0, 1);
    let remote_ip = Ipv4Addr::new(10, 0, 0, 2);
    register(a0, "web-1", local_ip).await?;
    register(b0, "web-2", remote_ip).await?;
    let mut resolver = Resolver::new(dns)
        .await
        .map_err(|e| format!("a DNS socket: {e}"))?;
    poll(
        "web.service.dc2.consul answered over a0's DNS",
        async || {
            resolver
                .ask(&remote, remote_ip)
                .await
                .map(drop)
                .map_err(|e| e.label().to_owned())
        },
    )
    .await?;
    let ready = started.elapsed();

    let delay_ms = o.delay_ms();
    let rtt_ms = 2.0 * delay_ms;
    println!(
        "setup: a0 (dc1) and b0 (dc2) federated through a delay proxy of {delay_ms:.1} ms each way \
         ({rtt_ms:.1} ms per round trip); dc2 answered over DNS {:.2} s after start",
        ready.as_secs_f64()
    );
    println!(
        "       a0 extra config: {}",
        o.agent_config.as_deref().unwrap_or("(none)")
    );
    let agent_config: Value = o
        .agent_config
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or(Value::Null);
    emit(json!({
        "bench": "setup", "delay_ms": delay_ms, "agent_config": agent_config,
        "ready_s": ready.as_secs_f64(),
    }));

    // 1. Sequential DNS queries, local then cross-datacenter.
    let seq_local = sequential(&mut resolver, &local, local_ip, o.count).await;
    report_sequential("local", "web.service.consul", &seq_local, o.count);
    let seq_remote = sequential(&mut resolver, &remote, remote_ip, o.count).await;
    report_sequential("remote", "web.service.dc2.consul", &seq_remote, o.count);
    report_overhead(&seq_local, &seq_remote, delay_ms);

    // 2. What the link alone costs: a WAN ping over a0's QUIC connection to dc2, and a
    //    UDP echo through a proxy of the same kind.
    if o.baseline_count > 0 {
        let federation = a0
            .gateway()
            .federation()
            .map_err(|e| format!("a0 is not federated: {e}"))?;
        let mut ping = Sample::default();
        for i in 0..WARMUP + o.baseline_count {
            let t = Instant::now();
            let answer = federation
                .call(
                    "dc2",
                    &Request::Ping,
                    Delivery::default(),
                    t + QUERY_TIMEOUT,
                )
                .await;
            if i >= WARMUP {
                match answer {
                    Ok(_) => ping.latencies.push(t.elapsed()),
                    Err(wan::WanError::Timeout) => ping.error("timeout"),
                    Err(_) => ping.error("wan error"),
                }
            }
        }
        report_baseline(
            "wan_ping",
            "WAN ping a0 → dc2 (QUIC stream, mTLS)",
            &ping,
            delay_ms,
        );
        let echo = echo_through_proxy(o, tasks, stop).await?;
        report_baseline(
            "proxy_echo",
            "UDP echo through a delay proxy",
            &echo,
            delay_ms,
        );
    }

    // 3. Throughput: C clients for S seconds each.
    let seconds = Duration::from_secs(o.seconds);
    let load_remote = load(dns, &remote, remote_ip, o.concurrency, seconds).await;
    report_load("remote", "web.service.dc2.consul", load_remote, o);
    let load_local = load(dns, &local, local_ip, o.concurrency, seconds).await;
    report_load("local", "web.service.consul", load_local, o);

    let (relayed, dropped, late_mean, late_max) = link.stats.summary();
    println!(
        "delay proxy in front of b0: {relayed} datagrams relayed, {dropped} dropped; \
         held past the due time by {late_mean:.3} ms on average, {late_max:.3} ms at most"
    );
    emit(json!({
        "bench": "proxy", "relayed": relayed, "dropped": dropped,
        "late_ms_mean": late_mean, "late_ms_max": late_max,
    }));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Agents

struct ServerSpec<'a> {
    name: &'a str,
    datacenter: &'a str,
    /// Config JSON written as one more file into the config dir.
    extra_config: Option<&'a str>,
    /// The WAN port to bind and the one to advertise (the proxy's), if not OS-chosen.
    wan: Option<(u16, u16)>,
    join_wan: Vec<String>,
}

/// Starts a server that bootstraps its own datacenter, with a server certificate of
/// `ca`, as the integration tests start theirs.
async fn start_server(root: &Path, ca: &Pem, spec: ServerSpec<'_>) -> Result<Agent, String> {
    let dir = root.join(spec.name);
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).map_err(|e| format!("{}: {e}", config_dir.display()))?;
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    let leaf = tls::create_cert(ca, &CertRequest::new(CertKind::Server, spec.datacenter))
        .map_err(|e| format!("a certificate for {}: {e}", spec.name))?;
    let (ca_file, cert_file, key_file) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    );
    write(&ca_file, &ca.cert)?;
    write(&cert_file, &leaf.cert)?;
    write(&key_file, &leaf.key)?;
    let tls_json = json!({
        "ca_file": ca_file, "cert_file": cert_file, "key_file": key_file,
        "verify_incoming": true, "verify_outgoing": true, "verify_server_hostname": true,
    });
    write(&config_dir.join("tls.json"), &tls_json.to_string())?;
    if let Some(extra) = spec.extra_config {
        write(&config_dir.join("bench.json"), extra)?;
    }
    let sources = Sources {
        dev: false,
        dirs: vec![config_dir],
        files: vec![],
        flags: RawConfig {
            node_name: Some(spec.name.into()),
            datacenter: Some(spec.datacenter.into()),
            log_level: Some("warn".into()),
            server: Some(true),
            bootstrap_expect: Some(1),
            bind_addr: Some(LOOPBACK.to_string()),
            client_addr: Some(LOOPBACK.to_string()),
            data_dir: Some(dir.join("data").display().to_string()),
            ports: Some(RawPorts {
                http: Some(0),
                dns: Some(0),
                server: Some(0),
                serf_lan: Some(0),
                serf_wan: Some(0),
                ..RawPorts::default()
            }),
            ..RawConfig::default()
        },
        ..Sources::default()
    };
    let mut config =
        AgentConfig::load(sources).map_err(|e| format!("config of {}: {e:#}", spec.name))?;
    config.gossip_lan = gossip::swim::Config::local();
    // WAN timers, not the tests' short local ones: their 100 ms probe timeout is too close
    // to the injected round trip once the load phase queues datagrams at the proxy.
    config.gossip_wan = gossip::swim::Config::wan();
    config.start_join_wan = spec.join_wan;
    if let Some((bind, advertise)) = spec.wan {
        config.ports.serf_wan = bind;
        config.serf_wan_advertise_port = Some(advertise);
    }
    Agent::start(config)
        .await
        .map_err(|e| format!("starting {}: {e:#}", spec.name))
}

/// Registers node `node` with service `web` at `address` in the agent's own datacenter,
/// retrying until its leader takes writes.
async fn register(agent: &Agent, node: &str, address: Ipv4Addr) -> Result<(), String> {
    let addr = agent.http_addr().ok_or("an agent without HTTP")?;
    let http = Client::new(&addr.to_string()).map_err(|e| e.to_string())?;
    let body = json!({
        "Node": node, "Address": address.to_string(),
        "Service": {"Service": "web", "ID": "web", "Port": 80},
    })
    .to_string();
    poll(&format!("registration of {node}"), async || {
        http.put("/v1/catalog/register", Some(body.clone()))
            .await
            .map(drop)
            .map_err(|e| format!("{e:#}"))
    })
    .await
}

/// Tries `step` until it succeeds or [`SETUP_TIMEOUT`] passes.
async fn poll(what: &str, mut step: impl AsyncFnMut() -> Result<(), String>) -> Result<(), String> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let last = match timeout_at(deadline, step()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => "no answer".into(),
        };
        if Instant::now() + POLL_INTERVAL >= deadline {
            return Err(format!(
                "{what}: not done within {SETUP_TIMEOUT:?} (last: {last})"
            ));
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// A port free for both UDP and TCP on the loopback right now (the agent binds it a
/// moment later; another program could take it in between).
fn free_port() -> Result<u16, String> {
    for _ in 0..FREE_PORT_TRIES {
        let udp = std::net::UdpSocket::bind(SocketAddr::new(LOOPBACK, 0))
            .map_err(|e| format!("a UDP port: {e}"))?;
        let port = udp.local_addr().map_err(|e| e.to_string())?.port();
        if std::net::TcpListener::bind(SocketAddr::new(LOOPBACK, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(format!(
        "no port free for UDP and TCP in {FREE_PORT_TRIES} tries"
    ))
}

// ---------------------------------------------------------------------------------------
// DNS client

#[derive(Debug, Clone, Copy)]
enum QueryError {
    /// No answer with our id within [`QUERY_TIMEOUT`].
    Timeout,
    /// The socket failed (for instance ICMP port unreachable).
    Io,
    /// The query could not be encoded.
    Encode,
    /// An answer with our id that does not parse.
    Malformed,
    /// An answer with an error rcode.
    Rcode,
    /// NOERROR, but not the A record expected.
    WrongAnswer,
}

impl QueryError {
    fn label(self) -> &'static str {
        match self {
            QueryError::Timeout => "timeout",
            QueryError::Io => "socket error",
            QueryError::Encode => "query encoding",
            QueryError::Malformed => "malformed answer",
            QueryError::Rcode => "error rcode",
            QueryError::WrongAnswer => "wrong answer",
        }
    }
}

/// One UDP socket asking one DNS server, one question at a time.
struct Resolver {
    socket: UdpSocket,
    next_id: u16,
    buf: Vec<u8>,
}

impl Resolver {
    async fn new(server: SocketAddr) -> std::io::Result<Resolver> {
        let socket = UdpSocket::bind(SocketAddr::new(LOOPBACK, 0)).await?;
        socket.connect(server).await?;
        Ok(Resolver {
            socket,
            next_id: rand::random(),
            buf: vec![0; MAX_DATAGRAM],
        })
    }

    /// Asks for the A records of `name`; success is an answer holding `want`. Returns
    /// the time from sending to the answer.
    async fn ask(&mut self, name: &Name, want: Ipv4Addr) -> Result<Duration, QueryError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut query = Message::new(id, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name.clone(), RecordType::A));
        let bytes = query.to_vec().map_err(|_| QueryError::Encode)?;
        let sent = Instant::now();
        self.socket.send(&bytes).await.map_err(|_| QueryError::Io)?;
        let deadline = sent + QUERY_TIMEOUT;
        loop {
            let n = match timeout_at(deadline, self.socket.recv(&mut self.buf)).await {
                Err(_) => return Err(QueryError::Timeout),
                Ok(Err(_)) => return Err(QueryError::Io),
                Ok(Ok(n)) => n,
            };
            let elapsed = sent.elapsed();
            let reply_id = self.buf.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
            if reply_id != Some(id) {
                // A late answer to an earlier query that timed out.
                continue;
            }
            let reply = Message::from_vec(&self.buf[..n]).map_err(|_| QueryError::Malformed)?;
            if reply.metadata.response_code != ResponseCode::NoError {
                return Err(QueryError::Rcode);
            }
            let found = reply
                .answers
                .iter()
                .any(|r| matches!(&r.data, RData::A(a) if a.0 == want));
            return if found {
                Ok(elapsed)
            } else {
                Err(QueryError::WrongAnswer)
            };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Measurements

/// Latencies of answered requests and counts of failed ones, by kind.
#[derive(Default)]
struct Sample {
    latencies: Vec<Duration>,
    errors: BTreeMap<&'static str, u64>,
}

impl Sample {
    fn error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_default() += 1;
    }

    fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    fn merge(&mut self, other: Sample) {
        self.latencies.extend(other.latencies);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }

    /// p50, p90, p99 and max in ms, or `None` when nothing was answered.
    fn percentiles(&self) -> Option<Percentiles> {
        let mut v = self.latencies.clone();
        v.sort();
        let last = *v.last()?;
        let at = |q: f64| {
            let i = ((v.len() as f64 - 1.0) * q).round() as usize;
            v[i.min(v.len() - 1)].as_secs_f64() * 1e3
        };
        Some(Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: last.as_secs_f64() * 1e3,
        })
    }
}

#[derive(Clone, Copy)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn json(p: Option<Percentiles>) -> Value {
        match p {
            Some(p) => json!({"p50": p.p50, "p90": p.p90, "p99": p.p99, "max": p.max}),
            None => Value::Null,
        }
    }

    fn line(p: Option<Percentiles>) -> String {
        match p {
            Some(p) => format!(
                "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                p.p50, p.p90, p.p99, p.max
            ),
            None => "no answers".into(),
        }
    }
}

/// `count` queries one after the other (after [`WARMUP`] uncounted ones).
async fn sequential(resolver: &mut Resolver, name: &Name, want: Ipv4Addr, count: usize) -> Sample {
    let mut sample = Sample::default();
    for i in 0..WARMUP + count {
        let answer = resolver.ask(name, want).await;
        if i < WARMUP {
            continue;
        }
        match answer {
            Ok(t) => sample.latencies.push(t),
            Err(e) => sample.error(e.label()),
        }
    }
    sample
}

/// `concurrency` clients, each with its own socket, asking one after the other until
/// `duration` has passed. Returns what they saw and the time until the last finished.
async fn load(
    server: SocketAddr,
    name: &Name,
    want: Ipv4Addr,
    concurrency: usize,
    duration: Duration,
) -> (Sample, Duration) {
    let start = Instant::now();
    let end = start + duration;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let name = name.clone();
        clients.spawn(async move {
            let mut sample = Sample::default();
            let mut resolver = match Resolver::new(server).await {
                Ok(r) => r,
                Err(_) => {
                    sample.error("client socket");
                    return sample;
                }
            };
            // Bounded: each query ends within QUERY_TIMEOUT, none starts after `end`.
            while Instant::now() < end {
                match resolver.ask(&name, want).await {
                    Ok(t) => sample.latencies.push(t),
                    Err(e) => sample.error(e.label()),
                }
            }
            sample
        });
    }
    let mut total = Sample::default();
    while let Some(done) = clients.join_next().await {
        match done {
            Ok(sample) => total.merge(sample),
            Err(_) => total.error("client task failed"),
        }
    }
    (total, start.elapsed())
}

/// `--baseline-count` datagrams echoed by a plain UDP socket behind a delay proxy: the
/// round trip of the link with no agent in it.
async fn echo_through_proxy(
    o: &Options,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<Sample, String> {
    let echo = UdpSocket::bind(SocketAddr::new(LOOPBACK, 0))
        .await
        .map_err(|e| format!("the echo socket: {e}"))?;
    let echo_addr = echo.local_addr().map_err(|e| e.to_string())?;
    let token = stop.child_token();
    let echo_token = token.clone();
    tasks.spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            tokio::select! {
                _ = echo_token.cancelled() => return,
                r = echo.recv_from(&mut buf) => if let Ok((n, from)) = r {
                    let _ = echo.send_to(&buf[..n], from).await;
                },
            }
        }
    });
    let proxy = DelayProxy::start(echo_addr, o.delay, tasks, token.clone())
        .await
        .map_err(|e| format!("the echo proxy: {e}"))?;
    let client = UdpSocket::bind(SocketAddr::new(LOOPBACK, 0))
        .await
        .map_err(|e| format!("the echo client: {e}"))?;
    client
        .connect(proxy.addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut sample = Sample::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    for i in 0..(WARMUP + o.baseline_count) as u64 {
        let payload = i.to_be_bytes();
        let sent = Instant::now();
        let deadline = sent + QUERY_TIMEOUT;
        let sent_ok = client.send(&payload).await.is_ok();
        let outcome = loop {
            if !sent_ok {
                break Err("socket error");
            }
            match timeout_at(deadline, client.recv(&mut buf)).await {
                Err(_) => break Err("timeout"),
                Ok(Err(_)) => break Err("socket error"),
                // A late echo of an earlier datagram: keep waiting for ours.
                Ok(Ok(n)) if buf.get(..n) != Some(&payload[..]) => continue,
                Ok(Ok(_)) => break Ok(sent.elapsed()),
            }
        };
        if i < WARMUP as u64 {
            continue;
        }
        match outcome {
            Ok(t) => sample.latencies.push(t),
            Err(kind) => sample.error(kind),
        }
    }
    token.cancel();
    Ok(sample)
}

// ---------------------------------------------------------------------------------------
// Reports

fn emit(value: Value) {
    println!("JSON {value}");
}

fn errors_json(sample: &Sample) -> Value {
    json!(sample.errors)
}

fn errors_line(sample: &Sample) -> String {
    if sample.errors.is_empty() {
        "no errors".into()
    } else {
        let kinds: Vec<String> = sample
            .errors
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        format!("ERRORS: {}", kinds.join(", "))
    }
}

fn report_sequential(which: &str, name: &str, sample: &Sample, count: usize) {
    let p = sample.percentiles();
    println!(
        "sequential {name}: {count} queries: {}; {}",
        Percentiles::line(p),
        errors_line(sample)
    );
    emit(json!({
        "bench": "sequential", "which": which, "name": name, "count": count,
        "answered": sample.latencies.len(), "errors": errors_json(sample),
        "ms": Percentiles::json(p),
    }));
}

fn report_overhead(local: &Sample, remote: &Sample, delay_ms: f64) {
    let (Some(l), Some(r)) = (local.percentiles(), remote.percentiles()) else {
        println!("overhead: not computed (no answers)");
        return;
    };
    let rtt = 2.0 * delay_ms;
    let above = |x: f64| x - rtt;
    println!(
        "cross-dc overhead above one injected round trip ({rtt:.1} ms): \
         p50 {:.2} ms  p99 {:.2} ms; above the local answer too: p50 {:.2} ms  p99 {:.2} ms",
        above(r.p50),
        above(r.p99),
        above(r.p50 - l.p50),
        above(r.p99 - l.p99),
    );
    emit(json!({
        "bench": "overhead", "rtt_injected_ms": rtt,
        "remote_minus_rtt_ms": {"p50": above(r.p50), "p99": above(r.p99)},
        "remote_minus_local_minus_rtt_ms":
            {"p50": above(r.p50 - l.p50), "p99": above(r.p99 - l.p99)},
    }));
}

fn report_baseline(which: &str, what: &str, sample: &Sample, delay_ms: f64) {
    let p = sample.percentiles();
    let count = sample.latencies.len() as u64 + sample.failed();
    println!(
        "{what}: {count} round trips: {}; {}",
        Percentiles::line(p),
        errors_line(sample)
    );
    let rtt = 2.0 * delay_ms;
    emit(json!({
        "bench": which, "count": count, "answered": sample.latencies.len(),
        "errors": errors_json(sample), "ms": Percentiles::json(p),
        "minus_rtt_ms": p.map(|p| json!({"p50": p.p50 - rtt, "p99": p.p99 - rtt})),
    }));
}

fn report_load(which: &str, name: &str, (sample, elapsed): (Sample, Duration), o: &Options) {
    let p = sample.percentiles();
    let answered = sample.latencies.len();
    let qps = answered as f64 / elapsed.as_secs_f64();
    println!(
        "load {name}: {} clients for {} s: {answered} answered, {qps:.0} answers/s; latency {}; {}",
        o.concurrency,
        o.seconds,
        Percentiles::line(p),
        errors_line(&sample)
    );
    emit(json!({
        "bench": "load", "which": which, "name": name, "concurrency": o.concurrency,
        "seconds": o.seconds, "elapsed_s": elapsed.as_secs_f64(), "answered": answered,
        "qps": qps, "errors": errors_json(&sample), "ms": Percentiles::json(p),
    }));
}
