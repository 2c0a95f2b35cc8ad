//! Configuration: Consul's config files, JSON or HCL, read as written ([`raw`]; HCL is
//! first turned into the JSON the same file would be, by [`hcl`]), layered in
//! Consul's order (defaults or the `-dev` preset, then `-config-dir` files in lexical
//! order and `-config-file`s, then flags, then `-hcl` fragments), checked, and turned
//! into the typed [`AgentConfig`] the agent runs with.
//!
//! Every problem names its source and key, and the line where the format tells it
//! (`web.json: services[0].port: must be a port number`, `web.hcl:4: ports.htpp: unknown
//! field`), and all problems are reported at once.

pub mod hcl;
pub mod raw;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::hcl::Lines;
use api::definition::{self, Style};
use api::dns::Name;
use api::dns::{DnsConfig, RecursorStrategy, Soa};
use catalog::Datacenter;
use catalog::Service;
use gossip::keyring::Key;
use lan::CheckDefinition;
use raw::RawConfig;

use crate::watch::agent::WatchSpec;

/// Where a layer of configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file.
    File(PathBuf),
    /// Command-line flags.
    Flags,
    /// The `-dev` preset or built-in defaults.
    Defaults,
    /// The n-th `-hcl` flag (from 0).
    Fragment(usize),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Flags => f.write_str("command line"),
            Origin::Defaults => f.write_str("defaults"),
            Origin::Fragment(i) => write!(f, "-hcl flag {}", i + 1),
        }
    }
}

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The source, when one source is to blame.
    pub origin: Option<Origin>,
    /// The key (`ports.http`, `services[0].checks[1].interval`).
    pub key: String,
    /// The line of the key (or of the syntax error) in the source, when its format tells
    /// it (HCL).
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = self.line.map(|l| format!(":{l}")).unwrap_or_default();
        match &self.origin {
            Some(origin) if !self.key.is_empty() => {
                write!(f, "{origin}{line}: {}: {}", self.key, self.message)
            }
            Some(origin) => write!(f, "{origin}{line}: {}", self.message),
            None if !self.key.is_empty() => write!(f, "{}: {}", self.key, self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// All problems found, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// A parsed source.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Where it came from.
    pub origin: Origin,
    /// What it says.
    pub raw: RawConfig,
    /// The line of each key, for sources whose format tells it (HCL).
    pub lines: Lines,
}

impl Layer {
    /// A layer without line information.
    pub fn new(origin: Origin, raw: RawConfig) -> Layer {
        Layer {
            origin,
            raw,
            lines: Lines::default(),
        }
    }
}

/// A config file format. Consul's rule: a file's extension tells it (`.json`, `.hcl`),
/// unless `-config-format` names one for every file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// HCL, as Consul reads it ([`hcl`]).
    Hcl,
}

impl Format {
    /// Parses a `-config-format` value, with Consul's error.
    pub fn parse(text: &str) -> Result<Format, String> {
        match text {
            "json" => Ok(Format::Json),
            "hcl" => Ok(Format::Hcl),
            _ => Err("-config-format must be either 'hcl' or 'json'".into()),
        }
    }

    /// The format of the file at `path`: `forced` if given, else by the end of its name
    /// (`.json`, `.hcl`, case-sensitive as in Consul); `None` means Consul skips the
    /// file (see [`skipped_warning`]).
    pub fn of(path: &Path, forced: Option<Format>) -> Option<Format> {
        forced.or_else(|| {
            let name = path.file_name()?.to_str()?;
            if name.ends_with(".json") {
                Some(Format::Json)
            } else if name.ends_with(".hcl") {
                Some(Format::Hcl)
            } else {
                None
            }
        })
    }
}

/// Consul's warning for a config file it does not read (kept verbatim: users and log
/// watchers match on it).
pub fn skipped_warning(path: &Path) -> String {
    format!(
        "skipping file {}, extension must be .hcl or .json, or config format must be set",
        path.display()
    )
}

/// Ports; `None` means disabled (`-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// DNS (8600).
    pub dns: Option<u16>,
    /// HTTP (8500).
    pub http: Option<u16>,
    /// Server RPC (8300).
    pub server: u16,
    /// LAN gossip (8301).
    pub serf_lan: u16,
    /// WAN gossip (8302).
    pub serf_wan: u16,
}

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
    /// Addresses HTTP and DNS listen on.
    pub client_addrs: Vec<IpAddr>,
    /// Data directory (`None` only with `-dev`).
    pub data_dir: Option<PathBuf>,
    /// Log level (`trace`, `debug`, `info`, `warn`, `error`).
    pub log_level: String,
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

/// TLS settings for internal RPC, merged from the top-level keys, `tls.defaults` and
/// `tls.internal_rpc` (the later wins, as in Consul).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The files.
    pub files: wan::tls::TlsFiles,
    /// Servers require callers to present a certificate from the CA.
    pub verify_incoming: bool,
    /// This agent uses TLS (and checks the server's certificate) when it calls a server.
    pub verify_outgoing: bool,
    /// The server's certificate must name `server.<dc>.<domain>`.
    pub verify_server_hostname: bool,
}

/// Consul's warnings about the number of servers a datacenter bootstraps with (its
/// texts, which operators know): two servers tolerate no failure, and an even number
/// tolerates no more than one server fewer would.
fn bootstrap_warnings(server: bool, dev: bool, bootstrap: bool, expect: u32) -> Vec<String> {
    const TABLE: &str = "See https://www.consul.io/docs/internals/consensus.html#deployment-table";
    let mut warnings = Vec::new();
    if !server || dev || bootstrap {
        return warnings;
    }
    if expect > 1 {
        warnings.push(format!("bootstrap_expect > 0: expecting {expect} servers"));
    }
    if expect == 2 {
        warnings.push(format!(
            "bootstrap_expect = 2: A cluster with 2 servers will provide no failure tolerance. {TABLE}"
        ));
    } else if expect > 2 && expect.is_multiple_of(2) {
        warnings.push(format!(
            "bootstrap_expect is even number: A cluster with an even number of servers does not achieve optimum fault tolerance. {TABLE}"
        ));
    }
    warnings
}

/// The shortest `reconnect_timeout` Consul accepts.
pub const MIN_RECONNECT_TIMEOUT: Duration = Duration::from_secs(8 * 3600);

/// Where the configuration is read from, kept for reloads.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `-dev`.
    pub dev: bool,
    /// `-config-dir`s.
    pub dirs: Vec<PathBuf>,
    /// `-config-file`s.
    pub files: Vec<PathBuf>,
    /// Command-line flags as a layer.
    pub flags: RawConfig,
    /// `-config-format`: the format of every file, whatever its extension.
    pub format: Option<Format>,
    /// `-hcl` fragments, applied after the flags (as Consul does).
    pub hcl: Vec<String>,
}

fn problem(origin: Option<&Origin>, key: &str, message: impl Into<String>) -> Problem {
    Problem {
        origin: origin.cloned(),
        key: key.to_owned(),
        line: None,
        message: message.into(),
    }
}

/// Reads one config file in `format`.
pub fn read_file(path: &Path, format: Format) -> Result<Layer, Problem> {
    let origin = Origin::File(path.to_owned());
    let text = std::fs::read_to_string(path)
        .map_err(|e| problem(Some(&origin), "", format!("cannot read: {e}")))?;
    parse(origin, &text, format)
}

/// Parses one source in `format`, naming the key (and, for HCL, the line) of the first
/// problem.
pub fn parse(origin: Origin, text: &str, format: Format) -> Result<Layer, Problem> {
    match format {
        Format::Json => parse_layer(origin, text),
        Format::Hcl => {
            let (value, lines) = self::hcl::to_json(text).map_err(|e| Problem {
                origin: Some(origin.clone()),
                key: e.key,
                line: e.line,
                message: e.message,
            })?;
            let raw = deserialize(value, &origin, &lines)?;
            Ok(Layer { origin, raw, lines })
        }
    }
}

