//! The HTTP and HTTPS listeners: who gets a connection, and how long each part of a
//! request may take.
//!
//! ```text
//!  accept ─▶ connection pool: admit(ip) ─┬─ refused ─▶ 429 (Consul's text), closed
//!                                        └─ a place (maybe taken from the address
//!                                           holding the most: that connection closes)
//!   TLS handshake (HTTPS)  header_timeout, as Go's server bounds it; the place is idle
//!                          meanwhile, so a half-open client is the first evicted
//!   hyper http/1 connection
//!     head      header_timeout (also the idle wait between requests), max_header_size → 431
//!     body      body_timeout from the end of the head → 408, closed
//!     response  write_timeout without the client taking a byte → closed
//!     ?index=   blocking query: the connection's place is traded for one in the
//!               held-query pool for the wait (refused → 429, closed), and taken back after
//! ```
//!
//! Both pools share out their places by the rule of [`lan::fair`]: when one is full, a
//! newcomer takes a place from the address holding the most, so a few addresses cannot
//! lock out another. Evicting a connection closes it (an idle one first: a connection is
//! busy while it serves a request); evicting a held blocking query answers it at once
//! with the current result, as if its wait were over — clients of blocking queries
//! handle early answers already.
//!
//! Held blocking queries do not count against connections: a client waiting on
//! thousands of them leaves every connection place to ordinary requests. Both pools are
//! bounded, so memory is too: at most `max_connections + max_blocking_queries`
//! connections are served at once, plus [`MAX_REFUSALS`] being refused. Nothing outlives
//! its connection: when the attack ends, its connections end, and so does their memory.
//!
//! HTTP and HTTPS listeners share both pools: a connection is a connection, whichever
//! port it came to.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use gossip::PeerLog;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use lan::fair::{Refusal, Seat, Seated, Seats};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Params;
use super::deadline::{BodyDeadline, WriteDeadline};
use crate::Context;

/// Largest request body accepted by default, in bytes; larger bodies get 413
/// (`limits.http_max_body_bytes`).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most HTTP connections served at once by default (`limits.http_max_connections`), not
/// counting those holding a blocking query. When all are taken, a new client takes the
/// place of a connection of the address holding the most, or is answered 429 and closed
/// when no address holds more than one more than its own (see [`lan::fair`]).
pub const MAX_CONNECTIONS: usize = 1024;
/// Most connections open at once from one client address by default (Consul's
/// `limits.http_max_conns_per_client`); more are answered 429 and closed.
pub const MAX_CONNS_PER_CLIENT: usize = 200;
/// Largest request head (request line and headers) by default; larger gets 431
/// (`limits.http_max_header_bytes`).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// A client must send a request's head within this time by default, including the wait
/// for the next request on a kept-alive connection; then the connection is closed
/// (`limits.http_header_timeout`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A request's body must have arrived this long after its head by default; then the
/// client is answered 408 and the connection closed (`limits.http_body_timeout`). Long
/// enough for the 80 MiB snapshot of a 170,000-instance catalog at 1.4 MiB/s.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// A response the client takes no byte of for this long by default closes its connection
/// (`limits.http_write_timeout`).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Blocking queries held at once by default, over all clients
/// (`limits.http_max_blocking_queries`). When all are held, a new one takes the place of
/// the oldest of the address holding the most (which is answered at once), or is
/// answered 429 when no address holds more than one more than its own.
pub const MAX_BLOCKING_QUERIES: usize = 4096;
/// Blocking queries held at once for one client address by default
/// (`limits.http_max_blocking_queries_per_client`); more are answered 429. Consul counts
/// its long polls against its 200 connections per client; proconsul gives them 200 of
/// their own, so that waiting never costs a client its ordinary requests.
pub const MAX_BLOCKING_QUERIES_PER_CLIENT: usize = 200;
/// Connections being told 429 at once (each for at most [`REFUSAL_TIMEOUT`]); a refused
/// connection beyond these is closed without an answer.
pub const MAX_REFUSALS: usize = 64;
/// Time to write a 429 to a refused connection before closing it anyway.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a stopping agent lets open HTTP connections finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What Consul answers a client over its connection limit (go-connlimit's text, which
/// clients and operators match on).
const TOO_MANY_CONNECTIONS: &str =
    "Your IP is issuing too many concurrent connections, please rate limit your calls\n";

