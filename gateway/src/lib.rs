//! # proconsul-gateway: where a query is answered
//!
//! Every catalog read and write names a datacenter (or none, meaning the agent's own).
//! The gateway decides who answers it:
//!
//! ```text
//!   api (HTTP, DNS) ──(dc, Query)──▶ Gateway::read ─route─┬─ local dc ─▶ lan::Lan::read
//!                                                         ├─ other dc ─▶ wan::Federation::call
//!                                                         │   (a server; a server of that dc,
//!                                                         │    nearest first)
//!                                                         └─ other dc ─▶ lan::Lan::relay
//!                                                             (a client agent: a server of
//!                                                              its own dc routes it again)
//! ```
//!
//! A datacenter the WAN pool does not know is Consul's `No path to datacenter`; one
//! whose servers do not answer in time is `Remote DC has no server currently
//! reachable`. The gateway also lists the datacenters nearest first, runs keyring
//! operations across every pool, and serves what other datacenters ask this server.
//! Client agents are in no WAN pool: they relay questions about another datacenter
//! through a server of their own, which asks over the WAN (see the `remote` module for
//! the hops and what crosses them).
//!
//! Invariants: this crate never parses DNS or HTTP and knows nothing of Consul's JSON
//! (programs outside the agent ask through the HTTP API, with `proconsul::client`).

#![warn(missing_docs)]

mod acl_replication;
mod load;
mod prepared;
mod remote;
mod replication;

pub use acl_replication::{
    AclReplicationReport, AclReplicationStatus, start as start_acl_replication,
};
pub use load::{
    CachePolicy, CacheStatus, Caps, MAX_BLOCKING_IN_FLIGHT, MAX_CACHED_ITEMS, MAX_ENTRIES,
    MAX_ENTRY_AGE, MAX_READS_IN_FLIGHT, MAX_SHARED_BLOCKING, UNKNOWN_DC_TTL,
};
pub use prepared::{Executed, MIN_FAILOVER_ATTEMPT};
pub use replication::{KvReplicationStatus, PrefixStatus, start as start_kv_replication};

use std::sync::Arc;
use std::time::Duration;

use catalog::{Command, Principal, Query};
use catalog::{
    Datacenter, QueryResult, RaftStatus, ReadError, ReadOptions, WriteError, Written, deadline_in,
    remaining_ms,
};
use gossip::{KeyOperation, KeyringReport};
use lan::Lan;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use wan::Federation;
use wan::rpc::{Caller, Request, Response, Service, Serving};

use remote::{Call, Relayed, Reply};

/// Why a routed request failed. It crosses hops as it is (a client agent's relay, the
/// WAN), so the caller sees what the datacenter that failed said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RouteError {
    /// No known server of this datacenter: the name is wrong or the datacenter was never
    /// joined. Report to the user; retrying will not help (Consul's text).
    #[error("No path to datacenter")]
    NoPath {
        /// The datacenter asked for.
        dc: String,
    },
    /// The datacenter answered, but could not serve the read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The datacenter could not apply the write.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The datacenter is known, but none of its servers answered within the deadline
    /// (Consul's text).
    #[error("Remote DC has no server currently reachable")]
    NoServer {
        /// The datacenter asked for.
        dc: String,
    },
    /// This agent has no part in WAN federation (a client agent, or a server without a
    /// TLS certificate); the text says which and what to do.
    #[error("{0}")]
    NoFederation(String),
    /// Too many reads to this datacenter are in flight; retry later (HTTP 429).
    #[error("too many requests in flight to datacenter {dc:?} (the limit is {limit})")]
    Busy {
        /// The datacenter asked for.
        dc: String,
        /// The limit that was reached.
        limit: usize,
    },
}

/// A read's answer, and whether it came from the cache (when the read named a
/// [`CachePolicy`]).
#[derive(Debug, Clone)]
pub struct Cached {
    /// The answer.
    pub result: QueryResult,
    /// Hit or miss; `None` when no cache was asked for.
    pub cache: Option<CacheStatus>,
}

/// Routes queries to the datacenter that answers them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Gateway {
    lan: Lan,
    federation: Result<Federation, String>,
    load: Arc<load::Load>,
}

impl Gateway {
    /// A gateway for an agent whose own datacenter is served by `lan`, with no WAN
    /// federation (`why` says why, for errors of WAN operations). Reads shared by several
    /// callers run on `tasks`; `caps` bound the reads in flight to each other datacenter.
    pub fn new(lan: Lan, why: String, tasks: &TaskTracker, caps: Caps) -> Gateway {
        let load = Arc::new(load::Load::new(tasks, caps));
        if lan.is_server() {
            lan.set_relay(Arc::new(ServeRelayed {
                federation: Err(why.clone()),
                load: load.clone(),
            }));
        }
        Gateway {
            lan,
            federation: Err(why),
            load,
        }
    }