/// Parses one JSON source, naming the key of the first problem.
pub fn parse_layer(origin: Origin, text: &str) -> Result<Layer, Problem> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let lines = Lines::default();
    let raw = deserialize(de, &origin, &lines)?;
    Ok(Layer { origin, raw, lines })
}

/// The one typed path every format takes into [`RawConfig`].
fn deserialize<'de, D>(de: D, origin: &Origin, lines: &Lines) -> Result<RawConfig, Problem>
where
    D: serde::Deserializer<'de>,
    D::Error: fmt::Display,
{
    serde_path_to_error::deserialize::<_, RawConfig>(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        let mut p = problem(Some(origin), &key, e.into_inner().to_string());
        p.line = lines.find(&key);
        p
    })
}

/// The files of a config directory in lexical order (not recursive), each with its
/// format; `None` for a file Consul skips with [`skipped_warning`].
pub fn dir_files(
    dir: &Path,
    forced: Option<Format>,
) -> Result<Vec<(PathBuf, Option<Format>)>, Problem> {
    let origin = Origin::File(dir.to_owned());
    let entries = std::fs::read_dir(dir)
        .map_err(|e| problem(Some(&origin), "", format!("cannot read directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files
        .into_iter()
        .map(|p| {
            let format = Format::of(&p, forced);
            (p, format)
        })
        .collect())
}

/// The `-dev` preset.
fn dev_layer() -> RawConfig {
    RawConfig {
        server: Some(true),
        bootstrap: Some(true),
        bind_addr: Some("127.0.0.1".into()),
        client_addr: Some("127.0.0.1".into()),
        log_level: Some("debug".into()),
        ..RawConfig::default()
    }
}

/// The sources read: their layers in Consul's order, and what was passed over.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The layers.
    pub layers: Vec<Layer>,
    /// Warnings for the operator (Consul's text), such as files skipped for their
    /// extension.
    pub warnings: Vec<String>,
}

/// Reads every source in Consul's order.
pub fn load_layers(sources: &Sources) -> Result<Loaded, Problems> {
    let mut layers = Vec::new();
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    if sources.dev {
        layers.push(Layer::new(Origin::Defaults, dev_layer()));
    }
    let mut paths = Vec::new();
    for dir in &sources.dirs {
        match dir_files(dir, sources.format) {
            Ok(files) => paths.extend(files),
            Err(p) => problems.push(p),
        }
    }
    paths.extend(
        sources
            .files
            .iter()
            .map(|f| (f.clone(), Format::of(f, sources.format))),
    );
    for (path, format) in paths {
        let Some(format) = format else {
            warnings.push(skipped_warning(&path));
            continue;
        };
        match read_file(&path, format) {
            Ok(layer) => layers.push(layer),
            Err(p) => problems.push(p),
        }
    }
    layers.push(Layer::new(Origin::Flags, sources.flags.clone()));
    for (i, text) in sources.hcl.iter().enumerate() {
        match parse(Origin::Fragment(i), text, Format::Hcl) {
            Ok(layer) => layers.push(layer),
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() {
        Ok(Loaded { layers, warnings })
    } else {
        Err(Problems(problems))
    }
}

fn port(
    origin: Option<&Origin>,
    key: &str,
    value: Option<i64>,
    default: u16,
    problems: &mut Vec<Problem>,
) -> Option<u16> {
    match value {
        None => Some(default),
        Some(-1) => None,
        Some(p) => match u16::try_from(p) {
            Ok(p) => Some(p),
            Err(_) => {
                problems.push(problem(
                    origin,
                    key,
                    "must be a port number (0-65535), or -1 to disable",
                ));
                Some(default)
            }
        },
    }
}

fn duration(
    origin: Option<&Origin>,
    key: &str,
    value: &Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<Duration> {
    let text = value.as_ref()?;
    match catalog::duration::parse(text) {
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(problem(origin, key, e.to_string()));
            None
        }
    }
}

fn ip(
    origin: Option<&Origin>,
    key: &str,
    value: &Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<IpAddr> {
    let text = value.as_ref()?;
    match text.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            problems.push(problem(
                origin,
                key,
                format!("{text:?} is not an IP address (go-sockaddr templates are not supported)"),
            ));
            None
        }
    }
}

fn recursor(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    text.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 53))
}

/// A node name Consul accepts: not empty, no whitespace or quotes.
fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("node name must not be empty".into());
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'')
    {
        return Err(format!(
            "node name {name:?} must not contain whitespace or quotes"
        ));
    }
    Ok(())
}

