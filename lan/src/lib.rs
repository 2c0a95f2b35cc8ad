//! # proconsul-lan: one datacenter
//!
//! This crate owns everything that happens inside one datacenter: the service catalog
//! and its Raft replication, this agent's own services and health checks, the
//! anti-entropy sync between the two, and the leader's upkeep of catalog health from
//! pool membership.
//!
//! ```text
//!   HTTP/DNS (api) ─▶ gateway ─▶ Lan::read ──barrier──▶ Catalog (in memory) ◀── apply ── Raft log
//!                              Lan::write ───────────▶ Raft (openraft) ─────────────────┘
//!   config, /v1/agent ─▶ Local ──checks run here──▶ run_sync (anti-entropy) ─▶ Lan::write
//!   members ─▶ leader::run (on the leader) ─▶ serfHealth, `consul` service ─▶ Lan::write
//! ```
//!
//! Main types: [`Lan`] (the handle), [`Config`], [`catalog::Catalog`] and
//! [`catalog::Query`]/[`catalog::Answer`], [`Local`], [`Member`].
//!
//! Invariants: this crate never opens an HTTP or DNS socket and knows other datacenters
//! only by name. Every write carries a deadline; every task it starts is tracked and
//! stops on the shutdown token.

#![warn(missing_docs)]

pub mod catalog;
mod checks;
pub mod duration;
pub mod gossip;
pub mod keyring;
mod leader;
mod local;
mod member;
mod raft;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use catalog::Datacenter;
use catalog::{Answer, Catalog, Command, Node, Query};
pub use checks::CheckKind;
pub use local::{CHECK_OUTPUT_LIMIT, CHECK_OUTPUT_MAX, CheckDefinition, Local, LocalError, Source};
pub use member::{Member, MemberStatus};
pub use raft::{
    Consistency, RPC_HOLD_TIMEOUT, RaftStartError, RaftStatus, RaftTiming, ReadError, ReadMeta,
    SNAPSHOT_THRESHOLD, ServerNode, Storage, WriteError,
};

/// The protocol version this agent speaks in member tags (`vsn`), as Consul's.
pub const PROTOCOL_VERSION: u8 = 2;

/// Everything the datacenter layer needs to start. Built by the agent from its config.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name.
    pub node_name: String,
    /// This node's UUID.
    pub node_id: String,
    /// This node's datacenter.
    pub datacenter: Datacenter,
    /// Bootstrap Raft with this server as the only voter when it has no Raft state.
    pub bootstrap: bool,
    /// `bootstrap_expect`, shown in member tags (0 when not set).
    pub bootstrap_expect: u32,
    /// The address other agents and DNS answers use for this node.
    pub advertise: IpAddr,
    /// The address other datacenters use for this node.
    pub advertise_wan: IpAddr,
    /// Server RPC port.
    pub server_port: u16,
    /// LAN gossip port.
    pub serf_lan_port: u16,
    /// WAN gossip port.
    pub serf_wan_port: u16,
    /// User node metadata.
    pub node_meta: BTreeMap<String, String>,
    /// Allow script checks.
    pub enable_script_checks: bool,
    /// Raft timers.
    pub raft: RaftTiming,
    /// Where Raft keeps its state.
    pub storage: Storage,
    /// This build's version (`0.1.0`), for tags and node meta.
    pub version: String,
}

/// Options of a read.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    /// Consistency mode.
    pub consistency: Consistency,
    /// Blocking query: answer once the result's index exceeds this (0 = at once).
    pub min_index: u64,
    /// When a blocking query answers anyway, and the budget of any consistency check.
    pub deadline: Instant,
}

/// An answer with what Consul reports in its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryResult {
    /// The answer.
    pub answer: Answer,
    /// `X-Consul-Index`.
    pub index: u64,
    /// `X-Consul-KnownLeader` and `X-Consul-LastContact`.
    pub meta: ReadMeta,
}

/// The datacenter could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Raft failed to start.
    #[error(transparent)]
    Raft(#[from] RaftStartError),
}

struct Inner {
    config: Config,
    consensus: raft::Consensus,
    catalog: Catalog,
    local: Local,
    members: watch::Sender<Arc<Vec<Member>>>,
}

/// Handle to this agent's datacenter layer. Cheap to clone.
#[derive(Clone)]
pub struct Lan {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Lan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lan")
            .field("node", &self.inner.config.node_name)
            .field("datacenter", &self.inner.config.datacenter)
            .finish_non_exhaustive()
    }
}

