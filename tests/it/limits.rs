//! The `limits` block: each bound holds against a client that pushes it, and the agent
//! keeps answering everyone else.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::support::{DigOptions, TestAgent, dig, eventually, query_message, secs};

/// Sends `request` on a fresh connection and returns the status line of the answer.
async fn status_line(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(secs(5), stream.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn http_connections_per_client_and_header_size_are_bounded() {
    let a = TestAgent::with_config(
        &json!({"limits": {"http_max_conns_per_client": 2, "http_max_header_bytes": 8192}})
            .to_string(),
    )
    .await;
    let addr = a.agent.http_addr().unwrap();
    // Two idle connections use up this client's share: the third is told so and closed.
    let held = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = status_line(addr, b"GET /v1/agent/self HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    drop(held);
    // Once they close, the client is served again.
    let mut served = String::new();
    for _ in 0..50 {
        served = status_line(
            addr,
            b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if served.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    // A request head over the limit is refused (431), not buffered.
    let huge = format!(
        "GET /v1/status/leader HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let refused = status_line(addr, huge.as_bytes()).await;
    assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    a.shutdown().await;
}

#[tokio::test]
async fn dns_answers_over_udp_stay_small_and_sources_are_rate_limited() {
    let a =
        TestAgent::with_config(&json!({"limits": {"dns_rate_per_source": 20}}).to_string()).await;
    for i in 0..60 {
        let body = json!({"Node": format!("n{i}"), "Address": format!("10.0.{}.{}", i / 250, i % 250 + 1),
            "Service": {"Service": "big", "Port": 80}});
        let r = a.put("/v1/catalog/register", &body.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // However large the client's EDNS buffer, a UDP answer fits 1232 bytes (cut, with
    // TC set): a spoofed query cannot be amplified past that.
    let m = dig(
        a.dns,
        "big.service.consul.",
        RecordType::SRV,
        DigOptions {
            edns: Some(65000),
            tcp: false,
        },
    )
    .await;
    assert!(m.metadata.truncation, "cut to fit");
    assert!(m.to_vec().unwrap().len() <= 1232);
    let m = dig(
        a.dns,
        "big.service.consul.",
        RecordType::ANY,
        DigOptions {
            edns: Some(65000),
            tcp: false,
        },
    )
    .await;
    assert!(m.to_vec().unwrap().len() <= 1232);
    // A burst from one source: about a second's worth (20) is answered, the rest dropped.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..200 {
        let q = query_message("big.service.consul.", RecordType::A, None);
        socket.send_to(&q.to_vec().unwrap(), a.dns).await.unwrap();
    }
    // Meanwhile another source is answered as usual.
    let other = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let q = query_message("big.service.consul.", RecordType::A, None);
    other.send_to(&q.to_vec().unwrap(), a.dns).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let got = tokio::time::timeout(secs(5), other.recv(&mut buf)).await;
    assert!(
        matches!(got, Ok(Ok(n)) if n > 12),
        "the other source is answered"
    );
    let mut answered = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(secs(1), socket.recv(&mut buf)).await {
        answered += 1;
    }
    assert!(
        (10..=60).contains(&answered),
        "{answered} of 200 answered at 20/s"
    );
    a.shutdown().await;
}

/// `127.0.0.n`: every one of them reaches the agent on 127.0.0.1, each as a client
/// address of its own.
fn loopback(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// A TCP connection to `addr` from the address `source`.
async fn connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// The first line of `reply`.
fn first_line(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Sends `GET path` from `source` and returns the whole answer, read until the server
/// closes (or `wait` passes).
async fn get_from(source: IpAddr, addr: SocketAddr, path: &str, wait: Duration) -> String {
    let mut stream = connect_from(source, addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

/// An attacker's connection at a time: sends a request head announcing a 1000-byte body,
/// then one byte a second, and when the server answers or closes, records the status
/// line and starts again. `trickling` counts connections that have started their body.
async fn slow_body(
    addr: SocketAddr,
    source: IpAddr,
    stop: CancellationToken,
    trickling: Arc<AtomicUsize>,
    answers: Arc<Mutex<Vec<String>>>,
) {
    for _ in 0..1000 {
        if stop.is_cancelled() {
            return;
        }
        if let Ok(mut stream) = connect_from(source, addr).await {
            let head =
                b"PUT /v1/catalog/register HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n";
            let mut reply = Vec::new();
            if stream.write_all(head).await.is_ok() {
                for byte in 0..1000 {
                    if stream.write_all(b" ").await.is_err() {
                        break;
                    }
                    if byte == 0 {
                        trickling.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut buf = [0u8; 1024];
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        read = stream.read(&mut buf) => {
                            if let Ok(n @ 1..) = read {
                                reply.extend_from_slice(&buf[..n]);
                                let _ = tokio::time::timeout(secs(2), stream.read_to_end(&mut reply)).await;
                            }
                            break;
                        }
                        _ = tokio::time::sleep(secs(1)) => {}
                    }
                }
            }
            if !reply.is_empty() {
                answers.lock().unwrap().push(first_line(&reply));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// An attacker's idle connection at a time: opens one, sends nothing, and opens the next
/// when the server closes it.
async fn idle(addr: SocketAddr, source: IpAddr, stop: CancellationToken) {
    for _ in 0..1000 {
        if let Ok(mut stream) = connect_from(source, addr).await {
            let mut buf = [0u8; 256];
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = stream.read(&mut buf) => {}
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

#[tokio::test]
async fn slow_bodies_and_idle_connections_from_a_few_addresses_do_not_lock_out_another() {
    let a = TestAgent::with_config(
        &json!({"limits": {
            "http_max_connections": 24,
            "http_max_conns_per_client": 8,
            "http_body_timeout": "2s",
            "http_header_timeout": "3s",
        }})
        .to_string(),
    )
    .await;
    let addr = a.agent.http_addr().unwrap();
    let stop = CancellationToken::new();
    let trickling = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let mut attack = JoinSet::new();
    // Six addresses, each within its 8 connections: 36 bodies sent a byte a second, more
    // than the 24 connections the agent serves at once...
    for host in 2..=7 {
        for _ in 0..6 {
            attack.spawn(slow_body(
                addr,
                loopback(host),
                stop.clone(),
                trickling.clone(),
                answers.clone(),
            ));
        }
    }
    eventually(secs(10), "36 slow bodies under way", || async {
        match trickling.load(Ordering::Relaxed) {
            n @ 36.. => Ok(n),
            n => Err(format!("{n} started")),
        }
    })
    .await;
    // ...and 12 connections that send nothing at all.
    for host in 2..=7 {
        for _ in 0..2 {
            attack.spawn(idle(addr, loopback(host), stop.clone()));
        }
    }
    // A client from another address is answered while the attack goes on.
    let victim = get_from(loopback(9), addr, "/v1/status/leader", secs(10)).await;
    assert!(victim.starts_with("HTTP/1.1 200"), "{victim:?}");
    // The slow bodies are cut: 408, and the connection closed.
    let cut = eventually(secs(10), "a slow body answered 408", || async {
        let answers = answers.lock().unwrap();
        match answers.iter().find(|l| l.starts_with("HTTP/1.1 408")) {
            Some(l) => Ok(l.clone()),
            None => Err(format!("{answers:?}")),
        }
    })
    .await;
    stop.cancel();
    while attack.join_next().await.is_some() {}
    assert!(cut.contains("408"));
    a.shutdown().await;
}

/// Sends a blocking query from `source` and reports `(source, whole answer)` on `done`
/// when it is answered (or after 70 s). `waiting` counts queries sent and not answered.
/// With `retry`, a 429 or a connection closed unanswered is retried after a pause, as
/// Consul's watch clients do.
async fn blocking_query(
    addr: SocketAddr,
    source: IpAddr,
    path: String,
    retry: bool,
    waiting: Arc<AtomicUsize>,
    done: mpsc::Sender<(IpAddr, String)>,
) {
    for _ in 0..200 {
        let Ok(mut stream) = connect_from(source, addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        waiting.fetch_add(1, Ordering::Relaxed);
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(secs(70), stream.read_to_end(&mut reply)).await;
        waiting.fetch_sub(1, Ordering::Relaxed);
        let reply = String::from_utf8_lossy(&reply).into_owned();
        // Refused, or closed unanswered to make room for another address.
        if retry && (reply.is_empty() || reply.starts_with("HTTP/1.1 429")) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let _ = done.send((source, reply)).await;
        return;
    }
}

/// The catalog's current index, for blocking queries that wait on it.
async fn services_index(a: &TestAgent) -> u64 {
    let r = a.get("/v1/catalog/services").await;
    r.header("x-consul-index").unwrap().parse().unwrap()
}

#[tokio::test]
async fn held_blocking_queries_leave_connections_to_ordinary_requests() {
    let a =
        TestAgent::with_config(&json!({"limits": {"http_max_connections": 8}}).to_string()).await;
    let addr = a.agent.http_addr().unwrap();
    let path = format!(
        "/v1/catalog/services?index={}&wait=60s",
        services_index(&a).await
    );
    let waiting = Arc::new(AtomicUsize::new(0));
    let (done, mut answered) = mpsc::channel(64);
    let mut held = JoinSet::new();
    // 40 blocking queries from four addresses, five times as many as there are
    // connections for ordinary requests.
    for host in 2..=5 {
        for _ in 0..10 {
            held.spawn(blocking_query(
                addr,
                loopback(host),
                path.clone(),
                true,
                waiting.clone(),
                done.clone(),
            ));
        }
    }
    let waiting_for = |what: &'static str| {
        let waiting = waiting.clone();
        eventually(secs(10), what, move || {
            let waiting = waiting.clone();
            async move {
                match waiting.load(Ordering::Relaxed) {
                    n @ 40.. => Ok(n),
                    n => Err(format!("{n} waiting")),
                }
            }
        })
    };
    waiting_for("40 blocking queries sent").await;
    let victim = get_from(loopback(9), addr, "/v1/status/leader", secs(10)).await;
    assert!(victim.starts_with("HTTP/1.1 200"), "{victim:?}");
    // The 40 are held all along: none has been answered.
    waiting_for("40 blocking queries held").await;
    assert!(answered.try_recv().is_err(), "no blocking query answered");
    held.abort_all();
    while held.join_next().await.is_some() {}
    a.shutdown().await;
}

#[tokio::test]
async fn blocking_queries_over_the_allowance_get_consuls_429_and_a_new_address_still_gets_one() {
    let a = TestAgent::with_config(
        &json!({"limits": {
            "http_max_blocking_queries": 20,
            "http_max_blocking_queries_per_client": 10,
        }})
        .to_string(),
    )
    .await;
    let addr = a.agent.http_addr().unwrap();
    let path = format!(
        "/v1/catalog/services?index={}&wait=60s",
        services_index(&a).await
    );
    let waiting = Arc::new(AtomicUsize::new(0));
    let (done, mut answered) = mpsc::channel(64);
    let mut held = JoinSet::new();
    for host in [loopback(2), loopback(3)] {
        for _ in 0..11 {
            held.spawn(blocking_query(
                addr,
                host,
                path.clone(),
                false,
                waiting.clone(),
                done.clone(),
            ));
        }
        // One of the eleven is over this address's allowance: refused as Consul refuses a
        // client over its connection limit. The other ten are held.
        let (from, reply) = tokio::time::timeout(secs(10), answered.recv())
            .await
            .expect("one answer")
            .unwrap();
        assert_eq!(from, host);
        assert!(reply.starts_with("HTTP/1.1 429"), "{reply}");
        assert!(
            reply.contains(
                "Your IP is issuing too many concurrent connections, please rate limit your calls"
            ),
            "{reply}"
        );
    }
    // Every place is held (2 × 10): a third address still gets one, taken from one of the
    // first two, whose query is answered at once as if its wait were over.
    held.spawn(blocking_query(
        addr,
        loopback(4),
        path.clone(),
        false,
        waiting.clone(),
        done.clone(),
    ));
    let (from, reply) = tokio::time::timeout(secs(10), answered.recv())
        .await
        .expect("an early answer")
        .unwrap();
    assert!(
        from == loopback(2) || from == loopback(3),
        "{from}: {reply}"
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("x-consul-index"),
        "{reply}"
    );
    held.abort_all();
    while held.join_next().await.is_some() {}
    a.shutdown().await;
}

/// A `GET /v1/status/leader` whose head is exactly `len` bytes long.
fn head_of(len: usize) -> String {
    let start = "GET /v1/status/leader HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ";
    let end = "\r\n\r\n";
    let head = format!("{start}{}{end}", "a".repeat(len - start.len() - end.len()));
    assert_eq!(head.len(), len);
    head
}

#[tokio::test]
async fn a_request_head_over_the_limit_gets_431_even_when_it_arrives_at_once() {
    let a = TestAgent::dev().await;
    let addr = a.agent.http_addr().unwrap();
    // The default limit is 64 KiB for the request line and headers together.
    for len in [65535, 65536] {
        let served = status_line(addr, head_of(len).as_bytes()).await;
        assert!(served.starts_with("HTTP/1.1 200"), "{len}: {served}");
    }
    let refused = status_line(addr, head_of(65537).as_bytes()).await;
    assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    // One header of 100 KB, sent in one write.
    let big = format!(
        "GET /v1/status/leader HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let refused = status_line(addr, big.as_bytes()).await;
    assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    a.shutdown().await;
}
