//! `proconsul operator raft list-peers|remove-peer`, `snapshot save|restore` and `info`
//! (`operator autopilot` is in `autopilot`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::Value;

use super::{ClientArgs, columns};
use proconsul::client::encode;

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Raft operations
    Raft {
        #[command(subcommand)]
        command: RaftCommand,
    },
    /// Autopilot's settings and the servers' health
    Autopilot {
        #[command(subcommand)]
        command: super::autopilot::AutopilotCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum RaftCommand {
    /// Lists the servers of the Raft configuration
    #[command(name = "list-peers")]
    ListPeers(StaleArgs),
    /// Removes a server that is gone for good from the Raft configuration
    #[command(name = "remove-peer")]
    RemovePeer(RemovePeerArgs),
}

#[derive(Args, Debug)]
pub struct RemovePeerArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The server's ID, as list-peers shows it
    #[arg(long, conflicts_with = "address")]
    pub id: Option<String>,
    /// The server's RPC address, IP:port, as list-peers shows it
    #[arg(long)]
    pub address: Option<String>,
}

#[derive(Args, Debug)]
pub struct StaleArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Reads from any server, even without a leader
    #[arg(long)]
    pub stale: bool,
}

pub async fn operator(command: OperatorCommand) -> anyhow::Result<ExitCode> {
    let command = match command {
        OperatorCommand::Raft { command } => command,
        OperatorCommand::Autopilot { command } => return super::autopilot::run(command).await,
    };
    let args = match command {
        RaftCommand::ListPeers(args) => args,
        RaftCommand::RemovePeer(args) => return remove_peer(args).await,
    };
    let path = if args.stale {
        "/v1/operator/raft/configuration?stale"
    } else {
        "/v1/operator/raft/configuration"
    };
    let body = args.client.client()?.get(path).await?;
    let config: Value = serde_json::from_str(&body)?;
    let mut rows = vec![
        ["Node", "ID", "Address", "State", "Voter", "RaftProtocol"]
            .map(String::from)
            .to_vec(),
    ];
    for s in config["Servers"].as_array().into_iter().flatten() {
        let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
        let state = if s["Leader"] == true {
            "leader"
        } else {
            "follower"
        };
        rows.push(vec![
            text("Node"),
            text("ID"),
            text("Address"),
            state.into(),
            (s["Voter"] == true).to_string(),
            text("ProtocolVersion"),
        ]);
    }
    print!("{}", columns(&rows));
    Ok(ExitCode::SUCCESS)
}

/// `operator raft remove-peer -id=ID | -address=IP:PORT`.
async fn remove_peer(args: RemovePeerArgs) -> anyhow::Result<ExitCode> {
    let (key, value) = match (&args.id, &args.address) {
        (Some(id), _) => ("id", id),
        (None, Some(address)) => ("address", address),
        (None, None) => {
            eprintln!("Error removing peer: missing peer address or id: use -id or -address");
            return Ok(ExitCode::from(1));
        }
    };
    let path = format!("/v1/operator/raft/peer?{key}={}", encode(value));
    let r = args
        .client
        .client()?
        .call(Method::DELETE, &path, None)
        .await?;
    if r.status != 200 {
        eprintln!(
            "Error removing peer: Unexpected response code: {} ({})",
            r.status,
            r.body.trim()
        );
        return Ok(ExitCode::from(1));
    }
    println!("Removed peer with {key} {value:?}");
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Saves the catalog to a file
    Save(SnapshotArgs),
    /// Replaces the catalog with the one in a file
    Restore(SnapshotArgs),
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Reads from any server (save only)
    #[arg(long)]
    pub stale: bool,
    /// The snapshot file
    pub file: PathBuf,
}

