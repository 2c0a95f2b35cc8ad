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
const VALUE_FLAGS: &[&str] = &["http-addr", "n", "timeout", "try", "name", "monitor-retry"];

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
    let client = match AgentClient::new(&args.client.http_addr) {
        Ok(c) => c,
        Err(e) => {
            ui.error(&format!(
                "Error connecting to Consul agent: {}",
                api_error(&e)
            ));
            return 1;
        }
    };
    if let Err(e) = node_name(&client).await {
        ui.error(&format!("Error querying Consul agent: {e}"));
        return 1;
    }
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
    };

    ui.info("Attempting lock acquisition");
    let session = match Session::create(&client, &name, holder.behavior()).await {
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

/// The agent's node name (`/v1/agent/self`): proof that the agent answers.
async fn node_name(client: &AgentClient) -> Result<String, String> {
    let body = client
        .http()
        .get("/v1/agent/self")
        .await
        .map_err(|e| e.to_string())?;
    let value: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    Ok(value["Config"]["NodeName"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
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

/// Options of a read: blocking on `index` (when not 0) for up to `wait`.
fn read_options(index: u64, wait: Duration) -> QueryOptions {
    if index == 0 {
        QueryOptions::default()
    } else {
        QueryOptions::default().blocking(index, wait.clamp(MIN_WAIT, MAX_WAIT))
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
struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    fn listen(child_pid: Arc<Mutex<Option<u32>>>) -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    Some(()) = interrupt.recv() => rustix::process::Signal::INT,
                    Some(()) = terminate.recv() => rustix::process::Signal::TERM,
                    else => break,
                };
                let pid = *child_pid.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(pid) = pid
                    && let Err(e) = send_signal(pid, sig)
                {
                    eprintln!("Warning, could not forward signal: {e}");
                }
                tx.send_replace(true);
            }
        });
        Ok(Shutdown { rx })
    }

    fn triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Returns once a signal came.
    async fn wait(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|on| *on).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// `work`'s output, or `None` when a signal comes first.
    async fn unless<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            out = work => Some(out),
            () = self.wait() => None,
        }
    }
}

fn send_signal(pid: u32, sig: rustix::process::Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("no such process {pid}")))?;
    rustix::process::kill_process(pid, sig).map_err(std::io::Error::from)
}

// ---------------------------------------------------------------------------------------
// The child

struct Child {
    ui: Ui,
    /// The running child's pid, for the signal forwarder.
    pid: Arc<Mutex<Option<u32>>>,
}

/// A started child: resolves to whether it ran and exited with status 0.
type Running = JoinHandle<bool>;

impl Child {
    fn set_pid(pid: &Mutex<Option<u32>>, value: Option<u32>) {
        *pid.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }

    /// Starts the command and a task that waits for it.
    fn start(&self, command: &[OsString], shell: bool, pass_stdin: bool) -> Running {
        let ui = self.ui;
        ui.info("Starting handler");
        let mut cmd = child_command(command, shell, std::env::var_os("SHELL"));
        cmd.env("CONSUL_LOCK_HELD", "true")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        if pass_stdin {
            ui.info("Stdin passed to handler process");
            cmd.stdin(Stdio::inherit());
        } else {
            cmd.stdin(Stdio::null());
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                ui.error(&format!("Error starting handler: {e}"));
                return tokio::spawn(async { false });
            }
        };
        // Known before anything can signal it; cleared once it has been reaped.
        Child::set_pid(&self.pid, child.id());
        let pid = self.pid.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            Child::set_pid(&pid, None);
            match status {
                Ok(status) if status.success() => true,
                Ok(status) => {
                    ui.error(&format!("Error running handler: {}", go_exit_text(status)));
                    false
                }
                Err(e) => {
                    ui.error(&format!("Error running handler: {e}"));
                    false
                }
            }
        })
    }

    /// Stops the child: SIGTERM, then SIGKILL if it has not exited within the grace
    /// period; then waits for it to be gone.
    async fn kill(&self, mut running: Running) {
        let ui = self.ui;
        let pid = *self.pid.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pid) = pid else {
            // It did not start, or has just exited.
            ui.info("No child process to kill");
            let _ = running.await;
            return;
        };
        ui.info(&format!("Terminating child pid {pid}"));
        if let Err(e) = send_signal(pid, rustix::process::Signal::TERM) {
            if running.is_finished() {
                // It exited as we signalled it.
                let _ = running.await;
            } else {
                ui.error(&format!("Failed to terminate {pid}: {e}"));
            }
            return;
        }
        if tokio::time::timeout(KILL_GRACE_PERIOD, &mut running)
            .await
            .is_ok()
        {
            ui.info("Child terminated");
            return;
        }
        ui.info(&format!(
            "Child did not exit after grace period of {}",
            catalog::duration::format(KILL_GRACE_PERIOD)
        ));
        ui.info(&format!("Killing child pid {pid}"));
        if let Err(e) = send_signal(pid, rustix::process::Signal::KILL) {
            ui.error(&format!("Failed to kill {pid}: {e}"));
            return;
        }
        // A killed process is gone at once; this only reaps it.
        let _ = tokio::time::timeout(KILL_GRACE_PERIOD, running).await;
    }
}

