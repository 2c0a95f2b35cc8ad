//! One QUIC endpoint per server on the serf WAN port (8302/udp): it accepts and dials on
//! the same socket, keeps one long-lived connection per peer, and carries gossip packets
//! as datagrams and gossip exchanges and RPCs as bidirectional streams.
//!
//! Every connection is mutual TLS with the federation's CA. The TLS handshake checks the
//! chain (a foreign CA, an expired certificate or a missing client certificate fail it);
//! then, before anything else is read, both sides check that the peer's certificate names
//! a server of the federation: `server.<datacenter>.<domain>`. A client or CLI
//! certificate from the same CA is refused here. The datacenter the certificate names is
//! the peer's identity: an RPC meant for a datacenter goes only to a peer whose
//! certificate is for that datacenter.
//!
//! Streams carry one request and one answer: `[kind][payload]`, all within the caller's
//! deadline. An RPC's payload is read to its end under the request budgets below, its
//! answer likewise under [`MAX_ANSWER`]. A gossip stream's payload is one gossip stream
//! frame, handed to the WAN pool as it arrives ([`Inbound::serve`]), which reads it chunk
//! by chunk under the pool's own limits and budget ([`gossip::stream`]); its answer is read
//! the same way by the asking pool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use gossip::{Exchange, Inbound, JoinError, Link, PeerLog, Reply};
use tokio::io::AsyncReadExt;

use crate::rpc::{Caller, Request, Response, Service};
use crate::tls::Material;

/// The ALPN protocol of WAN connections.
pub const ALPN: &[u8] = b"proconsul-wan/1";
/// Budget of a QUIC and TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no traffic for this long is closed (the keep-alive prevents it
/// while both sides are up).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive, half of [`IDLE_TIMEOUT`], sent by the end that dialed the connection
/// only: the other end's idle timer restarts on every packet it receives, and the
/// acknowledgement of each keep-alive restarts the dialer's; a lost keep-alive is sent
/// again after QUIC's probe timeout, well within the other half. A server holds a
/// connection to every other datacenter's servers, so this is the part of the idle WAN
/// traffic that grows with their number (at 50 datacenters: 12.5 datagrams/s per server
/// with both ends sending every 5 s, 10.1 with the dialer only; see BENCHMARKS.md, "WAN
/// pool at scale"). 15 s is also below the 30 s that UDP mappings of NATs commonly last.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Connections held at once; more incoming ones are refused.
pub const MAX_CONNECTIONS: usize = 1024;
/// Incoming handshakes in progress at once; more are refused.
pub const MAX_HANDSHAKES: usize = 256;
/// Streams a peer may have open on one connection at once (back-pressure for RPCs).
pub const MAX_STREAMS: u32 = 256;
/// Dials started by gossip packets at once; a packet that finds them all busy is dropped.
pub const MAX_PACKET_DIALS: usize = 64;
/// After a failed dial, further dials to the same address wait this long.
pub const DIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Largest RPC request payload accepted on a stream (gossip frames have the limits of
/// [`gossip::stream`]).
pub const MAX_REQUEST: usize = 16 * 1024 * 1024;
/// Largest answer read from a stream.
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// Bytes of requests being read or served at once, over every connection (an RPC's
/// bytes, and two chunks of every gossip stream, whose frames beyond that are charged to
/// the WAN pool's own budget); a stream that would go beyond is refused (so 1024 peers ×
/// 256 streams cannot each hold a 16 MiB request).
pub const MAX_REQUEST_BYTES_IN_FLIGHT: usize = 256 * 1024 * 1024;
/// Of [`MAX_REQUEST_BYTES_IN_FLIGHT`], what the streams of one connection may hold, so
/// one peer cannot take the whole budget; a stream beyond it is refused.
pub const MAX_REQUEST_BYTES_PER_CONNECTION: usize = 32 * 1024 * 1024;
/// How long a server has to serve one incoming stream: a blocking query from another
/// datacenter may wait up to Consul's 10-minute maximum, plus a margin.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(10 * 60 + 30);
/// Received gossip datagrams buffered per connection (the oldest are dropped).
const DATAGRAM_BUFFER: usize = 1024 * 1024;
/// Remembered dial failures; when full, the expired ones are forgotten.
const MAX_FAILURES: usize = 4096;

/// What a stream's request holds of the connection's and the endpoint's byte budgets,
/// in KiB; given back when dropped.
#[derive(Default)]
struct Held {
    connection: Option<OwnedSemaphorePermit>,
    endpoint: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// Holds `want` KiB of both budgets, or says which one has no more.
    fn grow(
        &mut self,
        want: u32,
        connection: &Arc<Semaphore>,
        endpoint: &Arc<Semaphore>,
    ) -> Result<(), &'static str> {
        fn take(
            held: &mut Option<OwnedSemaphorePermit>,
            budget: &Arc<Semaphore>,
            want: u32,
        ) -> bool {
            let have = held.as_ref().map_or(0, |p| p.num_permits() as u32);
            if want <= have {
                return true;
            }
            match budget.clone().try_acquire_many_owned(want - have) {
                Ok(more) => {
                    match held.as_mut() {
                        Some(p) => p.merge(more),
                        None => *held = Some(more),
                    }
                    true
                }
                Err(_) => false,
            }
        }
        if !take(&mut self.connection, connection, want) {
            return Err("on this connection");
        }
        if !take(&mut self.endpoint, endpoint, want) {
            return Err("over all connections");
        }
        Ok(())
    }
}