    /// A gateway for a server that is part of the WAN federation; it also serves the
    /// requests other datacenters send it. Reads shared by several callers run on
    /// `tasks`.
    pub fn with_federation(
        lan: Lan,
        federation: Federation,
        tasks: &TaskTracker,
        caps: Caps,
    ) -> Gateway {
        let load = Arc::new(load::Load::new(tasks, caps));
        // What other datacenters ask is always for this one: that gateway needs no
        // federation (and holding none, it keeps the federation from holding itself).
        federation.set_service(Arc::new(WanService {
            here: Gateway {
                lan: lan.clone(),
                federation: Err("a request from another datacenter".into()),
                load: load.clone(),
            },
        }));
        lan.set_relay(Arc::new(ServeRelayed {
            federation: Ok(federation.clone()),
            load: load.clone(),
        }));
        if let Some(primary) = lan
            .acl_config()
            .and_then(|a| a.primary_datacenter.as_deref())
            .and_then(|p| Datacenter::new(p).ok())
            .filter(|p| p != lan.datacenter())
        {
            lan.set_remote_tokens(Arc::new(AskPrimary {
                federation: federation.clone(),
                primary,
            }));
        }
        Gateway {
            lan,
            federation: Ok(federation),
            load,
        }
    }

    /// The WAN side of this server, or why there is none.
    pub fn federation(&self) -> Result<&Federation, RouteError> {
        self.federation
            .as_ref()
            .map_err(|why| RouteError::NoFederation(why.clone()))
    }

    /// The datacenter layer.
    pub fn lan(&self) -> &Lan {
        &self.lan
    }

    /// The agent's own datacenter.
    pub fn local_datacenter(&self) -> &Datacenter {
        self.lan.datacenter()
    }

    /// Known datacenters, nearest first: the local one, then the others by estimated
    /// round-trip time from this server (see [`nearest_datacenters`]); a client agent
    /// asks a server of its datacenter.
    pub async fn datacenters(&self) -> Vec<Datacenter> {
        let local = self.lan.datacenter().clone();
        match &self.federation {
            Ok(federation) => nearest_datacenters(local, federation).await,
            // A client agent: a server of its datacenter knows.
            Err(_) if !self.lan.is_server() => {
                let deadline = Instant::now() + DATACENTERS_TIMEOUT;
                let names = match self.via_server(&local, Call::Datacenters, deadline).await {
                    Ok(Reply::Datacenters(names)) => names,
                    _ => Vec::new(),
                };
                let mut list: Vec<Datacenter> = names
                    .iter()
                    .filter_map(|dc| Datacenter::new(dc).ok())
                    .collect();
                if list.first() != Some(&local) {
                    list.retain(|dc| *dc != local);
                    list.insert(0, local);
                }
                list
            }
            Err(_) => vec![local],
        }
    }

    /// [`Self::datacenters`] with what this agent knows of each: round-trip time and
    /// how many of its servers are alive (a server's view of the WAN pool; a client
    /// agent knows only the names).
    pub async fn datacenter_reports(&self) -> Vec<DatacenterReport> {
        let local = self.lan.datacenter().clone();
        let Ok(federation) = &self.federation else {
            return self
                .datacenters()
                .await
                .into_iter()
                .map(|name| DatacenterReport {
                    local: name == local,
                    name,
                    rtt: None,
                    servers: None,
                    alive: None,
                })
                .collect();
        };
        let members = federation.members();
        let count = |dc: &Datacenter, alive_only: bool| {
            members
                .iter()
                .filter(|m| m.is_server() && m.in_datacenter(dc.as_str()))
                .filter(|m| match m.status {
                    gossip::MemberStatus::Alive => true,
                    gossip::MemberStatus::Failed => !alive_only,
                    _ => false,
                })
                .count()
        };
        ranked_datacenters(local.clone(), federation)
            .await
            .into_iter()
            .map(|(name, rtt)| DatacenterReport {
                local: name == local,
                servers: Some(count(&name, false)),
                alive: Some(count(&name, true)),
                name,
                rtt,
            })
            .collect()
    }

