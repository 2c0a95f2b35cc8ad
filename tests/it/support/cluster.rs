//! Datacenters of several in-process agents: one server and client agents, each on a
//! loopback address of its own (127.0.0.N) and OS-chosen ports, optionally behind a
//! fault proxy for its gossip port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use proconsul::client::{Client, Response};
use proconsul::config::Sources;
use proconsul::config::raw::{RawConfig, RawPorts};
use proconsul::{Agent, AgentConfig};
use serde_json::Value;

use super::proxy::Proxy;
use super::{DigOptions, dig, eventually, init_tracing, secs};

/// Loopback addresses handed to agents, so that tests running at once never share one.
static NEXT_IP: AtomicU8 = AtomicU8::new(0);

/// A fresh loopback address (127.0.X.Y), unique in this test process.
pub fn fresh_ip() -> IpAddr {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    // Spread test processes over 127.x too, in case two run side by side.
    IpAddr::V4(Ipv4Addr::new(
        127,
        100 + (pid % 100) as u8,
        n / 250,
        2 + n % 250,
    ))
}

/// How to start one agent of a cluster.
#[derive(Clone, Default)]
pub struct Spec {
    pub name: String,
    pub server: bool,
    /// Gossip key (`encrypt`).
    pub key: Option<String>,
    /// Gossip addresses to join at start.
    pub join: Vec<String>,
    /// A config file (services, checks).
    pub config: Option<String>,
    /// Put a fault proxy in front of the gossip port.
    pub proxied: bool,
    /// `bootstrap_expect` of a server (default 1).
    pub expect: Option<u32>,
    /// Datacenter (default dc1).
    pub datacenter: Option<String>,
    /// WAN addresses to join at start (`start_join_wan`).
    pub join_wan: Vec<String>,
    /// Put a fault proxy in front of the WAN port (QUIC) of a server.
    pub proxied_wan: bool,
    /// Time between anti-entropy full syncs, for tests that wait for one.
    pub ae_interval: Option<std::time::Duration>,
    /// Reads in flight to each other datacenter at most (the agent's default if `None`).
    pub remote_read_caps: Option<gateway::Caps>,
}

/// One running agent of a cluster.
pub struct Member {
    pub name: String,
    pub ip: IpAddr,
    pub agent: Agent,
    pub http: Client,
    pub dns: SocketAddr,
    pub proxy: Option<Proxy>,
    /// The fault proxy in front of the WAN port.
    pub wan_proxy: Option<Proxy>,
    pub dir: tempfile::TempDir,
}

impl Member {
    /// Starts an agent as `spec` says.
    pub async fn start(spec: Spec) -> Member {
        Member::try_start(spec).await.unwrap()
    }

    pub async fn try_start(spec: Spec) -> anyhow::Result<Member> {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        Member::start_in(spec, dir).await
    }

    /// Starts an agent with its state in `dir` (a restart reuses it).
    pub async fn start_in(spec: Spec, dir: tempfile::TempDir) -> anyhow::Result<Member> {
        let ip = fresh_ip();
        let config_dir = dir.path().join("config");
        std::fs::create_dir_all(&config_dir).unwrap();
        if let Some(json) = &spec.config {
            std::fs::write(config_dir.join("test.json"), json).unwrap();
        }
        let ip_text = ip.to_string();
        let sources = Sources {
            dev: false,
            dirs: vec![config_dir],
            files: vec![],
            flags: RawConfig {
                node_name: Some(spec.name.clone()),
                datacenter: spec.datacenter.clone(),
                log_level: Some("warn".into()),
                server: Some(spec.server),
                bootstrap_expect: spec.server.then_some(spec.expect.unwrap_or(1)),
                bind_addr: Some(ip_text.clone()),
                client_addr: Some(ip_text),
                data_dir: Some(dir.path().join("data").display().to_string()),
                encrypt: spec.key.clone(),
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
        let mut config = AgentConfig::load(sources)?;
        config.gossip_lan = gossip::swim::Config::local();
        config.gossip_wan = gossip::swim::Config::local();
        config.start_join = spec.join.clone();
        config.start_join_wan = spec.join_wan.clone();
        if let Some(interval) = spec.ae_interval {
            config.ae_interval = interval;
        }
        if let Some(caps) = spec.remote_read_caps {
            config.remote_read_caps = caps;
        }
        // A gossip port behind a proxy must be known before the proxy can point at it, so
        // it is picked here rather than by the agent; another socket (a wildcard-bound
        // one's ephemeral port) can take it before the agent binds it, and then the
        // start is tried again with new ports.
        let mut attempt = 0;
        let (agent, proxy, wan_proxy) = loop {
            attempt += 1;
            let mut config = config.clone();
            let proxy = if spec.proxied {
                let (port, proxy) = proxied_port(ip).await;
                config.ports.serf_lan = port;
                config.serf_lan_advertise_port = Some(proxy.addr.port());
                Some(proxy)
            } else {
                None
            };
            let wan_proxy = if spec.proxied_wan {
                let (port, proxy) = proxied_port(ip).await;
                config.ports.serf_wan = port;
                config.serf_wan_advertise_port = Some(proxy.addr.port());
                Some(proxy)
            } else {
                None
            };
            let picked_ahead = spec.proxied || spec.proxied_wan;
            match Agent::start(config).await {
                Ok(agent) => break (agent, proxy, wan_proxy),
                Err(e) if picked_ahead && attempt < 5 && address_in_use(&e) => continue,
                Err(e) => return Err(e),
            }
        };
        let http = Client::new(&agent.http_addr().unwrap().to_string()).unwrap();
        let dns = agent.dns_addr().unwrap();
        Ok(Member {
            name: spec.name,
            ip,
            agent,
            http,
            dns,
            proxy,
            wan_proxy,
            dir,
        })
    }

    /// Where other agents join this one.
    pub fn gossip_addr(&self) -> String {
        self.agent.lan().gossip_addr().to_string()
    }

    /// Where servers of other datacenters WAN-join this one.
    pub fn wan_addr(&self) -> String {
        let f = self
            .agent
            .gateway()
            .federation()
            .expect("a federated server");
        f.addr().to_string()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.http
            .call(hyper::Method::GET, path, None)
            .await
            .unwrap()
    }

    pub async fn call(&self, method: hyper::Method, path: &str, body: &str) -> Response {
        self.http
            .call(method, path, Some(body.to_owned()))
            .await
            .unwrap()
    }

    pub async fn json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path} on {}: {}", self.name, r.body);
        serde_json::from_str(&r.body).unwrap()
    }

