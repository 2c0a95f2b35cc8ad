//! Consul's DNS interface on the DNS port (8600), over UDP and TCP.
//!
//! ```text
//!   UDP socket ×N (SO_REUSEPORT) ─┐                      ┌─ in the domain: catalog via the gateway
//!                                 ├─ decode ─▶ Responder ┤─ reverse (PTR): catalog, else recursors
//!   TCP listener (bounded) ───────┘  (hickory-proto)     └─ elsewhere: recursors, else REFUSED
//! ```
//!
//! Each UDP socket is served by one thread that answers catalog questions inline, so a
//! flood of queries can never grow a queue, and no task is woken per datagram; only
//! forwarding to recursors, which waits on the network, runs as a task, at most
//! [`MAX_RECURSIONS`] at once (beyond that the client gets SERVFAIL at once). The records
//! of service lookups are kept between queries until the catalog changes, and each UDP
//! serving thread keeps the encoded answers of the questions it was asked (see
//! [`cache`]), so a repeated question costs a lookup and a copy instead of a decode,
//! a build and an encode. The wire format is hickory-proto's; the serving loops are
//! ours rather than hickory-server's, which spawns a task per datagram into an
//! unbounded set and accepts TCP connections without limit.

mod answer;
pub(crate) mod cache;
mod limit;
mod name;
mod recursor;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway::Gateway;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use answer::Transport;
use answer::{Draw, Fetched, Found, Need, Outcome, Responder};
use cache::ResponseCache;

/// DNS names, as the configuration gives the domain.
pub use hickory_proto::rr::Name;

/// How many orders of a service's records a UDP answer may come in and still be kept
/// between queries (every order of up to four records).
pub const ORDERS: usize = answer::orders(answer::MAX_ORDERED);
/// Most forwarded (recursive) queries in flight at once; more get SERVFAIL at once.
pub const MAX_RECURSIONS: usize = 256;
/// Most questions at once whose answer needs a read from a server (on a client agent);
/// more get SERVFAIL at once.
pub const MAX_FETCHES: usize = 256;
/// Budget of the reads behind such a question.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Most separate reads one question may need.
pub const MAX_FETCH_ROUNDS: usize = 3;
/// Most DNS-over-TCP connections open at once; more wait in the kernel's backlog.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// A TCP connection with no complete query, or whose answer is not read, for this long
/// is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How forwarding picks recursors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecursorStrategy {
    /// In the configured order.
    #[default]
    Sequential,
    /// In a random order per query.
    Random,
}

/// SOA timers (`dns_config.soa`).
#[derive(Debug, Clone)]
pub struct Soa {
    /// Refresh.
    pub refresh: Duration,
    /// Retry.
    pub retry: Duration,
    /// Expire.
    pub expire: Duration,
    /// Minimum TTL, also the TTL of the SOA record itself.
    pub min_ttl: Duration,
}

impl Default for Soa {
    fn default() -> Self {
        Soa {
            refresh: Duration::from_secs(3600),
            retry: Duration::from_secs(600),
            expire: Duration::from_secs(86400),
            min_ttl: Duration::ZERO,
        }
    }
}

/// The DNS interface's settings (`domain`, `recursors`, `dns_config`).
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The domain answered authoritatively, as a lower-case FQDN (`consul.`).
    pub domain: Name,
    /// TTL of node, NS and `.addr` records.
    pub node_ttl: Duration,
    /// TTL of service records by service name; keys ending in `*` match by prefix.
    pub service_ttl: BTreeMap<String, Duration>,
    /// Leave out instances with a warning check too.
    pub only_passing: bool,
    /// Answers in a UDP response without EDNS (at most 8).
    pub udp_answer_limit: usize,
    /// Most A/AAAA answers for a service (0 = no limit).
    pub a_record_limit: usize,
    /// Node metadata as TXT records in the additional section of A/AAAA answers.
    pub enable_additional_node_meta_txt: bool,
    /// Upstream servers for names outside the domain.
    pub recursors: Vec<SocketAddr>,
    /// Order in which recursors are tried.
    pub recursor_strategy: RecursorStrategy,
    /// Budget of each attempt at a recursor.
    pub recursor_timeout: Duration,
    /// SOA timers.
    pub soa: Soa,
    /// Where a `<service>.service.consul` lookup (no datacenter named) goes when this
    /// datacenter has no healthy instance (`dns_config.failover`); empty (the default)
    /// keeps Consul's NXDOMAIN.
    pub failover: catalog::Failover,
    /// Largest UDP answer, whatever the client's EDNS buffer says
    /// (`limits.dns_udp_max_response_bytes`, 512 to 65467); longer ones are cut with
    /// TC set, and the client asks again over TCP. Bounds amplification.
    pub udp_max_response: u16,
    /// Queries per second answered per client address (`limits.dns_rate_per_source`);
    /// 0, the default, is no limit. Queries over it are dropped without an answer.
    pub rate_per_source: u32,
    /// `dns_config.use_cache`: answers of reads made through a server (another
    /// datacenter, or any read of a client agent) are served from the agent's cache
    /// while younger than this (`cache_max_age`, default [`DEFAULT_CACHE_MAX_AGE`]).
    pub cache: Option<Duration>,
}

