//! Assembly of one agent: start order, shutdown order, reloads.
//!
//! Start ([`Agent::start`]): advertise addresses and the node ID → the gossip keyring
//! and the server port's TLS → WAN federation (a server with TLS material) → the
//! datacenter layer (gossip, Raft on servers, anti-entropy) → the gateway → HTTP and DNS
//! listeners → config-file services → `start_join` on the LAN, then the WAN →
//! background `retry_join`s, the config's watches and reloads. Shutdown runs the other
//! way: listeners stop accepting (and watches stop), the agent leaves the WAN and LAN
//! pools (unless told to just stop), background tasks stop (within a grace period),
//! then Raft stops.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use gateway::Gateway;
use lan::{Lan, RaftTiming};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AgentConfig, new_uuid};
use crate::watch::agent::WatchSpec;

/// How long shutdown waits for background tasks before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Reload requests waiting to be served; more get "a reload is already in progress".
const RELOAD_QUEUE: usize = 1;

/// A running agent, server or client, of one datacenter, with its HTTP API and DNS
/// interface.
///
/// ```no_run
/// # async fn run() -> anyhow::Result<()> {
/// use proconsul::{Agent, AgentConfig, config::Sources};
/// let config = AgentConfig::load(Sources { dev: true, ..Sources::default() })?;
/// let agent = Agent::start(config).await?;
/// println!("HTTP API on {:?}", agent.http_addr());
/// agent.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Agent {
    config: AgentConfig,
    reload: mpsc::Sender<api::ReloadRequest>,
    identity: Identity,
    lan: Lan,
    gateway: Gateway,
    http: api::http::Listening,
    dns: Option<api::dns::Bound>,
    life: Lifecycle,
}

/// Who the agent is to others, resolved once at start.
struct Identity {
    /// The node ID (configured, saved in the data dir, or new).
    node_id: String,
    /// The address other agents of the datacenter reach it at.
    advertise: IpAddr,
    /// The address other datacenters reach it at.
    advertise_wan: IpAddr,
}

/// The agent's tasks and the tokens that stop them.
struct Lifecycle {
    /// Every task the agent spawns.
    tasks: TaskTracker,
    /// Stops the HTTP and DNS listeners, first at shutdown.
    front: CancellationToken,
    /// Stops everything else (gossip, Raft upkeep, WAN, joins, reloads), after the leave.
    core: CancellationToken,
    /// Cancelled when a leave is requested through the API.
    leave: CancellationToken,
    /// Cancelled when the agent cannot go on: `retry_max` join attempts failed.
    failed: CancellationToken,
}

impl Lifecycle {
    fn new() -> Lifecycle {
        Lifecycle {
            tasks: TaskTracker::new(),
            front: CancellationToken::new(),
            core: CancellationToken::new(),
            leave: CancellationToken::new(),
            failed: CancellationToken::new(),
        }
    }

    /// Stops what a failed start did start, before the error is reported.
    async fn abort(&self, lan: &Lan) {
        self.front.cancel();
        self.core.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait()).await;
        lan.shutdown().await;
    }
}

/// Budget of each `start_join` / `retry_join` attempt.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The gossip keyring, by Consul's precedence: the keyring file in the data dir if
/// there is one (it wins over `encrypt`, with a log line when they differ), else the
/// `encrypt` key (saved as the keyring file for next time), else no encryption.
/// `file_name` is `local.keyring` for the LAN pool and `remote.keyring` for the WAN pool.
fn gossip_encryption(
    config: &AgentConfig,
    file_name: &str,
) -> anyhow::Result<Option<gossip::Encryption>> {
    use gossip::keyring::Keyring;
    let file = match &config.data_dir {
        Some(dir) if !config.disable_keyring_file => Some(dir.join("serf").join(file_name)),
        _ => None,
    };
    let from_file = match &file {
        Some(path) => {
            Keyring::load(path).map_err(|e| anyhow::anyhow!("Failed to configure keyring: {e}"))?
        }
        None => None,
    };
    let keyring = match (from_file, &config.encrypt) {
        (Some(ring), Some(key)) => {
            if !ring.keys().contains(key) {
                tracing::warn!(
                    file = %file.as_ref().map(|f| f.display().to_string()).unwrap_or_default(),
                    "keyring doesn't include key provided with -encrypt, using keyring"
                );
            }
            ring
        }
        (Some(ring), None) => ring,
        (None, Some(key)) => {
            let ring = Keyring::new(key.clone());
            if let Some(path) = &file {
                ring.save(path)
                    .with_context(|| format!("writing the keyring file {}", path.display()))?;
            }
            ring
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(gossip::Encryption {
        keyring,
        file,
        verify_incoming: config.encrypt_verify_incoming,
        verify_outgoing: config.encrypt_verify_outgoing,
    }))
}

/// TLS for the server port from the configured files: a server presents its
/// certificate (and with `verify_incoming` asks callers for one); with `verify_outgoing`
/// every agent calls servers over TLS and checks their certificate, by name too with
/// `verify_server_hostname`.
fn rpc_tls(config: &AgentConfig) -> anyhow::Result<Option<lan::RpcTls>> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let material = wan::tls::Material::load(&tls.files)?;
    let server = if config.server && material.has_certificate() {
        Some(Arc::new(material.server_config(tls.verify_incoming, &[])?))
    } else {
        None
    };
    let client = if tls.verify_outgoing {
        Some(Arc::new(
            material.client_config(tls.verify_server_hostname, &[])?,
        ))
    } else {
        None
    };
    let domain = config.dns.domain.to_string();
    Ok(Some(lan::RpcTls {
        server,
        verify_incoming: tls.verify_incoming,
        client,
        server_name: wan::tls::server_name(config.datacenter.as_str(), &domain),
    }))
}

