//! `proconsul acl …`: Consul's ACL verbs — `bootstrap`, `policy`, `token` and `role`
//! (`create|list|read|update|delete`, and `token clone`), and `set-agent-token` — with
//! its flags, its output blocks ([`format`]) and its exit codes (0 on success, 1 on any
//! error, the message on stderr).
//!
//! Policies, roles and tokens may be named by a unique prefix of their ID, as Consul's
//! CLI allows: anything shorter than a whole UUID is looked up in the list.

mod format;
mod object;
mod policy;
mod role;
mod token;

use std::ffi::OsString;
use std::io::Read;
use std::process::ExitCode;

use clap::{ArgAction, Args, Subcommand};

use super::ClientArgs;
use proconsul::client::{AclNodeIdentity, AclServiceIdentity, AgentClient, ClientError};

pub use format::Format;

#[derive(Subcommand, Debug)]
pub enum AclCommand {
    /// Bootstraps the ACL system: creates the first management token
    Bootstrap(BootstrapArgs),
    /// Manages policies
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Manages tokens
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Manages roles
    Role {
        #[command(subcommand)]
        command: role::RoleCommand,
    },
    /// Sets one of the tokens the agent uses (kept across restarts only with
    /// acl.enable_token_persistence)
    #[command(name = "set-agent-token")]
    SetAgentToken(SetAgentTokenArgs),
}

/// `-format` and `-meta`, shared by every verb that prints an object.
#[derive(Args, Debug)]
pub struct Output {
    /// Output format: pretty or json
    #[arg(long, default_value = "pretty")]
    pub format: String,
    /// Also shows each object's hash and Raft indexes
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub meta: bool,
}

impl Output {
    fn format(&self) -> Result<Format, String> {
        Format::parse(&self.format)
    }
}

#[derive(Args, Debug)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Output format: pretty or json
    #[arg(long, default_value = "pretty")]
    pub format: String,
    /// A file (or - for stdin) holding the SecretID the management token should get
    #[arg(value_name = "SECRET_FILE")]
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SetAgentTokenArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// TYPE (default, agent, recovery, replication, config_file_service_registration,
    /// dns), then TOKEN (the secret, @FILE or - for stdin)
    #[arg(value_name = "TYPE TOKEN")]
    pub args: Vec<String>,
}

/// The flags of `acl` verbs that take a value; the rest are booleans.
const VALUE_FLAGS: &[&str] = &[
    "http-addr",
    "ca-file",
    "ca-path",
    "client-cert",
    "client-key",
    "tls-server-name",
    "token",
    "token-file",
    "format",
];

/// Go's flag order for the `acl` verbs that take arguments (`bootstrap`,
/// `set-agent-token`): flags end at the first argument, so `set-agent-token agent -`
/// reads the token from stdin.
pub fn go_flag_order(args: Vec<OsString>) -> Vec<OsString> {
    if args.len() < 4
        || args[1] != "acl"
        || !(args[2] == "bootstrap" || args[2] == "set-agent-token")
    {
        return args;
    }
    super::end_go_flags(args, 3, VALUE_FLAGS)
}

pub async fn run(command: AclCommand) -> anyhow::Result<ExitCode> {
    let done = match command {
        AclCommand::Bootstrap(args) => bootstrap(args).await,
        AclCommand::Policy { command } => policy::run(command).await,
        AclCommand::Token { command } => token::run(command).await,
        AclCommand::Role { command } => role::run(command).await,
        AclCommand::SetAgentToken(args) => set_agent_token(args).await,
    };
    Ok(match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(1)
        }
    })
}

/// Consul's `ui.Info`: the text and a newline.
fn info(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not worth a panic.
    let _ = out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"));
}

/// The typed client, or Consul's connection error.
fn agent(client: &ClientArgs) -> Result<AgentClient, String> {
    client
        .agent()
        .map_err(|e| format!("Error connecting to Consul agent: {}", api_error(&e)))
}

/// A failed request as Consul's CLI words it.
fn api_error(e: &ClientError) -> String {
    super::kv::api_error(e)
}

/// A value as Consul's `-rules` and TOKEN arguments take it: `@FILE` is the file's
/// contents, `-` is stdin, anything else the value itself.
fn load_data(value: &str) -> Result<String, String> {
    if let Some(path) = value.strip_prefix('@') {
        return std::fs::read_to_string(path).map_err(|e| {
            format!(
                "Failed to read file: open {path}: {}",
                super::kv::go_io_text(&e)
            )
        });
    }
    if value == "-" {
        let mut text = String::new();
        std::io::stdin()
            .lock()
            .read_to_string(&mut text)
            .map_err(|e| format!("Failed to read stdin: {}", super::kv::go_io_text(&e)))?;
        return Ok(text);
    }
    Ok(value.to_owned())
}

