//! Server RPC on the server port (8300/tcp): requests forwarded from client agents and
//! from other servers (catalog reads and writes), and Raft's own traffic.
//!
//! ```text
//!   caller ──call(addr, Request, deadline)──▶ Client ── one TCP connection per peer ──▶ serve
//!          ◀──────────── Response ───────────        (requests multiplexed by id)     │
//!                                                                       Handler::handle
//! ```
//!
//! A connection carries many requests at once: each frame is `[length: u32][JSON]` of an
//! [`Envelope`] whose `id` pairs a response with its request, so a blocking query that
//! waits minutes does not hold up a heartbeat behind it. Every call has a deadline; the
//! remaining time travels with forwarded requests so the far side stops when the caller
//! has given up. Peer input is length-checked before it is read and a frame that does
//! not decode closes its connection; it never reaches a panic.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::SentReadOptions;
use crate::catalog::{Command, Query};
use crate::raft::{NodeId, RaftStatus, ReadError, TypeConfig, WriteError};
use crate::{KeyOperation, KeyringReport, QueryResult, RaftPeer};

/// The reading half of a connection, TLS or not.
type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
/// The writing half of a connection, TLS or not.
type Writer = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// Time a peer has to send the rest of a frame once its length has arrived.
pub(crate) const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// An inbound connection with no request in flight and none arriving for this long is
/// closed (callers reconnect on their next call).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Budget of a TLS handshake on the server port.
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS handshake record; a plaintext connection starts with a frame
/// length, whose first byte is 0 for any frame under 16 MiB.
const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// TLS on the server port (Consul's `verify_incoming`, `verify_outgoing` and
/// `verify_server_hostname` for internal RPC).
#[derive(Clone)]
pub struct RpcTls {
    /// What a server presents to callers; `None` on a client agent or without a
    /// certificate (the port then speaks plaintext only).
    pub server: Option<Arc<rustls::ServerConfig>>,
    /// Refuse callers that do not speak TLS (the server config then also asks them for a
    /// certificate from the CA).
    pub verify_incoming: bool,
    /// What this agent uses to call servers (`verify_outgoing`); `None` calls in
    /// plaintext.
    pub client: Option<Arc<rustls::ClientConfig>>,
    /// The name servers' certificates must carry (`server.<dc>.<domain>`).
    pub server_name: String,
}

impl std::fmt::Debug for RpcTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcTls")
            .field("server", &self.server.is_some())
            .field("verify_incoming", &self.verify_incoming)
            .field("client", &self.client.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Splits any stream into boxed halves.
fn halves<S>(stream: S) -> (Reader, Writer)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (r, w) = tokio::io::split(stream);
    (Box::new(r), Box::new(w))
}

/// Largest frame accepted, in bytes. openraft sends snapshots in chunks well below it.
pub(crate) const MAX_RPC_FRAME: usize = 64 * 1024 * 1024;
/// Inbound connections served at once; more wait in the kernel's backlog.
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

/// A request to a server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// A catalog read.
    Read {
        /// The query.
        query: Query,
        /// How to read it.
        #[serde(flatten)]
        options: SentReadOptions,
        /// Already forwarded once: answer here or fail, never forward again.
        forwarded: bool,
    },
    /// A catalog write.
    Write {
        /// The change.
        command: Command,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
        /// Already forwarded once.
        forwarded: bool,
    },
    /// A catalog read in another datacenter, made by the receiving server over the WAN.
    ReadIn {
        /// The datacenter.
        dc: String,
        /// The query.
        query: Query,
        /// How to read it.
        #[serde(flatten)]
        options: SentReadOptions,
    },
    /// A catalog write in another datacenter, sent on by the receiving server.
    WriteIn {
        /// The datacenter.
        dc: String,
        /// The change.
        command: Box<Command>,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
    },
    /// A keyring operation for the whole LAN pool, run by the receiving server.
    Keyring {
        /// The operation.
        op: KeyOperation,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
    },
    /// A keyring operation for every pool the receiving server reaches.
    KeyringAll {
        /// The operation.
        op: KeyOperation,
        /// Only the local LAN pool (`-local-only`).
        local_only: bool,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
    },
    /// This datacenter's Raft state (leader, peers).
    Status,
    /// The datacenters of the federation, nearest first, as the receiving server sees
    /// them.
    Datacenters,
    /// Another datacenter's Raft state, asked by the receiving server over the WAN.
    StatusIn {
        /// The datacenter.
        dc: String,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
    },
    /// Raft: replicate entries or heartbeat.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft: ask for a vote.
    Vote(VoteRequest<NodeId>),
    /// Raft: a snapshot chunk.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Remove a server from the Raft configuration (`operator raft remove-peer`).
    RemovePeer {
        /// The server.
        peer: RaftPeer,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
        /// Already forwarded once.
        forwarded: bool,
    },
}

