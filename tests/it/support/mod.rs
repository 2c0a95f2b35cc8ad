//! Shared helpers: agents on OS-chosen ports, a DNS client, waiting on conditions.

pub mod browser;
pub mod cluster;
pub mod history;
pub mod linearization;
pub mod netns;
pub mod process;
pub mod proxy;
pub mod register;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use proconsul::client::{Client, Response};
use proconsul::config::Sources;
use proconsul::config::raw::{RawConfig, RawPorts};
use proconsul::{Agent, AgentConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Installs a test subscriber once; `RUST_LOG=debug cargo test name` shows a story.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    });
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Polls `probe` until it returns `Some`, or fails the test after `timeout` naming
/// `what` and the last value seen.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) => {
                if tokio::time::Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An in-process agent with `-dev` settings on OS-chosen ports.
pub struct TestAgent {
    pub agent: Agent,
    pub http: Client,
    pub dns: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// Extra settings for a test agent.
#[derive(Default)]
pub struct Setup {
    /// A config file written into the agent's config dir before start.
    pub config: Option<String>,
    /// Node name (default `node-1`).
    pub node: Option<String>,
    /// Run as a durable server with this data dir instead of `-dev`.
    pub data_dir: Option<PathBuf>,
    /// Time between anti-entropy full syncs, for tests that wait for one.
    pub ae_interval: Option<Duration>,
}

impl TestAgent {
    pub async fn dev() -> TestAgent {
        TestAgent::start(Setup::default()).await
    }

    pub async fn with_config(json: &str) -> TestAgent {
        TestAgent::start(Setup {
            config: Some(json.to_owned()),
            ..Setup::default()
        })
        .await
    }

    pub async fn start(setup: Setup) -> TestAgent {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let config_dir = dir.path().join("config");
        std::fs::create_dir(&config_dir).unwrap();
        if let Some(json) = &setup.config {
            std::fs::write(config_dir.join("test.json"), json).unwrap();
        }
        let durable = setup.data_dir.is_some();
        let sources = Sources {
            dev: !durable,
            dirs: vec![config_dir],
            files: vec![],
            flags: RawConfig {
                node_name: Some(setup.node.unwrap_or_else(|| "node-1".into())),
                log_level: Some("warn".into()),
                server: durable.then_some(true),
                bootstrap_expect: durable.then_some(1),
                bind_addr: durable.then(|| "127.0.0.1".to_string()),
                data_dir: setup.data_dir.as_ref().map(|d| d.display().to_string()),
                ports: Some(RawPorts {
                    http: Some(0),
                    dns: Some(0),
                    server: Some(0),
                    serf_lan: Some(0),
                    ..RawPorts::default()
                }),
                ..RawConfig::default()
            },
            ..Sources::default()
        };
        let mut config = AgentConfig::load(sources).unwrap();
        if let Some(interval) = setup.ae_interval {
            config.ae_interval = interval;
        }
        let agent = Agent::start(config).await.unwrap();
        let http = Client::new(&agent.http_addr().unwrap().to_string()).unwrap();
        let dns = agent.dns_addr().unwrap();
        let test = TestAgent {
            agent,
            http,
            dns,
            dir,
        };
        test.wait_for_leader().await;
        test
    }

    /// The directory holding the agent's config files.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    pub async fn wait_for_leader(&self) {
        eventually(secs(10), "a leader with the agent registered", || async {
            let r = self.get("/v1/health/service/consul").await;
            if r.status == 200 && r.body.contains("serfHealth") {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        })
        .await;
    }

    pub async fn get(&self, path: &str) -> Response {
        self.http
            .call(hyper::Method::GET, path, None)
            .await
            .unwrap()
    }

    pub async fn put(&self, path: &str, body: &str) -> Response {
        self.http
            .call(hyper::Method::PUT, path, Some(body.to_owned()))
            .await
            .unwrap()
    }

    pub async fn json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }

    pub async fn dig(&self, name: &str, rtype: RecordType) -> Message {
        dig(self.dns, name, rtype, DigOptions::default()).await
    }

    pub async fn shutdown(self) {
        self.agent.shutdown().await;
    }
}

/// How to ask a DNS question.
#[derive(Default, Clone, Copy)]
pub struct DigOptions {
    /// EDNS with this buffer size.
    pub edns: Option<u16>,
    /// Over TCP.
    pub tcp: bool,
}

pub fn query_message(name: &str, rtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    m
}

/// Sends raw bytes over UDP and returns the raw reply, if any arrives within 2 s.
pub async fn udp_exchange(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    udp_exchange_within(server, bytes, secs(2)).await
}

/// [`udp_exchange`] with a wait of its own.
pub async fn udp_exchange_within(
    server: SocketAddr,
    bytes: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => {
            buf.truncate(n);
            Some(buf)
        }
        _ => None,
    }
}

/// Asks one DNS question and decodes the answer.
pub async fn dig(server: SocketAddr, name: &str, rtype: RecordType, opts: DigOptions) -> Message {
    let query = query_message(name, rtype, opts.edns);
    let bytes = query.to_vec().unwrap();
    let reply = if opts.tcp {
        let mut stream = TcpStream::connect(server).await.unwrap();
        stream.write_u16(bytes.len() as u16).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        let len = tokio::time::timeout(secs(5), stream.read_u16())
            .await
            .unwrap()
            .unwrap();
        let mut buf = vec![0u8; len as usize];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    } else {
        // dig's default wait: longer than any deadline the agent has for an answer.
        udp_exchange_within(server, &bytes, secs(5))
            .await
            .unwrap_or_else(|| panic!("no DNS answer for {name} {rtype}"))
    };
    let message = Message::from_vec(&reply).unwrap();
    assert_eq!(message.metadata.id, query.metadata.id);
    message
}
