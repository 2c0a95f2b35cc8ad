//! Places shared fairly between client addresses: who gets a connection (or a held
//! blocking query) when a listener's places run out.
//!
//! ## Why not first come, first served
//!
//! A pool bounded as a whole and filled in arrival order (a semaphore) lets a few
//! addresses hold all of it, each within its per-address bound, and then shuts out
//! everyone else for as long as they care to keep their places: six addresses at
//! Consul's 200 HTTP connections per client fill 1,024 places, and so do 11 addresses at
//! its 100 server-port connections per client. Consul's HTTP server has no pool-wide
//! bound at all, only the per-client one; that leaves memory unbounded against many
//! addresses (or one IPv6 prefix), so proconsul keeps both bounds and makes the
//! pool-wide one fair instead.
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
//!   different address, so a handful of addresses can never lock out another, whatever
//!   the number of addresses behind the flood;
//! - an eviction never leaves the evicted address with fewer places than the
//!   newcomer, so two addresses cannot take places back and forth;
//! - the place taken is the evicted address's oldest idle one (say, a kept-alive
//!   connection waiting for its next request) when it has one, else its oldest. A place
//!   is idle unless its holder marks it busy ([`Pool::set_busy`], [`Seat::set_busy`]).
//!
//! ## Two forms
//!
//! [`Pool`] is sans-IO: each place carries a handle (a driver's cancellation token, say),
//! and an admission that evicts returns the victim's handle for the driver to act on —
//! close the connection, or answer the blocking query at once. Its tables hold entries
//! only for places held, so they never grow past `capacity`.
//!
//! [`Seats`] is the same pool behind a lock, for listeners that serve each connection on
//! a task of its own: each place is a [`Seat`], given back when dropped, whose
//! cancellation token is cancelled when the place is given to another address (its
//! holder sees [`Seat::evicted`] and should close).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Names one place of a [`Pool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlaceId(u64);

/// Why a client got no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The client already holds its `per_client` places (the number given).
    #[error("this address already holds its {0} places")]
    ClientFull(usize),
    /// Every place is taken and no address holds more than one more than this client.
    #[error("every place is taken and this address holds as many as any other")]
    PoolFull,
}

/// A place given to a client by [`Pool::admit`].
#[derive(Debug)]
pub struct Admitted<T> {
    /// The client's new place; give it back with [`Pool::release`].
    pub id: PlaceId,
    /// The address and handle of the place taken to make room, when the pool was full.
    /// The caller must end what that place held: it no longer counts.
    pub evicted: Option<(IpAddr, T)>,
}

/// One place held.
#[derive(Debug)]
struct Place<T> {
    /// In the middle of a request (not to be evicted while an idle place exists).
    busy: bool,
    handle: T,
}

/// The places one address holds. Place IDs grow with each admission, so ordering by ID
/// is ordering by age; both maps keep every operation logarithmic in the places held,
/// since one address may hold thousands (a load balancer, or a host of watchers, all
/// behind one address) and each request marks its place busy and idle again.
#[derive(Debug)]
struct Holder<T> {
    places: BTreeMap<PlaceId, Place<T>>,
    /// The places of `places` not marked busy.
    idle: BTreeSet<PlaceId>,
}

impl<T> Default for Holder<T> {
    fn default() -> Self {
        Holder {
            places: BTreeMap::new(),
            idle: BTreeSet::new(),
        }
    }
}

impl<T> Holder<T> {
    fn len(&self) -> usize {
        self.places.len()
    }

    fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    fn insert(&mut self, id: PlaceId, handle: T) {
        self.places.insert(
            id,
            Place {
                busy: false,
                handle,
            },
        );
        self.idle.insert(id);
    }

    fn remove(&mut self, id: PlaceId) -> Option<T> {
        self.idle.remove(&id);
        self.places.remove(&id).map(|p| p.handle)
    }

    /// The oldest idle place, else the oldest.
    fn victim(&self) -> Option<PlaceId> {
        self.idle
            .first()
            .or_else(|| self.places.keys().next())
            .copied()
    }

    fn set_busy(&mut self, id: PlaceId, busy: bool) {
        if let Some(place) = self.places.get_mut(&id) {
            place.busy = busy;
            if busy {
                self.idle.remove(&id);
            } else {
                self.idle.insert(id);
            }
        }
    }
}

/// Places handed out to client addresses, bounded in all and per address.
#[derive(Debug)]
pub struct Pool<T> {
    capacity: usize,
    per_client: usize,
    held: usize,
    next_id: u64,
    /// Each address's places. No entry for an address holding nothing.
    clients: HashMap<IpAddr, Holder<T>>,
    /// The address holding each place.
    owners: HashMap<PlaceId, IpAddr>,
}