/// The command to run: `$SHELL -c "<words joined by spaces>"` (`/bin/sh` without
/// `SHELL`), or the words as a program and its arguments.
fn child_command(
    words: &[OsString],
    shell: bool,
    shell_var: Option<OsString>,
) -> tokio::process::Command {
    if shell {
        let program = shell_var
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| OsString::from("/bin/sh"));
        let mut script = OsString::new();
        for (i, word) in words.iter().enumerate() {
            if i > 0 {
                script.push(" ");
            }
            script.push(word);
        }
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg("-c").arg(script);
        cmd
    } else {
        let mut cmd = tokio::process::Command::new(&words[0]);
        cmd.args(&words[1..]);
        cmd
    }
}

/// How Go's `exec.ExitError` reads: `exit status 3`, `signal: terminated`.
fn go_exit_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    let Some(sig) = status.signal() else {
        return status.to_string();
    };
    let name = match sig {
        1 => "hangup".to_owned(),
        2 => "interrupt".to_owned(),
        3 => "quit".to_owned(),
        6 => "aborted".to_owned(),
        9 => "killed".to_owned(),
        11 => "segmentation fault".to_owned(),
        13 => "broken pipe".to_owned(),
        15 => "terminated".to_owned(),
        n => format!("signal {n}"),
    };
    format!("signal: {name}")
}

// ---------------------------------------------------------------------------------------
// The session

/// Our session, renewed in the background until [`Session::end`].
struct Session {
    client: AgentClient,
    id: String,
    renewer: JoinHandle<()>,
}

impl Session {
    async fn create(
        client: &AgentClient,
        name: &str,
        behavior: &str,
    ) -> Result<Session, ClientError> {
        let request = SessionRequest {
            name: name.to_owned(),
            ttl: SESSION_TTL.to_owned(),
            behavior: behavior.to_owned(),
        };
        let id = client.session_create(&request, None).await?;
        let ttl = catalog::duration::parse(SESSION_TTL).unwrap_or(LOCK_WAIT_TIME);
        let renewer = tokio::spawn(renew(client.clone(), id.clone(), ttl));
        Ok(Session {
            client: client.clone(),
            id,
            renewer,
        })
    }

    /// Stops renewing and destroys the session (whatever it still holds is released,
    /// or deleted for `delete` sessions).
    async fn end(self) {
        self.renewer.abort();
        let _ = self.client.session_destroy(&self.id, None).await;
    }
}

/// Renews session `id` every TTL/2 (the TTL the agent answers with, from then on); a
/// failed renewal is tried again every second until a TTL has passed since the last
/// good one. Ends when the session is gone.
async fn renew(client: AgentClient, id: String, mut ttl: Duration) {
    let mut wait = ttl / 2;
    let mut last = Instant::now();
    while last.elapsed() <= ttl {
        tokio::time::sleep(wait).await;
        match client.session_renew(&id, None).await {
            Ok(Some(entry)) => {
                if let Ok(d) = catalog::duration::parse(&entry.ttl)
                    && !d.is_zero()
                {
                    ttl = d;
                }
                wait = ttl / 2;
                last = Instant::now();
            }
            Ok(None) => return,
            Err(_) => wait = Duration::from_secs(1),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Lock and semaphore

/// What is held: a lock at a key, or a slot of a semaphore under a prefix.
#[derive(Clone)]
enum Kind {
    Lock { key: String },
    Semaphore { prefix: String, limit: i64 },
}

#[derive(Clone)]
struct Holder {
    client: AgentClient,
    kind: Kind,
}

/// Why the keys were not cleaned up.
#[derive(Debug, PartialEq, Eq)]
enum Cleanup {
    /// Someone else holds (or waits for) the lock: nothing to clean up.
    InUse,
    Failed(String),
}

/// The semaphore's coordination key, `PREFIX/.lock`, as Consul's `semaphoreLock`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SemaphoreLock {
    /// The limit every contender must agree on.
    #[serde(rename = "Limit", alias = "limit", default)]
    limit: i64,
    /// The sessions holding a slot (a set: every value is `true`).
    #[serde(
        rename = "Holders",
        alias = "holders",
        default,
        deserialize_with = "null_as_empty"
    )]
    holders: BTreeMap<String, bool>,
}

