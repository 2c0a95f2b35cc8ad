//! # A typed client of an agent, for any datacenter
//!
//! [`AgentClient`] is how a Rust program outside the agent asks the catalog of any
//! datacenter: it speaks Consul's HTTP API (port 8500) to one agent, names the
//! datacenter with `?dc=`, and that agent forwards the question over the WAN. It works
//! against a proconsul agent and, since it reads Consul's JSON, against a Consul agent
//! too.
//!
//! ```text
//!   your program ──HTTP :8500, ?dc=dc2──▶ agent (dc1) ──WAN──▶ a server of dc2
//!        ▲                                                          │
//!        └──── Answer { value: Vec<ServiceEntry>, meta: QueryMeta } ◀┘
//! ```
//!
//! Asking dc2 for the healthy instances of `web` through the local agent, then waiting
//! (a blocking query) until that list changes:
//!
//! ```text
//! use std::time::Duration;
//! use proconsul::client::{AgentClient, ClientError, QueryOptions};
//!
//! async fn web_in_dc2() -> Result<(), ClientError> {
//!     let agent = AgentClient::new("127.0.0.1:8500")?;
//!     let healthy = agent
//!         .health_service("web", true, &QueryOptions::in_dc("dc2"))
//!         .await?;
//!     for entry in &healthy.value {
//!         println!("{} {}:{}", entry.node.node, entry.address(), entry.service.port);
//!     }
//!     let changed = agent
//!         .health_service(
//!             "web",
//!             true,
//!             &QueryOptions::in_dc("dc2").blocking(healthy.meta.index, Duration::from_secs(20)),
//!         )
//!         .await?;
//!     println!("index {} -> {}", healthy.meta.index, changed.meta.index);
//!     Ok(())
//! }
//! ```
//!
//! Reads return an [`Answer`]: the decoded value and the [`QueryMeta`] of Consul's
//! headers (`X-Consul-Index` for the next blocking query, leader contact, cache hit).
//! Failures are a [`ClientError`] that says whose fault it was: the agent's answer
//! (`Http`, with its text, e.g. 500 `No path to datacenter`), no answer (`Transport`), or
//! an answer that is not the JSON expected (`Decode`). Nothing the agent sends can make
//! the client panic.
//!
//! The key/value store is read with [`AgentClient::kv_get`] (`None` for a missing key),
//! [`AgentClient::kv_list`] and [`AgentClient::kv_keys`], and written with
//! [`AgentClient::kv_put`] and [`AgentClient::kv_delete`] (both with an optional
//! check-and-set index; `Ok(false)` when it did not hold) and
//! [`AgentClient::kv_delete_tree`]. Values are bytes ([`KvPair::value`]), any bytes.
//! Locks are taken and given back with [`AgentClient::kv_lock`] for a session, which
//! [`AgentClient::session_create`] makes, [`AgentClient::session_renew`] keeps alive and
//! [`AgentClient::session_destroy`] ends.
//!
//! ACLs: tokens, policies and roles ([`AclToken`], [`AclPolicy`], [`AclRole`]) are
//! made, read, listed, changed and deleted with the `acl_*` methods
//! ([`AgentClient::acl_bootstrap`], [`AgentClient::acl_token_create`], …), and the agent's
//! own tokens are replaced with [`AgentClient::agent_token_set`]; a client built with
//! [`Client::with_token`] presents its token with every request.
//!
//! Every request is bounded by [`http::REQUEST_TIMEOUT`]; blocking queries therefore
//! wait at most [`MAX_WAIT`]. The raw client, [`Client`] (from [`http`]), stays available
//! ([`AgentClient::http`]) for the endpoints this module does not type; the CLI verbs
//! use it.
//!
//! This module is the client side of the HTTP API, for programs outside the agent; the
//! agent itself only uses the raw [`Client`], for the watches of its configuration
//! ([`crate::watch`]). It depends on none of the workspace's crates.

mod acl;
pub mod http;
mod types;

pub use self::http::{
    AddressError, Client, RequestError, Response, Stream, TlsOptions, encode, encode_segment,
};
pub use acl::{AclLink, AclNodeIdentity, AclPolicy, AclRole, AclServiceIdentity, AclToken};
pub use types::*;

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use self::http::REQUEST_TIMEOUT;

/// The longest wait a blocking query asks for. The agent adds up to wait/16 of jitter,
/// and the whole answer must arrive within [`http::REQUEST_TIMEOUT`]; a longer `wait`
/// is shortened to this, and a blocking query without one asks for this (Consul's own
/// default of 5 minutes would outlast the timeout).
pub const MAX_WAIT: Duration = Duration::from_secs(25);

const _: () = assert!(
    MAX_WAIT.as_millis() + MAX_WAIT.as_millis() / 16 + 2000 < REQUEST_TIMEOUT.as_millis(),
    "a blocking query must end well within the request timeout"
);

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The agent answered with an error status. `message` is its text as sent (trimmed):
    /// 400 means the request is wrong; 404 that the thing asked for does not exist;
    /// 500 `No path to datacenter` that the datacenter is unknown (retrying will not
    /// help), `Remote DC has no server currently reachable` that it is known but down
    /// (retry later); 429 that the agent is busy (retry later).
    #[error("the agent answered {status}: {message}")]
    Http {
        /// HTTP status code.
        status: u16,
        /// The agent's plain-text error.
        message: String,
    },
    /// No answer: the agent could not be reached, the connection broke, or the answer
    /// did not arrive within [`http::REQUEST_TIMEOUT`]. Also returned by
    /// [`AgentClient::new`] for an address it cannot use (a `unix://` one, or an
    /// `https://` one without a CA to check it). Try again later or ask another agent.
    #[error("{0}")]
    Transport(String),
    /// The agent answered 200 with a body that is not the JSON expected: it speaks
    /// another version of the API. Retrying will not help.
    #[error("unexpected answer from the agent: {0}")]
    Decode(String),
}

