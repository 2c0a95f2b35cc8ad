//! The WAN pool: the servers of every datacenter in one SWIM pool, run by the `lan` engine
//! over the QUIC [`Endpoint`], members named `node.datacenter` with the server tags.
//!
//! Besides the pool itself this keeps the federation together the way Consul users
//! expect:
//! - **flood join**: every server WAN-joins the servers of its own datacenter that its LAN
//!   pool shows and the WAN pool does not, so joining one server of a datacenter brings
//!   in all of them;
//! - **rejoin after restart**: the addresses of the WAN members are kept in the data dir
//!   (`serf/remote.peers`) and joined again when the server starts;
//! - **routing**: [`Federation::call`] sends a request to a datacenter's servers, nearest
//!   (by QUIC round-trip time) first, moving to the next one on error or silence, each
//!   attempt a share of one deadline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use gossip::swim;
use gossip::{Encryption, JoinError, KeyOperation, KeyringReport, Member, MemberStatus, Pool};

use crate::endpoint::{Endpoint, EndpointConfig, WanError};
use crate::rpc::{Delivery, Request, Response, Service};
use crate::tls::Material;

/// How often a server checks for servers of its datacenter missing from the WAN pool.
pub const FLOOD_INTERVAL: Duration = Duration::from_secs(10);
/// Budget of one flood join or remembered-peer join.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest WAN gossip packet before sealing: it fits one QUIC datagram (about 1150
/// bytes at QUIC's minimum MTU) with the keyring's 29 bytes of sealing.
pub const MAX_WAN_PACKET: usize = 1100;
/// Remembered WAN peers at most (the newest are kept).
pub const MAX_REMEMBERED: usize = 512;
/// How long a server that failed a request is tried after the others of its datacenter
/// (Consul rotates such a server to the end of its list).
pub const FAILED_SERVER_PENALTY: Duration = Duration::from_secs(30);
/// The least time one server is given in [`Federation::call`] before the next is tried.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(250);
/// The most time a server the WAN pool holds failed is given in [`Federation::call`].
pub const FAILED_SERVER_ATTEMPT: Duration = Duration::from_secs(1);
/// Servers remembered as recently failed, at most.
const MAX_FAILED_SERVERS: usize = 4096;

/// Everything the WAN pool needs.
#[derive(Debug, Clone)]
pub struct FederationConfig {
    /// This server's node name (its WAN member name is `node.datacenter`).
    pub node: String,
    /// Its datacenter.
    pub datacenter: String,
    /// The DNS domain (`consul`), which certificates are issued in.
    pub domain: String,
    /// Address of the QUIC endpoint (UDP); port 0 picks a free one.
    pub bind: SocketAddr,
    /// The address other datacenters reach this server at.
    pub advertise: IpAddr,
    /// The port they reach it at, when not the bound one.
    pub advertise_port: Option<u16>,
    /// The server tags (`role`, `dc`, `port`, `id`, …).
    pub tags: BTreeMap<String, String>,
    /// Protocol timers ([`swim::Config::wan`] normally).
    pub gossip: swim::Config,
    /// Gossip encryption with the WAN keyring (`serf/remote.keyring`).
    pub encryption: Option<Encryption>,
    /// The federation's CA and this server's certificate.
    pub material: Material,
    /// Where WAN member addresses are remembered across restarts; `None` forgets them.
    pub peers_file: Option<PathBuf>,
}

/// Handle to the WAN side of a server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Federation {
    endpoint: Endpoint,
    pool: Pool,
    datacenter: String,
    name: String,
    /// Servers whose last request failed, and when.
    failed: Arc<std::sync::Mutex<HashMap<SocketAddr, Instant>>>,
}

/// The WAN member name of a server.
pub fn member_name(node: &str, datacenter: &str) -> String {
    format!("{node}.{datacenter}")
}

fn datacenter_of(m: &Member) -> Option<&str> {
    m.tags
        .get("dc")
        .map(String::as_str)
        .or_else(|| m.name.rsplit_once('.').map(|(_, dc)| dc))
}

/// One datacenter of the WAN pool, as [`Federation::datacenter_health`] sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatacenterHealth {
    /// Its name.
    pub datacenter: String,
    /// Servers gossip holds alive.
    pub alive: usize,
    /// Servers leaving.
    pub leaving: usize,
    /// Servers that left.
    pub left: usize,
    /// Servers gossip found failed.
    pub failed: usize,
    /// Lowest round-trip time measured to one of its servers (none measured yet, or
    /// this server alone).
    pub rtt: Option<Duration>,
}