/// The WAN side of a server: its QUIC endpoint and WAN pool, when it has TLS material;
/// otherwise why it has none (the text WAN operations answer with).
fn federation(
    config: &AgentConfig,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
    advertise_wan: IpAddr,
) -> anyhow::Result<Result<wan::Federation, String>> {
    if !config.server {
        return Ok(Err(
            "WAN federation is for servers: this agent is a client; ask a server".into(),
        ));
    }
    let material = match &config.tls {
        Some(tls) => wan::tls::Material::load(&tls.files)?,
        None => {
            return Ok(Err(format!(
                "WAN federation needs TLS: set ca_file, cert_file and key_file (create them \
                 with `proconsul tls ca create` and `proconsul tls cert create -server -dc {}`)",
                config.datacenter
            )));
        }
    };
    let peers_file = config
        .data_dir
        .as_ref()
        .filter(|_| !config.dev)
        .map(|d| d.join("serf").join("remote.peers"));
    if let Some(f) = peers_file.as_ref().and_then(|f| f.parent()) {
        std::fs::create_dir_all(f).with_context(|| format!("creating {}", f.display()))?;
    }
    let mut gossip = config.gossip_wan.clone();
    gossip.dead_reap_timeout = config.reconnect_timeout;
    let federation = wan::Federation::start(
        wan::FederationConfig {
            node: config.node_name.clone(),
            datacenter: config.datacenter.to_string(),
            domain: config
                .dns
                .domain
                .to_string()
                .trim_end_matches('.')
                .to_owned(),
            bind: SocketAddr::new(config.bind_addr, config.ports.serf_wan),
            advertise: advertise_wan,
            advertise_port: config.serf_wan_advertise_port,
            tags: Default::default(),
            gossip,
            encryption: gossip_encryption(config, "remote.keyring")?,
            material,
            peers_file,
        },
        tasks,
        shutdown,
    )
    .context("starting WAN federation")?;
    Ok(Ok(federation))
}

/// A gossip pool to join: the LAN pool, or the WAN pool of a server.
#[derive(Clone)]
enum Joinable {
    Lan(Lan),
    Wan(wan::Federation),
}

impl Joinable {
    fn name(&self) -> &'static str {
        match self {
            Joinable::Lan(_) => "LAN",
            Joinable::Wan(_) => "WAN",
        }
    }

    async fn join(&self, addrs: &[String]) -> Vec<Result<(), gossip::JoinError>> {
        let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
        match self {
            Joinable::Lan(lan) => lan.join(addrs, deadline).await,
            Joinable::Wan(f) => f.join(addrs, deadline).await,
        }
    }
}

/// `start_join` / `start_join_wan`: join at start; an agent that reaches none of them
/// does not start (Consul's behaviour).
async fn start_join(pool: &Joinable, addrs: &[String]) -> anyhow::Result<()> {
    if addrs.is_empty() {
        return Ok(());
    }
    let results = pool.join(addrs).await;
    let joined = results.iter().filter(|r| r.is_ok()).count();
    for (addr, r) in addrs.iter().zip(&results) {
        if let Err(e) = r {
            tracing::warn!(peer = %addr, error = %e, "failed to join");
        }
    }
    if joined == 0 {
        match pool {
            Joinable::Lan(_) => bail!("Failed to join any nodes"),
            Joinable::Wan(_) => bail!("Failed to join any WAN nodes"),
        }
    }
    tracing::info!(joined, pool = pool.name(), "joined the pool");
    Ok(())
}

