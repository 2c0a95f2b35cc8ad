//! What a hostile network cannot do to a datacenter: the attacks found against the
//! server port, each replayed with the bytes that worked before it was hardened.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::cluster::{Member, Spec, fresh_ip, leader_of, leader_other_than, servers};
use crate::support::{eventually, secs};

/// Sends one plaintext frame (`[length][JSON]`) from `source` and reads one answer; `None`
/// when the server closed the connection instead.
async fn exchange(source: Option<IpAddr>, server: SocketAddr, body: &Value) -> Option<Value> {
    let mut stream = connect_from(source, server).await;
    send(&mut stream, body).await;
    receive(&mut stream).await
}

async fn connect_from(source: Option<IpAddr>, server: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    socket.connect(server).await.unwrap()
}

async fn send(stream: &mut TcpStream, body: &Value) {
    let payload = body.to_string().into_bytes();
    let mut frame = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    // A refused connection may already be closed: the answer (or its absence) says so.
    let _ = stream.write_all(&frame).await;
}

async fn receive(stream: &mut TcpStream) -> Option<Value> {
    let read = async {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await.ok()?;
        let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut payload).await.ok()?;
        serde_json::from_slice(&payload).ok()
    };
    tokio::time::timeout(secs(15), read).await.ok().flatten()
}

fn server_port(m: &Member) -> SocketAddr {
    m.agent.lan().server_addr().unwrap()
}

/// The term `m` is in, from its own Raft status.
async fn term(m: &Member) -> u64 {
    let deadline = tokio::time::Instant::now() + secs(5);
    m.agent.lan().raft_status(deadline).await.unwrap().term
}

/// `m`'s Raft ID.
async fn raft_id(m: &Member) -> u64 {
    let deadline = tokio::time::Instant::now() + secs(5);
    let status = m.agent.lan().raft_status(deadline).await.unwrap();
    status
        .servers
        .iter()
        .find(|s| s.node.name == m.name)
        .unwrap()
        .raft_id
}

