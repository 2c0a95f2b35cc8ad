//! `proconsul agent`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Args;
use proconsul::config::raw::{RawConfig, RawPorts};
use proconsul::config::{self, Sources};
use proconsul::{Agent, AgentConfig};

/// Bool flags take Go's forms: `-server` or `-server=false`.
#[derive(Args, Debug, Default)]
pub struct AgentArgs {
    /// Starts a single in-memory server for development (datacenter dc1, local addresses)
    #[arg(long)]
    pub dev: bool,
    /// Runs the agent as a server
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub server: Option<bool>,
    /// Elects this server alone
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub bootstrap: Option<bool>,
    /// Number of servers to wait for before bootstrapping
    #[arg(long = "bootstrap-expect")]
    pub bootstrap_expect: Option<u32>,
    /// Datacenter of the agent
    #[arg(long)]
    pub datacenter: Option<String>,
    /// Node name (default: the host name)
    #[arg(long)]
    pub node: Option<String>,
    /// Node UUID (default: random, kept in the data dir)
    #[arg(long = "node-id")]
    pub node_id: Option<String>,
    /// Node metadata as key:value (repeatable)
    #[arg(long = "node-meta")]
    pub node_meta: Vec<String>,
    /// Address to bind cluster communication to
    #[arg(long)]
    pub bind: Option<String>,
    /// Address to advertise to other agents
    #[arg(long)]
    pub advertise: Option<String>,
    /// Address to advertise to other datacenters
    #[arg(long = "advertise-wan")]
    pub advertise_wan: Option<String>,
    /// Addresses (space-separated) for the HTTP API and DNS
    #[arg(long)]
    pub client: Option<String>,
    /// Directory for the agent's state
    #[arg(long = "data-dir")]
    pub data_dir: Option<String>,
    /// Directory of config files (*.json, *.hcl), read in lexical order (repeatable)
    #[arg(long = "config-dir")]
    pub config_dir: Vec<PathBuf>,
    /// A config file, JSON or HCL by its extension (repeatable)
    #[arg(long = "config-file")]
    pub config_file: Vec<PathBuf>,
    /// The format of every config file, whatever its extension: json or hcl
    #[arg(long = "config-format")]
    pub config_format: Option<String>,
    /// A configuration fragment in HCL, applied after the other flags (repeatable)
    #[arg(long)]
    pub hcl: Vec<String>,
    /// HTTP API port (-1 disables)
    #[arg(long = "http-port", allow_negative_numbers = true)]
    pub http_port: Option<i64>,
    /// HTTPS API port (-1, the default, disables; Consul's convention is 8501)
    #[arg(long = "https-port", allow_negative_numbers = true)]
    pub https_port: Option<i64>,
    /// DNS port (-1 disables)
    #[arg(long = "dns-port", allow_negative_numbers = true)]
    pub dns_port: Option<i64>,
    /// Server RPC port
    #[arg(long = "server-port")]
    pub server_port: Option<i64>,
    /// LAN gossip port
    #[arg(long = "serf-lan-port")]
    pub serf_lan_port: Option<i64>,
    /// WAN gossip port
    #[arg(long = "serf-wan-port")]
    pub serf_wan_port: Option<i64>,
    /// Log level: trace, debug, info, warn, error
    #[arg(long = "log-level")]
    pub log_level: Option<String>,
    /// Writes log lines as JSON objects
    #[arg(long = "log-json", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub log_json: Option<bool>,
    /// Also writes the log to this file (consul.log inside it if it is a directory)
    #[arg(long = "log-file")]
    pub log_file: Option<String>,
    /// Size in bytes at which the log file is rotated (default 0, no limit)
    #[arg(long = "log-rotate-bytes")]
    pub log_rotate_bytes: Option<u64>,
    /// Age at which the log file is rotated (default 24h)
    #[arg(long = "log-rotate-duration")]
    pub log_rotate_duration: Option<String>,
    /// Rotated log files kept (default 0: all; -1: none)
    #[arg(long = "log-rotate-max-files", allow_negative_numbers = true)]
    pub log_rotate_max_files: Option<i64>,
    /// DNS domain (default consul)
    #[arg(long)]
    pub domain: Option<String>,
    /// Upstream DNS server for names outside the domain (repeatable)
    #[arg(long)]
    pub recursor: Vec<String>,
    /// Allows script checks
    #[arg(long = "enable-script-checks", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub enable_script_checks: Option<bool>,
    /// Serves the web UI (on with -dev)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub ui: Option<bool>,
    /// Path the web UI is served under (default /ui/)
    #[arg(long = "ui-content-path")]
    pub ui_content_path: Option<String>,
    /// Gossip encryption key (base64 of 16, 24 or 32 bytes; see `proconsul keygen`)
    #[arg(long)]
    pub encrypt: Option<String>,
    /// Keeps installed gossip keys in memory only
    #[arg(long = "disable-keyring-file", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub disable_keyring_file: Option<bool>,
    /// Agent to join at start; failing to join any is fatal (repeatable)
    #[arg(long)]
    pub join: Vec<String>,
    /// Agent to join at start, retried until one answers (repeatable)
    #[arg(long = "retry-join")]
    pub retry_join: Vec<String>,
    /// Time between retry-join attempts (default 30s)
    #[arg(long = "retry-interval")]
    pub retry_interval: Option<String>,
    /// Most retry-join attempts before the agent exits (default 0, no limit)
    #[arg(long = "retry-max")]
    pub retry_max: Option<u32>,
    /// Server of another datacenter to WAN-join at start; failing to join any is fatal
    /// (repeatable)
    #[arg(long = "join-wan")]
    pub join_wan: Vec<String>,
    /// Server of another datacenter to WAN-join, retried until one answers (repeatable)
    #[arg(long = "retry-join-wan")]
    pub retry_join_wan: Vec<String>,
    /// Time between retry-join-wan attempts (default 30s)
    #[arg(long = "retry-interval-wan")]
    pub retry_interval_wan: Option<String>,
    /// Most retry-join-wan attempts before the agent exits (default 0, no limit)
    #[arg(long = "retry-max-wan")]
    pub retry_max_wan: Option<u32>,
    /// Allows script checks from config files only
    #[arg(long = "enable-local-script-checks", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub enable_local_script_checks: Option<bool>,
}

