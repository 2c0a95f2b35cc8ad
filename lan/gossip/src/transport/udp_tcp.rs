//! The LAN pool's link: UDP packets and TCP streams on the serf LAN port (8301).
//!
//! [`Pool::start`] binds UDP and TCP on one port and starts the pool driver over a
//! [`TcpLink`], then runs two tasks beside it until shutdown: one reads datagrams and hands
//! them to the pool's [`Inbound`], the other accepts TCP connections and serves each one's
//! stream exchange through the same [`Inbound`]. Outgoing packets leave from the bound UDP
//! socket; each outgoing exchange opens its own TCP connection, from the bind address.
//!
//! Incoming streams are bounded before anything is read from them: at most
//! [`MAX_INBOUND_STREAMS`] are served at once (more wait in the kernel's backlog), of which
//! [`MAX_INBOUND_STREAMS_PER_PEER`] from one IP address; that address's further streams
//! wait for one of its own to end, at most [`MAX_WAITING_STREAMS`] of them in all, and
//! each stream is served within [`STREAM_TIMEOUT`]. What a stream's frames may hold is
//! bounded by the pool itself (see [`Inbound::serve`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::quota::{PerIp, Share};

use super::exchange::JoinError;
use super::link::{Exchange, Inbound, Link, Reply, STREAM_TIMEOUT};
use super::pool::{Pool, PoolConfig};

/// Streams served at once (incoming push-pulls and keyring requests); more wait in the
/// kernel's backlog.
pub const MAX_INBOUND_STREAMS: usize = 64;
/// Of [`MAX_INBOUND_STREAMS`], what one IP address may be served at once; its further
/// streams wait for one of its own to end (a star join of many agents on one host), up
/// to [`STREAM_TIMEOUT`], without holding a serving slot.
pub const MAX_INBOUND_STREAMS_PER_PEER: usize = 16;
/// Streams waiting for their address's share at once; more are closed unanswered (and
/// logged).
pub const MAX_WAITING_STREAMS: usize = 256;
/// Receive buffer for one datagram.
const MAX_DATAGRAM: usize = 65_536;

/// Binds UDP and TCP on the same port (with port 0, one the OS picks that is free for
/// both).
async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    const ATTEMPTS: usize = 20;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(addr).await?;
        let local = udp.local_addr()?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < ATTEMPTS => {}
            Err(e) => return Err(e),
        }
    }
}

impl Pool {
    /// Binds the LAN gossip port (UDP and TCP on `config.bind`) and starts the pool with
    /// this member alone. Tasks run on `tasks` until `shutdown`.
    pub async fn start(
        config: PoolConfig,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> std::io::Result<Pool> {
        let (udp, tcp) = bind(config.bind).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("binding LAN gossip to {}: {e}", config.bind),
            )
        })?;
        let bound = udp.local_addr()?;
        tracing::info!(proto = "serf-lan-udp", addr = %bound, "listening");
        tracing::info!(proto = "serf-lan-tcp", addr = %bound, "listening");
        let udp = Arc::new(udp);
        let link = Arc::new(TcpLink {
            udp: udp.clone(),
            bound,
            source: (!config.bind.ip().is_unspecified()).then(|| config.bind.ip()),
        });
        let (pool, inbound) = Pool::start_with(config, link, "LAN", tasks, shutdown.clone());
        tasks.spawn(receive_packets(udp, inbound.clone(), shutdown.clone()));
        tasks.spawn(serve_streams(tcp, inbound, tasks.clone(), shutdown));
        Ok(pool)
    }
}

/// Connects to `to` from `source` (any address when `None`).
async fn connect(source: Option<IpAddr>, to: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(ip) = source.filter(|ip| ip.is_ipv4() == to.is_ipv4()) else {
        return TcpStream::connect(to).await;
    };
    let socket = if ip.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(to).await
}

/// The LAN link: UDP packets, and one TCP connection per exchange.
struct TcpLink {
    udp: Arc<UdpSocket>,
    bound: SocketAddr,
    /// The address outgoing streams leave from: the bind address when one is set, so
    /// that peers (and firewalls) see the same address as for packets.
    source: Option<IpAddr>,
}

impl Link for TcpLink {
    fn local_addr(&self) -> SocketAddr {
        self.bound
    }

    fn send_packet(&self, to: SocketAddr, bytes: Vec<u8>) {
        // A full socket buffer loses the packet, which SWIM tolerates.
        if let Err(e) = self.udp.try_send_to(&bytes, to) {
            tracing::trace!(peer = %to, error = %e, "gossip send failed");
        }
    }

    fn exchange(&self, to: SocketAddr, frame: Vec<u8>) -> Exchange<'_> {
        Box::pin(async move {
            let io = |e: std::io::Error| JoinError::Io(e.to_string());
            let mut stream = connect(self.source, to).await.map_err(io)?;
            let _ = stream.set_nodelay(true);
            stream.write_all(&frame).await.map_err(io)?;
            Ok(Box::new(stream) as Reply)
        })
    }
}

/// Reads UDP packets into the pool until `shutdown`.
async fn receive_packets(udp: Arc<UdpSocket>, inbound: Inbound, shutdown: CancellationToken) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            received = udp.recv_from(&mut buf) => match received {
                Ok((n, from)) => inbound.packet(from, buf[..n].to_vec()),
                Err(e) => tracing::debug!(error = %e, "gossip receive failed"),
            },
        }
    }
}

