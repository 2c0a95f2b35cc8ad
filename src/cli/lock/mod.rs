//! `proconsul lock [flags] PREFIX COMMAND…`: Consul's `consul lock`. It takes a lock (or,
//! with `-n N` above 1, one of N slots of a semaphore) in the key/value store, runs
//! COMMAND while holding it, and gives it back when COMMAND ends.
//!
//! The keys are Consul's, so a `consul lock` and a `proconsul lock` on one prefix exclude
//! each other:
//!
//! | `-n` | keys | flags |
//! |---|---|---|
//! | 1 | `PREFIX/.lock`, held (`?acquire`) by our session | [`LOCK_FLAG_VALUE`] |
//! | N > 1 | `PREFIX/<session>` held by each contender, and `PREFIX/.lock` = `{"Limit":N,"Holders":{"<session>":true,…}}` written with `?cas` | [`SEMAPHORE_FLAG_VALUE`] |
//!
//! A lock and a semaphore on one prefix both use `PREFIX/.lock` and refuse each other's
//! flags (`Existing key does not match lock use` / `… semaphore use`).
//!
//! The steps, as Consul's `api/lock.go`, `api/semaphore.go` and `command/lock` take
//! them:
//!
//! 1. A session (`Consul lock for '<command>' at '<prefix>'` unless `-name`; TTL 15 s,
//!    the agent's default checks and lock delay; behavior `delete` for a semaphore,
//!    whose contender key then goes with it), renewed every TTL/2 until the end.
//! 2. Waiting with blocking reads (`?index`, `?wait=15s`): for the lock, until
//!    `.lock` has no holder, then `?acquire` (a refusal with nobody holding it is a lock
//!    delay: five seconds' pause); for the semaphore, until fewer than N live holders
//!    are listed, then a `?cas` write adding ours. `-timeout` gives up once that long
//!    has passed (exit 1).
//! 3. COMMAND runs through `$SHELL -c` (`/bin/sh` without `SHELL`), or as a program with
//!    `-shell=false`, with `CONSUL_LOCK_HELD=true` in its environment and our stdout and
//!    stderr. SIGINT and SIGTERM are passed on to it.
//! 4. Meanwhile consistent blocking reads watch the lock; losing it (its session
//!    destroyed, the key taken or deleted, or the agent unreachable beyond
//!    `-monitor-retry` tries a second apart) stops COMMAND: SIGTERM, then SIGKILL after
//!    5 s. So do SIGINT and SIGTERM.
//! 5. The lock is released (`?release`; for a semaphore our holder entry is taken out
//!    with `?cas` and the contender key deleted), the session destroyed, and `.lock`
//!    deleted (`?cas`) when nobody else holds it.
//!
//! With `-datacenter DC` every session call and every read and write of the keys carries
//! `?dc=DC`: the agent forwards them, and the lock lives in that datacenter. When DC is
//! not the agent's own, the session belongs to one of DC's servers (the first node of
//! its `consul` service) with no node checks, so only its TTL, which we renew, or its
//! destruction ends it. Consul's `consul lock` gives it the asking agent's node instead,
//! which the other datacenter does not know, and fails with `Missing node
//! registration` (hashicorp/consul#4886); `consul exec -datacenter` does what we do.
//!
//! Exit codes are Consul's: 0 once COMMAND ended and the lock was released, whatever
//! COMMAND's status; 2 with `-child-exit-code` when COMMAND failed; 1 on any error.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::future::Future;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{ArgAction, Args};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ClientArgs;
use super::kv::{api_error, go_clean};
use proconsul::client::{AgentClient, ClientError, KvPair, MAX_WAIT, QueryOptions, SessionRequest};

