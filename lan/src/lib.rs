//! # proconsul-lan: one datacenter
//!
//! This crate owns everything that happens inside one datacenter: the service catalog
//! and its Raft replication, this agent's own services and health checks, the
//! anti-entropy sync between the two, and the leader's upkeep of catalog health from
//! pool membership. Its LAN pool runs on crate `proconsul-gossip`.
//!
//! ```text
//!   HTTP/DNS (api) ─▶ gateway ─▶ Lan::read ──barrier──▶ Catalog (in memory) ◀── apply ── Raft log
//!                              Lan::write ───────────▶ Raft (openraft) ─────────────────┘
//!   config, /v1/agent ─▶ Local ──checks run here──▶ run_sync (anti-entropy) ─▶ Lan::write
//!   members ─▶ leader::run (on the leader) ─▶ serfHealth, `consul` service ─▶ Lan::write
//! ```
//!
//! Main types: [`Lan`] (the handle), [`Config`], [`catalog::Catalog`] and
//! [`catalog::Query`]/[`catalog::Answer`], [`Local`].
//!
//! Modules, each importing only those below it (no circles, and none imports the crate
//! root, which assembles them into [`Lan`] and lends itself to them through traits they
//! own: `server::Relays`, `local::Upstream`):
//!
//! ```text
//!   leader ─▶ autopilot ─▶ server ─▶ raft ─▶ rpc ─▶ fair
//!     │                      └─▶ relay    ▲
//!     └─▶ local ─▶ checks                 └── tombstones, session_ttl, token_expiry
//! ```
//!
//! `acl` (who a request's principal is) uses `agent_tokens` (the agent's own tokens,
//! kept in the data dir with token persistence); both stand beside the chain.
//!
//! Invariants: this crate never opens an HTTP or DNS socket and knows other datacenters
//! only by name: what a client agent asks of another datacenter, it hands to a server of
//! its own as a request this crate does not read ([`Lan::relay`], served by the gateway
//! through [`Relay`]). Every write carries a deadline; every task it starts is tracked
//! and stops on the shutdown token.

#![warn(missing_docs)]

pub mod acl;
mod agent_tokens;
pub use acl::{AclConfig, AuthError, DownPolicy, TokenKind, Tokens};
pub use agent_tokens::TOKEN_FILE;
pub use catalog::acl::Caller;
mod autopilot;
mod checks;
pub mod events;
pub mod fair;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod leader;
mod local;
mod raft;
mod relay;
mod rpc;
mod server;
mod session_ttl;
mod token_expiry;
mod tombstones;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use autopilot::DEAD_SERVER_GRACE;
use catalog::{
    Answer, Command, Datacenter, KvReplication, Node, Principal, Query, QueryResult, RaftStatus,
    ReadError, ReadOptions, ServerNode, WriteError, Written, remaining_ms,
};
pub use checks::{CHECK_OUTPUT_LIMIT, CheckKind};
use gossip::{
    Encryption, JoinError, KeyOperation, KeyringReport, Member, MemberStatus, Pool, PoolConfig,
};
pub use local::{
    CHECK_OUTPUT_MAX, CheckDefinition, DEFAULT_NODE_MAINTENANCE_REASON,
    DEFAULT_SERVICE_MAINTENANCE_REASON, Local, LocalError, Maintenance, NODE_MAINTENANCE_CHECK,
    SERVICE_MAINTENANCE_PREFIX, SYNC_INTERVAL, Source,
};
pub use raft::{RPC_HOLD_TIMEOUT, RaftStartError, RaftTiming, SNAPSHOT_THRESHOLD, Storage};
pub use relay::{Opaque, Relaying};
pub use rpc::{DEFAULT_RPC_MAX_CONNS_PER_CLIENT, RpcTls};
use server::FORWARD_MARGIN;
pub use server::{KEYRING_NEEDS_PROOF, RaftPeer};

/// The protocol version this agent speaks in member tags (`vsn`), as Consul's.
pub const PROTOCOL_VERSION: u8 = 2;