impl<T> Pool<T> {
    /// A pool of `capacity` places (at least one), at most `per_client` per address.
    pub fn new(capacity: usize, per_client: usize) -> Pool<T> {
        Pool {
            capacity: capacity.max(1),
            per_client,
            held: 0,
            next_id: 0,
            clients: HashMap::new(),
            owners: HashMap::new(),
        }
    }

    /// A place for `client`, carrying `handle`; when the pool is full, one taken from
    /// the address holding the most, by the rule in the module doc.
    pub fn admit(&mut self, client: IpAddr, handle: T) -> Result<Admitted<T>, Refusal> {
        let n = self.held_by(&client);
        if n >= self.per_client {
            return Err(Refusal::ClientFull(self.per_client));
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
        self.clients.entry(client).or_default().insert(id, handle);
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
        let id = places.victim().expect("a holder holds a place");
        let handle = places.remove(id).expect("the victim is held");
        if places.is_empty() {
            self.clients.remove(&client);
        }
        self.owners.remove(&id);
        self.held -= 1;
        (client, handle)
    }

    /// Gives a place back; nothing happens if it was evicted already.
    pub fn release(&mut self, id: PlaceId) {
        let Some(client) = self.owners.remove(&id) else {
            return;
        };
        if let Some(places) = self.clients.get_mut(&client) {
            places.remove(id);
            if places.is_empty() {
                self.clients.remove(&client);
            }
        }
        self.held -= 1;
    }

    /// Marks a place as serving a request (`busy`) or waiting for one; nothing happens
    /// if it was evicted already.
    pub fn set_busy(&mut self, id: PlaceId, busy: bool) {
        let Some(client) = self.owners.get(&id) else {
            return;
        };
        if let Some(places) = self.clients.get_mut(client) {
            places.set_busy(id, busy);
        }
    }

    /// Places held by `client`.
    pub fn held_by(&self, client: &IpAddr) -> usize {
        self.clients.get(client).map_or(0, Holder::len)
    }

    /// Places held in all.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Addresses holding a place.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.clients.len()
    }
}

/// A [`Pool`] whose places are [`Seat`]s, each carrying the cancellation token that ends
/// what holds it. Shared behind an [`Arc`].
#[derive(Debug)]
pub struct Seats {
    pool: Mutex<Pool<CancellationToken>>,
}

/// A seat given by [`Seats::admit`].
#[derive(Debug)]
pub struct Seated {
    /// The newcomer's seat.
    pub seat: Seat,
    /// The address whose seat was taken to make room, when every place was taken; that
    /// seat's token is cancelled already.
    pub evicted: Option<IpAddr>,
}

/// One place held by one address; given back when dropped.
#[derive(Debug)]
pub struct Seat {
    seats: Arc<Seats>,
    id: PlaceId,
    evicted: CancellationToken,
}

impl Seats {
    /// A set of `capacity` places (at least one), at most `per_client` per address.
    pub fn new(capacity: usize, per_client: usize) -> Arc<Seats> {
        Arc::new(Seats {
            pool: Mutex::new(Pool::new(capacity, per_client)),
        })
    }

