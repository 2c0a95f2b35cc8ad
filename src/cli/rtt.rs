//! `proconsul rtt [-wan] NODE1 [NODE2]`: the round-trip time two nodes' network
//! coordinates estimate, as Consul prints it.

use std::process::ExitCode;

use clap::Args;
use gossip::swim::coordinate::Coordinate;
use serde::Deserialize;

use super::ClientArgs;

#[derive(Args, Debug)]
pub struct RttArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Uses WAN coordinates (servers, named node.datacenter)
    #[arg(long)]
    pub wan: bool,
    /// The first node
    pub node1: String,
    /// The second node (default: the agent's own)
    pub node2: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeCoord {
    node: String,
    coord: Coordinate,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DatacenterCoords {
    coordinates: Vec<NodeCoord>,
}

pub async fn run(args: RttArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let coords: Vec<NodeCoord> = if args.wan {
        let body = client.get("/v1/coordinate/datacenters").await?;
        let dcs: Vec<DatacenterCoords> = serde_json::from_str(&body)?;
        dcs.into_iter().flat_map(|d| d.coordinates).collect()
    } else {
        let body = client.get("/v1/coordinate/nodes").await?;
        serde_json::from_str(&body)?
    };
    let node2 = match args.node2 {
        Some(n) => n,
        None => {
            let body = client.get("/v1/agent/self").await?;
            let me: serde_json::Value = serde_json::from_str(&body)?;
            let name = me["Config"]["NodeName"].as_str().unwrap_or_default();
            if args.wan {
                let dc = me["Config"]["Datacenter"].as_str().unwrap_or_default();
                format!("{name}.{dc}")
            } else {
                name.to_owned()
            }
        }
    };
    let find = |name: &str| {
        coords
            .iter()
            .find(|c| c.node == name)
            .map(|c| &c.coord)
            .ok_or_else(|| anyhow::anyhow!("Could not find a coordinate for node {name:?}"))
    };
    let (a, b) = (find(&args.node1)?, find(&node2)?);
    println!(
        "Estimated {} <-> {} rtt: {:.3} ms (using {} coordinates)",
        args.node1,
        node2,
        a.distance(b) * 1000.0,
        if args.wan { "WAN" } else { "LAN" }
    );
    Ok(ExitCode::SUCCESS)
}