/// The flags of a key used as a lock (Consul's `api.LockFlagValue`).
pub const LOCK_FLAG_VALUE: u64 = 0x2ddc_cbc0_58a5_0c18;
/// The flags of the keys of a semaphore (Consul's `api.SemaphoreFlagValue`).
pub const SEMAPHORE_FLAG_VALUE: u64 = 0xe0f6_9a2b_aa41_4de0;
/// The key under the prefix that is the lock, or the semaphore's coordination key.
const LOCK_KEY: &str = ".lock";
/// The TTL of our session.
const SESSION_TTL: &str = "15s";
/// How long one blocking read waits while we wait for the lock.
const LOCK_WAIT_TIME: Duration = Duration::from_secs(15);
/// The pause after a refused `?acquire` with no holder (a lock delay).
const LOCK_RETRY_TIME: Duration = Duration::from_secs(5);
/// The pause between tries of a watch that failed.
const MONITOR_RETRY_TIME: Duration = Duration::from_secs(1);
/// Between SIGTERM and SIGKILL to a child that must stop.
const KILL_GRACE_PERIOD: Duration = Duration::from_secs(5);
/// A blocking read never asks for less (a `wait` of 0 would mean the server's default).
const MIN_WAIT: Duration = Duration::from_millis(10);

#[derive(Args, Debug)]
pub struct LockArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Datacenter whose KV store holds the lock, and where the session is made
    /// (default: the agent's)
    #[arg(long)]
    pub datacenter: Option<String>,
    /// How many may hold it at once: 1 is a lock, more a semaphore
    #[arg(
        short = 'n',
        long = "n",
        default_value = "1",
        allow_negative_numbers = true
    )]
    pub limit: i64,
    /// Gives up waiting for the lock after this long, e.g. 10s (0: waits forever)
    #[arg(long, alias = "try", default_value = "0", value_parser = go_signed_duration,
          allow_hyphen_values = true)]
    pub timeout: SignedDuration,
    /// Agent errors (5xx, no answer) tolerated while watching the lock, 1 s apart
    #[arg(
        long = "monitor-retry",
        default_value = "3",
        allow_negative_numbers = true
    )]
    pub monitor_retry: i64,
    /// The session's name (default: Consul lock for '<command>' at '<prefix>')
    #[arg(long, default_value = "", hide_default_value = true)]
    pub name: String,
    /// Exits 2 when the command fails (otherwise its status is not passed on)
    #[arg(long = "child-exit-code", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub child_exit_code: bool,
    /// Gives the command our stdin (otherwise it reads nothing)
    #[arg(long = "pass-stdin", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub pass_stdin: bool,
    /// Runs the command through $SHELL -c (/bin/sh without SHELL); false runs it as a
    /// program with its arguments
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true",
          hide_possible_values = true)]
    pub shell: bool,
    /// Prints each step
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub verbose: bool,
    /// PREFIX, then the COMMAND and its arguments
    #[arg(value_name = "PREFIX COMMAND")]
    pub args: Vec<OsString>,
}

/// The lock flags that take a value; the rest are booleans (`-name` or `-name=value`).
const VALUE_FLAGS: &[&str] = &[
    "http-addr",
    "datacenter",
    "n",
    "timeout",
    "try",
    "name",
    "monitor-retry",
];

/// Go's flag order for `lock`: flags end at PREFIX, so the command's own flags
/// (`lock app ls -l`) stay the command's.
pub fn go_flag_order(args: Vec<OsString>) -> Vec<OsString> {
    if args.len() < 3 || args[1] != "lock" {
        return args;
    }
    super::end_go_flags(args, 2, VALUE_FLAGS)
}

/// A Go duration that may be negative (`-timeout=-1s` is refused with Consul's text,
/// not as a syntax error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedDuration {
    pub negative: bool,
    pub value: Duration,
}

fn go_signed_duration(text: &str) -> Result<SignedDuration, String> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let value = catalog::duration::parse(rest).map_err(|e| e.to_string())?;
    Ok(SignedDuration {
        negative: negative && !value.is_zero(),
        value,
    })
}

