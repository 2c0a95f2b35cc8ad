//! `proconsul operator raft list-peers|remove-peer`, `snapshot save|restore` and `info`.

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
    let OperatorCommand::Raft { command } = command;
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

/// `info`: the agent's figures by section, as Consul prints them.
pub async fn info(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let body = args.client()?.get("/v1/agent/self").await?;
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
            let v = v
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            println!("\t{k} = {v}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