/// Raft's numeric ID for a server, from its node UUID (stable across restarts).
fn raft_id(node_id: &str) -> u64 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    node_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Lan {
    /// Starts the datacenter layer of a server: Raft (bootstrapping it when configured),
    /// the anti-entropy sync and the leader's reconcile loop. Tasks run on `tasks` until
    /// `shutdown` is cancelled.
    pub async fn start(
        config: Config,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Lan, StartError> {
        let rpc_addr = std::net::SocketAddr::new(config.advertise, config.server_port);
        let (consensus, catalog) = raft::Consensus::start(
            raft_id(&config.node_id),
            ServerNode {
                name: config.node_name.clone(),
                rpc_addr: rpc_addr.to_string(),
            },
            config.bootstrap,
            config.raft,
            &config.storage,
        )
        .await?;
        let runner = checks::Runner::new(
            tasks.clone(),
            shutdown.child_token(),
            config.enable_script_checks,
        );
        let local = Local::new(own_node(&config), runner);
        let (members, members_rx) = watch::channel(Arc::new(vec![own_member(&config)]));
        tasks.spawn(local::run_sync(
            local.clone(),
            catalog.clone(),
            consensus.clone(),
            shutdown.child_token(),
        ));
        tasks.spawn(leader::run(
            consensus.clone(),
            config.datacenter.to_string(),
            members_rx,
            shutdown.child_token(),
        ));
        tracing::info!(node = %config.node_name, dc = %config.datacenter, "datacenter layer started");
        Ok(Lan {
            inner: Arc::new(Inner {
                config,
                consensus,
                catalog,
                local,
                members,
            }),
        })
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.inner.config.node_name
    }

    /// This node's datacenter.
    pub fn datacenter(&self) -> &Datacenter {
        &self.inner.config.datacenter
    }

    /// The configuration the layer runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Reads the catalog in the mode `options` asks for, blocking if asked.
    pub async fn read(
        &self,
        query: &Query,
        options: ReadOptions,
    ) -> Result<QueryResult, ReadError> {
        let meta = self
            .inner
            .consensus
            .read_barrier(options.consistency, options.deadline)
            .await?;
        let (answer, index) = self
            .inner
            .catalog
            .query_blocking(query, options.min_index, options.deadline)
            .await;
        Ok(QueryResult {
            answer,
            index,
            meta,
        })
    }

    /// Reads the local copy of the catalog at once, whatever the leader's state (DNS's
    /// default `allow_stale`).
    pub fn read_stale(&self, query: &Query) -> (Answer, u64) {
        self.inner.catalog.query(query)
    }

    /// The newest catalog index: any change to the catalog changes it.
    pub fn catalog_index(&self) -> u64 {
        self.inner.catalog.index()
    }

    /// Writes to the catalog; returns the Raft index the change was applied at.
    pub async fn write(&self, command: Command, deadline: Instant) -> Result<u64, WriteError> {
        self.inner.consensus.write(command, deadline).await
    }

    /// This agent's own services and checks.
    pub fn local(&self) -> &Local {
        &self.inner.local
    }

    /// The members of the pool.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.inner.members.borrow().clone()
    }

    /// This server's view of Raft.
    pub fn raft_status(&self) -> RaftStatus {
        self.inner.consensus.status()
    }

    /// Marks this agent as leaving the pool. A single agent has no one to tell; its
    /// catalog goes away with it.
    pub fn leave(&self) {
        self.inner.members.send_modify(|list| {
            let mut updated = (**list).clone();
            for m in updated.iter_mut() {
                if m.name == self.inner.config.node_name {
                    m.status = MemberStatus::Left;
                }
            }
            *list = Arc::new(updated);
        });
    }

    /// Stops Raft. Call after the shutdown token was cancelled and tasks have stopped.
    pub async fn shutdown(&self) {
        self.inner.consensus.shutdown().await;
    }
}

fn own_node(config: &Config) -> Node {
    let lan = config.advertise.to_string();
    let wan = config.advertise_wan.to_string();
    let family = |ip: &IpAddr| if ip.is_ipv4() { "ipv4" } else { "ipv6" };
    let mut tagged = BTreeMap::new();
    tagged.insert("lan".to_string(), lan.clone());
    tagged.insert(format!("lan_{}", family(&config.advertise)), lan.clone());
    tagged.insert("wan".to_string(), wan.clone());
    tagged.insert(format!("wan_{}", family(&config.advertise_wan)), wan);
    let mut meta = config.node_meta.clone();
    meta.insert("consul-network-segment".into(), String::new());
    meta.insert("consul-version".into(), config.version.clone());
    Node {
        id: config.node_id.clone(),
        name: config.node_name.clone(),
        address: lan,
        datacenter: config.datacenter.to_string(),
        tagged_addresses: tagged,
        meta,
        create_index: 0,
        modify_index: 0,
    }
}

fn own_member(config: &Config) -> Member {
    let mut tags = BTreeMap::new();
    tags.insert("role".to_string(), "consul".to_string());
    tags.insert("dc".into(), config.datacenter.to_string());
    tags.insert("port".into(), config.server_port.to_string());
    tags.insert("id".into(), config.node_id.clone());
    tags.insert("vsn".into(), PROTOCOL_VERSION.to_string());
    tags.insert("vsn_min".into(), "2".into());
    tags.insert("vsn_max".into(), "3".into());
    tags.insert("raft_vsn".into(), "3".into());
    tags.insert("build".into(), format!("{}:proconsul", config.version));
    tags.insert("segment".into(), String::new());
    tags.insert("wan_join_port".into(), config.serf_wan_port.to_string());
    if config.bootstrap_expect > 1 {
        tags.insert("expect".into(), config.bootstrap_expect.to_string());
    } else {
        tags.insert("bootstrap".into(), "1".into());
    }
    Member {
        name: config.node_name.clone(),
        addr: config.advertise,
        port: config.serf_lan_port,
        tags,
        status: MemberStatus::Alive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ids_are_stable_and_distinct() {
        let a = raft_id("6a1f4b3e-0000-4000-8000-000000000001");
        assert_eq!(a, raft_id("6a1f4b3e-0000-4000-8000-000000000001"));
        assert_ne!(a, raft_id("6a1f4b3e-0000-4000-8000-000000000002"));
    }
}