/// Checks the values one source sets, blaming that source; returns its definitions.
fn check_layer(layer: &Layer, problems: &mut Vec<Problem>) -> Definitions {
    let o = Some(&layer.origin);
    let r = &layer.raw;
    for (key, why) in r.unsupported_keys() {
        problems.push(problem(o, key, format!("not supported: {why}")));
    }
    if let Some(dc) = &r.datacenter
        && let Err(e) = Datacenter::new(&dc.to_ascii_lowercase())
    {
        problems.push(problem(o, "datacenter", e.to_string()));
    }
    if let Some(name) = &r.node_name
        && let Err(e) = check_node_name(name)
    {
        problems.push(problem(o, "node_name", e));
    }
    if let Some(meta) = &r.node_meta
        && let Err(e) = catalog::validate_meta(meta)
    {
        problems.push(problem(o, "node_meta", e));
    }
    if let Some(id) = &r.node_id
        && !is_uuid(id)
    {
        problems.push(problem(o, "node_id", format!("{id:?} is not a UUID")));
    }
    ip(o, "bind_addr", &r.bind_addr, problems);
    ip(o, "advertise_addr", &r.advertise_addr, problems);
    ip(o, "advertise_addr_wan", &r.advertise_addr_wan, problems);
    if let Some(c) = &r.client_addr {
        for part in c.split_whitespace() {
            ip(o, "client_addr", &Some(part.to_owned()), problems);
        }
    }
    if let Some(level) = &r.log_level
        && log_filter(level).is_none()
    {
        problems.push(problem(
            o,
            "log_level",
            format!("{level:?} is not one of trace, debug, info, warn, error"),
        ));
    }
    if let Some(domain) = &r.domain
        && Name::from_ascii(domain).is_err()
    {
        problems.push(problem(
            o,
            "domain",
            format!("{domain:?} is not a valid domain name"),
        ));
    }
    if let Some(p) = &r.ports {
        port(o, "ports.dns", p.dns, 8600, problems);
        port(o, "ports.http", p.http, 8500, problems);
        port(o, "ports.server", p.server, 8300, problems);
        port(o, "ports.serf_lan", p.serf_lan, 8301, problems);
        port(o, "ports.serf_wan", p.serf_wan, 8302, problems);
        for (key, value) in [
            ("ports.https", p.https),
            ("ports.grpc", p.grpc),
            ("ports.grpc_tls", p.grpc_tls),
        ] {
            if value.is_some_and(|v| v > 0) {
                problems.push(problem(
                    o,
                    key,
                    "not supported: proconsul serves only plain HTTP and DNS in this version",
                ));
            }
        }
    }
    for (i, r) in r.recursors.iter().flatten().enumerate() {
        if recursor(r).is_none() {
            problems.push(problem(
                o,
                &format!("recursors[{i}]"),
                format!("{r:?} is not an IP address or ip:port"),
            ));
        }
    }
    if let Some(key) = &r.encrypt
        && let Err(e) = Key::parse(key)
    {
        problems.push(problem(
            o,
            "encrypt",
            format!("Failed to configure keyring: {e}"),
        ));
    }
    duration(o, "retry_interval", &r.retry_interval, problems);
    duration(o, "retry_interval_wan", &r.retry_interval_wan, problems);
    if let Some(d) = duration(o, "reconnect_timeout", &r.reconnect_timeout, problems)
        && d < MIN_RECONNECT_TIMEOUT
    {
        problems.push(problem(o, "reconnect_timeout", "must be at least 8h"));
    }
    if let Some(l) = &r.limits {
        for (key, value) in [
            ("limits.http_header_timeout", &l.http_header_timeout),
            ("limits.http_body_timeout", &l.http_body_timeout),
            ("limits.http_write_timeout", &l.http_write_timeout),
        ] {
            if let Some(d) = duration(o, key, value, problems)
                && d < Duration::from_secs(1)
            {
                problems.push(problem(o, key, "must be at least 1s"));
            }
        }
        let range = |key: &str, v: Option<u64>, min: u64, max: u64, problems: &mut Vec<Problem>| {
            if let Some(n) = v
                && !(min..=max).contains(&n)
            {
                problems.push(problem(o, key, format!("must be between {min} and {max}")));
            }
        };
        range(
            "limits.http_max_connections",
            l.http_max_connections,
            1,
            1 << 20,
            problems,
        );
        range(
            "limits.http_max_blocking_queries",
            l.http_max_blocking_queries,
            1,
            1 << 20,
            problems,
        );
        range(
            "limits.http_max_blocking_queries_per_client",
            l.http_max_blocking_queries_per_client,
            0,
            1 << 20,
            problems,
        );
        range(
            "limits.http_max_header_bytes",
            l.http_max_header_bytes,
            8192,
            16 << 20,
            problems,
        );
        range(
            "limits.http_max_body_bytes",
            l.http_max_body_bytes,
            1024,
            1 << 30,
            problems,
        );
        range(
            "limits.dns_udp_max_response_bytes",
            l.dns_udp_max_response_bytes,
            512,
            65467,
            problems,
        );
        range(
            "limits.dns_rate_per_source",
            l.dns_rate_per_source,
            0,
            1 << 24,
            problems,
        );
    }
    if let Some(d) = &r.dns_config {
        duration(o, "dns_config.max_stale", &d.max_stale, problems);
        duration(o, "dns_config.node_ttl", &d.node_ttl, problems);
        duration(
            o,
            "dns_config.recursor_timeout",
            &d.recursor_timeout,
            problems,
        );
        for (name, ttl) in d.service_ttl.iter().flatten() {
            duration(
                o,
                &format!("dns_config.service_ttl.{name}"),
                &Some(ttl.clone()),
                problems,
            );
        }
        if let Some(s) = &d.recursor_strategy
            && s != "sequential"
            && s != "random"
        {
            problems.push(problem(
                o,
                "dns_config.recursor_strategy",
                "must be \"sequential\" or \"random\"",
            ));
        }
        for dc in d
            .failover
            .iter()
            .flat_map(|f| f.datacenters.iter().flatten())
        {
            if let Err(e) = catalog::Datacenter::new(dc) {
                problems.push(problem(o, "dns_config.failover.datacenters", e.to_string()));
            }
        }
        duration(o, "dns_config.cache_max_age", &d.cache_max_age, problems);
    }
    let mut services = Vec::new();
    let mut checks = Vec::new();
    let service_defs = r.service.iter().map(|s| ("service".to_string(), s)).chain(
        r.services
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, s)| (format!("services[{i}]"), s)),
    );
    for (key, s) in service_defs {
        match definition::service(s, Style::Config, &key) {
            Ok(def) => services.push(def),
            Err(e) => problems.push(problem(o, &e.field, e.message)),
        }
    }
    for (key, c) in r.check.iter().map(|c| ("check".to_string(), c)).chain(
        r.checks
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| (format!("checks[{i}]"), c)),
    ) {
        match definition::check(c, Style::Config, &key) {
            Ok(def) => checks.push(def),
            Err(e) => problems.push(problem(o, &e.field, e.message)),
        }
    }
    let mut watches = Vec::new();
    let mut warnings = Vec::new();
    for (i, w) in r.watches.iter().flatten().enumerate() {
        match WatchSpec::parse(w) {
            Ok((spec, warning)) => {
                watches.push(spec);
                warnings.extend(warning.map(str::to_owned));
            }
            Err(e) => problems.push(problem(o, &format!("watches[{i}]"), e)),
        }
    }
    Definitions {
        services,
        checks,
        watches,
        warnings,
    }
}

/// The TLS settings of the merged configuration, or `None` without a `ca_file`.
fn tls_settings(m: &RawConfig, server: bool, problems: &mut Vec<Problem>) -> Option<TlsSettings> {
    let mut block = raw::RawTlsBlock {
        ca_file: m.ca_file.clone(),
        cert_file: m.cert_file.clone(),
        key_file: m.key_file.clone(),
        verify_incoming: m.verify_incoming,
        verify_outgoing: m.verify_outgoing,
        verify_server_hostname: m.verify_server_hostname,
    };
    if let Some(t) = &m.tls {
        if let Some(d) = &t.defaults {
            block.merge(d.clone());
        }
        if let Some(r) = &t.internal_rpc {
            block.merge(r.clone());
        }
    }
    let verify_incoming = block.verify_incoming.unwrap_or(false);
    let verify_outgoing = block.verify_outgoing.unwrap_or(false);
    let verify_server_hostname = block.verify_server_hostname.unwrap_or(false);
    let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let (ca, cert, key) = (
        nonempty(&block.ca_file),
        nonempty(&block.cert_file),
        nonempty(&block.key_file),
    );
    if cert.is_some() != key.is_some() {
        problems.push(problem(
            None,
            "cert_file",
            "cert_file and key_file must be given together",
        ));
    }
    let Some(ca) = ca else {
        if verify_incoming || verify_outgoing || verify_server_hostname {
            problems.push(problem(
                None,
                "ca_file",
                "verify_incoming, verify_outgoing and verify_server_hostname need a ca_file",
            ));
        }
        if cert.is_some() {
            problems.push(problem(None, "ca_file", "cert_file needs a ca_file"));
        }
        return None;
    };
    if server && verify_incoming && cert.is_none() {
        problems.push(problem(
            None,
            "cert_file",
            "a server with verify_incoming needs its own cert_file and key_file",
        ));
    }
    if verify_server_hostname && !verify_outgoing {
        problems.push(problem(
            None,
            "verify_server_hostname",
            "verify_server_hostname needs verify_outgoing",
        ));
    }
    Some(TlsSettings {
        files: wan::tls::TlsFiles {
            ca_file: PathBuf::from(ca),
            cert_file: cert.map(PathBuf::from),
            key_file: key.map(PathBuf::from),
        },
        verify_incoming,
        verify_outgoing,
        verify_server_hostname,
    })
}

/// The tracing filter for a Consul log level, or `None` when the level is unknown.
/// Dependencies log at `warn` (openraft's `info` is per-election chatter) unless the
/// level asks for less.
pub fn log_filter(level: &str) -> Option<String> {
    let ours = match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "err" | "error" => "error",
        _ => return None,
    };
    let deps = if ours == "error" { "error" } else { "warn" };
    Some(format!(
        "{deps},proconsul={ours},proconsul_lan={ours},proconsul_wan={ours},proconsul_gateway={ours},proconsul_api={ours}"
    ))
}

use catalog::uuid::is_uuid;
pub use catalog::uuid::new_uuid;

/// This machine's host name, the default node name.
pub fn hostname() -> String {
    gethostname::gethostname()
        .to_string_lossy()
        .split('.')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("localhost")
        .to_owned()
}