/// The HTTP server's bounds (the `limits` config block).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections served at once, not counting those holding a blocking query.
    pub max_connections: usize,
    /// Connections open at once from one client IP address.
    pub max_conns_per_client: usize,
    /// Largest request head, in bytes (at least 8192).
    pub max_header_bytes: usize,
    /// Largest request body, in bytes (`/v1/snapshot` restores take up to 256 MiB).
    pub max_body_bytes: usize,
    /// Largest KV value, in bytes (`limits.kv_max_value_size`).
    pub kv_max_value_size: usize,
    /// Time a client has to send a request's head, and idle time between requests.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body, from the end of its head.
    pub body_timeout: Duration,
    /// Time a response may wait for the client to take any of it.
    pub write_timeout: Duration,
    /// Blocking queries held at once, over all clients.
    pub max_blocking_queries: usize,
    /// Blocking queries held at once for one client IP address.
    pub max_blocking_queries_per_client: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: MAX_CONNECTIONS,
            max_conns_per_client: MAX_CONNS_PER_CLIENT,
            max_header_bytes: MAX_HEADER_BYTES,
            max_body_bytes: MAX_BODY_BYTES,
            kv_max_value_size: catalog::KV_MAX_VALUE_SIZE,
            header_timeout: HEADER_READ_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            max_blocking_queries: MAX_BLOCKING_QUERIES,
            max_blocking_queries_per_client: MAX_BLOCKING_QUERIES_PER_CLIENT,
        }
    }
}

/// The HTTPS side of the API: where, and with what TLS configuration.
#[derive(Debug, Clone)]
pub struct Https {
    /// Addresses to bind (port 0 picks a free port).
    pub addrs: Vec<SocketAddr>,
    /// The server's certificate and client-certificate rules.
    pub config: Arc<ServerConfig>,
}

/// The addresses the API was bound to.
#[derive(Debug, Clone, Default)]
pub struct Listening {
    /// Plain HTTP.
    pub http: Vec<SocketAddr>,
    /// HTTPS.
    pub https: Vec<SocketAddr>,
}

/// Binds the HTTP API on every address of `http`, and HTTPS on those of `https`, and
/// serves them until `shutdown`; returns the bound addresses. Both share the bounds of
/// `limits`.
pub async fn start(
    http: &[SocketAddr],
    https: Option<Https>,
    ctx: Context,
    limits: HttpLimits,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> io::Result<Listening> {
    let app = TowerToHyperService::new(super::router(ctx, limits.max_body_bytes));
    let shared = Shared {
        connections: Places::new(
            "connection",
            "limits.http_max_conns_per_client",
            Seats::new(limits.max_connections, limits.max_conns_per_client),
        ),
        blocking: Places::new(
            "blocking query",
            "limits.http_max_blocking_queries_per_client",
            Seats::new(
                limits.max_blocking_queries,
                limits.max_blocking_queries_per_client,
            ),
        ),
        refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
        limits: Arc::new(limits),
    };
    let mut bound = Listening::default();
    let mut listeners = Vec::new();
    let plain = http.iter().map(|a| (*a, None));
    let secure = https.iter().flat_map(|h| {
        h.addrs
            .iter()
            .map(|a| (*a, Some(TlsAcceptor::from(h.config.clone()))))
    });
    for (addr, tls) in plain.chain(secure) {
        let proto = if tls.is_some() { "https" } else { "http" };
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            let name = proto.to_ascii_uppercase();
            io::Error::new(e.kind(), format!("binding the {name} API to {addr}: {e}"))
        })?;
        let local = listener.local_addr()?;
        tracing::info!(proto, addr = %local, "listening");
        if tls.is_some() {
            bound.https.push(local);
        } else {
            bound.http.push(local);
        }
        listeners.push((listener, tls));
    }
    for (listener, tls) in listeners {
        tasks.spawn(serve(
            listener,
            tls,
            app.clone(),
            shared.clone(),
            tasks.clone(),
            shutdown.clone(),
        ));
    }
    Ok(bound)
}

/// The router as hyper calls it.
type App = TowerToHyperService<Router>;

/// What every listener of one agent shares.
#[derive(Clone)]
struct Shared {
    /// Places for connections (not holding a blocking query).
    connections: Places,
    /// Places for held blocking queries.
    blocking: Places,
    /// Permits to answer a refused connection (429) rather than just close it.
    refusals: Arc<Semaphore>,
    limits: Arc<HttpLimits>,
}

/// A pool of [`Seats`], with its refusals and evictions logged.
#[derive(Clone)]
struct Places {
    /// `connection` or `blocking query`, for logs.
    kind: &'static str,
    /// The config key of the per-client bound, for logs.
    per_client_key: &'static str,
    seats: Arc<Seats>,
    /// Evictions and refusals are logged once per address per interval.
    log: Arc<Mutex<PeerLog>>,
}

impl Places {
    fn new(kind: &'static str, per_client_key: &'static str, seats: Arc<Seats>) -> Places {
        Places {
            kind,
            per_client_key,
            seats,
            log: Arc::new(Mutex::new(PeerLog::default())),
        }
    }

