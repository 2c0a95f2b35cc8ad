//! `proconsul catalog datacenters|nodes|services`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Deserialize;

use super::{ClientArgs, columns};
use proconsul::client::{encode, encode_segment};

#[derive(Subcommand, Debug)]
pub enum CatalogCommand {
    /// Lists the known datacenters, nearest first
    Datacenters(ClientArgs),
    /// Lists the nodes in the catalog
    Nodes(NodesArgs),
    /// Lists the services in the catalog
    Services(ServicesArgs),
}

#[derive(Args, Debug)]
pub struct NodesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Datacenter to query (default: the agent's)
    #[arg(long)]
    pub datacenter: Option<String>,
    /// Shows full node IDs, tagged addresses and metadata
    #[arg(long)]
    pub detailed: bool,
    /// Only nodes providing this service
    #[arg(long)]
    pub service: Option<String>,
    /// Sorts by estimated round-trip time from this node (`_agent`: the agent's own)
    #[arg(long)]
    pub near: Option<String>,
    /// Only nodes with this metadata, as key:value (repeatable)
    #[arg(long = "node-meta")]
    pub node_meta: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Datacenter to query (default: the agent's)
    #[arg(long)]
    pub datacenter: Option<String>,
    /// Shows the tags of each service
    #[arg(long)]
    pub tags: bool,
    /// Only services on this node
    #[arg(long)]
    pub node: Option<String>,
    /// Only services on nodes with this metadata, as key:value (repeatable)
    #[arg(long = "node-meta")]
    pub node_meta: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(rename = "ID", default)]
    id: String,
    node: String,
    address: String,
    datacenter: String,
    #[serde(default)]
    tagged_addresses: BTreeMap<String, String>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeService {
    service: String,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeServices {
    services: BTreeMap<String, NodeService>,
}

fn query(dc: &Option<String>, node_meta: &[String], near: Option<&str>) -> String {
    let mut params: Vec<String> = Vec::new();
    if let Some(dc) = dc {
        params.push(format!("dc={}", encode(dc)));
    }
    if let Some(near) = near {
        params.push(format!("near={}", encode(near)));
    }
    for m in node_meta {
        params.push(format!("node-meta={}", encode(m)));
    }
    if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    }
}

fn pairs(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(command: CatalogCommand) -> anyhow::Result<ExitCode> {
    match command {
        CatalogCommand::Datacenters(client) => {
            let body = client.client()?.get("/v1/catalog/datacenters").await?;
            let dcs: Vec<String> = serde_json::from_str(&body)?;
            for dc in dcs {
                println!("{dc}");
            }
        }
        CatalogCommand::Nodes(args) => {
            let q = query(&args.datacenter, &args.node_meta, args.near.as_deref());
            let path = match &args.service {
                Some(s) => format!("/v1/catalog/service/{}{q}", encode_segment(s)),
                None => format!("/v1/catalog/nodes{q}"),
            };
            let body = args.client.client()?.get(&path).await?;
            let mut nodes: Vec<Node> = serde_json::from_str(&body)?;
            if args.near.is_none() {
                nodes.sort_by(|a, b| a.node.cmp(&b.node));
            }
            // A node with several instances of the service is listed once, where it
            // first appears (the agent's order under -near).
            let mut seen = std::collections::HashSet::new();
            nodes.retain(|n| seen.insert(n.node.clone()));
            if nodes.is_empty() {
                eprintln!("No nodes match the given query - try expanding your search.");
                return Ok(ExitCode::SUCCESS);
            }
            let mut rows = Vec::new();
            if args.detailed {
                rows.push(
                    ["Node", "ID", "Address", "DC", "TaggedAddresses", "Meta"]
                        .map(String::from)
                        .to_vec(),
                );
                for n in &nodes {
                    rows.push(vec![
                        n.node.clone(),
                        n.id.clone(),
                        n.address.clone(),
                        n.datacenter.clone(),
                        pairs(&n.tagged_addresses),
                        pairs(&n.meta),
                    ]);
                }
            } else {
                rows.push(["Node", "ID", "Address", "DC"].map(String::from).to_vec());
                for n in &nodes {
                    rows.push(vec![
                        n.node.clone(),
                        n.id.chars().take(8).collect(),
                        n.address.clone(),
                        n.datacenter.clone(),
                    ]);
                }
            }
            print!("{}", columns(&rows));
        }
        CatalogCommand::Services(args) => {
            let q = query(&args.datacenter, &args.node_meta, None);
            let client = args.client.client()?;
            if args.node.is_some() && !args.node_meta.is_empty() {
                anyhow::bail!("-node and -node-meta cannot be used together");
            }
            let services: BTreeMap<String, Vec<String>> = match &args.node {
                Some(node) => {
                    let body = client
                        .get(&format!("/v1/catalog/node/{}{q}", encode_segment(node)))
                        .await?;
                    let found: Option<NodeServices> = serde_json::from_str(&body)?;
                    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    for s in found.map(|n| n.services).unwrap_or_default().into_values() {
                        let tags = map.entry(s.service).or_default();
                        tags.extend(s.tags);
                        tags.sort();
                        tags.dedup();
                    }
                    map
                }
                None => {
                    serde_json::from_str(&client.get(&format!("/v1/catalog/services{q}")).await?)?
                }
            };
            if services.is_empty() {
                eprintln!("No services match the given query - try expanding your search.");
                return Ok(ExitCode::SUCCESS);
            }
            if args.tags {
                let rows: Vec<Vec<String>> = services
                    .iter()
                    .map(|(name, tags)| vec![name.clone(), tags.join(",")])
                    .collect();
                print!("{}", columns(&rows));
            } else {
                for name in services.keys() {
                    println!("{name}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
