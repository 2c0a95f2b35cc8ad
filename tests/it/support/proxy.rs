//! A fault proxy in front of one agent's port: UDP and TCP on one address, relayed to
//! the agent, with faults set while it runs.
//!
//! The agent advertises the proxy's port, so every packet and stream sent to it passes
//! here. Senders are told apart by source IP (each test agent binds its own loopback
//! address, outgoing sockets included), which is how a partition is expressed: the proxy
//! of an agent on one side drops everything from the addresses of the other side, in
//! both directions. Random loss applies to datagrams.
//!
//! UDP works like a NAT: each sender gets a relay socket of its own towards the agent,
//! so the agent's answers find their way back to the right sender. Datagrams (so QUIC
//! too) can also be lost, delayed, duplicated and reordered, each way on its own
//! ([`Link`]); TCP streams are only ever cut by a partition.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Most UDP senders relayed at once; beyond that new senders are dropped.
const MAX_UDP_SESSIONS: usize = 1024;

/// Most datagrams held back (delayed or reordered) at once; more are sent on time.
const MAX_HELD: usize = 4096;

/// What happens to datagrams going one way.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Link {
    /// Fraction lost.
    pub loss: f64,
    /// Every datagram is held this long.
    pub delay: Duration,
    /// Fraction sent twice.
    pub duplicate: f64,
    /// Fraction held 1–10 ms longer than the others, so that later ones overtake them.
    pub reorder: f64,
}

/// Which way a [`Link`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// From senders to the agent.
    ToAgent,
    /// From the agent back to senders.
    FromAgent,
    /// Both.
    Both,
}

struct Faults {
    blocked: Mutex<HashSet<IpAddr>>,
    to_agent: Mutex<Link>,
    from_agent: Mutex<Link>,
    held: Arc<Semaphore>,
}

impl Faults {
    fn new() -> Faults {
        Faults {
            blocked: Mutex::default(),
            to_agent: Mutex::default(),
            from_agent: Mutex::default(),
            held: Arc::new(Semaphore::new(MAX_HELD)),
        }
    }

    fn blocks(&self, ip: IpAddr) -> bool {
        self.blocked.lock().unwrap().contains(&ip)
    }

    /// When to send a datagram from or to `peer` going `way` (one time per copy; none
    /// when it is lost).
    fn plan(&self, peer: IpAddr, way: Way) -> Vec<Duration> {
        if self.blocks(peer) {
            return Vec::new();
        }
        let link = match way {
            Way::FromAgent => *self.from_agent.lock().unwrap(),
            _ => *self.to_agent.lock().unwrap(),
        };
        let mut rng = rand::rng();
        if link.loss > 0.0 && rng.random_bool(link.loss.clamp(0.0, 1.0)) {
            return Vec::new();
        }
        let mut at = link.delay;
        if link.reorder > 0.0 && rng.random_bool(link.reorder.clamp(0.0, 1.0)) {
            at += Duration::from_millis(rng.random_range(1..=10));
        }
        let mut times = vec![at];
        if link.duplicate > 0.0 && rng.random_bool(link.duplicate.clamp(0.0, 1.0)) {
            times.push(at);
        }
        times
    }
}

/// Sends `bytes` to `to` through `socket` at each planned time.
async fn send_planned(
    socket: &Arc<UdpSocket>,
    faults: &Arc<Faults>,
    bytes: &[u8],
    to: SocketAddr,
    times: Vec<Duration>,
) {
    for at in times {
        if at.is_zero() {
            let _ = socket.send_to(bytes, to).await;
            continue;
        }
        // Held back on a task of its own; with too many held already, sent on time.
        let Ok(permit) = faults.held.clone().try_acquire_owned() else {
            let _ = socket.send_to(bytes, to).await;
            continue;
        };
        let (socket, bytes) = (socket.clone(), bytes.to_vec());
        tokio::spawn(async move {
            let _permit = permit;
            tokio::time::sleep(at).await;
            let _ = socket.send_to(&bytes, to).await;
        });
    }
}

/// A running proxy. Dropping it stops every relay.
pub struct Proxy {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
    stop: CancellationToken,
}

impl Proxy {
    /// Listens on `ip` (a port the OS picks, free for UDP and TCP) and relays to `target`.
    pub async fn start(ip: IpAddr, target: SocketAddr) -> Proxy {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).await.unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let faults = Arc::new(Faults::new());
        let stop = CancellationToken::new();
        tokio::spawn(relay_udp(
            Arc::new(udp),
            target,
            faults.clone(),
            stop.clone(),
        ));
        tokio::spawn(relay_tcp(tcp, target, faults.clone(), stop.clone()));
        Proxy { addr, faults, stop }
    }

    /// Drops all traffic from (and back to) these addresses.
    pub fn block(&self, ips: impl IntoIterator<Item = IpAddr>) {
        self.faults.blocked.lock().unwrap().extend(ips);
    }

    /// Lets everything through again.
    pub fn heal(&self) {
        self.faults.blocked.lock().unwrap().clear();
    }

    /// Loses this fraction of datagrams, each way (and no other fault).
    pub fn set_loss(&self, fraction: f64) {
        self.set_link(
            Way::Both,
            Link {
                loss: fraction,
                ..Link::default()
            },
        );
    }

    /// Applies `link` to datagrams going `way`.
    pub fn set_link(&self, way: Way, link: Link) {
        if way != Way::FromAgent {
            *self.faults.to_agent.lock().unwrap() = link;
        }
        if way != Way::ToAgent {
            *self.faults.from_agent.lock().unwrap() = link;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn relay_udp(
    front: Arc<UdpSocket>,
    target: SocketAddr,
    faults: Arc<Faults>,
    stop: CancellationToken,
) {
    let mut sessions: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::select! {
            _ = stop.cancelled() => return,
            r = front.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(_) => continue,
            },
        };
        let times = faults.plan(from.ip(), Way::ToAgent);
        if times.is_empty() {
            continue;
        }
        let session = match sessions.get(&from) {
            Some(s) => s.clone(),
            None => {
                if sessions.len() >= MAX_UDP_SESSIONS {
                    continue;
                }
                let local = SocketAddr::new(front.local_addr().unwrap().ip(), 0);
                let Ok(socket) = UdpSocket::bind(local).await else {
                    continue;
                };
                let socket = Arc::new(socket);
                sessions.insert(from, socket.clone());
                tokio::spawn(relay_back(
                    socket.clone(),
                    front.clone(),
                    from,
                    faults.clone(),
                    stop.clone(),
                ));
                socket
            }
        };
        send_planned(&session, &faults, &buf[..n], target, times).await;
    }
}

/// Carries the agent's answers to one sender back out through the front socket.
async fn relay_back(
    session: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    faults: Arc<Faults>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            r = session.recv(&mut buf) => match r {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        let times = faults.plan(client.ip(), Way::FromAgent);
        send_planned(&front, &faults, &buf[..n], client, times).await;
    }
}

async fn relay_tcp(
    listener: TcpListener,
    target: SocketAddr,
    faults: Arc<Faults>,
    stop: CancellationToken,
) {
    loop {
        let (mut inbound, from) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(_) => continue,
            },
        };
        if faults.blocks(from.ip()) {
            // A partition: the connection goes nowhere (closed at once).
            continue;
        }
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
}