/// `retry_join`: joins in the background, again every `interval` until one address
/// answers; after `max` failed attempts (0 = no limit) the agent stops with an error.
async fn retry_join(
    pool: Joinable,
    addrs: Vec<String>,
    interval: Duration,
    max: u32,
    failed: CancellationToken,
    shutdown: CancellationToken,
) {
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let join = pool.join(&addrs);
        let results = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = join => r,
        };
        let joined = results.iter().filter(|r| r.is_ok()).count();
        if joined > 0 {
            tracing::info!(joined, pool = pool.name(), "retry join completed");
            return;
        }
        let errors: Vec<String> = addrs
            .iter()
            .zip(&results)
            .filter_map(|(a, r)| r.as_ref().err().map(|e| format!("{a}: {e}")))
            .collect();
        if max > 0 && attempt >= max {
            tracing::error!(attempts = attempt, pool = pool.name(), errors = %errors.join("; "), "max join retry exhausted, exiting");
            failed.cancel();
            return;
        }
        tracing::warn!(attempt, pool = pool.name(), errors = %errors.join("; "), retry_in = ?interval, "join failed, retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Private IPv4 ranges an unspecified bind address may resolve to (RFC 1918, RFC 6598).
fn is_private(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 10
        || (o[0] == 172 && (16..=31).contains(&o[1]))
        || (o[0] == 192 && o[1] == 168)
        || (o[0] == 100 && (64..=127).contains(&o[1]))
}

/// The address to advertise for a bind address: itself, or for `0.0.0.0` the only
/// private IPv4 address of the host (Consul refuses to guess between several).
pub fn resolve_bind(bind: IpAddr) -> anyhow::Result<IpAddr> {
    if !bind.is_unspecified() {
        return Ok(bind);
    }
    let private: Vec<Ipv4Addr> = if_addrs::get_if_addrs()
        .context("listing network interfaces")?
        .into_iter()
        .filter_map(|i| match i.ip() {
            IpAddr::V4(v4) if is_private(v4) => Some(v4),
            _ => None,
        })
        .collect();
    match private.as_slice() {
        [one] => Ok(IpAddr::V4(*one)),
        [] => bail!(
            "No private IPv4 address found; set -bind (or bind_addr) to the address to use, e.g. -bind=127.0.0.1"
        ),
        many => {
            let list: Vec<String> = many.iter().map(|ip| ip.to_string()).collect();
            bail!(
                "Multiple private IPv4 addresses found ({}). Please configure one with 'bind' and/or 'advertise'.",
                list.join(", ")
            )
        }
    }
}

/// The node ID: configured, else read from the data dir, else new (and saved there).
fn node_id(config: &AgentConfig) -> anyhow::Result<String> {
    if let Some(id) = &config.node_id {
        return Ok(id.clone());
    }
    let Some(dir) = &config.data_dir else {
        return Ok(new_uuid());
    };
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_owned();
            if id.len() == 36 {
                return Ok(id);
            }
            bail!(
                "{} does not hold a node ID; remove it to get a new one",
                path.display()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = new_uuid();
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))
}

/// Addresses as Consul's `DebugConfig` lists them (`tcp://127.0.0.1:8501`); none when
/// the port is off.
fn listen_addrs(ips: &[IpAddr], port: Option<u16>) -> Vec<String> {
    port.map(|port| {
        ips.iter()
            .map(|ip| format!("tcp://{}", SocketAddr::new(*ip, port)))
            .collect()
    })
    .unwrap_or_default()
}

/// The resolved configuration as `/v1/agent/self` shows it under `DebugConfig`.
fn debug_config(config: &AgentConfig, node_id: &str, advertise: IpAddr) -> serde_json::Value {
    serde_json::json!({
        "Datacenter": config.datacenter.as_str(),
        "NodeName": config.node_name,
        "NodeID": node_id,
        "ServerMode": config.server,
        "Bootstrap": config.bootstrap,
        "BootstrapExpect": config.bootstrap_expect,
        "DevMode": config.dev,
        "DataDir": config.data_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default(),
        "BindAddr": config.bind_addr.to_string(),
        "AdvertiseAddrLAN": advertise.to_string(),
        "ClientAddrs": config.client_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "DNSDomain": config.dns.domain.to_string(),
        "DNSPort": config.ports.dns.map(i64::from).unwrap_or(-1),
        "HTTPPort": config.ports.http.map(i64::from).unwrap_or(-1),
        "HTTPSPort": config.ports.https.map(i64::from).unwrap_or(-1),
        "HTTPAddrs": listen_addrs(&config.addresses.http, config.ports.http),
        "HTTPSAddrs": listen_addrs(&config.addresses.https, config.ports.https),
        "ServerPort": config.ports.server,
        "SerfPortLAN": config.ports.serf_lan,
        "SerfPortWAN": config.ports.serf_wan,
        "DNSRecursors": config.dns.recursors.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "DNSOnlyPassing": config.dns.only_passing,
        "DNSUDPAnswerLimit": config.dns.udp_answer_limit,
        "DNSARecordLimit": config.dns.a_record_limit,
        "EnableScriptChecks": config.enable_script_checks,
        "EnableLocalScriptChecks": config.enable_local_script_checks,
        "NodeMeta": config.node_meta,
        "LogLevel": config.log_level,
        "Logging": log_file_config(config),
    })
}

