//! Configuration: Consul's config files, JSON or HCL, read as written ([`raw`]; HCL is
//! first turned into the JSON the same file would be, by [`hcl`]), layered in
//! Consul's order (defaults or the `-dev` preset, then `-config-dir` files in lexical
//! order and `-config-file`s, then flags, then `-hcl` fragments), checked, and turned
//! into the typed [`AgentConfig`] the agent runs with.
//!
//! Every problem names its source and key, and the line where the format tells it
//! (`web.json: services[0].port: must be a port number`, `web.hcl:4: ports.htpp: unknown
//! field`), and all problems are reported at once.
//!
//! # Layout
//!
//! Reading is shared: `source` finds and parses the sources into layers, `problem`
//! says what is wrong and where, `value` reads the value types every area uses. Each
//! area of the configuration then has a file of its own that checks what one source sets
//! (`check_*`, blaming that source) and builds its part of [`AgentConfig`] from the
//! merged layers:
//!
//! | file | keys |
//! |---|---|
//! | `node.rs` | datacenter, node name/ID/meta, server role and bootstrap, data dir |
//! | `logging.rs` | `log_level`, `log_json`, `log_file` and its rotation |
//! | `network.rs` | addresses and `ports` |
//! | `membership.rs` | `encrypt`, joining and retrying, `reconnect_timeout` |
//! | `limits.rs` | `limits` |
//! | `dns.rs` | `domain`, `recursors`, `dns_config` |
//! | `tls.rs` | `tls` and the top-level TLS keys, for internal RPC and HTTPS |
//! | `kv_replication.rs` | `kv_replication` |
//! | `acl.rs` | `acl` |
//! | `telemetry.rs` | `telemetry` |
//! | `autopilot.rs` | `autopilot` |
//! | `ui.rs` | `ui_config`, `ui`, `ui_content_path` |
//! | `definitions.rs` | `service[s]`, `check[s]`, `watches` |
//!
//! A new area is a new file with its `check_*` function called from `check_layer`'s
//! list, a builder called from [`AgentConfig::from_layers`], and a field of
//! [`AgentConfig`]; its raw keys go in [`raw`].

mod acl;
mod autopilot;
mod definitions;
mod dns;
pub mod hcl;
mod kv_replication;
mod limits;
mod logging;
mod membership;
mod network;
mod node;
mod problem;
pub mod raw;
mod source;
mod telemetry;
mod tls;
mod ui;
mod value;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use api::dns::DnsConfig;
use catalog::Datacenter;
use catalog::Service;
use gossip::keyring::Key;
use lan::CheckDefinition;
use raw::RawConfig;

pub use self::hcl::Lines;
pub use self::membership::MIN_RECONNECT_TIMEOUT;
pub use self::network::{Addresses, Ports};
pub use self::node::hostname;
pub use self::problem::{Origin, Problem, Problems};
pub use self::source::{
    Format, Layer, Loaded, Sources, dir_files, load_layers, parse, parse_layer, read_file,
    skipped_warning,
};
pub use self::tls::{HttpsSettings, TlsSettings};
use crate::watch::agent::WatchSpec;
pub use catalog::uuid::new_uuid;
use definitions::Definitions;
use node::Role;
use problem::problem;
use value::{checked_duration, per_client};