/// Which server may answer a read (Consul's consistency modes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// The leader answers, without checking it is still the leader.
    #[default]
    Default,
    /// Any server answers, however far behind (`?stale`): fastest, and works without a
    /// leader.
    Stale,
    /// The leader answers after confirming its leadership (`?consistent`).
    Consistent,
}

/// How a read is asked: where, how consistent, blocking or not, cached or not.
/// `QueryOptions::default()` asks the agent's own datacenter, once, without the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// The datacenter to ask (`?dc=`); `None` is the agent's own.
    pub datacenter: Option<String>,
    /// Which server may answer.
    pub consistency: Consistency,
    /// Block until the answer's index is above this one (`?index=`), a blocking query.
    pub index: Option<u64>,
    /// How long a blocking query waits for a change (`?wait=`), at most [`MAX_WAIT`].
    pub wait: Option<Duration>,
    /// Accept an answer from the agent's cache at most this old (`?cached&max-age=`,
    /// whole seconds).
    pub cached: Option<Duration>,
    /// Sort by distance from this node (`?near=`; `_agent` is the agent itself).
    /// proconsul takes it for prepared queries only and refuses it elsewhere.
    pub near: Option<String>,
}

impl QueryOptions {
    /// Asks datacenter `dc`.
    pub fn in_dc(dc: impl Into<String>) -> QueryOptions {
        QueryOptions {
            datacenter: Some(dc.into()),
            ..QueryOptions::default()
        }
    }

    /// Lets any server answer (`?stale`).
    pub fn stale(self) -> QueryOptions {
        QueryOptions {
            consistency: Consistency::Stale,
            ..self
        }
    }

    /// Has the leader confirm its leadership before answering (`?consistent`).
    pub fn consistent(self) -> QueryOptions {
        QueryOptions {
            consistency: Consistency::Consistent,
            ..self
        }
    }

    /// Waits up to `wait` for the answer's index to pass `index` (the index of a
    /// previous answer, [`QueryMeta::index`]).
    pub fn blocking(self, index: u64, wait: Duration) -> QueryOptions {
        QueryOptions {
            index: Some(index),
            wait: Some(wait),
            ..self
        }
    }

    /// Accepts a cached answer at most `max_age` old.
    pub fn cached(self, max_age: Duration) -> QueryOptions {
        QueryOptions {
            cached: Some(max_age),
            ..self
        }
    }

    /// Sorts by distance from `node`.
    pub fn near(self, node: impl Into<String>) -> QueryOptions {
        QueryOptions {
            near: Some(node.into()),
            ..self
        }
    }

    /// Adds these options to a query string.
    fn render(&self, query: &mut QueryString) {
        if let Some(dc) = &self.datacenter {
            query.pair("dc", dc);
        }
        match self.consistency {
            Consistency::Default => {}
            Consistency::Stale => query.flag("stale"),
            Consistency::Consistent => query.flag("consistent"),
        }
        if let Some(index) = self.index {
            query.pair("index", &index.to_string());
        }
        let wait = match (self.index, self.wait) {
            (_, Some(wait)) => Some(wait.min(MAX_WAIT)),
            (Some(_), None) => Some(MAX_WAIT),
            (None, None) => None,
        };
        if let Some(wait) = wait {
            query.pair("wait", &go_duration(wait));
        }
        if let Some(max_age) = self.cached {
            query.flag("cached");
            query.pair("max-age", &max_age.as_secs().to_string());
        }
        if let Some(near) = &self.near {
            query.pair("near", near);
        }
    }
}

/// A duration as Go's `time.ParseDuration` reads it: `10s`, or `1500ms`.
fn go_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A request path and its query string, values percent-encoded.
struct QueryString {
    path: String,
    parts: Vec<String>,
}

impl QueryString {
    fn new(path: String) -> QueryString {
        QueryString {
            path,
            parts: Vec::new(),
        }
    }

    fn flag(&mut self, name: &str) {
        self.parts.push(name.to_owned());
    }

    fn pair(&mut self, name: &str, value: &str) {
        self.parts.push(format!("{name}={}", encode(value)));
    }

    fn finish(self) -> String {
        if self.parts.is_empty() {
            self.path
        } else {
            format!("{}?{}", self.path, self.parts.join("&"))
        }
    }
}

/// Whether a cached answer was used (`X-Cache`, `Age`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheHit {
    /// The answer came from the agent's cache, this old.
    Hit {
        /// Time since the agent fetched it (`Age`, whole seconds).
        age: Duration,
    },
    /// The agent fetched a fresh answer (and cached it).
    Miss,
}