/// How long a client agent waits for a server to resolve a token.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the datacenter layer needs to start. Built by the agent from its config.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name.
    pub node_name: String,
    /// This node's UUID.
    pub node_id: String,
    /// This node's datacenter.
    pub datacenter: Datacenter,
    /// Run as a server (Raft, the catalog, the server port) or as a client agent.
    pub server: bool,
    /// Bootstrap Raft with this server as the only voter when it has no Raft state.
    pub bootstrap: bool,
    /// `bootstrap_expect`, shown in member tags (0 when not set).
    pub bootstrap_expect: u32,
    /// The address the gossip and server ports are bound to.
    pub bind: IpAddr,
    /// The address other agents and DNS answers use for this node.
    pub advertise: IpAddr,
    /// The address other datacenters use for this node.
    pub advertise_wan: IpAddr,
    /// Server RPC port (0 picks a free one).
    pub server_port: u16,
    /// LAN gossip port (0 picks a free one).
    pub serf_lan_port: u16,
    /// LAN gossip port to advertise when it differs from the bound one (NAT, a proxy).
    pub serf_lan_advertise_port: Option<u16>,
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
    /// Gossip timers.
    pub gossip: gossip::swim::Config,
    /// Gossip encryption, if on.
    pub encryption: Option<Encryption>,
    /// TLS on the server port, if configured.
    pub rpc_tls: Option<RpcTls>,
    /// Server port connections open at once from one IP address
    /// (`limits.rpc_max_conns_per_client`; `usize::MAX` for no limit).
    pub rpc_max_conns_per_client: usize,
    /// This build's version (`0.1.0`), for tags and node meta.
    pub version: String,
    /// Time between full anti-entropy passes before the spread for the pool's size
    /// ([`SYNC_INTERVAL`], Consul's `ae_interval`).
    pub sync_interval: Duration,
    /// Keys this datacenter copies from another one (a server refuses other writes to
    /// them while it leads).
    pub kv_replication: Option<Arc<KvReplication>>,
    /// ACL settings; `None` when ACLs are off.
    pub acl: Option<Arc<acl::AclConfig>>,
    /// Autopilot's settings until the datacenter has its own (the agent's `autopilot`
    /// block; the leader writes them on its first term).
    pub autopilot: catalog::AutopilotConfig,
}

/// The datacenter could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Raft failed to start.
    #[error(transparent)]
    Raft(#[from] RaftStartError),
    /// A port could not be bound; another process may hold it.
    #[error(transparent)]
    Bind(#[from] std::io::Error),
}

/// What this agent is in its datacenter.
enum Role {
    /// A server: a Raft voter with a copy of the catalog.
    Server(Box<server::Server>),
    /// A client agent: every catalog request goes to a server.
    Client {
        /// The server that answered last, tried first next time.
        preferred: std::sync::Mutex<Option<SocketAddr>>,
    },
}

struct Inner {
    config: Config,
    role: Role,
    local: Local,
    pool: Pool,
    rpc: rpc::Client,
    server_addr: Option<SocketAddr>,
    /// What this server does with requests its client agents relay (set once).
    relay: std::sync::OnceLock<Arc<dyn Relay>>,
    /// On a client agent with ACLs on: what its servers said tokens may do.
    remembered: acl::Remembered,
    /// The agent's own tokens as they are now (shared with the server's resolver).
    tokens: Arc<acl::Tokens>,
    /// The user events this agent accepted.
    events: events::Events,
}

/// `dns.stale_queries`: answers a server gave from a copy older than 5 s.
static STALE_QUERIES: std::sync::LazyLock<metrics::Counter> =
    std::sync::LazyLock::new(|| metrics::counter!("dns.stale_queries"));

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

/// What a server does with requests relayed by the client agents of its datacenter
/// (see [`Lan::relay`]).
pub trait Relay: Send + Sync + 'static {
    /// Serves `request` by `deadline`. `proven` tells whether the caller proved it
    /// belongs to the datacenter (gossip key or TLS client certificate): keyring
    /// operations need it. `lan` is this server's datacenter layer.
    fn relay<'a>(
        &'a self,
        lan: &'a Lan,
        request: Opaque,
        proven: bool,
        deadline: Instant,
    ) -> Relaying<'a>;
}

/// Why a server could not be removed from the Raft configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemovePeerError {
    /// The leader refused: no such server, or the membership change failed.
    #[error("{0}")]
    Refused(String),
    /// No leader did it (none known, unreachable, the deadline).
    #[error(transparent)]
    NoChange(#[from] WriteError),
}