fn null_as_empty<'de, D>(d: D) -> Result<BTreeMap<String, bool>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<BTreeMap<String, bool>>::deserialize(d)?.unwrap_or_default())
}

impl SemaphoreLock {
    /// The key's value; a missing key or an empty value is a fresh lock of `limit`.
    fn decode(pair: Option<&KvPair>, limit: i64) -> Result<SemaphoreLock, String> {
        match pair {
            Some(pair) if !pair.value.is_empty() => serde_json::from_slice(&pair.value)
                .map_err(|e| format!("lock decoding failed: {e}")),
            _ => Ok(SemaphoreLock {
                limit,
                holders: BTreeMap::new(),
            }),
        }
    }

    /// Go's `json.Marshal`: `{"Limit":2,"Holders":{"<id>":true}}`, holders sorted.
    fn encode(&self) -> Vec<u8> {
        // A map of strings to booleans always serialises.
        serde_json::to_vec(self).expect("a semaphore lock serialises")
    }

    /// Drops the holders whose session holds no key under the prefix any more (their
    /// contender key went with their session).
    fn prune(&mut self, pairs: &[KvPair]) {
        let alive: BTreeSet<&str> = pairs.iter().filter_map(|p| p.session.as_deref()).collect();
        self.holders
            .retain(|holder, _| alive.contains(holder.as_str()));
    }
}