/// The log keys as `DebugConfig` shows them (Consul's `Logging` block).
fn log_file_config(config: &AgentConfig) -> serde_json::Value {
    let file = config.log_file.as_ref();
    serde_json::json!({
        "LogJSON": config.log_json,
        "LogFilePath": file.map(|f| f.path.display().to_string()).unwrap_or_default(),
        "LogRotateBytes": file.map_or(0, |f| f.rotate_bytes),
        "LogRotateDuration": file.map(|f| catalog::duration::format(f.rotate_duration)).unwrap_or_default(),
        "LogRotateMaxFiles": file.map_or(0, |f| f.max_files),
    })
}

impl Identity {
    /// Prepares the data dir (the node ID is kept there), then resolves the advertise
    /// addresses and the node ID.
    fn resolve(config: &AgentConfig) -> anyhow::Result<Identity> {
        if let Some(dir) = &config.data_dir {
            prepare_data_dir(dir)?;
        }
        let advertise = match config.advertise_addr {
            Some(a) => a,
            None => resolve_bind(config.bind_addr)?,
        };
        let node_id = node_id(config)?;
        Ok(Identity {
            node_id,
            advertise,
            advertise_wan: config.advertise_addr_wan.unwrap_or(advertise),
        })
    }
}

/// Starts the datacenter layer and the gateway over it, with the WAN federation of a
/// server that has TLS material. What this starts stops with `life.core`.
async fn start_datacenter(
    config: &AgentConfig,
    identity: &Identity,
    life: &Lifecycle,
) -> anyhow::Result<(Lan, Gateway)> {
    let encryption = gossip_encryption(config, "local.keyring")?;
    let rpc_tls = rpc_tls(config)?;
    let federation = federation(
        config,
        &life.tasks,
        life.core.child_token(),
        identity.advertise_wan,
    )?;
    if let Err(why) = &federation
        && !(config.start_join_wan.is_empty() && config.retry_join_wan.is_empty())
    {
        bail!("cannot join the WAN: {why}");
    }
    let lan_config = lan_config(config, identity, &federation, encryption, rpc_tls);
    let lan = Lan::start(lan_config, &life.tasks, life.core.child_token())
        .await
        .context("starting the catalog")?;
    let gateway = gateway(config, lan.clone(), federation, life).await;
    Ok((lan, gateway))
}

/// The datacenter layer's configuration, taken from the agent's.
fn lan_config(
    config: &AgentConfig,
    identity: &Identity,
    federation: &Result<wan::Federation, String>,
    encryption: Option<gossip::Encryption>,
    rpc_tls: Option<lan::RpcTls>,
) -> lan::Config {
    // Servers of this datacenter flood-join each other into the WAN pool at this port.
    let serf_wan_port = match federation {
        Ok(f) => f.addr().port(),
        Err(_) => config.ports.serf_wan,
    };
    let mut gossip = config.gossip_lan.clone();
    gossip.dead_reap_timeout = config.reconnect_timeout;
    lan::Config {
        node_name: config.node_name.clone(),
        node_id: identity.node_id.clone(),
        datacenter: config.datacenter.clone(),
        server: config.server,
        bootstrap: config.bootstrap,
        bootstrap_expect: config.bootstrap_expect,
        bind: config.bind_addr,
        advertise: identity.advertise,
        advertise_wan: identity.advertise_wan,
        server_port: config.ports.server,
        serf_lan_port: config.ports.serf_lan,
        serf_lan_advertise_port: config.serf_lan_advertise_port,
        serf_wan_port,
        node_meta: config.node_meta.clone(),
        enable_script_checks: config.enable_script_checks || config.enable_local_script_checks,
        raft: RaftTiming {
            snapshot_threshold: config.raft_snapshot_threshold,
            ..RaftTiming::default()
        },
        storage: match &config.data_dir {
            Some(dir) if !config.dev => lan::Storage::Disk(dir.join("raft")),
            _ => lan::Storage::Memory,
        },
        gossip,
        encryption,
        rpc_tls,
        rpc_max_conns_per_client: config.rpc_max_conns_per_client,
        version: crate::VERSION.to_owned(),
        sync_interval: config.ae_interval,
        kv_replication: config.kv_replication.clone(),
        acl: config.acl.clone(),
        autopilot: config.autopilot.clone(),
    }
}