    /// Who answers for `dc` (None = local): this agent's datacenter, or another one of
    /// the federation.
    fn route(&self, dc: Option<&str>) -> Result<Route, RouteError> {
        match dc {
            None => Ok(Route::Local),
            Some(name) if name.is_empty() || name == self.lan.datacenter().as_str() => {
                Ok(Route::Local)
            }
            Some(name) => {
                let no_path = || RouteError::NoPath {
                    dc: name.to_owned(),
                };
                // A name Consul would not allow is no datacenter of the federation.
                let dc = Datacenter::new(name).map_err(|_| no_path())?;
                match &self.federation {
                    Ok(f) if f.knows(name) => Ok(Route::Remote(dc)),
                    // A client agent is in no WAN pool: a server of its datacenter knows.
                    Err(_) if !self.lan.is_server() && !self.load.is_unknown(name) => {
                        Ok(Route::ViaServer(dc))
                    }
                    _ => Err(no_path()),
                }
            }
        }
    }

    /// Whether `dc` (None = local) is the agent's own datacenter.
    pub fn is_local(&self, dc: Option<&str>) -> bool {
        matches!(self.route(dc), Ok(Route::Local))
    }

    /// Reads from the catalog of `dc`; another datacenter's servers answer for it, with
    /// their own consistency rules and blocking.
    pub async fn read(
        &self,
        dc: Option<&str>,
        query: &Query,
        options: ReadOptions,
    ) -> Result<QueryResult, RouteError> {
        Ok(self.read_cached(dc, query, options, None).await?.result)
    }

    /// [`Gateway::read`], from the cache when `cache` allows it. Reads answered by a
    /// server's own catalog never use the cache (they are as cheap as a cache hit);
    /// the others are coalesced and capped per datacenter (see the `load` module).
    pub async fn read_cached(
        &self,
        dc: Option<&str>,
        query: &Query,
        options: ReadOptions,
        cache: Option<CachePolicy>,
    ) -> Result<Cached, RouteError> {
        let route = self.route(dc)?;
        let status = |hit: Option<Duration>| {
            cache.map(|_| match hit {
                Some(age) => CacheStatus::Hit(age),
                None => CacheStatus::Miss,
            })
        };
        let name = match &route {
            Route::Local if self.lan.is_server() => {
                return Ok(Cached {
                    result: self.lan.read(query, options).await?,
                    cache: status(None),
                });
            }
            Route::Local => self.lan.datacenter().as_str(),
            Route::Remote(dc) | Route::ViaServer(dc) => dc.as_str(),
        };
        let key = load::Key::new(name, query, &options);
        let blocking = options.min_index > 0;
        if let Some(policy) = cache.filter(|_| !blocking) {
            if let Some((result, age)) = self.load.cached(&key, policy.max_age) {
                metrics::counter!("gateway.cache_hit", "datacenter" => name.to_string())
                    .increment(1);
                return Ok(Cached {
                    result,
                    cache: status(Some(age)),
                });
            }
            metrics::counter!("gateway.cache_miss", "datacenter" => name.to_string()).increment(1);
        }
        let fetched = if options.consistency == catalog::Consistency::Stale && !blocking {
            let gateway = self.clone();
            let owned = route.clone();
            let query_owned = query.clone();
            let sent = options.clone();
            let read = async move { gateway.read_direct(&owned, &query_owned, sent).await };
            self.load
                .coalesce(key.clone(), options.deadline + REMOTE_MARGIN, read)
                .await
        } else if blocking && matches!(route, Route::Local) {
            // A client agent's blocking read of its own datacenter: identical ones held
            // at once share one read to a server.
            let deadline = options.deadline;
            let read = |deadline: Instant| {
                let gateway = self.clone();
                let query = query.clone();
                let options = ReadOptions {
                    deadline,
                    ..options.clone()
                };
                async move { gateway.read_direct(&Route::Local, &query, options).await }
            };
            let now = || {
                let options = ReadOptions {
                    min_index: 0,
                    deadline: Instant::now() + NOW_TIMEOUT,
                    ..options.clone()
                };
                self.read_direct(&route, query, options)
            };
            self.load
                .share_blocking(key.clone(), deadline, read, now)
                .await
        } else {
            self.read_direct(&route, query, options).await
        };
        match fetched {
            Ok(result) => {
                if cache.is_some() && !blocking {
                    self.load.store(key, &result);
                }
                Ok(Cached {
                    result,
                    cache: status(None),
                })
            }
            Err(e) => {
                // A datacenter a server said it does not know is remembered by
                // `via_server`, for every kind of call.
                if let Some(stale) = cache.and_then(|c| c.stale_if_error)
                    && let Some((result, age)) = self.load.cached(&key, stale)
                {
                    return Ok(Cached {
                        result,
                        cache: status(Some(age)),
                    });
                }
                Err(e)
            }
        }
    }

