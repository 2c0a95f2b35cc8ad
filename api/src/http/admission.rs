//! Fair shares of a bounded pool: who gets a place when HTTP connections (or held
//! blocking queries) run out.
//!
//! ## Why not first come, first served
//!
//! A pool bounded as a whole and filled in arrival order lets a few addresses hold all
//! of it: six addresses, each within Consul's 200 connections per client, hold 1,024
//! places, and every other client then waits in the kernel's backlog until one of theirs
//! closes — for as long as they care to keep them open. Consul avoids this by having no
//! pool-wide bound at all, only `http_max_conns_per_client`; that leaves memory unbounded
//! against many addresses (or one IPv6 prefix), so proconsul keeps both bounds and makes
//! the pool-wide one fair instead.
//!
//! ## The rule
//!
//! A [`Pool`] has `capacity` places and gives one address at most `per_client` of them.
//! While places are free, any address under its own bound gets one. When the pool is
//! full, a newcomer holding `n` places takes one from the address holding the most, `h`,
//! provided `h` still holds at least as many as the newcomer afterwards
//! (`held(h) >= n + 2`); otherwise it is refused. So:
//!
//! - an address is refused only when no other holds more than one place more than it
//!   does: the pool is then shared out about evenly (`capacity / addresses` each);
//! - an address holding nothing is refused only when every place is held by a
//!   different address, so a handful of addresses can never lock out another;
//! - an eviction never leaves the evicted address with fewer places than the
//!   newcomer, so two addresses cannot take places back and forth;
//! - the place taken is the evicted address's oldest idle one (a kept-alive connection
//!   waiting for its next request) when it has one, else its oldest.
//!
//! The pool is sans-IO: each place carries a handle (the driver's cancellation token),
//! and an admission that evicts returns the victim's handle for the driver to act on —
//! close the connection, or answer the blocking query at once. Its tables hold entries
//! only for places held, so they never grow past `capacity`.

use std::collections::HashMap;
use std::net::IpAddr;

/// Names one place of a [`Pool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PlaceId(u64);

/// Why a client got no place. Either way the client is told what Consul tells a client
/// over its connection limit (429) and may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The client already holds its `per_client` places.
    ClientFull,
    /// Every place is taken and no address holds more than one more than this client.
    PoolFull,
}

/// A place given to a client.
#[derive(Debug)]
pub(crate) struct Admitted<T> {
    /// The client's new place; give it back with [`Pool::release`].
    pub(crate) id: PlaceId,
    /// The address and handle of the place taken to make room, when the pool was full.
    /// The caller must end what that place held: it no longer counts.
    pub(crate) evicted: Option<(IpAddr, T)>,
}

/// One place held.
#[derive(Debug)]
struct Place<T> {
    id: PlaceId,
    /// In the middle of a request (not to be evicted while an idle place exists).
    busy: bool,
    handle: T,
}

/// Places handed out to client addresses, bounded in all and per address.
#[derive(Debug)]
pub(crate) struct Pool<T> {
    capacity: usize,
    per_client: usize,
    held: usize,
    next_id: u64,
    /// Each address's places, oldest first. No entry for an address holding nothing.
    clients: HashMap<IpAddr, Vec<Place<T>>>,
    /// The address holding each place.
    owners: HashMap<PlaceId, IpAddr>,
}

impl<T> Pool<T> {
    /// A pool of `capacity` places (at least one), at most `per_client` per address.
    pub(crate) fn new(capacity: usize, per_client: usize) -> Pool<T> {
        Pool {
            capacity: capacity.max(1),
            per_client,
            held: 0,
            next_id: 0,
            clients: HashMap::new(),
            owners: HashMap::new(),
        }
    }

    /// A place for `client`; when the pool is full, one taken from the address holding
    /// the most, by the rule in the module doc.
    pub(crate) fn admit(&mut self, client: IpAddr, handle: T) -> Result<Admitted<T>, Refusal> {
        let n = self.held_by(&client);
        if n >= self.per_client {
            return Err(Refusal::ClientFull);
        }
        let evicted = if self.held < self.capacity {
            None
        } else {
            let (heaviest, most) = self
                .clients
                .iter()
                .map(|(ip, places)| (*ip, places.len()))
                .max_by_key(|(_, len)| *len)
                .expect("a full pool has a holder");
            if most < n + 2 {
                return Err(Refusal::PoolFull);
            }
            Some(self.evict_from(heaviest))
        };
        let id = PlaceId(self.next_id);
        self.next_id += 1;
        self.clients.entry(client).or_default().push(Place {
            id,
            busy: false,
            handle,
        });
        self.owners.insert(id, client);
        self.held += 1;
        Ok(Admitted { id, evicted })
    }

    /// Takes `client`'s oldest idle place, or its oldest.
    fn evict_from(&mut self, client: IpAddr) -> (IpAddr, T) {
        let places = self
            .clients
            .get_mut(&client)
            .expect("the heaviest client holds places");
        let at = places.iter().position(|p| !p.busy).unwrap_or(0);
        let place = places.remove(at);
        if places.is_empty() {
            self.clients.remove(&client);
        }
        self.owners.remove(&place.id);
        self.held -= 1;
        (client, place.handle)
    }

    /// Gives a place back; nothing happens if it was evicted already.
    pub(crate) fn release(&mut self, id: PlaceId) {
        let Some(client) = self.owners.remove(&id) else {
            return;
        };
        if let Some(places) = self.clients.get_mut(&client) {
            places.retain(|p| p.id != id);
            if places.is_empty() {
                self.clients.remove(&client);
            }
        }
        self.held -= 1;
    }