    /// A seat for `peer`, by the rule in the module doc; `evicted` is cancelled when the
    /// seat is later given to another address. When every place is taken, the seat of
    /// another address is taken and its token cancelled.
    pub fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        evicted: CancellationToken,
    ) -> Result<Seated, Refusal> {
        let admitted = self.lock().admit(peer, evicted.clone())?;
        // Cancelled outside the lock: the victim's task may wake and drop its seat at once.
        let victim = admitted.evicted.map(|(victim, token)| {
            token.cancel();
            victim
        });
        Ok(Seated {
            seat: Seat {
                seats: self.clone(),
                id: admitted.id,
                evicted,
            },
            evicted: victim,
        })
    }

    /// Places held now.
    pub fn used(&self) -> usize {
        self.lock().held()
    }

    /// Places `peer` holds now.
    pub fn held_by(&self, peer: &IpAddr) -> usize {
        self.lock().held_by(peer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool<CancellationToken>> {
        self.pool.lock().expect("seats lock")
    }
}

impl Seat {
    /// Resolves when this place was given to another address; what holds it should end.
    pub fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.evicted.cancelled()
    }

    /// Whether this place was given to another address.
    pub fn is_evicted(&self) -> bool {
        self.evicted.is_cancelled()
    }

    /// Marks this place as serving a request (`busy`) or waiting for one: an address's
    /// idle places are given away before its busy ones.
    pub fn set_busy(&self, busy: bool) {
        self.seats.lock().set_busy(self.id, busy);
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        // An evicted seat was already taken out and counted off: release ignores it.
        self.seats.lock().release(self.id);
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
        assert_eq!(pool.admit(ip(1), 9).unwrap_err(), Refusal::ClientFull(3));
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

    /// A seat for `peer` with a token of its own.
    fn seat(seats: &Arc<Seats>, peer: IpAddr) -> Result<Seat, Refusal> {
        seats
            .admit(peer, CancellationToken::new())
            .map(|seated| seated.seat)
    }

    #[test]
    fn a_flood_from_a_few_addresses_never_shuts_out_another() {
        let seats = Seats::new(10, 2);
        // Five addresses within their share of 2 fill every place.
        let flood: Vec<Seat> = (1..=5)
            .flat_map(|a| (0..2).map(move |_| a))
            .map(|a| seat(&seats, ip(a)).unwrap())
            .collect();
        assert_eq!(seats.used(), 10);
        // Five newcomers each take a place from an address holding two.
        let newcomers: Vec<Seated> = (11..=15)
            .map(|a| seats.admit(ip(a), CancellationToken::new()).unwrap())
            .collect();
        assert!(
            newcomers
                .iter()
                .all(|s| matches!(s.evicted, Some(v) if v < ip(6))),
            "each newcomer is told whose place it took"
        );
        assert_eq!(flood.iter().filter(|s| s.is_evicted()).count(), 5);
        assert!((1..=5).all(|a| seats.held_by(&ip(a)) == 1));
        // Now everyone holds one: the next newcomer waits for a place to be freed.
        assert_eq!(seat(&seats, ip(16)).unwrap_err(), Refusal::PoolFull);
        drop((flood, newcomers));
        assert_eq!(seats.used(), 0);

        // One address within a larger share fills every place; a newcomer takes the
        // oldest of its places, and keeps taking them while it holds fewer.
        let seats = Seats::new(10, 100);
        let flood: Vec<Seat> = (0..10).map(|_| seat(&seats, ip(1)).unwrap()).collect();
        let newcomer = seat(&seats, ip(2)).unwrap();
        assert!(
            flood[0].is_evicted(),
            "the oldest place of the greediest address"
        );
        assert!(!flood[1].is_evicted());
        assert_eq!((seats.used(), seats.held_by(&ip(1))), (10, 9));
        let more: Vec<Seat> = (0..3).map(|_| seat(&seats, ip(2)).unwrap()).collect();
        assert_eq!((seats.held_by(&ip(1)), seats.held_by(&ip(2))), (6, 4));
        drop(flood);
        assert_eq!(seats.used(), 4, "evicted seats were counted off once");
        drop((newcomer, more));
        assert_eq!(seats.used(), 0);
    }

    #[test]
    fn a_busy_seat_is_given_away_after_the_idle_ones() {
        let seats = Seats::new(3, 100);
        let held: Vec<Seat> = (0..3).map(|_| seat(&seats, ip(1)).unwrap()).collect();
        held[0].set_busy(true);
        let _newcomer = seat(&seats, ip(2)).unwrap();
        let evicted: Vec<bool> = held.iter().map(Seat::is_evicted).collect();
        assert_eq!(evicted, [false, true, false], "the oldest idle seat");
        // Marking an evicted seat, or dropping it, changes nothing.
        held[1].set_busy(true);
        drop(held);
        assert_eq!(seats.used(), 1);
    }

    #[test]
    fn the_per_address_share_holds_while_places_are_free() {
        let seats = Seats::new(100, 3);
        let held: Vec<Seat> = (0..3).map(|_| seat(&seats, ip(1)).unwrap()).collect();
        assert_eq!(seat(&seats, ip(1)).unwrap_err(), Refusal::ClientFull(3));
        assert!(seat(&seats, ip(2)).is_ok());
        drop(held);
        assert!(seat(&seats, ip(1)).is_ok());
    }

    #[test]
    fn seats_taken_and_dropped_from_many_threads_balance() {
        let seats = Seats::new(8, 6);
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let seats = seats.clone();
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..1000 {
                        if let Ok(taken) = seat(&seats, ip(t)) {
                            mine.push(taken);
                        }
                        if i % 3 == 0 {
                            mine.pop();
                        }
                    }
                });
            }
        });
        assert_eq!(seats.used(), 0);
    }
}
