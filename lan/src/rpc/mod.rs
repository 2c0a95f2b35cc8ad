//! Server RPC on the server port (8300/tcp): framing and connections, whatever the
//! messages are. What travels is the business of the modules that send and serve it:
//! [`crate::server`] owns the port's requests and answers, [`crate::raft`] owns Raft's
//! messages inside them. This module imports neither.
//!
//! ```text
//!   caller ──call(addr, &Req, deadline)──▶ Client ── one TCP connection per peer ──▶ serve
//!          ◀──────────── Resp ───────────        (requests multiplexed by id)     │
//!                                                                   Handler::handle
//! ```
//!
//! A connection carries many requests at once: each frame is `[length: u32][JSON]` of an
//! envelope `{"id": …, "body": …}` whose `id` pairs a response with its request, so a
//! blocking query that waits minutes does not hold up a heartbeat behind it. The body is
//! any type with serde's traits: [`Client::call`] names the request and answer types per
//! call, and a [`Handler`] names the ones it serves. Every call has a deadline; the
//! remaining time travels with forwarded requests so the far side stops when the caller
//! has given up. Peer input is length-checked before it is read and a frame that does
//! not decode closes its connection; it never reaches a panic.
//!
//! Connections are secured by the gossip keyring or by TLS ([`secure`]), framed and
//! budgeted ([`frame`]), and admitted to fair seats ([`crate::fair`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) mod frame;
pub(crate) mod secure;

pub(crate) use frame::MAX_FRAME as MAX_RPC_FRAME;
use frame::{FrameBudget, FrameReader, FrameWriter};
pub use secure::RpcTls;
pub(crate) use secure::{Caller, Keys};

/// An inbound connection with no request in flight and none arriving for this long is
/// closed (callers reconnect on their next call).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Inbound connections held at once. When all are taken, a caller from an address that
/// holds fewer than another takes that address's oldest place ([`crate::fair`]), so a
/// few addresses cannot shut the others out.
pub(crate) const MAX_RPC_CONNECTIONS: usize = 1024;
/// Inbound connections open at once from one IP address, unless configured otherwise
/// (Consul's `limits.rpc_max_conns_per_client` and its default); more are closed at once.
pub const DEFAULT_RPC_MAX_CONNS_PER_CLIENT: usize = 100;
/// Requests of one inbound connection handled at once; the connection is not read
/// further until one finishes.
pub(crate) const MAX_CONCURRENT_PER_CONNECTION: usize = 512;
/// Requests waiting for an answer on one outbound connection; more fail at once.
pub(crate) const MAX_PENDING_PER_CONNECTION: usize = 4096;
/// Frames waiting to be written on one connection; writers wait when it is full.
const WRITE_QUEUE: usize = 256;

/// One frame's JSON: a request or its answer, paired by `id`.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    id: u64,
    body: T,
}

/// The body of a frame of the server port, read as `T` (what the server does with a
/// request frame).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice::<Envelope<T>>(payload).map(|e| e.body)
}

/// Why a call failed. The request may or may not have reached the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RpcError {
    /// No connection could be made; try another server.
    #[error("connecting to {addr}: {error}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// What went wrong.
        error: String,
    },
    /// The connection closed before the answer came; try another server.
    #[error("connection to {0} closed")]
    Closed(SocketAddr),
    /// The deadline passed.
    #[error("timed out")]
    Timeout,
    /// Too many requests are waiting on this connection; back off.
    #[error("too many requests in flight to {0}")]
    Busy(SocketAddr),
    /// The request is larger than any server accepts; split it.
    #[error("request of {0} bytes is over the frame limit")]
    TooLarge(usize),
    /// The server ended the TLS session with an alert about this agent's certificate.
    #[error(
        "the server at {addr} refused this agent's TLS ({alert}): it needs a client \
         certificate from the datacenter's CA that is valid now; give this agent cert_file \
         and key_file (proconsul tls cert create -client) and the CA's ca_file"
    )]
    Certificate {
        /// The server.
        addr: SocketAddr,
        /// The alert, as rustls words it.
        alert: String,
    },
    /// The server refused this agent's connection and said why.
    #[error("the server at {addr} refused this agent: {why}")]
    Refused {
        /// The server.
        addr: SocketAddr,
        /// Why, and what fixes it.
        why: Refused,
    },
}

