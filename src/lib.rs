//! # proconsul
//!
//! A Consul-compatible service catalog agent. This crate assembles one agent from the
//! workspace's layers and is what the `proconsul` binary runs; a Rust program can embed
//! an agent the same way:
//!
//! ```text
//!   config files + flags ─▶ AgentConfig ─▶ Agent::start, which assembles
//!     api (HTTP :8500, DNS :8600) ─▶ gateway ─▶ lan (gossip, Raft catalog, local services, checks)
//!                                      └──────▶ wan (other datacenters, QUIC :8302)
//! ```
//!
//! - [`config`]: Consul's configuration (JSON or HCL), layered and checked.
//! - [`Agent`]: start order, shutdown order, reloads.
//! - [`client`]: a typed client of an agent's HTTP API that asks any datacenter; the
//!   CLI verbs use it, and so can other programs.
//! - [`watch`]: Consul's watches, for `proconsul watch` and the agent's `watches`.
//! - [`logging`]: the agent's log in Consul's line shapes, on stdout, in a rotated file,
//!   and live to `/v1/agent/monitor` readers.
//!
//! `examples/embed_agent.rs` starts an agent inside a program, registers a service and
//! reads it back; `examples/query_other_dc.rs` asks another datacenter with [`client`].

#![warn(missing_docs)]

mod agent;
pub mod client;
pub mod config;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
mod maintenance;
mod telemetry;
pub mod watch;

pub use agent::{Agent, resolve_bind};
pub use config::AgentConfig;

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The protocol line `proconsul version` prints, as Consul's.
pub const PROTOCOL_LINE: &str = "Protocol 2 spoken by default, understands 2 to 3 (agent will automatically use protocol >2 when speaking to compatible agents)";