/// Largest UDP answer by default: the EDNS buffer size DNS Flag Day 2020 recommends,
/// which fits one unfragmented packet on nearly every path.
pub const DEFAULT_UDP_MAX_RESPONSE: u16 = 1232;

/// The age a cached answer may have under `use_cache` when `cache_max_age` is 0 or
/// unset (proconsul's cache is not refreshed in the background).
pub const DEFAULT_CACHE_MAX_AGE: Duration = Duration::from_secs(3);

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            domain: Name::from_ascii("consul.").expect("consul. is a valid name"),
            node_ttl: Duration::ZERO,
            service_ttl: BTreeMap::new(),
            only_passing: false,
            udp_answer_limit: 3,
            a_record_limit: 0,
            enable_additional_node_meta_txt: true,
            recursors: Vec::new(),
            recursor_strategy: RecursorStrategy::Sequential,
            recursor_timeout: Duration::from_secs(2),
            soa: Soa::default(),
            failover: catalog::Failover::default(),
            cache: None,
            udp_max_response: DEFAULT_UDP_MAX_RESPONSE,
            rate_per_source: 0,
        }
    }
}

/// Addresses the DNS interface is bound to.
#[derive(Debug, Clone)]
pub struct Bound {
    /// UDP addresses.
    pub udp: Vec<SocketAddr>,
    /// TCP addresses.
    pub tcp: Vec<SocketAddr>,
}

/// One agent's DNS request handling, shared by the serving loops.
pub(crate) struct Server {
    responder: Responder,
    limiter: Option<limit::RateLimiter>,
    gateway: Gateway,
    recursions: Arc<Semaphore>,
    fetches: Arc<Semaphore>,
    tasks: TaskTracker,
    metrics: DnsMetrics,
    /// Whether UDP answers may be kept ([`cache`]): not with ACLs, whose answers also
    /// depend on the agent's DNS token and on tokens expiring, neither of which moves
    /// the catalog's index.
    cache_answers: bool,
}

/// The DNS interface's metrics (Consul's names), registered once.
struct DnsMetrics {
    /// `dns.domain_query`: time to answer a query, in milliseconds.
    domain_query: metrics::Histogram,
    /// `dns.ptr_query`: the same for reverse lookups.
    ptr_query: metrics::Histogram,
}

impl DnsMetrics {
    fn new(node: &str) -> DnsMetrics {
        let node = node.to_string();
        DnsMetrics {
            domain_query: metrics::histogram!("dns.domain_query", "node" => node.clone()),
            ptr_query: metrics::histogram!("dns.ptr_query", "node" => node),
        }
    }

    fn record(&self, request: &Message, start: std::time::Instant) {
        self.record_as(is_ptr(request), start);
    }

    /// Records the time of a reverse lookup (`ptr`) or of another query.
    fn record_as(&self, ptr: bool, start: std::time::Instant) {
        let timer = if ptr {
            &self.ptr_query
        } else {
            &self.domain_query
        };
        timer.record(crate::telemetry::millis_since(start));
    }
}

/// Whether a request asks for a reverse lookup (timed as `dns.ptr_query`).
fn is_ptr(request: &Message) -> bool {
    request
        .queries
        .first()
        .is_some_and(|q| q.query_type() == hickory_proto::rr::RecordType::PTR)
}

/// A datagram or TCP message, decoded.
enum Decoded {
    /// A query to answer.
    Query(Message),
    /// Not a DNS query we can read, but with a readable header: answer FORMERR.
    FormErr(Message),
    /// Not worth an answer (shorter than a header, or a response).
    Drop,
}