/// What Consul's headers say about a read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryMeta {
    /// The index of the answer (`X-Consul-Index`): pass it to
    /// [`QueryOptions::blocking`] to wait for the next change. 0 when absent.
    pub index: u64,
    /// Whether the answering server knew a leader (`X-Consul-KnownLeader`).
    pub known_leader: bool,
    /// Time since the answering server last heard from the leader
    /// (`X-Consul-LastContact`, milliseconds); zero on the leader.
    pub last_contact: Duration,
    /// Whether the cache was used; `None` when the read did not ask for it.
    pub cache: Option<CacheHit>,
}

impl QueryMeta {
    /// Reads the headers of an answer (names in any case). A header that is missing or
    /// unreadable leaves its field at the default.
    pub fn from_headers(headers: &[(String, String)]) -> QueryMeta {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        };
        let number = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
        let cache = match get("x-cache") {
            Some(v) if v.eq_ignore_ascii_case("hit") => Some(CacheHit::Hit {
                age: Duration::from_secs(number("age").unwrap_or(0)),
            }),
            Some(v) if v.eq_ignore_ascii_case("miss") => Some(CacheHit::Miss),
            _ => None,
        };
        QueryMeta {
            index: number("x-consul-index").unwrap_or(0),
            known_leader: get("x-consul-knownleader") == Some("true"),
            last_contact: Duration::from_millis(number("x-consul-lastcontact").unwrap_or(0)),
            cache,
        }
    }
}

/// A read's value and what its headers said.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer<T> {
    /// The decoded body.
    pub value: T,
    /// Index, leader contact and cache status.
    pub meta: QueryMeta,
}

/// A client of one agent's HTTP API, asking about any datacenter. Cloning copies the
/// address only; every request opens its own connection.
#[derive(Debug, Clone)]
pub struct AgentClient {
    http: Client,
}

impl AgentClient {
    /// A client of the agent at `http_addr`: `127.0.0.1:8500`, `http://127.0.0.1:8500`
    /// or `https://127.0.0.1:8501`. Nothing is sent yet.
    pub fn new(http_addr: &str) -> Result<AgentClient, ClientError> {
        let http = Client::new(http_addr).map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(AgentClient { http })
    }

    /// A client speaking through `http`, built with [`Client::with_tls`] for an HTTPS
    /// agent with its own CA or a client certificate.
    pub fn from_http(http: Client) -> AgentClient {
        AgentClient { http }
    }

    /// The raw client, for endpoints this one does not type.
    pub fn http(&self) -> &Client {
        &self.http
    }

    /// The datacenters the agent knows, nearest first (`/v1/catalog/datacenters`).
    pub async fn datacenters(&self) -> Result<Vec<String>, ClientError> {
        let path = "/v1/catalog/datacenters";
        let r = self.send(Method::GET, path, None).await?;
        decode(path, &r.body)
    }

    /// Every node of the datacenter (`/v1/catalog/nodes`).
    pub async fn catalog_nodes(
        &self,
        options: &QueryOptions,
    ) -> Result<Answer<Vec<Node>>, ClientError> {
        let mut query = QueryString::new("/v1/catalog/nodes".into());
        options.render(&mut query);
        self.read(query.finish()).await
    }

    /// Every service of the datacenter with the tags of its instances
    /// (`/v1/catalog/services`).
    pub async fn catalog_services(
        &self,
        options: &QueryOptions,
    ) -> Result<Answer<BTreeMap<String, Vec<String>>>, ClientError> {
        let mut query = QueryString::new("/v1/catalog/services".into());
        options.render(&mut query);
        let answer: Answer<BTreeMap<String, Option<Vec<String>>>> =
            self.read(query.finish()).await?;
        Ok(Answer {
            value: answer
                .value
                .into_iter()
                .map(|(name, tags)| (name, tags.unwrap_or_default()))
                .collect(),
            meta: answer.meta,
        })
    }

    /// The instances of service `name`, healthy or not, optionally only those with
    /// `tag` (`/v1/catalog/service/:name`).
    pub async fn catalog_service(
        &self,
        name: &str,
        tag: Option<&str>,
        options: &QueryOptions,
    ) -> Result<Answer<Vec<CatalogService>>, ClientError> {
        let mut query = QueryString::new(format!("/v1/catalog/service/{}", encode_segment(name)));
        options.render(&mut query);
        if let Some(tag) = tag {
            query.pair("tag", tag);
        }
        self.read(query.finish()).await
    }

    /// The instances of service `name` with their nodes and checks; with
    /// `passing_only`, only those whose every check passes
    /// (`/v1/health/service/:name`).
    pub async fn health_service(
        &self,
        name: &str,
        passing_only: bool,
        options: &QueryOptions,
    ) -> Result<Answer<Vec<ServiceEntry>>, ClientError> {
        let mut query = QueryString::new(format!("/v1/health/service/{}", encode_segment(name)));
        options.render(&mut query);
        if passing_only {
            query.flag("passing");
        }
        self.read(query.finish()).await
    }

    /// Runs the prepared query `id_or_name` stored in the datacenter of `options`
    /// (`/v1/query/:id/execute`); it may fail over to other datacenters.
    pub async fn execute_query(
        &self,
        id_or_name: &str,
        options: &QueryOptions,
    ) -> Result<Answer<QueryExecution>, ClientError> {
        let mut query =
            QueryString::new(format!("/v1/query/{}/execute", encode_segment(id_or_name)));
        options.render(&mut query);
        self.read(query.finish()).await
    }