impl Holder {
    /// The behavior of our session: a semaphore's contender key goes with it.
    fn behavior(&self) -> &'static str {
        match self.kind {
            Kind::Lock { .. } => "",
            Kind::Semaphore { .. } => "delete",
        }
    }

    /// Waits for the lock; `Ok(false)` when a signal came or `try_once` has passed.
    async fn acquire(
        &self,
        session: &str,
        try_once: Option<Duration>,
        shutdown: &Shutdown,
    ) -> Result<bool, String> {
        match &self.kind {
            Kind::Lock { key } => self.acquire_lock(key, session, try_once, shutdown).await,
            Kind::Semaphore { prefix, limit } => {
                self.acquire_slot(prefix, *limit, session, try_once, shutdown)
                    .await
            }
        }
    }

    async fn acquire_lock(
        &self,
        key: &str,
        session: &str,
        try_once: Option<Duration>,
        shutdown: &Shutdown,
    ) -> Result<bool, String> {
        let c = &self.client;
        let mut wait = Wait::new(try_once);
        let mut index = 0;
        loop {
            let Some(wait_time) = wait.next(shutdown) else {
                return Ok(false);
            };
            let Some(read) = shutdown
                .unless(c.kv_get(key, &read_options(index, wait_time)))
                .await
            else {
                return Ok(false);
            };
            let answer = read.map_err(|e| format!("failed to read lock: {}", api_error(&e)))?;
            if let Some(pair) = &answer.value {
                if pair.flags != LOCK_FLAG_VALUE {
                    return Err("Existing key does not match lock use".into());
                }
                match pair.session.as_deref() {
                    Some(s) if s == session => return Ok(true),
                    Some(_) => {
                        index = answer.meta.index;
                        continue;
                    }
                    None => {}
                }
            }
            let locked = c
                .kv_lock(key, b"", LOCK_FLAG_VALUE, session, true, None)
                .await
                .map_err(|e| format!("failed to acquire lock: {}", api_error(&e)))?;
            if locked {
                return Ok(true);
            }
            // Refused: held by another (wait for it), or free but in its lock delay
            // (try again in a while).
            let Some(read) = shutdown
                .unless(c.kv_get(key, &read_options(0, wait_time)))
                .await
            else {
                return Ok(false);
            };
            if let Ok(answer) = read
                && answer.value.as_ref().is_some_and(|p| p.session.is_some())
            {
                index = answer.meta.index;
                continue;
            }
            if shutdown
                .unless(tokio::time::sleep(LOCK_RETRY_TIME))
                .await
                .is_none()
            {
                return Ok(false);
            }
            index = 0;
        }
    }

    async fn acquire_slot(
        &self,
        prefix: &str,
        limit: i64,
        session: &str,
        try_once: Option<Duration>,
        shutdown: &Shutdown,
    ) -> Result<bool, String> {
        let c = &self.client;
        let contender = go_join(prefix, session);
        let lock_key = go_join(prefix, LOCK_KEY);
        match c
            .kv_lock(&contender, b"", SEMAPHORE_FLAG_VALUE, session, true, None)
            .await
        {
            Ok(true) => {}
            // Go's text for a refusal without an error.
            Ok(false) => return Err("failed to make contender entry: <nil>".into()),
            Err(e) => {
                return Err(format!("failed to make contender entry: {}", api_error(&e)));
            }
        }
        let mut wait = Wait::new(try_once);
        let mut index = 0;
        loop {
            let Some(wait_time) = wait.next(shutdown) else {
                return Ok(false);
            };
            let Some(read) = shutdown
                .unless(c.kv_list(prefix, &read_options(index, wait_time)))
                .await
            else {
                return Ok(false);
            };
            let answer = read.map_err(|e| format!("failed to read prefix: {}", api_error(&e)))?;
            let pairs = answer.value;
            let lock_pair = pairs.iter().find(|p| p.key == lock_key);
            if lock_pair.is_some_and(|p| p.flags != SEMAPHORE_FLAG_VALUE) {
                return Err("Existing key does not match semaphore use".into());
            }
            let mut state = SemaphoreLock::decode(lock_pair, limit)?;
            if state.limit != limit {
                return Err(format!(
                    "semaphore limit conflict (lock: {}, local: {limit})",
                    state.limit
                ));
            }
            state.prune(&pairs);
            if i64::try_from(state.holders.len()).unwrap_or(i64::MAX) >= state.limit {
                index = answer.meta.index;
                continue;
            }
            state.holders.insert(session.to_owned(), true);
            let cas = lock_pair.map_or(0, |p| p.modify_index);
            let written = c
                .kv_put(
                    &lock_key,
                    &state.encode(),
                    SEMAPHORE_FLAG_VALUE,
                    Some(cas),
                    None,
                )
                .await
                .map_err(|e| format!("failed to update lock: {}", api_error(&e)))?;
            if written {
                return Ok(true);
            }
            // Another contender wrote first: read again.
        }
    }

    /// Watches the lock with consistent blocking reads; returns once it is lost (or
    /// the agent failed `retries` times in a row).
    async fn monitor(self, session: String, retries: u32) {
        let c = &self.client;
        let mut index = 0;
        'watch: loop {
            let mut left = retries;
            loop {
                let options = read_options(index, MAX_WAIT).consistent();
                let held = match &self.kind {
                    Kind::Lock { key } => c.kv_get(key, &options).await.map(|a| {
                        let ours = a
                            .value
                            .is_some_and(|p| p.session.as_deref() == Some(session.as_str()));
                        (ours, a.meta.index)
                    }),
                    Kind::Semaphore { prefix, limit } => {
                        c.kv_list(prefix, &options).await.map(|a| {
                            let lock_key = go_join(prefix, LOCK_KEY);
                            let lock_pair = a.value.iter().find(|p| p.key == lock_key);
                            let ours =
                                SemaphoreLock::decode(lock_pair, *limit).is_ok_and(|mut state| {
                                    state.prune(&a.value);
                                    state.holders.contains_key(&session)
                                });
                            (ours, a.meta.index)
                        })
                    }
                };
                match held {
                    Ok((true, at)) => {
                        index = at;
                        continue 'watch;
                    }
                    Ok((false, _)) => return,
                    Err(e) if left > 0 && retryable(&e) => {
                        tokio::time::sleep(MONITOR_RETRY_TIME).await;
                        left -= 1;
                        index = 0;
                    }
                    Err(_) => return,
                }
            }
        }
    }

    /// Gives the lock back.
    async fn release(&self, session: &str) -> Result<(), String> {
        let c = &self.client;
        match &self.kind {
            Kind::Lock { key } => {
                c.kv_lock(key, b"", LOCK_FLAG_VALUE, session, false, None)
                    .await
                    .map_err(|e| format!("failed to release lock: {}", api_error(&e)))?;
            }
            Kind::Semaphore { prefix, limit } => {
                let lock_key = go_join(prefix, LOCK_KEY);
                loop {
                    let answer = c
                        .kv_get(&lock_key, &QueryOptions::default())
                        .await
                        .map_err(|e| api_error(&e))?;
                    let pair = answer.value;
                    let mut state = SemaphoreLock::decode(pair.as_ref(), *limit)?;
                    if state.holders.remove(session).is_none() {
                        break;
                    }
                    let cas = pair.as_ref().map_or(0, |p| p.modify_index);
                    let written = c
                        .kv_put(
                            &lock_key,
                            &state.encode(),
                            SEMAPHORE_FLAG_VALUE,
                            Some(cas),
                            None,
                        )
                        .await
                        .map_err(|e| format!("failed to update lock: {}", api_error(&e)))?;
                    if written {
                        break;
                    }
                }
                c.kv_delete(&go_join(prefix, session), None, None)
                    .await
                    .map_err(|e| api_error(&e))?;
            }
        }
        Ok(())
    }

    /// Deletes `.lock` (check-and-set) when nobody holds it.
    async fn destroy(&self) -> Result<(), Cleanup> {
        let c = &self.client;
        let failed =
            |what: &str, e: ClientError| Cleanup::Failed(format!("{what}: {}", api_error(&e)));
        match &self.kind {
            Kind::Lock { key } => {
                let answer = c
                    .kv_get(key, &QueryOptions::default())
                    .await
                    .map_err(|e| failed("failed to read lock", e))?;
                let Some(pair) = answer.value else {
                    return Ok(());
                };
                if pair.flags != LOCK_FLAG_VALUE {
                    return Err(Cleanup::Failed(
                        "Existing key does not match lock use".into(),
                    ));
                }
                if pair.session.is_some() {
                    return Err(Cleanup::InUse);
                }
                let removed = c
                    .kv_delete(key, Some(pair.modify_index), None)
                    .await
                    .map_err(|e| failed("failed to remove lock", e))?;
                if removed { Ok(()) } else { Err(Cleanup::InUse) }
            }
            Kind::Semaphore { prefix, limit } => {
                let answer = c
                    .kv_list(prefix, &QueryOptions::default())
                    .await
                    .map_err(|e| failed("failed to read prefix", e))?;
                let lock_key = go_join(prefix, LOCK_KEY);
                let Some(pair) = answer.value.iter().find(|p| p.key == lock_key) else {
                    return Ok(());
                };
                if pair.flags != SEMAPHORE_FLAG_VALUE {
                    return Err(Cleanup::Failed(
                        "Existing key does not match semaphore use".into(),
                    ));
                }
                let mut state =
                    SemaphoreLock::decode(Some(pair), *limit).map_err(Cleanup::Failed)?;
                state.prune(&answer.value);
                if !state.holders.is_empty() {
                    return Err(Cleanup::InUse);
                }
                let removed = c
                    .kv_delete(&lock_key, Some(pair.modify_index), None)
                    .await
                    .map_err(|e| failed("failed to remove semaphore", e))?;
                if removed { Ok(()) } else { Err(Cleanup::InUse) }
            }
        }
    }
}