fn decode(bytes: &[u8]) -> Decoded {
    match Message::from_vec(bytes) {
        Ok(m) => Decoded::Query(m),
        Err(_) => {
            let Some(header) = bytes.get(..12) else {
                return Decoded::Drop;
            };
            let id = u16::from_be_bytes([header[0], header[1]]);
            let is_response = header[2] & 0x80 != 0;
            if is_response {
                return Decoded::Drop;
            }
            let op_code = OpCode::from_u8((header[2] >> 3) & 0x0f);
            Decoded::FormErr(answer::error_reply(id, op_code, ResponseCode::FormErr))
        }
    }
}

/// What to do after reading one request.
enum Handled {
    /// Send these bytes.
    Reply(Vec<u8>),
    /// Send nothing.
    Nothing,
    /// Forward this request to the recursors.
    Recurse(Box<Message>),
    /// Get what the answer needs, then answer.
    Fetch(Box<(Message, Need)>),
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    match message.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::warn!(error = %e, "failed to encode a DNS response");
            None
        }
    }
}

impl Server {
    /// The request handling of a DNS interface; forwarding tasks run on `tasks`.
    pub(crate) fn new(gateway: Gateway, config: DnsConfig, tasks: &TaskTracker) -> Server {
        let limiter =
            (config.rate_per_source > 0).then(|| limit::RateLimiter::new(config.rate_per_source));
        let metrics = DnsMetrics::new(gateway.lan().node_name());
        let cache_answers = !gateway.lan().acl_enabled();
        Server {
            cache_answers,
            limiter,
            responder: Responder::new(gateway.clone(), config),
            gateway,
            recursions: Arc::new(Semaphore::new(MAX_RECURSIONS)),
            fetches: Arc::new(Semaphore::new(MAX_FETCHES)),
            tasks: tasks.clone(),
            metrics,
        }
    }

    /// Answers one request from its bytes, waiting for what the answer needs, as a TCP
    /// connection is served (the UDP loop runs the waiting part as a task instead).
    pub(crate) async fn answer(&self, bytes: &[u8], transport: Transport) -> Option<Vec<u8>> {
        match self.handle(bytes, transport) {
            Handled::Reply(reply) => Some(reply),
            Handled::Nothing => None,
            Handled::Recurse(request) => match self.recursions.clone().try_acquire_owned() {
                Ok(_permit) => self.recurse(&request, transport).await,
                Err(_) => Server::servfail(&request),
            },
            Handled::Fetch(work) => match self.fetches.clone().try_acquire_owned() {
                Ok(_permit) => {
                    let (request, need) = *work;
                    self.fetch(&request, need, transport).await
                }
                Err(_) => Server::servfail(&work.0),
            },
        }
    }