pub(crate) const KIND_GOSSIP: u8 = b'G';
pub(crate) const KIND_RPC: u8 = b'R';
/// Close code for a peer whose certificate is not a server's of the federation.
const CLOSE_IDENTITY: u32 = 0x1;
/// Close code for an endpoint that stops.
const CLOSE_SHUTDOWN: u32 = 0x3;

/// What the request of an incoming stream asks for.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Debug)]
pub(crate) enum StreamRequest<'a> {
    /// A gossip exchange: the frame, for the WAN pool.
    Gossip(&'a [u8]),
    /// An RPC, or why its payload is not one.
    Rpc(Result<Request, serde_json::Error>),
    /// A kind this endpoint does not know (or no bytes at all).
    Unknown,
}

/// Reads the request of an incoming stream, `[kind][payload]`, as [`Endpoint`] serves it
/// (which reads the kind first, then the payload as the kind says).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn parse_request(request: &[u8]) -> StreamRequest<'_> {
    match request.split_first() {
        Some((&KIND_GOSSIP, frame)) => StreamRequest::Gossip(frame),
        Some((&KIND_RPC, body)) => StreamRequest::Rpc(serde_json::from_slice(body)),
        _ => StreamRequest::Unknown,
    }
}

/// Why a WAN operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WanError {
    /// The endpoint could not be set up.
    #[error("{0}")]
    Config(String),
    /// No connection to the peer (unreachable, refused, or the TLS handshake failed).
    #[error("connecting to {addr}: {error}")]
    Connect {
        /// The peer.
        addr: SocketAddr,
        /// What happened.
        error: String,
    },
    /// The peer's certificate is not a server certificate of this federation, or not for
    /// the datacenter asked for.
    #[error("{addr}: {error}")]
    Identity {
        /// The peer.
        addr: SocketAddr,
        /// What is wrong with its certificate.
        error: String,
    },
    /// The deadline passed.
    #[error("timed out")]
    Timeout,
    /// The stream broke, or its answer was unreadable.
    #[error("{0}")]
    Stream(String),
    /// This endpoint is stopping.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// No server of the datacenter is known (Consul's text).
    #[error("No path to datacenter")]
    NoPath,
    /// The datacenter is known, but none of its servers answered (Consul's text).
    #[error("Remote DC has no server currently reachable")]
    NoServer,
    /// A write reached a server (or may have) but no answer came back: it may or may not
    /// have been applied, and it was not sent to another server.
    #[error("no answer from {0}; the write may or may not have been applied")]
    Unknown(String),
}

/// What a QUIC endpoint needs.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Address to bind (UDP); port 0 picks a free one.
    pub bind: SocketAddr,
    /// The federation's CA and this server's certificate.
    pub material: Material,
    /// The DNS domain certificates are issued in (`consul`).
    pub domain: String,
}