/// The answer to a [`Request`], variant for variant.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    /// For [`Request::Read`].
    Read(Result<QueryResult, ReadError>),
    /// For [`Request::Write`].
    Write(Result<u64, WriteError>),
    /// For [`Request::Keyring`].
    Keyring(KeyringReport),
    /// For [`Request::KeyringAll`].
    KeyringAll(Vec<crate::PoolKeyring>),
    /// For [`Request::Status`].
    Status(RaftStatus),
    /// For [`Request::Datacenters`].
    Datacenters(Vec<String>),
    /// For [`Request::StatusIn`].
    StatusIn(Result<RaftStatus, ReadError>),
    /// For [`Request::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// For [`Request::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// For [`Request::InstallSnapshot`].
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// The receiver cannot serve this kind of request (a client agent, say).
    Unsupported(String),
    /// The request was served but its answer cannot be sent (too large).
    Error(String),
    /// For [`Request::RemovePeer`]: the leader's refusal inside, or why no leader did it.
    RemovePeer(Result<Result<(), String>, WriteError>),
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    id: u64,
    body: T,
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
}

/// Milliseconds left until `deadline` (0 once it passed), as requests carry it.
pub fn remaining_ms(deadline: Instant) -> u64 {
    u64::try_from(
        deadline
            .saturating_duration_since(Instant::now())
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// The deadline a request's `timeout_ms` gives, counted from its arrival (at most a
/// day away, whatever the peer sent).
pub fn deadline_in(timeout_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(timeout_ms.min(24 * 3600 * 1000))
}

async fn write_frame(writer: &mut Writer, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(payload).await
}

async fn read_frame(reader: &mut Reader) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_RPC_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {MAX_RPC_FRAME}"),
        ));
    }
    // The body must follow promptly, and memory grows only as bytes arrive: a peer
    // that announces a large frame and stalls pins neither a slot nor 64 MiB.
    let mut payload = Vec::with_capacity(len.min(64 * 1024));
    let mut body = (&mut *reader).take(len as u64);
    tokio::time::timeout(FRAME_TIMEOUT, body.read_to_end(&mut payload))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "frame body not sent in time")
        })??;
    if payload.len() != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(payload)
}

/// Writes queued frames until the queue closes or a write fails.
async fn run_writer(
    mut writer: Writer,
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
        if write_frame(&mut writer, &frame).await.is_err() {
            break;
        }
    }
    done.cancel();
    let _ = writer.shutdown().await;
}

/// One outbound connection.
struct Connection {
    addr: SocketAddr,
    /// Request frames by ID, in the order they are to be written.
    writes: mpsc::Sender<(u64, Vec<u8>)>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    next_id: AtomicU64,
    closed: CancellationToken,
}