    /// Whether a query from `ip` is within `limits.dns_rate_per_source`.
    fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.limiter
            .as_ref()
            .is_none_or(|l| l.allow(ip, std::time::Instant::now()))
    }

    /// Answers one request from its bytes.
    fn handle(&self, bytes: &[u8], transport: Transport) -> Handled {
        let start = std::time::Instant::now();
        match decode(bytes) {
            Decoded::Query(request) => {
                let outcome = self.responder.respond(&request, transport);
                self.handled(request, outcome, start)
            }
            Decoded::FormErr(m) => match encode(&m) {
                Some(bytes) => Handled::Reply(bytes),
                None => Handled::Nothing,
            },
            Decoded::Drop => Handled::Nothing,
        }
    }

    fn handled(&self, request: Message, outcome: Outcome, start: std::time::Instant) -> Handled {
        match outcome {
            Outcome::Reply(bytes) => {
                self.metrics.record(&request, start);
                Handled::Reply(bytes)
            }
            Outcome::Drop => Handled::Nothing,
            Outcome::Recurse => Handled::Recurse(Box::new(request)),
            Outcome::Fetch(need) => Handled::Fetch(Box::new((request, need))),
        }
    }

    /// Answers one UDP datagram: from `cache` when it holds the answer, which is then
    /// in `out` (and `None` is returned); else as [`Server::handle`], keeping the answer
    /// in `cache` when it may be kept.
    fn handle_udp(
        &self,
        bytes: &[u8],
        cache: &mut ResponseCache,
        out: &mut Vec<u8>,
    ) -> Option<Handled> {
        let start = std::time::Instant::now();
        // Read before the answer is built: if the catalog changes meanwhile, the answer
        // is kept under the older index, which no later query matches.
        let index = if self.cache_answers && bytes.len() <= cache::MAX_KEY {
            self.gateway.stale_index(None)
        } else {
            None
        };
        let Some(index) = index else {
            return Some(self.handle(bytes, Transport::Udp));
        };
        let order = match cache.get(bytes, index, out) {
            Ok(hit) => {
                self.metrics.record_as(hit.ptr, start);
                return None;
            }
            Err(miss) => miss.order,
        };
        let Decoded::Query(request) = decode(bytes) else {
            return Some(self.handle(bytes, Transport::Udp));
        };
        let draw = Draw::nth(order);
        let outcome = self
            .responder
            .respond_drawn(&request, Transport::Udp, &draw);
        if let Outcome::Reply(reply) = &outcome {
            cache.insert(bytes, order, &draw, is_ptr(&request), reply);
        }
        Some(self.handled(request, outcome, start))
    }

    /// A UDP answer as [`serve_udp`] sends it without waiting on the network: from
    /// `cache` or built (and kept). For tests and fuzzing.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn answer_udp_now(
        &self,
        bytes: &[u8],
        cache: &mut ResponseCache,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match self.handle_udp(bytes, cache, &mut out) {
            None => Some(out),
            Some(Handled::Reply(reply)) => Some(reply),
            Some(_) => None,
        }
    }

    /// A UDP answer built without any cache, its records in their `order`-th order.
    /// For tests and fuzzing.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn answer_udp_in_order(&self, bytes: &[u8], order: usize) -> Option<Vec<u8>> {
        let Decoded::Query(request) = decode(bytes) else {
            return match self.handle(bytes, Transport::Udp) {
                Handled::Reply(reply) => Some(reply),
                _ => None,
            };
        };
        match self
            .responder
            .respond_drawn(&request, Transport::Udp, &Draw::nth(order))
        {
            Outcome::Reply(reply) => Some(reply),
            _ => None,
        }
    }

    async fn recurse(&self, request: &Message, transport: Transport) -> Option<Vec<u8>> {
        recursor::forward(self.responder.config(), request, transport)
            .await
            .or_else(|| {
                let mut reply = answer::error_reply(
                    request.metadata.id,
                    request.metadata.op_code,
                    ResponseCode::ServFail,
                );
                reply.metadata.recursion_available = true;
                reply.metadata.recursion_desired = request.metadata.recursion_desired;
                reply.queries = request.queries.clone();
                encode(&reply)
            })
    }

    /// Gets what a request needs (all of it bounded by [`FETCH_TIMEOUT`]), then answers
    /// it. An answer may need a second thing once it has the first (a client agent reads
    /// a service through a server, then finds no healthy instance and fails over), at
    /// most [`MAX_FETCH_ROUNDS`] in all.
    async fn fetch(&self, request: &Message, need: Need, transport: Transport) -> Option<Vec<u8>> {
        let start = std::time::Instant::now();
        let reply = self.fetch_and_answer(request, need, transport).await;
        self.metrics.record(request, start);
        reply
    }

    async fn fetch_and_answer(
        &self,
        request: &Message,
        need: Need,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT;
        let mut fetched: Vec<Fetched> = Vec::new();
        let mut need = need;
        for _ in 0..MAX_FETCH_ROUNDS {
            let found = self.get(&need, deadline).await;
            fetched.push(Fetched { need, found });
            match self.responder.respond_fetched(request, transport, &fetched) {
                Outcome::Reply(bytes) => return Some(bytes),
                Outcome::Fetch(next) if !fetched.iter().any(|f| f.need == next) => need = next,
                _ => break,
            }
        }
        Server::servfail(request)
    }

    async fn get(&self, need: &Need, deadline: tokio::time::Instant) -> Found {
        let options = catalog::ReadOptions {
            consistency: catalog::Consistency::Stale,
            min_index: 0,
            deadline,
            max_stale: None,
            // DNS answers under the agent's DNS token, else its default token (else
            // anonymous), as Consul's.
            principal: catalog::Principal::from_wire(self.gateway.lan().dns_token()),
        };
        match need {
            Need::Read { dc, query } => {
                let cache = self
                    .responder
                    .config()
                    .cache
                    .map(|max_age| gateway::CachePolicy {
                        max_age,
                        stale_if_error: None,
                    });
                let read = self
                    .gateway
                    .read_cached(dc.as_deref(), query, options, cache)
                    .await;
                Found::Read(match read {
                    // A lookup the token may not make finds nothing (NXDOMAIN), as Consul's.
                    Err(gateway::RouteError::Read(
                        catalog::ReadError::Denied(_) | catalog::ReadError::AclNotFound,
                    )) => Ok((catalog::acl::nothing_for(query), 1)),
                    other => other.map(|r| (r.result.answer, r.result.index)),
                })
            }
            Need::Execute { dc, name } => Found::Executed(
                self.gateway
                    .execute(dc.as_deref(), name, None, options)
                    .await,
            ),
            Need::Failover { service } => Found::Executed(
                self.gateway
                    .run_service_query(None, service, options)
                    .await
                    .map(Some),
            ),
        }
    }

    fn servfail(request: &Message) -> Option<Vec<u8>> {
        let mut reply = answer::error_reply(
            request.metadata.id,
            request.metadata.op_code,
            ResponseCode::ServFail,
        );
        reply.metadata.recursion_available = true;
        reply.queries = request.queries.clone();
        encode(&reply)
    }
}