/// The services, with their checks, the node-level checks and the watches of the
/// config files, and warnings about them.
#[derive(Default)]
struct Definitions {
    services: Vec<(Service, Vec<CheckDefinition>)>,
    checks: Vec<CheckDefinition>,
    watches: Vec<WatchSpec>,
    warnings: Vec<String>,
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

/// Whether the agent is a server, and how its datacenter's first leader is elected.
struct Role {
    server: bool,
    bootstrap: bool,
    bootstrap_expect: u32,
}

/// `server`, `bootstrap` and `bootstrap_expect` of the merged layers, checked against
/// each other and `-dev`.
fn role(m: &RawConfig, dev: bool, problems: &mut Vec<Problem>) -> Role {
    let server = m.server.unwrap_or(false);
    let bootstrap_expect = m.bootstrap_expect.unwrap_or(0);
    let bootstrap = m.bootstrap.unwrap_or(false) || bootstrap_expect == 1;
    if m.bootstrap.unwrap_or(false) && bootstrap_expect > 0 {
        problems.push(problem(
            None,
            "bootstrap_expect",
            "bootstrap cannot be combined with bootstrap_expect",
        ));
    }
    if dev && bootstrap_expect > 1 {
        problems.push(problem(
            None,
            "bootstrap_expect",
            "-dev runs a single server: bootstrap_expect cannot be above 1",
        ));
    }
    if !server && (bootstrap || bootstrap_expect > 0) {
        problems.push(problem(
            None,
            "bootstrap_expect",
            "bootstrap and bootstrap_expect are only for servers (add -server)",
        ));
    }
    Role {
        server,
        bootstrap,
        bootstrap_expect,
    }
}

/// Where and how the agent keeps its state: a data dir unless `-dev`, and a usable
/// snapshot threshold.
fn check_storage(m: &RawConfig, dev: bool, problems: &mut Vec<Problem>) {
    if m.raft_snapshot_threshold == Some(0) {
        problems.push(problem(
            None,
            "raft_snapshot_threshold",
            "must be at least 1",
        ));
    }
    if !dev && m.data_dir.as_deref().unwrap_or("").is_empty() {
        problems.push(problem(
            None,
            "data_dir",
            "data_dir cannot be empty (give -data-dir, or use -dev)",
        ));
    }
}

/// The `kv_replication` block, checked: a server's, naming another datacenter and at
/// least one prefix.
fn kv_replication(
    m: &RawConfig,
    server: bool,
    problems: &mut Vec<Problem>,
) -> Option<std::sync::Arc<catalog::KvReplication>> {
    let r = m.kv_replication.as_ref()?;
    let mut fail = |key: &str, what: String| {
        problems.push(problem(None, &format!("kv_replication.{key}"), &what));
        None
    };
    if !server {
        return fail(
            "source_datacenter",
            "KV replication runs on servers; a client agent's writes go to its servers, which refuse writes to the copied keys".into(),
        );
    }
    let source = r.source_datacenter.clone().unwrap_or_default();
    if let Err(e) = Datacenter::new(&source) {
        return fail("source_datacenter", e.to_string());
    }
    let own = m
        .datacenter
        .as_deref()
        .unwrap_or("dc1")
        .to_ascii_lowercase();
    if source == own {
        return fail(
            "source_datacenter",
            format!("must be another datacenter than this one ({own})"),
        );
    }
    let prefixes = r.prefixes.clone().unwrap_or_default();
    if prefixes.is_empty() {
        return fail("prefixes", "name at least one prefix to copy".into());
    }
    Some(std::sync::Arc::new(catalog::KvReplication {
        source,
        prefixes,
        exclude: r.exclude.clone().unwrap_or_default(),
    }))
}

/// A duration the layers' checks already parsed, or `None` when not set.
fn checked_duration(value: &Option<String>) -> Option<Duration> {
    value
        .as_deref()
        .and_then(|t| catalog::duration::parse(t).ok())
}

/// A count or size from the config, `default` when not set.
fn size(value: Option<u64>, default: usize) -> usize {
    value.map_or(default, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// A per-client limit: as [`size`], except that 0 means no limit (Consul's rule).
fn per_client(value: Option<u64>, default: usize) -> usize {
    match value {
        Some(0) => usize::MAX,
        v => size(v, default),
    }
}

/// The ports of the merged layers (checked per layer; `-1` disables HTTP and DNS).
fn ports(m: &RawConfig) -> Ports {
    let raw = m.ports.clone().unwrap_or_default();
    let mut ignore = Vec::new();
    Ports {
        dns: port(None, "", raw.dns, 8600, &mut ignore),
        http: port(None, "", raw.http, 8500, &mut ignore),
        server: port(None, "", raw.server, 8300, &mut ignore).unwrap_or(8300),
        serf_lan: port(None, "", raw.serf_lan, 8301, &mut ignore).unwrap_or(8301),
        serf_wan: port(None, "", raw.serf_wan, 8302, &mut ignore).unwrap_or(8302),
    }
}

/// The addresses HTTP and DNS listen on (`client_addr`, space-separated).
fn client_addrs(m: &RawConfig) -> Vec<IpAddr> {
    m.client_addr
        .as_deref()
        .unwrap_or("127.0.0.1")
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The HTTP server's bounds from `limits`.
fn http_limits(limits: &raw::RawLimits) -> api::http::HttpLimits {
    let default = api::http::HttpLimits::default();
    api::http::HttpLimits {
        max_connections: size(limits.http_max_connections, default.max_connections),
        max_conns_per_client: per_client(
            limits.http_max_conns_per_client,
            default.max_conns_per_client,
        ),
        max_header_bytes: size(limits.http_max_header_bytes, default.max_header_bytes),
        max_body_bytes: size(limits.http_max_body_bytes, default.max_body_bytes),
        kv_max_value_size: size(limits.kv_max_value_size, default.kv_max_value_size),
        header_timeout: checked_duration(&limits.http_header_timeout)
            .unwrap_or(default.header_timeout),
        body_timeout: checked_duration(&limits.http_body_timeout).unwrap_or(default.body_timeout),
        write_timeout: checked_duration(&limits.http_write_timeout)
            .unwrap_or(default.write_timeout),
        max_blocking_queries: size(
            limits.http_max_blocking_queries,
            default.max_blocking_queries,
        ),
        max_blocking_queries_per_client: per_client(
            limits.http_max_blocking_queries_per_client,
            default.max_blocking_queries_per_client,
        ),
    }
}

/// The DNS interface's settings: `domain`, `recursors`, `dns_config` and the DNS keys
/// of `limits`.
fn dns_config(m: &RawConfig, limits: &raw::RawLimits) -> DnsConfig {
    let raw = m.dns_config.clone().unwrap_or_default();
    let mut domain = m
        .domain
        .clone()
        .unwrap_or_else(|| "consul".into())
        .to_ascii_lowercase();
    if !domain.ends_with('.') {
        domain.push('.');
    }
    let soa = raw.soa.clone().unwrap_or_default();
    let default_soa = Soa::default();
    DnsConfig {
        udp_max_response: limits
            .dns_udp_max_response_bytes
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or(api::dns::DEFAULT_UDP_MAX_RESPONSE),
        rate_per_source: limits
            .dns_rate_per_source
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        domain: Name::from_ascii(&domain).expect("checked per layer"),
        node_ttl: checked_duration(&raw.node_ttl).unwrap_or(Duration::ZERO),
        service_ttl: raw
            .service_ttl
            .iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), catalog::duration::parse(v).ok()?)))
            .collect(),
        only_passing: raw.only_passing.unwrap_or(false),
        udp_answer_limit: raw.udp_answer_limit.unwrap_or(3).clamp(1, 8) as usize,
        a_record_limit: raw.a_record_limit.unwrap_or(0) as usize,
        enable_additional_node_meta_txt: raw.enable_additional_node_meta_txt.unwrap_or(true),
        recursors: m
            .recursors
            .iter()
            .flatten()
            .filter_map(|r| recursor(r))
            .collect(),
        recursor_strategy: match raw.recursor_strategy.as_deref() {
            Some("random") => RecursorStrategy::Random,
            _ => RecursorStrategy::Sequential,
        },
        recursor_timeout: checked_duration(&raw.recursor_timeout).unwrap_or(Duration::from_secs(2)),
        soa: Soa {
            refresh: soa
                .refresh
                .map(Duration::from_secs)
                .unwrap_or(default_soa.refresh),
            retry: soa
                .retry
                .map(Duration::from_secs)
                .unwrap_or(default_soa.retry),
            expire: soa
                .expire
                .map(Duration::from_secs)
                .unwrap_or(default_soa.expire),
            min_ttl: soa
                .min_ttl
                .map(Duration::from_secs)
                .unwrap_or(default_soa.min_ttl),
        },
        cache: (raw.use_cache == Some(true)).then(|| {
            checked_duration(&raw.cache_max_age)
                .filter(|age| !age.is_zero())
                .unwrap_or(api::dns::DEFAULT_CACHE_MAX_AGE)
        }),
        failover: raw
            .failover
            .as_ref()
            .map(|f| catalog::Failover {
                nearest_n: usize::try_from(f.nearest_n.unwrap_or(0)).unwrap_or(usize::MAX),
                datacenters: f.datacenters.clone().unwrap_or_default(),
            })
            .unwrap_or_default(),
    }
}

