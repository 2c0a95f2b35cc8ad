//! `proconsul event`: fires a user event, as Consul's `consul event`.
//!
//! `exec` (remote execution over events) is not built, on purpose: Consul turns it off by
//! default because whoever may fire an event may then run commands on every node.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Args;
use proconsul::client::{encode, encode_segment};
use serde::Deserialize;

use super::ClientArgs;

#[derive(Args, Debug)]
pub struct EventArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Datacenter to fire the event in (default: the agent's)
    #[arg(long)]
    pub datacenter: Option<String>,
    /// Name of the event
    #[arg(long, default_value = "")]
    pub name: String,
    /// Regular expression to filter on node names
    #[arg(long, default_value = "")]
    pub node: String,
    /// Regular expression to filter on service names
    #[arg(long, default_value = "")]
    pub service: String,
    /// Regular expression to filter on service tags (needs -service)
    #[arg(long, default_value = "")]
    pub tag: String,
    /// The event's payload
    pub payload: Option<String>,
    /// Anything after the payload (refused)
    #[arg(hide = true)]
    pub extra: Vec<String>,
}

/// The flags of `event` that take a value, for Go's flag order.
const VALUE_FLAGS: &[&str] = &[
    "datacenter",
    "name",
    "node",
    "service",
    "tag",
    "http-addr",
    "ca-file",
    "ca-path",
    "client-cert",
    "client-key",
    "tls-server-name",
    "token",
    "token-file",
];

/// Go's flag order for `event`: the payload ends the flags.
pub fn go_flag_order(args: Vec<OsString>) -> Vec<OsString> {
    if args.len() < 3 || args[1] != "event" {
        return args;
    }
    super::end_go_flags(args, 2, VALUE_FLAGS)
}

#[derive(Deserialize)]
struct Fired {
    #[serde(rename = "ID")]
    id: String,
}

/// Consul's refusals, checked before anything is sent.
fn refusal(args: &EventArgs) -> Option<String> {
    if args.name.is_empty() {
        return Some("Event name must be specified".into());
    }
    if !args.extra.is_empty() {
        return Some("Too many command line arguments.".into());
    }
    if !args.tag.is_empty() && args.service.is_empty() {
        return Some("Cannot provide tag filter without service filter.".into());
    }
    for (what, pattern) in [
        ("node", &args.node),
        ("service", &args.service),
        ("tag", &args.tag),
    ] {
        if !pattern.is_empty()
            && let Err(e) = regex::Regex::new(pattern)
        {
            return Some(format!("Failed to compile {what} filter regexp: {e}"));
        }
    }
    None
}

/// The request path of the event.
fn path(args: &EventArgs) -> String {
    let mut query = Vec::new();
    for (key, value) in [
        ("dc", args.datacenter.as_deref().unwrap_or_default()),
        ("node", &args.node),
        ("service", &args.service),
        ("tag", &args.tag),
    ] {
        if !value.is_empty() {
            query.push(format!("{key}={}", encode(value)));
        }
    }
    let mut path = format!("/v1/event/fire/{}", encode_segment(&args.name));
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    path
}

pub async fn run(args: EventArgs) -> anyhow::Result<ExitCode> {
    if let Some(text) = refusal(&args) {
        eprintln!("{text}");
        return Ok(ExitCode::from(1));
    }
    let client = args.client.client()?;
    let body = args.payload.clone().filter(|p| !p.is_empty());
    let answer = match client.put(&path(&args), body).await {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("Error firing event: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let fired: Fired = serde_json::from_str(&answer)?;
    println!("Event ID: {}", fired.id);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(words: &[&str]) -> EventArgs {
        let args: Vec<OsString> = words.iter().map(OsString::from).collect();
        let cli = super::super::Cli::try_parse_from(super::super::normalize(go_flag_order(args)))
            .unwrap();
        match cli.command {
            super::super::Command::Event(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_filters_and_payload_make_the_request() {
        let a = parse(&[
            "proconsul",
            "event",
            "-name",
            "deploy",
            "-service",
            "web",
            "-tag",
            "v 1",
            "-datacenter",
            "dc2",
            "v1.2",
        ]);
        assert_eq!(a.payload.as_deref(), Some("v1.2"));
        assert_eq!(path(&a), "/v1/event/fire/deploy?dc=dc2&service=web&tag=v+1");
        assert_eq!(refusal(&a), None);
    }

    #[test]
    fn consuls_refusals() {
        let a = parse(&["proconsul", "event", "x"]);
        assert_eq!(refusal(&a).unwrap(), "Event name must be specified");
        let a = parse(&["proconsul", "event", "-name", "n", "-tag", "v1"]);
        assert_eq!(
            refusal(&a).unwrap(),
            "Cannot provide tag filter without service filter."
        );
        let a = parse(&["proconsul", "event", "-name", "n", "-node", "("]);
        assert!(
            refusal(&a)
                .unwrap()
                .starts_with("Failed to compile node filter regexp")
        );
        let a = parse(&["proconsul", "event", "-name", "n", "a", "b"]);
        assert_eq!(refusal(&a).unwrap(), "Too many command line arguments.");
        // As with Go's flags, a flag after the payload is an argument.
        let a = parse(&["proconsul", "event", "-name", "n", "a", "-node", "x"]);
        assert_eq!(a.node, "");
        assert_eq!(refusal(&a).unwrap(), "Too many command line arguments.");
    }
}
