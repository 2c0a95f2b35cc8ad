//! The DNS interface of in-process agents, asked with real DNS packets.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use serde_json::json;

use crate::support::{
    DigOptions, Setup, TestAgent, dig, eventually, query_message, secs, udp_exchange,
};

fn addresses(m: &Message) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn srv(m: &Message) -> Vec<(u16, String)> {
    let mut out: Vec<(u16, String)> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_string())),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn has_soa(m: &Message) -> bool {
    m.authorities
        .iter()
        .any(|r| matches!(r.data, RData::SOA(_)))
}

/// Registers `instances` of `service` on distinct nodes through the catalog API.
async fn register(a: &TestAgent, service: &str, instances: usize, first_octet: u8) {
    for i in 0..instances {
        let body = json!({
            "Node": format!("{service}-node-{i}"),
            "Address": format!("{first_octet}.0.{}.{}", i / 250, i % 250 + 1),
            "NodeMeta": {"rack": format!("r{i}")},
            "Service": {"Service": service, "ID": format!("{service}{i}"), "Port": 8000 + i,
                        "Tags": if i == 0 { vec!["primary"] } else { vec![] }},
        });
        let r = a.put("/v1/catalog/register", &body.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

#[tokio::test]
async fn node_and_service_lookups_follow_consul() {
    let a = TestAgent::dev().await;
    register(&a, "web", 2, 10).await;
    let r = a
        .put("/v1/catalog/register", &json!({"Node": "web-node-0", "Address": "10.0.0.1",
            "Service": {"Service": "web", "ID": "web-alias", "Port": 9000, "Address": "192.0.2.10"}}).to_string())
        .await;
    assert_eq!(r.status, 200);

    let m = a.dig("node-1.node.consul.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(addresses(&m), ["127.0.0.1".parse::<IpAddr>().unwrap()]);
    assert!(
        m.additionals
            .iter()
            .any(|r| matches!(&r.data, RData::TXT(t) if t.to_string().contains("consul-version=")))
    );

    let m = a.dig("WEB.service.consul.", RecordType::A).await;
    assert_eq!(
        m.answers[0].name.to_string(),
        "WEB.service.consul.",
        "owner echoes the question"
    );
    assert_eq!(
        addresses(&m),
        ["10.0.0.1", "10.0.0.2", "192.0.2.10"].map(|s| s.parse::<IpAddr>().unwrap())
    );

    let m = a.dig("web.service.consul.", RecordType::SRV).await;
    assert_eq!(
        srv(&m),
        [
            (8000, "web-node-0.node.dc1.consul.".to_string()),
            (8001, "web-node-1.node.dc1.consul.".to_string()),
            (9000, "c000020a.addr.dc1.consul.".to_string()),
        ]
    );
    let glue: Vec<String> = m
        .additionals
        .iter()
        .filter(|r| r.record_type() == RecordType::A)
        .map(|r| r.name.to_string())
        .collect();
    assert!(
        glue.contains(&"c000020a.addr.dc1.consul.".to_string()),
        "{glue:?}"
    );
    assert!(
        glue.contains(&"web-node-0.node.dc1.consul.".to_string()),
        "{glue:?}"
    );

    let m = a.dig("primary.web.service.consul.", RecordType::SRV).await;
    assert_eq!(srv(&m), [(8000, "web-node-0.node.dc1.consul.".to_string())]);
    let m = a
        .dig("_web._primary.service.consul.", RecordType::SRV)
        .await;
    assert_eq!(srv(&m).len(), 1);
    let m = a
        .dig("_web._tcp.service.dc1.consul.", RecordType::SRV)
        .await;
    assert_eq!(srv(&m).len(), 3);
    let m = a.dig("web.service.dc1.dc.consul.", RecordType::A).await;
    assert_eq!(addresses(&m).len(), 3);

    let m = a.dig("c000020a.addr.consul.", RecordType::A).await;
    assert_eq!(addresses(&m), ["192.0.2.10".parse::<IpAddr>().unwrap()]);

    let m = a.dig("web-node-1.node.consul.", RecordType::TXT).await;
    assert!(
        m.answers
            .iter()
            .any(|r| matches!(&r.data, RData::TXT(t) if t.to_string() == "rack=r1"))
    );
    a.shutdown().await;
}

#[tokio::test]
async fn missing_unhealthy_and_malformed_names_answer_nxdomain_with_soa() {
    let a = TestAgent::dev().await;
    register(&a, "db", 1, 10).await;
    let r = a
        .put(
            "/v1/catalog/register",
            &json!({"Node": "db-node-0", "Address": "10.0.0.1",
            "Check": {"CheckID": "db-down", "Status": "critical", "ServiceID": "db0"}})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for name in [
        "db.service.consul.",
        "nothing.service.consul.",
        "nobody.node.consul.",
        "web.service.dc9.consul.",
        "node.consul.",
        "consul.",
        "foo.service.dc1.extra.more.consul.",
        "zz.addr.consul.",
        "anything.query.consul.",
    ] {
        let m = a.dig(name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(has_soa(&m), "{name} carries the SOA");
        assert!(m.metadata.authoritative, "{name}");
    }
    // The service exists but has no AAAA record: NODATA with the SOA.
    register(&a, "v4only", 1, 10).await;
    let m = a.dig("v4only.service.consul.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert!(has_soa(&m));
    a.shutdown().await;
}

#[tokio::test]
async fn udp_answers_are_capped_and_flagged_truncated_tcp_gets_everything() {
    let a = TestAgent::dev().await;
    register(&a, "big", 40, 10).await;
    let plain = dig(
        a.dns,
        "big.service.consul.",
        RecordType::A,
        DigOptions::default(),
    )
    .await;
    assert_eq!(plain.answers.len(), 3, "udp_answer_limit without EDNS");
    assert!(plain.metadata.truncation);

    let edns = dig(
        a.dns,
        "big.service.consul.",
        RecordType::A,
        DigOptions {
            edns: Some(4096),
            tcp: false,
        },
    )
    .await;
    assert_eq!(edns.answers.len(), 40);
    assert!(!edns.metadata.truncation);
    assert_eq!(edns.edns.as_ref().unwrap().max_payload(), 4096);

    let small = dig(
        a.dns,
        "big.service.consul.",
        RecordType::SRV,
        DigOptions {
            edns: Some(600),
            tcp: false,
        },
    )
    .await;
    assert!(small.metadata.truncation);
    assert!(!small.answers.is_empty());
    assert!(small.to_vec().unwrap().len() <= 600);
    assert!(small.edns.is_some(), "the OPT record survives trimming");
    // Only addresses of targets still answered are kept.
    for extra in small
        .additionals
        .iter()
        .filter(|r| r.record_type() == RecordType::A)
    {
        assert!(
            srv(&small)
                .iter()
                .any(|(_, t)| *t == extra.name.to_string())
        );
    }

    let tcp = dig(
        a.dns,
        "big.service.consul.",
        RecordType::SRV,
        DigOptions {
            edns: None,
            tcp: true,
        },
    )
    .await;
    assert_eq!(tcp.answers.len(), 40);
    assert!(!tcp.metadata.truncation);
    a.shutdown().await;
}

#[tokio::test]
async fn soa_ns_and_reverse_lookups() {
    let a = TestAgent::dev().await;
    let m = a.dig("consul.", RecordType::SOA).await;
    assert!(
        matches!(&m.answers[0].data, RData::SOA(s) if s.rname.to_string() == "hostmaster.consul.")
    );
    assert!(m.authorities.iter().any(
        |r| matches!(&r.data, RData::NS(ns) if ns.0.to_string() == "node-1.node.dc1.consul.")
    ));
    let m = a.dig("consul.", RecordType::NS).await;
    assert_eq!(m.answers.len(), 1);
    let mut glue = m.clone();
    glue.answers = m.additionals.clone();
    assert_eq!(addresses(&glue).len(), 1);

    let m = a.dig("1.0.0.127.in-addr.arpa.", RecordType::PTR).await;
    assert!(
        matches!(&m.answers[0].data, RData::PTR(p) if p.0.to_string() == "node-1.node.dc1.consul.")
    );
    let m = a.dig("9.9.9.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    let m = a.dig("consul.", RecordType::AXFR).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    a.shutdown().await;
}

#[tokio::test]
async fn names_outside_the_domain_are_refused_without_recursors() {
    let a = TestAgent::dev().await;
    let m = a.dig("example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.recursion_available);
    a.shutdown().await;
}

#[tokio::test]
async fn recursors_are_tried_in_turn() {
    // The upstream is another agent whose domain is `example.`.
    let upstream = TestAgent::start(Setup {
        config: Some(r#"{"domain": "example"}"#.into()),
        node: Some("upstream".into()),
        ..Setup::default()
    })
    .await;
    // A recursor that never answers, then one that refuses, then the real one.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let refusing = TestAgent::dev().await;
    let config = json!({
        "recursors": [silent.local_addr().unwrap().to_string(), refusing.dns.to_string(), upstream.dns.to_string()],
        "dns_config": {"recursor_timeout": "300ms"}
    });
    let a = TestAgent::with_config(&config.to_string()).await;
    let m = a.dig("upstream.node.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&m), ["127.0.0.1".parse::<IpAddr>().unwrap()]);
    let m = a.dig("missing.node.example.", RecordType::A).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NXDomain,
        "NXDOMAIN is relayed as is"
    );
    // Names in our own domain never go upstream.
    let m = a.dig("missing.node.consul.", RecordType::A).await;
    assert!(m.metadata.recursion_available);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    drop(silent);
    for agent in [a, refusing, upstream] {
        agent.shutdown().await;
    }
}

#[tokio::test]
async fn all_recursors_failing_is_servfail() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = json!({"recursors": [silent.local_addr().unwrap().to_string()],
                        "dns_config": {"recursor_timeout": "200ms"}});
    let a = TestAgent::with_config(&config.to_string()).await;
    let m = a.dig("example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(m.metadata.recursion_available);
    a.shutdown().await;
}

#[tokio::test]
async fn malformed_packets_get_formerr_and_the_server_keeps_answering() {
    let a = TestAgent::dev().await;
    let mut garbage = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0xc0, 0xff, 0x00]);
    let reply = udp_exchange(a.dns, &garbage)
        .await
        .expect("an answer to a broken query");
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.id, 0xabcd);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert!(
        udp_exchange(a.dns, &[1, 2, 3]).await.is_none(),
        "too short for a header: dropped"
    );
    for len in [0usize, 11, 12, 13, 100, 600] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
        let _ = udp_exchange(a.dns, &bytes).await;
    }
    let m = a.dig("node-1.node.consul.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    a.shutdown().await;
}

#[tokio::test]
async fn ttls_come_from_dns_config() {
    let config = json!({"dns_config": {"node_ttl": "10s", "service_ttl": {"*": "5s", "db*": "66s", "db": "20s"}},
                        "services": [{"name": "db", "port": 1}, {"name": "dblb", "port": 2}, {"name": "api", "port": 3}]});
    let a = TestAgent::with_config(&config.to_string()).await;
    eventually(secs(10), "services synced", || async {
        let v = a.json("/v1/catalog/services").await;
        if v.get("api").is_some() && v.get("dblb").is_some() {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })
    .await;
    let ttl = |m: Message| m.answers[0].ttl;
    assert_eq!(ttl(a.dig("node-1.node.consul.", RecordType::A).await), 10);
    assert_eq!(ttl(a.dig("db.service.consul.", RecordType::A).await), 20);
    assert_eq!(ttl(a.dig("dblb.service.consul.", RecordType::A).await), 66);
    assert_eq!(ttl(a.dig("api.service.consul.", RecordType::A).await), 5);
    a.shutdown().await;
}

#[tokio::test]
async fn many_questions_in_one_packet_are_a_format_error() {
    let a = TestAgent::dev().await;
    let mut q = query_message("node-1.node.consul.", RecordType::A, None);
    let extra = q.queries[0].clone();
    q.add_query(extra);
    let reply = udp_exchange(a.dns, &q.to_vec().unwrap()).await.unwrap();
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    let _: SocketAddr = a.dns;
    a.shutdown().await;
}

#[tokio::test]
async fn answers_follow_every_catalog_change() {
    let a = TestAgent::dev().await;
    register(&a, "svc", 2, 10).await;
    let a_records = |m: Message| addresses(&m).len();
    assert_eq!(
        a_records(a.dig("svc.service.consul.", RecordType::A).await),
        2
    );
    assert_eq!(
        srv(&a.dig("svc.service.consul.", RecordType::SRV).await).len(),
        2
    );
    // One instance goes critical: it leaves DNS at once.
    let r = a
        .put(
            "/v1/catalog/register",
            &json!({"Node": "svc-node-1", "Address": "10.0.0.2",
            "Check": {"CheckID": "down", "Status": "critical", "ServiceID": "svc1"}})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        a_records(a.dig("svc.service.consul.", RecordType::A).await),
        1
    );
    assert_eq!(
        srv(&a.dig("svc.service.consul.", RecordType::SRV).await).len(),
        1
    );
    // A third instance appears; the critical one comes back when its check passes.
    register(&a, "svc", 3, 10).await;
    let r = a
        .put(
            "/v1/catalog/register",
            &json!({"Node": "svc-node-1", "Address": "10.0.0.2",
            "Check": {"CheckID": "down", "Status": "passing", "ServiceID": "svc1"}})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        a_records(a.dig("svc.service.consul.", RecordType::A).await),
        3
    );
    let r = a
        .put("/v1/catalog/deregister", r#"{"Node": "svc-node-0"}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        a_records(a.dig("SVC.service.consul.", RecordType::A).await),
        2
    );
    a.shutdown().await;
}

#[tokio::test]
async fn dns_config_limits_and_filters_apply() {
    let config = json!({"dns_config": {"only_passing": true, "a_record_limit": 2, "udp_answer_limit": 5,
                                       "enable_additional_node_meta_txt": false}});
    let a = TestAgent::with_config(&config.to_string()).await;
    register(&a, "many", 8, 10).await;
    let r = a
        .put(
            "/v1/catalog/register",
            &json!({"Node": "many-node-0", "Address": "10.0.0.1",
            "Check": {"CheckID": "slow", "Status": "warning", "ServiceID": "many0"}})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    let m = a.dig("many.service.consul.", RecordType::A).await;
    assert_eq!(addresses(&m).len(), 2, "a_record_limit");
    let m = dig(
        a.dns,
        "many.service.consul.",
        RecordType::SRV,
        DigOptions::default(),
    )
    .await;
    assert_eq!(m.answers.len(), 5, "udp_answer_limit");
    assert!(m.metadata.truncation);
    let m = dig(
        a.dns,
        "many.service.consul.",
        RecordType::SRV,
        DigOptions {
            edns: None,
            tcp: true,
        },
    )
    .await;
    assert_eq!(
        m.answers.len(),
        7,
        "only_passing drops the warning instance"
    );
    assert!(
        m.additionals
            .iter()
            .all(|r| r.record_type() != RecordType::TXT),
        "no meta TXT"
    );
    a.shutdown().await;
}

#[tokio::test]
async fn node_nodata_and_service_ptr() {
    let a = TestAgent::dev().await;
    let m = a.dig("node-1.node.consul.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert!(has_soa(&m), "NODATA for a node carries the SOA");
    let r = a
        .put(
            "/v1/catalog/register",
            &json!({"Node": "n9", "Address": "10.9.0.1",
            "Service": {"Service": "vip", "Address": "10.200.0.7", "Port": 1}})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    let m = a.dig("7.0.200.10.in-addr.arpa.", RecordType::PTR).await;
    assert!(
        matches!(&m.answers[0].data, RData::PTR(p) if p.0.to_string() == "vip.service.dc1.consul."),
        "{m:?}"
    );
    let long = json!({"Node": "n9", "Address": "10.9.0.1", "NodeMeta": {"long": "y".repeat(500)}});
    assert_eq!(
        a.put("/v1/catalog/register", &long.to_string())
            .await
            .status,
        200
    );
    let m = a.dig("n9.node.consul.", RecordType::TXT).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NoError,
        "long values still encode"
    );
    assert!(!m.answers.is_empty());
    a.shutdown().await;
}

/// The UDP answers a serving thread keeps between queries are byte for byte the answers
/// built afresh (in one of the orders a fresh answer may come in), with the request's
/// ID, and none outlives the catalog it was built from.
#[tokio::test]
async fn kept_udp_answers_are_the_answers_built_afresh() {
    let a = TestAgent::dev().await;
    register(&a, "web", 3, 10).await;
    register(&a, "big", 4, 11).await;
    let r = a
        .put(
            "/v1/catalog/register",
            &json!({"Node": "v6-node", "Address": "2001:db8::1",
            "Service": {"Service": "v6", "ID": "v6", "Port": 80}})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let harness =
        api::fuzzing::DnsHarness::new(a.agent.gateway().clone(), a.agent.config().dns.clone());
    // Every answer `bytes` may get when built afresh; taken before and after the kept
    // answers are asked for, as a SOA serial (the current second) may move in between.
    let fresh = |bytes: &[u8]| -> Vec<Vec<u8>> {
        (0..api::dns::ORDERS)
            .filter_map(|k| harness.answer_udp_in_order(bytes, k))
            .collect()
    };
    let questions: &[(&str, RecordType, Option<u16>)] = &[
        ("web.service.consul.", RecordType::A, None),
        ("web.service.consul.", RecordType::SRV, None),
        ("web.service.consul.", RecordType::SRV, Some(4096)),
        ("WeB.SeRvIcE.CoNsUl.", RecordType::A, None),
        ("WeB.SeRvIcE.CoNsUl.", RecordType::SRV, Some(1232)),
        ("primary.web.service.consul.", RecordType::A, None),
        ("_web._tcp.service.consul.", RecordType::SRV, None),
        ("web.service.dc1.consul.", RecordType::A, None),
        ("web.service.consul.", RecordType::AAAA, None),
        ("v6.service.consul.", RecordType::AAAA, None),
        ("v6.service.consul.", RecordType::ANY, Some(1232)),
        // Four answers: cut to three without EDNS, with TC set.
        ("big.service.consul.", RecordType::A, None),
        ("big.service.consul.", RecordType::SRV, None),
        ("big.service.consul.", RecordType::SRV, Some(512)),
        ("nope.service.consul.", RecordType::A, None),
        ("NoPe.service.consul.", RecordType::A, Some(1232)),
        ("web.service.dc9.consul.", RecordType::A, None),
        ("web-node-0.node.consul.", RecordType::A, None),
        ("web-node-0.node.consul.", RecordType::TXT, None),
        ("web-node-1.node.dc1.consul.", RecordType::ANY, Some(1232)),
        ("web-node-1.node.consul.", RecordType::AAAA, None),
        ("0a000001.addr.dc1.consul.", RecordType::A, None),
        ("1.0.0.10.in-addr.arpa.", RecordType::PTR, None),
        ("consul.", RecordType::SOA, None),
        ("example.com.", RecordType::A, None),
    ];
    let mut ordered = 0;
    for &(name, rtype, edns) in questions {
        let mut query = query_message(name, rtype, edns);
        query.metadata.id = 1;
        let template = query.to_vec().unwrap();
        let before = fresh(&template);
        assert!(!before.is_empty(), "{name} {rtype}: no answer");
        let mut seen = std::collections::BTreeSet::new();
        let mut kept = Vec::new();
        for id in 2..40u16 {
            let mut bytes = template.clone();
            bytes[..2].copy_from_slice(&id.to_be_bytes());
            let answer = harness.answer_udp_kept(&bytes).expect("an answer");
            assert_eq!(answer[..2], id.to_be_bytes(), "{name} {rtype}: the ID");
            kept.push(answer[2..].to_vec());
            // And through the agent's own UDP socket (its serving threads' caches).
            let served = udp_exchange(a.dns, &bytes).await.expect("an answer");
            assert_eq!(served[..2], id.to_be_bytes(), "{name} {rtype}: the ID");
            kept.push(served[2..].to_vec());
        }
        let after = fresh(&template);
        for answer in kept {
            let built = before.iter().chain(&after).any(|b| b[2..] == answer[..]);
            assert!(built, "{name} {rtype}: a kept answer not built afresh");
            seen.insert(answer);
        }
        if ["web.service.consul.", "web.service.dc1.consul."].contains(&name)
            && rtype == RecordType::A
        {
            // Three addresses: the order still varies from query to query (76 answers
            // in one order out of six would be a 1 in 10^57 chance).
            assert!(seen.len() > 1, "{name} {rtype}: always in the same order");
            ordered += 1;
        }
    }
    assert!(ordered > 0);

    // A change in the catalog: what was kept for the older index is not served.
    let mut query = query_message("web.service.consul.", RecordType::A, None);
    query.metadata.id = 7;
    let bytes = query.to_vec().unwrap();
    assert_eq!(
        addresses(&Message::from_vec(&harness.answer_udp_kept(&bytes).unwrap()).unwrap()).len(),
        3
    );
    register(&a, "web", 4, 10).await;
    let want: Vec<IpAddr> = (1..=4).map(|i| IpAddr::from([10, 0, 0, i])).collect();
    let kept = Message::from_vec(&harness.answer_udp_kept(&bytes).unwrap()).unwrap();
    assert_eq!(kept.answers.len(), 3, "cut to three without EDNS");
    assert!(kept.metadata.truncation);
    assert!(addresses(&kept).iter().all(|ip| want.contains(ip)));
    let served = Message::from_vec(&udp_exchange(a.dns, &bytes).await.unwrap()).unwrap();
    assert!(
        served.metadata.truncation,
        "the agent's socket answers for the new catalog"
    );
    let deregistered = a
        .put(
            "/v1/catalog/deregister",
            &json!({"Node": "v6-node"}).to_string(),
        )
        .await;
    assert_eq!(deregistered.status, 200, "{}", deregistered.body);
    let v6 = query_message("v6.service.consul.", RecordType::AAAA, None)
        .to_vec()
        .unwrap();
    for answer in [
        harness.answer_udp_kept(&v6).unwrap(),
        udp_exchange(a.dns, &v6).await.unwrap(),
    ] {
        let m = Message::from_vec(&answer).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(has_soa(&m));
    }
}