/// The wait of each blocking read while acquiring: Consul's 15 s, or with `-timeout`
/// what is left of it (`None` once it has passed, or on a signal).
struct Wait {
    try_once: Option<Duration>,
    start: Instant,
    attempts: u32,
}

impl Wait {
    fn new(try_once: Option<Duration>) -> Wait {
        Wait {
            try_once,
            start: Instant::now(),
            attempts: 0,
        }
    }

    fn next(&mut self, shutdown: &Shutdown) -> Option<Duration> {
        if shutdown.triggered() {
            return None;
        }
        let wait = match self.try_once {
            None => LOCK_WAIT_TIME,
            Some(limit) if self.attempts == 0 => limit,
            Some(limit) => {
                let elapsed = self.start.elapsed();
                if elapsed > limit {
                    return None;
                }
                limit - elapsed
            }
        };
        self.attempts += 1;
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn parse(args: &[&str]) -> Result<LockArgs, clap::Error> {
        let cli = super::super::Cli::try_parse_from(super::super::normalize(go_flag_order(
            super::super::kv::go_flag_order(os(args)),
        )))?;
        match cli.command {
            super::super::Command::Lock(args) => Ok(*args),
            other => panic!("{other:?}"),
        }
    }

    fn pair(key: &str, session: Option<&str>, value: &str) -> KvPair {
        KvPair {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            flags: SEMAPHORE_FLAG_VALUE,
            session: session.map(str::to_owned),
            lock_index: 0,
            create_index: 5,
            modify_index: 7,
        }
    }

    #[test]
    fn flag_values_are_consuls() {
        assert_eq!(LOCK_FLAG_VALUE, 3_304_740_253_564_472_344);
        assert_eq!(SEMAPHORE_FLAG_VALUE, 16_210_313_421_097_356_768);
    }

    #[test]
    fn flags_end_at_the_prefix_so_the_command_keeps_its_own() {
        assert_eq!(
            go_flag_order(os(&["p", "lock", "-n", "2", "-verbose", "app", "ls", "-l"])),
            os(&["p", "lock", "-n", "2", "-verbose", "--", "app", "ls", "-l"])
        );
        assert_eq!(
            go_flag_order(os(&["p", "lock", "-timeout=1s", "app", "-x"])),
            os(&["p", "lock", "-timeout=1s", "--", "app", "-x"])
        );
        assert_eq!(
            go_flag_order(os(&["p", "kv", "get", "k"])),
            os(&["p", "kv", "get", "k"])
        );
    }

    #[test]
    fn defaults_are_consuls() {
        let a = parse(&["p", "lock", "app", "true"]).unwrap();
        assert_eq!(a.limit, 1);
        assert_eq!(a.timeout, go_signed_duration("0").unwrap());
        assert_eq!(a.monitor_retry, 3);
        assert!(a.shell && !a.child_exit_code && !a.verbose && !a.pass_stdin);
        assert_eq!(a.name, "");
        assert_eq!(a.args, os(&["app", "true"]));
    }

    #[test]
    fn every_flag_parses_in_go_s_forms() {
        let a = parse(&[
            "p",
            "lock",
            "-n",
            "3",
            "-timeout",
            "1m30s",
            "-child-exit-code",
            "-shell=false",
            "-name=job",
            "-verbose",
            "-monitor-retry=0",
            "-pass-stdin",
            "-http-addr",
            "127.0.0.1:1",
            "/app",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        assert_eq!(a.limit, 3);
        assert_eq!(a.timeout.value, Duration::from_secs(90));
        assert!(a.child_exit_code && !a.shell && a.verbose && a.pass_stdin);
        assert_eq!(a.name, "job");
        assert_eq!(a.monitor_retry, 0);
        assert_eq!(a.client.http_addr, "127.0.0.1:1");
        assert_eq!(a.args, os(&["/app", "sh", "-c", "exit 3"]));
        // `-n=2`, `-try` (Consul's old name of -timeout), negative values for Consul's
        // own refusals.
        let a = parse(&["p", "lock", "-n=2", "-try=5s", "app", "x"]).unwrap();
        assert_eq!((a.limit, a.timeout.value), (2, Duration::from_secs(5)));
        let a = parse(&[
            "p",
            "lock",
            "-n",
            "-1",
            "-timeout=-2s",
            "-monitor-retry",
            "-1",
            "a",
            "x",
        ])
        .unwrap();
        assert_eq!(a.limit, -1);
        assert!(a.timeout.negative);
        assert_eq!(a.monitor_retry, -1);
        assert!(parse(&["p", "lock", "-timeout=soon", "app", "x"]).is_err());
        assert!(parse(&["p", "lock", "-nope", "app", "x"]).is_err());
    }

    #[test]
    fn session_name_and_keys_are_consuls() {
        assert_eq!(
            default_session_name(&os(&["echo", "hi"]), "locks/job"),
            "Consul lock for 'echo hi' at 'locks/job'"
        );
        assert_eq!(go_join("locks/job", LOCK_KEY), "locks/job/.lock");
        assert_eq!(go_join("locks/job/", LOCK_KEY), "locks/job/.lock");
        assert_eq!(go_join("", LOCK_KEY), ".lock");
        assert_eq!(go_join("a//b", "s-1"), "a/b/s-1");
    }

    #[test]
    fn the_semaphore_lock_is_consuls_json() {
        let mut state = SemaphoreLock {
            limit: 2,
            holders: BTreeMap::new(),
        };
        state.holders.insert("b-session".into(), true);
        state.holders.insert("a-session".into(), true);
        assert_eq!(
            String::from_utf8(state.encode()).unwrap(),
            r#"{"Limit":2,"Holders":{"a-session":true,"b-session":true}}"#
        );
        state.holders.clear();
        assert_eq!(
            String::from_utf8(state.encode()).unwrap(),
            r#"{"Limit":2,"Holders":{}}"#
        );
        // Written by Consul; null holders; no key at all; an empty value.
        let read = |v: &str| SemaphoreLock::decode(Some(&pair("p/.lock", None, v)), 9);
        let s = read(r#"{"Limit":3,"Holders":{"x":true}}"#).unwrap();
        assert_eq!((s.limit, s.holders.len()), (3, 1));
        assert!(
            read(r#"{"Limit":3,"Holders":null}"#)
                .unwrap()
                .holders
                .is_empty()
        );
        assert_eq!(SemaphoreLock::decode(None, 4).unwrap().limit, 4);
        assert_eq!(read("").unwrap().limit, 9);
        assert!(
            read("not json")
                .unwrap_err()
                .starts_with("lock decoding failed: ")
        );
    }

    #[test]
    fn holders_without_a_live_contender_key_are_pruned() {
        let mut state: SemaphoreLock =
            serde_json::from_str(r#"{"Limit":2,"Holders":{"live":true,"gone":true}}"#).unwrap();
        let pairs = [
            pair("p/.lock", None, ""),
            pair("p/live", Some("live"), ""),
            pair("p/other", Some("waiting"), ""),
        ];
        state.prune(&pairs);
        assert_eq!(state.holders.keys().collect::<Vec<_>>(), ["live"]);
    }

    #[test]
    fn the_child_runs_through_the_shell_or_as_a_program() {
        let words = os(&["echo", "a b", "$HOME"]);
        let cmd = child_command(&words, true, None);
        let std = cmd.as_std();
        assert_eq!(std.get_program(), "/bin/sh");
        assert_eq!(std.get_args().collect::<Vec<_>>(), ["-c", "echo a b $HOME"]);
        let cmd = child_command(&words, true, Some("/bin/bash".into()));
        assert_eq!(cmd.as_std().get_program(), "/bin/bash");
        let cmd = child_command(&words, false, Some("/bin/bash".into()));
        let std = cmd.as_std();
        assert_eq!(std.get_program(), "echo");
        assert_eq!(std.get_args().collect::<Vec<_>>(), ["a b", "$HOME"]);
    }

    #[test]
    fn exit_statuses_read_as_go_s() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(go_exit_text(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(go_exit_text(ExitStatus::from_raw(15)), "signal: terminated");
        assert_eq!(go_exit_text(ExitStatus::from_raw(9)), "signal: killed");
    }

    #[test]
    fn timeouts_shorten_the_waits_and_end_them() {
        // A Shutdown driven by hand rather than by signals.
        let (_tx, rx) = watch::channel(false);
        let shutdown = Shutdown { rx };
        let mut forever = Wait::new(None);
        assert_eq!(forever.next(&shutdown), Some(LOCK_WAIT_TIME));
        assert_eq!(forever.next(&shutdown), Some(LOCK_WAIT_TIME));
        let mut once = Wait::new(Some(Duration::from_millis(1)));
        assert_eq!(once.next(&shutdown), Some(Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(once.next(&shutdown), None);
        let (tx, rx) = watch::channel(false);
        let shutdown = Shutdown { rx };
        tx.send_replace(true);
        assert_eq!(Wait::new(None).next(&shutdown), None);
    }

    #[test]
    fn only_unanswered_or_server_errors_are_retried() {
        assert!(retryable(&ClientError::Transport("refused".into())));
        assert!(retryable(&ClientError::Http {
            status: 500,
            message: "rpc error".into()
        }));
        assert!(!retryable(&ClientError::Http {
            status: 403,
            message: "ACL not found".into()
        }));
        assert!(!retryable(&ClientError::Decode("x".into())));
    }
}