#[derive(Clone)]
struct Peer {
    conn: quinn::Connection,
    datacenter: String,
}

struct Inner {
    quic: quinn::Endpoint,
    domain: String,
    peers: Mutex<HashMap<SocketAddr, Peer>>,
    /// One dial at a time per address.
    dialing: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
    failures: Mutex<HashMap<SocketAddr, (Instant, WanError)>>,
    packet_dials: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    gossip: OnceLock<Inbound>,
    service: OnceLock<Arc<dyn Service>>,
    log: Mutex<PeerLog>,
    /// RPC requests handed to the service so far.
    served: std::sync::atomic::AtomicU64,
    /// Connections being served, replaced ones included.
    live: std::sync::atomic::AtomicUsize,
    /// [`MAX_REQUEST_BYTES_IN_FLIGHT`], in KiB.
    request_budget: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// Handle to the endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

/// The transport settings of connections this endpoint dials (`dialer`) or accepts.
fn transport(dialer: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("idle timeout fits"),
    ));
    t.keep_alive_interval(dialer.then_some(KEEP_ALIVE));
    t.max_concurrent_bidi_streams(MAX_STREAMS.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    Arc::new(t)
}

/// The datacenter a peer's certificate is a server certificate for
/// (`server.<datacenter>.<domain>`).
fn peer_datacenter(conn: &quinn::Connection, domain: &str) -> Result<String, String> {
    let chain = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or("the peer presented no certificate")?;
    let leaf = chain.first().ok_or("the peer presented no certificate")?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| e.to_string())?;
    let suffix = format!(".{domain}");
    for name in cert.valid_dns_names() {
        let Some(dc) = name
            .strip_prefix("server.")
            .and_then(|rest| rest.strip_suffix(suffix.as_str()))
        else {
            continue;
        };
        if dc.is_empty() || dc.contains('.') {
            continue;
        }
        // The name came out of the certificate; have webpki confirm it the proper way.
        let Ok(subject) = rustls::pki_types::ServerName::try_from(name.to_owned()) else {
            continue;
        };
        if cert.verify_is_valid_for_subject_name(&subject).is_ok() {
            return Ok(dc.to_owned());
        }
    }
    Err(format!(
        "the peer's certificate is not a server certificate of this federation \
         (it must carry the name server.<datacenter>.{domain}; create one with \
         `proconsul tls cert create -server -dc <datacenter>`)"
    ))
}