/// The gateway: over the WAN federation when there is one (its WAN member then carries
/// the LAN member's server tags, and it flood-joins the datacenter's other servers),
/// else with the reason WAN operations fail.
async fn gateway(
    config: &AgentConfig,
    lan: Lan,
    federation: Result<wan::Federation, String>,
    life: &Lifecycle,
) -> Gateway {
    match federation {
        Ok(f) => {
            if let Some(me) = lan.members().iter().find(|m| m.name == config.node_name) {
                f.pool().set_tags((*me.tags).clone()).await;
            }
            life.tasks.spawn(
                f.clone()
                    .flood_join(lan.subscribe_members(), life.core.child_token()),
            );
            Gateway::with_federation(lan, f, &life.tasks, config.remote_read_caps)
        }
        Err(why) => Gateway::new(lan, why, &life.tasks, config.remote_read_caps),
    }
}

/// What the HTTP API answers from, and the controls it may pull: leave and reload.
fn api_context(
    config: &AgentConfig,
    identity: &Identity,
    lan: &Lan,
    gateway: &Gateway,
    reload: mpsc::Sender<api::ReloadRequest>,
    life: &Lifecycle,
) -> api::Context {
    // A server copies another datacenter's keys whenever it leads.
    let kv_replication = config.kv_replication.clone().map(|r| {
        gateway::start_kv_replication(gateway.clone(), r, &life.tasks, life.core.child_token())
    });
    // A server of a secondary datacenter copies the primary's ACL tables whenever it
    // leads.
    let acl_replication = config
        .acl
        .as_ref()
        .filter(|_| config.server)
        .and_then(|acl| {
            let primary = acl.primary_datacenter.clone()?;
            Some(gateway::start_acl_replication(
                gateway.clone(),
                primary,
                // The configuration's, or one a previous run kept (token persistence).
                lan.tokens().get(lan::TokenKind::Replication),
                acl.token_replication,
                &life.tasks,
                life.core.child_token(),
            ))
        });
    api::Context {
        gateway: gateway.clone(),
        lan: lan.clone(),
        kv_replication,
        acl_replication,
        ui: config.ui.clone(),
        agent: Arc::new(api::AgentInfo {
            node_name: config.node_name.clone(),
            node_id: identity.node_id.clone(),
            datacenter: config.datacenter.to_string(),
            server: config.server,
            bootstrap: config.bootstrap,
            version: crate::VERSION.to_owned(),
            revision: String::new(),
            enable_script_checks: config.enable_script_checks,
            kv_max_value_size: config.http_limits.kv_max_value_size,
            data_dir: config.data_dir.clone().filter(|_| !config.dev),
            prometheus_retention: config.telemetry.prometheus_retention,
            debug_config: debug_config(config, &identity.node_id, identity.advertise),
        }),
        control: api::Control {
            leave: life.leave.clone(),
            reload,
        },
        shutdown: life.front.clone(),
        telemetry: api::telemetry::install(&config.telemetry),
        monitor: config.monitor.clone(),
    }
}

/// The listeners an agent bound: HTTP and HTTPS addresses, and the DNS interface if
/// enabled.
type Listeners = (api::http::Listening, Option<api::dns::Bound>);

/// Opens the agent to others: binds its listeners, registers the services of its
/// config files, and joins what `start_join`, then `start_join_wan`, name.
async fn open(
    config: &AgentConfig,
    context: api::Context,
    lan: &Lan,
    gateway: &Gateway,
    life: &Lifecycle,
) -> anyhow::Result<Listeners> {
    let listeners = listen(config, context, gateway, life).await?;
    // Maintenance from the last run is put back around the config files' services: the
    // node's before they register, each service's right after, so neither is offered
    // as healthy in between. Only then does anti-entropy start, so that its first full
    // pass does not take out of the catalog what is about to be registered again.
    let saved = match maintenance_dir(config) {
        Some(dir) => crate::maintenance::load(dir)?,
        None => lan::Maintenance::default(),
    };
    if let Some(reason) = &saved.node {
        lan.local().enable_node_maintenance(reason);
    }
    lan.local()
        .replace_config(config.services.clone(), config.checks.clone())
        .context("registering the services of the config files")?;
    lan.local().restore_maintenance(&saved);
    lan.start_anti_entropy(&life.tasks, life.core.child_token());
    if let Some(dir) = maintenance_dir(config) {
        life.tasks.spawn(crate::maintenance::keep(
            lan.local().clone(),
            dir.to_owned(),
            life.core.child_token(),
        ));
    }
    start_join(&Joinable::Lan(lan.clone()), &config.start_join).await?;
    if let Ok(f) = gateway.federation() {
        start_join(&Joinable::Wan(f.clone()), &config.start_join_wan).await?;
    }
    Ok(listeners)
}