impl AgentArgs {
    /// The flags as a configuration layer.
    fn to_layer(&self) -> Result<RawConfig, String> {
        let mut meta = BTreeMap::new();
        for kv in &self.node_meta {
            let (k, v) = kv
                .split_once(':')
                .ok_or_else(|| format!("-node-meta {kv:?}: expected key:value"))?;
            meta.insert(k.to_owned(), v.to_owned());
        }
        let any_port = self.http_port.is_some()
            || self.https_port.is_some()
            || self.dns_port.is_some()
            || self.server_port.is_some()
            || self.serf_lan_port.is_some()
            || self.serf_wan_port.is_some();
        Ok(RawConfig {
            server: self.server,
            bootstrap: self.bootstrap,
            bootstrap_expect: self.bootstrap_expect,
            datacenter: self.datacenter.clone(),
            node_name: self.node.clone(),
            node_id: self.node_id.clone(),
            node_meta: (!meta.is_empty()).then_some(meta),
            bind_addr: self.bind.clone(),
            advertise_addr: self.advertise.clone(),
            advertise_addr_wan: self.advertise_wan.clone(),
            client_addr: self.client.clone(),
            data_dir: self.data_dir.clone(),
            log_level: self.log_level.clone(),
            log_json: self.log_json,
            log_file: self.log_file.clone(),
            log_rotate_bytes: self.log_rotate_bytes,
            log_rotate_duration: self.log_rotate_duration.clone(),
            log_rotate_max_files: self.log_rotate_max_files,
            domain: self.domain.clone(),
            recursors: (!self.recursor.is_empty()).then(|| self.recursor.clone()),
            enable_script_checks: self.enable_script_checks,
            enable_local_script_checks: self.enable_local_script_checks,
            encrypt: self.encrypt.clone(),
            ui_config: (self.ui.is_some() || self.ui_content_path.is_some()).then(|| {
                proconsul::config::raw::RawUiConfig {
                    enabled: self.ui,
                    content_path: self.ui_content_path.clone(),
                    dir: None,
                }
            }),
            disable_keyring_file: self.disable_keyring_file,
            start_join: (!self.join.is_empty()).then(|| self.join.clone()),
            retry_join: (!self.retry_join.is_empty()).then(|| self.retry_join.clone()),
            retry_interval: self.retry_interval.clone(),
            retry_max: self.retry_max,
            start_join_wan: (!self.join_wan.is_empty()).then(|| self.join_wan.clone()),
            retry_join_wan: (!self.retry_join_wan.is_empty()).then(|| self.retry_join_wan.clone()),
            retry_interval_wan: self.retry_interval_wan.clone(),
            retry_max_wan: self.retry_max_wan,
            ports: any_port.then(|| RawPorts {
                http: self.http_port,
                https: self.https_port,
                dns: self.dns_port,
                server: self.server_port,
                serf_lan: self.serf_lan_port,
                serf_wan: self.serf_wan_port,
                ..RawPorts::default()
            }),
            ..RawConfig::default()
        })
    }
}