impl Endpoint {
    /// Binds the endpoint and starts accepting connections. Tasks run on `tasks` until
    /// `shutdown`.
    pub fn bind(
        config: EndpointConfig,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Endpoint, WanError> {
        let cfg = |e: &dyn std::fmt::Display| WanError::Config(e.to_string());
        if !config.material.has_certificate() {
            return Err(WanError::Config(
                "WAN federation needs this server's certificate (cert_file and key_file); \
                 create them with `proconsul tls ca create` and \
                 `proconsul tls cert create -server -dc <datacenter>`"
                    .into(),
            ));
        }
        let server_tls = config
            .material
            .server_config(true, &[ALPN])
            .map_err(|e| cfg(&e))?;
        // The chain is checked in the handshake; the server name after it, for both
        // directions alike (see `peer_datacenter`).
        let client_tls = config
            .material
            .client_config(false, &[ALPN])
            .map_err(|e| cfg(&e))?;
        let server_crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).map_err(|e| cfg(&e))?;
        let client_crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).map_err(|e| cfg(&e))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport(false));
        server.max_incoming(MAX_CONNECTIONS);
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport(true));
        let mut quic = quinn::Endpoint::server(server, config.bind).map_err(|e| {
            WanError::Config(format!("binding the WAN endpoint to {}: {e}", config.bind))
        })?;
        quic.set_default_client_config(client);
        let endpoint = Endpoint {
            inner: Arc::new(Inner {
                quic,
                domain: config.domain,
                peers: Mutex::default(),
                dialing: Mutex::default(),
                failures: Mutex::default(),
                packet_dials: Arc::new(Semaphore::new(MAX_PACKET_DIALS)),
                handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
                gossip: OnceLock::new(),
                service: OnceLock::new(),
                log: Mutex::default(),
                served: Default::default(),
                live: Default::default(),
                request_budget: Arc::new(Semaphore::new(MAX_REQUEST_BYTES_IN_FLIGHT / 1024)),
                tasks: tasks.clone(),
                shutdown: shutdown.clone(),
            }),
        };
        tracing::info!(proto = "serf-wan-quic", addr = %endpoint.local_addr(), "listening");
        tasks.spawn(endpoint.clone().accept_loop());
        Ok(endpoint)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner
            .quic
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Hands gossip arriving on the endpoint to this pool (set once).
    pub fn set_gossip(&self, inbound: Inbound) {
        let _ = self.inner.gossip.set(inbound);
    }

    /// Serves RPCs arriving on the endpoint with this service (set once).
    pub fn set_service(&self, service: Arc<dyn Service>) {
        let _ = self.inner.service.set(service);
    }

    /// The smoothed round-trip time to `addr`, when connected.
    pub fn rtt(&self, addr: SocketAddr) -> Option<Duration> {
        let peers = self.inner.peers.lock().expect("peers lock");
        peers.get(&addr).map(|p| p.conn.rtt())
    }

    /// RPC requests from other datacenters this endpoint has served so far.
    pub fn served(&self) -> u64 {
        self.inner.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Connections open now, counting those a newer connection to the same peer
    /// replaced and that are still being served until they close.
    pub fn connections(&self) -> usize {
        self.inner.live.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn refused(&self, peer: SocketAddr, what: &str, error: &dyn std::fmt::Display) {
        let log = self
            .inner
            .log
            .lock()
            .expect("peer log lock")
            .should_log(peer.ip(), Instant::now());
        if let Some(suppressed) = log {
            tracing::warn!(pool = "WAN", peer = %peer, error = %error, suppressed, "refused {what}");
        }
    }

    async fn accept_loop(self) {
        loop {
            let incoming = tokio::select! {
                _ = self.inner.shutdown.cancelled() => break,
                incoming = self.inner.quic.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            // Handshakes in progress are bounded too: each holds state until it ends.
            let Ok(handshake) = self.inner.handshakes.clone().try_acquire_owned() else {
                self.refused(
                    incoming.remote_address(),
                    "WAN connection",
                    &"too many handshakes in progress",
                );
                incoming.refuse();
                continue;
            };
            if self.connections() >= MAX_CONNECTIONS {
                self.refused(
                    incoming.remote_address(),
                    "WAN connection",
                    &"at the connection limit",
                );
                incoming.refuse();
                continue;
            }
            let endpoint = self.clone();
            self.inner.tasks.spawn(async move {
                let _handshake = handshake;
                let remote = incoming.remote_address();
                let connecting = match incoming.accept() {
                    Ok(c) => c,
                    Err(e) => return endpoint.refused(remote, "WAN connection", &e),
                };
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
                    Ok(Ok(conn)) => {
                        if let Err(e) = endpoint.admit(conn, None) {
                            endpoint.refused(remote, "WAN connection", &e);
                        }
                    }
                    Ok(Err(e)) => endpoint.refused(remote, "WAN connection", &e),
                    Err(_) => endpoint.refused(remote, "WAN connection", &"handshake timed out"),
                }
            });
        }
        self.inner
            .quic
            .close(CLOSE_SHUTDOWN.into(), b"the agent is shutting down");
    }

    /// Checks a new connection's identity, records it and serves what it brings.
    fn admit(&self, conn: quinn::Connection, expect: Option<&str>) -> Result<Peer, WanError> {
        let addr = conn.remote_address();
        let datacenter = match peer_datacenter(&conn, &self.inner.domain) {
            Ok(dc) => dc,
            Err(error) => {
                conn.close(CLOSE_IDENTITY.into(), b"not a server certificate");
                return Err(WanError::Identity { addr, error });
            }
        };
        if let Some(want) = expect
            && want != datacenter
        {
            conn.close(CLOSE_IDENTITY.into(), b"unexpected datacenter");
            return Err(WanError::Identity {
                addr,
                error: format!(
                    "the peer's certificate is for datacenter {datacenter:?}, not {want:?}"
                ),
            });
        }
        let peer = Peer { conn, datacenter };
        // The newest connection is the one used to send: a peer that dials while we
        // hold a connection to it has most likely restarted, and the old connection is
        // dead. (When both sides dial at once, each may send on a different one of the
        // two; both work, and the unused one idles out.) Any older connection is still
        // served until it closes.
        self.inner
            .peers
            .lock()
            .expect("peers lock")
            .insert(addr, peer.clone());
        self.inner.tasks.spawn(self.clone().serve(peer.clone()));
        Ok(peer)
    }

    async fn serve(self, peer: Peer) {
        struct Live<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Live<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.inner
            .live
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _live = Live(&self.inner.live);
        let conn = peer.conn.clone();
        let addr = conn.remote_address();
        let caller = Caller {
            addr,
            datacenter: peer.datacenter.clone(),
        };
        let datagrams = async {
            while let Ok(bytes) = conn.read_datagram().await {
                if let Some(gossip) = self.inner.gossip.get() {
                    gossip.packet(addr, bytes.to_vec());
                }
            }
        };
        let budget = Arc::new(Semaphore::new(MAX_REQUEST_BYTES_PER_CONNECTION / 1024));
        let streams = async {
            while let Ok((send, recv)) = conn.accept_bi().await {
                let endpoint = self.clone();
                let caller = caller.clone();
                let budget = budget.clone();
                // At most MAX_STREAMS at once: the peer cannot open more.
                self.inner.tasks.spawn(async move {
                    let shutdown = endpoint.inner.shutdown.clone();
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        r = tokio::time::timeout(STREAM_TIMEOUT, endpoint.serve_stream(caller.clone(), &budget, send, recv)) => {
                            match r {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => tracing::debug!(peer = %caller.addr, error = %e, "WAN stream failed"),
                                Err(_) => tracing::debug!(peer = %caller.addr, "WAN stream timed out"),
                            }
                        }
                    }
                });
            }
        };
        tokio::select! {
            _ = self.inner.shutdown.cancelled() => {
                conn.close(CLOSE_SHUTDOWN.into(), b"the agent is shutting down");
            }
            _ = datagrams => {}
            _ = streams => {}
        }
        let mut peers = self.inner.peers.lock().expect("peers lock");
        if peers
            .get(&addr)
            .is_some_and(|p| p.conn.stable_id() == conn.stable_id())
        {
            peers.remove(&addr);
        }
    }

    /// Serves one stream of `caller`'s connection: a gossip stream goes to the WAN pool as
    /// it arrives; an RPC request is read whole, its bytes counted against
    /// `connection`'s budget (in KiB) as well as the endpoint's.
    async fn serve_stream(
        &self,
        caller: Caller,
        connection: &Arc<Semaphore>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> Result<(), String> {
        let kind = recv.read_u8().await.map_err(|e| e.to_string())?;
        let answer = match kind {
            KIND_GOSSIP => {
                let Some(gossip) = self.inner.gossip.get() else {
                    return Ok(());
                };
                // What the pool holds of every stream without charging its own budget (a
                // chunk being opened, the first chunk of the frame) counts here like an
                // RPC's bytes; the rest of the frame is charged to the pool's budget.
                let mut held = Held::default();
                let first = 2 * gossip::stream::CHUNK_WIRE;
                let want = u32::try_from(first.div_ceil(1024)).unwrap_or(u32::MAX);
                if let Err(which) = held.grow(want, connection, &self.inner.request_budget) {
                    self.refused(
                        caller.addr,
                        "WAN gossip stream",
                        &format!("the memory budget for requests in flight {which} is used up"),
                    );
                    let _ = recv.stop(0u32.into());
                    return Ok(());
                }
                // A gossip exchange gets the LAN's time limit, not an RPC's blocking wait.
                let serve = gossip.serve(caller.addr, &mut recv, &mut send);
                tokio::time::timeout(gossip::transport::STREAM_TIMEOUT, serve)
                    .await
                    .map_err(|_| "gossip stream timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                None
            }
            KIND_RPC => {
                let Some(body) = self.read_rpc(&caller, connection, &mut recv).await? else {
                    return Ok(());
                };
                let response = match serde_json::from_slice::<Request>(&body) {
                    Ok(request) => match self.inner.service.get() {
                        Some(service) => {
                            self.inner
                                .served
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            service.serve(caller.clone(), request).await
                        }
                        None => Response::Error("this server serves no WAN requests yet".into()),
                    },
                    Err(e) => {
                        self.refused(caller.addr, "WAN request", &e);
                        Response::Error(format!("unreadable request: {e}"))
                    }
                };
                Some(serde_json::to_vec(&response).expect("a response serialises"))
            }
            _ => {
                self.refused(caller.addr, "WAN stream", &"unknown stream kind");
                None
            }
        };
        if let Some(answer) = answer {
            send.write_all(&answer).await.map_err(|e| e.to_string())?;
        }
        let _ = send.finish();
        // Wait until the peer has the answer (or is gone) before the stream is dropped.
        let _ = send.stopped().await;
        Ok(())
    }

    /// Reads an RPC request to its end in chunks, each counted against `connection`'s
    /// budget and the endpoint's before it is kept; `None` when it was refused (and
    /// logged).
    async fn read_rpc(
        &self,
        caller: &Caller,
        connection: &Arc<Semaphore>,
        recv: &mut quinn::RecvStream,
    ) -> Result<Option<Vec<u8>>, String> {
        let mut request = Vec::new();
        let mut held = Held::default();
        loop {
            let chunk = match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => chunk.bytes,
                Ok(None) => return Ok(Some(request)),
                Err(e) => return Err(e.to_string()),
            };
            let total = request.len() + chunk.len();
            if total > MAX_REQUEST {
                self.refused(caller.addr, "WAN request", &"over the size limit");
                let _ = recv.stop(0u32.into());
                return Ok(None);
            }
            let want = u32::try_from(total.div_ceil(1024)).unwrap_or(u32::MAX);
            if let Err(which) = held.grow(want, connection, &self.inner.request_budget) {
                self.refused(
                    caller.addr,
                    "WAN request",
                    &format!("the memory budget for requests in flight {which} is used up"),
                );
                let _ = recv.stop(0u32.into());
                return Ok(None);
            }
            request.extend_from_slice(&chunk);
        }
    }

    fn server_name(&self, datacenter: Option<&str>) -> String {
        match datacenter {
            Some(dc) => crate::tls::server_name(dc, &self.inner.domain),
            None => format!("server.{}", self.inner.domain),
        }
    }

    fn connected(&self, addr: SocketAddr) -> Option<Peer> {
        let peers = self.inner.peers.lock().expect("peers lock");
        peers
            .get(&addr)
            .filter(|p| p.conn.close_reason().is_none())
            .cloned()
    }

    /// The connection to `addr`, dialed when there is none. With `expect`, the peer's
    /// certificate must be for that datacenter.
    async fn connection(&self, addr: SocketAddr, expect: Option<&str>) -> Result<Peer, WanError> {
        let check = |peer: Peer| match expect {
            Some(want) if want != peer.datacenter => Err(WanError::Identity {
                addr,
                error: format!(
                    "the peer's certificate is for datacenter {:?}, not {want:?}",
                    peer.datacenter
                ),
            }),
            _ => Ok(peer),
        };
        if let Some(peer) = self.connected(addr) {
            return check(peer);
        }
        // The dial runs as a task of its own, so that a caller giving up (its deadline
        // passed) neither leaves the dialing entry behind nor skips the failure
        // bookkeeping; the dial itself is bounded by HANDSHAKE_TIMEOUT.
        let endpoint = self.clone();
        let want = expect.map(str::to_owned);
        let dial = self
            .inner
            .tasks
            .spawn(async move { endpoint.dial(addr, want.as_deref()).await });
        check(dial.await.map_err(|_| WanError::ShuttingDown)??)
    }

    /// One dial to `addr` at a time: later callers wait for the first, then find its
    /// connection (or its failure, within DIAL_BACKOFF).
    async fn dial(&self, addr: SocketAddr, expect: Option<&str>) -> Result<Peer, WanError> {
        let lock = {
            let mut dialing = self.inner.dialing.lock().expect("dialing lock");
            dialing.entry(addr).or_default().clone()
        };
        let result = {
            let _guard = lock.lock().await;
            self.dial_locked(addr, expect).await
        };
        let mut dialing = self.inner.dialing.lock().expect("dialing lock");
        // The map's reference and ours: nobody else is waiting for this address.
        if Arc::strong_count(&lock) <= 2 {
            dialing.remove(&addr);
        }
        result
    }

    async fn dial_locked(&self, addr: SocketAddr, expect: Option<&str>) -> Result<Peer, WanError> {
        if let Some(peer) = self.connected(addr) {
            return Ok(peer);
        }
        if self.inner.shutdown.is_cancelled() {
            return Err(WanError::ShuttingDown);
        }
        let now = Instant::now();
        {
            let failures = self.inner.failures.lock().expect("failures lock");
            if let Some((at, error)) = failures.get(&addr)
                && now.duration_since(*at) < DIAL_BACKOFF
            {
                return Err(error.clone());
            }
        }
        let result = async {
            let connecting = self
                .inner
                .quic
                .connect(addr, &self.server_name(expect))
                .map_err(|e| WanError::Connect {
                    addr,
                    error: e.to_string(),
                })?;
            let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
                .await
                .map_err(|_| WanError::Connect {
                    addr,
                    error: "handshake timed out".into(),
                })?
                .map_err(|e| WanError::Connect {
                    addr,
                    error: e.to_string(),
                })?;
            self.admit(conn, expect)
        }
        .await;
        let mut failures = self.inner.failures.lock().expect("failures lock");
        match &result {
            Ok(_) => {
                failures.remove(&addr);
            }
            Err(e) => {
                self.refused(addr, "WAN connection", e);
                if failures.len() >= MAX_FAILURES {
                    failures.retain(|_, (at, _)| now.duration_since(*at) < DIAL_BACKOFF);
                    if failures.len() >= MAX_FAILURES {
                        failures.clear();
                    }
                }
                failures.insert(addr, (now, e.clone()));
            }
        }
        result
    }

    /// Opens a stream to `addr` and sends `payload` of `kind` on it, finished; returns the
    /// stream's reading half, where the answer arrives, and its connection.
    async fn open(
        &self,
        addr: SocketAddr,
        expect: Option<&str>,
        kind: u8,
        payload: &[u8],
    ) -> Result<(quinn::RecvStream, quinn::Connection), WanError> {
        let conn = self.connection(addr, expect).await?.conn;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| stream_error(addr, &conn, &e))?;
        let mut framed = Vec::with_capacity(payload.len() + 1);
        framed.push(kind);
        framed.extend_from_slice(payload);
        send.write_all(&framed)
            .await
            .map_err(|e| stream_error(addr, &conn, &e))?;
        let _ = send.finish();
        Ok((recv, conn))
    }

    /// Sends `payload` of `kind` on a new stream to `addr` and reads the answer to its end
    /// (at most [`MAX_ANSWER`] bytes), all before `deadline`.
    async fn request(
        &self,
        addr: SocketAddr,
        expect: Option<&str>,
        kind: u8,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, WanError> {
        let work = async {
            let (mut recv, conn) = self.open(addr, expect, kind, payload).await?;
            let answer = recv
                .read_to_end(MAX_ANSWER)
                .await
                .map_err(|e| stream_error(addr, &conn, &e))?;
            Ok::<_, WanError>(answer)
        };
        tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| WanError::Timeout)?
    }

    /// Makes sure a connection to the server at `addr`, whose certificate must be for
    /// `datacenter`, is open, dialing it before `deadline` if need be.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        datacenter: &str,
        deadline: Instant,
    ) -> Result<(), WanError> {
        tokio::time::timeout_at(deadline, self.connection(addr, Some(datacenter)))
            .await
            .map_err(|_| WanError::Timeout)?
            .map(|_| ())
    }

    /// Sends an RPC to the server at `addr`, whose certificate must be for `datacenter`,
    /// and returns its answer, all before `deadline`.
    pub async fn call(
        &self,
        addr: SocketAddr,
        datacenter: &str,
        request: &Request,
        deadline: Instant,
    ) -> Result<Response, WanError> {
        let body = serde_json::to_vec(request).expect("a request serialises");
        let answer = self
            .request(addr, Some(datacenter), KIND_RPC, &body, deadline)
            .await?;
        serde_json::from_slice(&answer)
            .map_err(|e| WanError::Stream(format!("unreadable answer from {addr}: {e}")))
    }

    /// The connection to the server at `addr`, for tests that speak on raw streams.
    #[cfg(test)]
    pub(crate) async fn raw_connection(
        &self,
        addr: SocketAddr,
        datacenter: &str,
    ) -> Result<quinn::Connection, WanError> {
        Ok(self.connection(addr, Some(datacenter)).await?.conn)
    }

    /// The gossip link over this endpoint, for the WAN pool.
    pub fn link(&self) -> Arc<dyn Link> {
        Arc::new(QuicLink {
            endpoint: self.clone(),
        })
    }
}

