//! The command line: Consul's verbs and flags.
//!
//! Consul users type Go-style single-dash long flags (`-dev`, `-config-dir=DIR`). clap
//! does not parse those (clap-rs/clap#1210), so [`normalize`] rewrites every `-name` or
//! `-name=value` into `--name…` before clap sees it. No short flags are defined, so
//! nothing is ambiguous.
//!
//! Verbs other than `agent`, `validate` and `version` talk to a running agent over its
//! HTTP API (`-http-addr`, else `CONSUL_HTTP_ADDR`, else 127.0.0.1:8500), or its HTTPS
//! API for an `https://` address or with `CONSUL_HTTP_SSL=true`; [`ClientArgs`] holds
//! Consul's flags for both, once for every verb.

#![allow(missing_docs, unreachable_pub)]
#![allow(clippy::print_stdout)]

mod acl;
mod agent;
mod autopilot;
mod catalog;
mod event;
mod gossip;
mod kv;
mod lock;
mod maint;
mod members;
mod monitor;
mod operator;
mod rtt;
mod services;
mod tls;
mod watch;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use proconsul::client::{AddressError, AgentClient, Client, ClientError, TlsOptions};

#[derive(Parser, Debug)]
#[command(
    name = "proconsul",
    about = "A Consul-compatible service catalog agent",
    disable_version_flag = true,
    // Go's flag package: a flag given twice takes its last value (scripts append
    // overrides); repeatable flags still collect every value.
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manages ACLs: bootstrap, policies, tokens, roles, the agent's tokens
    Acl {
        #[command(subcommand)]
        command: acl::AclCommand,
    },
    /// Runs an agent
    Agent(Box<agent::AgentArgs>),
    /// Interacts with the catalog
    Catalog {
        #[command(subcommand)]
        command: catalog::CatalogCommand,
    },
    /// Fires a new user event
    Event(Box<event::EventArgs>),
    /// Not built, on purpose: remote execution (says why)
    #[command(hide = true)]
    Exec {
        /// Ignored.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Prints the agent's figures for debugging
    Info(ClientArgs),
    /// Interacts with the key/value store
    Kv {
        #[command(subcommand)]
        command: kv::KvCommand,
    },
    /// Executes a command holding a lock (or a semaphore slot)
    Lock(Box<lock::LockArgs>),
    /// Runs cluster operations
    Operator {
        #[command(subcommand)]
        command: operator::OperatorCommand,
    },
    /// Registers or deregisters services of the local agent
    Services {
        #[command(subcommand)]
        command: services::ServicesCommand,
    },
    /// Saves or restores the catalog
    Snapshot {
        #[command(subcommand)]
        command: operator::SnapshotCommand,
    },
    /// Creates TLS material: a CA and certificates
    Tls {
        #[command(subcommand)]
        command: tls::TlsCommand,
    },
    /// Forces a member of the cluster into the left state
    #[command(name = "force-leave")]
    ForceLeave(gossip::ForceLeaveArgs),
    /// Tells the agent to join a cluster
    Join(gossip::JoinArgs),
    /// Generates a new gossip encryption key
    Keygen,
    /// Manages gossip encryption keys
    Keyring(gossip::KeyringArgs),
    /// Gracefully leaves the cluster and shuts the agent down
    Leave(ClientArgs),
    /// Controls node or service maintenance mode
    Maint(maint::MaintArgs),
    /// Lists the members of the datacenter
    Members(members::MembersArgs),
    /// Streams the log of a running agent
    Monitor(monitor::MonitorArgs),
    /// Triggers the agent to reload its configuration files
    Reload(ClientArgs),
    /// Estimates the round-trip time between two nodes from their network coordinates
    Rtt(rtt::RttArgs),
    /// Validates configuration files
    Validate(ValidateArgs),
    /// Prints the proconsul version
    Version,
    /// Watches for changes in a view of the data: prints it, or runs a handler
    Watch(watch::WatchArgs),
}