/// How often a UDP serving thread looks at the shutdown token while no query arrives.
const UDP_SHUTDOWN_POLL: Duration = Duration::from_millis(200);

fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    let socket: std::net::UdpSocket = socket.into();
    socket.set_read_timeout(Some(UDP_SHUTDOWN_POLL))?;
    Ok(socket)
}

/// How many UDP sockets share each DNS address: one per core, so the kernel spreads
/// queries across them.
fn udp_sockets_per_addr() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// Attempts at finding a port free for both UDP and TCP when the port is 0.
const BIND_ATTEMPTS: usize = 20;

/// Binds the UDP sockets and the TCP listener of one address, on the same port. With
/// port 0 the OS picks the UDP port, which may be taken for TCP: then try another.
async fn bind_pair(addr: SocketAddr) -> io::Result<(Vec<std::net::UdpSocket>, TcpListener)> {
    let context = |e: io::Error, what: &str| {
        io::Error::new(e.kind(), format!("binding DNS ({what}) to {addr}: {e}"))
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let first = udp_socket(addr).map_err(|e| context(e, "udp"))?;
        let local = first.local_addr()?;
        let mut udp = vec![first];
        for _ in 1..udp_sockets_per_addr() {
            udp.push(udp_socket(local).map_err(|e| context(e, "udp"))?);
        }
        // TCP on the same port as UDP, as clients expect.
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == io::ErrorKind::AddrInUse
                    && attempt < BIND_ATTEMPTS => {}
            Err(e) => return Err(context(e, "tcp")),
        }
    }
}