    /// A place for `client`; `token` is cancelled if the place is later taken from it.
    fn admit(&self, client: IpAddr, token: CancellationToken) -> Result<Seat, Refusal> {
        let Seated { seat, evicted } = match self.seats.admit(client, token) {
            Ok(seated) => seated,
            Err(why @ Refusal::ClientFull(_)) => {
                self.warn(client, |kind, suppressed| {
                    tracing::warn!(peer = %client, kind, suppressed, limit = self.per_client_key,
                        "refused an http client: this address holds its share");
                });
                return Err(why);
            }
            Err(why @ Refusal::PoolFull) => {
                self.warn(client, |kind, suppressed| {
                    tracing::warn!(peer = %client, kind, suppressed,
                        "refused an http client: every place is taken and this address holds as many as any other");
                });
                return Err(why);
            }
        };
        if let Some(victim) = evicted {
            self.warn(victim, |kind, suppressed| {
                tracing::warn!(peer = %victim, kind, suppressed,
                    "gave a place of this address to another: every place is taken and it holds the most");
            });
        }
        Ok(seat)
    }

    /// Calls `log` with the kind of place and the number of events suppressed before,
    /// at most once per interval per address (an attacker must not fill the disk).
    fn warn(&self, peer: IpAddr, log: impl FnOnce(&'static str, u64)) {
        let suppressed = self
            .log
            .lock()
            .expect("peer log lock")
            .should_log(peer, Instant::now());
        if let Some(suppressed) = suppressed {
            log(self.kind, suppressed);
        }
    }
}

/// Accepts connections and serves each admitted one on a task of its own, over TLS when
/// `tls` is given.
async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: App,
    shared: Shared,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let evicted = CancellationToken::new();
        match shared.connections.admit(peer.ip(), evicted.clone()) {
            Ok(seat) => {
                tasks.spawn(serve_connection(
                    stream,
                    tls.clone(),
                    peer,
                    app.clone(),
                    Connection {
                        peer: peer.ip(),
                        evicted,
                        place: Mutex::new(seat),
                        shared: shared.clone(),
                    },
                    shutdown.clone(),
                ));
            }
            Err(_) => {
                if let Ok(permit) = shared.refusals.clone().try_acquire_owned() {
                    tasks.spawn(refuse_connection(stream, permit));
                }
            }
        }
    }
}

/// Tells a client it holds too many connections (429, Consul's text), then closes.
async fn refuse_connection(mut stream: TcpStream, _permit: OwnedSemaphorePermit) {
    use tokio::io::AsyncWriteExt;
    let reply = format!(
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{TOO_MANY_CONNECTIONS}",
        TOO_MANY_CONNECTIONS.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, stream.write_all(reply.as_bytes())).await;
}

/// One admitted connection, as its requests see it.
struct Connection {
    peer: IpAddr,
    /// Cancelled when the connection pool gives this connection's place to another
    /// client: the connection is closed.
    evicted: CancellationToken,
    /// The place this connection holds: in the connection pool, or in the held-query
    /// pool while it holds a blocking query.
    place: Mutex<Seat>,
    shared: Shared,
}

impl Connection {
    fn set_busy(&self, busy: bool) {
        self.place.lock().expect("place lock").set_busy(busy);
    }

    /// Holds `seat` instead of the one held so far, which is given back.
    fn hold(&self, seat: Seat) {
        let old = std::mem::replace(&mut *self.place.lock().expect("place lock"), seat);
        drop(old);
    }
}

/// Serves one admitted connection: the TLS handshake first for HTTPS, within the time a
/// client has to send a request's head (Go's server bounds it the same way); the place
/// is idle meanwhile, so under pressure a stalled handshake is the first evicted.
async fn serve_connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    peer: SocketAddr,
    app: App,
    connection: Connection,
    shutdown: CancellationToken,
) {
    let limits = connection.shared.limits.clone();
    let stream = WriteDeadline::new(stream, limits.write_timeout);
    let Some(acceptor) = tls else {
        return serve_http(stream, peer, app, connection, shutdown).await;
    };
    let handshake = tokio::select! {
        h = tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)) => h,
        _ = connection.evicted.cancelled() => return,
        _ = shutdown.cancelled() => return,
    };
    match handshake {
        Ok(Ok(stream)) => serve_http(stream, peer, app, connection, shutdown).await,
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "https handshake failed");
        }
        Err(_) => {
            tracing::debug!(peer = %peer, timeout = ?limits.header_timeout, "https handshake timed out");
        }
    }
}

/// Serves HTTP/1 requests on a connection (plain, or after its TLS handshake).
async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    app: App,
    connection: Connection,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = connection.shared.limits.clone();
    let evicted = connection.evicted.clone();
    let connection = Arc::new(connection);
    let service =
        hyper::service::service_fn(move |request| handle(connection.clone(), app.clone(), request));
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper checks `max_buf_size` only between reads, so a head that arrives in one
        // large read passes it: `max_header_size` checks the head itself.
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(http);
    let result = tokio::select! {
        result = http.as_mut() => result,
        _ = evicted.cancelled() => {
            tracing::debug!(peer = %peer, "http connection closed: its place was given to another client");
            return;
        }
        _ = shutdown.cancelled() => {
            http.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, http.as_mut()).await {
                Ok(result) => result,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "http connection ended");
    }
}

