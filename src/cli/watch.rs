//! `proconsul watch`: Consul's `consul watch`. Watches one view of the data (`-type`
//! key, keyprefix, services, nodes, service, checks, event) with blocking queries. Without a
//! handler, prints the view as indented JSON once and exits, as Consul's does (a
//! script gets the current value); with one (the words after the flags, run through
//! `$SHELL -c`, or directly with `-shell=false`), runs it on each change with the JSON
//! on its stdin and `CONSUL_INDEX` in its environment, until stopped. A failing handler stops the watch (exit 1);
//! SIGINT and SIGTERM stop it with exit 0.

use std::cell::Cell;
use std::ffi::OsString;
use std::io::Write;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::{ArgAction, Args};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::kv::{HttpArgs, go_io_text};
use proconsul::watch::agent::{go_exit_text, shell_command};
use proconsul::watch::{Doc, Flow, Params, Plan};

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    /// The watch type: key, keyprefix, services, nodes, service, checks or event
    #[arg(long = "type", default_value = "", hide_default_value = true)]
    pub watch_type: String,
    /// The key to watch (type key)
    #[arg(long, default_value = "", hide_default_value = true)]
    pub key: String,
    /// The key prefix to watch (type keyprefix)
    #[arg(long, default_value = "", hide_default_value = true)]
    pub prefix: String,
    /// The service to watch (type service; optional for checks)
    #[arg(long, default_value = "", hide_default_value = true)]
    pub service: String,
    /// A service tag to filter on; may be given several times (types service, checks)
    #[arg(long)]
    pub tag: Vec<String>,
    /// true: only instances whose every check passes (type service)
    #[arg(long, default_value = "", hide_default_value = true)]
    pub passingonly: String,
    /// The check state to watch (type checks; default any)
    #[arg(long, default_value = "", hide_default_value = true)]
    pub state: String,
    /// Only the events of this name (type event)
    #[arg(long, default_value = "", hide_default_value = true)]
    pub name: String,
    /// Runs the handler through $SHELL -c (default true)
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub shell: bool,
    /// The handler to run on each change (default: print the data)
    #[arg(value_name = "HANDLER")]
    pub handler: Vec<OsString>,
}

/// The watch flags that take a value; the rest are booleans.
const VALUE_FLAGS: &[&str] = &[
    "http-addr",
    "datacenter",
    "type",
    "key",
    "prefix",
    "service",
    "tag",
    "passingonly",
    "state",
    "name",
];

/// Go's flag order for `watch`: the handler's words start at the first word that is not
/// a flag, and may then begin with `-`.
pub fn go_flag_order(args: Vec<OsString>) -> Vec<OsString> {
    if args.len() < 2 || args[1] != "watch" {
        return args;
    }
    super::end_go_flags(args, 2, VALUE_FLAGS)
}

/// A duration as Go prints one (`5s`, `3m0s`).
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

/// The flags gathered into Consul's watch parameters: only those given.
fn params(args: &WatchArgs) -> Result<Params, String> {
    let mut params = Params::new();
    let mut set = |name: &str, value: &str| {
        if !value.is_empty() {
            params.insert(name.to_owned(), Value::String(value.to_owned()));
        }
    };
    set("type", &args.watch_type);
    set("datacenter", args.http.dc().unwrap_or(""));
    set("key", &args.key);
    set("prefix", &args.prefix);
    set("service", &args.service);
    set("state", &args.state);
    set("name", &args.name);
    if !args.tag.is_empty() {
        params.insert(
            "tag".into(),
            Value::Array(args.tag.iter().cloned().map(Value::String).collect()),
        );
    }
    if args.http.stale {
        params.insert("stale".into(), Value::Bool(true));
    }
    if !args.passingonly.is_empty() {
        let passing = super::go_bool(&args.passingonly)
            .map_err(|e| format!("Failed to parse passingonly flag: {e}"))?;
        params.insert("passingonly".into(), Value::Bool(passing));
    }
    Ok(params)
}

fn usage() -> String {
    use clap::CommandFactory;
    let mut cli = super::Cli::command();
    cli.build();
    cli.find_subcommand_mut("watch")
        .map(|c| c.render_help().to_string())
        .unwrap_or_default()
}