    pub async fn dig(&self, name: &str, rtype: RecordType) -> Message {
        dig(self.dns, name, rtype, DigOptions::default()).await
    }

    /// Status of each member as this agent sees it (`/v1/agent/members`), by name.
    pub async fn member_status(&self) -> Vec<(String, u64)> {
        let list = self.json("/v1/agent/members").await;
        let mut out: Vec<(String, u64)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["Name"].as_str().unwrap().to_owned(),
                    m["Status"].as_u64().unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }
}

/// Whether `e` says that an address the agent was to bind was taken. By its text: the
/// WAN endpoint's bind error carries the OS error's words, not the `io::Error`.
fn address_in_use(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains("Address already in use")
}

/// A free port on `ip` and a fault proxy in front of it.
async fn proxied_port(ip: IpAddr) -> (u16, Proxy) {
    let port = free_port(ip);
    (port, Proxy::start(ip, SocketAddr::new(ip, port)).await)
}

/// A port free for both UDP and TCP on `ip` right now.
fn free_port(ip: IpAddr) -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(SocketAddr::new(ip, port)).is_ok() {
            return port;
        }
    }
}

/// `n` servers started with `bootstrap_expect = n`, each joining the first.
pub async fn servers(n: usize) -> Vec<Member> {
    servers_with(n, None).await
}

/// [`servers`], each with the config file `config`.
pub async fn servers_with(n: usize, config: Option<String>) -> Vec<Member> {
    let mut members: Vec<Member> = Vec::new();
    for i in 0..n {
        let join = members
            .first()
            .map(|m| vec![m.gossip_addr()])
            .unwrap_or_default();
        members.push(
            Member::start(Spec {
                name: format!("server-{i}"),
                server: true,
                expect: Some(n as u32),
                join,
                config: config.clone(),
                ..Spec::default()
            })
            .await,
        );
    }
    members
}

/// Waits until every given agent names the same leader and `peers` voters, and returns
/// the leader's node name.
pub async fn leader_of(members: &[&Member], peers: usize) -> String {
    leader_other_than(members, peers, None).await
}

/// [`leader_of`], waiting for a leader other than `old` (one that was just stopped, which
/// the others may still name until their lease on it runs out).
pub async fn leader_other_than(members: &[&Member], peers: usize, old: Option<&str>) -> String {
    eventually(secs(30), "one leader seen by every server", || async {
        let mut leaders = Vec::new();
        for m in members {
            let config = m.json("/v1/operator/raft/configuration").await;
            let servers = config["Servers"].as_array().cloned().unwrap_or_default();
            let voters = servers.iter().filter(|s| s["Voter"] == true).count();
            let leader = servers
                .iter()
                .find(|s| s["Leader"] == true)
                .and_then(|s| s["Node"].as_str())
                .map(str::to_owned);
            match leader {
                Some(l) if voters == peers && Some(l.as_str()) != old => leaders.push(l),
                _ => return Err(format!("{} sees {config}", m.name)),
            }
        }
        leaders.dedup();
        if leaders.len() == 1 {
            Ok(leaders.remove(0))
        } else {
            Err(format!("different leaders: {leaders:?}"))
        }
    })
    .await
}

/// One server and `clients` client agents joined to it.
pub struct Cluster {
    pub members: Vec<Member>,
}

impl Cluster {
    /// Starts the server, then each client with `join` set to the server.
    pub async fn start(clients: usize, tweak: impl Fn(&mut Spec)) -> Cluster {
        let mut spec = Spec {
            name: "server-0".into(),
            server: true,
            ..Spec::default()
        };
        tweak(&mut spec);
        let server = Member::start(spec).await;
        let seed = server.gossip_addr();
        let mut members = vec![server];
        for i in 1..=clients {
            let mut spec = Spec {
                name: format!("client-{i}"),
                join: vec![seed.clone()],
                ..Spec::default()
            };
            tweak(&mut spec);
            members.push(Member::start(spec).await);
        }
        Cluster { members }
    }

    pub fn server(&self) -> &Member {
        &self.members[0]
    }

    /// Waits until every agent sees every named member with status `1` (alive).
    pub async fn converged(&self, names: &[String]) {
        let mut want: Vec<(String, u64)> = names.iter().map(|n| (n.clone(), 1)).collect();
        want.sort();
        for m in &self.members {
            eventually(
                secs(30),
                &format!("{} to see everyone alive", m.name),
                || async {
                    let seen = m.member_status().await;
                    if seen == want {
                        Ok(())
                    } else {
                        Err(format!("{seen:?}"))
                    }
                },
            )
            .await;
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    pub async fn shutdown(self) {
        for m in self.members {
            m.agent.stop(false).await;
        }
    }
}