/// Accepts gossip streams until `shutdown`, serving at most [`MAX_INBOUND_STREAMS`] at
/// once, and [`MAX_INBOUND_STREAMS_PER_PEER`] from one IP address (its further streams
/// wait, at most [`MAX_WAITING_STREAMS`] of them in all).
async fn serve_streams(
    listener: TcpListener,
    inbound: Inbound,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_INBOUND_STREAMS));
    let waiting = Arc::new(Semaphore::new(MAX_WAITING_STREAMS));
    let per_peer = PerIp::new();
    while let Some((slot, stream, peer)) =
        crate::accept::next(&listener, &slots, &shutdown, "gossip").await
    {
        let deadline = Instant::now() + STREAM_TIMEOUT;
        match per_peer.take(peer.ip(), MAX_INBOUND_STREAMS_PER_PEER) {
            Some(share) => {
                let (inbound, shutdown) = (inbound.clone(), shutdown.clone());
                tasks.spawn(async move {
                    let held = (slot, share);
                    serve_until(stream, peer, &inbound, held, deadline, &shutdown).await;
                });
            }
            None => {
                // The serving slot goes to another address while this one waits.
                drop(slot);
                let Ok(wait) = waiting.clone().try_acquire_owned() else {
                    inbound.shared.refused(
                        peer,
                        "gossip stream",
                        &"too many streams from this address at once",
                    );
                    // Dropping the stream closes it; the peer's exchange fails.
                    continue;
                };
                let (slots, per_peer) = (slots.clone(), per_peer.clone());
                let (inbound, shutdown) = (inbound.clone(), shutdown.clone());
                tasks.spawn(async move {
                    let turn = async {
                        let share = per_peer.wait(peer.ip(), MAX_INBOUND_STREAMS_PER_PEER).await;
                        let slot = slots.acquire_owned().await.ok()?;
                        Some((slot, share))
                    };
                    let held = tokio::select! {
                        _ = shutdown.cancelled() => None,
                        held = tokio::time::timeout_at(deadline, turn) => held.ok().flatten(),
                    };
                    drop(wait);
                    if let Some(held) = held {
                        serve_until(stream, peer, &inbound, held, deadline, &shutdown).await;
                    }
                });
            }
        }
    }
}

/// Serves one stream until `deadline` or `shutdown`, holding its slot and share.
async fn serve_until(
    stream: TcpStream,
    peer: SocketAddr,
    inbound: &Inbound,
    _held: (tokio::sync::OwnedSemaphorePermit, Share<std::net::IpAddr>),
    deadline: Instant,
    shutdown: &CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        r = tokio::time::timeout_at(deadline, serve_stream(stream, peer, inbound)) => {
            if let Ok(Err(e)) = r {
                tracing::debug!(peer = %peer, error = %e, "gossip stream failed");
            }
        }
    }
}

async fn serve_stream(
    mut stream: TcpStream,
    peer: SocketAddr,
    inbound: &Inbound,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (mut recv, mut send) = stream.split();
    inbound.serve(peer, &mut recv, &mut send).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::member::MemberStatus;
    use crate::transport::support::{config, eventually, sees, soon};

    #[tokio::test]
    async fn one_address_gets_its_share_of_stream_slots_and_its_other_streams_wait() {
        let tasks = TaskTracker::new();
        let token = CancellationToken::new();
        let _stop = token.clone().drop_guard();
        let pool = Pool::start(config("target", None), &tasks, token.clone())
            .await
            .unwrap();
        let seed = pool.addr().to_string();
        // Connections that never send their frame hold their address's share, each for
        // up to STREAM_TIMEOUT.
        let mut held = Vec::new();
        for _ in 0..MAX_INBOUND_STREAMS_PER_PEER {
            held.push(TcpStream::connect(pool.addr()).await.unwrap());
        }
        // A member on the same address waits for a share instead of being refused.
        let late = Pool::start(config("late", None), &tasks, token.clone())
            .await
            .unwrap();
        let join = tokio::spawn({
            let (late, seed) = (late.clone(), seed.clone());
            async move {
                late.join_one(&seed, Instant::now() + Duration::from_secs(20))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!join.is_finished(), "the join was not held back: {join:?}");
        // The waiting room is bounded: with it full, the next stream is closed at once.
        let mut waiting = Vec::new();
        for _ in 0..MAX_WAITING_STREAMS - 1 {
            waiting.push(TcpStream::connect(pool.addr()).await.unwrap());
        }
        let mut over = TcpStream::connect(pool.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf))
            .await
            .expect("a stream beyond the waiting room is closed at once");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        // A member at another address is served meanwhile.
        let mut other = config("other", None);
        other.bind = "127.0.0.2:0".parse().unwrap();
        other.advertise = "127.0.0.2".parse().unwrap();
        let other = Pool::start(other, &tasks, token.clone()).await.unwrap();
        other
            .join_one(&seed, soon())
            .await
            .expect("a member at another address is served");
        // Once the held streams close, the waiting join goes through.
        drop((held, waiting));
        join.await
            .unwrap()
            .expect("the waiting join is served once its address has a share again");
        eventually("both joins", || {
            sees(&pool, "other", MemberStatus::Alive) && sees(&pool, "late", MemberStatus::Alive)
        })
        .await;
    }
}