/// Keeps the user events meant for this agent, as gossip delivers them, until
/// `shutdown`.
async fn ingest_events(
    lan: Lan,
    mut heard: tokio::sync::broadcast::Receiver<gossip::swim::UserEvent>,
    shutdown: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = heard.recv() => e,
        };
        match event {
            Ok(event) => {
                let event = events::UserEvent::from_gossip(event);
                let services = lan.local().services();
                if events::matches(&event, lan.node_name(), &services) {
                    tracing::debug!(name = %event.name, id = %event.id, "new event");
                    lan.inner.events.push(event);
                }
            }
            Err(RecvError::Lagged(lost)) => {
                tracing::warn!(
                    lost,
                    "user events arrived faster than they were kept; some were lost"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Refusals by servers logged by this process, at most once per server per interval.
static REFUSALS: std::sync::LazyLock<std::sync::Mutex<gossip::PeerLog>> =
    std::sync::LazyLock::new(Default::default);

/// Why a request could not be forwarded to a server.
enum ForwardError {
    NoServers,
    Rpc(String),
    Timeout,
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::NoServers => f.write_str("No known Consul servers"),
            ForwardError::Rpc(e) => write!(f, "rpc error making call: {e}"),
            ForwardError::Timeout => f.write_str("timed out"),
        }
    }
}

impl From<ForwardError> for ReadError {
    fn from(e: ForwardError) -> ReadError {
        match e {
            ForwardError::NoServers => ReadError::NoServers,
            ForwardError::Rpc(e) => ReadError::Rpc(e),
            ForwardError::Timeout => ReadError::Timeout,
        }
    }
}

impl From<ForwardError> for WriteError {
    fn from(e: ForwardError) -> WriteError {
        match e {
            ForwardError::NoServers => WriteError::NoServers,
            ForwardError::Rpc(e) => WriteError::Rpc(e),
            ForwardError::Timeout => WriteError::Timeout,
        }
    }
}

impl Lan {
    /// Starts the datacenter layer: LAN gossip, and for a server also the server port,
    /// Raft (bootstrapping it when configured) and the leader's reconcile loop. Tasks run
    /// on `tasks` until `shutdown` is cancelled.
    ///
    /// The anti-entropy sync is not started here: see [`Lan::start_anti_entropy`].
    pub async fn start(
        config: Config,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Lan, StartError> {
        let listener = if config.server {
            Some(rpc::bind(SocketAddr::new(config.bind, config.server_port)).await?)
        } else {
            None
        };
        let server_port = match &listener {
            Some(l) => l.local_addr()?.port(),
            None => config.server_port,
        };
        let server_addr = listener
            .as_ref()
            .map(|_| SocketAddr::new(config.advertise, server_port));
        if let Some(l) = &listener {
            tracing::info!(proto = "server-rpc", addr = %l.local_addr()?, "listening");
        }
        // Raft's state is opened first: its Raft ID goes into this member's tags.
        let opened = if config.server {
            Some(raft::open(
                &config.storage,
                &config.node_id,
                config.bootstrap,
            )?)
        } else {
            None
        };
        let pool = Pool::start(
            PoolConfig {
                name: config.node_name.clone(),
                bind: SocketAddr::new(config.bind, config.serf_lan_port),
                advertise: config.advertise,
                advertise_port: config.serf_lan_advertise_port,
                tags: member_tags(&config, server_port, opened.as_ref().map(|o| o.id)),
                gossip: config.gossip.clone(),
                encryption: config.encryption.clone(),
            },
            tasks,
            shutdown.child_token(),
        )
        .await?;
        let keys: rpc::Keys = {
            let pool = pool.clone();
            Arc::new(move || pool.encryption())
        };
        if config.server && !rpc::secure::can_prove(config.rpc_tls.as_ref(), keys().as_ref()) {
            let addr = SocketAddr::new(config.bind, server_port);
            let text = "the server port accepts Raft and catalog requests from anyone who can reach it: set a gossip key (encrypt) or TLS with verify_incoming to authenticate servers";
            if config.bind.is_loopback() {
                tracing::info!(addr = %addr, "{text}");
            } else {
                tracing::warn!(addr = %addr, "{text}");
            }
        }
        let rpc = rpc::Client::new(
            config.rpc_tls.clone(),
            Some(keys.clone()),
            tasks.clone(),
            shutdown.child_token(),
        );
        let tokens = Arc::new(acl::Tokens::new(config.acl.as_deref()));
        let role = match (server_addr, opened) {
            (Some(addr), Some(opened)) => {
                let (consensus, catalog) = raft::Consensus::start(
                    raft::Identity {
                        id: opened.id,
                        node: ServerNode {
                            name: config.node_name.clone(),
                            rpc_addr: addr.to_string(),
                            node_id: config.node_id.clone(),
                        },
                        bootstrap: config.bootstrap,
                    },
                    config.raft,
                    opened,
                    // Raft's messages travel in the server port's requests.
                    raft::network::Network::<server::Request>::new(rpc.clone(), pool.subscribe()),
                    tasks,
                    shutdown.child_token(),
                )
                .await?;
                tasks.spawn(leader::run(
                    consensus.clone(),
                    catalog.clone(),
                    config.datacenter.to_string(),
                    config.acl.clone(),
                    config.autopilot.clone(),
                    pool.subscribe(),
                    shutdown.child_token(),
                ));
                tasks.spawn(tombstones::run(
                    consensus.clone(),
                    catalog.clone(),
                    shutdown.child_token(),
                ));
                if let Some(acl) = &config.acl {
                    tasks.spawn(token_expiry::run(
                        consensus.clone(),
                        catalog.clone(),
                        acl.clone(),
                        shutdown.child_token(),
                    ));
                }
                tasks.spawn(session_ttl::run(
                    consensus.clone(),
                    catalog.clone(),
                    shutdown.child_token(),
                ));
                Role::Server(Box::new(server::Server::new(
                    consensus,
                    catalog,
                    pool.clone(),
                    rpc.clone(),
                    config.kv_replication.clone(),
                    config.acl.clone().map(|a| {
                        acl::Acl::new(a, tokens.clone(), config.datacenter.as_str().to_owned())
                    }),
                    config.datacenter.clone(),
                )))
            }
            _ => Role::Client {
                preferred: std::sync::Mutex::new(None),
            },
        };
        let runner = checks::Runner::new(
            tasks.clone(),
            shutdown.child_token(),
            config.enable_script_checks,
        );
        let local = Local::new(own_node(&config), runner);
        let lan = Lan {
            inner: Arc::new(Inner {
                config,
                role,
                local,
                pool,
                rpc,
                server_addr,
                relay: std::sync::OnceLock::new(),
                remembered: acl::Remembered::default(),
                tokens,
                events: events::Events::default(),
            }),
        };
        tasks.spawn(ingest_events(
            lan.clone(),
            lan.inner.pool.subscribe_user_events(),
            shutdown.child_token(),
        ));
        if let (Some(listener), Role::Server(server)) = (listener, &lan.inner.role) {
            tasks.spawn(rpc::serve(
                listener,
                Arc::new(server::Handler::new((**server).clone(), lan.clone())),
                rpc::Port {
                    tls: lan.inner.config.rpc_tls.clone(),
                    keys: Some(keys),
                    max_connections: rpc::MAX_RPC_CONNECTIONS,
                    max_conns_per_client: lan.inner.config.rpc_max_conns_per_client,
                },
                tasks.clone(),
                shutdown.child_token(),
            ));
        }
        let c = &lan.inner.config;
        if let Role::Server(server) = &lan.inner.role
            && c.bootstrap_expect > 1
            && !c.bootstrap
        {
            tasks.spawn(autopilot::bootstrap(
                (**server).clone(),
                c.datacenter.to_string(),
                c.bootstrap_expect,
                shutdown.child_token(),
            ));
        }
        tracing::info!(node = %c.node_name, dc = %c.datacenter, server = c.server, "datacenter layer started");
        Ok(lan)
    }

    /// Starts the anti-entropy sync of this agent's services and checks to the catalog.
    ///
    /// Call it once what the agent had before a restart is registered again (the config
    /// files' services, saved maintenance), as Consul starts its sync only after loading
    /// them: the first pass is a full one, and it removes from the catalog whatever the
    /// agent does not hold, so starting earlier would offer a node in maintenance as
    /// healthy until the next pass. Runs on `tasks` until `shutdown` is cancelled.
    pub fn start_anti_entropy(&self, tasks: &TaskTracker, shutdown: CancellationToken) {
        tasks.spawn(local::run_sync(
            self.clone(),
            self.inner.local.clone(),
            self.inner.config.sync_interval,
            shutdown,
        ));
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

    /// The token this agent presents for its own requests: `acl.tokens.agent`, else
    /// `acl.tokens.default`, as last set (see [`Lan::tokens`]); `None` with ACLs off.
    pub fn agent_token(&self) -> Option<String> {
        self.inner.config.acl.as_ref()?;
        self.inner.tokens.agent()
    }

    /// The token requests that present none act as (`acl.tokens.default`, as last
    /// set); `None` with ACLs off.
    pub fn default_token(&self) -> Option<String> {
        self.inner.config.acl.as_ref()?;
        self.inner.tokens.default_token()
    }

    /// The token DNS questions act as: `acl.tokens.dns`, else the default token;
    /// `None` with ACLs off.
    pub fn dns_token(&self) -> Option<String> {
        self.inner.config.acl.as_ref()?;
        self.inner.tokens.dns()
    }

    /// The agent's own tokens, which `PUT /v1/agent/token/:type` replaces while the
    /// agent runs; requests made after a change use the new token.
    pub fn tokens(&self) -> &acl::Tokens {
        &self.inner.tokens
    }

    /// Whether ACLs are on.
    pub fn acl_enabled(&self) -> bool {
        self.inner.config.acl.is_some()
    }

    /// The ACL settings, when ACLs are on.
    pub fn acl_config(&self) -> Option<&AclConfig> {
        self.inner.config.acl.as_deref()
    }

    /// Who `principal` is, for this agent's own endpoints (the catalog's are decided by
    /// the server that answers them); `Ok(None)` when ACLs are off. A server resolves the
    /// token against its copy of the tables; a client agent asks a server and remembers
    /// the answer for `token_ttl`, or decides by `down_policy` when no server answers.
    pub async fn authorize(&self, principal: &Principal) -> Result<Option<Caller>, AuthError> {
        let Some(config) = &self.inner.config.acl else {
            return Ok(None);
        };
        match &self.inner.role {
            Role::Server(server) => {
                server.prepare(principal).await;
                server.caller(principal).map_err(|_| AuthError::NotFound)
            }
            Role::Client { .. } => {
                let token = principal.to_wire(self.agent_token().as_deref());
                let remembered = &self.inner.remembered;
                if let Some(grant) = remembered.get(&token, Some(config.token_ttl)) {
                    return acl::settle(config, Some(grant), remembered, &token).map(Some);
                }
                let request = server::Request::ResolveToken {
                    token: token.clone(),
                };
                let fresh = match self
                    .forward(&request, Instant::now() + RESOLVE_TIMEOUT)
                    .await
                {
                    Ok(server::Response::ResolveToken(grant)) => {
                        remembered.put(token.clone(), grant.clone());
                        Some(grant)
                    }
                    Ok(other) => {
                        tracing::warn!(answer = %server::unexpected(other), "a server could not resolve a token");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no server could resolve a token; acl.down_policy decides");
                        None
                    }
                };
                acl::settle(config, fresh, remembered, &token).map(Some)
            }
        }
    }

    /// Whether this agent is a server.
    pub fn is_server(&self) -> bool {
        matches!(self.inner.role, Role::Server { .. })
    }

    /// The address of this server's RPC port (`None` on a client agent).
    pub fn server_addr(&self) -> Option<SocketAddr> {
        self.inner.server_addr
    }

    /// The address other agents gossip with this one at.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.inner.pool.addr()
    }

    /// Whether LAN gossip is encrypted.
    pub fn encrypted(&self) -> bool {
        self.inner.pool.encrypted()
    }

    /// Reads the catalog in the mode `options` asks for, blocking if asked. A client
    /// agent asks a server.
    pub async fn read(
        &self,
        query: &Query,
        options: ReadOptions,
    ) -> Result<QueryResult, ReadError> {
        match &self.inner.role {
            Role::Server(server) => server.read(query, options, false).await,
            Role::Client { .. } => {
                let request = server::Request::Read {
                    query: query.clone(),
                    options: options.to_sent(self.agent_token().as_deref()),
                    forwarded: false,
                };
                match self
                    .forward(&request, options.deadline + FORWARD_MARGIN)
                    .await?
                {
                    server::Response::Read(r) => r,
                    other => Err(ReadError::Rpc(server::unexpected(other))),
                }
            }
        }
    }

    /// Reads the local copy of the catalog at once, whatever the leader's state (DNS's
    /// default `allow_stale`), as the agent's DNS token (else its default token, else
    /// anonymous) may see it: with ACLs on, what it may not read is left out, and a lookup it may not make
    /// finds nothing. `None` on a client agent, which holds no copy.
    pub fn read_stale(&self, query: &Query) -> Option<(Answer, u64)> {
        let Role::Server(server) = &self.inner.role else {
            return None;
        };
        let (mut answer, index) = server.catalog().query(query);
        if server.consensus().is_stale() {
            STALE_QUERIES.increment(1);
        }
        if self.inner.config.acl.is_some() {
            let principal = Principal::from_wire(self.dns_token());
            match server.caller(&principal) {
                Ok(None) => {}
                Ok(Some(c)) if c.check_read(query).is_ok() => {
                    c.filter(&mut answer);
                }
                Ok(Some(_)) | Err(_) => answer = catalog::acl::nothing_for(query),
            }
        }
        Some((answer, index))
    }

    /// Looks again at whether this server's copy is stale (a follower that has not
    /// heard from a leader for more than 5 s): answers from it then count in
    /// `dns.stale_queries`. The agent's metrics sampler calls it every 2 s, so that the
    /// DNS path reads a flag instead of a clock.
    pub fn refresh_stale(&self) {
        if let Some(consensus) = self.consensus() {
            consensus.refresh_stale();
        }
    }

    /// How many nodes, service instances and keys the local catalog copy holds (`None`
    /// on a client agent).
    pub fn catalog_sizes(&self) -> Option<(usize, usize, usize)> {
        match &self.inner.role {
            Role::Server(server) => Some(server.catalog().read(|s| s.sizes())),
            Role::Client { .. } => None,
        }
    }

    /// The newest index of the local catalog copy (`None` on a client agent): any change
    /// to the catalog changes it.
    pub fn catalog_index(&self) -> Option<u64> {
        match &self.inner.role {
            Role::Server(server) => Some(server.catalog().index()),
            Role::Client { .. } => None,
        }
    }

    /// Writes to the catalog; returns the Raft index the change was applied at and what
    /// it produced. A client agent (or a follower) sends the write on to the leader.
    /// `principal` is whom the write is for (ACLs).
    pub async fn write(
        &self,
        command: Command,
        deadline: Instant,
        principal: &Principal,
    ) -> Result<Written, WriteError> {
        match &self.inner.role {
            Role::Server(server) => server.write(command, deadline, principal, false).await,
            Role::Client { .. } => {
                let request = server::Request::Write {
                    command,
                    timeout_ms: remaining_ms(deadline),
                    forwarded: false,
                    token: principal.to_wire(self.agent_token().as_deref()),
                };
                match self.forward(&request, deadline + FORWARD_MARGIN).await? {
                    server::Response::Write(r) => r,
                    other => Err(WriteError::Rpc(server::unexpected(other))),
                }
            }
        }
    }

    /// The servers of this datacenter that gossip says are alive, by server RPC address.
    pub fn servers(&self) -> Vec<SocketAddr> {
        let dc = self.inner.config.datacenter.as_str();
        self.inner
            .pool
            .members()
            .iter()
            .filter(|m| m.is_server() && m.status == MemberStatus::Alive && m.in_datacenter(dc))
            .filter_map(Member::rpc_addr)
            .collect()
    }

    /// Sends a request to a server of this datacenter: the one that answered last, else
    /// the others in random order, until one answers or `deadline`.
    async fn forward(
        &self,
        request: &server::Request,
        deadline: Instant,
    ) -> Result<server::Response, ForwardError> {
        let Role::Client { preferred } = &self.inner.role else {
            return Err(ForwardError::Rpc(
                "a server does not forward to itself".into(),
            ));
        };
        let mut servers = self.servers();
        if servers.is_empty() {
            return Err(ForwardError::NoServers);
        }
        servers.shuffle(&mut rand::rng());
        let first = *preferred.lock().expect("preferred lock");
        if let Some(p) = first
            && let Some(at) = servers.iter().position(|s| *s == p)
        {
            servers.swap(0, at);
        }
        let mut last = String::new();
        for server in servers {
            metrics::counter!("client.rpc").increment(1);
            let answer = self.inner.rpc.call(server, request, deadline).await;
            if answer.is_err() {
                metrics::counter!("client.rpc.failed").increment(1);
            }
            match answer {
                Ok(response) => {
                    *preferred.lock().expect("preferred lock") = Some(server);
                    return Ok(response);
                }
                Err(rpc::RpcError::Timeout) => return Err(ForwardError::Timeout),
                // A write whose connection closed after it was sent may still be
                // applied: another copy could land after the caller's next write.
                Err(e @ rpc::RpcError::Closed(_))
                    if matches!(
                        request,
                        server::Request::Write { .. }
                            | server::Request::Relay {
                                retry_safe: false,
                                ..
                            }
                    ) =>
                {
                    return Err(ForwardError::Rpc(format!(
                        "{e}; the write may or may not have been applied"
                    )));
                }
                Err(e @ rpc::RpcError::Refused { .. }) => {
                    // A setting of this agent's to fix: said in its log too, at most
                    // once per server per interval.
                    let log = REFUSALS
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .should_log(server.ip(), Instant::now());
                    if let Some(suppressed) = log {
                        tracing::warn!(peer = %server, suppressed, "{e}");
                    }
                    last = e.to_string();
                }
                Err(e) => {
                    tracing::debug!(peer = %server, error = %e, "server did not answer, trying another");
                    last = e.to_string();
                }
            }
        }
        Err(ForwardError::Rpc(last))
    }

    /// This agent's own services and checks.
    pub fn local(&self) -> &Local {
        &self.inner.local
    }

    /// The members of the LAN pool, this agent included.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.inner.pool.members()
    }

    /// A receiver that sees every change of the member list.
    pub fn subscribe_members(&self) -> watch::Receiver<Arc<Vec<Member>>> {
        self.inner.pool.subscribe()
    }

    /// Joins the LAN pool of each address (`host[:port]`); returns each one's result.
    pub async fn join(&self, addrs: &[String], deadline: Instant) -> Vec<Result<(), JoinError>> {
        self.inner.pool.join(addrs, deadline).await
    }

    /// LAN network coordinates this agent knows (its own included), by node name.
    pub async fn coordinates(&self) -> gossip::transport::Coordinates {
        self.inner.pool.coordinates().await
    }

    /// Fires a user event in this datacenter's LAN pool, if `principal` may
    /// (`event:write` on its name); returns it as fired.
    pub async fn fire_event(
        &self,
        fire: events::Fire,
        principal: &Principal,
    ) -> Result<events::UserEvent, events::FireError> {
        if let Some(caller) = self
            .authorize(principal)
            .await
            .map_err(|e| events::FireError::Denied(e.to_string()))?
        {
            caller
                .need(
                    catalog::acl::Resource::Event,
                    &fire.name,
                    catalog::acl::Access::Write,
                )
                .map_err(|d| events::FireError::Denied(d.to_string()))?;
        }
        fire.validate()?;
        let event = gossip::swim::UserEvent {
            ltime: 0,
            id: catalog::uuid::new_uuid(),
            name: fire.name,
            payload: fire.payload,
            node_filter: fire.node_filter,
            service_filter: fire.service_filter,
            tag_filter: fire.tag_filter,
        };
        match self.inner.pool.fire(event).await {
            Some(Ok(fired)) => Ok(events::UserEvent::from_gossip(fired)),
            Some(Err(e)) => Err(events::FireError::TooLarge(e.to_string())),
            None => Err(events::FireError::Stopped),
        }
    }

    /// The user events this agent accepted (the last [`events::EVENT_BUFFER`]).
    pub fn events(&self) -> &events::Events {
        &self.inner.events
    }

    /// Marks a failed member as left; with `prune`, forgets it at once. Returns whether
    /// the member was known.
    pub async fn force_leave(&self, node: &str, prune: bool) -> bool {
        self.inner.pool.force_leave(node, prune).await
    }

    /// Runs a keyring operation across the LAN pool. A client agent asks a server to
    /// run it (as Consul does).
    pub async fn keyring(
        &self,
        op: KeyOperation,
        deadline: Instant,
    ) -> Result<KeyringReport, ReadError> {
        match &self.inner.role {
            Role::Server(server) => Ok(server.keyring(op, deadline).await),
            Role::Client { .. } => {
                let request = server::Request::Keyring {
                    op,
                    timeout_ms: remaining_ms(deadline),
                };
                match self.forward(&request, deadline + FORWARD_MARGIN).await? {
                    server::Response::Keyring(r) => Ok(r),
                    other => Err(ReadError::Rpc(server::unexpected(other))),
                }
            }
        }
    }

    /// Lets this server (of a secondary datacenter) ask the primary about tokens its
    /// tables do not hold. Set once; nothing on a client agent or with ACLs off.
    pub fn set_remote_tokens(&self, resolver: Arc<dyn acl::RemoteTokens>) {
        if let Role::Server(server) = &self.inner.role {
            server.set_remote_tokens(resolver);
        }
    }

    /// What `secret` may do by this server's ACL tables (`Some(None)`: no such token),
    /// as the primary tells a secondary; `None` on a client agent or with ACLs off.
    pub fn grant_for(&self, secret: &str) -> Option<Option<acl::Grant>> {
        match &self.inner.role {
            Role::Server(server) => server.grant_for(secret),
            Role::Client { .. } => None,
        }
    }

    /// On a server, a [`Query::RunServiceQuery`] of a prepared query of this datacenter
    /// as its servers run it: the stored selection, and the stored token it reads as
    /// when it has one (else the caller's). What a server sends to another datacenter's server
    /// for a failover; never an answer. `None` on a client agent or for any other read.
    pub fn run_stored(&self, query: &Query) -> Option<(Query, Option<Principal>)> {
        match &self.inner.role {
            Role::Server(server) => server.run_stored(query),
            Role::Client { .. } => None,
        }
    }

    /// Lets this server serve the requests its client agents relay. Set once.
    pub fn set_relay(&self, relay: Arc<dyn Relay>) {
        let _ = self.inner.relay.set(relay);
    }

    /// Has a server of this datacenter serve `request` (a client agent's way to reach
    /// what only servers can, such as other datacenters). `retry_safe`: the request may
    /// be sent to another server when the connection to the first closes after it was
    /// sent (not so for a write, which may have been applied).
    pub async fn relay(
        &self,
        request: Opaque,
        retry_safe: bool,
        deadline: Instant,
    ) -> Result<Opaque, ReadError> {
        let request = server::Request::Relay {
            request,
            timeout_ms: remaining_ms(deadline),
            retry_safe,
        };
        match self.forward(&request, deadline + FORWARD_MARGIN).await? {
            server::Response::Relay(answer) => Ok(answer),
            other => Err(ReadError::Rpc(server::unexpected(other))),
        }
    }

    /// Removes a server from this datacenter's Raft configuration, on the leader
    /// (`operator raft remove-peer`); a client agent asks a server. A server that is still
    /// alive is added back by the leader's upkeep, as in Consul: this is for servers that
    /// are gone for good.
    pub async fn remove_raft_peer(
        &self,
        peer: RaftPeer,
        deadline: Instant,
    ) -> Result<(), RemovePeerError> {
        let answer = match &self.inner.role {
            Role::Server(server) => server.remove_peer(peer, deadline, false).await,
            Role::Client { .. } => {
                let request = server::Request::RemovePeer {
                    peer,
                    timeout_ms: remaining_ms(deadline),
                    forwarded: false,
                };
                match self.forward(&request, deadline + FORWARD_MARGIN).await {
                    Ok(server::Response::RemovePeer(r)) => r,
                    Ok(other) => Err(WriteError::Rpc(server::unexpected(other))),
                    Err(e) => Err(e.into()),
                }
            }
        };
        answer?.map_err(RemovePeerError::Refused)
    }

    /// This datacenter's view of Raft; a client agent asks a server.
    pub async fn raft_status(&self, deadline: Instant) -> Result<RaftStatus, ReadError> {
        match &self.inner.role {
            Role::Server(server) => Ok(server.consensus().status()),
            Role::Client { .. } => match self.forward(&server::Request::Status, deadline).await? {
                server::Response::Status(s) => Ok(s),
                other => Err(ReadError::Rpc(server::unexpected(other))),
            },
        }
    }

    /// The health of this datacenter's servers as its leader sees it (autopilot).
    pub async fn autopilot_health(
        &self,
        deadline: Instant,
    ) -> Result<catalog::AutopilotHealth, ReadError> {
        match &self.inner.role {
            Role::Server(server) => server.autopilot_health(deadline, false).await,
            Role::Client { .. } => {
                let request = server::Request::AutopilotHealth {
                    timeout_ms: remaining_ms(deadline),
                    forwarded: false,
                };
                match self.forward(&request, deadline + FORWARD_MARGIN).await? {
                    server::Response::AutopilotHealth(r) => r,
                    other => Err(ReadError::Rpc(server::unexpected(other))),
                }
            }
        }
    }

    /// On the leader, how long ago a quorum of servers last acknowledged it.
    pub fn leader_last_contact(&self) -> Option<Duration> {
        self.consensus()?.since_quorum_ack()
    }

    /// Whether this agent is the leader of its datacenter right now.
    pub fn is_leader(&self) -> bool {
        self.consensus().is_some_and(raft::Consensus::is_leader)
    }

    fn consensus(&self) -> Option<&raft::Consensus> {
        match &self.inner.role {
            Role::Server(server) => Some(server.consensus()),
            Role::Client { .. } => None,
        }
    }

    /// Leaves the LAN pool gracefully: the other members see this agent as `left`, and
    /// the leader removes its node from the catalog.
    pub async fn leave(&self) {
        self.inner.pool.leave().await;
    }

    /// Resolves, with the reason, once this server's Raft has stopped by itself (a
    /// storage error such as a full disk, or a panic inside openraft). It cannot restart
    /// in this process: the agent should exit with an error so that a supervisor starts
    /// it again. Never resolves on a client agent or after a clean shutdown.
    pub async fn failed(&self) -> String {
        match self.consensus() {
            Some(c) => c.failed().await,
            None => std::future::pending().await,
        }
    }

    /// Stops Raft. Call after the shutdown token was cancelled and tasks have stopped.
    pub async fn shutdown(&self) {
        if let Some(c) = self.consensus() {
            c.shutdown().await;
        }
    }
}

/// The server port hands relayed requests to the relay the agent set.
impl server::Relays for Lan {
    async fn serve_relayed(
        &self,
        request: Opaque,
        proven: bool,
        deadline: Instant,
    ) -> Option<Opaque> {
        let relay = self.inner.relay.get()?;
        Some(relay.relay(self, request, proven, deadline).await)
    }
}

/// Anti-entropy reads and writes the catalog through this agent's datacenter layer.
impl local::Upstream for Lan {
    async fn read(&self, query: &Query, options: ReadOptions) -> Result<QueryResult, ReadError> {
        Lan::read(self, query, options).await
    }

    async fn write(&self, command: Command, deadline: Instant) -> Result<u64, WriteError> {
        Lan::write(self, command, deadline, &Principal::Agent)
            .await
            .map(|w| w.index)
    }

    fn subscribe_members(&self) -> watch::Receiver<Arc<Vec<Member>>> {
        Lan::subscribe_members(self)
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

/// The tags this agent gossips, as Consul's (`role`, `dc`, `port`, `id`, `build`, …).
fn member_tags(
    config: &Config,
    server_port: u16,
    raft_id: Option<u64>,
) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    tags.insert(
        "role".to_string(),
        if config.server { "consul" } else { "node" }.to_string(),
    );
    tags.insert("dc".into(), config.datacenter.to_string());
    tags.insert("id".into(), config.node_id.clone());
    tags.insert("vsn".into(), PROTOCOL_VERSION.to_string());
    tags.insert("vsn_min".into(), "2".into());
    tags.insert("vsn_max".into(), "3".into());
    tags.insert("build".into(), format!("{}:proconsul", config.version));
    tags.insert("segment".into(), String::new());
    if config.server {
        tags.insert("port".into(), server_port.to_string());
        tags.insert("raft_vsn".into(), "3".into());
        if let Some(id) = raft_id {
            tags.insert(raft::RAFT_ID_TAG.into(), id.to_string());
        }
        tags.insert("wan_join_port".into(), config.serf_wan_port.to_string());
        if config.bootstrap_expect > 1 {
            tags.insert("expect".into(), config.bootstrap_expect.to_string());
        } else if config.bootstrap {
            tags.insert("bootstrap".into(), "1".into());
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ids_are_stable_and_distinct() {
        let a = raft::raft_id("6a1f4b3e-0000-4000-8000-000000000001");
        assert_eq!(a, raft::raft_id("6a1f4b3e-0000-4000-8000-000000000001"));
        assert_ne!(a, raft::raft_id("6a1f4b3e-0000-4000-8000-000000000002"));
    }
}