/// The frame of the finding, addressed to the server `to`: an AppendEntries whose
/// committed vote is at `u64::MAX - 1`.
fn poisoned_append_entries(to: u64) -> Value {
    json!({"id": 1, "body": {"AppendEntries": {"to": to, "request": {
        "vote": {"leader_id": {"term": u64::MAX - 1, "node_id": 123}, "committed": true},
        "prev_log_id": null, "entries": [], "leader_commit": null
    }}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_append_entries_is_refused_and_the_next_election_still_works() {
    let mut members = servers(3).await;
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all, 3).await;
    let follower = members.iter().find(|m| m.name != leader).unwrap();
    let before = term(follower).await;

    // The port has nothing to prove with (no TLS, no key): the frame is read, and
    // refused for its term. Once with a term of a million too.
    let to = raft_id(follower).await;
    let answer = exchange(None, server_port(follower), &poisoned_append_entries(to)).await;
    let refusal = answer.as_ref().and_then(|a| a["body"]["Refused"].as_str());
    assert!(
        refusal.is_some_and(|r| r.contains("ahead of this server's term")),
        "{answer:?}"
    );
    let mut big = poisoned_append_entries(to);
    big["body"]["AppendEntries"]["request"]["vote"]["leader_id"]["term"] =
        json!(before + 1_000_000_000);
    let answer = exchange(None, server_port(follower), &big).await;
    assert!(answer.is_some_and(|a| a["body"]["Refused"].is_string()));
    // A message for another Raft server is refused whatever it holds.
    let mut elsewhere = poisoned_append_entries(to.wrapping_add(1));
    elsewhere["body"]["AppendEntries"]["request"]["vote"]["leader_id"]["term"] = json!(before);
    let answer = exchange(None, server_port(follower), &elsewhere).await;
    let refusal = answer.as_ref().and_then(|a| a["body"]["Refused"].as_str());
    assert!(
        refusal.is_some_and(|r| r.contains("is for raft server")),
        "{answer:?}"
    );
    assert!(
        term(follower).await < before + 1000,
        "the term was not moved"
    );

    // The leader dies: the other two elect a new one, in a sane term.
    let at = members.iter().position(|m| m.name == leader).unwrap();
    let old = members.remove(at);
    old.agent.stop(false).await;
    let survivors: Vec<&Member> = members.iter().collect();
    leader_other_than(&survivors, 3, Some(&leader)).await;
    for m in &members {
        assert!(term(m).await < before + 1000);
    }
    for m in members {
        m.agent.stop(false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_gets_no_keys_from_the_server_port() {
    // Every pool's keys, asked as a client agent asks its server (relayed to the
    // gateway), and the LAN pool's, asked of the server itself.
    let list = json!({"id": 7, "body": {"Relay": {
        "request": {"dc": "dc1", "call": {"KeyringAll": {
            "op": "List", "local_only": false, "timeout_ms": 2000
        }}},
        "timeout_ms": 2000,
        "retry_safe": true
    }}});
    let lan_list = json!({"id": 8, "body": {"Keyring": {"op": "List", "timeout_ms": 2000}}});
    // With a gossip key, a caller that does not prove it holds the key is not served at
    // all: it is told why (a frame of ID 0 naming the missing key) and the connection
    // closes.
    let key = "PAfZLsxW8d3gXQQ0aXcy+o0WXIKkQtR2ANKr3lIsXqM=";
    let keyed = Member::start(Spec {
        name: "keyed".into(),
        server: true,
        key: Some(key.into()),
        ..Spec::default()
    })
    .await;
    leader_of(&[&keyed], 1).await;
    for ask in [&list, &lan_list] {
        let answer = exchange(None, server_port(&keyed), ask).await;
        let refused = answer
            .as_ref()
            .is_none_or(|a| a["id"] == 0 && a["body"] == "KeyRequired");
        assert!(refused, "a stranger was answered: {answer:?}");
        assert!(
            !answer.is_some_and(|a| a.to_string().contains(key)),
            "a stranger saw the key"
        );
    }
    // The members themselves still rotate keys through the server port.
    let r = keyed.get("/v1/operator/keyring").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(key));

    // With nothing to prove with, the port answers everyone, but never with keys.
    let open = Member::start(Spec {
        name: "open".into(),
        server: true,
        ..Spec::default()
    })
    .await;
    leader_of(&[&open], 1).await;
    let answer = exchange(None, server_port(&open), &list).await.unwrap();
    let refusal = answer["body"]["Relay"]["Refused"]
        .as_str()
        .unwrap_or_default();
    assert!(refusal.starts_with("Permission denied"), "{answer}");
    let answer = exchange(None, server_port(&open), &lan_list).await.unwrap();
    let refusal = answer["body"]["Refused"].as_str().unwrap_or_default();
    assert!(refusal.starts_with("Permission denied"), "{answer}");
    keyed.agent.stop(false).await;
    open.agent.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_a_few_addresses_do_not_stop_an_election() {
    let mut members = servers(3).await;
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all, 3).await;
    let target = members.iter().find(|m| m.name != leader).unwrap();
    let port = server_port(target);
    // Eleven addresses open 100 connections each (the per-address cap), each asking
    // once and then idling: more than the port's 1024 places.
    let status = json!({"id": 1, "body": "Status"});
    let mut held = Vec::new();
    for _ in 0..11 {
        let source = fresh_ip();
        for _ in 0..100 {
            let mut c = connect_from(Some(source), port).await;
            send(&mut c, &status).await;
            held.push(c);
        }
    }
    let mut answered = 0;
    for c in &mut held {
        if receive(c).await.is_some() {
            answered += 1;
        }
    }
    assert!(
        answered >= 1000,
        "the flood took the port's places: {answered}"
    );

    // The leader dies while the flood holds on: the two others still elect one.
    let at = members.iter().position(|m| m.name == leader).unwrap();
    let old = members.remove(at);
    old.agent.stop(false).await;
    let survivors: Vec<&Member> = members.iter().collect();
    leader_other_than(&survivors, 3, Some(&leader)).await;
    eventually(secs(20), "a write through the flooded server", || async {
        let body = r#"{"Node": "after-flood", "Address": "10.0.0.9"}"#;
        let target = members.iter().find(|m| m.name != leader).unwrap();
        let r = target
            .call(hyper::Method::PUT, "/v1/catalog/register", body)
            .await;
        if r.status == 200 { Ok(()) } else { Err(r.body) }
    })
    .await;
    drop(held);
    for m in members {
        m.agent.stop(false).await;
    }
}
