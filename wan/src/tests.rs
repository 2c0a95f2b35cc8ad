//! Federations of real endpoints on 127.0.0.1: joining, RPCs, and every way a peer's
//! certificate or gossip key can be wrong.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use gossip::keyring::{Key, Keyring};
use gossip::{Encryption, JoinError, MemberStatus};

use crate::rpc::{Caller, Delivery, Request, Response, Service, Serving};
use crate::tls::{self, CertKind, CertRequest, Material, Pem, TlsFiles};
use crate::{Federation, FederationConfig, WanError};

struct Echo {
    node: String,
    datacenter: String,
}

impl Service for Echo {
    fn serve(&self, _caller: Caller, request: Request) -> Serving<'_> {
        Box::pin(async move {
            match request {
                Request::Ping => Response::Pong {
                    node: self.node.clone(),
                    datacenter: self.datacenter.clone(),
                },
                other => Response::Error(format!("not served here: {other:?}")),
            }
        })
    }
}

fn material(dir: &Path, name: &str, ca: &Pem, leaf: &Pem) -> Material {
    let files = TlsFiles {
        ca_file: dir.join(format!("{name}-ca.pem")),
        cert_file: Some(dir.join(format!("{name}.pem"))),
        key_file: Some(dir.join(format!("{name}-key.pem"))),
    };
    std::fs::write(&files.ca_file, &ca.cert).unwrap();
    std::fs::write(files.cert_file.as_ref().unwrap(), &leaf.cert).unwrap();
    std::fs::write(files.key_file.as_ref().unwrap(), &leaf.key).unwrap();
    Material::load(&files).unwrap()
}

fn server_cert(ca: &Pem, dc: &str) -> Pem {
    tls::create_cert(ca, &CertRequest::new(CertKind::Server, dc)).unwrap()
}