/// Why a stream to `addr` failed: when its connection is gone, why it went (the peer
/// refused our certificate, say), which says more than the stream's own error.
fn stream_error(addr: SocketAddr, conn: &quinn::Connection, e: &dyn std::fmt::Display) -> WanError {
    match conn.close_reason() {
        Some(reason) => WanError::Connect {
            addr,
            error: reason.to_string(),
        },
        None => WanError::Stream(e.to_string()),
    }
}

/// The reading half of a gossip exchange, whose errors say why the connection closed
/// when it did (see [`stream_error`]).
struct GossipReply {
    recv: quinn::RecvStream,
    conn: quinn::Connection,
    addr: SocketAddr,
}

impl tokio::io::AsyncRead for GossipReply {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.recv).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) => {
                let error = stream_error(this.addr, &this.conn, &e);
                std::task::Poll::Ready(Err(std::io::Error::new(e.kind(), error.to_string())))
            }
            other => other,
        }
    }
}

/// The WAN pool's link: datagrams for packets, a stream per exchange.
struct QuicLink {
    endpoint: Endpoint,
}

impl Link for QuicLink {
    fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    fn send_packet(&self, to: SocketAddr, bytes: Vec<u8>) {
        if let Some(peer) = self.endpoint.connected(to) {
            if let Err(e) = peer.conn.send_datagram(Bytes::from(bytes)) {
                tracing::debug!(peer = %to, error = %e, "WAN datagram not sent");
            }
            return;
        }
        // No connection yet: dial in the background and send once connected. While a
        // dial to this peer is under way, or with every dial slot busy, the packet is
        // lost like any other (a dead peer must not tie up the slots other peers need).
        if self
            .endpoint
            .inner
            .dialing
            .lock()
            .expect("dialing lock")
            .contains_key(&to)
        {
            return;
        }
        let Ok(permit) = self.endpoint.inner.packet_dials.clone().try_acquire_owned() else {
            return;
        };
        let endpoint = self.endpoint.clone();
        self.endpoint.inner.tasks.spawn(async move {
            let _permit = permit;
            let dial = tokio::time::timeout(HANDSHAKE_TIMEOUT, endpoint.connection(to, None));
            if let Ok(Ok(peer)) = dial.await {
                let _ = peer.conn.send_datagram(Bytes::from(bytes));
            }
        });
    }

    fn exchange(&self, to: SocketAddr, frame: Vec<u8>) -> Exchange<'_> {
        Box::pin(async move {
            // The pool reads the answer from the stream under its own bounds and deadline.
            let deadline = Instant::now() + gossip::transport::STREAM_TIMEOUT;
            let open = self.endpoint.open(to, None, KIND_GOSSIP, &frame);
            let opened = tokio::time::timeout_at(deadline, open)
                .await
                .map_err(|_| WanError::Timeout)
                .and_then(|r| r);
            match opened {
                Ok((recv, conn)) => Ok(Box::new(GossipReply {
                    recv,
                    conn,
                    addr: to,
                }) as Reply),
                Err(WanError::Timeout) => Err(JoinError::Timeout),
                Err(WanError::ShuttingDown) => Err(JoinError::ShuttingDown),
                Err(WanError::Identity { error, .. }) => Err(JoinError::Refused(error)),
                Err(other) => Err(JoinError::Io(other.to_string())),
            }
        })
    }
}