/// Why a server refused a plaintext connection, as it tells the caller (in a frame of
/// ID 0, which no request uses) before closing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Refused {
    /// The server has `verify_incoming`: callers need TLS with a client certificate.
    TlsRequired,
    /// The server has a gossip key and `encrypt_verify_incoming`: callers need the key.
    KeyRequired,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::TlsRequired => f.write_str(
                "its server port requires TLS (verify_incoming); give this agent ca_file, \
                 cert_file and key_file with a certificate from the datacenter's CA \
                 (proconsul tls cert create -client)",
            ),
            Refused::KeyRequired => f.write_str(
                "its server port requires the gossip key (encrypt_verify_incoming); give \
                 this agent the datacenter's key (encrypt)",
            ),
        }
    }
}

/// Whether a read error is a TLS alert about this side's certificate.
fn is_certificate_alert(text: &str) -> bool {
    text.contains("alert")
        && ["Certificate", "UnknownCA", "DecryptError", "AccessDenied"]
            .iter()
            .any(|a| text.contains(a))
}

/// The frame that tells a refused caller why.
pub(crate) fn refusal_frame(why: Refused) -> Vec<u8> {
    let payload = serde_json::to_vec(&Envelope { id: 0, body: why }).expect("refusals serialise");
    let mut frame = Vec::with_capacity(payload.len() + 4);
    frame.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(&payload);
    frame
}

/// Writes queued frames until the queue closes or a write fails.
async fn run_writer(
    mut writer: FrameWriter,
    mut queue: mpsc::Receiver<Vec<u8>>,
    done: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            _ = done.cancelled() => break,
            f = queue.recv() => match f {
                Some(f) => f,
                None => break,
            },
        };
        if writer.write(&frame).await.is_err() {
            break;
        }
    }
    done.cancel();
    writer.shutdown().await;
}

/// One outbound connection.
struct Connection {
    addr: SocketAddr,
    /// Request frames by ID, in the order they are to be written.
    writes: mpsc::Sender<(u64, Vec<u8>)>,
    /// The callers waiting, by request ID; each is handed its answer's frame, which it
    /// reads as the type it expects.
    pending: Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>,
    next_id: AtomicU64,
    closed: CancellationToken,
    /// Why the server refused this connection, if it said so.
    refused: Mutex<Option<Refused>>,
    /// The TLS alert the server ended the connection with, if it did.
    alert: Mutex<Option<String>>,
}

impl Connection {
    /// The error of a call on this connection once it closed: the server's refusal
    /// when it gave one.
    fn closed_error(&self) -> RpcError {
        if let Some(why) = *self.refused.lock().expect("refused lock") {
            return RpcError::Refused {
                addr: self.addr,
                why,
            };
        }
        match self.alert.lock().expect("alert lock").clone() {
            Some(alert) => RpcError::Certificate {
                addr: self.addr,
                alert,
            },
            None => RpcError::Closed(self.addr),
        }
    }