/// Checks the config files' services and checks together: script checks need one of
/// the two switches, IDs are unique (without case, as the catalog compares them), and
/// a check's `service_id` names a service the files define.
fn check_definitions(
    definitions: &Definitions,
    scripts_enabled: bool,
    problems: &mut Vec<Problem>,
) {
    let Definitions {
        services, checks, ..
    } = definitions;
    let every_check = || {
        services
            .iter()
            .flat_map(|(_, cs)| cs.iter())
            .chain(checks.iter())
    };
    if !scripts_enabled && every_check().any(|c| matches!(c.kind, lan::CheckKind::Script { .. })) {
        problems.push(problem(None, "enable_script_checks", "script checks are defined but disabled: set enable_script_checks or enable_local_script_checks to true"));
    }
    let mut service_ids = std::collections::BTreeSet::new();
    for (s, _) in services {
        if !service_ids.insert(s.id.to_ascii_lowercase()) {
            problems.push(problem(
                None,
                "services",
                format!("service ID {:?} is defined twice", s.id),
            ));
        }
    }
    let mut check_ids = std::collections::BTreeSet::new();
    for c in every_check() {
        if !check_ids.insert(c.id.to_ascii_lowercase()) {
            problems.push(problem(
                None,
                "checks",
                format!("check ID {:?} is defined twice", c.id),
            ));
        }
    }
    for c in checks {
        if !c.service_id.is_empty() && !service_ids.contains(&c.service_id.to_ascii_lowercase()) {
            problems.push(problem(
                None,
                "checks",
                format!(
                    "check {:?} names service_id {:?}, which no config file defines",
                    c.id, c.service_id
                ),
            ));
        }
    }
}