impl Connection {
    async fn open(
        addr: SocketAddr,
        deadline: Instant,
        tls: Option<&RpcTls>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Arc<Connection>, RpcError> {
        let connect_error = |error: String| RpcError::Connect { addr, error };
        // A server that does not answer at all is unreachable (try another), not slow.
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_error("connection timed out".into()))?
            .map_err(|e| connect_error(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (reader, writer) = match tls.and_then(|t| t.client.clone().map(|c| (c, t))) {
            Some((config, tls)) => {
                let name = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
                    .map_err(|e| connect_error(format!("bad server name: {e}")))?;
                let connector = tokio_rustls::TlsConnector::from(config);
                let stream = tokio::time::timeout_at(deadline, connector.connect(name, stream))
                    .await
                    .map_err(|_| connect_error("TLS handshake timed out".into()))?
                    .map_err(|e| connect_error(format!("TLS handshake: {e}")))?;
                halves(stream)
            }
            None => halves(stream),
        };
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let closed = shutdown.child_token();
        let conn = Arc::new(Connection {
            addr,
            writes,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: closed.clone(),
        });
        tasks.spawn(Connection::write_requests(conn.clone(), writer, queue));
        tasks.spawn(Connection::read_answers(conn.clone(), reader));
        Ok(conn)
    }

    /// Writes queued requests, skipping those whose caller gave up (its deadline
    /// passed) so that a backlog of stale frames never delays a fresh one.
    async fn write_requests(
        conn: Arc<Connection>,
        mut writer: Writer,
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
            if write_frame(&mut writer, &frame).await.is_err() {
                break;
            }
        }
        conn.closed.cancel();
        let _ = writer.shutdown().await;
    }

    async fn read_answers(conn: Arc<Connection>, mut reader: Reader) {
        loop {
            let frame = tokio::select! {
                _ = conn.closed.cancelled() => break,
                f = read_frame(&mut reader) => match f {
                    Ok(f) => f,
                    Err(_) => break,
                },
            };
            let envelope: Envelope<Response> = match serde_json::from_slice(&frame) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(peer = %conn.addr, error = %e, "closing a server RPC connection after an unreadable answer");
                    break;
                }
            };
            let waiter = conn
                .pending
                .lock()
                .expect("pending lock")
                .remove(&envelope.id);
            if let Some(waiter) = waiter {
                let _ = waiter.send(envelope.body);
            }
        }
        conn.closed.cancel();
        // Dropping the senders fails every call still waiting on this connection.
        conn.pending.lock().expect("pending lock").clear();
    }

    async fn call(&self, request: &Request, deadline: Instant) -> Result<Response, RpcError> {
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
            return Err(RpcError::Closed(self.addr));
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
        result.map_err(|_| RpcError::Timeout)?
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
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Client {
        Client {
            peers: Arc::default(),
            tls,
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
            &self.tasks,
            &self.shutdown,
        )
        .await?;
        *current = Some(conn.clone());
        Ok(conn)
    }

    /// Sends `request` to the server at `addr` and waits for its answer until `deadline`.
    pub(crate) async fn call(
        &self,
        addr: SocketAddr,
        request: &Request,
        deadline: Instant,
    ) -> Result<Response, RpcError> {
        let conn = self.connection(addr, deadline).await?;
        conn.call(request, deadline).await
    }
}

/// What serves requests arriving on the server port.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answers one request from `peer`.
    fn handle(&self, request: Request, peer: SocketAddr) -> impl Future<Output = Response> + Send;
}

/// Binds the server port.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding server RPC to {addr}: {e}")))
}

/// Accepts connections on the server port until `shutdown`: at most
/// `max_conns_per_client` open at once from one IP address (more are closed at once and
/// logged with the peer, once per peer per interval).
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    tls: Option<RpcTls>,
    max_conns_per_client: usize,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let log = Arc::new(std::sync::Mutex::new(crate::peer_log::PeerLog::default()));
    let slots = Arc::new(Semaphore::new(MAX_RPC_CONNECTIONS));
    let per_client = crate::quota::PerIp::new();
    while let Some((permit, stream, peer)) =
        crate::accept::next(&listener, &slots, &shutdown, "server RPC").await
    {
        let Some(share) = per_client.take(peer.ip(), max_conns_per_client) else {
            let suppressed = log
                .lock()
                .expect("peer log lock")
                .should_log(peer.ip(), Instant::now());
            if let Some(suppressed) = suppressed {
                tracing::warn!(
                    peer = %peer,
                    limit = max_conns_per_client,
                    suppressed,
                    "refused a server RPC connection: this address has limits.rpc_max_conns_per_client open"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let done = shutdown.child_token();
        let (handler, tls, tasks2, log) =
            (handler.clone(), tls.clone(), tasks.clone(), log.clone());
        tasks.spawn(async move {
            let Some((reader, writer)) = accept(stream, peer, tls.as_ref(), &log).await else {
                return;
            };
            serve_connection(reader, writer, peer, handler, tasks2, done, (permit, share)).await;
        });
    }
}

/// Decides how a new connection speaks: TLS when it starts with a handshake (and a
/// server certificate is configured), plaintext otherwise unless `verify_incoming`
/// refuses it. Refusals are logged with the peer, once per peer per interval.
async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<&RpcTls>,
    log: &std::sync::Mutex<crate::peer_log::PeerLog>,
) -> Option<(Reader, Writer)> {
    let refuse = |what: &str, error: &dyn std::fmt::Display| {
        let now = Instant::now();
        if let Some(suppressed) = log
            .lock()
            .expect("peer log lock")
            .should_log(peer.ip(), now)
        {
            tracing::warn!(peer = %peer, error = %error, suppressed, "refused a server RPC connection: {what}");
        }
    };
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) {
        return None;
    }
    let server = tls.and_then(|t| t.server.clone());
    match (first[0] == TLS_HANDSHAKE_BYTE, server) {
        (true, Some(config)) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => Some(halves(stream)),
                Ok(Err(e)) => {
                    refuse("TLS handshake failed", &e);
                    None
                }
                Err(_) => {
                    refuse("TLS handshake failed", &"timed out");
                    None
                }
            }
        }
        (true, None) => {
            refuse(
                "TLS is not configured on this server",
                &"a TLS handshake arrived",
            );
            None
        }
        (false, _) if tls.is_some_and(|t| t.verify_incoming) => {
            refuse("plaintext", &"verify_incoming requires TLS");
            None
        }
        (false, _) => Some(halves(stream)),
    }
}