    async fn open(
        addr: SocketAddr,
        deadline: Instant,
        tls: Option<&RpcTls>,
        keys: Option<&Keys>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Arc<Connection>, RpcError> {
        let keys = keys.and_then(|k| k());
        let (reader, writer) = secure::connect(addr, deadline, tls, keys)
            .await
            .map_err(|error| RpcError::Connect { addr, error })?;
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let closed = shutdown.child_token();
        let conn = Arc::new(Connection {
            addr,
            writes,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: closed.clone(),
            refused: Mutex::new(None),
            alert: Mutex::new(None),
        });
        tasks.spawn(Connection::write_requests(conn.clone(), writer, queue));
        tasks.spawn(Connection::read_answers(conn.clone(), reader));
        Ok(conn)
    }

    /// Writes queued requests, skipping those whose caller gave up (its deadline
    /// passed) so that a backlog of stale frames never delays a fresh one.
    async fn write_requests(
        conn: Arc<Connection>,
        mut writer: FrameWriter,
        mut queue: mpsc::Receiver<(u64, Vec<u8>)>,
    ) {
        loop {
            let (id, frame) = tokio::select! {
                _ = conn.closed.cancelled() => break,
                f = queue.recv() => match f {
                    Some(f) => f,
                    None => break,
                },
            };
            if !conn.pending.lock().expect("pending lock").contains_key(&id) {
                continue;
            }
            if writer.write(&frame).await.is_err() {
                break;
            }
        }
        conn.closed.cancel();
        writer.shutdown().await;
    }

    async fn read_answers(conn: Arc<Connection>, mut reader: FrameReader) {
        loop {
            let frame = tokio::select! {
                _ = conn.closed.cancelled() => break,
                f = reader.read() => match f {
                    Ok(f) => f,
                    Err(e) => {
                        // A server that refuses the certificate after the handshake
                        // (TLS 1.3) says so in an alert, which the read returns.
                        let text = e.to_string();
                        if is_certificate_alert(&text) {
                            *conn.alert.lock().expect("alert lock") = Some(text);
                        }
                        break;
                    }
                },
            };
            // Only the ID is read here: the caller reads the body as the type it expects.
            let envelope: Envelope<IgnoredAny> = match serde_json::from_slice(&frame.payload) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(peer = %conn.addr, error = %e, "closing a server RPC connection after an unreadable answer");
                    break;
                }
            };
            if envelope.id == 0 {
                // No request has ID 0: the server refused the connection and says why.
                if let Ok(refusal) = serde_json::from_slice::<Envelope<Refused>>(&frame.payload) {
                    *conn.refused.lock().expect("refused lock") = Some(refusal.body);
                }
                break;
            }
            let waiter = conn
                .pending
                .lock()
                .expect("pending lock")
                .remove(&envelope.id);
            if let Some(waiter) = waiter {
                let _ = waiter.send(frame.payload);
            }
        }
        conn.closed.cancel();
        // Dropping the senders fails every call still waiting on this connection.
        conn.pending.lock().expect("pending lock").clear();
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        request: &Req,
        deadline: Instant,
    ) -> Result<Resp, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let frame =
            serde_json::to_vec(&Envelope { id, body: request }).expect("requests serialise");
        if frame.len() > MAX_RPC_FRAME {
            return Err(RpcError::TooLarge(frame.len()));
        }
        {
            let mut pending = self.pending.lock().expect("pending lock");
            if pending.len() >= MAX_PENDING_PER_CONNECTION {
                return Err(RpcError::Busy(self.addr));
            }
            pending.insert(id, tx);
        }
        // The reader may have given up on the connection just before the insert: then
        // nobody would ever answer this call.
        if self.closed.is_cancelled() {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(self.closed_error());
        }
        let result = tokio::time::timeout_at(deadline, async {
            self.writes
                .send((id, frame))
                .await
                .map_err(|_| RpcError::Closed(self.addr))?;
            rx.await.map_err(|_| RpcError::Closed(self.addr))
        })
        .await;
        if !matches!(result, Ok(Ok(_))) {
            self.pending.lock().expect("pending lock").remove(&id);
        }
        let answer = match result {
            Err(_) => return Err(RpcError::Timeout),
            Ok(Err(_)) => return Err(self.closed_error()),
            Ok(Ok(answer)) => answer,
        };
        self.read_answer(&answer)
    }

    /// The body of an answer frame as `Resp`. An answer that does not read closes the
    /// connection, as any unreadable frame from the peer does.
    fn read_answer<Resp: DeserializeOwned>(&self, payload: &[u8]) -> Result<Resp, RpcError> {
        match serde_json::from_slice::<Envelope<Resp>>(payload) {
            Ok(envelope) => Ok(envelope.body),
            Err(e) => {
                tracing::warn!(peer = %self.addr, error = %e, "closing a server RPC connection after an unreadable answer");
                self.closed.cancel();
                Err(RpcError::Closed(self.addr))
            }
        }
    }
}

/// The connection to one server, once opened.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

/// Servers with a connection slot; past it, slots of closed connections are dropped.
const MAX_PEERS: usize = 1024;