/// Everything an agent runs with, checked and typed.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node name.
    pub node_name: String,
    /// Node UUID; `None` means "generate one (and persist it unless `-dev`)".
    pub node_id: Option<String>,
    /// Datacenter.
    pub datacenter: Datacenter,
    /// Runs as a server (`server`); otherwise a client agent, which needs a server of
    /// its datacenter to join.
    pub server: bool,
    /// Elects itself leader without waiting for other servers (`bootstrap`, or
    /// `bootstrap_expect` of 1).
    pub bootstrap: bool,
    /// `bootstrap_expect` as given.
    pub bootstrap_expect: u32,
    /// `-dev`.
    pub dev: bool,
    /// Bind address as given (`0.0.0.0` means "the single private IPv4").
    pub bind_addr: IpAddr,
    /// Advertise address, if given.
    pub advertise_addr: Option<IpAddr>,
    /// WAN advertise address, if given.
    pub advertise_addr_wan: Option<IpAddr>,
    /// Addresses HTTP, HTTPS and DNS listen on (`client_addr`).
    pub client_addrs: Vec<IpAddr>,
    /// Where each of them listens (`addresses`, else `client_addr`).
    pub addresses: Addresses,
    /// Data directory (`None` only with `-dev`).
    pub data_dir: Option<PathBuf>,
    /// Log level (`trace`, `debug`, `info`, `warn`, `error`) as given.
    pub log_level: String,
    /// The same, as the setting the log layer reads: the binary hands this handle to
    /// [`crate::logging::install`], and a reload sets it to the new `log_level` (each
    /// load makes a new handle; the running agent's is the one that counts).
    pub log: crate::logging::OutputLevel,
    /// Log lines as JSON objects instead of text (`log_json`).
    pub log_json: bool,
    /// The log file and its rotation (`log_file`), if any.
    pub log_file: Option<crate::logging::LogFileConfig>,
    /// Where the agent's log is fanned out to `/v1/agent/monitor` readers. Not a config
    /// key: the binary installs a log layer that feeds it (see [`crate::logging`]); a
    /// program embedding the agent may do the same, or leave it unfed.
    pub monitor: api::monitor::Monitor,
    /// Ports.
    pub ports: Ports,
    /// User node metadata.
    pub node_meta: BTreeMap<String, String>,
    /// Script checks allowed from the API and config files.
    pub enable_script_checks: bool,
    /// Script checks allowed from config files only.
    pub enable_local_script_checks: bool,
    /// DNS settings.
    pub dns: DnsConfig,
    /// Bounds of the HTTP server (`limits`).
    pub http_limits: api::http::HttpLimits,
    /// Reads in flight to each other datacenter at most, from this agent (Consul has no
    /// such setting: not read from config files; a program embedding the agent may
    /// change it).
    pub remote_read_caps: gateway::Caps,
    /// Keys this datacenter copies from another one (`kv_replication`, servers only).
    pub kv_replication: Option<std::sync::Arc<catalog::KvReplication>>,
    /// The web UI (`ui_config`).
    pub ui: api::http::UiConfig,
    /// ACL settings (`acl`); `None` when ACLs are off.
    pub acl: Option<std::sync::Arc<lan::AclConfig>>,
    /// Metrics settings (`telemetry`).
    pub telemetry: api::telemetry::TelemetryConfig,
    /// Autopilot's settings until the datacenter has its own (`autopilot`).
    pub autopilot: catalog::AutopilotConfig,
    /// Server port connections open at once from one IP address
    /// (`limits.rpc_max_conns_per_client`; `usize::MAX` for no limit).
    pub rpc_max_conns_per_client: usize,
    /// Services from config files, with their checks.
    pub services: Vec<(Service, Vec<CheckDefinition>)>,
    /// Node-level checks from config files.
    pub checks: Vec<CheckDefinition>,
    /// Watches from config files (`watches`), run against the agent's own HTTP API.
    pub watches: Vec<WatchSpec>,
    /// The gossip key from `encrypt`, if given.
    pub encrypt: Option<Key>,
    /// Refuse plaintext gossip once encryption is on.
    pub encrypt_verify_incoming: bool,
    /// Send encrypted gossip once encryption is on.
    pub encrypt_verify_outgoing: bool,
    /// Keep installed keys in memory only (no `serf/local.keyring`).
    pub disable_keyring_file: bool,
    /// Agents to join at start (`start_join`, `-join`); failing to join any is fatal.
    pub start_join: Vec<String>,
    /// Agents to join at start, trying again until one answers (`retry_join`).
    pub retry_join: Vec<String>,
    /// Time between `retry_join` attempts.
    pub retry_interval: Duration,
    /// Most `retry_join` attempts before the agent gives up and exits (0 = no limit).
    pub retry_max: u32,
    /// Servers of other datacenters to WAN-join at start (`start_join_wan`,
    /// `-join-wan`); failing to join any is fatal.
    pub start_join_wan: Vec<String>,
    /// Servers to WAN-join, trying again until one answers (`retry_join_wan`).
    pub retry_join_wan: Vec<String>,
    /// Time between `retry_join_wan` attempts.
    pub retry_interval_wan: Duration,
    /// Most `retry_join_wan` attempts before the agent exits (0 = no limit).
    pub retry_max_wan: u32,
    /// How long a failed member is kept before it is forgotten and deregistered.
    pub reconnect_timeout: Duration,
    /// Raft log entries after which a server takes a snapshot and drops the log before
    /// it (`raft_snapshot_threshold`).
    pub raft_snapshot_threshold: u64,
    /// Leave the pool on SIGTERM (Consul's default: clients do, servers do not).
    pub leave_on_terminate: bool,
    /// Do not leave the pool on SIGINT (Consul's default: servers do not, clients do).
    pub skip_leave_on_interrupt: bool,
    /// LAN gossip timers: memberlist's LAN defaults, or shorter ones with `-dev`.
    pub gossip_lan: gossip::swim::Config,
    /// WAN gossip timers: memberlist's WAN defaults, or the short local ones with `-dev`.
    pub gossip_wan: gossip::swim::Config,
    /// TLS for internal RPC (the server port), when `ca_file` is set.
    pub tls: Option<TlsSettings>,
    /// TLS of the HTTPS API, when `ports.https` is on.
    pub https: Option<HttpsSettings>,
    /// The LAN gossip port other agents are told to use, when traffic reaches this agent
    /// through a port mapping or a proxy. Not a Consul config key: set by embedding
    /// programs (and the fault tests); `None` advertises the bound port.
    pub serf_lan_advertise_port: Option<u16>,
    /// The same for the WAN port (QUIC) of a server.
    pub serf_wan_advertise_port: Option<u16>,
    /// Time between full anti-entropy passes before the spread for the pool's size. Not
    /// a key users set (Consul keeps `ae_interval` out of user config): one minute, set
    /// shorter by embedding programs and tests that wait for a full pass.
    pub ae_interval: Duration,
    /// The sources, for a reload.
    pub sources: Sources,
    /// Warnings from reading the sources (Consul's text), for the agent to log.
    pub warnings: Vec<String>,
}