/// Where maintenance mode is kept across restarts: the data dir, unless in `-dev` mode
/// (which keeps nothing).
fn maintenance_dir(config: &AgentConfig) -> Option<&Path> {
    config.data_dir.as_deref().filter(|_| !config.dev)
}

/// The HTTPS API's TLS configuration from its files, when `ports.https` is on.
fn https_tls(
    config: &AgentConfig,
) -> anyhow::Result<Option<Arc<tokio_rustls::rustls::ServerConfig>>> {
    let Some(https) = &config.https else {
        return Ok(None);
    };
    let client_ca = https.ca_file.as_deref().filter(|_| https.verify_incoming);
    let tls = wan::tls::https_server_config(
        &https.cert_file,
        &https.key_file,
        client_ca,
        https.tls13_only,
    )
    .context("loading the HTTPS API's certificate")?;
    Ok(Some(Arc::new(tls)))
}

/// Binds the HTTP and HTTPS APIs and the DNS interface on their addresses
/// (`addresses`, else `client_addr`; port 0 picks a free port), each unless its port is
/// disabled.
async fn listen(
    config: &AgentConfig,
    context: api::Context,
    gateway: &Gateway,
    life: &Lifecycle,
) -> anyhow::Result<Listeners> {
    let on = |ips: &[IpAddr], port: Option<u16>| -> Vec<SocketAddr> {
        port.map(|port| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
            .unwrap_or_default()
    };
    let addresses = &config.addresses;
    let http = on(&addresses.http, config.ports.http);
    let https = https_tls(config)?.map(|tls| api::http::Https {
        addrs: on(&addresses.https, config.ports.https),
        config: tls,
    });
    let http = if http.is_empty() && https.is_none() {
        api::http::Listening::default()
    } else {
        api::http::start(
            &http,
            https,
            context,
            config.http_limits.clone(),
            &life.tasks,
            life.front.child_token(),
        )
        .await?
    };
    let dns = match config.ports.dns {
        Some(_) => Some(
            api::dns::start(
                &on(&addresses.dns, config.ports.dns),
                gateway.clone(),
                config.dns.clone(),
                &life.tasks,
                life.front.child_token(),
            )
            .await?,
        ),
        None => None,
    };
    Ok((http, dns))
}

/// `retry_join` and `retry_join_wan`: joins that go on in the background.
fn spawn_retry_joins(config: &AgentConfig, lan: &Lan, gateway: &Gateway, life: &Lifecycle) {
    if !config.retry_join.is_empty() {
        life.tasks.spawn(retry_join(
            Joinable::Lan(lan.clone()),
            config.retry_join.clone(),
            config.retry_interval,
            config.retry_max,
            life.failed.clone(),
            life.core.child_token(),
        ));
    }
    if let Ok(f) = gateway.federation()
        && !config.retry_join_wan.is_empty()
    {
        life.tasks.spawn(retry_join(
            Joinable::Wan(f.clone()),
            config.retry_join_wan.clone(),
            config.retry_interval_wan,
            config.retry_max_wan,
            life.failed.clone(),
            life.core.child_token(),
        ));
    }
}

impl Agent {
    /// Starts an agent: logs the warnings of its configuration (files skipped), binds its
    /// listeners (ports 0 pick free ports), registers the services of its config files
    /// and joins the addresses of `start_join` and `start_join_wan`. If any step fails,
    /// what had started is stopped before the error is returned.
    pub async fn start(config: AgentConfig) -> anyhow::Result<Agent> {
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        // Before anything records: hot paths register their metric handles as they start.
        api::telemetry::install(&config.telemetry);
        let identity = Identity::resolve(&config)?;
        let life = Lifecycle::new();
        let (lan, gateway) = match start_datacenter(&config, &identity, &life).await {
            Ok(started) => started,
            Err(e) => {
                // Stops the WAN federation if it had started.
                life.core.cancel();
                return Err(e);
            }
        };
        let (reload, reloads) = mpsc::channel(RELOAD_QUEUE);
        let context = api_context(&config, &identity, &lan, &gateway, reload.clone(), &life);
        life.tasks.spawn(crate::telemetry::sample(
            context.telemetry.clone(),
            lan.clone(),
            gateway.clone(),
            life.core.child_token(),
        ));
        let (http, dns) = match open(&config, context, &lan, &gateway, &life).await {
            Ok(bound) => bound,
            Err(e) => {
                life.abort(&lan).await;
                return Err(e);
            }
        };
        spawn_retry_joins(&config, &lan, &gateway, &life);
        let watches = Watches {
            http: http.http.first().copied(),
            tasks: life.tasks.clone(),
            parent: life.front.clone(),
            running: life.front.child_token(),
        };
        watches.start(&config.watches);
        life.tasks.spawn(serve_reloads(
            reloads,
            config.clone(),
            Reloaded {
                node_id: identity.node_id.clone(),
                advertise: identity.advertise,
                lan: lan.clone(),
                watches,
            },
            life.core.child_token(),
        ));
        Ok(Agent {
            config,
            reload,
            identity,
            lan,
            gateway,
            http,
            dns,
            life,
        })
    }

    /// The first bound HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.http.first().copied()
    }

    /// The first bound HTTPS address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.http.https.first().copied()
    }

    /// The first bound DNS address (UDP and TCP share it).
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().and_then(|b| b.udp.first().copied())
    }

    /// The datacenter layer.
    pub fn lan(&self) -> &Lan {
        &self.lan
    }

    /// The gateway.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The configuration the agent runs with.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Resolves when a leave was requested through the API.
    pub async fn left(&self) {
        self.life.leave.cancelled().await;
    }

    /// Resolves, with the reason, when the agent cannot go on: `retry_max` join attempts
    /// failed, or Raft stopped by itself (a full disk, a panic). The caller should stop
    /// it and exit with an error, so that a supervisor restarts it.
    pub async fn failed(&self) -> String {
        tokio::select! {
            _ = self.life.failed.cancelled() => "joining failed after retry_max attempts".into(),
            reason = self.lan.failed() => reason,
        }
    }

    /// Re-reads the config files and replaces the services and checks they define
    /// (SIGHUP, `proconsul reload`). Reloads are served one at a time.
    pub async fn reload(&self) -> Result<(), String> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.reload
            .send(reply)
            .await
            .map_err(|_| "the agent is shutting down".to_string())?;
        done.await
            .map_err(|_| "the agent is shutting down".to_string())?
    }

    /// Consul's start-up banner.
    pub fn banner(&self) -> String {
        let c = &self.config;
        let port = |p: Option<u16>, bound: Option<SocketAddr>| match (p, bound) {
            (_, Some(a)) => a.port().to_string(),
            (Some(p), None) => p.to_string(),
            (None, None) => "-1".into(),
        };
        let clients: Vec<String> = c.client_addrs.iter().map(|a| a.to_string()).collect();
        format!(
            "==> Starting proconsul agent...\n\
             \x20              Version: '{version}'\n\
             \x20              Node ID: '{id}'\n\
             \x20            Node name: '{node}'\n\
             \x20           Datacenter: '{dc}' (Segment: '<all>')\n\
             \x20               Server: {server} (Bootstrap: {bootstrap})\n\
             \x20          Client Addr: [{clients}] (HTTP: {http}, HTTPS: {https}, gRPC: -1, DNS: {dns})\n\
             \x20         Cluster Addr: {advertise} (LAN: {lan}, WAN: {wan})\n\
             \x20    Gossip Encryption: {encrypted}\n\
             \n\
             ==> Log data will now stream in as it occurs:\n",
            version = crate::VERSION,
            id = self.identity.node_id,
            node = c.node_name,
            dc = c.datacenter,
            server = c.server,
            bootstrap = c.bootstrap,
            clients = clients.join(" "),
            http = port(c.ports.http, self.http_addr()),
            https = port(c.ports.https, self.https_addr()),
            dns = port(c.ports.dns, self.dns_addr()),
            advertise = self.identity.advertise,
            lan = self.lan.gossip_addr().port(),
            wan = match self.gateway.federation() {
                Ok(f) => f.endpoint().local_addr().port().to_string(),
                Err(_) => "-1".into(),
            },
            encrypted = self.lan.encrypted(),
        )
    }

    /// Stops the agent in order: listeners, a graceful leave of the pool, background
    /// tasks, Raft.
    pub async fn shutdown(self) {
        self.stop(true).await;
    }

    /// Stops the agent; with `leave`, it leaves the pool gracefully first (members see
    /// it `left`), else it just stops (members see it `failed`, as after a crash, and
    /// it rejoins when it comes back).
    pub async fn stop(self, leave: bool) {
        self.life.front.cancel();
        if leave {
            if let Ok(f) = self.gateway.federation() {
                f.leave().await;
            }
            self.lan.leave().await;
        }
        self.life.core.cancel();
        self.life.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.life.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.life.tasks.len(),
                "background tasks did not stop within the grace period"
            );
        }
        self.lan.shutdown().await;
        tracing::info!("agent stopped");
    }
}