    /// Marks a place as serving a request (`busy`) or waiting for one.
    pub(crate) fn set_busy(&mut self, id: PlaceId, busy: bool) {
        let Some(client) = self.owners.get(&id) else {
            return;
        };
        if let Some(place) = self
            .clients
            .get_mut(client)
            .and_then(|places| places.iter_mut().find(|p| p.id == id))
        {
            place.busy = busy;
        }
    }

    /// Places held by `client`.
    pub(crate) fn held_by(&self, client: &IpAddr) -> usize {
        self.clients.get(client).map_or(0, Vec::len)
    }

    /// Places held in all.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held
    }

    /// Addresses holding a place.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    /// Fills `pool` with `count` places for `client`, handles numbered from `first`.
    fn fill(pool: &mut Pool<u32>, client: IpAddr, count: usize, first: u32) -> Vec<PlaceId> {
        (0..count)
            .map(|i| {
                let admitted = pool.admit(client, first + i as u32).unwrap();
                assert!(admitted.evicted.is_none(), "room left");
                admitted.id
            })
            .collect()
    }

    #[test]
    fn a_client_gets_its_share_and_no_more() {
        let mut pool = Pool::new(10, 3);
        fill(&mut pool, ip(1), 3, 0);
        assert_eq!(pool.admit(ip(1), 9).unwrap_err(), Refusal::ClientFull);
        assert!(
            pool.admit(ip(2), 9).is_ok(),
            "another client is not held back"
        );
        assert_eq!(pool.held(), 4);
    }

    #[test]
    fn a_few_clients_filling_the_pool_cannot_lock_out_a_new_one() {
        // Six addresses within their per-client bound fill the whole pool...
        let mut pool = Pool::new(12, 200);
        for c in 1..=6 {
            fill(&mut pool, ip(c), 2, u32::from(c) * 100);
        }
        // ...and a newcomer still gets in, at the cost of one of theirs.
        let admitted = pool.admit(ip(9), 0).unwrap();
        let (victim, _) = admitted.evicted.expect("a place was taken");
        assert_ne!(victim, ip(9));
        assert_eq!(pool.held_by(&victim), 1);
        assert_eq!(pool.held(), 12, "the bound holds");
    }

    #[test]
    fn when_the_pool_is_shared_evenly_a_client_asking_for_more_is_refused() {
        let mut pool = Pool::new(6, 200);
        for c in 1..=3 {
            fill(&mut pool, ip(c), 2, 0);
        }
        // Taking one from an address holding as many as the asker would leave that
        // address with fewer: refused instead.
        assert_eq!(pool.admit(ip(1), 9).unwrap_err(), Refusal::PoolFull);
        assert_eq!(pool.held_by(&ip(1)), 2);
    }

    #[test]
    fn the_heaviest_address_gives_up_places_until_shares_are_even() {
        let mut pool = Pool::new(8, 200);
        fill(&mut pool, ip(1), 8, 0);
        let mut admitted = 0;
        while pool.admit(ip(2), 0).is_ok() {
            admitted += 1;
            assert!(admitted <= 8, "bounded loop");
        }
        assert_eq!(pool.held_by(&ip(1)), 4);
        assert_eq!(pool.held_by(&ip(2)), 4);
    }

    #[test]
    fn an_idle_place_is_evicted_before_a_busy_one_and_the_oldest_first() {
        let mut pool = Pool::new(3, 200);
        let ids = fill(&mut pool, ip(1), 3, 0);
        pool.set_busy(ids[0], true);
        let first = pool.admit(ip(2), 10).unwrap().evicted.unwrap();
        assert_eq!(first, (ip(1), 1), "the oldest idle place");
        pool.set_busy(ids[2], true);
        // ip(1) holds 2 (both busy), ip(2) holds 1: a third address takes the oldest.
        let second = pool.admit(ip(3), 11).unwrap().evicted.unwrap();
        assert_eq!(second, (ip(1), 0));
    }

    #[test]
    fn releasing_an_evicted_place_changes_nothing() {
        let mut pool = Pool::new(2, 200);
        let ids = fill(&mut pool, ip(1), 2, 0);
        let admitted = pool.admit(ip(2), 5).unwrap();
        assert!(admitted.evicted.is_some());
        pool.release(ids[0]);
        pool.release(ids[0]);
        assert_eq!(pool.held(), 2);
        assert_eq!(pool.held_by(&ip(1)), 1);
        pool.release(ids[1]);
        pool.release(admitted.id);
        assert_eq!(pool.held(), 0);
        assert_eq!(pool.clients(), 0, "no entry for an address holding nothing");
    }

    #[test]
    fn a_place_freed_is_given_without_eviction() {
        let mut pool = Pool::new(2, 200);
        let ids = fill(&mut pool, ip(1), 2, 0);
        pool.release(ids[1]);
        let admitted = pool.admit(ip(1), 7).unwrap();
        assert!(admitted.evicted.is_none());
    }

    #[test]
    fn many_clients_coming_and_going_keep_every_bound() {
        let mut pool = Pool::new(16, 5);
        let mut held: Vec<(PlaceId, IpAddr)> = Vec::new();
        let mut seed: u32 = 7;
        for step in 0..5000u32 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let client = ip((seed >> 16) as u8 % 9);
            if seed.is_multiple_of(3) && !held.is_empty() {
                let (id, _) = held.swap_remove((seed as usize >> 4) % held.len());
                pool.release(id);
            } else if let Ok(admitted) = pool.admit(client, step) {
                held.push((admitted.id, client));
                if let Some((victim, _)) = admitted.evicted {
                    assert!(pool.held_by(&victim) >= pool.held_by(&client));
                }
            }
            assert!(pool.held() <= 16);
            for c in 0..9 {
                assert!(pool.held_by(&ip(c)) <= 5);
            }
        }
    }
}
