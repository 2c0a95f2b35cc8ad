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
//!
//! [`Budget`] does the same for bytes: a memory budget shared by every reader, of which one
//! peer may hold a share; each [`Grant`] grows as its reader buffers more and gives
//! everything back when dropped.

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

/// A byte budget with a share per peer. Readers hold a [`Grant`] each and grow it before
/// they buffer more; a growth that would take the peer past its share, or everyone past
/// the whole, is refused and the grant keeps what it had ([`Grant::grow_to`]), or waits
/// until other grants are given back ([`Grant::wait_to_grow`]).
#[derive(Debug)]
pub struct Budget<K: Hash + Eq + Copy> {
    max: usize,
    per_peer: usize,
    state: Mutex<Usage<K>>,
    /// Woken whenever a grant gives bytes back, for [`Grant::wait_to_grow`].
    freed: Notify,
}

#[derive(Debug)]
struct Usage<K> {
    used: usize,
    peak: usize,
    /// Bytes held per peer; only peers holding some have an entry, so there are never
    /// more entries than grants.
    peers: HashMap<K, usize>,
}

/// Which bound a refused [`Grant::grow_to`] met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exhausted {
    /// The peer holds its share; it may go on once one of its own readers is done.
    #[error("for this address")]
    Peer,
    /// Everyone together holds the whole budget.
    #[error("over all peers")]
    All,
}

/// Bytes of a [`Budget`] held by one reader; given back when dropped.
#[derive(Debug)]
pub struct Grant<K: Hash + Eq + Copy> {
    budget: Arc<Budget<K>>,
    peer: K,
    bytes: usize,
}

impl<K: Hash + Eq + Copy> Budget<K> {
    /// A budget of `max` bytes, of which one peer may hold `per_peer`.
    pub fn new(max: usize, per_peer: usize) -> Arc<Self> {
        Arc::new(Budget {
            max,
            per_peer,
            state: Mutex::new(Usage {
                used: 0,
                peak: 0,
                peers: HashMap::new(),
            }),
            freed: Notify::new(),
        })
    }

    /// An empty grant for a reader serving `peer`.
    pub fn grant(self: &Arc<Self>, peer: K) -> Grant<K> {
        Grant {
            budget: self.clone(),
            peer,
            bytes: 0,
        }
    }

    /// Bytes held now, by everyone.
    pub fn used(&self) -> usize {
        self.state.lock().expect("budget lock").used
    }

    /// The most bytes ever held at once.
    pub fn peak(&self) -> usize {
        self.state.lock().expect("budget lock").peak
    }

    /// Bytes `peer` holds now.
    pub fn held(&self, peer: &K) -> usize {
        let state = self.state.lock().expect("budget lock");
        state.peers.get(peer).copied().unwrap_or(0)
    }

    /// Peers holding anything.
    pub fn peers(&self) -> usize {
        self.state.lock().expect("budget lock").peers.len()
    }
}

impl<K: Hash + Eq + Copy> Grant<K> {
    /// Bytes this grant holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `bytes` in all (never less than now). Refused when that would take the peer
    /// past its share or everyone past the budget; the grant is then unchanged.
    pub fn grow_to(&mut self, bytes: usize) -> Result<(), Exhausted> {
        let more = bytes.saturating_sub(self.bytes);
        if more == 0 {
            return Ok(());
        }
        let budget = &self.budget;
        let mut state = budget.state.lock().expect("budget lock");
        let mine = state.peers.get(&self.peer).copied().unwrap_or(0);
        if mine.saturating_add(more) > budget.per_peer {
            return Err(Exhausted::Peer);
        }
        if state.used.saturating_add(more) > budget.max {
            return Err(Exhausted::All);
        }
        state.used += more;
        state.peak = state.peak.max(state.used);
        *state.peers.entry(self.peer).or_insert(0) += more;
        self.bytes = bytes;
        Ok(())
    }
}

impl<K: Hash + Eq + Copy> Grant<K> {
    /// Holds `bytes` in all, waiting while that would take the peer past its share or
    /// everyone past the budget. The caller bounds the wait (a deadline); `bytes` must
    /// not be more than a peer's share, which no wait can make room for.
    pub async fn wait_to_grow(&mut self, bytes: usize) {
        let budget = self.budget.clone();
        loop {
            let freed = budget.freed.notified();
            tokio::pin!(freed);
            // Registered before trying, so bytes given back in between are not missed.
            freed.as_mut().enable();
            if self.grow_to(bytes).is_ok() {
                return;
            }
            freed.await;
        }
    }
}

impl<K: Hash + Eq + Copy> Drop for Grant<K> {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut state = self.budget.state.lock().expect("budget lock");
        state.used = state.used.saturating_sub(self.bytes);
        if let Some(held) = state.peers.get_mut(&self.peer) {
            *held = held.saturating_sub(self.bytes);
            if *held == 0 {
                state.peers.remove(&self.peer);
            }
        }
        drop(state);
        self.budget.freed.notify_waiters();
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
    fn a_budget_grants_a_peer_its_share_and_everyone_the_whole_and_no_more() {
        let budget = Budget::<IpAddr>::new(100, 60);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let mut a1 = budget.grant(a);
        let mut a2 = budget.grant(a);
        a1.grow_to(40).unwrap();
        assert_eq!(a2.grow_to(30), Err(Exhausted::Peer));
        assert_eq!(a2.bytes(), 0, "a refused growth keeps what the grant had");
        a2.grow_to(20).unwrap();
        let mut b1 = budget.grant(b);
        b1.grow_to(40).unwrap();
        let mut c1 = budget.grant(c);
        assert_eq!(c1.grow_to(1), Err(Exhausted::All));
        assert_eq!(
            (budget.used(), budget.peak(), budget.held(&a)),
            (100, 100, 60)
        );
        a1.grow_to(10).unwrap();
        assert_eq!(a1.bytes(), 40, "a grant never shrinks while held");
        drop(a1);
        c1.grow_to(40).unwrap();
        assert_eq!(budget.held(&a), 20);
        drop((a2, b1, c1));
        assert_eq!((budget.used(), budget.peers(), budget.peak()), (0, 0, 100));
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