/// `-service-identity NAME[:DC1,DC2]` values.
fn service_identities(values: &[String]) -> Result<Vec<AclServiceIdentity>, String> {
    values
        .iter()
        .map(|raw| {
            let parts: Vec<&str> = raw.split(':').collect();
            match parts.as_slice() {
                [name] => Ok(AclServiceIdentity {
                    service_name: (*name).to_owned(),
                    datacenters: Vec::new(),
                }),
                [name, dcs] => Ok(AclServiceIdentity {
                    service_name: (*name).to_owned(),
                    datacenters: dcs.split(',').map(str::to_owned).collect(),
                }),
                _ => Err(format!("Malformed -service-identity argument: {raw:?}")),
            }
        })
        .collect()
}

/// `-node-identity NAME:DC` values.
fn node_identities(values: &[String]) -> Result<Vec<AclNodeIdentity>, String> {
    values
        .iter()
        .map(|raw| match raw.split(':').collect::<Vec<_>>().as_slice() {
            [name, dc] => Ok(AclNodeIdentity {
                node_name: (*name).to_owned(),
                datacenter: (*dc).to_owned(),
            }),
            _ => Err(format!("Malformed -node-identity argument: {raw:?}")),
        })
        .collect()
}

/// The one ID among `ids` that starts with `partial` (a whole UUID is taken as given),
/// with Consul's errors; `what` is `token`, `policy` or `role`.
fn unique_prefix(partial: &str, ids: &[String], what: &str) -> Result<String, String> {
    if partial.len() == 36 {
        return Ok(partial.to_owned());
    }
    let mut found = ids.iter().filter(|id| id.starts_with(partial));
    match (found.next(), found.next()) {
        (Some(id), None) => Ok(id.clone()),
        (Some(_), Some(_)) => Err(format!("Partial {what} ID is not unique")),
        (None, _) => Err(format!("No such {what} ID with prefix: {partial}")),
    }
}

async fn bootstrap(args: BootstrapArgs) -> Result<(), String> {
    let format = Format::parse(&args.format)?;
    if args.args.len() > 1 {
        return Err("This command takes up to one argument".into());
    }
    // Consul reads the secret from a file or stdin only, never from the argument.
    let secret = match args.args.first() {
        Some(source) => {
            let source = if source == "-" {
                source.clone()
            } else {
                format!("@{source}")
            };
            let text =
                load_data(&source).map_err(|e| format!("Error reading provided token: {e}"))?;
            Some(text.trim().to_owned()).filter(|s| !s.is_empty())
        }
        None => None,
    };
    let agent = agent(&args.client)?;
    let token = agent
        .acl_bootstrap(secret.as_deref())
        .await
        .map_err(|e| format!("Failed ACL bootstrapping: {}", api_error(&e)))?;
    info(&match format {
        Format::Pretty => format::token(&token, false),
        Format::Json => format::json(&token),
    });
    Ok(())
}

/// The CLI's token types and the URL's names for them.
fn agent_token_kind(name: &str) -> Option<&'static str> {
    Some(match name {
        "default" => "default",
        "agent" => "agent",
        "recovery" | "master" => "agent_recovery",
        "replication" => "replication",
        "config_file_service_registration" => "config_file_service_registration",
        "dns" => "dns",
        _ => return None,
    })
}

async fn set_agent_token(args: SetAgentTokenArgs) -> Result<(), String> {
    let (kind, token) = match args.args.as_slice() {
        [] => return Err("Error! Missing TYPE and TOKEN arguments".into()),
        [kind] if agent_token_kind(kind).is_some() => {
            return Err("Error! Missing TOKEN argument".into());
        }
        [_] => return Err("Error! MISSING TYPE argument".into()),
        [kind, token] => (kind, load_data(token).map_err(|e| format!("Error! {e}"))?),
        more => {
            return Err(format!(
                "Error! Too many arguments: expected 2 got {}",
                more.len()
            ));
        }
    };
    let agent = agent(&args.client)?;
    let Some(url_kind) = agent_token_kind(kind) else {
        return Err("Unknown token type".into());
    };
    agent
        .agent_token_set(url_kind, token.trim_end_matches(['\r', '\n']))
        .await
        .map_err(|e| format!("Failed to set ACL token {kind:?}: {}", api_error(&e)))?;
    info(&format!("ACL token {kind:?} set successfully"));
    Ok(())
}

#[cfg(test)]
mod tests;