pub async fn snapshot(command: SnapshotCommand) -> anyhow::Result<ExitCode> {
    match command {
        SnapshotCommand::Save(args) => {
            let path = if args.stale {
                "/v1/snapshot?stale"
            } else {
                "/v1/snapshot"
            };
            let r = args.client.client()?.call(Method::GET, path, None).await?;
            if r.status != 200 {
                eprintln!("Error saving snapshot: {}", r.body.trim());
                return Ok(ExitCode::from(1));
            }
            // Check that what arrived is a whole snapshot before writing it.
            serde_json::from_str::<Value>(&r.body)
                .map_err(|e| anyhow::anyhow!("the snapshot did not verify: {e}"))?;
            let tmp = args.file.with_extension("tmp");
            std::fs::write(&tmp, r.body.as_bytes())?;
            std::fs::rename(&tmp, &args.file)?;
            let index = r.header("x-consul-index").unwrap_or("0");
            println!("Saved and verified snapshot to index {index}");
        }
        SnapshotCommand::Restore(args) => {
            let body = std::fs::read_to_string(&args.file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", args.file.display()))?;
            let r = args
                .client
                .client()?
                .call(Method::PUT, "/v1/snapshot", Some(body))
                .await?;
            if r.status != 200 {
                eprintln!("Error restoring snapshot: {}", r.body.trim());
                return Ok(ExitCode::from(1));
            }
            println!("Restored snapshot");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `info`: the agent's figures by section, as Consul prints them, and on a server that
/// copies another datacenter's keys, where that copy stands.
pub async fn info(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let client = args.client()?;
    let body = client.get("/v1/agent/self").await?;
    let me: Value = serde_json::from_str(&body)?;
    let Some(stats) = me["Stats"].as_object() else {
        anyhow::bail!("the agent sent no Stats");
    };
    for (section, values) in stats {
        let Some(values) = values.as_object() else {
            continue;
        };
        println!("{section}:");
        for (k, v) in values {
            println!("\t{k} = {}", info_value(v));
        }
    }
    // Not part of Consul's API: an agent without it (or a Consul agent) has no section.
    if let Ok(body) = client.get("/v1/operator/kv-replication").await
        && let Ok(status) = serde_json::from_str::<Value>(&body)
    {
        print!("{}", replication_sections(&status));
    }
    Ok(ExitCode::SUCCESS)
}

/// A value of `info`: strings as they are, lists joined with commas, nothing for null.
fn info_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(info_value).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// What `/v1/operator/kv-replication` answered, as `info` sections: `kv_replication:`
/// with the source and the prefixes, then one `kv_replication "PREFIX":` per prefix with
/// its figures (snake_case names, as Consul's `info` keys are). Nothing when replication
/// is not configured.
fn replication_sections(status: &Value) -> String {
    use std::fmt::Write;
    if status["Enabled"] != Value::Bool(true) {
        return String::new();
    }
    let prefixes = status["Prefixes"].as_array().cloned().unwrap_or_default();
    let names: Vec<Value> = prefixes.iter().map(|p| p["Prefix"].clone()).collect();
    let mut out = String::from("kv_replication:\n");
    for (k, v) in [
        ("exclude", &status["Exclude"]),
        ("prefixes", &Value::Array(names)),
        ("source_datacenter", &status["SourceDatacenter"]),
    ] {
        let _ = writeln!(out, "\t{k} = {}", info_value(v));
    }
    for p in &prefixes {
        let Some(fields) = p.as_object() else {
            continue;
        };
        let _ = writeln!(out, "kv_replication {:?}:", info_value(&p["Prefix"]));
        let mut lines: Vec<(String, String)> = fields
            .iter()
            .filter(|(k, _)| *k != "Prefix")
            .map(|(k, v)| (snake_case(k), info_value(v)))
            .collect();
        lines.sort();
        for (k, v) in lines {
            let _ = writeln!(out, "\t{k} = {v}");
        }
    }
    out
}

/// `ReplicatedIndex` → `replicated_index`.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replication_is_shown_as_info_sections() {
        let status = json!({
            "Enabled": true,
            "SourceDatacenter": "dc1",
            "Exclude": ["config/local/"],
            "Prefixes": [
                {"Prefix": "config/", "ReplicatedIndex": 42, "Keys": 3, "Writes": 5,
                 "LastSuccess": "2026-12-03T12:13:20Z", "LastError": null,
                 "LastErrorAt": null, "Running": true},
                {"Prefix": "", "ReplicatedIndex": 0, "Keys": 0, "Writes": 0,
                 "LastSuccess": null, "LastError": "reading \"\" in dc1: timeout",
                 "LastErrorAt": "2026-12-03T12:13:21Z", "Running": true},
            ],
        });
        assert_eq!(
            replication_sections(&status),
            "kv_replication:\n\
             \texclude = config/local/\n\
             \tprefixes = config/,\n\
             \tsource_datacenter = dc1\n\
             kv_replication \"config/\":\n\
             \tkeys = 3\n\
             \tlast_error = \n\
             \tlast_error_at = \n\
             \tlast_success = 2026-12-03T12:13:20Z\n\
             \treplicated_index = 42\n\
             \trunning = true\n\
             \twrites = 5\n\
             kv_replication \"\":\n\
             \tkeys = 0\n\
             \tlast_error = reading \"\" in dc1: timeout\n\
             \tlast_error_at = 2026-12-03T12:13:21Z\n\
             \tlast_success = \n\
             \treplicated_index = 0\n\
             \trunning = true\n\
             \twrites = 0\n"
        );
        assert_eq!(replication_sections(&json!({"Enabled": false})), "");
        assert_eq!(snake_case("LastErrorAt"), "last_error_at");
    }
}