/// Where the agent's HTTP API is, and how to speak TLS to it (Consul's HTTP flags; each
/// also read from its environment variable).
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The agent's HTTP address: host:port, http://host:port or https://host:port (also CONSUL_HTTP_ADDR)
    #[arg(
        long = "http-addr",
        env = "CONSUL_HTTP_ADDR",
        default_value = "127.0.0.1:8500"
    )]
    pub http_addr: String,
    /// CA file to check the agent's HTTPS certificate against (also CONSUL_CACERT)
    #[arg(long = "ca-file", env = "CONSUL_CACERT")]
    pub ca_file: Option<PathBuf>,
    /// Directory of CA files to check the agent's HTTPS certificate against (also CONSUL_CAPATH)
    #[arg(long = "ca-path", env = "CONSUL_CAPATH")]
    pub ca_path: Option<PathBuf>,
    /// Client certificate to present to an agent with verify_incoming (also CONSUL_CLIENT_CERT)
    #[arg(long = "client-cert", env = "CONSUL_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// Key of the client certificate (also CONSUL_CLIENT_KEY)
    #[arg(long = "client-key", env = "CONSUL_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
    /// Name the agent's certificate must carry, instead of the host dialled (also CONSUL_TLS_SERVER_NAME)
    #[arg(long = "tls-server-name", env = "CONSUL_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// ACL token to present (also CONSUL_HTTP_TOKEN)
    #[arg(long = "token", env = "CONSUL_HTTP_TOKEN")]
    pub token: Option<String>,
    /// File holding the ACL token to present; wins over -token (also CONSUL_HTTP_TOKEN_FILE)
    #[arg(long = "token-file", env = "CONSUL_HTTP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// A boolean environment variable as Go's `strconv.ParseBool` reads it; an unreadable
/// value is reported and ignored, as Consul's client does.
fn env_bool(name: &str) -> Option<bool> {
    let value = std::env::var(name).ok().filter(|v| !v.is_empty())?;
    match value.as_str() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => {
            eprintln!("[WARN] client: could not parse {name}: invalid syntax {value:?}");
            None
        }
    }
}

impl ClientArgs {
    /// The raw client: HTTPS for an `https://` address, or for one without a scheme when
    /// `CONSUL_HTTP_SSL` is true; the agent's certificate is not checked when
    /// `CONSUL_HTTP_SSL_VERIFY` is false.
    fn http(&self) -> Result<Client, AddressError> {
        let tls = TlsOptions {
            ca_file: self.ca_file.clone().filter(|p| !p.as_os_str().is_empty()),
            ca_path: self.ca_path.clone().filter(|p| !p.as_os_str().is_empty()),
            client_cert: self
                .client_cert
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            client_key: self
                .client_key
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            server_name: self.tls_server_name.clone().filter(|s| !s.is_empty()),
            skip_verify: env_bool("CONSUL_HTTP_SSL_VERIFY") == Some(false),
        };
        let https = env_bool("CONSUL_HTTP_SSL").unwrap_or(false);
        Ok(Client::with_tls(&self.http_addr, https, &tls)?.with_token(self.token()?))
    }

    /// The token to present: the token file's (trimmed) if one is named, else `-token`.
    fn token(&self) -> Result<Option<String>, AddressError> {
        match self
            .token_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            Some(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|e| AddressError::TokenFile {
                    path: path.display().to_string(),
                    error: e.to_string(),
                }),
            None => Ok(self.token.clone()),
        }
    }

    fn client(&self) -> anyhow::Result<Client> {
        Ok(self.http()?)
    }

    /// The typed client of the same agent.
    fn agent(&self) -> Result<AgentClient, ClientError> {
        self.http()
            .map(AgentClient::from_http)
            .map_err(|e| ClientError::Transport(e.to_string()))
    }
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Do not print "Configuration is valid!" on success
    #[arg(long)]
    pub quiet: bool,
    /// The format of every config file, whatever its extension: json or hcl
    #[arg(long = "config-format")]
    pub config_format: Option<String>,
    /// Config files, or directories of *.json and *.hcl files
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Rewrites Go-style `-flag` arguments into `--flag`. We define no short flags (clap's
/// `-h` aside), so every single-dash word is a long flag; an unknown one then gets
/// clap's "unexpected argument '--name'" error. Negative numbers and everything after
/// `--` are left alone.
pub fn normalize(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    out.extend(iter.next());
    while let Some(arg) = iter.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            out.extend(iter);
            break;
        }
        let long = text.strip_prefix('-').is_some_and(|flag| {
            flag.len() > 1 && flag.starts_with(|c: char| c.is_ascii_alphabetic())
        });
        if long {
            out.push(OsString::from(format!("-{text}")));
        } else {
            out.push(arg);
        }
    }
    out
}

/// Go's `strconv.ParseBool`, with its error.
pub(crate) fn go_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!(
            "strconv.ParseBool: parsing {text:?}: invalid syntax"
        )),
    }
}

/// A parse error with its flags as Consul's users write them (`-data-dir`, not the
/// `--data-dir` the parser was handed): a double dash before a letter becomes one, but
/// not the `--` that ends the flags.
fn as_users_write_flags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        let starts_word = before
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || c == '\'' || c == '[' || c == '<');
        let flag = after[2..].starts_with(|c: char| c.is_ascii_alphabetic());
        out.push_str(if starts_word && flag { "-" } else { "--" });
        rest = &after[2..];
    }
    out.push_str(rest);
    out
}

