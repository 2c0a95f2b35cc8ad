//! Asks another datacenter's catalog through a local agent, with the typed client.
//!
//! ```text
//! cargo run --example query_other_dc -- 127.0.0.1:8500 dc2          # nodes and services
//! cargo run --example query_other_dc -- 127.0.0.1:8500 dc2 web      # and web's healthy instances
//! ```
//!
//! The agent at the given address forwards each question (`?dc=dc2`) over the WAN to a
//! server of that datacenter, nearest first, and returns its answer; a client agent
//! sends it through a server of its own datacenter. Since the client speaks Consul's
//! HTTP API and JSON, the agent may be a Consul agent too.
//!
//! A datacenter the agent has never heard of is Consul's `No path to datacenter`
//! (HTTP 500); the program says so and exits with status 1.

// An example program reports to its user on stdout.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use proconsul::client::{AgentClient, ClientError, QueryOptions};

const USAGE: &str = "usage: query_other_dc AGENT_HTTP_ADDR DATACENTER [SERVICE]";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, dc, service) = match args.as_slice() {
        [addr, dc] => (addr, dc, None),
        [addr, dc, service] => (addr, dc, Some(service.as_str())),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let agent = match AgentClient::new(addr) {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match ask(&agent, dc, service).await {
        Ok(()) => ExitCode::SUCCESS,
        // The agent's text is kept as Consul writes it: scripts and people match on it.
        Err(ClientError::Http { status, message }) if message == "No path to datacenter" => {
            eprintln!(
                "error: the agent at {addr} knows no datacenter {dc:?} ({status} {message}); \
                 check the name, or join that datacenter's servers to the WAN"
            );
            ExitCode::FAILURE
        }
        Err(ClientError::Http { message, .. })
            if message == "Remote DC has no server currently reachable" =>
        {
            eprintln!("error: none of {dc}'s servers answered in time ({message}); retry later");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints what datacenter `dc` holds: its nodes, its services and, if `service` is
/// given, that service's healthy instances.
async fn ask(agent: &AgentClient, dc: &str, service: Option<&str>) -> Result<(), ClientError> {
    // The datacenters the agent knows, nearest first (its own among them).
    let known = agent.datacenters().await?;
    println!("the agent knows: {}", known.join(", "));

    // Every read names the datacenter; `stale` lets any of its servers answer, so the
    // answer comes from the nearest one even while that datacenter elects a leader.
    let in_dc = QueryOptions::in_dc(dc).stale();
    let nodes = agent.catalog_nodes(&in_dc).await?;
    println!(
        "{dc}: {} nodes (catalog index {})",
        nodes.value.len(),
        nodes.meta.index
    );
    for node in &nodes.value {
        println!("  {} {}", node.node, node.address);
    }
    let services = agent.catalog_services(&in_dc).await?;
    println!("{dc}: {} services", services.value.len());
    for (name, tags) in &services.value {
        println!("  {name} {tags:?}");
    }
    if let Some(service) = service {
        let healthy = agent.health_service(service, true, &in_dc).await?;
        println!(
            "{dc}: {} healthy instances of {service}",
            healthy.value.len()
        );
        for entry in &healthy.value {
            println!(
                "  {} on {} at {}:{}",
                entry.service.id,
                entry.node.node,
                entry.address(),
                entry.service.port
            );
        }
    }
    Ok(())
}