/// Checks the values one source sets, blaming that source; returns its definitions.
/// The areas are checked in this order, which is the order their problems are listed in.
fn check_layer(layer: &Layer, problems: &mut Vec<Problem>) -> Definitions {
    let o = Some(&layer.origin);
    let r = &layer.raw;
    node::check_identity(o, r, problems);
    network::check_addresses(o, r, problems);
    logging::check_layer(o, r, problems);
    dns::check_domain(o, r, problems);
    network::check_ports(o, r, problems);
    dns::check_recursors(o, r, problems);
    membership::check_layer(o, r, problems);
    limits::check_layer(o, r, problems);
    dns::check_dns_config(o, r, problems);
    definitions::of_layer(o, r, problems)
}

/// Checks every layer on its own, blaming it (and the line, where its format tells it),
/// and merges them in order; fails with every problem found.
fn check_and_merge(layers: &[Layer]) -> Result<(RawConfig, Definitions), Problems> {
    let mut problems = Vec::new();
    let mut definitions = Definitions::default();
    let mut merged = RawConfig::default();
    for layer in layers {
        let first = problems.len();
        let found = check_layer(layer, &mut problems);
        for p in &mut problems[first..] {
            if p.line.is_none() {
                p.line = layer.lines.find(&p.key);
            }
        }
        definitions.services.extend(found.services);
        definitions.checks.extend(found.checks);
        definitions.watches.extend(found.watches);
        definitions.warnings.extend(found.warnings);
        merged.merge(layer.raw.clone());
    }
    if problems.is_empty() {
        Ok((merged, definitions))
    } else {
        Err(Problems(problems))
    }
}