    /// A read not answered by this server's catalog: through a server of this
    /// datacenter, or (within that datacenter's in-flight cap) another datacenter.
    async fn read_direct(
        &self,
        route: &Route,
        query: &Query,
        options: ReadOptions,
    ) -> Result<QueryResult, RouteError> {
        // A prepared query of this datacenter run in another one (a failover): this
        // server sends the stored selection there, as the stored token when it has
        // one. The token goes only server to server, over the WAN; never back.
        let stored = match route {
            Route::Remote(_) => self.lan.run_stored(query),
            Route::Local | Route::ViaServer(_) => None,
        };
        let (query, options) = match &stored {
            Some((run, Some(token))) => (
                run,
                ReadOptions {
                    principal: token.clone(),
                    ..options
                },
            ),
            Some((run, None)) => (run, options),
            None => (query, options),
        };
        let call = || Call::Read {
            query: query.clone(),
            options: options.to_sent(self.lan.agent_token().as_deref()),
        };
        match route {
            // The server RPC layer bounds these.
            Route::Local => Ok(self.lan.read(query, options).await?),
            Route::Remote(dc) => {
                let _permit = self.load.permit(dc.as_str(), options.min_index > 0)?;
                // A blocking read answers at its deadline: leave room for the answer.
                // Any other read is answered before it, or not at all.
                let deadline = if options.min_index > 0 {
                    options.deadline + REMOTE_MARGIN
                } else {
                    options.deadline
                };
                match remote(self.federation()?, dc, &call(), deadline).await? {
                    Reply::Read(r) => r,
                    other => Err(unexpected(&call(), other)),
                }
            }
            Route::ViaServer(dc) => {
                let _permit = self.load.permit(dc.as_str(), options.min_index > 0)?;
                match self.via_server(dc, call(), options.deadline).await? {
                    Reply::Read(r) => r,
                    other => Err(unexpected(&call(), other)),
                }
            }
        }
    }

    /// Has a server of this (client) agent's datacenter make `call` for `dc`; it answers
    /// by `deadline` plus the margin of its own hop to `dc`.
    async fn via_server(
        &self,
        dc: &Datacenter,
        call: Call,
        deadline: Instant,
    ) -> Result<Reply, RouteError> {
        let retry_safe = !call.is_write();
        let relayed = remote::encode(&Relayed {
            dc: dc.clone(),
            call: call.clone(),
        });
        let answer = self
            .lan
            .relay(relayed, retry_safe, deadline + REMOTE_MARGIN)
            .await
            .map_err(|e| call.failed(e.to_string()))?;
        let reply = remote::decode::<Reply>(&answer).map_err(|e| call.failed(e))?;
        if let Reply::Read(Err(RouteError::NoPath { dc }))
        | Reply::Write(Err(RouteError::NoPath { dc }))
        | Reply::Status(Err(RouteError::NoPath { dc }))
        | Reply::AutopilotHealth(Err(RouteError::NoPath { dc })) = &reply
        {
            // The server knows no such datacenter: remember it for a while.
            self.load.mark_unknown(dc);
        }
        Ok(reply)
    }

    /// Serves `call` for `dc` (`None`: this datacenter) on behalf of a caller that
    /// `proven` it belongs here (keyring operations need that).
    async fn serve_call(&self, dc: Option<&str>, call: Call, proven: bool) -> Reply {
        match call {
            Call::Read { query, options } => {
                Reply::Read(self.read(dc, &query, options.to_options()).await)
            }
            Call::Write {
                command,
                timeout_ms,
                token,
            } => Reply::Write(
                self.write(
                    dc,
                    *command,
                    deadline_in(timeout_ms),
                    &Principal::from_wire(token),
                )
                .await,
            ),
            Call::Status { timeout_ms } => {
                Reply::Status(self.raft_status(dc, deadline_in(timeout_ms)).await)
            }
            Call::AutopilotHealth { timeout_ms } => {
                Reply::AutopilotHealth(self.autopilot_health(dc, deadline_in(timeout_ms)).await)
            }
            Call::Keyring { .. } | Call::KeyringAll { .. } if !proven => {
                Reply::Refused(lan::KEYRING_NEEDS_PROOF.into())
            }
            Call::Keyring { op, timeout_ms } => Reply::Keyring(
                self.lan
                    .keyring(op, deadline_in(timeout_ms))
                    .await
                    .map_err(|e| e.to_string()),
            ),
            Call::KeyringAll {
                op,
                local_only,
                timeout_ms,
            } => Reply::KeyringAll(self.keyring(op, local_only, deadline_in(timeout_ms)).await),
            Call::ResolveToken { secret } => match self.lan.grant_for(&secret) {
                Some(grant) => Reply::ResolvedToken(grant),
                None => Reply::Refused("ACLs are off in this datacenter".into()),
            },
            Call::FireEvent {
                fire,
                timeout_ms,
                token,
            } => Reply::Fired(
                self.fire_event(
                    dc,
                    fire,
                    deadline_in(timeout_ms),
                    &Principal::from_wire(token),
                )
                .await,
            ),
            Call::Datacenters => Reply::Datacenters(
                self.datacenters()
                    .await
                    .into_iter()
                    .map(String::from)
                    .collect(),
            ),
        }
    }