/// Outbound server RPC: one multiplexed connection per server, opened on first use and
/// again after it breaks. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Client {
    /// One slot per server: its lock is held only while connecting to that server, so
    /// a server that does not answer never delays calls to the others.
    peers: Arc<Mutex<HashMap<SocketAddr, Slot>>>,
    tls: Option<RpcTls>,
    /// The gossip keyring, for the keyring handshake when there is no TLS.
    keys: Option<Keys>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    pub(crate) fn new(
        tls: Option<RpcTls>,
        keys: Option<Keys>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Client {
        Client {
            peers: Arc::default(),
            tls,
            keys,
            tasks,
            shutdown,
        }
    }

    async fn connection(
        &self,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<Arc<Connection>, RpcError> {
        let slot = {
            let mut peers = self.peers.lock().expect("peers lock");
            if peers.len() >= MAX_PEERS {
                // Forget servers whose connection is gone.
                peers.retain(|_, s| {
                    s.try_lock()
                        .map(|c| c.as_ref().is_some_and(|c| !c.closed.is_cancelled()))
                        .unwrap_or(true)
                });
            }
            peers.entry(addr).or_default().clone()
        };
        // Concurrent callers of one server share one connection; waiting for it and
        // connecting are both bounded by the deadline.
        let mut current = tokio::time::timeout_at(deadline, slot.lock())
            .await
            .map_err(|_| RpcError::Timeout)?;
        if let Some(c) = current.as_ref()
            && !c.closed.is_cancelled()
        {
            return Ok(c.clone());
        }
        let conn = Connection::open(
            addr,
            deadline,
            self.tls.as_ref(),
            self.keys.as_ref(),
            &self.tasks,
            &self.shutdown,
        )
        .await?;
        *current = Some(conn.clone());
        Ok(conn)
    }

    /// Sends `request` to the server at `addr` and waits for its answer, read as `Resp`,
    /// until `deadline`. `Req` must serialise to JSON (every request type of this crate
    /// does); an answer that does not read as `Resp` closes the connection.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        request: &Req,
        deadline: Instant,
    ) -> Result<Resp, RpcError> {
        let conn = self.connection(addr, deadline).await?;
        conn.call(request, deadline).await
    }
}

/// What serves requests arriving on the server port: the types it reads and answers,
/// and the answers themselves.
pub(crate) trait Handler: Send + Sync + 'static {
    /// What a request frame's body holds; a frame whose body does not read as this
    /// closes its connection.
    type Request: DeserializeOwned + Send + 'static;
    /// What an answer frame's body holds.
    type Response: Serialize + Send + 'static;

    /// Answers one request from `caller`.
    fn handle(
        &self,
        request: Self::Request,
        caller: Caller,
    ) -> impl Future<Output = Self::Response> + Send;

    /// The answer sent instead of one that was served but cannot be sent, saying `why`
    /// (it is over the frame limit, say).
    fn unsendable(why: String) -> Self::Response;
}

/// Binds the server port.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding server RPC to {addr}: {e}")))
}

/// How the server port admits and authenticates connections.
pub(crate) struct Port {
    /// TLS, if configured.
    pub(crate) tls: Option<RpcTls>,
    /// The gossip keyring, for the keyring handshake.
    pub(crate) keys: Option<Keys>,
    /// Connections held at once ([`MAX_RPC_CONNECTIONS`]).
    pub(crate) max_connections: usize,
    /// Connections held at once from one IP address
    /// (`limits.rpc_max_conns_per_client`).
    pub(crate) max_conns_per_client: usize,
}

/// Pause after a failed accept (out of file descriptors, say), so that the loop does not
/// spin while the condition lasts.
const ACCEPT_RETRY: Duration = Duration::from_millis(20);

