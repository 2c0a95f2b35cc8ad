//! # proconsul-gateway: where a query is answered
//!
//! Every catalog read and write names a datacenter (or none, meaning the agent's own).
//! The gateway decides who answers it:
//!
//! ```text
//!   api (HTTP, DNS) ──(dc, Query)──▶ Gateway::read ──local dc──▶ lan::Lan::read
//!                                                 └─other dc──▶ wan::Federation::call
//!                                                               (a server of that dc,
//!                                                                nearest first)
//! ```
//!
//! A datacenter the WAN pool does not know is Consul's `No path to datacenter`; one
//! whose servers do not answer in time is `Remote DC has no server currently
//! reachable`. The gateway also lists the datacenters nearest first, runs keyring
//! operations across every pool, and serves what other datacenters ask this server.
//! Client agents are in no WAN pool: they send questions about another datacenter to a
//! server of their own, which asks over the WAN ([`lan::RemoteCatalog`]).
//!
//! Invariants: this crate never parses DNS or HTTP and knows nothing of Consul's JSON
//! (programs outside the agent ask through the HTTP API, with `proconsul::client`).

#![warn(missing_docs)]

mod load;
mod prepared;

pub use load::{
    CachePolicy, CacheStatus, MAX_BLOCKING_IN_FLIGHT, MAX_CACHED_ITEMS, MAX_ENTRIES, MAX_ENTRY_AGE,
    MAX_READS_IN_FLIGHT, UNKNOWN_DC_TTL,
};
pub use prepared::{Executed, MIN_FAILOVER_ATTEMPT};

use std::sync::Arc;
use std::time::Duration;

use catalog::{Command, Query};
use catalog::{
    Datacenter, QueryResult, RaftStatus, ReadError, ReadOptions, WriteError, deadline_in,
    remaining_ms,
};
use gossip::KeyOperation;
use lan::{KeyringHook, KeyringRun, Lan};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use wan::Federation;
use wan::rpc::{Caller, Request, Response, Service, Serving};

pub use lan::PoolKeyring;

