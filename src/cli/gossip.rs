//! `proconsul join`, `force-leave`, `keygen` and `keyring`: the LAN pool and its keys.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use proconsul::client::encode_segment;
use serde::Deserialize;

use super::ClientArgs;

#[derive(Args, Debug)]
pub struct JoinArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Joins the WAN pool of servers (federation)
    #[arg(long)]
    pub wan: bool,
    /// Addresses of agents to join (`host[:port]`)
    #[arg(required = true)]
    pub addrs: Vec<String>,
}

/// `join ADDR…`: asks the agent to join each address; exit 1 when none worked.
pub async fn join(args: JoinArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut joined = 0;
    for addr in &args.addrs {
        let mut path = format!("/v1/agent/join/{}", encode_segment(addr));
        if args.wan {
            path.push_str("?wan=1");
        }
        let r = client.call(Method::PUT, &path, None).await?;
        if r.status == 200 {
            joined += 1;
        } else {
            eprintln!("Error joining address '{addr}': {}", r.body.trim());
        }
    }
    if joined == 0 {
        eprintln!("Failed to join any nodes.");
        return Ok(ExitCode::from(1));
    }
    println!("Successfully joined cluster by contacting {joined} nodes.");
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ForceLeaveArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Removes the node from the member list at once instead of marking it left
    #[arg(long)]
    pub prune: bool,
    /// The node is a member of the WAN pool (`node.dc`)
    #[arg(long)]
    pub wan: bool,
    /// The node to remove
    pub node: String,
}

/// `force-leave [-prune] NODE`: silent on success, as Consul.
pub async fn force_leave(args: ForceLeaveArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut query = Vec::new();
    if args.prune {
        query.push("prune=1");
    }
    if args.wan {
        query.push("wan=1");
    }
    let mut path = format!("/v1/agent/force-leave/{}", encode_segment(&args.node));
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let r = client.call(Method::PUT, &path, None).await?;
    if r.status != 200 {
        eprintln!("Error force leaving: {}", r.body.trim());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `keygen`: a new 32-byte gossip key in base64.
pub fn keygen() -> ExitCode {
    println!("{}", gossip::keyring::Key::generate().to_base64());
    ExitCode::SUCCESS
}

#[derive(Args, Debug)]
pub struct KeyringArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Lists the keys installed on every member
    #[arg(long)]
    pub list: bool,
    /// Lists only the primary keys
    #[arg(long = "list-primary")]
    pub list_primary: bool,
    /// Installs a key on every member
    #[arg(long)]
    pub install: Option<String>,
    /// Makes an installed key the primary everywhere
    #[arg(long = "use")]
    pub use_key: Option<String>,
    /// Removes a key everywhere (not the primary)
    #[arg(long)]
    pub remove: Option<String>,
    /// Asks only the local datacenter's pools (list only)
    #[arg(long = "local-only")]
    pub local_only: bool,
    /// Accepted for Consul compatibility; answers are not relayed
    #[arg(long = "relay-factor", default_value_t = 0)]
    pub relay_factor: u8,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PoolKeys {
    #[serde(rename = "WAN")]
    wan: bool,
    datacenter: String,
    #[serde(default)]
    messages: BTreeMap<String, String>,
    keys: BTreeMap<String, usize>,
    #[serde(default)]
    primary_keys: BTreeMap<String, usize>,
    num_nodes: usize,
}

/// `keyring -list|-list-primary|-install K|-use K|-remove K`.
pub async fn keyring(args: KeyringArgs) -> anyhow::Result<ExitCode> {
    let actions = [
        args.list,
        args.list_primary,
        args.install.is_some(),
        args.use_key.is_some(),
        args.remove.is_some(),
    ]
    .iter()
    .filter(|a| **a)
    .count();
    if actions > 1 {
        eprintln!("Only a single action is allowed");
        return Ok(ExitCode::from(1));
    }
    if actions == 0 {
        eprintln!(
            "Usage: proconsul keyring [-list|-list-primary|-install KEY|-use KEY|-remove KEY]"
        );
        return Ok(ExitCode::from(1));
    }
    if args.relay_factor > 5 {
        eprintln!("Error: Relay factor must be in range: [0, 5]");
        return Ok(ExitCode::from(1));
    }
    let client = args.client.client()?;
    if args.list || args.list_primary {
        println!("==> Gathering installed encryption keys...");
        let mut path = "/v1/operator/keyring".to_string();
        if args.local_only {
            path.push_str("?local-only=1");
        }
        let r = client.call(Method::GET, &path, None).await?;
        if r.status != 200 {
            eprintln!("error: {}", r.body.trim());
            return Ok(ExitCode::from(1));
        }
        let pools: Vec<PoolKeys> = serde_json::from_str(&r.body)?;
        let mut complete = true;
        for pool in &pools {
            println!();
            if pool.wan {
                println!("WAN:");
            } else {
                println!("{} (LAN):", pool.datacenter);
            }
            let keys = if args.list_primary {
                &pool.primary_keys
            } else {
                &pool.keys
            };
            for (key, count) in keys {
                println!("  {key} [{count}/{}]", pool.num_nodes);
            }
            // Unlike Consul, a silent member does not hide what the others said.
            for (node, message) in &pool.messages {
                complete = false;
                println!("  error from {node}: {message}");
            }
        }
        return Ok(if complete {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let (method, key, what) = if let Some(k) = &args.install {
        (Method::POST, k, "Installing new gossip encryption key...")
    } else if let Some(k) = &args.use_key {
        (Method::PUT, k, "Changing primary gossip encryption key...")
    } else if let Some(k) = &args.remove {
        (Method::DELETE, k, "Removing gossip encryption key...")
    } else {
        unreachable!("one action was checked above")
    };
    if args.local_only {
        eprintln!("error: local-only can only be set for list requests");
        return Ok(ExitCode::from(1));
    }
    println!("==> {what}");
    let body = serde_json::json!({ "Key": key }).to_string();
    let r = client
        .call(method, "/v1/operator/keyring", Some(body))
        .await?;
    if r.status != 200 {
        eprintln!("error: {}", r.body.trim());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