pub fn run(args: AgentArgs) -> ExitCode {
    let flags = match args.to_layer() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("==> {e}");
            return ExitCode::from(1);
        }
    };
    let format = match args.config_format.as_deref().map(config::Format::parse) {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            eprintln!("==> config: {e}");
            return ExitCode::from(1);
        }
    };
    let sources = Sources {
        dev: args.dev,
        dirs: args.config_dir.clone(),
        files: args.config_file.clone(),
        flags,
        format,
        hcl: args.hcl.clone(),
    };
    let config = match AgentConfig::load(sources) {
        Ok(c) => c,
        Err(problems) => {
            eprintln!("==> Error loading the configuration:");
            for p in &problems.0 {
                eprintln!("    {p}");
            }
            return ExitCode::from(1);
        }
    };
    let gate = Gate::default();
    let logging = match proconsul::logging::install(
        config.log.clone(),
        config.log_json,
        config.log_file.as_ref(),
        Box::new(gate.clone()),
        config.monitor.clone(),
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("==> {e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("proconsul")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("==> cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(serve(config, gate));
    logging.flush();
    code
}

async fn serve(config: AgentConfig, gate: Gate) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let leave_on_terminate = config.leave_on_terminate;
    let leave_on_interrupt = !config.skip_leave_on_interrupt;
    // Handlers first: a signal that arrives while the agent starts (or right after its
    // banner) is then handled instead of killing the process.
    let signals = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    );
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = signals else {
        eprintln!("==> cannot install signal handlers");
        return ExitCode::from(1);
    };
    let agent = match Agent::start(config).await {
        Ok(a) => a,
        Err(e) => {
            gate.open();
            eprintln!("==> Error starting agent: {e:#}");
            return ExitCode::from(1);
        }
    };
    // As Consul does: the banner first, then the log lines held back during start-up.
    print!("{}", agent.banner());
    gate.open();
    let leave = loop {
        tokio::select! {
            _ = int.recv() => {
                tracing::info!(leave = leave_on_interrupt, "caught interrupt, stopping");
                break leave_on_interrupt;
            }
            _ = term.recv() => {
                tracing::info!(leave = leave_on_terminate, "caught terminate, stopping");
                break leave_on_terminate;
            }
            _ = hup.recv() => {
                tracing::info!("caught hangup, reloading configuration");
                if let Err(e) = agent.reload().await {
                    tracing::error!(error = %e, "reload failed");
                }
            }
            _ = agent.left() => break false,
            reason = agent.failed() => {
                agent.stop(false).await;
                tracing::error!(error = %reason, "exiting with an error so that a supervisor restarts the agent");
                return ExitCode::from(1);
            }
        }
    };
    // After an API leave the agent has left already.
    agent.stop(leave).await;
    ExitCode::SUCCESS
}

/// Log output held back until the banner is printed, then written straight to stdout.
#[derive(Clone, Default)]
struct Gate {
    state: Arc<Mutex<GateState>>,
}

#[derive(Default)]
struct GateState {
    open: bool,
    held: Vec<u8>,
}

/// Most log output held back before the gate opens; later lines are dropped.
const GATE_BUFFER: usize = 1024 * 1024;

impl Gate {
    fn open(&self) {
        let mut state = self.state.lock().expect("log gate poisoned");
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&state.held);
        let _ = out.flush();
        state.held = Vec::new();
        state.open = true;
    }
}

impl proconsul::logging::Sink for Gate {
    fn write_line(&self, line: &[u8]) {
        let mut state = self.state.lock().expect("log gate poisoned");
        if state.open {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line);
            let _ = out.flush();
        } else if state.held.len() + line.len() <= GATE_BUFFER {
            state.held.extend_from_slice(line);
        }
    }
}
