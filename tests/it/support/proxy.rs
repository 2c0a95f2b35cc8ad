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
//! so the agent's answers find their way back to the right sender.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use rand::RngExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

/// Most UDP senders relayed at once; beyond that new senders are dropped.
const MAX_UDP_SESSIONS: usize = 1024;

#[derive(Default)]
struct Faults {
    blocked: Mutex<HashSet<IpAddr>>,
    /// Datagrams lost, per thousand.
    loss: AtomicU32,
}

impl Faults {
    fn blocks(&self, ip: IpAddr) -> bool {
        self.blocked.lock().unwrap().contains(&ip)
    }

    /// Whether a datagram from or to `peer` is lost.
    fn drops(&self, peer: IpAddr) -> bool {
        if self.blocks(peer) {
            return true;
        }
        let loss = self.loss.load(Ordering::Relaxed);
        loss > 0 && rand::rng().random_range(0..1000) < loss
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
        let faults = Arc::new(Faults::default());
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

    /// Loses this fraction of datagrams, each way.
    pub fn set_loss(&self, fraction: f64) {
        let per_mille = (fraction.clamp(0.0, 1.0) * 1000.0) as u32;
        self.faults.loss.store(per_mille, Ordering::Relaxed);
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
        if faults.drops(from.ip()) {
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
        let _ = session.send_to(&buf[..n], target).await;
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
        if faults.drops(client.ip()) {
            continue;
        }
        let _ = front.send_to(&buf[..n], client).await;
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