impl Federation {
    /// Binds the QUIC endpoint and starts the WAN pool with this server alone, then joins
    /// the remembered peers in the background. Tasks run on `tasks` until `shutdown`.
    pub fn start(
        config: FederationConfig,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Federation, WanError> {
        let endpoint = Endpoint::bind(
            EndpointConfig {
                bind: config.bind,
                material: config.material,
                domain: config.domain,
            },
            tasks,
            shutdown.clone(),
        )?;
        let name = member_name(&config.node, &config.datacenter);
        let mut gossip = config.gossip;
        // A gossip packet must fit one QUIC datagram, sealed, at the smallest MTU QUIC
        // allows (1200 bytes on the wire).
        gossip.max_packet_size = gossip.max_packet_size.min(MAX_WAN_PACKET);
        let (pool, inbound) = Pool::start_with(
            gossip::PoolConfig {
                name: name.clone(),
                bind: config.bind,
                advertise: config.advertise,
                advertise_port: config.advertise_port,
                tags: config.tags,
                gossip,
                encryption: config.encryption,
            },
            endpoint.link(),
            "WAN",
            tasks,
            shutdown.child_token(),
        );
        endpoint.set_gossip(inbound);
        let federation = Federation {
            endpoint,
            pool,
            datacenter: config.datacenter,
            name,
            failed: Arc::default(),
        };
        if let Some(file) = config.peers_file {
            let remembered = read_peers(&file);
            if !remembered.is_empty() {
                let f = federation.clone();
                tasks.spawn(async move {
                    let deadline = Instant::now() + JOIN_TIMEOUT;
                    let joined = f.join(&remembered, deadline).await;
                    let ok = joined.iter().filter(|r| r.is_ok()).count();
                    tracing::info!(
                        pool = "WAN",
                        joined = ok,
                        remembered = remembered.len(),
                        "rejoined remembered WAN peers"
                    );
                });
            }
            tasks.spawn(remember_peers(
                federation.pool.subscribe(),
                federation.name.clone(),
                file,
                shutdown,
            ));
        }
        Ok(federation)
    }

    /// Serves requests from other datacenters with `service`.
    pub fn set_service(&self, service: Arc<dyn Service>) {
        self.endpoint.set_service(service);
    }

    /// The QUIC endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The WAN gossip pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// This server's WAN member name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address other datacenters reach this server at.
    pub fn addr(&self) -> SocketAddr {
        self.pool.addr()
    }

    /// Every WAN member this server knows, itself included.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.pool.members()
    }

    /// Joins the WAN pool through each address (`host[:port]`, default port 8302).
    pub async fn join(&self, addrs: &[String], deadline: Instant) -> Vec<Result<(), JoinError>> {
        let attempts = addrs.iter().map(|a| async move {
            let addr =
                gossip::transport::resolve(a, crate::DEFAULT_SERF_WAN_PORT, deadline).await?;
            self.pool.join_one(&addr.to_string(), deadline).await
        });
        futures_util::future::join_all(attempts).await
    }

    /// Announces this server's leave to the WAN pool.
    pub async fn leave(&self) {
        self.pool.leave().await;
    }

    /// `force-leave -wan`: marks a failed WAN member left; with `prune`, forgets it.
    pub async fn force_leave(&self, node: &str, prune: bool) -> bool {
        self.pool.force_leave(node, prune).await
    }

    /// WAN network coordinates this server knows (its own included), by member name.
    pub async fn coordinates(&self) -> gossip::transport::Coordinates {
        self.pool.coordinates().await
    }

    /// Runs a keyring operation across the WAN pool.
    pub async fn keyring(&self, op: KeyOperation, deadline: Instant) -> KeyringReport {
        self.pool.keyring(op, deadline).await
    }

    /// Every datacenter with a server in the WAN pool that has not left, this one
    /// included, by name.
    pub fn datacenters(&self) -> Vec<String> {
        let mut dcs: BTreeSet<String> = self
            .members()
            .iter()
            .filter(|m| m.status != MemberStatus::Left)
            .filter_map(|m| datacenter_of(m).map(str::to_owned))
            .collect();
        dcs.insert(self.datacenter.clone());
        dcs.into_iter().collect()
    }

    /// Whether any server of `datacenter` is in the WAN pool (alive or failed).
    pub fn knows(&self, datacenter: &str) -> bool {
        self.members()
            .iter()
            .any(|m| m.status != MemberStatus::Left && datacenter_of(m) == Some(datacenter))
    }

    /// The servers of `datacenter` to try, in order: alive ones before failed ones
    /// (WAN soft fail: a server gossip calls failed may still answer), then those whose
    /// last request failed within [`FAILED_SERVER_PENALTY`] after the others, each group
    /// by measured round-trip time, unmeasured ones last.
    pub fn servers(&self, datacenter: &str) -> Vec<(String, SocketAddr)> {
        self.servers_by_status(datacenter)
            .into_iter()
            .map(|(name, addr, _)| (name, addr))
            .collect()
    }