pub async fn run(args: LockArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::from(lock(args).await))
}

/// Consul's `cli.Ui`: progress on stdout (with `-verbose`), errors on stderr.
#[derive(Clone, Copy)]
struct Ui {
    verbose: bool,
}

impl Ui {
    fn info(self, line: &str) {
        if self.verbose {
            println!("{line}");
        }
    }

    fn error(self, line: &str) {
        eprintln!("{line}");
    }
}

/// The whole verb; returns the exit code.
async fn lock(args: LockArgs) -> u8 {
    let ui = Ui {
        verbose: args.verbose,
    };
    if args.limit <= 0 {
        ui.error("Lock holder limit must be positive");
        return 1;
    }
    if args.args.len() < 2 {
        ui.error("Key prefix and child command must be specified");
        return 1;
    }
    let prefix = args.args[0].to_string_lossy();
    let prefix = prefix.strip_prefix('/').unwrap_or(&prefix).to_owned();
    let command = &args.args[1..];
    if args.timeout.negative {
        ui.error("Timeout must be positive");
        return 1;
    }
    let name = if args.name.is_empty() {
        default_session_name(command, &prefix)
    } else {
        args.name.clone()
    };
    let try_once = (!args.timeout.value.is_zero()).then_some(args.timeout.value);
    let Ok(monitor_retry) = u32::try_from(args.monitor_retry) else {
        ui.error("Number for 'monitor-retry' must be >= 0");
        return 1;
    };
    let client = match args.client.agent() {
        Ok(c) => c,
        Err(e) => {
            ui.error(&format!(
                "Error connecting to Consul agent: {}",
                api_error(&e)
            ));
            return 1;
        }
    };
    let own_dc = match agent_datacenter(&client).await {
        Ok(dc) => dc,
        Err(e) => {
            ui.error(&format!("Error querying Consul agent: {e}"));
            return 1;
        }
    };
    let dc = args.datacenter.filter(|dc| !dc.is_empty());
    let session_node = match &dc {
        Some(dc) if *dc != own_dc => match server_of(&client, dc).await {
            Ok(node) => Some(node),
            Err(e) => {
                ui.error(&format!("Lock setup failed: {e}"));
                return 1;
            }
        },
        _ => None,
    };
    let child_pid = Arc::new(Mutex::new(None));
    let shutdown = match Shutdown::listen(child_pid.clone()) {
        Ok(s) => s,
        Err(e) => {
            ui.error(&format!("Error listening for signals: {e}"));
            return 1;
        }
    };

    let kind = if args.limit == 1 {
        let key = go_join(&prefix, LOCK_KEY);
        ui.info(&format!("Setting up lock at path: {key}"));
        Kind::Lock { key }
    } else {
        ui.info(&format!(
            "Setting up semaphore (limit {}) at prefix: {prefix}",
            args.limit
        ));
        if prefix.is_empty() {
            ui.error("Lock setup failed: missing prefix");
            return 1;
        }
        Kind::Semaphore {
            prefix,
            limit: args.limit,
        }
    };
    let holder = Holder {
        client: client.clone(),
        kind,
        dc,
    };

    ui.info("Attempting lock acquisition");
    let session = match Session::create(
        &client,
        &name,
        holder.behavior(),
        holder.dc.clone(),
        session_node,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            ui.error(&format!(
                "Lock acquisition failed: failed to create session: {}",
                api_error(&e)
            ));
            return 1;
        }
    };
    match holder.acquire(&session.id, try_once, &shutdown).await {
        Ok(true) => {}
        Ok(false) => {
            session.end().await;
            ui.error("Shutdown triggered or timeout during lock acquisition");
            return 1;
        }
        Err(e) => {
            session.end().await;
            ui.error(&format!("Lock acquisition failed: {e}"));
            return 1;
        }
    }
    let mut monitor = tokio::spawn(holder.clone().monitor(session.id.clone(), monitor_retry));

    let mut child_code = 0;
    if shutdown.triggered() {
        ui.error("Shutdown triggered during lock acquisition");
    } else {
        let child = Child { ui, pid: child_pid };
        let mut running = child.start(command, args.shell, args.pass_stdin);
        enum End {
            Exited(bool),
            Shutdown,
            Lost,
        }
        let end = tokio::select! {
            ok = &mut running => End::Exited(ok.unwrap_or(false)),
            () = shutdown.wait() => End::Shutdown,
            _ = &mut monitor => End::Lost,
        };
        match end {
            End::Exited(ok) => {
                if !ok {
                    child_code = 2;
                }
                ui.info("Child terminated, releasing lock");
            }
            End::Shutdown | End::Lost => {
                ui.info(if matches!(end, End::Shutdown) {
                    "Shutdown triggered, killing child"
                } else {
                    "Lock lost, killing child"
                });
                child.kill(running).await;
            }
        }
    }
    monitor.abort();

    let released = holder.release(&session.id).await;
    session.end().await;
    if let Err(e) = released {
        ui.error(&format!("Lock release failed: {e}"));
        return 1;
    }
    match holder.destroy().await {
        Ok(()) => ui.info("Cleanup succeeded"),
        Err(Cleanup::InUse) => ui.info("Cleanup aborted, lock in use"),
        Err(Cleanup::Failed(e)) => {
            ui.error(&format!("Lock cleanup failed: {e}"));
            return 1;
        }
    }
    if args.child_exit_code { child_code } else { 0 }
}