/// Why a routed request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// callers run on `tasks`.
    pub fn new(lan: Lan, why: String, tasks: &TaskTracker) -> Gateway {
        Gateway {
            lan,
            federation: Err(why),
            load: Arc::new(load::Load::new(tasks)),
        }
    }

    /// A gateway for a server that is part of the WAN federation; it also serves the
    /// requests other datacenters send it. Reads shared by several callers run on
    /// `tasks`.
    pub fn with_federation(lan: Lan, federation: Federation, tasks: &TaskTracker) -> Gateway {
        let load = Arc::new(load::Load::new(tasks));
        federation.set_service(Arc::new(WanService { lan: lan.clone() }));
        lan.set_keyring_hook(Arc::new(AllPools {
            federation: federation.clone(),
        }));
        lan.set_remote_catalog(Arc::new(RemoteVia {
            federation: federation.clone(),
            local: lan.datacenter().clone(),
            load: load.clone(),
        }));
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
                let mut list: Vec<Datacenter> = self
                    .lan
                    .datacenters(deadline)
                    .await
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

    /// Who answers for `dc` (None = local): this agent's datacenter, or another one of
    /// the federation.
    fn route<'a>(&'a self, dc: Option<&'a str>) -> Result<Route<'a>, RouteError> {
        match dc {
            None => Ok(Route::Local),
            Some(name) if name.is_empty() || name == self.lan.datacenter().as_str() => {
                Ok(Route::Local)
            }
            Some(name) => match &self.federation {
                Ok(f) if f.knows(name) => Ok(Route::Remote(f, name)),
                // A client agent is in no WAN pool: a server of its datacenter knows.
                Err(_) if !self.lan.is_server() => Ok(Route::ViaServer(name)),
                _ => Err(RouteError::NoPath {
                    dc: name.to_owned(),
                }),
            },
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
        let name = match route {
            Route::Local if self.lan.is_server() => {
                return Ok(Cached {
                    result: self.lan.read(query, options).await?,
                    cache: status(None),
                });
            }
            Route::Local => self.lan.datacenter().as_str(),
            Route::Remote(_, name) => name,
            Route::ViaServer(name) => {
                if self.load.is_unknown(name) {
                    return Err(RouteError::NoPath {
                        dc: name.to_owned(),
                    });
                }
                name
            }
        };
        let key = load::Key::new(name, query, &options);
        let blocking = options.min_index > 0;
        if let Some(policy) = cache.filter(|_| !blocking)
            && let Some((result, age)) = self.load.cached(&key, policy.max_age)
        {
            return Ok(Cached {
                result,
                cache: status(Some(age)),
            });
        }
        let fetched = if options.consistency == catalog::Consistency::Stale && !blocking {
            let gateway = self.clone();
            let dc_owned = dc.map(str::to_owned);
            let query_owned = query.clone();
            let read = async move {
                gateway
                    .read_direct(dc_owned.as_deref(), &query_owned, options)
                    .await
            };
            self.load
                .coalesce(key.clone(), options.deadline + REMOTE_MARGIN, read)
                .await
        } else {
            self.read_direct(dc, query, options).await
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
                if let RouteError::NoPath { dc } = &e
                    && matches!(route, Route::ViaServer(_))
                {
                    self.load.mark_unknown(dc);
                }
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
        dc: Option<&str>,
        query: &Query,
        options: ReadOptions,
    ) -> Result<QueryResult, RouteError> {
        match self.route(dc)? {
            // The server RPC layer bounds these.
            Route::Local => Ok(self.lan.read(query, options).await?),
            Route::Remote(f, name) => {
                let _permit = self.load.permit(name, options.min_index > 0)?;
                remote_read(f, name, query, options).await
            }
            Route::ViaServer(name) => {
                let _permit = self.load.permit(name, options.min_index > 0)?;
                self.lan
                    .read_in(name, query, options)
                    .await
                    .map_err(|e| from_read_error(name, e))
            }
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
            Route::Remote(..) | Route::ViaServer(_) => Ok(None),
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
    /// it was applied at.
    pub async fn write(
        &self,
        dc: Option<&str>,
        command: Command,
        deadline: Instant,
    ) -> Result<u64, RouteError> {
        match self.route(dc)? {
            Route::Local => Ok(self.lan.write(command, deadline).await?),
            Route::Remote(f, name) => remote_write(f, name, command, deadline).await,
            Route::ViaServer(name) => {
                self.lan
                    .write_in(name, command, deadline)
                    .await
                    .map_err(|e| match e {
                        WriteError::NoPath => RouteError::NoPath {
                            dc: name.to_owned(),
                        },
                        WriteError::NoServer => RouteError::NoServer {
                            dc: name.to_owned(),
                        },
                        other => RouteError::Write(other),
                    })
            }
        }
    }

    /// Raft status of `dc` (leader and peers).
    pub async fn raft_status(
        &self,
        dc: Option<&str>,
        deadline: Instant,
    ) -> Result<RaftStatus, RouteError> {
        match self.route(dc)? {
            Route::Local => Ok(self.lan.raft_status(deadline).await?),
            Route::Remote(f, name) => remote_status(f, name, deadline).await,
            Route::ViaServer(name) => self
                .lan
                .raft_status_in(name, deadline)
                .await
                .map_err(|e| from_read_error(name, e)),
        }
    }
}

async fn remote_status(
    federation: &Federation,
    dc: &str,
    deadline: Instant,
) -> Result<RaftStatus, RouteError> {
    let request = Request::Status {
        timeout_ms: remaining_ms(deadline),
    };
    match remote(federation, dc, &request, deadline + REMOTE_MARGIN).await? {
        Response::Status(r) => Ok(r?),
        other => Err(RouteError::Read(ReadError::Rpc(format!(
            "unexpected answer {other:?}"
        )))),
    }
}

/// How long a client agent waits for a server's list of datacenters.
const DATACENTERS_TIMEOUT: Duration = Duration::from_secs(2);

/// The datacenters `federation` knows, nearest first: `local`, then the others by the
/// median estimated round-trip time from this server to their servers (WAN network
/// coordinates; the QUIC round-trip time measured on the connection where a server has
/// no coordinate yet), unknown ones last, ties by name (Consul's order).
async fn nearest_datacenters(local: Datacenter, federation: &Federation) -> Vec<Datacenter> {
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
    std::iter::once(local)
        .chain(
            remote
                .into_iter()
                .filter_map(|(_, dc)| Datacenter::new(&dc).ok()),
        )
        .collect()
}

/// Who answers a request.
enum Route<'a> {
    /// This agent's datacenter.
    Local,
    /// Another datacenter, over this server's WAN connections.
    Remote(&'a Federation, &'a str),
    /// Another datacenter, through a server of this (client) agent's datacenter.
    ViaServer(&'a str),
}

/// Sends `request` to a server of `dc`, within `deadline`.
async fn remote(
    federation: &Federation,
    dc: &str,
    request: &Request,
    deadline: Instant,
) -> Result<Response, RouteError> {
    federation
        .call(dc, request, deadline)
        .await
        .map_err(|e| match e {
            wan::WanError::NoPath => RouteError::NoPath { dc: dc.to_owned() },
            wan::WanError::Unknown(_) => RouteError::Write(WriteError::Rpc(e.to_string())),
            _ => RouteError::NoServer { dc: dc.to_owned() },
        })
}

async fn remote_read(
    federation: &Federation,
    dc: &str,
    query: &Query,
    options: ReadOptions,
) -> Result<QueryResult, RouteError> {
    let request = Request::Read {
        query: query.clone(),
        options: options.to_sent(),
    };
    // A blocking read answers at its deadline: leave room for the answer. Any other
    // read is answered before it, or not at all.
    let deadline = if options.min_index > 0 {
        options.deadline + REMOTE_MARGIN
    } else {
        options.deadline
    };
    match remote(federation, dc, &request, deadline).await? {
        Response::Read(r) => Ok(r?),
        Response::Error(e) => Err(RouteError::Read(ReadError::Rpc(e))),
        other => Err(RouteError::Read(ReadError::Rpc(format!(
            "unexpected answer {other:?}"
        )))),
    }
}

async fn remote_write(
    federation: &Federation,
    dc: &str,
    command: Command,
    deadline: Instant,
) -> Result<u64, RouteError> {
    let request = Request::Write {
        command: Box::new(command),
        timeout_ms: remaining_ms(deadline),
    };
    match remote(federation, dc, &request, deadline + REMOTE_MARGIN).await? {
        Response::Write(r) => Ok(r?),
        Response::Error(e) => Err(RouteError::Write(WriteError::Rpc(e))),
        other => Err(RouteError::Write(WriteError::Rpc(format!(
            "unexpected answer {other:?}"
        )))),
    }
}

fn from_read_error(dc: &str, e: ReadError) -> RouteError {
    match e {
        ReadError::NoPath => RouteError::NoPath { dc: dc.to_owned() },
        ReadError::NoServer => RouteError::NoServer { dc: dc.to_owned() },
        other => RouteError::Read(other),
    }
}

/// What a federated server does for the client agents of its datacenter that ask about
/// another datacenter.
struct RemoteVia {
    federation: Federation,
    local: Datacenter,
    /// Shared with the server's gateway: the client agents' reads count against the
    /// same caps and coalesce with the server's own.
    load: Arc<load::Load>,
}

impl lan::RemoteCatalog for RemoteVia {
    fn read<'a>(&'a self, dc: &'a str, query: Query, options: ReadOptions) -> lan::RemoteRead<'a> {
        Box::pin(async move {
            let blocking = options.min_index > 0;
            let direct = {
                let federation = self.federation.clone();
                let load = self.load.clone();
                let dc = dc.to_owned();
                let query = query.clone();
                async move {
                    let _permit = load.permit(&dc, blocking)?;
                    remote_read(&federation, &dc, &query, options).await
                }
            };
            let result = if options.consistency == catalog::Consistency::Stale && !blocking {
                let key = load::Key::new(dc, &query, &options);
                self.load
                    .coalesce(key, options.deadline + REMOTE_MARGIN, direct)
                    .await
            } else {
                direct.await
            };
            result.map_err(|e| match e {
                RouteError::NoPath { .. } => ReadError::NoPath,
                RouteError::NoServer { .. } => ReadError::NoServer,
                RouteError::Read(e) => e,
                other => ReadError::Rpc(other.to_string()),
            })
        })
    }

    fn write<'a>(
        &'a self,
        dc: &'a str,
        command: Command,
        deadline: Instant,
    ) -> lan::RemoteWrite<'a> {
        Box::pin(async move {
            remote_write(&self.federation, dc, command, deadline)
                .await
                .map_err(|e| match e {
                    RouteError::NoPath { .. } => WriteError::NoPath,
                    RouteError::NoServer { .. } => WriteError::NoServer,
                    RouteError::Write(e) => e,
                    other => WriteError::Rpc(other.to_string()),
                })
        })
    }

    fn raft_status<'a>(&'a self, dc: &'a str, deadline: Instant) -> lan::RemoteStatus<'a> {
        Box::pin(async move {
            remote_status(&self.federation, dc, deadline)
                .await
                .map_err(|e| match e {
                    RouteError::NoPath { .. } => ReadError::NoPath,
                    RouteError::NoServer { .. } => ReadError::NoServer,
                    RouteError::Read(e) => e,
                    other => ReadError::Rpc(other.to_string()),
                })
        })
    }

    fn datacenters(&self) -> lan::RemoteDatacenters<'_> {
        Box::pin(async move {
            nearest_datacenters(self.local.clone(), &self.federation)
                .await
                .into_iter()
                .map(String::from)
                .collect()
        })
    }
}

/// Extra time a remote call waits beyond the caller's deadline, for an answer the remote
/// server sends at the deadline (a blocking query that timed out).
const REMOTE_MARGIN: Duration = Duration::from_secs(2);

/// What this server answers to other datacenters.
struct WanService {
    lan: Lan,
}

impl Service for WanService {
    fn serve(&self, _caller: Caller, request: Request) -> Serving<'_> {
        Box::pin(async move {
            match request {
                Request::Ping => Response::Pong {
                    node: self.lan.node_name().to_owned(),
                    datacenter: self.lan.datacenter().to_string(),
                },
                Request::Keyring { op, timeout_ms } => {
                    match self.lan.keyring(op, deadline_in(timeout_ms)).await {
                        Ok(report) => Response::Keyring(report),
                        Err(e) => Response::Error(e.to_string()),
                    }
                }
                Request::Read { query, options } => {
                    Response::Read(self.lan.read(&query, options.to_options()).await)
                }
                Request::Write {
                    command,
                    timeout_ms,
                } => Response::Write(self.lan.write(*command, deadline_in(timeout_ms)).await),
                Request::Status { timeout_ms } => {
                    Response::Status(self.lan.raft_status(deadline_in(timeout_ms)).await)
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
        Ok(self.lan.keyring_all(op, local_only, deadline).await?)
    }
}

/// The keyring hook of a federated server: every pool it reaches.
struct AllPools {
    federation: Federation,
}

impl KeyringHook for AllPools {
    fn run<'a>(
        &'a self,
        lan: &'a Lan,
        op: KeyOperation,
        local_only: bool,
        deadline: Instant,
    ) -> KeyringRun<'a> {
        Box::pin(all_pools(lan, &self.federation, op, local_only, deadline))
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
                let request = Request::Keyring {
                    op,
                    timeout_ms: remaining_ms(deadline),
                };
                // The remote server answers a little before our deadline.
                let answer = federation
                    .call(&dc, &request, deadline + Duration::from_millis(500))
                    .await;
                match answer {
                    Ok(Response::Keyring(report)) => PoolKeyring::lan(&dc, report),
                    Ok(Response::Error(e)) => PoolKeyring::failed(&dc, e),
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