/// Binds the DNS interface on every address (UDP and TCP) and serves it until
/// `shutdown`.
pub async fn start(
    addrs: &[SocketAddr],
    gateway: Gateway,
    config: DnsConfig,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> io::Result<Bound> {
    let server = Arc::new(Server::new(gateway, config, tasks));
    let mut bound = Bound {
        udp: Vec::new(),
        tcp: Vec::new(),
    };
    let mut sockets = Vec::new();
    let mut listeners = Vec::new();
    for addr in addrs {
        let (udp, tcp) = bind_pair(*addr).await?;
        let local = tcp.local_addr()?;
        sockets.extend(udp);
        tracing::info!(proto = "dns-udp", addr = %local, "listening");
        tracing::info!(proto = "dns-tcp", addr = %local, "listening");
        bound.udp.push(local);
        bound.tcp.push(local);
        listeners.push(tcp);
    }
    let runtime = tokio::runtime::Handle::current();
    for socket in sockets {
        let (server, shutdown, runtime) = (server.clone(), shutdown.clone(), runtime.clone());
        tasks.spawn_blocking(move || serve_udp(Arc::new(socket), server, shutdown, runtime));
    }
    for listener in listeners {
        tasks.spawn(serve_tcp(listener, server.clone(), shutdown.clone()));
    }
    Ok(bound)
}

/// Serves one UDP socket on a thread of its own: receive, answer from the catalog,
/// send, with no task or queue per datagram. Only forwarding to recursors, which waits on
/// the network, becomes a task on the runtime.
fn serve_udp(
    socket: Arc<std::net::UdpSocket>,
    server: Arc<Server>,
    shutdown: CancellationToken,
    runtime: tokio::runtime::Handle,
) {
    let mut buf = vec![0u8; 65535];
    let mut cache = ResponseCache::new();
    let mut out = Vec::with_capacity(usize::from(DEFAULT_UDP_MAX_RESPONSE));
    while !shutdown.is_cancelled() {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => {
                // ICMP errors from earlier replies surface here; they concern one
                // client only. Pause briefly so a lasting error cannot spin the thread.
                tracing::debug!(error = %e, "dns udp receive failed");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let Some(bytes) = buf.get(..len) else {
            continue;
        };
        if !server.allows(peer.ip()) {
            continue;
        }
        let Some(handled) = server.handle_udp(bytes, &mut cache, &mut out) else {
            if let Err(e) = socket.send_to(&out, peer) {
                tracing::debug!(peer = %peer, error = %e, "dns udp send failed");
            }
            continue;
        };
        match handled {
            Handled::Reply(reply) => {
                if let Err(e) = socket.send_to(&reply, peer) {
                    tracing::debug!(peer = %peer, error = %e, "dns udp send failed");
                }
            }
            Handled::Nothing => {}
            Handled::Recurse(request) => {
                let Ok(permit) = server.recursions.clone().try_acquire_owned() else {
                    if let Some(reply) = Server::servfail(&request) {
                        let _ = socket.send_to(&reply, peer);
                    }
                    continue;
                };
                let (server2, socket2) = (server.clone(), socket.clone());
                let stop = shutdown.clone();
                let forward = async move {
                    let _permit = permit;
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        reply = server2.recurse(&request, Transport::Udp) => {
                            if let Some(reply) = reply {
                                let _ = socket2.send_to(&reply, peer);
                            }
                        }
                    }
                };
                server.tasks.spawn_on(forward, &runtime);
            }
            Handled::Fetch(work) => {
                let Ok(permit) = server.fetches.clone().try_acquire_owned() else {
                    if let Some(reply) = Server::servfail(&work.0) {
                        let _ = socket.send_to(&reply, peer);
                    }
                    continue;
                };
                let (server2, socket2) = (server.clone(), socket.clone());
                let stop = shutdown.clone();
                let fetch = async move {
                    let _permit = permit;
                    let (request, need) = *work;
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        reply = server2.fetch(&request, need, Transport::Udp) => {
                            if let Some(reply) = reply {
                                let _ = socket2.send_to(&reply, peer);
                            }
                        }
                    }
                };
                server.tasks.spawn_on(fetch, &runtime);
            }
        }
    }
}

async fn serve_tcp(listener: TcpListener, server: Arc<Server>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "dns tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let server2 = server.clone();
        let stop = shutdown.clone();
        server.tasks.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = stop.cancelled() => {}
                result = serve_tcp_connection(stream, &server2) => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %peer, error = %e, "dns tcp connection ended");
                    }
                }
            }
        });
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, server: &Server) -> io::Result<()> {
    let mut buf = vec![0u8; 65535];
    let peer = stream.peer_addr()?.ip();
    loop {
        let len = match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_u16()).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => usize::from(r?),
        };
        if len == 0 {
            return Ok(());
        }
        let body = buf.get_mut(..len).expect("buffer holds any u16 length");
        tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(body))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "query not sent in time"))??;
        if !server.allows(peer) {
            continue;
        }
        let Some(reply) = server.answer(body, Transport::Tcp).await else {
            continue;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&reply_len.to_be_bytes());
        framed.extend_from_slice(&reply);
        // A client that does not read its answers must not hold a connection forever.
        tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.write_all(&framed))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "answer not read in time"))??;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::MessageType;

    #[test]
    fn garbage_after_a_query_header_gets_formerr() {
        let mut bytes = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
        let Decoded::FormErr(reply) = decode(&bytes) else {
            panic!("expected FORMERR")
        };
        assert_eq!(reply.metadata.id, 0x1234);
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
    }

    #[test]
    fn short_packets_and_responses_are_dropped() {
        assert!(matches!(decode(&[1, 2, 3]), Decoded::Drop));
        let response_header = [0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff];
        assert!(matches!(decode(&response_header), Decoded::Drop));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
        }
    }
}