/// Consul's session name for a command at a prefix.
fn default_session_name(command: &[OsString], prefix: &str) -> String {
    let words: Vec<String> = command
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    format!("Consul lock for '{}' at '{prefix}'", words.join(" "))
}

/// The agent's datacenter (`/v1/agent/self`), which is also proof that it answers.
async fn agent_datacenter(client: &AgentClient) -> Result<String, String> {
    let body = client
        .http()
        .get("/v1/agent/self")
        .await
        .map_err(|e| e.to_string())?;
    let value: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    Ok(value["Config"]["Datacenter"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// The node name of a server of datacenter `dc` (the `consul` service there), for a
/// session made in `dc`.
async fn server_of(client: &AgentClient, dc: &str) -> Result<String, String> {
    let path = format!(
        "/v1/catalog/service/consul?dc={}",
        proconsul::client::encode(dc)
    );
    let body = client.http().get(&path).await.map_err(|e| e.to_string())?;
    let value: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    value
        .as_array()
        .and_then(|servers| servers.first())
        .and_then(|s| s["Node"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("no server of datacenter {dc:?} is known"))
}

/// Go's `path.Join` of two elements.
fn go_join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => String::new(),
        (true, false) => go_clean(b),
        (false, true) => go_clean(a),
        (false, false) => go_clean(&format!("{a}/{b}")),
    }
}

/// Options of a read in `dc` (the agent's own for `None`): blocking on `index` (when
/// not 0) for up to `wait`.
fn read_options(dc: Option<&str>, index: u64, wait: Duration) -> QueryOptions {
    let options = QueryOptions {
        datacenter: dc.map(str::to_owned),
        ..QueryOptions::default()
    };
    if index == 0 {
        options
    } else {
        options.blocking(index, wait.clamp(MIN_WAIT, MAX_WAIT))
    }
}

/// Whether a failed watch is worth another try: no answer, or a server error.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Transport(_) => true,
        ClientError::Http { status, .. } => *status >= 500,
        ClientError::Decode(_) => false,
    }
}

// ---------------------------------------------------------------------------------------
// Signals

/// SIGINT and SIGTERM: each is passed on to the running child (Consul's signal
/// forwarding), and the first one starts the shutdown, which stays triggered.
mod child;
mod keys;
#[cfg(test)]
mod tests;

use child::*;
use keys::*;