    /// Registers a node, and optionally an instance and a check, in datacenter `dc`
    /// (the agent's own when `None`).
    pub async fn register(
        &self,
        registration: &CatalogRegistration,
        dc: Option<&str>,
    ) -> Result<(), ClientError> {
        self.write("/v1/catalog/register", dc, registration).await
    }

    /// Removes service instance `service_id` of `node`, or the whole node when `None`,
    /// from datacenter `dc` (the agent's own when `None`).
    pub async fn deregister(
        &self,
        node: &str,
        service_id: Option<&str>,
        dc: Option<&str>,
    ) -> Result<(), ClientError> {
        let body = Deregistration { node, service_id };
        self.write("/v1/catalog/deregister", dc, &body).await
    }

    /// The Raft leader of datacenter `dc` as `ip:port`, or `""` when it has none
    /// (`/v1/status/leader`).
    pub async fn leader(&self, dc: Option<&str>) -> Result<String, ClientError> {
        let mut query = QueryString::new("/v1/status/leader".into());
        if let Some(dc) = dc {
            query.pair("dc", dc);
        }
        let path = query.finish();
        let r = self.send(Method::GET, &path, None).await?;
        decode(&path, &r.body)
    }

    /// The key `key` with its value, or `None` when there is no such key
    /// (`GET /v1/kv/:key`).
    pub async fn kv_get(
        &self,
        key: &str,
        options: &QueryOptions,
    ) -> Result<Answer<Option<KvPair>>, ClientError> {
        let mut query = QueryString::new(kv_path(key));
        options.render(&mut query);
        let answer: Answer<Option<Vec<KvPair>>> = self.read_or_missing(query.finish()).await?;
        Ok(Answer {
            value: answer.value.and_then(|list| list.into_iter().next()),
            meta: answer.meta,
        })
    }

    /// Every key that starts with `prefix`, with its value, in key order; `""` is the
    /// whole store (`GET /v1/kv/:prefix?recurse`).
    pub async fn kv_list(
        &self,
        prefix: &str,
        options: &QueryOptions,
    ) -> Result<Answer<Vec<KvPair>>, ClientError> {
        let mut query = QueryString::new(kv_path(prefix));
        options.render(&mut query);
        query.flag("recurse");
        let answer = self.read_or_missing(query.finish()).await?;
        Ok(Answer {
            value: answer.value.unwrap_or_default(),
            meta: answer.meta,
        })
    }

