//! Embeds a proconsul agent in a Rust program.
//!
//! The program starts a development agent (`-dev`: a single in-memory server that
//! elects itself), registers a service with it over its HTTP API, reads the service
//! back from the catalog and shuts the agent down. Every port is chosen by the OS
//! unless an HTTP port is given:
//!
//! ```text
//! cargo run --example embed_agent            # HTTP on a free port
//! cargo run --example embed_agent -- 8500    # HTTP on 8500, as `proconsul agent -dev`
//! ```
//!
//! While it runs, the agent is a whole Consul-compatible agent: `dig`, `curl` or the
//! `proconsul` CLI can talk to it. Set `RUST_LOG=info` to see its log.

// An example program reports to its user on stdout.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use anyhow::{Context as _, bail};
use proconsul::client::{AgentClient, QueryOptions};
use proconsul::config::Sources;
use proconsul::config::raw::{RawConfig, RawPorts};
use proconsul::{Agent, AgentConfig};
use tokio::time::Instant;

/// How long the example waits for the agent to elect itself leader and for the
/// service to reach the catalog; a dev agent needs well under a second for each.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Libraries log through `tracing`; the embedding program chooses where it goes.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let http_port: i64 = match std::env::args().nth(1) {
        Some(port) => port.parse().context("the argument is an HTTP port")?,
        None => 0,
    };

    // The configuration goes through the same layers as `proconsul agent -dev
    // -http-port=…`: the -dev preset, then these values as if they were flags.
    // Port 0 asks the OS for a free port; the agent reports the one it bound.
    let sources = Sources {
        dev: true,
        flags: RawConfig {
            node_name: Some("embedded".into()),
            ports: Some(RawPorts {
                http: Some(http_port),
                dns: Some(0),
                server: Some(0),
                serf_lan: Some(0),
                ..RawPorts::default()
            }),
            ..RawConfig::default()
        },
        ..Sources::default()
    };
    let config = AgentConfig::load(sources)?;
    let agent = Agent::start(config).await?;
    let http = agent.http_addr().context("the HTTP API is enabled")?;
    println!("agent started: HTTP on {http}");

    // Run the steps, then shut the agent down whatever they returned: shutdown leaves
    // the pool and stops every task the agent started.
    let steps = register_and_query(&AgentClient::new(&http.to_string())?).await;
    agent.shutdown().await;
    println!("agent stopped");
    steps
}

/// Registers `web` with the agent and reads it back from the catalog.
async fn register_and_query(client: &AgentClient) -> anyhow::Result<()> {
    let leader = wait_for_leader(client).await?;
    println!("leader elected: {leader}");

    // The agent's own services are registered at /v1/agent/service/register (the typed
    // client covers the catalog; the raw client under it reaches any endpoint). The
    // agent then syncs the service to the catalog, as Consul's anti-entropy does.
    let service = serde_json::json!({ "Name": "web", "ID": "web-1", "Port": 8080, "Tags": ["v1"] });
    client
        .http()
        .put("/v1/agent/service/register", Some(service.to_string()))
        .await?;
    println!("registered web-1");

    // Wait for the sync with a blocking query: each read returns at once with the
    // catalog's index, and the next one waits until the index passes it.
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut options = QueryOptions::default();
    loop {
        let healthy = client.health_service("web", true, &options).await?;
        if let Some(entry) = healthy.value.first() {
            println!(
                "web is served by {} at {}:{} with tags {:?} (catalog index {})",
                entry.node.node,
                entry.address(),
                entry.service.port,
                entry.service.tags,
                healthy.meta.index
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("web did not reach the catalog within {READY_TIMEOUT:?}");
        }
        options = QueryOptions::default().blocking(healthy.meta.index, Duration::from_secs(1));
    }
}

/// Waits until the agent's datacenter has a Raft leader, which catalog reads and writes
/// need. Before the election the agent answers with no leader (or an error), so this
/// asks again a little later.
async fn wait_for_leader(client: &AgentClient) -> anyhow::Result<String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let last = match client.leader(None).await {
            Ok(leader) if !leader.is_empty() => return Ok(leader),
            Ok(_) => "no leader yet".to_owned(),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!("no leader within {READY_TIMEOUT:?} (last answer: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
