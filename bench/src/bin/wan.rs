//! WAN benchmarks (not tests): what QUIC with mutual TLS costs per request, and how the
//! WAN pool converges and detects a failure.
//!
//! ```text
//! wan-bench rtt  [--count N]                      QUIC request vs UDP echo, loopback
//! wan-bench pool [--sizes 3,5,10] [--profile wan|local]
//! ```
//!
//! `rtt` sends N sequential requests over one established QUIC connection (a bidirectional
//! stream each, as every WAN RPC is) and N sequential datagrams to a plain UDP echo server,
//! and prints p50/p90/p99 of both and their difference. `pool` starts N single-server
//! datacenters in this process, makes each join the first, times until every server
//! lists all N alive, then stops one abruptly (no leave) and times until every survivor
//! lists it failed. Output: human lines, then one `JSON {…}` line per measurement.

#![allow(clippy::print_stdout, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gossip::MemberStatus;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wan::rpc::{Caller, Request, Response, Service, Serving};
use wan::tls::{self, CertKind, CertRequest, Material, Pem, TlsFiles};
use wan::{Federation, FederationConfig};

struct Pong;

impl Service for Pong {
    fn serve(&self, _caller: Caller, _request: Request) -> Serving<'_> {
        Box::pin(async {
            Response::Pong {
                node: String::new(),
                datacenter: String::new(),
            }
        })
    }
}

fn material(dir: &Path, ca: &Pem, dc: &str) -> Material {
    let leaf = tls::create_cert(ca, &CertRequest::new(CertKind::Server, dc)).expect("cert");
    let files = TlsFiles {
        ca_file: dir.join("ca.pem"),
        cert_file: Some(dir.join(format!("{dc}.pem"))),
        key_file: Some(dir.join(format!("{dc}-key.pem"))),
    };
    std::fs::write(&files.ca_file, &ca.cert).expect("write");
    std::fs::write(files.cert_file.as_ref().expect("cert"), &leaf.cert).expect("write");
    std::fs::write(files.key_file.as_ref().expect("key"), &leaf.key).expect("write");
    Material::load(&files).expect("load")
}

fn start(
    dir: &Path,
    ca: &Pem,
    dc: &str,
    gossip: gossip::swim::Config,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Federation {
    let f = Federation::start(
        FederationConfig {
            node: "s".into(),
            datacenter: dc.into(),
            domain: "consul".into(),
            bind: "127.0.0.1:0".parse().expect("addr"),
            advertise: "127.0.0.1".parse().expect("addr"),
            advertise_port: None,
            tags: BTreeMap::from([
                ("role".to_string(), "consul".to_string()),
                ("dc".to_string(), dc.to_string()),
            ]),
            gossip,
            encryption: None,
            material: material(dir, ca, dc),
            peers_file: None,
        },
        tasks,
        shutdown,
    )
    .expect("federation");
    f.set_service(Arc::new(Pong));
    f
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let at = |q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i].as_secs_f64() * 1e6
    };
    (at(0.5), at(0.9), at(0.99))
}

async fn rtt(count: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = tls::create_ca("consul", 30).expect("ca");
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let gossip = gossip::swim::Config::wan();
    let a = start(
        dir.path(),
        &ca,
        "dc1",
        gossip.clone(),
        &tasks,
        shutdown.clone(),
    );
    let b = start(dir.path(), &ca, "dc2", gossip, &tasks, shutdown.clone());
    let soon = || Instant::now() + Duration::from_secs(5);
    // Establish the connection, and warm up.
    for _ in 0..200 {
        a.endpoint()
            .call(b.addr(), "dc2", &Request::Ping, soon())
            .await
            .expect("ping");
    }
    let mut quic = Vec::with_capacity(count);
    for _ in 0..count {
        let t = std::time::Instant::now();
        a.endpoint()
            .call(b.addr(), "dc2", &Request::Ping, soon())
            .await
            .expect("ping");
        quic.push(t.elapsed());
    }

    let server = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let echo_addr: SocketAddr = server.local_addr().expect("addr");
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = server.recv_from(&mut buf).await {
            let _ = server.send_to(&buf[..n], from).await;
        }
    });
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    client.connect(echo_addr).await.expect("connect");
    // The same payload as the RPC request.
    let payload = serde_json::to_vec(&Request::Ping).expect("json");
    let mut buf = [0u8; 2048];
    let mut udp = Vec::with_capacity(count);
    for i in 0..count + 200 {
        let t = std::time::Instant::now();
        client.send(&payload).await.expect("send");
        tokio::time::timeout(Duration::from_secs(1), client.recv(&mut buf))
            .await
            .expect("echo in time")
            .expect("recv");
        if i >= 200 {
            udp.push(t.elapsed());
        }
    }
    echo.abort();
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;

    let (q50, q90, q99) = percentiles(quic);
    let (u50, u90, u99) = percentiles(udp);
    println!("requests: {count} sequential, loopback, one established connection");
    println!("QUIC stream request (mTLS): p50 {q50:.0} us  p90 {q90:.0} us  p99 {q99:.0} us");
    println!("UDP echo:                   p50 {u50:.0} us  p90 {u90:.0} us  p99 {u99:.0} us");
    println!(
        "overhead:                   p50 {:.0} us  p99 {:.0} us",
        q50 - u50,
        q99 - u99
    );
    println!(
        "JSON {}",
        serde_json::json!({
            "bench": "rtt", "count": count,
            "quic_us": {"p50": q50, "p90": q90, "p99": q99},
            "udp_us": {"p50": u50, "p90": u90, "p99": u99},
        })
    );
}

