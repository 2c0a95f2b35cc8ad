//! Connection places shared fairly between addresses.
//!
//! A listener bounds how many connections it holds at once. A plain bound (a semaphore)
//! can be filled by a few addresses, each within its own per-address cap, and then shuts
//! out everyone else: 11 addresses at 100 connections each fill 1024 places. [`Seats`]
//! keeps the bound but never lets it shut anyone out: when every place is taken, a
//! newcomer whose address holds fewer places than the address holding the most takes the
//! oldest place of that address, which is closed (its holder sees
//! [`Seat::evicted`]). An address can therefore always get a place while another holds
//! more than it does, whatever the number of addresses behind the flood; the connections
//! that lose their place are those of the greediest address.
//!
//! Every seat is released when dropped. The map holds only addresses that hold a seat,
//! so it never has more entries than there are places.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Why an address got no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The address already holds its per-address share.
    #[error("this address already holds {0} connections")]
    PerAddress(usize),
    /// Every place is taken and no address holds more than this one.
    #[error("every place is taken")]
    Full,
}

#[derive(Debug, Default)]
struct State {
    /// Seats by address, oldest first (by sequence number), each with its eviction token.
    held: HashMap<IpAddr, BTreeMap<u64, CancellationToken>>,
    used: usize,
    next: u64,
}

/// A bounded set of places with fair sharing between addresses. Cheap to share.
#[derive(Debug)]
pub struct Seats {
    capacity: usize,
    state: Mutex<State>,
}

/// One place held by one address; given back when dropped.
#[derive(Debug)]
pub struct Seat {
    seats: Arc<Seats>,
    peer: IpAddr,
    seq: u64,
    evicted: CancellationToken,
}

impl Seats {
    /// A set of `capacity` places.
    pub fn new(capacity: usize) -> Arc<Seats> {
        Arc::new(Seats {
            capacity,
            state: Mutex::default(),
        })
    }

    /// A place for `peer`, which may hold at most `per_address`. When every place is
    /// taken, the oldest place of the address holding the most is taken from it, if that
    /// address holds at least two more than `peer` would.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, per_address: usize) -> Result<Seat, Refused> {
        let mut state = self.state.lock().expect("seats lock");
        let mine = state.held.get(&peer).map_or(0, BTreeMap::len);
        if mine >= per_address {
            return Err(Refused::PerAddress(per_address));
        }
        if state.used >= self.capacity {
            let greediest = state
                .held
                .iter()
                .map(|(ip, seats)| (seats.len(), *ip))
                .max()
                .filter(|(count, _)| *count > mine + 1);
            let Some((_, victim)) = greediest else {
                return Err(Refused::Full);
            };
            let seats = state.held.get_mut(&victim).expect("the victim holds seats");
            let (_, token) = seats.pop_first().expect("the victim holds seats");
            if seats.is_empty() {
                state.held.remove(&victim);
            }
            state.used -= 1;
            token.cancel();
        }
        let seq = state.next;
        state.next += 1;
        state.used += 1;
        let evicted = CancellationToken::new();
        state
            .held
            .entry(peer)
            .or_default()
            .insert(seq, evicted.clone());
        Ok(Seat {
            seats: self.clone(),
            peer,
            seq,
            evicted,
        })
    }

    /// Places held now.
    pub fn used(&self) -> usize {
        self.state.lock().expect("seats lock").used
    }

    /// Places `peer` holds now.
    pub fn held(&self, peer: &IpAddr) -> usize {
        let state = self.state.lock().expect("seats lock");
        state.held.get(peer).map_or(0, BTreeMap::len)
    }
}

impl Seat {
    /// Resolves when this place was given to another address; the connection holding it
    /// should close.
    pub fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.evicted.cancelled()
    }

    /// Whether this place was given to another address.
    pub fn is_evicted(&self) -> bool {
        self.evicted.is_cancelled()
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut state = self.seats.state.lock().expect("seats lock");
        let Some(seats) = state.held.get_mut(&self.peer) else {
            return;
        };
        // An evicted seat was already taken out and counted off.
        if seats.remove(&self.seq).is_some() {
            if seats.is_empty() {
                state.held.remove(&self.peer);
            }
            state.used -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_flood_from_a_few_addresses_never_shuts_out_another() {
        let seats = Seats::new(10);
        // Five addresses within their share of 2 fill every place.
        let flood: Vec<Seat> = (1..=5)
            .flat_map(|a| (0..2).map(move |_| a))
            .map(|a| seats.admit(ip(a), 2).unwrap())
            .collect();
        assert_eq!(seats.used(), 10);
        // Five newcomers each take a place from an address holding two.
        let newcomers: Vec<Seat> = (11..=15).map(|a| seats.admit(ip(a), 2).unwrap()).collect();
        assert_eq!(flood.iter().filter(|s| s.is_evicted()).count(), 5);
        assert!((1..=5).all(|a| seats.held(&ip(a)) == 1));
        // Now everyone holds one: the next newcomer waits for a place to be freed.
        assert_eq!(seats.admit(ip(16), 2).unwrap_err(), Refused::Full);
        drop((flood, newcomers));
        assert_eq!(seats.used(), 0);

        // One address within a larger share fills every place; a newcomer takes the
        // oldest of its places, and keeps taking them while it holds fewer.
        let flood: Vec<Seat> = (0..10).map(|_| seats.admit(ip(1), 100).unwrap()).collect();
        let newcomer = seats.admit(ip(2), 100).unwrap();
        assert!(
            flood[0].is_evicted(),
            "the oldest place of the greediest address"
        );
        assert!(!flood[1].is_evicted());
        assert_eq!((seats.used(), seats.held(&ip(1))), (10, 9));
        let more: Vec<Seat> = (0..3).map(|_| seats.admit(ip(2), 100).unwrap()).collect();
        assert_eq!((seats.held(&ip(1)), seats.held(&ip(2))), (6, 4));
        drop(flood);
        assert_eq!(seats.used(), 4, "evicted seats were counted off once");
        drop((newcomer, more));
        assert_eq!(seats.used(), 0);
    }

    #[test]
    fn the_per_address_share_holds_while_places_are_free() {
        let seats = Seats::new(100);
        let held: Vec<Seat> = (0..3).map(|_| seats.admit(ip(1), 3).unwrap()).collect();
        assert_eq!(seats.admit(ip(1), 3).unwrap_err(), Refused::PerAddress(3));
        assert!(seats.admit(ip(2), 3).is_ok());
        drop(held);
        assert!(seats.admit(ip(1), 3).is_ok());
    }

    #[test]
    fn seats_taken_and_dropped_from_many_threads_balance() {
        let seats = Seats::new(8);
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let seats = seats.clone();
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..1000 {
                        if let Ok(seat) = seats.admit(ip(t), 6) {
                            mine.push(seat);
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