impl AgentConfig {
    /// Merges and checks the layers: each layer on its own first (every problem there is
    /// reported, with its source), then the merged result as a whole.
    pub fn from_layers(layers: &[Layer], sources: Sources) -> Result<AgentConfig, Problems> {
        let (m, definitions) = check_and_merge(layers)?;
        let mut problems = Vec::new();
        let role = node::role(&m, sources.dev, &mut problems);
        node::check_storage(&m, sources.dev, &mut problems);
        let kv_replication = kv_replication::settings(&m, role.server, &mut problems);
        let acl = acl::settings(&m, sources.dev, &mut problems);
        let telemetry = telemetry::settings(&m, &mut problems);
        let autopilot = autopilot::settings(&m, &mut problems);
        let ui = ui::settings(&m, sources.dev, &mut problems);
        let enable_script_checks = m.enable_script_checks.unwrap_or(false);
        let enable_local_script_checks = m.enable_local_script_checks.unwrap_or(false);
        definitions::check(
            &definitions,
            enable_script_checks || enable_local_script_checks,
            &mut problems,
        );
        let ports = network::ports(&m);
        let tls = tls::settings(&m, role.server, ports.https.is_some(), &mut problems);
        let https = tls::https(&m, ports.https.is_some(), &mut problems);
        if !definitions.watches.is_empty() && ports.http.is_none() {
            problems.push(problem(
                None,
                "watches",
                "watch plans require an HTTP or HTTPS endpoint (ports.http is -1)",
            ));
        }
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        let limits = m.limits.clone().unwrap_or_default();
        let Role {
            server,
            bootstrap,
            bootstrap_expect,
        } = role;
        Ok(AgentConfig {
            node_name: m.node_name.clone().unwrap_or_else(hostname),
            node_id: m.node_id.clone().map(|s| s.to_ascii_lowercase()),
            datacenter: Datacenter::new(
                &m.datacenter
                    .as_deref()
                    .unwrap_or("dc1")
                    .to_ascii_lowercase(),
            )
            .expect("checked per layer"),
            server,
            bootstrap,
            bootstrap_expect,
            dev: sources.dev,
            bind_addr: m
                .bind_addr
                .as_deref()
                .and_then(|s| s.parse().ok())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            advertise_addr: m.advertise_addr.as_deref().and_then(|s| s.parse().ok()),
            advertise_addr_wan: m.advertise_addr_wan.as_deref().and_then(|s| s.parse().ok()),
            client_addrs: network::client_addrs(&m),
            addresses: network::addresses(&m),
            data_dir: m
                .data_dir
                .clone()
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            log_level: m.log_level.clone().unwrap_or_else(|| "info".into()),
            log: crate::logging::OutputLevel::new(logging::level(&m)),
            log_json: m.log_json.unwrap_or(false),
            log_file: logging::file(&m),
            monitor: api::monitor::Monitor::default(),
            ports,
            node_meta: m.node_meta.clone().unwrap_or_default(),
            enable_script_checks,
            enable_local_script_checks,
            dns: dns::dns_config(&m, &limits),
            http_limits: limits::http_limits(&limits),
            remote_read_caps: gateway::Caps::default(),
            kv_replication,
            acl,
            telemetry,
            autopilot,
            ui,
            rpc_max_conns_per_client: per_client(
                limits.rpc_max_conns_per_client,
                lan::DEFAULT_RPC_MAX_CONNS_PER_CLIENT,
            ),
            services: definitions.services,
            checks: definitions.checks,
            encrypt: m.encrypt.as_deref().and_then(|k| Key::parse(k).ok()),
            encrypt_verify_incoming: m.encrypt_verify_incoming.unwrap_or(true),
            encrypt_verify_outgoing: m.encrypt_verify_outgoing.unwrap_or(true),
            disable_keyring_file: m.disable_keyring_file.unwrap_or(false) || sources.dev,
            start_join: m.start_join.clone().unwrap_or_default(),
            retry_join: m.retry_join.clone().unwrap_or_default(),
            retry_interval: checked_duration(&m.retry_interval).unwrap_or(Duration::from_secs(30)),
            retry_max: m.retry_max.unwrap_or(0),
            start_join_wan: m.start_join_wan.clone().unwrap_or_default(),
            retry_join_wan: m.retry_join_wan.clone().unwrap_or_default(),
            retry_interval_wan: checked_duration(&m.retry_interval_wan)
                .unwrap_or(Duration::from_secs(30)),
            retry_max_wan: m.retry_max_wan.unwrap_or(0),
            reconnect_timeout: checked_duration(&m.reconnect_timeout)
                .unwrap_or(Duration::from_secs(72 * 3600)),
            raft_snapshot_threshold: m.raft_snapshot_threshold.unwrap_or(lan::SNAPSHOT_THRESHOLD),
            leave_on_terminate: m.leave_on_terminate.unwrap_or(!server),
            skip_leave_on_interrupt: m.skip_leave_on_interrupt.unwrap_or(server),
            tls,
            https,
            serf_lan_advertise_port: None,
            serf_wan_advertise_port: None,
            ae_interval: lan::SYNC_INTERVAL,
            gossip_lan: if sources.dev {
                gossip::swim::Config::local()
            } else {
                gossip::swim::Config::lan()
            },
            gossip_wan: if sources.dev {
                gossip::swim::Config::local()
            } else {
                gossip::swim::Config::wan()
            },
            watches: definitions.watches,
            warnings: node::bootstrap_warnings(server, sources.dev, bootstrap, bootstrap_expect)
                .into_iter()
                .chain(definitions.warnings)
                .collect(),
            sources,
        })
    }

    /// Loads and checks the configuration from its sources.
    pub fn load(sources: Sources) -> Result<AgentConfig, Problems> {
        let loaded = load_layers(&sources)?;
        let mut config = AgentConfig::from_layers(&loaded.layers, sources)?;
        let mut warnings = loaded.warnings;
        warnings.append(&mut config.warnings);
        config.warnings = warnings;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