fn alive_everywhere(members: &[&Federation], n: usize) -> bool {
    members.iter().all(|f| {
        f.members()
            .iter()
            .filter(|m| m.status == MemberStatus::Alive)
            .count()
            == n
    })
}

async fn pool(sizes: &[usize], profile: &str) {
    let gossip = match profile {
        "local" => gossip::swim::Config::local(),
        _ => gossip::swim::Config::wan(),
    };
    for &n in sizes {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = tls::create_ca("consul", 30).expect("ca");
        let tasks = TaskTracker::new();
        let tokens: Vec<CancellationToken> = (0..n).map(|_| CancellationToken::new()).collect();
        let feds: Vec<Federation> = (0..n)
            .map(|i| {
                start(
                    dir.path(),
                    &ca,
                    &format!("dc{i}"),
                    gossip.clone(),
                    &tasks,
                    tokens[i].clone(),
                )
            })
            .collect();
        let t0 = Instant::now();
        let seed = feds[0].addr().to_string();
        let joins = feds[1..]
            .iter()
            .map(|f| f.join(std::slice::from_ref(&seed), t0 + Duration::from_secs(10)));
        for r in futures_util::future::join_all(joins).await {
            r[0].as_ref().expect("join");
        }
        let all: Vec<&Federation> = feds.iter().collect();
        let limit = t0 + Duration::from_secs(120);
        while !alive_everywhere(&all, n) {
            assert!(Instant::now() < limit, "no convergence at N={n}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let converge = t0.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Stop the last datacenter's server abruptly: no leave.
        let victim = feds[n - 1].name().to_owned();
        let t1 = Instant::now();
        tokens[n - 1].cancel();
        let survivors: Vec<&Federation> = feds[..n - 1].iter().collect();
        let limit = t1 + Duration::from_secs(300);
        loop {
            let seen = survivors.iter().all(|f| {
                f.members()
                    .iter()
                    .any(|m| m.name == victim && m.status == MemberStatus::Failed)
            });
            if seen {
                break;
            }
            assert!(Instant::now() < limit, "failure never detected at N={n}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let fail = t1.elapsed();
        // No false failures among the survivors.
        let false_failed = survivors.iter().any(|f| {
            f.members()
                .iter()
                .any(|m| m.name != victim && m.status != MemberStatus::Alive)
        });
        println!(
            "N={n} ({profile}): converge {:.2} s, failure detected everywhere {:.2} s, false failures: {false_failed}",
            converge.as_secs_f64(),
            fail.as_secs_f64()
        );
        println!(
            "JSON {}",
            serde_json::json!({
                "bench": "pool", "n": n, "profile": profile,
                "converge_s": converge.as_secs_f64(), "fail_s": fail.as_secs_f64(),
                "false_failures": false_failed,
            })
        );
        for t in &tokens {
            t.cancel();
        }
        tasks.close();
        tasks.wait().await;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("rtt") => {
            let count = flag("--count").and_then(|c| c.parse().ok()).unwrap_or(2000);
            runtime.block_on(rtt(count));
        }
        Some("pool") => {
            let sizes: Vec<usize> = flag("--sizes")
                .unwrap_or_else(|| "3,5,10".into())
                .split(',')
                .filter_map(|s| s.parse().ok())
                .collect();
            let profile = flag("--profile").unwrap_or_else(|| "wan".into());
            runtime.block_on(pool(&sizes, &profile));
        }
        _ => {
            eprintln!(
                "usage: wan-bench rtt [--count N] | pool [--sizes 3,5,10] [--profile wan|local]"
            );
            std::process::exit(2);
        }
    }
}