pub async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let fail = |message: &str| {
        eprintln!("{message}");
        Ok(ExitCode::from(1))
    };
    if args.watch_type.is_empty() {
        eprintln!("Watch type must be specified");
        eprintln!();
        eprintln!("{}", usage().trim_end());
        return Ok(ExitCode::from(1));
    }
    let params = match params(&args) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    if args.watch_type.starts_with("connect_") || args.watch_type.starts_with("agent_") {
        return fail(&format!(
            "Type {} is not supported in the CLI tool",
            args.watch_type
        ));
    }
    let plan = match Plan::parse(&params, &[]) {
        Ok((plan, _)) => plan,
        Err(e) => return fail(&e),
    };
    let client = match args.http.client.http() {
        Ok(c) => c,
        Err(e) => return fail(&format!("Error connecting to Consul agent: {e}")),
    };
    // Consul's check that the agent answers before the watch starts.
    if let Err(e) = client.get("/v1/status/leader").await {
        return fail(&format!("Error querying Consul agent: {e}"));
    }
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let watch_type = plan.type_name();
    let on_error = |error: &str, retry: Duration| {
        eprintln!(
            "[ERROR] watch: Watch errored: type={watch_type} error={error:?} retry={}",
            go_duration(retry)
        );
    };
    let failed = Cell::new(false);
    let watching = async {
        if args.handler.is_empty() {
            proconsul::watch::run(
                &client,
                &plan,
                on_error,
                // Consul prints the first view and stops.
                |_, data| async move {
                    print(&data);
                    Flow::Stop
                },
            )
            .await;
        } else {
            let handler = Child {
                words: &args.handler,
                shell: args.shell,
            };
            let failed = &failed;
            proconsul::watch::run(&client, &plan, on_error, |index, data| {
                let handler = &handler;
                async move {
                    match handler.run(index, &data).await {
                        Ok(()) => Flow::Continue,
                        Err(e) => {
                            eprintln!("{e}");
                            failed.set(true);
                            Flow::Stop
                        }
                    }
                }
            })
            .await;
        }
    };
    tokio::select! {
        () = watching => {}
        _ = interrupt.recv() => return Ok(ExitCode::SUCCESS),
        _ = terminate.recv() => return Ok(ExitCode::SUCCESS),
    }
    Ok(if failed.get() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints one view; a closed stdout ends the watch.
fn print(data: &Doc) -> Flow {
    let mut out = std::io::stdout().lock();
    let text = data.to_go_json_indented();
    match out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        Ok(()) => Flow::Continue,
        Err(_) => Flow::Stop,
    }
}

/// The handler given on the command line.
struct Child<'a> {
    words: &'a [OsString],
    shell: bool,
}

impl Child<'_> {
    /// Runs the handler once with `data` on its stdin; its output is ours. An error is
    /// the line Consul prints.
    async fn run(&self, index: u64, data: &Doc) -> Result<(), String> {
        let mut command = if self.shell {
            let mut script = OsString::new();
            for (i, word) in self.words.iter().enumerate() {
                if i > 0 {
                    script.push(" ");
                }
                script.push(word);
            }
            shell_command(&script.to_string_lossy())
        } else {
            let mut command = tokio::process::Command::new(&self.words[0]);
            command.args(&self.words[1..]);
            command
        };
        command
            .env("CONSUL_INDEX", index.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("Error starting handler: {}", self.start_error(&e)))?;
        if let Some(mut stdin) = child.stdin.take() {
            let input = format!("{}\n", data.to_go_json());
            // A handler that does not read its input is no error.
            let _ = stdin.write_all(input.as_bytes()).await;
        }
        match child.wait().await {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("Error executing handler: {}", go_exit_text(status))),
            Err(e) => Err(format!("Error executing handler: {}", go_io_text(&e))),
        }
    }

    /// Why the handler did not start, as Go's `os/exec` says it.
    fn start_error(&self, e: &std::io::Error) -> String {
        let program = if self.shell {
            std::env::var("SHELL")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "/bin/sh".into())
        } else {
            self.words[0].to_string_lossy().into_owned()
        };
        if e.kind() == std::io::ErrorKind::NotFound && !program.contains('/') {
            format!("exec: {program:?}: executable file not found in $PATH")
        } else {
            format!("fork/exec {program}: {}", go_io_text(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn parse(args: &[&str]) -> Result<WatchArgs, clap::Error> {
        let cli =
            super::super::Cli::try_parse_from(super::super::normalize(go_flag_order(os(args))))?;
        match cli.command {
            super::super::Command::Watch(w) => Ok(w),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_handler_starts_at_the_first_word_that_is_not_a_flag() {
        assert_eq!(
            go_flag_order(os(&[
                "p", "watch", "-type", "key", "-key=k", "sh", "-c", "cat"
            ])),
            os(&[
                "p", "watch", "-type", "key", "-key=k", "--", "sh", "-c", "cat"
            ])
        );
        let w = parse(&[
            "p",
            "watch",
            "-type=service",
            "-service",
            "web",
            "-tag=a",
            "-tag",
            "b",
            "-passingonly=true",
            "-stale",
            "-shell=false",
            "-datacenter=dc2",
            "/bin/h",
            "-x",
        ])
        .unwrap();
        assert_eq!(w.watch_type, "service");
        assert_eq!(w.tag, ["a", "b"]);
        assert!(!w.shell && w.http.stale);
        assert_eq!(w.handler, os(&["/bin/h", "-x"]));
        let p = params(&w).unwrap();
        assert_eq!(
            Value::Object(p),
            serde_json::json!({"type": "service", "service": "web", "tag": ["a", "b"],
                               "passingonly": true, "stale": true, "datacenter": "dc2"})
        );
        let w = parse(&["p", "watch", "-type=nodes"]).unwrap();
        assert!(w.shell && w.handler.is_empty());
        assert!(parse(&["p", "watch", "-nope"]).is_err());
    }

    #[test]
    fn passingonly_takes_go_s_booleans() {
        let w = parse(&[
            "p",
            "watch",
            "-type=service",
            "-service=s",
            "-passingonly=yes",
        ])
        .unwrap();
        assert_eq!(
            params(&w).unwrap_err(),
            "Failed to parse passingonly flag: strconv.ParseBool: parsing \"yes\": invalid syntax"
        );
        assert_eq!(crate::cli::go_bool("T"), Ok(true));
        assert_eq!(crate::cli::go_bool("0"), Ok(false));
        assert_eq!(go_duration(Duration::from_secs(20)), "20s");
        assert_eq!(go_duration(Duration::from_secs(180)), "3m0s");
    }
}