/// Serves one request of `connection`.
async fn handle(
    connection: Arc<Connection>,
    app: App,
    mut request: Request<Incoming>,
) -> Result<Response, Infallible> {
    let limits = &connection.shared.limits;
    connection.set_busy(true);
    // Handlers that name their client (the monitor) read it from here.
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(connection.peer));
    let late = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        if hyper::body::Body::is_end_stream(&body) {
            Body::new(body)
        } else {
            Body::new(BodyDeadline::new(body, limits.body_timeout, late.clone()))
        }
    });
    let response = match Replay::of_blocking_query(&request) {
        Some(replay) => held(&connection, &app, request, replay).await,
        None => call(&app, request).await,
    };
    connection.set_busy(false);
    if late.load(Ordering::Relaxed) {
        return Ok(body_too_slow(limits.body_timeout));
    }
    Ok(response)
}

async fn call(app: &App, request: Request<Body>) -> Response {
    match app.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Serves a blocking query with a place in the held-query pool instead of the
/// connection's, which is free for others meanwhile.
async fn held(
    connection: &Connection,
    app: &App,
    request: Request<Body>,
    replay: Replay,
) -> Response {
    let shared = &connection.shared;
    let woken = CancellationToken::new();
    let Ok(place) = shared.blocking.admit(connection.peer, woken.clone()) else {
        return too_many_connections();
    };
    connection.hold(place);
    let mut response = tokio::select! {
        biased;
        response = call(app, request) => response,
        // Another client needed the place: answer now, as if the wait were over.
        _ = woken.cancelled() => call(app, replay.into_request()).await,
    };
    // Before it carries another request the connection needs its place back; if the pool
    // has none for this client, this answer is its last.
    match shared
        .connections
        .admit(connection.peer, connection.evicted.clone())
    {
        Ok(place) => connection.hold(place),
        Err(_) => {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

/// Consul's answer to a client over its connection limit; the connection is closed.
fn too_many_connections() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CONNECTION, "close"),
        ],
        TOO_MANY_CONNECTIONS,
    )
        .into_response()
}

/// The answer to a request whose body did not arrive in time; the connection is closed.
fn body_too_slow(timeout: Duration) -> Response {
    (
        StatusCode::REQUEST_TIMEOUT,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CONNECTION, "close"),
        ],
        format!(
            "Request body not received in time: the limit is {}s",
            timeout.as_secs_f64()
        ),
    )
        .into_response()
}

/// A blocking query as a request without `?index`, to answer at once.
struct Replay {
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    /// `Some` for a blocking query: a GET with `?index` above zero.
    fn of_blocking_query(request: &Request<Body>) -> Option<Replay> {
        if request.method() != Method::GET {
            return None;
        }
        let params = Params::parse(request.uri().query());
        match params.get("index")?.parse::<u64>() {
            Ok(index) if index > 0 => {}
            _ => return None,
        }
        let rest = params.without(&["index"]).encode();
        let path = request.uri().path();
        let uri = if rest.is_empty() {
            path.parse()
        } else {
            format!("{path}?{rest}").parse()
        }
        .ok()?;
        Some(Replay {
            uri,
            version: request.version(),
            headers: request.headers().clone(),
        })
    }

    fn into_request(self) -> Request<Body> {
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocking_query_is_replayed_without_its_index() {
        let request = Request::builder()
            .uri("/v1/health/service/web?index=42&wait=5m&tag=a&tag=b")
            .header("x-consul-token", "t")
            .body(Body::empty())
            .unwrap();
        let replay = Replay::of_blocking_query(&request).expect("a blocking query");
        let again = replay.into_request();
        assert_eq!(
            again.uri().to_string(),
            "/v1/health/service/web?wait=5m&tag=a&tag=b"
        );
        assert_eq!(again.headers()["x-consul-token"], "t");
    }

    #[test]
    fn only_a_get_with_an_index_above_zero_is_a_blocking_query() {
        let is_blocking = |method: Method, uri: &str| {
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap();
            Replay::of_blocking_query(&request).is_some()
        };
        assert!(is_blocking(Method::GET, "/v1/catalog/services?index=1"));
        assert!(!is_blocking(Method::GET, "/v1/catalog/services?index=0"));
        assert!(!is_blocking(Method::GET, "/v1/catalog/services?index=x"));
        assert!(!is_blocking(Method::GET, "/v1/catalog/services"));
        assert!(!is_blocking(Method::PUT, "/v1/catalog/register?index=3"));
    }
}