/// Go's flag order for a verb whose flags start at `args[start]`: flags end at the first
/// word that is neither a flag nor the value of one of `value_flags` (`-` included), or
/// at `--`. A `--` is put before that word, so that what follows is taken as arguments,
/// even words that begin with `-`.
pub fn end_go_flags(mut args: Vec<OsString>, start: usize, value_flags: &[&str]) -> Vec<OsString> {
    let mut i = start;
    while i < args.len() {
        let Some(word) = args[i].to_str() else {
            break;
        };
        if word == "--" {
            return args;
        }
        let Some(flag) = word.strip_prefix('-').filter(|f| !f.is_empty()) else {
            break;
        };
        let flag = flag.strip_prefix('-').unwrap_or(flag);
        i += if !flag.contains('=') && value_flags.contains(&flag) {
            2
        } else {
            1
        };
    }
    if i < args.len() {
        args.insert(i, OsString::from("--"));
    }
    args
}

/// What `proconsul exec` says: remote execution is left out on purpose.
const EXEC_REFUSAL: &str = "proconsul does not implement exec: remote execution lets whoever may fire an event run commands on every node, which is why Consul turns it off by default (disable_remote_exec). Use a configuration-management tool, or a watch of type event with a handler you control.";

/// Runs the command line; returns the process exit code.
pub fn run(args: Vec<OsString>) -> ExitCode {
    let args = event::go_flag_order(acl::go_flag_order(watch::go_flag_order(
        lock::go_flag_order(kv::go_flag_order(args)),
    )));
    let cli = match Cli::try_parse_from(normalize(args)) {
        Ok(cli) => cli,
        Err(e) => {
            if !e.use_stderr() {
                // Help and the like, as clap prints them.
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            eprint!("{}", as_users_write_flags(&e.render().to_string()));
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Agent(args) => agent::run(*args),
        Command::Acl { command } => client_command(|| acl::run(command)),
        Command::Version => {
            println!("proconsul v{}", proconsul::VERSION);
            println!("{}", proconsul::PROTOCOL_LINE);
            ExitCode::SUCCESS
        }
        Command::Validate(args) => validate(args),
        Command::Members(args) => client_command(|| members::run(args)),
        Command::Event(args) => client_command(|| event::run(*args)),
        Command::Exec { .. } => {
            eprintln!("{EXEC_REFUSAL}");
            ExitCode::from(1)
        }
        Command::Maint(args) => client_command(|| maint::run(args)),
        Command::Monitor(args) => client_command(|| monitor::run(args)),
        Command::Rtt(args) => client_command(|| rtt::run(args)),
        Command::Catalog { command } => client_command(|| catalog::run(command)),
        Command::Kv { command } => client_command(|| kv::run(command)),
        Command::Lock(args) => client_command(|| lock::run(*args)),
        Command::Watch(args) => client_command(|| watch::run(args)),
        Command::Join(args) => client_command(|| gossip::join(args)),
        Command::ForceLeave(args) => client_command(|| gossip::force_leave(args)),
        Command::Keygen => gossip::keygen(),
        Command::Tls { command } => tls::run(command),
        Command::Info(args) => client_command(|| operator::info(args)),
        Command::Operator { command } => client_command(|| operator::operator(command)),
        Command::Snapshot { command } => client_command(|| operator::snapshot(command)),
        Command::Services { command } => client_command(|| services::run(command)),
        Command::Keyring(args) => client_command(|| gossip::keyring(args)),
        Command::Leave(args) => client_command(|| async move {
            args.client()?.put("/v1/agent/leave", None).await?;
            println!("Graceful leave complete");
            Ok(ExitCode::SUCCESS)
        }),
        Command::Reload(args) => client_command(|| async move {
            args.client()?.put("/v1/agent/reload", None).await?;
            println!("Configuration reload triggered");
            Ok(ExitCode::SUCCESS)
        }),
    }
}

/// Runs an HTTP-client verb on a small runtime; errors print as Consul's do and exit 1.
fn client_command<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(f()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Checks config files and directories as an agent reads them. Skipped files are named
/// on stderr (Consul's warning) even with `-quiet`, which only drops the success line.
fn validate(args: ValidateArgs) -> ExitCode {
    use proconsul::config::{self, Format, Layer, Origin, Problems, Sources};
    let forced = match args.config_format.as_deref().map(Format::parse) {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in &args.paths {
        if path.is_dir() {
            match config::dir_files(path, forced) {
                Ok(f) => files.extend(f),
                Err(p) => problems.push(p),
            }
        } else {
            files.push((path.clone(), Format::of(path, forced)));
        }
    }
    // Files are checked as an agent started with -dev would read them, so a directory
    // of service definitions validates without a data_dir.
    let mut layers = vec![Layer::new(
        Origin::Defaults,
        config::raw::RawConfig {
            server: Some(true),
            bootstrap: Some(true),
            ..Default::default()
        },
    )];
    for (file, format) in &files {
        let Some(format) = format else {
            eprintln!("{}", config::skipped_warning(file));
            continue;
        };
        match config::read_file(file, *format) {
            Ok(layer) => layers.push(layer),
            Err(p) => problems.push(p),
        }
    }
    let result = if problems.is_empty() {
        proconsul::AgentConfig::from_layers(
            &layers,
            Sources {
                dev: true,
                ..Sources::default()
            },
        )
        .map(|_| ())
    } else {
        Err(Problems(problems))
    };
    match result {
        Ok(()) => {
            if !args.quiet {
                println!("Configuration is valid!");
            }
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprintln!("Config validation failed:");
            for p in &problems.0 {
                eprintln!("  {p}");
            }
            ExitCode::from(1)
        }
    }
}

/// Lays out rows in columns separated by at least two spaces (Consul's columnize).
pub fn columns(rows: &[Vec<String>]) -> String {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; width];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        normalize(args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn single_dash_long_flags_become_double_dash() {
        assert_eq!(
            norm(&["p", "agent", "-dev", "-config-dir=x", "-node", "n1"]),
            ["p", "agent", "--dev", "--config-dir=x", "--node", "n1"]
        );
        assert_eq!(
            norm(&[
                "p",
                "members",
                "-detailed",
                "-status=alive",
                "-http-addr",
                "h:1"
            ]),
            [
                "p",
                "members",
                "--detailed",
                "--status=alive",
                "--http-addr",
                "h:1"
            ]
        );
        assert_eq!(
            norm(&["p", "catalog", "nodes", "-detailed"]),
            ["p", "catalog", "nodes", "--detailed"]
        );
    }

    #[test]
    fn unknown_flags_are_long_too_and_values_are_left_alone() {
        assert_eq!(norm(&["p", "agent", "-nope"]), ["p", "agent", "--nope"]);
        assert_eq!(
            norm(&["p", "agent", "-http-port", "-1"]),
            ["p", "agent", "--http-port", "-1"]
        );
        assert_eq!(
            norm(&["p", "validate", "-quiet", "--", "-dev"]),
            ["p", "validate", "--quiet", "--", "-dev"]
        );
        assert_eq!(norm(&["p", "agent", "--dev"]), ["p", "agent", "--dev"]);
        assert_eq!(norm(&["p", "-help"]), ["p", "--help"]);
    }

    #[test]
    fn a_flag_given_twice_takes_its_last_value_and_repeatable_ones_collect() {
        let cli = Cli::try_parse_from(normalize(
            [
                "p",
                "agent",
                "-data-dir",
                "one",
                "-data-dir=two",
                "-dev",
                "-dev",
                "-config-dir",
                "d1",
                "-config-dir=d2",
            ]
            .iter()
            .map(OsString::from)
            .collect(),
        ))
        .unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("not agent");
        };
        assert_eq!(args.data_dir.as_deref(), Some("two"));
        assert!(args.dev);
        assert_eq!(args.config_dir.len(), 2);
    }

    #[test]
    fn parse_errors_name_flags_as_users_write_them() {
        assert_eq!(
            as_users_write_flags(
                "error: unexpected argument '--bogus' found\n  tip: to pass '--bogus' as a value, use '-- --bogus'"
            ),
            "error: unexpected argument '-bogus' found\n  tip: to pass '-bogus' as a value, use '-- -bogus'"
        );
        assert_eq!(
            as_users_write_flags("Usage: proconsul agent --data-dir <DATA_DIR>"),
            "Usage: proconsul agent -data-dir <DATA_DIR>"
        );
        assert_eq!(as_users_write_flags("a -- b"), "a -- b");
    }

    #[test]
    fn parsed_flags_reach_the_agent_args() {
        let cli = Cli::try_parse_from(normalize(
            [
                "p",
                "agent",
                "-dev",
                "-config-dir",
                "d1",
                "-config-dir=d2",
                "-http-port=0",
                "-server=false",
            ]
            .iter()
            .map(OsString::from)
            .collect(),
        ))
        .unwrap();
        let Command::Agent(a) = cli.command else {
            panic!()
        };
        assert!(a.dev);
        assert_eq!(a.config_dir.len(), 2);
        assert_eq!(a.http_port, Some(0));
        assert_eq!(a.server, Some(false));
    }

    #[test]
    fn columns_align() {
        let rows = vec![
            vec!["Node".to_string(), "Address".into()],
            vec!["a-long-name".to_string(), "1.2.3.4:8301".into()],
        ];
        assert_eq!(
            columns(&rows),
            "Node         Address\na-long-name  1.2.3.4:8301\n"
        );
    }
}