/// The agent's watches: started once its HTTP API listens, replaced at each reload,
/// stopped with the listeners at shutdown.
struct Watches {
    /// The agent's HTTP API, which watches ask; `None` when it has none (the config
    /// then has no watches).
    http: Option<SocketAddr>,
    tasks: TaskTracker,
    /// Stops every watch (the listeners' token).
    parent: CancellationToken,
    /// Stops the watches now running.
    running: CancellationToken,
}

impl Watches {
    /// Starts `specs` under the current token.
    fn start(&self, specs: &[WatchSpec]) {
        match self.http {
            Some(http) => {
                crate::watch::agent::start(specs, http, &self.tasks, self.running.clone());
            }
            None if !specs.is_empty() => {
                tracing::error!("watch plans require an HTTP or HTTPS endpoint: watches not run");
            }
            None => {}
        }
    }

    /// Stops the running watches (a handler still running is killed) and starts `specs`.
    fn restart(&mut self, specs: &[WatchSpec]) {
        self.running.cancel();
        self.running = self.parent.child_token();
        self.start(specs);
    }
}

/// What a reload acts on.
struct Reloaded {
    node_id: String,
    advertise: IpAddr,
    lan: Lan,
    watches: Watches,
}

/// Re-reads the configuration and applies what can change at run time: the services
/// and checks of the config files, the watches (all restarted, as Consul does) and the
/// log level.
/// Other changed keys are named in a warning: they take effect at the next start.
fn reload(running: &AgentConfig, target: &mut Reloaded) -> Result<(), String> {
    let Reloaded {
        node_id,
        advertise,
        lan,
        watches,
    } = target;
    let (node_id, advertise) = (node_id.as_str(), *advertise);
    let config = AgentConfig::load(running.sources.clone()).map_err(|e| e.to_string())?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    lan.local()
        .replace_config(config.services.clone(), config.checks.clone())
        .map_err(|e| e.to_string())?;
    watches.restart(&config.watches);
    // The log level applies at once, as in Consul.
    running.log.set(config.log.get());
    let before = debug_config(running, node_id, advertise);
    let after = debug_config(&config, node_id, advertise);
    if let (Some(before), Some(after)) = (before.as_object(), after.as_object()) {
        let changed: Vec<&str> = after
            .iter()
            .filter(|(k, _)| k.as_str() != "LogLevel")
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, _)| k.as_str())
            .collect();
        if !changed.is_empty() {
            tracing::warn!(
                keys = %changed.join(", "),
                "configuration changes that need a restart were not applied"
            );
        }
    }
    tracing::info!("configuration reloaded");
    Ok(())
}

