//! A userspace UDP relay that delays every datagram: the WAN link of the benches that
//! put datacenters a known round trip apart (QUIC runs over UDP, so relaying datagrams
//! is enough). tc netem would need privileges the benches do not assume.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Most senders one delay proxy relays for; datagrams from further senders are dropped.
const MAX_SESSIONS: usize = 64;
/// Datagrams held in one direction of a delay proxy waiting for their due time; beyond
/// that the link is full and further datagrams are dropped, as a router's queue would.
const QUEUE_DATAGRAMS: usize = 4096;
/// Largest UDP payload.
pub const MAX_DATAGRAM: usize = 65_535;

/// A userspace UDP relay in front of `target` that holds every datagram for `delay` in
/// each direction. NAT-style: each sender gets a relay socket of its own towards the
/// target, so answers go back to the right sender.
///
/// Datagrams are read by tokio tasks and stamped with their due time; each direction
/// then has one bounded queue drained by a thread of the blocking pool that sleeps until
/// each datagram is due and sends it. A thread rather than a tokio task because tokio's
/// timer rounds every deadline up to a whole millisecond and wakes up to another one
/// late, about 1.2 ms per hop measured here: a tenth of a 20 ms hop, and more than what
/// this bench is after. The delay is constant, so arrival order is due order.
pub struct DelayProxy {
    /// Where senders send to reach the target.
    pub addr: SocketAddr,
    /// What the proxy relayed and dropped, and how late.
    pub stats: Arc<LinkStats>,
}

/// Counters of one proxy, both directions together.
#[derive(Default)]
pub struct LinkStats {
    relayed: AtomicU64,
    dropped: AtomicU64,
    /// Sum and maximum of how long datagrams were held past their due time (timer
    /// precision and scheduling), in microseconds.
    late_us_total: AtomicU64,
    late_us_max: AtomicU64,
}

impl LinkStats {
    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Relayed, dropped, mean and max lateness in ms.
    pub fn summary(&self) -> (u64, u64, f64, f64) {
        let relayed = self.relayed.load(Ordering::Relaxed);
        let dropped = self.dropped.load(Ordering::Relaxed);
        let total = self.late_us_total.load(Ordering::Relaxed) as f64;
        let mean = if relayed == 0 {
            0.0
        } else {
            total / relayed as f64 / 1e3
        };
        let max = self.late_us_max.load(Ordering::Relaxed) as f64 / 1e3;
        (relayed, dropped, mean, max)
    }
}

/// A datagram waiting for its due time, and where it goes then.
struct Held {
    due: std::time::Instant,
    bytes: Vec<u8>,
    from: Arc<UdpSocket>,
    to: SocketAddr,
}

/// One direction of the link: a bounded queue towards its delivery thread.
#[derive(Clone)]
struct Wire {
    queue: std::sync::mpsc::SyncSender<Held>,
    delay: Duration,
    stats: Arc<LinkStats>,
}

impl Wire {
    fn open(
        tasks: &TaskTracker,
        stats: Arc<LinkStats>,
        delay: Duration,
        stop: CancellationToken,
    ) -> Wire {
        let (queue, held) = std::sync::mpsc::sync_channel(QUEUE_DATAGRAMS);
        let thread_stats = stats.clone();
        tasks.spawn_blocking(move || deliver(held, thread_stats, stop));
        Wire {
            queue,
            delay,
            stats,
        }
    }

    /// Queues a datagram just read, to be sent from `from` to `to` after the delay; a
    /// full queue drops it.
    fn hold(&self, bytes: &[u8], from: &Arc<UdpSocket>, to: SocketAddr) {
        let held = Held {
            due: std::time::Instant::now() + self.delay,
            bytes: bytes.to_vec(),
            from: from.clone(),
            to,
        };
        if self.queue.try_send(held).is_err() {
            self.stats.drop_one();
        }
    }
}

impl DelayProxy {
    /// Starts a proxy in front of `target` on an OS-chosen port of 127.0.0.1; it stops
    /// with `stop`, its tasks tracked by `tasks`.
    pub async fn start(
        target: SocketAddr,
        delay: Duration,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> std::io::Result<DelayProxy> {
        DelayProxy::start_at(SocketAddr::new(LOOPBACK, 0), target, delay, tasks, stop).await
    }

    /// [`DelayProxy::start`] with the front socket bound to `front`: for a program that
    /// cannot be told to advertise another port than the one it binds, the proxy can
    /// take the same port on another loopback address, which the program advertises.
    pub async fn start_at(
        front: SocketAddr,
        target: SocketAddr,
        delay: Duration,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> std::io::Result<DelayProxy> {
        let front = Arc::new(UdpSocket::bind(front).await?);
        let addr = front.local_addr()?;
        let stats = Arc::<LinkStats>::default();
        let out = Wire::open(tasks, stats.clone(), delay, stop.clone());
        let back = Wire::open(tasks, stats.clone(), delay, stop.clone());
        tasks.spawn(accept(front, target, out, back, tasks.clone(), stop));
        Ok(DelayProxy { addr, stats })
    }
}

/// Reads datagrams arriving at the front socket and holds each for the target, sent
/// from its sender's relay socket.
async fn accept(
    front: Arc<UdpSocket>,
    target: SocketAddr,
    out: Wire,
    back: Wire,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let mut sessions: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            r = front.recv_from(&mut buf) => r,
        };
        let Ok((n, client)) = received else {
            continue;
        };
        if !sessions.contains_key(&client) {
            if sessions.len() >= MAX_SESSIONS {
                out.stats.drop_one();
                continue;
            }
            let Ok(relay) = UdpSocket::bind(SocketAddr::new(LOOPBACK, 0)).await else {
                out.stats.drop_one();
                continue;
            };
            let relay = Arc::new(relay);
            tasks.spawn(collect_answers(
                relay.clone(),
                target,
                front.clone(),
                client,
                back.clone(),
                stop.clone(),
            ));
            sessions.insert(client, relay);
        }
        if let Some(relay) = sessions.get(&client) {
            out.hold(&buf[..n], relay, target);
        }
    }
}

/// Holds what the target sends to one sender's relay socket, for the way back out of
/// the front socket.
async fn collect_answers(
    relay: Arc<UdpSocket>,
    target: SocketAddr,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    back: Wire,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            r = relay.recv_from(&mut buf) => r,
        };
        match received {
            Ok((n, from)) if from == target => back.hold(&buf[..n], &front, client),
            _ => {}
        }
    }
}

/// How often an idle delivery thread looks at the stop token.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// The delivery thread of one direction: sends each held datagram once it is due.
fn deliver(held: std::sync::mpsc::Receiver<Held>, stats: Arc<LinkStats>, stop: CancellationToken) {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let next = match held.recv_timeout(IDLE_CHECK) {
            Ok(next) => next,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // At most the delay.
        let wait = next
            .due
            .saturating_duration_since(std::time::Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let late = std::time::Instant::now().saturating_duration_since(next.due);
        let late_us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        stats.late_us_total.fetch_add(late_us, Ordering::Relaxed);
        stats.late_us_max.fetch_max(late_us, Ordering::Relaxed);
        // Non-blocking: a socket whose send buffer is full loses the datagram, as a
        // real link would.
        match next.from.try_send_to(&next.bytes, next.to) {
            Ok(_) => stats.relayed.fetch_add(1, Ordering::Relaxed),
            Err(_) => stats.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}