    /// Every datacenter of the WAN pool (this one included) as this server sees it: its
    /// servers by gossip status, and the lowest round-trip time measured to one of them.
    pub fn datacenter_health(&self) -> Vec<DatacenterHealth> {
        let mut by_dc: std::collections::BTreeMap<String, DatacenterHealth> =
            std::collections::BTreeMap::new();
        for m in self.members().iter() {
            let Some(dc) = datacenter_of(m) else {
                continue;
            };
            let health = by_dc
                .entry(dc.to_string())
                .or_insert_with(|| DatacenterHealth {
                    datacenter: dc.to_string(),
                    ..DatacenterHealth::default()
                });
            match m.status {
                MemberStatus::Alive => health.alive += 1,
                MemberStatus::Leaving => health.leaving += 1,
                MemberStatus::Left => health.left += 1,
                MemberStatus::Failed => health.failed += 1,
            }
            if m.name != self.name
                && let Some(rtt) = self.endpoint.rtt(SocketAddr::new(m.addr, m.port))
            {
                health.rtt = Some(health.rtt.map_or(rtt, |r: Duration| r.min(rtt)));
            }
        }
        by_dc.into_values().collect()
    }

    /// [`Self::servers`], each with whether gossip holds it alive.
    fn servers_by_status(&self, datacenter: &str) -> Vec<(String, SocketAddr, bool)> {
        let members = self.members();
        let now = Instant::now();
        let failed = self.failed.lock().expect("failed servers lock");
        let mut found: Vec<_> = members
            .iter()
            .filter(|m| m.name != self.name)
            .filter(|m| matches!(m.status, MemberStatus::Alive | MemberStatus::Failed))
            .filter(|m| datacenter_of(m) == Some(datacenter))
            .map(|m| {
                let addr = SocketAddr::new(m.addr, m.port);
                let rtt = self.endpoint.rtt(addr);
                let penalized = failed
                    .get(&addr)
                    .is_some_and(|at| now.duration_since(*at) < FAILED_SERVER_PENALTY);
                (
                    m.status != MemberStatus::Alive,
                    penalized,
                    rtt.is_none(),
                    rtt,
                    m.name.clone(),
                    addr,
                )
            })
            .collect();
        drop(failed);
        found.sort();
        found
            .into_iter()
            .map(|(failed, _, _, _, name, addr)| (name, addr, !failed))
            .collect()
    }

    fn mark_failed(&self, addr: SocketAddr, ok: bool) {
        let mut failed = self.failed.lock().expect("failed servers lock");
        if ok {
            failed.remove(&addr);
            return;
        }
        let now = Instant::now();
        if failed.len() >= MAX_FAILED_SERVERS {
            failed.retain(|_, at| now.duration_since(*at) < FAILED_SERVER_PENALTY);
            if failed.len() >= MAX_FAILED_SERVERS {
                failed.clear();
            }
        }
        failed.insert(addr, now);
    }