/// Accepts connections on the server port until `shutdown`, each holding a fair place
/// ([`crate::fair::Seats`]): at most `max_conns_per_client` from one IP address, and
/// when all are taken a newcomer takes the oldest place of the address holding the most,
/// provided that address keeps at least as many as the newcomer. Each connection then
/// proves what it can ([`secure::accept`]); refusals are logged with the peer, once per
/// peer per interval.
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    port: Port,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let log = Arc::new(std::sync::Mutex::new(gossip::PeerLog::default()));
    let seats = crate::fair::Seats::new(port.max_connections, port.max_conns_per_client);
    let budget = FrameBudget::new(
        frame::UNPROVEN_FRAME_BYTES,
        frame::UNPROVEN_FRAME_BYTES_PER_PEER,
    );
    let port = Arc::new(port);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "server RPC accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        let seat = match seats.admit(peer.ip(), CancellationToken::new()) {
            Ok(seated) => seated.seat,
            Err(why) => {
                refused(&log, peer, "server RPC connection", &why);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let done = shutdown.child_token();
        let (handler, port, budget, tasks2, log) = (
            handler.clone(),
            port.clone(),
            budget.clone(),
            tasks.clone(),
            log.clone(),
        );
        tasks.spawn(async move {
            let keys = port.keys.as_ref().and_then(|k| k());
            let accepted = tokio::select! {
                _ = done.cancelled() => return,
                _ = seat.evicted() => return,
                a = secure::accept(stream, peer, port.tls.as_ref(), keys, &budget) => a,
            };
            match accepted {
                Ok(Some(accepted)) => {
                    serve_connection(accepted, handler, tasks2, done, seat).await;
                }
                Ok(None) => {}
                Err(refusal) => {
                    let what = format!("server RPC connection: {}", refusal.what);
                    refused(&log, peer, &what, &refusal.error);
                }
            }
        });
    }
}

/// Logs a refused connection or request, once per peer per interval.
fn refused(
    log: &std::sync::Mutex<gossip::PeerLog>,
    peer: SocketAddr,
    what: &str,
    error: &dyn std::fmt::Display,
) {
    let suppressed = log
        .lock()
        .expect("peer log lock")
        .should_log(peer.ip(), Instant::now());
    if let Some(suppressed) = suppressed {
        tracing::warn!(peer = %peer, error = %error, suppressed, "refused a {what}");
    }
}

async fn serve_connection<H: Handler>(
    accepted: secure::Accepted,
    handler: Arc<H>,
    tasks: TaskTracker,
    done: CancellationToken,
    seat: crate::fair::Seat,
) {
    let secure::Accepted {
        mut reader,
        writer,
        caller,
    } = accepted;
    let peer = caller.addr;
    let (writes, queue) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    tasks.spawn(run_writer(writer, queue, done.clone()));
    let in_flight = Arc::new(Semaphore::new(MAX_CONCURRENT_PER_CONNECTION));
    loop {
        // Idle only counts while nothing is in flight: a blocking query may keep its
        // caller silent for minutes.
        let idle = in_flight.available_permits() == MAX_CONCURRENT_PER_CONNECTION;
        let next = reader.read();
        let frame = tokio::select! {
            _ = done.cancelled() => break,
            _ = seat.evicted() => {
                tracing::debug!(peer = %peer, "closing a server RPC connection: its place went to another address");
                break;
            }
            _ = tokio::time::sleep(IDLE_TIMEOUT), if idle => break,
            f = next => match f {
                Ok(f) => f,
                Err(e) => {
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::InvalidData | std::io::ErrorKind::TimedOut
                    ) {
                        tracing::warn!(peer = %peer, error = %e, "closing a server RPC connection");
                    }
                    break;
                }
            },
        };
        let envelope: Envelope<H::Request> = match decode_request(frame.payload).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "closing a server RPC connection after an unreadable request");
                break;
            }
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (handler, writes, done) = (handler.clone(), writes.clone(), done.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let body = tokio::select! {
                _ = done.cancelled() => return,
                r = handler.handle(envelope.body, caller) => r,
            };
            let mut frame = serde_json::to_vec(&Envelope {
                id: envelope.id,
                body,
            })
            .expect("responses serialise");
            if frame.len() > MAX_RPC_FRAME {
                // The caller would close the connection on a frame this size: tell it
                // instead.
                let body = H::unsendable(format!(
                    "the answer of {} bytes is over the frame limit",
                    frame.len()
                ));
                frame = serde_json::to_vec(&Envelope {
                    id: envelope.id,
                    body,
                })
                .expect("responses serialise");
            }
            let _ = writes.send(frame).await;
        });
    }
    done.cancel();
}

/// Requests of this many bytes or more are decoded on a blocking thread.
const DECODE_APART_FROM: usize = 256 * 1024;