async fn serve_reloads(
    mut requests: mpsc::Receiver<api::ReloadRequest>,
    running: AgentConfig,
    mut target: Reloaded,
    shutdown: CancellationToken,
) {
    loop {
        let reply = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = requests.recv() => match r {
                Some(r) => r,
                None => return,
            },
        };
        let result = reload(&running, &mut target);
        if let Err(e) = &result {
            tracing::warn!(error = %e, "configuration reload failed");
        }
        let _ = reply.send(result);
    }
}

impl Drop for Agent {
    /// Stops the agent's own tasks if it was dropped without [`Agent::shutdown`] (which
    /// also leaves and stops Raft in order).
    fn drop(&mut self) {
        self.life.front.cancel();
        self.life.core.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges() {
        assert!(is_private("10.1.2.3".parse().unwrap()));
        assert!(is_private("172.16.0.1".parse().unwrap()));
        assert!(!is_private("172.32.0.1".parse().unwrap()));
        assert!(is_private("192.168.1.1".parse().unwrap()));
        assert!(is_private("100.64.0.1".parse().unwrap()));
        assert!(!is_private("192.0.2.2".parse().unwrap()));
        assert!(!is_private("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_specific_bind_address_is_used_as_is() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(resolve_bind(ip).unwrap(), ip);
    }
}