async fn serve_connection<H: Handler>(
    mut reader: Reader,
    writer: Writer,
    peer: SocketAddr,
    handler: Arc<H>,
    tasks: TaskTracker,
    done: CancellationToken,
    _held: (
        tokio::sync::OwnedSemaphorePermit,
        crate::quota::Share<std::net::IpAddr>,
    ),
) {
    let (writes, queue) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    tasks.spawn(run_writer(writer, queue, done.clone()));
    let in_flight = Arc::new(Semaphore::new(MAX_CONCURRENT_PER_CONNECTION));
    loop {
        // Idle only counts while nothing is in flight: a blocking query may keep its
        // caller silent for minutes.
        let idle = in_flight.available_permits() == MAX_CONCURRENT_PER_CONNECTION;
        let next = read_frame(&mut reader);
        let frame = tokio::select! {
            _ = done.cancelled() => break,
            _ = tokio::time::sleep(IDLE_TIMEOUT), if idle => break,
            f = next => match f {
                Ok(f) => f,
                Err(e) => {
                    if matches!(e.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::TimedOut) {
                        tracing::warn!(peer = %peer, error = %e, "closing a server RPC connection");
                    }
                    break;
                }
            },
        };
        let envelope: Envelope<Request> = match serde_json::from_slice(&frame) {
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
                r = handler.handle(envelope.body, peer) => r,
            };
            let mut frame = serde_json::to_vec(&Envelope {
                id: envelope.id,
                body,
            })
            .expect("responses serialise");
            if frame.len() > MAX_RPC_FRAME {
                // The caller would close the connection on a frame this size: tell it
                // instead.
                let body = Response::Error(format!(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers every request with the datacenter list `["dc1"]`.
    struct Answers;

    impl Handler for Answers {
        async fn handle(&self, _request: Request, _peer: SocketAddr) -> Response {
            Response::Datacenters(vec!["dc1".into()])
        }
    }

    fn answered(r: Result<Response, RpcError>) -> bool {
        matches!(r, Ok(Response::Datacenters(dcs)) if dcs == ["dc1"])
    }

    /// A connection to `server` from the address `source`.
    async fn connect_from(
        source: std::net::IpAddr,
        server: SocketAddr,
    ) -> std::io::Result<(Reader, Writer)> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        Ok(halves(socket.connect(server).await?))
    }

    /// One request on `connection`; an error when the server closed it.
    async fn ask(connection: &mut (Reader, Writer)) -> std::io::Result<bool> {
        let request = serde_json::to_vec(&Envelope {
            id: 1,
            body: Request::Datacenters,
        })
        .expect("requests serialise");
        write_frame(&mut connection.1, &request).await?;
        let frame = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut connection.0))
            .await
            .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
        let answer: Envelope<Response> =
            serde_json::from_slice(&frame).map_err(std::io::Error::other)?;
        Ok(answered(Ok(answer.body)))
    }

    #[tokio::test]
    async fn one_address_gets_at_most_its_connections_and_others_are_still_served() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let server = listener.local_addr().unwrap();
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        tasks.spawn(serve(
            listener,
            Arc::new(Answers),
            None,
            2,
            tasks.clone(),
            shutdown.clone(),
        ));
        let (here, there) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
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
        let client = Client::new(None, tasks.clone(), shutdown.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        let refused = client.call(server, &Request::Datacenters, deadline).await;
        assert_eq!(refused.unwrap_err(), RpcError::Closed(server));
        // Once a connection of 127.0.0.1 closes, its place is free again.
        drop(first);
        let mut again = false;
        while !again && Instant::now() < deadline {
            again = answered(client.call(server, &Request::Datacenters, deadline).await);
            if !again {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert!(again, "a freed place was not given to the next connection");
        drop(second);
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
    }
}
