//! `proconsul monitor`: streams a running agent's log, as `consul monitor` does.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use proconsul::client::encode;

use super::ClientArgs;

#[derive(Args, Debug)]
pub struct MonitorArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Log level to stream (trace, debug, info, warn, error); may be more verbose than the agent's own
    #[arg(long = "log-level", default_value = "INFO")]
    pub log_level: String,
    /// Streams the log as JSON objects
    #[arg(long = "log-json", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub log_json: Option<bool>,
}

/// Consul's exit codes: 0 when interrupted, 1 when the monitor cannot start or the
/// agent ends it.
pub async fn run(args: MonitorArgs) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut path = format!("/v1/agent/monitor?loglevel={}", encode(&args.log_level));
    if args.log_json.unwrap_or(false) {
        path.push_str("&logjson");
    }
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        anyhow::bail!("cannot install signal handlers");
    };
    let started = async {
        let client = args.client.client()?;
        Ok::<_, anyhow::Error>(client.stream(&path).await?)
    };
    let mut stream = tokio::select! {
        started = started => match started {
            Ok(s) => s,
            Err(e) => {
                eprintln!("Error starting monitor: {e:#}");
                return Ok(ExitCode::from(1));
            }
        },
        _ = interrupt.recv() => return Ok(ExitCode::SUCCESS),
        _ = terminate.recv() => return Ok(ExitCode::SUCCESS),
    };
    loop {
        let chunk = tokio::select! {
            chunk = stream.next_chunk() => chunk,
            _ = interrupt.recv() => return Ok(ExitCode::SUCCESS),
            _ = terminate.recv() => return Ok(ExitCode::SUCCESS),
        };
        match chunk {
            Ok(Some(bytes)) => {
                let mut out = std::io::stdout().lock();
                // A closed stdout (the reader of a pipe left) ends the command.
                if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    println!();
    println!(
        "Remote side ended the monitor! This usually means that the\nremote side has exited or crashed."
    );
    Ok(ExitCode::from(1))
}