    /// Reads the local copy of `dc`'s catalog at once, with no leader check (DNS's
    /// default `allow_stale`). `Ok(None)` when no copy is held here (a client agent, or
    /// another datacenter): then [`Gateway::read`] with [`catalog::Consistency::Stale`]
    /// asks a server that has one.
    pub fn read_stale(
        &self,
        dc: Option<&str>,
        query: &Query,
    ) -> Result<Option<(catalog::Answer, u64)>, RouteError> {
        match self.route(dc)? {
            Route::Local => Ok(self.lan.read_stale(query)),
            Route::Remote(_) | Route::ViaServer(_) => Ok(None),
        }
    }

    /// The newest index of `dc`'s local catalog copy, for callers that cache what they
    /// derive from it; `None` for a datacenter whose data is not held here.
    pub fn stale_index(&self, dc: Option<&str>) -> Option<u64> {
        match self.route(dc) {
            Ok(Route::Local) => self.lan.catalog_index(),
            _ => None,
        }
    }

    /// Applies a write in `dc`'s catalog (by that datacenter's leader); returns the index
    /// it was applied at and what it produced.
    pub async fn write(
        &self,
        dc: Option<&str>,
        command: Command,
        deadline: Instant,
        principal: &Principal,
    ) -> Result<Written, RouteError> {
        let call = Call::Write {
            command: Box::new(command),
            timeout_ms: remaining_ms(deadline),
            token: principal.to_wire(self.lan.agent_token().as_deref()),
        };
        let reply = match self.route(dc)? {
            Route::Local => {
                let Call::Write { command, .. } = call else {
                    unreachable!("built as a write above")
                };
                return Ok(self.lan.write(*command, deadline, principal).await?);
            }
            Route::Remote(dc) => {
                remote(self.federation()?, &dc, &call, deadline + REMOTE_MARGIN).await?
            }
            Route::ViaServer(dc) => self.via_server(&dc, call.clone(), deadline).await?,
        };
        match reply {
            Reply::Write(r) => r,
            other => Err(unexpected(&call, other)),
        }
    }

    /// Fires a user event in `dc`'s LAN pool (a server there fires it); the outer error
    /// is the route's, the inner one the event's (too large, not allowed).
    pub async fn fire_event(
        &self,
        dc: Option<&str>,
        fire: lan::events::Fire,
        deadline: Instant,
        principal: &Principal,
    ) -> Result<Result<lan::events::UserEvent, lan::events::FireError>, RouteError> {
        let token = principal.to_wire(self.lan.agent_token().as_deref());
        let call = |fire| Call::FireEvent {
            fire,
            timeout_ms: remaining_ms(deadline),
            token,
        };
        let (call, reply) = match self.route(dc)? {
            Route::Local => return Ok(self.lan.fire_event(fire, principal).await),
            Route::Remote(dc) => {
                let call = call(fire);
                let reply =
                    remote(self.federation()?, &dc, &call, deadline + REMOTE_MARGIN).await?;
                (call, reply)
            }
            Route::ViaServer(dc) => {
                let call = call(fire);
                let reply = self.via_server(&dc, call.clone(), deadline).await?;
                (call, reply)
            }
        };
        match reply {
            Reply::Fired(r) => r,
            other => Err(unexpected(&call, other)),
        }
    }

    /// Raft status of `dc` (leader and peers).
    pub async fn raft_status(
        &self,
        dc: Option<&str>,
        deadline: Instant,
    ) -> Result<RaftStatus, RouteError> {
        let call = Call::Status {
            timeout_ms: remaining_ms(deadline),
        };
        let reply = match self.route(dc)? {
            Route::Local => return Ok(self.lan.raft_status(deadline).await?),
            Route::Remote(dc) => {
                remote(self.federation()?, &dc, &call, deadline + REMOTE_MARGIN).await?
            }
            Route::ViaServer(dc) => self.via_server(&dc, call.clone(), deadline).await?,
        };
        match reply {
            Reply::Status(r) => r,
            other => Err(unexpected(&call, other)),
        }
    }