    /// The names of the keys that start with `prefix`, in order. With a `separator`,
    /// names are cut after the first separator past the prefix and listed once, as
    /// folders: `app/` rather than `app/a` and `app/b` (`GET /v1/kv/:prefix?keys`).
    pub async fn kv_keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
        options: &QueryOptions,
    ) -> Result<Answer<Vec<String>>, ClientError> {
        let mut query = QueryString::new(kv_path(prefix));
        options.render(&mut query);
        query.flag("keys");
        if let Some(separator) = separator.filter(|s| !s.is_empty()) {
            query.pair("separator", separator);
        }
        let answer = self.read_or_missing(query.finish()).await?;
        Ok(Answer {
            value: answer.value.unwrap_or_default(),
            meta: answer.meta,
        })
    }

    /// Sets `key` to `value` with `flags` in datacenter `dc` (the agent's own when
    /// `None`). With `cas`, only if the key's [`KvPair::modify_index`] is that index
    /// (`Some(0)`: only if the key does not exist). `Ok(false)` means the condition did
    /// not hold and nothing was written (`PUT /v1/kv/:key`).
    pub async fn kv_put(
        &self,
        key: &str,
        value: &[u8],
        flags: u64,
        cas: Option<u64>,
        dc: Option<&str>,
    ) -> Result<bool, ClientError> {
        let mut query = QueryString::new(kv_path(key));
        if let Some(dc) = dc {
            query.pair("dc", dc);
        }
        if flags != 0 {
            query.pair("flags", &flags.to_string());
        }
        if let Some(index) = cas {
            query.pair("cas", &index.to_string());
        }
        let path = query.finish();
        let r = self.send_bytes(Method::PUT, &path, value.to_vec()).await?;
        decode(&path, &r.body)
    }

    /// Takes (`acquire`) or gives back the lock of `key` for `session`, writing `value` and
    /// `flags`, in datacenter `dc`; `Ok(false)` when the lock is held by another session,
    /// not held, or in a lock delay (`PUT /v1/kv/:key?acquire=` or `?release=`).
    pub async fn kv_lock(
        &self,
        key: &str,
        value: &[u8],
        flags: u64,
        session: &str,
        acquire: bool,
        dc: Option<&str>,
    ) -> Result<bool, ClientError> {
        let mut query = QueryString::new(kv_path(key));
        if let Some(dc) = dc {
            query.pair("dc", dc);
        }
        if flags != 0 {
            query.pair("flags", &flags.to_string());
        }
        query.pair(if acquire { "acquire" } else { "release" }, session);
        let path = query.finish();
        let r = self.send_bytes(Method::PUT, &path, value.to_vec()).await?;
        decode(&path, &r.body)
    }

    /// Deletes `key` (a key that does not exist is no error) in datacenter `dc`. With
    /// `cas`, only if the key's [`KvPair::modify_index`] is that index; `Ok(false)` means
    /// it was not (`DELETE /v1/kv/:key`).
    pub async fn kv_delete(
        &self,
        key: &str,
        cas: Option<u64>,
        dc: Option<&str>,
    ) -> Result<bool, ClientError> {
        let mut query = QueryString::new(kv_path(key));
        if let Some(dc) = dc {
            query.pair("dc", dc);
        }
        if let Some(index) = cas {
            query.pair("cas", &index.to_string());
        }
        let path = query.finish();
        let r = self.send(Method::DELETE, &path, None).await?;
        decode(&path, &r.body)
    }

    /// Deletes every key that starts with `prefix` (`""`: the whole store) in datacenter
    /// `dc` (`DELETE /v1/kv/:prefix?recurse`).
    pub async fn kv_delete_tree(&self, prefix: &str, dc: Option<&str>) -> Result<(), ClientError> {
        let mut query = QueryString::new(kv_path(prefix));
        if let Some(dc) = dc {
            query.pair("dc", dc);
        }
        query.flag("recurse");
        self.send(Method::DELETE, &query.finish(), None).await?;
        Ok(())
    }

    /// Creates a session in datacenter `dc` (`PUT /v1/session/create`); returns its ID.
    pub async fn session_create(
        &self,
        session: &SessionRequest,
        dc: Option<&str>,
    ) -> Result<String, ClientError> {
        #[derive(serde::Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let mut query = QueryString::new("/v1/session/create".into());
        if let Some(dc) = dc {
            query.pair("dc", dc);
        }
        let path = query.finish();
        // A struct of strings always serialises.
        let body = serde_json::to_string(session).expect("a session request serialises");
        let r = self.send(Method::PUT, &path, Some(body)).await?;
        let created: Created = decode(&path, &r.body)?;
        Ok(created.id)
    }

    /// Renews session `id`'s TTL (`PUT /v1/session/renew/:id`); `None` when the agent no
    /// longer knows the session (it ended: 404).
    pub async fn session_renew(
        &self,
        id: &str,
        dc: Option<&str>,
    ) -> Result<Option<SessionEntry>, ClientError> {
        let mut query = QueryString::new(format!("/v1/session/renew/{}", encode_segment(id)));
        if let Some(dc) = dc {
            query.pair("dc", dc);
        }
        let path = query.finish();
        let r = self.raw(Method::PUT, &path, Vec::new()).await?;
        match r.status {
            200 => {
                let list: Vec<SessionEntry> = decode(&path, &r.body)?;
                Ok(list.into_iter().next())
            }
            404 => Ok(None),
            status => Err(ClientError::Http {
                status,
                message: r.body.trim().to_owned(),
            }),
        }
    }

    /// Ends session `id`, releasing or deleting the keys it holds; an unknown ID is no
    /// error (`PUT /v1/session/destroy/:id`).
    pub async fn session_destroy(&self, id: &str, dc: Option<&str>) -> Result<(), ClientError> {
        let mut query = QueryString::new(format!("/v1/session/destroy/{}", encode_segment(id)));
        if let Some(dc) = dc {
            query.pair("dc", dc);
        }
        self.send(Method::PUT, &query.finish(), None).await?;
        Ok(())
    }

    /// A read where 404 means "nothing there" (`None`), as the KV endpoint answers.
    async fn read_or_missing<T: DeserializeOwned>(
        &self,
        path: String,
    ) -> Result<Answer<Option<T>>, ClientError> {
        let r = self.raw(Method::GET, &path, Vec::new()).await?;
        let meta = QueryMeta::from_headers(&r.headers);
        match r.status {
            200 => Ok(Answer {
                value: Some(decode(&path, &r.body)?),
                meta,
            }),
            404 => Ok(Answer { value: None, meta }),
            status => Err(ClientError::Http {
                status,
                message: r.body.trim().to_owned(),
            }),
        }
    }

    async fn read<T: DeserializeOwned>(&self, path: String) -> Result<Answer<T>, ClientError> {
        let r = self.send(Method::GET, &path, None).await?;
        Ok(Answer {
            value: decode(&path, &r.body)?,
            meta: QueryMeta::from_headers(&r.headers),
        })
    }

    async fn write(
        &self,
        path: &str,
        dc: Option<&str>,
        body: &impl Serialize,
    ) -> Result<(), ClientError> {
        let mut query = QueryString::new(path.to_owned());
        if let Some(dc) = dc {
            query.pair("dc", dc);
        }
        // Our request types are structs of strings, numbers and string-keyed maps.
        let body = serde_json::to_string(body).expect("a request serialises");
        self.send(Method::PUT, &query.finish(), Some(body)).await?;
        Ok(())
    }

    /// One request; anything but 200 is the agent's error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Response, ClientError> {
        let body = body.map(String::into_bytes).unwrap_or_default();
        self.send_bytes(method, path, body).await
    }

    /// One request whose body is any bytes; anything but 200 is the agent's error.
    async fn send_bytes(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Response, ClientError> {
        let r = self.raw(method, path, body).await?;
        if r.status == 200 {
            Ok(r)
        } else {
            Err(ClientError::Http {
                status: r.status,
                message: r.body.trim().to_owned(),
            })
        }
    }

    /// One request, whatever the answer's status.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Response, ClientError> {
        self.http
            .call_bytes(method, path, body)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))
    }
}

/// `/v1/kv/` and the key, each of its `/`-separated segments percent-encoded.
fn kv_path(key: &str) -> String {
    let segments: Vec<String> = key.split('/').map(encode_segment).collect();
    format!("/v1/kv/{}", segments.join("/"))
}

