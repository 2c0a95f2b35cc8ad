//! `proconsul operator autopilot get-config|set-config|state`, with Consul's output.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::ClientArgs;

#[derive(Subcommand, Debug)]
pub enum AutopilotCommand {
    /// Prints autopilot's settings
    #[command(name = "get-config")]
    GetConfig(GetArgs),
    /// Changes autopilot's settings (the others keep their values)
    #[command(name = "set-config")]
    SetConfig(SetArgs),
    /// Prints the leader's view of the servers
    State(GetArgs),
}

#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Remove failed servers from the Raft configuration
    #[arg(long, value_parser = super::go_bool)]
    pub cleanup_dead_servers: Option<bool>,
    /// A server silent for longer is unhealthy (Go duration)
    #[arg(long)]
    pub last_contact_threshold: Option<String>,
    /// A server this many entries behind the leader is unhealthy
    #[arg(long)]
    pub max_trailing_logs: Option<u64>,
    /// Never remove servers below this many voters
    #[arg(long)]
    pub min_quorum: Option<u32>,
    /// How long a new server stays healthy before it votes (Go duration)
    #[arg(long)]
    pub server_stabilization_time: Option<String>,
}

const PATH: &str = "/v1/operator/autopilot/configuration";

pub async fn run(command: AutopilotCommand) -> anyhow::Result<ExitCode> {
    match command {
        AutopilotCommand::GetConfig(args) => {
            let config: Value = serde_json::from_str(&args.client.client()?.get(PATH).await?)?;
            print!("{}", config_text(&config));
            Ok(ExitCode::SUCCESS)
        }
        AutopilotCommand::SetConfig(args) => set(args).await,
        AutopilotCommand::State(args) => {
            let path = "/v1/operator/autopilot/state";
            let state: Value = serde_json::from_str(&args.client.client()?.get(path).await?)?;
            print!("{}", state_text(&state));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn set(args: SetArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut config: Value = serde_json::from_str(&client.get(PATH).await?)?;
    let index = config["ModifyIndex"].as_u64().unwrap_or(0);
    for (key, text) in [
        ("LastContactThreshold", &args.last_contact_threshold),
        ("ServerStabilizationTime", &args.server_stabilization_time),
    ] {
        if let Some(text) = text {
            if catalog::duration::parse(text).is_err() {
                eprintln!("Error parsing {key}: invalid duration {text:?}");
                return Ok(ExitCode::from(1));
            }
            config[key] = Value::from(text.as_str());
        }
    }
    if let Some(v) = args.cleanup_dead_servers {
        config["CleanupDeadServers"] = Value::from(v);
    }
    if let Some(v) = args.max_trailing_logs {
        config["MaxTrailingLogs"] = Value::from(v);
    }
    if let Some(v) = args.min_quorum {
        config["MinQuorum"] = Value::from(v);
    }
    let path = format!("{PATH}?cas={index}");
    let answer = client.put(&path, Some(config.to_string())).await?;
    if answer.trim() == "true" {
        println!("Configuration updated!");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("Configuration could not be atomically updated, please try again");
        Ok(ExitCode::from(1))
    }
}

/// `get-config`'s lines, Consul's: `Key = value`, strings quoted.
fn config_text(c: &Value) -> String {
    let mut out = String::new();
    for key in [
        "CleanupDeadServers",
        "LastContactThreshold",
        "MaxTrailingLogs",
        "MinQuorum",
        "ServerStabilizationTime",
        "RedundancyZoneTag",
        "DisableUpgradeMigration",
        "UpgradeVersionTag",
    ] {
        let value = match &c[key] {
            Value::String(s) if key.ends_with("Tag") => format!("{s:?}"),
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        out.push_str(&format!("{key} = {value}\n"));
    }
    out
}

/// `state`'s block: the datacenter's health, then each server.
fn state_text(s: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut out = String::new();
    out.push_str(&format!(
        "Healthy:                      {}\n",
        text(&s["Healthy"])
    ));
    out.push_str(&format!(
        "Failure Tolerance:            {}\n",
        text(&s["FailureTolerance"])
    ));
    out.push_str(&format!(
        "Optimistic Failure Tolerance: {}\n",
        text(&s["OptimisticFailureTolerance"])
    ));
    out.push_str(&format!(
        "Leader:                       {}\n",
        text(&s["Leader"])
    ));
    out.push_str("Voters:\n");
    for v in s["Voters"].as_array().into_iter().flatten() {
        out.push_str(&format!("   {}\n", text(v)));
    }
    out.push_str("\nServers:\n");
    for (id, server) in s["Servers"].as_object().into_iter().flatten() {
        out.push_str(&format!("   {id}\n"));
        for (label, key) in [
            ("Name", "Name"),
            ("Address", "Address"),
            ("Version", "Version"),
            ("Status", "Status"),
            ("Node Type", "NodeType"),
            ("Node Status", "NodeStatus"),
            ("Healthy", "Healthy"),
            ("Last Contact", "LastContact"),
            ("Last Term", "LastTerm"),
            ("Last Index", "LastIndex"),
            ("Stable Since", "StableSince"),
        ] {
            out.push_str(&format!(
                "      {:<16} {}\n",
                format!("{label}:"),
                text(&server[key])
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_print_as_consul_prints_them() {
        let c = serde_json::json!({"CleanupDeadServers": true, "LastContactThreshold": "200ms",
            "MaxTrailingLogs": 250, "MinQuorum": 0, "ServerStabilizationTime": "10s",
            "RedundancyZoneTag": "", "DisableUpgradeMigration": false, "UpgradeVersionTag": ""});
        assert_eq!(
            config_text(&c),
            "CleanupDeadServers = true\nLastContactThreshold = 200ms\nMaxTrailingLogs = 250\n\
             MinQuorum = 0\nServerStabilizationTime = 10s\nRedundancyZoneTag = \"\"\n\
             DisableUpgradeMigration = false\nUpgradeVersionTag = \"\"\n"
        );
    }
}