impl AgentConfig {
    /// Merges and checks the layers: each layer on its own first (every problem there is
    /// reported, with its source), then the merged result as a whole.
    pub fn from_layers(layers: &[Layer], sources: Sources) -> Result<AgentConfig, Problems> {
        let (m, definitions) = check_and_merge(layers)?;
        let mut problems = Vec::new();
        let role = role(&m, sources.dev, &mut problems);
        check_storage(&m, sources.dev, &mut problems);
        let kv_replication = kv_replication(&m, role.server, &mut problems);
        let enable_script_checks = m.enable_script_checks.unwrap_or(false);
        let enable_local_script_checks = m.enable_local_script_checks.unwrap_or(false);
        check_definitions(
            &definitions,
            enable_script_checks || enable_local_script_checks,
            &mut problems,
        );
        let tls = tls_settings(&m, role.server, &mut problems);
        if !definitions.watches.is_empty() && ports(&m).http.is_none() {
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
            client_addrs: client_addrs(&m),
            data_dir: m
                .data_dir
                .clone()
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            log_level: m.log_level.clone().unwrap_or_else(|| "info".into()),
            ports: ports(&m),
            node_meta: m.node_meta.clone().unwrap_or_default(),
            enable_script_checks,
            enable_local_script_checks,
            dns: dns_config(&m, &limits),
            http_limits: http_limits(&limits),
            remote_read_caps: gateway::Caps::default(),
            kv_replication,
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
            warnings: bootstrap_warnings(server, sources.dev, bootstrap, bootstrap_expect)
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
mod tests {
    use super::*;

    fn layer(text: &str) -> Layer {
        parse_layer(Origin::File("t.json".into()), text).unwrap()
    }

    fn dev_sources() -> Sources {
        Sources {
            dev: true,
            ..Sources::default()
        }
    }

    #[test]
    fn unknown_keys_name_the_file_and_key() {
        let e =
            parse_layer(Origin::File("a.json".into()), r#"{"ports": {"htpp": 1}}"#).unwrap_err();
        assert_eq!(e.key, "ports.htpp");
        assert!(e.message.contains("unknown field `htpp`"), "{}", e.message);
        assert!(e.to_string().starts_with("a.json: ports.htpp:"), "{e}");
        let e = parse_layer(Origin::File("a.json".into()), r#"{"datacentre": "x"}"#).unwrap_err();
        assert!(e.message.contains("datacentre"), "{e}");
    }

    #[test]
    fn rpc_max_conns_per_client_defaults_to_consuls_and_zero_means_no_limit() {
        let with = |text: &str| {
            let mut layers = vec![Layer::new(Origin::Defaults, dev_layer())];
            if !text.is_empty() {
                layers.push(layer(text));
            }
            AgentConfig::from_layers(&layers, dev_sources())
                .unwrap()
                .rpc_max_conns_per_client
        };
        assert_eq!(with(""), 100);
        assert_eq!(with(r#"{"limits": {"rpc_max_conns_per_client": 7}}"#), 7);
        assert_eq!(
            with(r#"{"limits": {"rpc_max_conns_per_client": 0}}"#),
            usize::MAX
        );
    }

    #[test]
    fn http_time_limits_and_blocking_query_allowance_are_read_and_checked() {
        let load = |text: &str| {
            let layers = vec![Layer::new(Origin::Defaults, dev_layer()), layer(text)];
            AgentConfig::from_layers(&layers, dev_sources())
        };
        let c = load(r#"{"limits": {}}"#).unwrap().http_limits;
        assert_eq!(c.body_timeout, Duration::from_secs(60));
        assert_eq!(c.write_timeout, Duration::from_secs(30));
        assert_eq!(c.max_blocking_queries, 4096);
        assert_eq!(c.max_blocking_queries_per_client, 200);
        let c = load(
            r#"{"limits": {"http_body_timeout": "5s", "http_write_timeout": "2m",
                "http_max_blocking_queries": 10, "http_max_blocking_queries_per_client": 0}}"#,
        )
        .unwrap()
        .http_limits;
        assert_eq!(c.body_timeout, Duration::from_secs(5));
        assert_eq!(c.write_timeout, Duration::from_secs(120));
        assert_eq!(c.max_blocking_queries, 10);
        assert_eq!(
            c.max_blocking_queries_per_client,
            usize::MAX,
            "0 = no limit"
        );
        let e =
            load(r#"{"limits": {"http_body_timeout": "10ms", "http_max_blocking_queries": 0}}"#)
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("limits.http_body_timeout: must be at least 1s"),
            "{e}"
        );
        assert!(
            e.contains("limits.http_max_blocking_queries: must be between"),
            "{e}"
        );
    }

    #[test]
    fn later_layers_win_and_lists_append() {
        let layers = vec![
            Layer::new(Origin::Defaults, dev_layer()),
            layer(r#"{"datacenter": "east", "service": {"name": "a"}, "recursors": ["1.1.1.1"]}"#),
            layer(
                r#"{"datacenter": "west", "services": [{"name": "b"}], "recursors": ["9.9.9.9:5353"]}"#,
            ),
        ];
        let c = AgentConfig::from_layers(&layers, dev_sources()).unwrap();
        assert_eq!(c.datacenter.as_str(), "west");
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.dns.recursors.len(), 2);
        assert_eq!(c.dns.recursors[0].port(), 53);
    }

    #[test]
    fn all_problems_are_reported_with_their_source() {
        let layers = vec![
            Layer::new(Origin::Defaults, dev_layer()),
            layer(
                r#"{"datacenter": "d c", "ports": {"http": 70000}, "service": {"name": "w", "port": "x"}}"#,
            ),
        ];
        let e = AgentConfig::from_layers(&layers, dev_sources()).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("t.json: datacenter:"), "{text}");
        assert!(text.contains("t.json: ports.http:"), "{text}");
        assert!(text.contains("t.json: service.port:"), "{text}");
    }

    #[test]
    fn unsupported_features_are_named() {
        let layers = vec![
            Layer::new(Origin::Defaults, dev_layer()),
            layer(r#"{"acl": {"enabled": true}}"#),
        ];
        let e = AgentConfig::from_layers(&layers, dev_sources()).unwrap_err();
        assert!(e.to_string().contains("acl: not supported"), "{e}");
    }

    #[test]
    fn gossip_settings_are_read_and_checked() {
        let key = Key::generate().to_base64();
        let text = format!(
            r#"{{"encrypt": "{key}", "encrypt_verify_incoming": false, "retry_join": ["10.0.0.1"], "start_join": ["10.0.0.2:8301"], "retry_interval": "5s", "retry_max": 3}}"#
        );
        let layers = vec![Layer::new(Origin::Defaults, dev_layer()), layer(&text)];
        let c = AgentConfig::from_layers(&layers, dev_sources()).unwrap();
        assert_eq!(c.encrypt.as_ref().map(Key::to_base64), Some(key));
        assert!(!c.encrypt_verify_incoming);
        assert!(c.encrypt_verify_outgoing);
        assert_eq!(c.retry_join, ["10.0.0.1"]);
        assert_eq!(c.start_join, ["10.0.0.2:8301"]);
        assert_eq!(c.retry_interval, Duration::from_secs(5));
        assert_eq!(c.retry_max, 3);
        let layers = vec![
            Layer::new(Origin::Defaults, dev_layer()),
            layer(r#"{"encrypt": "AAAA", "reconnect_timeout": "1h"}"#),
        ];
        let e = AgentConfig::from_layers(&layers, dev_sources()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(
                "encrypt: Failed to configure keyring: key size must be 16, 24 or 32 bytes"
            ),
            "{text}"
        );
        assert!(
            text.contains("reconnect_timeout: must be at least 8h"),
            "{text}"
        );
    }

    #[test]
    fn tls_keys_merge_from_the_old_and_the_new_form() {
        let layers = vec![
            Layer::new(Origin::Defaults, dev_layer()),
            layer(r#"{"ca_file": "/old/ca.pem", "verify_outgoing": true}"#),
            layer(
                r#"{"tls": {"defaults": {"ca_file": "/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem", "verify_incoming": true},
                            "internal_rpc": {"verify_server_hostname": true}}}"#,
            ),
        ];
        let c = AgentConfig::from_layers(&layers, dev_sources()).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.files.ca_file, PathBuf::from("/ca.pem"));
        assert_eq!(tls.files.cert_file, Some(PathBuf::from("/c.pem")));
        assert!(tls.verify_incoming && tls.verify_outgoing && tls.verify_server_hostname);
        let bad = |text: &str| {
            let layers = vec![Layer::new(Origin::Defaults, dev_layer()), layer(text)];
            AgentConfig::from_layers(&layers, dev_sources())
                .unwrap_err()
                .to_string()
        };
        assert!(bad(r#"{"verify_incoming": true}"#).contains("need a ca_file"));
        assert!(bad(r#"{"ca_file": "/ca.pem", "cert_file": "/c.pem"}"#).contains("together"));
        assert!(
            bad(r#"{"ca_file": "/ca.pem", "verify_incoming": true}"#)
                .contains("a server with verify_incoming needs")
        );
        let e =
            parse_layer(Origin::File("t.json".into()), r#"{"tls": {"https": {}}}"#).unwrap_err();
        assert_eq!(e.key, "tls.https");
    }

    #[test]
    fn a_client_agent_needs_a_data_dir_but_no_bootstrap() {
        let c = AgentConfig::from_layers(&[layer(r#"{"data_dir": "/tmp/x"}"#)], Sources::default())
            .unwrap();
        assert!(!c.server);
        let e = AgentConfig::from_layers(
            &[layer(r#"{"data_dir": "/tmp/x", "bootstrap_expect": 1}"#)],
            Sources::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("only for servers"), "{e}");
    }

    #[test]
    fn a_server_needs_a_data_dir_and_may_wait_for_others() {
        let layers = vec![layer(r#"{"server": true}"#)];
        let e = AgentConfig::from_layers(&layers, Sources::default()).unwrap_err();
        assert!(e.to_string().contains("data_dir"), "{e}");
        let layers = vec![layer(
            r#"{"server": true, "bootstrap_expect": 1, "data_dir": "/tmp/x"}"#,
        )];
        let c = AgentConfig::from_layers(&layers, Sources::default()).unwrap();
        assert!(c.bootstrap);
        // Three servers find each other; a server with neither waits to be added.
        let layers = vec![layer(
            r#"{"server": true, "bootstrap_expect": 3, "data_dir": "/tmp/x"}"#,
        )];
        let c = AgentConfig::from_layers(&layers, Sources::default()).unwrap();
        assert!(!c.bootstrap);
        assert_eq!(c.bootstrap_expect, 3);
        assert_eq!(c.warnings, ["bootstrap_expect > 0: expecting 3 servers"]);
        let two = AgentConfig::from_layers(
            &[layer(
                r#"{"server": true, "bootstrap_expect": 2, "data_dir": "/tmp/x"}"#,
            )],
            Sources::default(),
        )
        .unwrap();
        assert!(
            two.warnings[1].starts_with(
                "bootstrap_expect = 2: A cluster with 2 servers will provide no failure tolerance."
            ),
            "{:?}",
            two.warnings
        );
        let four = AgentConfig::from_layers(
            &[layer(
                r#"{"server": true, "bootstrap_expect": 4, "data_dir": "/tmp/x"}"#,
            )],
            Sources::default(),
        )
        .unwrap();
        assert!(four.warnings[1].starts_with("bootstrap_expect is even number"));
        let layers = vec![layer(r#"{"server": true, "data_dir": "/tmp/x"}"#)];
        assert!(AgentConfig::from_layers(&layers, Sources::default()).is_ok());
        let layers = vec![layer(
            r#"{"server": true, "bootstrap": true, "bootstrap_expect": 3, "data_dir": "/tmp/x"}"#,
        )];
        assert!(AgentConfig::from_layers(&layers, Sources::default()).is_err());
    }

    #[test]
    fn script_checks_need_to_be_enabled() {
        let layers = vec![
            Layer::new(Origin::Defaults, dev_layer()),
            layer(r#"{"service": {"name": "w", "check": {"args": ["true"], "interval": "5s"}}}"#),
        ];
        assert!(AgentConfig::from_layers(&layers, dev_sources()).is_err());
    }

    #[test]
    fn check_references_and_duplicate_ids_are_checked() {
        let layers = vec![
            Layer::new(Origin::Defaults, dev_layer()),
            layer(r#"{"check": {"name": "c", "ttl": "10s", "service_id": "nope"}}"#),
        ];
        let e = AgentConfig::from_layers(&layers, dev_sources()).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let layers = vec![
            Layer::new(Origin::Defaults, dev_layer()),
            layer(r#"{"services": [{"name": "Web"}, {"name": "web"}]}"#),
        ];
        assert!(AgentConfig::from_layers(&layers, dev_sources()).is_err());
        let layers = vec![
            Layer::new(Origin::Defaults, dev_layer()),
            layer(
                r#"{"service": {"name": "web", "check": {"id": "c", "ttl": "1s"}}, "check": {"id": "C", "name": "x", "ttl": "1s"}}"#,
            ),
        ];
        assert!(AgentConfig::from_layers(&layers, dev_sources()).is_err());
    }

    #[test]
    fn dns_settings_are_read() {
        let layers = vec![
            Layer::new(Origin::Defaults, dev_layer()),
            layer(
                r#"{"domain": "Example", "dns_config": {"node_ttl": "10s", "service_ttl": {"*": "5s"}, "udp_answer_limit": 20}}"#,
            ),
        ];
        let c = AgentConfig::from_layers(&layers, dev_sources()).unwrap();
        assert_eq!(c.dns.domain.to_string(), "example.");
        assert_eq!(c.dns.node_ttl, Duration::from_secs(10));
        assert_eq!(c.dns.service_ttl["*"], Duration::from_secs(5));
        assert_eq!(c.dns.udp_answer_limit, 8);
    }

    /// One configuration in every shape HCL has (scalars, blocks, repeated blocks, lists
    /// of objects, maps, heredocs, negative numbers), and the same in JSON.
    const EVERY_SHAPE_HCL: &str = r#"
datacenter = "east"
node_name  = "n1"
server     = true
enable_local_script_checks = true
retry_join = ["10.0.0.1", "10.0.0.2:8301"]
encrypt    = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="

ports {
  http  = 8501
  https = -1
}
node_meta = {
  rack = "r1"
  "zone-a" = "z"
}
dns_config {
  node_ttl    = "10s"
  service_ttl = { "*" = "5s", web = "1s" }
  soa { min_ttl = 3 }
}
tls {
  defaults {
    ca_file = "/ca.pem"
  }
}

service {
  name = "web"
  port = 80
  tags = ["rails", "v1"]
  meta { version = "2" }
  weights = { passing = 10, warning = 1 }
  tagged_addresses {
    wan = { address = "203.0.113.5", port = 8080 }
  }
  check {
    http     = "http://localhost:80/health"
    header   = { X-Probe = ["1"] }
    interval = "10s"
  }
}
services {
  id   = "db-1"
  name = "db"
  port = 5432
  checks {
    ttl = "30s"
  }
  checks {
    tcp      = "localhost:5432"
    interval = "5s"
  }
}
services = [
  { name = "cache", port = 6379, checks = [{ ttl = "5s" }] },
]
checks {
  id    = "disk"
  name  = "disk"
  args  = ["/bin/sh", "-c", "df ${HOME}"]
  interval = "1m"
  notes = <<-EOT
    free space
    on /
    EOT
}
"#;

    const EVERY_SHAPE_JSON: &str = r#"{
  "datacenter": "east", "node_name": "n1", "server": true, "enable_local_script_checks": true,
  "retry_join": ["10.0.0.1", "10.0.0.2:8301"],
  "encrypt": "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=",
  "ports": {"http": 8501, "https": -1},
  "node_meta": {"rack": "r1", "zone-a": "z"},
  "dns_config": {"node_ttl": "10s", "service_ttl": {"*": "5s", "web": "1s"}, "soa": {"min_ttl": 3}},
  "tls": {"defaults": {"ca_file": "/ca.pem"}},
  "service": {
    "name": "web", "port": 80, "tags": ["rails", "v1"], "meta": {"version": "2"},
    "weights": {"passing": 10, "warning": 1},
    "tagged_addresses": {"wan": {"address": "203.0.113.5", "port": 8080}},
    "check": {"http": "http://localhost:80/health", "header": {"X-Probe": ["1"]}, "interval": "10s"}
  },
  "services": [
    {"id": "db-1", "name": "db", "port": 5432,
     "checks": [{"ttl": "30s"}, {"tcp": "localhost:5432", "interval": "5s"}]},
    {"name": "cache", "port": 6379, "checks": [{"ttl": "5s"}]}
  ],
  "checks": [{"id": "disk", "name": "disk", "args": ["/bin/sh", "-c", "df ${HOME}"],
              "interval": "1m", "notes": "free space\non /\n"}]
}"#;

    fn hcl(name: &str, text: &str) -> Result<Layer, Problem> {
        parse(Origin::File(name.into()), text, Format::Hcl)
    }

    #[test]
    fn hcl_reads_as_the_same_raw_config_as_the_equivalent_json() {
        let from_hcl = hcl("t.hcl", EVERY_SHAPE_HCL).unwrap();
        let from_json = layer(EVERY_SHAPE_JSON);
        assert_eq!(from_hcl.raw, from_json.raw);
        // And both check into the same agent configuration.
        let load = |l: Layer| {
            AgentConfig::from_layers(
                &[Layer::new(Origin::Defaults, dev_layer()), l],
                dev_sources(),
            )
            .unwrap()
        };
        let (a, b) = (load(from_hcl), load(from_json));
        assert_eq!(a.services, b.services);
        assert_eq!(a.checks, b.checks);
        assert_eq!(a.services.len(), 3);
        assert_eq!(a.services[1].1.len(), 2, "db's two checks blocks");
        assert_eq!(
            a.encrypt.map(|k| k.to_base64()),
            b.encrypt.map(|k| k.to_base64())
        );
        assert_eq!(a.node_meta["zone-a"], "z");
        assert_eq!(a.ports.http, Some(8501));
    }

    #[test]
    fn watches_are_read_from_json_and_hcl_and_checked() {
        use crate::watch::Kind;
        use crate::watch::agent::Handler;
        let json = layer(
            r#"{"watches": [
                {"type": "key", "key": "app/x", "handler_type": "script", "args": ["/h.sh"]},
                {"type": "services", "handler": "echo changed"},
                {"type": "service", "service": "web", "tag": ["v1"], "passingonly": true,
                 "handler_type": "http",
                 "http_handler_config": {"path": "http://127.0.0.1:9000/", "header": {"X-A": ["1"]}}}
            ]}"#,
        );
        let from_hcl = hcl(
            "w.hcl",
            r#"
watches {
  type = "key"
  key = "app/x"
  handler_type = "script"
  args = ["/h.sh"]
}
watches = [{ type = "services", handler = "echo changed" }]
watches {
  type = "service"
  service = "web"
  tag = ["v1"]
  passingonly = true
  handler_type = "http"
  http_handler_config {
    path = "http://127.0.0.1:9000/"
    header {
      X-A = ["1"]
    }
  }
}
"#,
        )
        .unwrap();
        let load = |l: Layer| {
            AgentConfig::from_layers(
                &[Layer::new(Origin::Defaults, dev_layer()), l],
                dev_sources(),
            )
        };
        let (a, b) = (load(json).unwrap(), load(from_hcl).unwrap());
        assert_eq!(a.watches, b.watches);
        assert_eq!(a.watches.len(), 3);
        assert_eq!(a.watches[0].plan.kind, Kind::Key("app/x".into()));
        assert_eq!(a.watches[0].handler, Handler::Script(vec!["/h.sh".into()]));
        assert_eq!(a.watches[1].handler, Handler::Shell("echo changed".into()));
        assert!(matches!(a.watches[2].handler, Handler::Http(_)));
        assert!(
            a.warnings
                .iter()
                .any(|w| w.starts_with("The 'handler' field in watches has been deprecated")),
            "{:?}",
            a.warnings
        );
        // Watches of several files add up.
        let two = AgentConfig::from_layers(
            &[
                Layer::new(Origin::Defaults, dev_layer()),
                layer(r#"{"watches": [{"type": "nodes", "args": ["/a"]}]}"#),
                layer(r#"{"watches": [{"type": "nodes", "args": ["/b"]}]}"#),
            ],
            dev_sources(),
        )
        .unwrap();
        assert_eq!(two.watches.len(), 2);

        let e = load(
            hcl(
                "w.hcl",
                "watches {\n  type = \"nope\"\n  args = [\"/h\"]\n}\n",
            )
            .unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "w.hcl:1: watches[0]: Unsupported watch type: nope"
        );
        let e = load(layer(
            r#"{"watches": [{"type": "key", "key": "k"}, {"type": "key", "key": "k", "args": ["/h"], "colour": 1}]}"#,
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.json: watches[0]: Must define a watch handler\n\
             t.json: watches[1]: Invalid parameters: [colour]"
        );
        let e = load(layer(
            r#"{"ports": {"http": -1}, "watches": [{"type": "nodes", "args": ["/h"]}]}"#,
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("watches: watch plans require an HTTP or HTTPS endpoint"),
            "{e}"
        );
        assert!(
            parse_layer(
                Origin::File("t.json".into()),
                r#"{"watches": {"type": "key"}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn hcl_problems_name_the_file_the_key_and_the_line() {
        let e = hcl("web.hcl", "datacenter = \"a\"\nports {\n  htpp = 1\n}\n").unwrap_err();
        assert_eq!(
            e.to_string().split(" unknown").next(),
            Some("web.hcl:3: ports.htpp:")
        );
        let e = hcl("web.hcl", "ports {\n  http = \n}\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("web.hcl:2: HCL syntax error at column"),
            "{e}"
        );
        let e = hcl(
            "web.hcl",
            "service { name = \"a\" }\nservice { name = \"b\" }\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("web.hcl:2: service: given a second time"),
            "{e}"
        );
        // Problems found when the layers are checked carry the line too.
        let layers = vec![
            Layer::new(Origin::Defaults, dev_layer()),
            hcl(
                "svc.hcl",
                "services {\n  name = \"w\"\n  port = 80\n}\nservices {\n  name = \"v\"\n  port = \"x\"\n}\n",
            )
            .unwrap(),
        ];
        let e = AgentConfig::from_layers(&layers, dev_sources()).unwrap_err();
        assert!(
            e.to_string().contains("svc.hcl:7: services[1].port:"),
            "{e}"
        );
    }

    #[test]
    fn a_config_dir_mixes_json_and_hcl_in_lexical_order_and_warns_about_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "10-base.json",
            r#"{"datacenter": "one", "retry_join": ["a"]}"#,
        );
        write(
            "20-web.hcl",
            "datacenter = \"two\"\nretry_join = [\"b\"]\nservice { name = \"web\" }",
        );
        write(
            "30-db.json",
            r#"{"retry_join": ["c"], "service": {"name": "db"}}"#,
        );
        write("README.md", "not config");
        write("40-later.hcl.bak", "datacenter = \"never\"");
        std::fs::create_dir(dir.path().join("sub.hcl")).unwrap();
        let sources = Sources {
            dev: true,
            dirs: vec![dir.path().to_owned()],
            ..Sources::default()
        };
        let config = AgentConfig::load(sources.clone()).unwrap();
        assert_eq!(config.datacenter.as_str(), "two");
        let names: Vec<&str> = config
            .services
            .iter()
            .map(|(s, _)| s.name.as_str())
            .collect();
        assert_eq!(names, ["web", "db"]);
        assert_eq!(config.retry_join, ["a", "b", "c"]);
        let skipped: Vec<String> = ["40-later.hcl.bak", "README.md"]
            .iter()
            .map(|f| skipped_warning(&dir.path().join(f)))
            .collect();
        assert_eq!(config.warnings, skipped);
        assert!(
            skipped[1].ends_with(
                "README.md, extension must be .hcl or .json, or config format must be set"
            ),
            "{}",
            skipped[1]
        );
        // A file named on its own is skipped in the same way.
        let file = Sources {
            dev: true,
            files: vec![dir.path().join("README.md")],
            ..Sources::default()
        };
        assert_eq!(AgentConfig::load(file).unwrap().warnings, skipped[1..]);
        // -config-format reads every file, whatever its extension.
        let forced = Sources {
            format: Some(Format::Hcl),
            dirs: Vec::new(),
            files: vec![dir.path().join("40-later.hcl.bak")],
            ..sources
        };
        let config = AgentConfig::load(forced).unwrap();
        assert!(config.warnings.is_empty());
        assert_eq!(config.datacenter.as_str(), "never");
    }

    #[test]
    fn a_malformed_hcl_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), r#"{"datacenter": "one"}"#).unwrap();
        std::fs::write(dir.path().join("b.hcl"), "datacenter = \"two\"\nports {\n").unwrap();
        let e = AgentConfig::load(Sources {
            dev: true,
            dirs: vec![dir.path().to_owned()],
            ..Sources::default()
        })
        .unwrap_err();
        let text = e.to_string();
        let name = dir.path().join("b.hcl").display().to_string();
        assert!(text.starts_with(&format!("{name}:")), "{text}");
        assert!(text.contains("HCL syntax error"), "{text}");
        // A JSON file is not read as HCL, nor the other way round.
        std::fs::write(dir.path().join("b.hcl"), r#"{"datacenter": "two"}"#).unwrap();
        assert!(
            AgentConfig::load(Sources {
                dev: true,
                dirs: vec![dir.path().to_owned()],
                ..Sources::default()
            })
            .is_err()
        );
    }

    #[test]
    fn hcl_fragments_come_after_the_flags() {
        let sources = Sources {
            dev: true,
            flags: RawConfig {
                datacenter: Some("flags".into()),
                ..RawConfig::default()
            },
            hcl: vec![
                "datacenter = \"fragment\"".into(),
                "node_meta { a = \"b\" }".into(),
            ],
            ..Sources::default()
        };
        let config = AgentConfig::load(sources.clone()).unwrap();
        assert_eq!(config.datacenter.as_str(), "fragment");
        assert_eq!(config.node_meta["a"], "b");
        let bad = Sources {
            hcl: vec!["ports { dns = \"x\" }".into()],
            ..sources
        };
        let e = AgentConfig::load(bad).unwrap_err().to_string();
        assert!(e.starts_with("-hcl flag 1:1: ports.dns:"), "{e}");
    }

    #[test]
    fn config_format_names_consuls_choices() {
        assert_eq!(Format::parse("hcl"), Ok(Format::Hcl));
        assert_eq!(Format::parse("json"), Ok(Format::Json));
        assert_eq!(
            Format::parse("yaml"),
            Err("-config-format must be either 'hcl' or 'json'".into())
        );
        assert_eq!(Format::of(Path::new("a/b.HCL"), None), None);
        assert_eq!(Format::of(Path::new("a/b.hcl"), None), Some(Format::Hcl));
        assert_eq!(
            Format::of(Path::new("a/b"), Some(Format::Json)),
            Some(Format::Json)
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse_layer(Origin::Flags, &text);
            let _ = parse(Origin::Flags, &text, Format::Hcl);
        }

        #[test]
        fn parsing_hcl_shaped_text_never_panics(
            items in proptest::collection::vec(
                (
                    proptest::sample::select(&["services", "service", "checks", "ports", "node_meta", "datacenter", "x"][..]),
                    proptest::prop_oneof![
                        proptest::strategy::Just(" { name = \"w\" }".to_string()),
                        proptest::strategy::Just(" = { port = -1 }".to_string()),
                        proptest::strategy::Just(" = [{ ttl = \"1s\" }]".to_string()),
                        proptest::strategy::Just(" = \"${a}\"".to_string()),
                        proptest::strategy::Just(" = 1e400".to_string()),
                        proptest::strategy::Just(" \"label\" { a = b }".to_string()),
                        proptest::strategy::Just(" = null".to_string()),
                    ],
                ),
                0..6,
            )
        ) {
            let text: String = items.iter().map(|(k, v)| format!("{k}{v}\n")).collect();
            if let Ok(layer) = parse(Origin::Flags, &text, Format::Hcl) {
                let _ = AgentConfig::from_layers(&[layer], dev_sources());
            }
        }

        #[test]
        fn parsing_json_shaped_text_never_panics(
            key in "[a-z_]{1,20}",
            value in proptest::prop_oneof![
                proptest::strategy::Just("1".to_string()),
                proptest::strategy::Just("\"x\"".to_string()),
                proptest::strategy::Just("{}".to_string()),
                proptest::strategy::Just("[]".to_string()),
                proptest::strategy::Just("null".to_string()),
                proptest::strategy::Just("{\"name\": 1}".to_string()),
            ]
        ) {
            let text = format!("{{\"{key}\": {value}}}");
            if let Ok(layer) = parse_layer(Origin::Flags, &text) {
                let _ = AgentConfig::from_layers(&[layer], dev_sources());
            }
        }
    }
}