/// Decodes a request, a large one ([`DECODE_APART_FROM`]) on a blocking thread: a
/// restore's snapshot (megabytes of JSON, unpacked as it is decoded) would otherwise hold
/// a runtime thread, and the Raft heartbeats and answers waiting for it, for as long as
/// that takes. The connection waits for it either way, so requests keep their order.
async fn decode_request<T: DeserializeOwned + Send + 'static>(
    payload: Vec<u8>,
) -> Result<Envelope<T>, String> {
    if payload.len() < DECODE_APART_FROM {
        return serde_json::from_slice(&payload).map_err(|e| e.to_string());
    }
    tokio::task::spawn_blocking(move || serde_json::from_slice(&payload))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossip::keyring::{Key, Keyring};
    use gossip::transport::Encryption;

    /// Answers every request (a text) with `dc1 proven` or `dc1 unproven`, saying what
    /// the caller proved.
    struct Answers;

    impl Handler for Answers {
        type Request = String;
        type Response = String;

        async fn handle(&self, _request: String, caller: Caller) -> String {
            let proof = if caller.proven { "proven" } else { "unproven" };
            format!("dc1 {proof}")
        }

        fn unsendable(why: String) -> String {
            why
        }
    }

    /// The request every test sends.
    const STATUS: &str = "Status";

    fn answered(r: Result<String, RpcError>) -> bool {
        matches!(r, Ok(t) if t.starts_with("dc1 "))
    }

    fn port(max_connections: usize, max_conns_per_client: usize) -> Port {
        Port {
            tls: None,
            keys: None,
            max_connections,
            max_conns_per_client,
        }
    }

    /// The server port serving [`Answers`] until the token is cancelled.
    async fn start(port: Port) -> (SocketAddr, TaskTracker, CancellationToken) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let server = listener.local_addr().unwrap();
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        tasks.spawn(serve(
            listener,
            Arc::new(Answers),
            port,
            tasks.clone(),
            shutdown.clone(),
        ));
        (server, tasks, shutdown)
    }

    async fn stop(tasks: TaskTracker, shutdown: CancellationToken) {
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
    }

    /// A plaintext connection to `server` from the address `source`.
    async fn connect_from(
        source: std::net::IpAddr,
        server: SocketAddr,
    ) -> std::io::Result<(FrameReader, FrameWriter)> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let (reader, writer) = tokio::io::split(socket.connect(server).await?);
        Ok((
            FrameReader::new(Box::new(reader), None, None),
            FrameWriter::new(Box::new(writer), None),
        ))
    }

    /// One request on `connection`; an error when the server closed it.
    async fn ask(connection: &mut (FrameReader, FrameWriter)) -> std::io::Result<bool> {
        let request = serde_json::to_vec(&Envelope {
            id: 1,
            body: STATUS,
        })
        .expect("requests serialise");
        connection.1.write(&request).await?;
        let frame = tokio::time::timeout(Duration::from_secs(10), connection.0.read())
            .await
            .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
        let answer: Envelope<String> =
            serde_json::from_slice(&frame.payload).map_err(std::io::Error::other)?;
        if answer.id == 0 {
            return Err(std::io::Error::other(format!("refused: {}", answer.body)));
        }
        Ok(answered(Ok(answer.body)))
    }

    fn ip(last: u8) -> std::net::IpAddr {
        std::net::IpAddr::from([127, 0, 0, last])
    }

    #[tokio::test]
    async fn one_address_gets_at_most_its_connections_and_others_are_still_served() {
        let (server, tasks, shutdown) = start(port(MAX_RPC_CONNECTIONS, 2)).await;
        let (here, there) = (ip(1), ip(2));
        let mut first = connect_from(here, server).await.unwrap();
        let mut second = connect_from(here, server).await.unwrap();
        assert!(ask(&mut first).await.unwrap());
        assert!(ask(&mut second).await.unwrap());
        // A third connection from the same address is closed without an answer.
        let mut third = connect_from(here, server).await.unwrap();
        assert!(ask(&mut third).await.is_err());
        // The two it holds are still served, and so is another address.
        assert!(ask(&mut first).await.unwrap());
        assert!(
            ask(&mut connect_from(there, server).await.unwrap())
                .await
                .unwrap()
        );
        // This module's client, on the connection it opens, gets no place either.
        let client = Client::new(None, None, tasks.clone(), shutdown.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        let refused = client.call::<_, String>(server, &STATUS, deadline).await;
        assert_eq!(refused.unwrap_err(), RpcError::Closed(server));
        // Once a connection of 127.0.0.1 closes, its place is free again.
        drop(first);
        let mut again = false;
        while !again && Instant::now() < deadline {
            again = answered(client.call(server, &STATUS, deadline).await);
            if !again {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert!(again, "a freed place was not given to the next connection");
        drop(second);
        stop(tasks, shutdown).await;
    }

    #[tokio::test]
    async fn a_few_addresses_holding_every_place_cannot_shut_out_another() {
        let (server, tasks, shutdown) = start(port(8, 4)).await;
        // Two addresses take every place, each within its share.
        let mut flood = Vec::new();
        for source in [ip(2), ip(3)] {
            for _ in 0..4 {
                let mut c = connect_from(source, server).await.unwrap();
                assert!(ask(&mut c).await.unwrap());
                flood.push(c);
            }
        }
        // A newcomer is served: it took the oldest place of one of them.
        let mut newcomer = connect_from(ip(4), server).await.unwrap();
        assert!(ask(&mut newcomer).await.unwrap());
        let mut closed = 0;
        for c in &mut flood {
            if ask(c).await.is_err() {
                closed += 1;
            }
        }
        assert_eq!(closed, 1, "exactly one place was taken from the flood");
        drop(flood);
        stop(tasks, shutdown).await;
    }

    fn keys(fill: u8, verify_incoming: bool) -> Keys {
        let encryption = Encryption {
            keyring: Keyring::new(Key::from_bytes(vec![fill; 32]).unwrap()),
            file: None,
            verify_incoming,
            verify_outgoing: true,
        };
        Arc::new(move || Some(encryption.clone()))
    }

    #[tokio::test]
    async fn with_a_gossip_key_callers_prove_it_and_plaintext_is_refused() {
        let (server, tasks, shutdown) = start(Port {
            keys: Some(keys(1, true)),
            ..port(MAX_RPC_CONNECTIONS, 100)
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let member = Client::new(None, Some(keys(1, true)), tasks.clone(), shutdown.clone());
        let answer: Result<String, _> = member.call(server, &STATUS, deadline).await;
        assert!(matches!(&answer, Ok(t) if t == "dc1 proven"), "{answer:?}");
        let stranger = Client::new(None, Some(keys(2, true)), tasks.clone(), shutdown.clone());
        let refused = stranger.call::<_, String>(server, &STATUS, deadline).await;
        assert!(
            matches!(&refused, Err(RpcError::Connect { error, .. }) if error.contains("gossip key")),
            "{refused:?}"
        );
        let mut plain = connect_from(ip(1), server).await.unwrap();
        assert!(ask(&mut plain).await.is_err(), "plaintext is refused");
        // A plaintext caller hears why, and what to set.
        let keyless = Client::new(None, None, tasks.clone(), shutdown.clone());
        let refused = keyless.call::<_, String>(server, &STATUS, deadline).await;
        assert_eq!(
            refused,
            Err(RpcError::Refused {
                addr: server,
                why: Refused::KeyRequired
            })
        );
        let text = refused.unwrap_err().to_string();
        assert!(
            text.contains("give this agent the datacenter's key (encrypt)"),
            "{text}"
        );
        stop(tasks, shutdown).await;
    }

    #[tokio::test]
    async fn an_answer_of_another_type_fails_the_call_and_closes_the_connection() {
        let (server, tasks, shutdown) = start(port(MAX_RPC_CONNECTIONS, 100)).await;
        let client = Client::new(None, None, tasks.clone(), shutdown.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        let wrong = client.call::<_, u64>(server, &STATUS, deadline).await;
        assert_eq!(wrong.unwrap_err(), RpcError::Closed(server));
        // The next call opens a new connection and reads its answer.
        assert!(answered(client.call(server, &STATUS, deadline).await));
        stop(tasks, shutdown).await;
    }
}