    /// The health of the servers of `dc` (`None`: this datacenter) as its leader sees
    /// it (autopilot): asked of a server there, as Consul forwards the read.
    pub async fn autopilot_health(
        &self,
        dc: Option<&str>,
        deadline: Instant,
    ) -> Result<catalog::AutopilotHealth, RouteError> {
        let call = Call::AutopilotHealth {
            timeout_ms: remaining_ms(deadline),
        };
        let reply = match self.route(dc)? {
            Route::Local => return Ok(self.lan.autopilot_health(deadline).await?),
            Route::Remote(dc) => {
                remote(self.federation()?, &dc, &call, deadline + REMOTE_MARGIN).await?
            }
            Route::ViaServer(dc) => self.via_server(&dc, call.clone(), deadline).await?,
        };
        match reply {
            Reply::AutopilotHealth(r) => r,
            other => Err(unexpected(&call, other)),
        }
    }
}

/// The error of a call answered with a reply of another kind (or refused).
fn unexpected(call: &Call, reply: Reply) -> RouteError {
    match reply {
        Reply::Refused(why) => call.failed(why),
        other => call.failed(format!("unexpected answer {other:?}")),
    }
}

/// How long a client agent waits for a server's list of datacenters.
const DATACENTERS_TIMEOUT: Duration = Duration::from_secs(2);

/// The datacenters `federation` knows, nearest first: `local`, then the others by the
/// median estimated round-trip time from this server to their servers (WAN network
/// coordinates; the QUIC round-trip time measured on the connection where a server has
/// no coordinate yet), unknown ones last, ties by name (Consul's order).
async fn nearest_datacenters(local: Datacenter, federation: &Federation) -> Vec<Datacenter> {
    ranked_datacenters(local, federation)
        .await
        .into_iter()
        .map(|(dc, _)| dc)
        .collect()
}

/// [`nearest_datacenters`], each with its median round-trip time when known (none for
/// `local`).
async fn ranked_datacenters(
    local: Datacenter,
    federation: &Federation,
) -> Vec<(Datacenter, Option<Duration>)> {
    let coordinates = federation.coordinates().await;
    let own = coordinates.get(federation.name());
    let mut remote: Vec<(Option<Duration>, String)> = federation
        .datacenters()
        .into_iter()
        .filter(|dc| dc != local.as_str())
        .map(|dc| {
            let mut rtts: Vec<Duration> = federation
                .servers(&dc)
                .iter()
                .filter_map(|(name, addr)| match (own, coordinates.get(name)) {
                    (Some(a), Some(b)) => Duration::try_from_secs_f64(a.distance(b)).ok(),
                    _ => federation.endpoint().rtt(*addr),
                })
                .collect();
            rtts.sort();
            let median = rtts.len().checked_sub(1).map(|i| rtts[i / 2]);
            (median, dc)
        })
        .collect();
    remote.sort_by(|a, b| match (a.0, b.0) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.1.cmp(&b.1)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.1.cmp(&b.1),
    });
    std::iter::once((local, None))
        .chain(
            remote
                .into_iter()
                .filter_map(|(rtt, dc)| Datacenter::new(&dc).ok().map(|dc| (dc, rtt))),
        )
        .collect()
}

/// A datacenter as the web UI's datacenter switcher shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatacenterReport {
    /// Its name.
    pub name: Datacenter,
    /// Whether it is this agent's own.
    pub local: bool,
    /// The median estimated round-trip time from this server to its servers, when
    /// known (never for the local datacenter).
    pub rtt: Option<Duration>,
    /// Its servers in the WAN pool, alive or failed; `None` where this agent is in no
    /// WAN pool (a client agent) and so cannot tell.
    pub servers: Option<usize>,
    /// How many of those gossip holds alive; a datacenter with none is unreachable.
    pub alive: Option<usize>,
}

/// Who answers a request, decided once per request ([`Gateway::route`]).
#[derive(Debug, Clone)]
enum Route {
    /// This agent's datacenter.
    Local,
    /// Another datacenter, over this server's WAN connections.
    Remote(Datacenter),
    /// Another datacenter, through a server of this (client) agent's datacenter.
    ViaServer(Datacenter),
}

