//! The `limits` block: each bound holds against a client that pushes it, and the agent
//! keeps answering everyone else.

use std::time::Duration;

use hickory_proto::rr::RecordType;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::support::{DigOptions, TestAgent, dig, query_message, secs};

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
