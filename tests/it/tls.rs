//! TLS on the server port: servers and a client agent with certificates from one CA
//! speak only TLS to each other, and callers with a foreign CA, an expired certificate,
//! no certificate, or a server with the wrong name are refused.

use std::path::{Path, PathBuf};

use serde_json::json;
use wan::tls::{self, CertKind, CertRequest, Pem};

use crate::support::cluster::{Member, Spec, leader_of};
use crate::support::{eventually, secs};

fn request(kind: CertKind, dc: &str) -> CertRequest {
    CertRequest::new(kind, dc)
}

/// Writes a certificate and key into `dir`; returns their paths.
fn write(dir: &Path, name: &str, pem: &Pem) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, &pem.cert).unwrap();
    std::fs::write(&key, &pem.key).unwrap();
    (cert, key)
}

/// A certificate from `ca` that expired yesterday.
fn expired(ca: &Pem, kind_name: &str) -> Pem {
    let ca_key = rcgen::KeyPair::from_pem(&ca.key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec![kind_name.to_string(), "localhost".into()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn tls_config(ca: &Path, cert: Option<(&Path, &Path)>) -> String {
    let mut c = json!({
        "ca_file": ca,
        "verify_incoming": true,
        "verify_outgoing": true,
        "verify_server_hostname": true,
    });
    if let Some((cert, key)) = cert {
        c["cert_file"] = json!(cert);
        c["key_file"] = json!(key);
    }
    c.to_string()
}

/// What a client agent's catalog read says.
async fn read_through(agent: &Member) -> (u16, String) {
    let r = agent.get("/v1/catalog/nodes").await;
    (r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_and_clients_with_certificates_from_the_ca_speak_tls_and_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::create_ca("consul", 30).unwrap();
    let ca_file = dir.path().join("consul-agent-ca.pem");
    std::fs::write(&ca_file, &ca.cert).unwrap();

    // Three TLS servers form their cluster over TLS (Raft is on the server port).
    let mut servers: Vec<Member> = Vec::new();
    for i in 0..3 {
        let pem = tls::create_cert(&ca, &request(CertKind::Server, "dc1")).unwrap();
        let (cert, key) = write(dir.path(), &format!("server-{i}"), &pem);
        let join = servers
            .first()
            .map(|m| vec![m.gossip_addr()])
            .unwrap_or_default();
        servers.push(
            Member::start(Spec {
                name: format!("server-{i}"),
                server: true,
                expect: Some(3),
                join,
                config: Some(tls_config(&ca_file, Some((&cert, &key)))),
                ..Spec::default()
            })
            .await,
        );
    }
    let all: Vec<&Member> = servers.iter().collect();
    leader_of(&all, 3).await;
    let seed = servers[0].gossip_addr();

    let client = |name: &str, config: String| Spec {
        name: name.into(),
        join: vec![seed.clone()],
        config: Some(config),
        ..Spec::default()
    };
    // A client agent with a client certificate from the CA reads and writes.
    let pem = tls::create_cert(&ca, &request(CertKind::Client, "dc1")).unwrap();
    let (cert, key) = write(dir.path(), "good", &pem);
    let good = Member::start(client("good", tls_config(&ca_file, Some((&cert, &key))))).await;
    eventually(secs(20), "a read through the good client", || async {
        match read_through(&good).await {
            (200, body) if body.contains("server-0") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // A certificate from another CA: the servers refuse the handshake.
    let foreign_ca = tls::create_ca("consul", 30).unwrap();
    let foreign_ca_file = dir.path().join("foreign-ca.pem");
    std::fs::write(&foreign_ca_file, &foreign_ca.cert).unwrap();
    let pem = tls::create_cert(&foreign_ca, &request(CertKind::Client, "dc1")).unwrap();
    let (cert, key) = write(dir.path(), "foreign", &pem);
    let foreign = Member::start(client(
        "foreign",
        tls_config(&foreign_ca_file, Some((&cert, &key))),
    ))
    .await;
    // An expired certificate from the right CA.
    let pem = expired(&ca, "client.dc1.consul");
    let (cert, key) = write(dir.path(), "expired", &pem);
    let stale = Member::start(client("expired", tls_config(&ca_file, Some((&cert, &key))))).await;
    // No certificate at all (TLS without client auth).
    let anonymous = Member::start(client("anonymous", tls_config(&ca_file, None))).await;
    // Plaintext (no TLS settings): refused by verify_incoming.
    let plain = Member::start(client("plain", "{}".into())).await;
    for agent in [&foreign, &stale, &anonymous, &plain] {
        eventually(
            secs(20),
            &format!("{} to see the servers", agent.name),
            || async {
                if agent.agent.lan().servers().len() == 3 {
                    Ok(())
                } else {
                    Err(format!("{:?}", agent.agent.lan().servers()))
                }
            },
        )
        .await;
        let (status, body) = read_through(agent).await;
        assert_eq!(status, 500, "{} got through: {body}", agent.name);
        assert!(
            body.contains("rpc error making call"),
            "{}: {body}",
            agent.name
        );
    }
    // The plaintext client is told why, and which keys fix it; so are the clients whose
    // certificate the servers refused after the handshake.
    for agent in [&anonymous, &stale] {
        let (_, body) = read_through(agent).await;
        assert!(
            body.contains("refused this agent's TLS") && body.contains("cert_file"),
            "{}: {body}",
            agent.name
        );
    }
    let (_, body) = read_through(&plain).await;
    assert!(
        body.contains("requires TLS (verify_incoming)")
            && body.contains("ca_file, cert_file and key_file")
            && body.contains("proconsul tls cert create -client"),
        "{body}"
    );

    // A server whose certificate is for another datacenter fails hostname checks: a
    // client of dc1 that verifies hostnames refuses it.
    let wrong = tls::create_cert(&ca, &request(CertKind::Server, "dc2")).unwrap();
    let (cert, key) = write(dir.path(), "wrong-name", &wrong);
    let impostor = Member::start(Spec {
        name: "impostor".into(),
        server: true,
        config: Some(tls_config(&ca_file, Some((&cert, &key)))),
        ..Spec::default()
    })
    .await;
    let pem = tls::create_cert(&ca, &request(CertKind::Client, "dc1")).unwrap();
    let (cert, key) = write(dir.path(), "careful", &pem);
    let careful = Member::start(Spec {
        name: "careful".into(),
        join: vec![impostor.gossip_addr()],
        config: Some(tls_config(&ca_file, Some((&cert, &key)))),
        ..Spec::default()
    })
    .await;
    eventually(secs(20), "careful to see the impostor", || async {
        if careful.agent.lan().servers().len() == 1 {
            Ok(())
        } else {
            Err(format!("{:?}", careful.agent.lan().servers()))
        }
    })
    .await;
    let (status, body) = read_through(&careful).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("TLS handshake"), "{body}");

    for m in [good, foreign, stale, anonymous, plain, impostor, careful] {
        m.agent.stop(false).await;
    }
    for m in servers {
        m.agent.stop(false).await;
    }
}