    /// Sends `request` to a server of `datacenter`, trying them in [`Self::servers`]
    /// order until one answers or `deadline` passes.
    ///
    /// A server that does not answer must not eat the whole deadline: each attempt gets
    /// an equal share of the time left (at least [`MIN_ATTEMPT`]; at most
    /// [`FAILED_SERVER_ATTEMPT`] for a server gossip holds failed). A blocking read waits
    /// on purpose, so for it the share bounds only reaching the server (the QUIC
    /// connection); once connected it may take until `deadline`, and a server that dies
    /// meanwhile is noticed by the connection's keep-alive. A server that fails is tried
    /// after the others by the next calls, for [`FAILED_SERVER_PENALTY`].
    pub async fn call(
        &self,
        datacenter: &str,
        request: &Request,
        delivery: Delivery,
        deadline: Instant,
    ) -> Result<Response, WanError> {
        if !self.knows(datacenter) {
            return Err(WanError::NoPath);
        }
        let blocking = delivery.long;
        // A write that may have reached a server is never sent to another: the first
        // copy could still be applied after the second, and after whatever the caller
        // does next (undoing it). Only a write that never left (no connection) moves on.
        let write = delivery.at_most_once;
        let servers = self.servers_by_status(datacenter);
        let count = servers.len();
        let mut last = WanError::NoServer;
        for (i, (name, addr, alive)) in servers.into_iter().enumerate() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if i > 0 {
                metrics::counter!("gateway.failovers", "datacenter" => datacenter.to_string())
                    .increment(1);
            }
            let left = u32::try_from(count - i).unwrap_or(u32::MAX);
            let mut budget = ((deadline - now) / left).max(MIN_ATTEMPT);
            if !alive {
                // Gossip has not heard from it: it may still answer (soft fail), but is
                // not worth more than a moment.
                budget = budget.min(FAILED_SERVER_ATTEMPT);
            }
            let share = (now + budget).min(deadline);
            let result = if blocking || write {
                match self.endpoint.connect(addr, datacenter, share).await {
                    Ok(()) => {
                        let answer = self
                            .endpoint
                            .call(addr, datacenter, request, deadline)
                            .await;
                        if write && let Err(e) = &answer {
                            self.mark_failed(addr, false);
                            return Err(WanError::Unknown(format!("{name}: {e}")));
                        }
                        answer
                    }
                    Err(e) => Err(e),
                }
            } else {
                self.endpoint.call(addr, datacenter, request, share).await
            };
            self.mark_failed(addr, result.is_ok());
            match result {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    tracing::debug!(server = %name, error = %e, "WAN request failed; trying the next server");
                    last = e;
                }
            }
        }
        Err(match last {
            WanError::Timeout => WanError::Timeout,
            _ => WanError::NoServer,
        })
    }

    /// Keeps every server of this datacenter that `lan` shows in the WAN pool (flood
    /// join), until `shutdown`.
    pub async fn flood_join(
        self,
        mut lan: watch::Receiver<Arc<Vec<Member>>>,
        shutdown: CancellationToken,
    ) {
        loop {
            let missing: Vec<String> = {
                let wan = self.members();
                let lan = lan.borrow_and_update();
                lan.iter()
                    .filter(|m| m.status == MemberStatus::Alive)
                    .filter(|m| m.tags.get("role").map(String::as_str) == Some("consul"))
                    .filter(|m| datacenter_of(m) == Some(self.datacenter.as_str()))
                    .filter_map(|m| {
                        let name = member_name(&m.name, &self.datacenter);
                        let present = wan
                            .iter()
                            .any(|w| w.name == name && w.status == MemberStatus::Alive);
                        let port = m.tags.get("wan_join_port")?.parse::<u16>().ok()?;
                        (name != self.name && !present)
                            .then(|| SocketAddr::new(m.addr, port).to_string())
                    })
                    .collect()
            };
            if !missing.is_empty() {
                let results = self.join(&missing, Instant::now() + JOIN_TIMEOUT).await;
                for (addr, r) in missing.iter().zip(results) {
                    match r {
                        Ok(()) => {
                            tracing::info!(pool = "WAN", addr = %addr, "flood-joined a server of this datacenter")
                        }
                        Err(e) => {
                            tracing::debug!(pool = "WAN", addr = %addr, error = %e, "flood join failed")
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(FLOOD_INTERVAL) => {}
                changed = lan.changed() => if changed.is_err() { return },
            }
        }
    }
}

fn read_peers(file: &std::path::Path) -> Vec<String> {
    match std::fs::read(file) {
        Ok(bytes) => match serde_json::from_slice::<Vec<String>>(&bytes) {
            Ok(mut peers) => {
                peers.truncate(MAX_REMEMBERED);
                peers
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "ignoring unreadable WAN peers file");
                Vec::new()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read WAN peers file");
            Vec::new()
        }
    }
}

/// Writes the addresses of the WAN members that have not left to `file` whenever they
/// change, so that a restarted server finds the federation again.
async fn remember_peers(
    mut members: watch::Receiver<Arc<Vec<Member>>>,
    own: String,
    file: PathBuf,
    shutdown: CancellationToken,
) {
    let mut written: Option<Vec<String>> = None;
    loop {
        let peers: Vec<String> = {
            let list = members.borrow_and_update();
            let mut peers: Vec<String> = list
                .iter()
                .filter(|m| m.name != own && m.status != MemberStatus::Left)
                .map(|m| SocketAddr::new(m.addr, m.port).to_string())
                .collect();
            peers.sort();
            peers.truncate(MAX_REMEMBERED);
            peers
        };
        // An empty list is not written over a remembered one: a server that has not
        // rejoined yet must not forget where the federation is.
        if written.as_ref() != Some(&peers) && !peers.is_empty() {
            let text = serde_json::to_vec(&peers).expect("addresses serialise");
            let tmp = file.with_extension("tmp");
            // Off the runtime's workers, like every other file write.
            let saved = match tokio::fs::write(&tmp, text).await {
                Ok(()) => tokio::fs::rename(&tmp, &file).await,
                Err(e) => Err(e),
            };
            match saved {
                Ok(()) => written = Some(peers),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "cannot save WAN peers")
                }
            }
            // At most one write per half second; changes meanwhile are written together.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = members.changed() => if changed.is_err() { return },
        }
    }
}
