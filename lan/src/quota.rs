//! Per-peer shares of a shared bound.
//!
//! A queue or a set of connection slots bounded as a whole still lets one noisy peer
//! take all of it. [`PerPeer`] counts what each peer holds: a peer at its share gets
//! nothing more until something it holds is released. Each [`Share`] is released when
//! dropped, wherever it travels (inside a queued packet, beside a served connection).
//!
//! The map holds an entry only for a peer that holds something, so it never has more
//! entries than the shared bound it sits beside has places. [`PerPeer::wait`] waits for a
//! share instead of refusing, for callers that queue (within their own bound).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// What each peer holds, keyed by `K` (an IP address, or an address and port).
#[derive(Debug)]
pub struct PerPeer<K: Hash + Eq + Copy> {
    held: Mutex<HashMap<K, usize>>,
    /// Woken whenever a share is given back, for [`PerPeer::wait`].
    freed: Notify,
}

impl<K: Hash + Eq + Copy> Default for PerPeer<K> {
    fn default() -> Self {
        PerPeer {
            held: Mutex::new(HashMap::new()),
            freed: Notify::new(),
        }
    }
}

/// One place held by one peer; given back when dropped.
#[derive(Debug)]
pub struct Share<K: Hash + Eq + Copy> {
    owner: Arc<PerPeer<K>>,
    peer: K,
}

impl<K: Hash + Eq + Copy> PerPeer<K> {
    /// A new, shared counter.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// One more place for `peer`, or `None` when it already holds `max`.
    pub fn take(self: &Arc<Self>, peer: K, max: usize) -> Option<Share<K>> {
        let mut held = self.held.lock().expect("per-peer lock");
        let count = held.entry(peer).or_insert(0);
        if *count >= max {
            if *count == 0 {
                held.remove(&peer);
            }
            return None;
        }
        *count += 1;
        Some(Share {
            owner: self.clone(),
            peer,
        })
    }

    /// One more place for `peer`, waiting while it holds `max`. The caller bounds the
    /// wait (a deadline) and the number of waiters.
    pub async fn wait(self: &Arc<Self>, peer: K, max: usize) -> Share<K> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a share given back in between is not missed.
            freed.as_mut().enable();
            if let Some(share) = self.take(peer, max) {
                return share;
            }
            freed.await;
        }
    }

    /// How many places `peer` holds.
    pub fn held(&self, peer: &K) -> usize {
        let held = self.held.lock().expect("per-peer lock");
        held.get(peer).copied().unwrap_or(0)
    }

    /// Peers holding anything.
    pub fn peers(&self) -> usize {
        self.held.lock().expect("per-peer lock").len()
    }
}

impl<K: Hash + Eq + Copy> Drop for Share<K> {
    fn drop(&mut self) {
        let mut held = self.owner.held.lock().expect("per-peer lock");
        if let Some(count) = held.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.peer);
            }
        }
        drop(held);
        self.owner.freed.notify_waiters();
    }
}

/// Shares keyed by IP address (connections, whose source ports are ephemeral).
pub type PerIp = PerPeer<IpAddr>;
/// Shares keyed by address and port (gossip packets, whose sender is a member's address).
pub type PerAddr = PerPeer<SocketAddr>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_its_share_and_no_more_while_others_still_get_theirs() {
        let quota = PerIp::new();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut held: Vec<_> = (0..3).map(|_| quota.take(a, 3).unwrap()).collect();
        assert!(quota.take(a, 3).is_none());
        assert_eq!(quota.held(&a), 3);
        let other = quota.take(b, 3).expect("another peer is not held back");
        assert_eq!(quota.peers(), 2);
        drop(held.pop());
        assert_eq!(quota.held(&a), 2);
        assert!(
            quota.take(a, 3).is_some(),
            "a released place can be taken again"
        );
        drop(other);
        assert_eq!(quota.held(&b), 0);
        drop(held);
        assert_eq!(quota.peers(), 0);
    }

    #[test]
    fn the_map_forgets_a_peer_that_holds_nothing() {
        let quota = PerAddr::new();
        let peer: SocketAddr = "127.0.0.1:8301".parse().unwrap();
        assert!(quota.take(peer, 0).is_none());
        assert_eq!(quota.peers(), 0, "a refused peer leaves no entry behind");
        let share = quota.take(peer, 1).unwrap();
        assert_eq!(quota.peers(), 1);
        drop(share);
        assert_eq!(quota.peers(), 0);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_share_given_back() {
        let quota = PerIp::new();
        let peer: IpAddr = "10.0.0.3".parse().unwrap();
        let first = quota.take(peer, 1).unwrap();
        let waiter = tokio::spawn({
            let quota = quota.clone();
            async move { quota.wait(peer, 1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the share is still held");
        drop(first);
        let second = waiter.await.unwrap();
        assert_eq!(quota.held(&peer), 1);
        drop(second);
        assert_eq!(quota.peers(), 0);
    }

    #[test]
    fn shares_taken_and_dropped_from_many_threads_balance() {
        let quota = PerIp::new();
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let quota = quota.clone();
                s.spawn(move || {
                    for _ in 0..1000 {
                        if let Some(share) = quota.take(peer, 2) {
                            drop(share);
                        }
                    }
                });
            }
        });
        assert_eq!(quota.held(&peer), 0);
        assert_eq!(quota.peers(), 0);
    }
}