fn decode<T: DeserializeOwned>(path: &str, body: &str) -> Result<T, ClientError> {
    serde_json::from_str(body).map_err(|e| ClientError::Decode(format!("{path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(options: &QueryOptions) -> String {
        let mut query = QueryString::new("/v1/catalog/nodes".into());
        options.render(&mut query);
        query.finish()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn options_render_as_consul_parameters_with_values_encoded() {
        for (options, want) in [
            (QueryOptions::default(), "/v1/catalog/nodes"),
            (QueryOptions::in_dc("dc2"), "/v1/catalog/nodes?dc=dc2"),
            (
                QueryOptions::in_dc("dc 2/x&y=z").stale(),
                "/v1/catalog/nodes?dc=dc+2%2Fx%26y%3Dz&stale",
            ),
            (
                QueryOptions::default().consistent(),
                "/v1/catalog/nodes?consistent",
            ),
            (
                QueryOptions::in_dc("dc2").blocking(42, secs(10)),
                "/v1/catalog/nodes?dc=dc2&index=42&wait=10s",
            ),
            (
                QueryOptions::default().blocking(7, Duration::from_millis(1500)),
                "/v1/catalog/nodes?index=7&wait=1500ms",
            ),
            // Beyond what the request timeout allows: shortened to MAX_WAIT.
            (
                QueryOptions::default().blocking(7, secs(600)),
                "/v1/catalog/nodes?index=7&wait=25s",
            ),
            // No wait given: MAX_WAIT rather than Consul's 5 minutes.
            (
                QueryOptions {
                    index: Some(3),
                    ..QueryOptions::default()
                },
                "/v1/catalog/nodes?index=3&wait=25s",
            ),
            (
                QueryOptions::in_dc("dc2").stale().cached(secs(30)),
                "/v1/catalog/nodes?dc=dc2&stale&cached&max-age=30",
            ),
            (
                QueryOptions::default().near("_agent"),
                "/v1/catalog/nodes?near=_agent",
            ),
        ] {
            assert_eq!(path(&options), want, "{options:?}");
        }
        assert_eq!(encode_segment("web api/v1"), "web%20api%2Fv1");
    }

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn session_requests_leave_out_what_the_agent_defaults() {
        let request = SessionRequest {
            name: "job".into(),
            ttl: "15s".into(),
            ..SessionRequest::default()
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"Name":"job","TTL":"15s"}"#
        );
        let request = SessionRequest {
            behavior: "delete".into(),
            ..request
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"Name":"job","TTL":"15s","Behavior":"delete"}"#
        );
        let request = SessionRequest {
            node: "s1".into(),
            node_checks: Some(vec![]),
            ..request
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"Name":"job","TTL":"15s","Behavior":"delete","Node":"s1","NodeChecks":[]}"#
        );
        let entry: SessionEntry = serde_json::from_str(
            r#"{"ID":"s1","Name":"job","Node":"n1","LockDelay":15000000000,
                "Behavior":"release","TTL":"15s","NodeChecks":null,
                "ServiceChecks":[{"ID":"c","Namespace":""}],"CreateIndex":4,"ModifyIndex":4}"#,
        )
        .unwrap();
        assert_eq!((entry.id.as_str(), entry.ttl.as_str()), ("s1", "15s"));
        assert!(entry.node_checks.is_empty());
    }

    #[test]
    fn meta_is_read_from_consul_headers() {
        let meta = QueryMeta::from_headers(&headers(&[
            ("content-type", "application/json"),
            ("X-Consul-Index", "1234"),
            ("x-consul-knownleader", "true"),
            ("x-consul-lastcontact", "250"),
            ("x-cache", "HIT"),
            ("age", "17"),
        ]));
        assert_eq!(
            meta,
            QueryMeta {
                index: 1234,
                known_leader: true,
                last_contact: Duration::from_millis(250),
                cache: Some(CacheHit::Hit { age: secs(17) }),
            }
        );
        let meta = QueryMeta::from_headers(&headers(&[
            ("x-consul-index", "9"),
            ("x-consul-knownleader", "false"),
            ("x-cache", "MISS"),
            ("age", "0"),
        ]));
        assert_eq!(meta.cache, Some(CacheHit::Miss));
        assert!(!meta.known_leader);
        // Missing or garbled headers leave the defaults; nothing panics.
        assert_eq!(QueryMeta::from_headers(&[]), QueryMeta::default());
        let meta = QueryMeta::from_headers(&headers(&[
            ("x-consul-index", "-1"),
            ("x-consul-lastcontact", "soon"),
            ("x-cache", "MAYBE"),
        ]));
        assert_eq!(meta, QueryMeta::default());
        let meta = QueryMeta::from_headers(&headers(&[("x-cache", "HIT")]));
        assert_eq!(
            meta.cache,
            Some(CacheHit::Hit {
                age: Duration::ZERO
            })
        );
    }

    /// `/v1/health/service/web` as our API renders it (`api::http::json`).
    const HEALTH: &str = r#"[{
        "Node": {"ID": "0b6a3c1e-0000-4000-8000-000000000001", "Node": "web-2",
            "Address": "10.2.0.7", "Datacenter": "dc2",
            "TaggedAddresses": {"lan": "10.2.0.7"}, "Meta": {"rack": "r1"},
            "CreateIndex": 11, "ModifyIndex": 12},
        "Service": {"ID": "web-1", "Service": "web", "Tags": ["v2"], "Address": "",
            "TaggedAddresses": {"lan_ipv4": {"Address": "10.2.0.7", "Port": 80}},
            "Meta": {"version": "2"}, "Port": 80,
            "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
            "CreateIndex": 13, "ModifyIndex": 14},
        "Checks": [{"Node": "web-2", "CheckID": "service:web-1", "Name": "web alive",
            "Status": "passing", "Notes": "", "Output": "HTTP 200",
            "ServiceID": "web-1", "ServiceName": "web", "ServiceTags": ["v2"],
            "Type": "http", "Interval": "10s", "Timeout": "1s", "ExposedPort": 0,
            "Definition": {}, "CreateIndex": 15, "ModifyIndex": 16}]
    }]"#;

    fn web_entry() -> ServiceEntry {
        ServiceEntry {
            node: Node {
                id: "0b6a3c1e-0000-4000-8000-000000000001".into(),
                node: "web-2".into(),
                address: "10.2.0.7".into(),
                datacenter: "dc2".into(),
                tagged_addresses: [("lan".into(), "10.2.0.7".into())].into(),
                meta: [("rack".into(), "r1".into())].into(),
                create_index: 11,
                modify_index: 12,
            },
            service: Service {
                id: "web-1".into(),
                service: "web".into(),
                tags: vec!["v2".into()],
                address: String::new(),
                meta: [("version".into(), "2".into())].into(),
                port: 80,
                create_index: 13,
                modify_index: 14,
            },
            checks: vec![HealthCheck {
                node: "web-2".into(),
                check_id: "service:web-1".into(),
                name: "web alive".into(),
                status: "passing".into(),
                notes: String::new(),
                output: "HTTP 200".into(),
                service_id: "web-1".into(),
                service_name: "web".into(),
            }],
        }
    }

    #[test]
    fn health_entries_decode_from_our_json() {
        let list: Vec<ServiceEntry> = decode("/v1/health/service/web", HEALTH).unwrap();
        assert_eq!(list, [web_entry()]);
        assert_eq!(
            list[0].address(),
            "10.2.0.7",
            "the node's, as Address is empty"
        );
    }

    #[test]
    fn nodes_and_catalog_services_decode_from_our_json() {
        let nodes: Vec<Node> = decode(
            "/v1/catalog/nodes",
            r#"[{"ID": "", "Node": "b0", "Address": "127.0.0.2", "Datacenter": "dc2",
                "TaggedAddresses": {"lan": "127.0.0.2", "wan": "127.0.0.2"}, "Meta": {},
                "CreateIndex": 5, "ModifyIndex": 6}]"#,
        )
        .unwrap();
        assert_eq!(nodes[0].node, "b0");
        assert_eq!(nodes[0].tagged_addresses["wan"], "127.0.0.2");
        assert_eq!((nodes[0].create_index, nodes[0].modify_index), (5, 6));

        let list: Vec<CatalogService> = decode(
            "/v1/catalog/service/web",
            r#"[{"ID": "n-1", "Node": "web-2", "Address": "10.2.0.7", "Datacenter": "dc2",
                "TaggedAddresses": {}, "NodeMeta": {"rack": "r1"}, "ServiceKind": "",
                "ServiceID": "web-1", "ServiceName": "web", "ServiceTags": ["v2"],
                "ServiceAddress": "10.2.0.70",
                "ServiceTaggedAddresses": {"lan_ipv4": {"Address": "10.2.0.70", "Port": 80}},
                "ServiceWeights": {"Passing": 1, "Warning": 1}, "ServiceMeta": {"v": "2"},
                "ServicePort": 80, "ServiceSocketPath": "", "ServiceEnableTagOverride": false,
                "ServiceProxy": {"MeshGateway": {}, "Expose": {}}, "ServiceConnect": {},
                "CreateIndex": 13, "ModifyIndex": 14}]"#,
        )
        .unwrap();
        assert_eq!(
            list,
            [CatalogService {
                id: "n-1".into(),
                node: "web-2".into(),
                address: "10.2.0.7".into(),
                datacenter: "dc2".into(),
                tagged_addresses: BTreeMap::new(),
                node_meta: [("rack".into(), "r1".into())].into(),
                service_id: "web-1".into(),
                service_name: "web".into(),
                service_tags: vec!["v2".into()],
                service_address: "10.2.0.70".into(),
                service_port: 80,
                service_meta: [("v".into(), "2".into())].into(),
                create_index: 13,
                modify_index: 14,
            }]
        );
    }

    #[test]
    fn query_executions_decode_from_our_json() {
        let body = format!(
            r#"{{"Service": "web", "Nodes": {HEALTH}, "DNS": {{"TTL": "10s"}},
                "Datacenter": "dc2", "Failovers": 1}}"#
        );
        let executed: QueryExecution = decode("/v1/query/web-q/execute", &body).unwrap();
        assert_eq!(
            executed,
            QueryExecution {
                service: "web".into(),
                nodes: vec![web_entry()],
                dns: QueryDns { ttl: "10s".into() },
                datacenter: "dc2".into(),
                failovers: 1,
            }
        );
    }

    #[test]
    fn consul_nulls_and_missing_fields_read_as_empty() {
        // Go writes nil maps and slices as null, and older agents omit fields.
        let list: Vec<ServiceEntry> = decode(
            "/v1/health/service/web",
            r#"[{"Node": {"Node": "n1", "Address": "10.0.0.1", "TaggedAddresses": null,
                    "Meta": null, "Partition": "default"},
                 "Service": {"ID": "web", "Service": "web", "Tags": null, "Meta": null,
                    "Port": 80},
                 "Checks": null}]"#,
        )
        .unwrap();
        assert_eq!(list[0].node.node, "n1");
        assert!(list[0].node.meta.is_empty() && list[0].node.datacenter.is_empty());
        assert!(list[0].service.tags.is_empty() && list[0].checks.is_empty());
        let executed: QueryExecution = decode(
            "/v1/query/q/execute",
            r#"{"Service": "web", "Nodes": null}"#,
        )
        .unwrap();
        assert!(executed.nodes.is_empty() && executed.dns.ttl.is_empty());
    }

    #[test]
    fn a_body_of_the_wrong_shape_is_a_decode_error() {
        for body in [
            "",
            "{",
            "null",
            r#"[{"Node": 5}]"#,
            r#"[{"Service": {"Port": 70000}}]"#,
        ] {
            match decode::<Vec<ServiceEntry>>("/v1/health/service/web", body) {
                Err(ClientError::Decode(text)) => {
                    assert!(text.starts_with("/v1/health/service/web: "), "{text}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        assert_eq!(decode::<String>("/v1/status/leader", r#""""#).unwrap(), "");
    }

    #[test]
    fn registrations_serialise_with_consul_field_names() {
        let registration = CatalogRegistration {
            node: "web-2".into(),
            address: "10.2.0.7".into(),
            datacenter: None,
            service: Some(ServiceRegistration {
                id: "web-1".into(),
                service: "web".into(),
                tags: vec!["v2".into()],
                address: String::new(),
                port: 80,
                meta: [("v".into(), "2".into())].into(),
            }),
            check: Some(CheckRegistration {
                check_id: "web-alive".into(),
                name: "web alive".into(),
                status: "passing".into(),
                service_id: "web-1".into(),
            }),
        };
        assert_eq!(
            serde_json::to_value(&registration).unwrap(),
            serde_json::json!({
                "Node": "web-2", "Address": "10.2.0.7",
                "Service": {"ID": "web-1", "Service": "web", "Tags": ["v2"], "Port": 80,
                    "Meta": {"v": "2"}},
                "Check": {"CheckID": "web-alive", "Name": "web alive", "Status": "passing",
                    "ServiceID": "web-1"}
            })
        );
        let node_only = CatalogRegistration {
            datacenter: Some("dc2".into()),
            ..CatalogRegistration::default()
        };
        assert_eq!(
            serde_json::to_value(&node_only).unwrap(),
            serde_json::json!({"Node": "", "Address": "", "Datacenter": "dc2"})
        );
        let deregistration = Deregistration {
            node: "web-2",
            service_id: Some("web-1"),
        };
        assert_eq!(
            serde_json::to_value(&deregistration).unwrap(),
            serde_json::json!({"Node": "web-2", "ServiceID": "web-1"})
        );
    }

    #[test]
    fn kv_entries_decode_from_our_json_and_consul_s() {
        let list: Vec<KvPair> = decode(
            "/v1/kv/app?recurse",
            r#"[{"LockIndex": 0, "Key": "app/bin", "Flags": 42, "Value": "AP8B",
                 "CreateIndex": 5, "ModifyIndex": 9},
                {"LockIndex": 1, "Key": "app/empty", "Flags": 0, "Value": null,
                 "Session": "", "CreateIndex": 6, "ModifyIndex": 6},
                {"Key": "app/locked", "Value": "eA==", "Session": "b2f1", "Namespace": "default"}]"#,
        )
        .unwrap();
        assert_eq!(
            list[0],
            KvPair {
                key: "app/bin".into(),
                value: vec![0, 255, 1],
                flags: 42,
                session: None,
                lock_index: 0,
                create_index: 5,
                modify_index: 9,
            }
        );
        assert!(list[1].value.is_empty() && list[1].session.is_none());
        assert_eq!(list[2].session.as_deref(), Some("b2f1"));
        assert!(matches!(
            decode::<Vec<KvPair>>("/v1/kv/x", r#"[{"Key": "x", "Value": "not base64!"}]"#),
            Err(ClientError::Decode(_))
        ));
    }

    #[test]
    fn kv_keys_are_encoded_segment_by_segment() {
        assert_eq!(kv_path(""), "/v1/kv/");
        assert_eq!(kv_path("app/config/"), "/v1/kv/app/config/");
        assert_eq!(kv_path("a b/c?d#e%f"), "/v1/kv/a%20b/c%3Fd%23e%25f");
        assert_eq!(kv_path("/lead"), "/v1/kv//lead");
    }

    #[test]
    fn a_bad_address_is_refused_before_anything_is_sent() {
        assert!(AgentClient::new("127.0.0.1:8500").is_ok());
        assert!(AgentClient::new("http://127.0.0.1:8500/").is_ok());
        for bad in ["", "https://", "unix:///tmp/consul.sock"] {
            assert!(
                matches!(AgentClient::new(bad), Err(ClientError::Transport(_))),
                "{bad}"
            );
        }
    }
}