/// Sends `call` to a server of `dc`, within `deadline`.
async fn remote(
    federation: &Federation,
    dc: &Datacenter,
    call: &Call,
    deadline: Instant,
) -> Result<Reply, RouteError> {
    let start = std::time::Instant::now();
    let label = dc.to_string();
    metrics::counter!("rpc.cross-dc", "datacenter" => label.clone()).increment(1);
    metrics::counter!("gateway.requests", "datacenter" => label.clone()).increment(1);
    let reply = remote_call(federation, dc, call, deadline).await;
    metrics::histogram!("gateway.latency", "datacenter" => label.clone())
        .record(start.elapsed().as_secs_f64() * 1000.0);
    if reply.is_err() {
        metrics::counter!("gateway.errors", "datacenter" => label).increment(1);
    }
    reply
}

async fn remote_call(
    federation: &Federation,
    dc: &Datacenter,
    call: &Call,
    deadline: Instant,
) -> Result<Reply, RouteError> {
    let request = Request::Relay(remote::encode(call));
    let answer = federation
        .call(dc.as_str(), &request, call.delivery(), deadline)
        .await
        .map_err(|e| match e {
            wan::WanError::NoPath => RouteError::NoPath { dc: dc.to_string() },
            wan::WanError::Unknown(_) => call.failed(e.to_string()),
            _ => RouteError::NoServer { dc: dc.to_string() },
        })?;
    match answer {
        Response::Relay(raw) => remote::decode(&raw).map_err(|e| call.failed(e)),
        Response::Error(e) => Err(call.failed(e)),
        other => Err(call.failed(format!("unexpected answer {other:?}"))),
    }
}

/// How a server of a secondary datacenter asks the primary what a token may do.
struct AskPrimary {
    federation: Federation,
    primary: Datacenter,
}