/// A server certificate from `ca` that expired yesterday.
fn expired(ca: &Pem, dc: &str) -> Pem {
    let ca_key = rcgen::KeyPair::from_pem(&ca.key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec![format!("server.{dc}.consul"), "localhost".into()])
            .unwrap();
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

struct Fixture {
    tasks: TaskTracker,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn start(
        &self,
        node: &str,
        dc: &str,
        material: Material,
        key: Option<&Key>,
    ) -> Result<Federation, WanError> {
        let tags = BTreeMap::from([
            ("role".to_string(), "consul".to_string()),
            ("dc".to_string(), dc.to_string()),
        ]);
        let f = Federation::start(
            FederationConfig {
                node: node.into(),
                datacenter: dc.into(),
                domain: "consul".into(),
                bind: "127.0.0.1:0".parse().unwrap(),
                advertise: "127.0.0.1".parse().unwrap(),
                advertise_port: None,
                tags,
                gossip: gossip::swim::Config::local(),
                encryption: key.map(|k| Encryption {
                    keyring: Keyring::new(k.clone()),
                    file: None,
                    verify_incoming: true,
                    verify_outgoing: true,
                }),
                material,
                peers_file: None,
            },
            &self.tasks,
            self.shutdown.child_token(),
        )?;
        f.set_service(Arc::new(Echo {
            node: node.into(),
            datacenter: dc.into(),
        }));
        Ok(f)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn eventually(what: &str, mut pred: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !pred() {
        assert!(Instant::now() < end, "{what} did not happen within 20s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(f: &Federation) -> Vec<String> {
    let mut names: Vec<String> = f
        .members()
        .iter()
        .filter(|m| m.status == MemberStatus::Alive)
        .map(|m| m.name.clone())
        .collect();
    names.sort();
    names
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_datacenters_federate_and_route_requests_by_certificate() {
    let fx = Fixture::new();
    let ca = tls::create_ca("consul", 30).unwrap();
    let m1 = material(fx.dir.path(), "s1", &ca, &server_cert(&ca, "dc1"));
    let m2 = material(fx.dir.path(), "s2", &ca, &server_cert(&ca, "dc2"));
    let s1 = fx.start("s1", "dc1", m1, None).unwrap();
    let s2 = fx.start("s2", "dc2", m2, None).unwrap();
    let joined = s2.join(&[s1.addr().to_string()], soon()).await;
    assert_eq!(joined, vec![Ok(())]);
    for f in [&s1, &s2] {
        eventually("both servers are alive WAN members", || {
            alive(f) == ["s1.dc1", "s2.dc2"]
        })
        .await;
        assert_eq!(f.datacenters(), ["dc1", "dc2"]);
    }
    let answer = s1
        .call("dc2", &Request::Ping, Delivery::default(), soon())
        .await
        .unwrap();
    assert!(
        matches!(&answer, Response::Pong { node, datacenter } if node == "s2" && datacenter == "dc2"),
        "{answer:?}"
    );
    assert!(matches!(
        s1.call("dc9", &Request::Ping, Delivery::default(), soon())
            .await,
        Err(WanError::NoPath)
    ));
    assert_eq!(
        WanError::NoPath.to_string(),
        "No path to datacenter",
        "Consul's text"
    );
    // A request for dc1 sent to dc2's address is refused: the certificate says dc2.
    let wrong = s1
        .endpoint()
        .call(s2.addr(), "dc1", &Request::Ping, soon())
        .await;
    assert!(matches!(wrong, Err(WanError::Identity { .. })), "{wrong:?}");
    // Gossip and RPC share the one connection each way.
    assert!(s1.endpoint().connections() <= 2);
    assert!(s1.endpoint().rtt(s2.addr()).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_server_certificate_of_the_federation_are_refused() {
    let fx = Fixture::new();
    let ca = tls::create_ca("consul", 30).unwrap();
    let s1 = fx
        .start(
            "s1",
            "dc1",
            material(fx.dir.path(), "s1", &ca, &server_cert(&ca, "dc1")),
            None,
        )
        .unwrap();
    let foreign_ca = tls::create_ca("consul", 30).unwrap();
    let client_cert = tls::create_cert(&ca, &CertRequest::new(CertKind::Client, "dc2")).unwrap();
    let mut other_domain = CertRequest::new(CertKind::Server, "dc2");
    other_domain.domain = "example".into();
    let cases = [
        (
            "UnknownIssuer",
            material(
                fx.dir.path(),
                "foreign",
                &foreign_ca,
                &server_cert(&foreign_ca, "dc2"),
            ),
        ),
        (
            "certificate expired",
            material(fx.dir.path(), "expired", &ca, &expired(&ca, "dc2")),
        ),
        (
            "not a server certificate",
            material(fx.dir.path(), "client", &ca, &client_cert),
        ),
        (
            "not a server certificate",
            material(
                fx.dir.path(),
                "domain",
                &ca,
                &tls::create_cert(&ca, &other_domain).unwrap(),
            ),
        ),
    ];
    for (what, m) in cases {
        let intruder = fx
            .start(&format!("x-{}", what.len()), "dc2", m, None)
            .unwrap();
        let joined = intruder.join(&[s1.addr().to_string()], soon()).await;
        // Refused in the handshake or right after it, and the joiner is told why.
        assert!(
            matches!(&joined[0], Err(JoinError::Io(e)) if e.contains(what)),
            "{what}: {joined:?}"
        );
        // Nor can it reach s1 the other way round.
        let back = s1
            .endpoint()
            .call(intruder.addr(), "dc2", &Request::Ping, soon())
            .await;
        assert!(back.is_err(), "{what}: {back:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(alive(&s1), ["s1.dc1"], "{what}");
    }
    // Without a certificate of its own a server cannot federate, and is told how.
    let files = TlsFiles {
        ca_file: fx.dir.path().join("s1-ca.pem"),
        cert_file: None,
        key_file: None,
    };
    let e = fx
        .start("nocert", "dc2", Material::load(&files).unwrap(), None)
        .unwrap_err();
    assert!(e.to_string().contains("tls cert create -server"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wan_member_with_another_gossip_key_is_refused() {
    let fx = Fixture::new();
    let ca = tls::create_ca("consul", 30).unwrap();
    let key = Key::generate();
    let other = Key::generate();
    let s1 = fx
        .start(
            "s1",
            "dc1",
            material(fx.dir.path(), "s1", &ca, &server_cert(&ca, "dc1")),
            Some(&key),
        )
        .unwrap();
    let s2 = fx
        .start(
            "s2",
            "dc2",
            material(fx.dir.path(), "s2", &ca, &server_cert(&ca, "dc2")),
            Some(&other),
        )
        .unwrap();
    let joined = s2.join(&[s1.addr().to_string()], soon()).await;
    assert!(
        matches!(joined[0], Err(JoinError::Refused(_))),
        "{joined:?}"
    );
    let s3 = fx
        .start(
            "s3",
            "dc3",
            material(fx.dir.path(), "s3", &ca, &server_cert(&ca, "dc3")),
            Some(&key),
        )
        .unwrap();
    assert_eq!(
        s3.join(&[s1.addr().to_string()], soon()).await,
        vec![Ok(())]
    );
    eventually("the member with the right key joins", || {
        alive(&s1) == ["s1.dc1", "s3.dc3"]
    })
    .await;
    let report = s1.keyring(gossip::KeyOperation::List, soon()).await;
    assert_eq!(report.num_nodes, 2);
    assert_eq!(report.keys.get(&key.to_base64()), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_hold_more_than_its_share_of_the_request_budget() {
    use crate::endpoint::{MAX_REQUEST, MAX_REQUEST_BYTES_PER_CONNECTION};
    let fx = Fixture::new();
    let ca = tls::create_ca("consul", 30).unwrap();
    let start = |node: &str, dc: &str| {
        let m = material(fx.dir.path(), node, &ca, &server_cert(&ca, dc));
        fx.start(node, dc, m, None).unwrap()
    };
    let (s1, s2, s3) = (start("s1", "dc1"), start("s2", "dc2"), start("s3", "dc3"));
    let conn = s2
        .endpoint()
        .raw_connection(s1.addr(), "dc1")
        .await
        .unwrap();
    // Requests that are never finished hold what s1 has read of them. Together they
    // are over the connection's share, though far below the endpoint's whole budget.
    let each = MAX_REQUEST - 1024;
    let count = MAX_REQUEST_BYTES_PER_CONNECTION / each + 1;
    let mut streams = Vec::new();
    for _ in 0..count {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let chunk = vec![b'R'; 64 * 1024];
        let mut sent = 0;
        while sent < each {
            let n = chunk.len().min(each - sent);
            if send.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            sent += n;
        }
        streams.push((send, recv));
    }
    let stops = streams.iter_mut().map(|(send, _)| Box::pin(send.stopped()));
    let (stopped, ..) = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::select_all(stops),
    )
    .await
    .expect("a stream over the connection's share is refused");
    assert!(matches!(stopped, Ok(Some(_))), "{stopped:?}");
    // Another server's connection is not held back.
    let pong = s3
        .endpoint()
        .call(s1.addr(), "dc1", &Request::Ping, soon())
        .await;
    assert!(matches!(pong, Ok(Response::Pong { .. })), "{pong:?}");
    // Once the held requests are given up, the connection gets its share back.
    drop(streams);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let again = s2
            .endpoint()
            .call(s1.addr(), "dc1", &Request::Ping, soon())
            .await;
        if matches!(again, Ok(Response::Pong { .. })) {
            break;
        }
        assert!(
            Instant::now() < end,
            "the connection's share came back: {again:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