impl lan::acl::RemoteTokens for AskPrimary {
    fn resolve<'a>(
        &'a self,
        secret: &'a str,
        deadline: Instant,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<lan::acl::Grant>, String>> + Send + 'a>,
    > {
        Box::pin(async move {
            let call = Call::ResolveToken {
                secret: secret.to_owned(),
            };
            match remote(&self.federation, &self.primary, &call, deadline).await {
                Ok(Reply::ResolvedToken(grant)) => Ok(grant),
                Ok(Reply::Refused(why)) => Err(why),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// What a server does with the calls its client agents relay: serves them with a
/// gateway of its own, whose federation (when it has one) and load it holds.
struct ServeRelayed {
    federation: Result<Federation, String>,
    /// Shared with the server's gateway: the client agents' reads count against the
    /// same caps and coalesce with the server's own.
    load: Arc<load::Load>,
}

impl lan::Relay for ServeRelayed {
    fn relay<'a>(
        &'a self,
        lan: &'a Lan,
        request: lan::Opaque,
        proven: bool,
        _deadline: Instant,
    ) -> lan::Relaying<'a> {
        Box::pin(async move {
            let reply = match remote::decode::<Relayed>(&request) {
                Ok(Relayed { dc, call }) => {
                    let gateway = Gateway {
                        lan: lan.clone(),
                        federation: self.federation.clone(),
                        load: self.load.clone(),
                    };
                    gateway.serve_call(Some(dc.as_str()), call, proven).await
                }
                Err(e) => Reply::Refused(e),
            };
            remote::encode(&reply)
        })
    }
}

/// Extra time a remote call waits beyond the caller's deadline, for an answer the remote
/// server sends at the deadline (a blocking query that timed out).
/// Budget of the read that answers a shared blocking read's caller at its own deadline.
const NOW_TIMEOUT: Duration = Duration::from_secs(10);
const REMOTE_MARGIN: Duration = Duration::from_secs(2);

/// What this server answers to other datacenters: calls for this datacenter, served by
/// a gateway with no federation (so that none goes further).
struct WanService {
    here: Gateway,
}

impl Service for WanService {
    fn serve(&self, _caller: Caller, request: Request) -> Serving<'_> {
        Box::pin(async move {
            match request {
                Request::Ping => Response::Pong {
                    node: self.here.lan.node_name().to_owned(),
                    datacenter: self.here.lan.datacenter().to_string(),
                },
                Request::Relay(raw) => {
                    let reply = match remote::decode::<Call>(&raw) {
                        // Fanning out again is the asking server's work, not this one's.
                        Ok(Call::KeyringAll { .. } | Call::Datacenters) => {
                            Reply::Refused("not served to other datacenters".into())
                        }
                        // The caller's certificate proved it is a server of the federation.
                        Ok(call) => self.here.serve_call(None, call, true).await,
                        Err(e) => Reply::Refused(e),
                    };
                    Response::Relay(remote::encode(&reply))
                }
            }
        })
    }
}

impl Gateway {
    /// Runs a keyring operation on every pool: the WAN pool and the LAN pool of every
    /// datacenter (one server of each runs it there), or with `local_only` the local
    /// LAN pool alone. A client agent has a server of its datacenter do it.
    pub async fn keyring(
        &self,
        op: KeyOperation,
        local_only: bool,
        deadline: Instant,
    ) -> Result<Vec<PoolKeyring>, RouteError> {
        let local = self.lan.datacenter().to_string();
        match &self.federation {
            Ok(federation) => Ok(all_pools(&self.lan, federation, op, local_only, deadline).await),
            Err(_) if self.lan.is_server() => {
                let report = self.lan.keyring(op, deadline).await?;
                Ok(vec![PoolKeyring::lan(&local, report)])
            }
            Err(_) => {
                let call = Call::KeyringAll {
                    op,
                    local_only,
                    timeout_ms: remaining_ms(deadline),
                };
                let here = self.lan.datacenter();
                match self.via_server(here, call.clone(), deadline).await? {
                    Reply::KeyringAll(r) => r,
                    other => Err(unexpected(&call, other)),
                }
            }
        }
    }
}

async fn all_pools(
    lan: &Lan,
    federation: &Federation,
    op: KeyOperation,
    local_only: bool,
    deadline: Instant,
) -> Vec<PoolKeyring> {
    let local = lan.datacenter().to_string();
    let lan_pool = async {
        match lan.keyring(op.clone(), deadline).await {
            Ok(report) => PoolKeyring::lan(&local, report),
            Err(e) => PoolKeyring::failed(&local, e.to_string()),
        }
    };
    if local_only {
        return vec![lan_pool.await];
    }
    let wan_report = federation.keyring(op.clone(), deadline);
    let remote = federation
        .datacenters()
        .into_iter()
        .filter(|dc| *dc != local)
        .map(|dc| {
            let op = op.clone();
            async move {
                let call = Call::Keyring {
                    op,
                    timeout_ms: remaining_ms(deadline),
                };
                // The remote server answers a little before our deadline.
                let answer = match Datacenter::new(&dc) {
                    Ok(name) => {
                        remote(
                            federation,
                            &name,
                            &call,
                            deadline + Duration::from_millis(500),
                        )
                        .await
                    }
                    Err(e) => Err(call.failed(e.to_string())),
                };
                match answer {
                    Ok(Reply::Keyring(Ok(report))) => PoolKeyring::lan(&dc, report),
                    Ok(Reply::Keyring(Err(e)) | Reply::Refused(e)) => PoolKeyring::failed(&dc, e),
                    Ok(other) => PoolKeyring::failed(&dc, format!("unexpected answer {other:?}")),
                    Err(e) => PoolKeyring::failed(&dc, e.to_string()),
                }
            }
        });
    let (wan_report, lan_pool, remote) =
        tokio::join!(wan_report, lan_pool, futures_util::future::join_all(remote));
    let mut pools = vec![PoolKeyring::wan(&local, wan_report), lan_pool];
    pools.extend(remote);
    pools
}

/// A pool's answer to a keyring operation: the WAN pool, or the LAN pool of a datacenter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolKeyring {
    /// The WAN pool (else a LAN pool).
    pub wan: bool,
    /// The datacenter of the LAN pool; for the WAN pool, this agent's.
    pub datacenter: String,
    /// What the pool's members said. A datacenter that could not be reached has an empty
    /// report with the reason in `error`.
    pub report: KeyringReport,
    /// Why the pool could not be asked at all.
    pub error: Option<String>,
}

impl PoolKeyring {
    /// A LAN pool's answer.
    pub fn lan(datacenter: &str, report: KeyringReport) -> PoolKeyring {
        PoolKeyring {
            wan: false,
            datacenter: datacenter.to_owned(),
            report,
            error: None,
        }
    }

    /// The WAN pool's answer.
    pub fn wan(datacenter: &str, report: KeyringReport) -> PoolKeyring {
        PoolKeyring {
            wan: true,
            ..PoolKeyring::lan(datacenter, report)
        }
    }

    /// A datacenter that could not be asked.
    pub fn failed(datacenter: &str, error: String) -> PoolKeyring {
        PoolKeyring {
            error: Some(error),
            ..PoolKeyring::lan(datacenter, KeyringReport::default())
        }
    }

    /// How Consul names the pool in errors: `dc1 (LAN)` or `WAN`.
    pub fn label(&self) -> String {
        if self.wan {
            "WAN".to_owned()
        } else {
            format!("{} (LAN)", self.datacenter)
        }
    }
}
