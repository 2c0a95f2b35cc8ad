//! Encoded UDP answers kept between queries, one cache per serving thread (no lock).
//!
//! A query that repeats one answered before, byte for byte apart from its ID, gets the
//! same answer while the local catalog's index is the same: the cache keys on the
//! request's bytes after the ID (flags, the question with its case, the EDNS record),
//! so the response, built by the ordinary path, is copied and given the new ID. Only
//! answers that depend on nothing but the question, the configuration and the local
//! catalog are kept ([`Draw::kept_orders`]); an answer holding a SOA record (its
//! serial is the current second) is kept for that second only.
//!
//! Answers whose records come in a random order keep that: an entry has one slot per
//! order of its records (at most [`MAX_ORDERED`](super::answer::MAX_ORDERED) records,
//! so at most 24 slots), each built by the ordinary path in that order when first
//! drawn, and each query draws a slot uniformly, so every order has the same chance,
//! as with a shuffle per query. Answers with more records to order are not kept.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use super::answer::Draw;

/// Longest request whose answer is kept: a question with a full-length name and an
/// EDNS record with a few options fits; longer ones are answered without the cache.
pub(crate) const MAX_KEY: usize = 512;
/// Most bytes (keys and answers) one serving thread keeps; the cache is emptied when
/// it would grow past this. With at most four serving threads per address this bounds
/// the memory to a few MiB, against some thousand distinct questions' answers each.
pub(crate) const MAX_BYTES: usize = 2 << 20;
/// Most questions kept per thread, whatever their size.
pub(crate) const MAX_ENTRIES: usize = 4096;

/// The answers of one question (request bytes after the ID).
struct Entry {
    /// One slot per order of the records: the encoded response, once built.
    slots: Box<[Option<Box<[u8]>>]>,
    /// For an answer holding the time: the second it was built in.
    second: Option<u64>,
    /// A reverse (PTR) question, for the metrics.
    ptr: bool,
}

/// A kept answer was found (and copied out, with the request's ID).
#[derive(Debug)]
pub(crate) struct Hit {
    /// A reverse (PTR) question, for the metrics.
    pub(crate) ptr: bool,
}

/// What a miss must do: build the answer in this order and hand it to
/// [`ResponseCache::insert`].
#[derive(Debug)]
pub(crate) struct Miss {
    /// The order to draw.
    pub(crate) order: usize,
}

/// One serving thread's encoded answers, all of one catalog index.
pub(crate) struct ResponseCache {
    index: u64,
    entries: HashMap<Box<[u8]>, Entry>,
    bytes: usize,
}

fn now_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ResponseCache {
    /// An empty cache.
    pub(crate) fn new() -> ResponseCache {
        ResponseCache {
            index: 0,
            entries: HashMap::new(),
            bytes: 0,
        }
    }

    /// Looks `request` up as the local catalog is at `index`. On a hit the response,
    /// with the request's ID, is in `out`; on a miss, says which order to build.
    pub(crate) fn get(
        &mut self,
        request: &[u8],
        index: u64,
        out: &mut Vec<u8>,
    ) -> Result<Hit, Miss> {
        if index != self.index {
            // Every kept answer is of an older catalog.
            self.entries.clear();
            self.bytes = 0;
            self.index = index;
        }
        let (Some(id), Some(key)) = (request.get(..2), request.get(2..)) else {
            return Err(Miss { order: 0 });
        };
        let Some(entry) = self.entries.get(key) else {
            return Err(Miss {
                order: rand::random_range(0..super::ORDERS),
            });
        };
        if entry.second.is_some_and(|s| s != now_second()) {
            let order = rand::random_range(0..entry.slots.len());
            self.remove(key);
            return Err(Miss { order });
        }
        let order = if entry.slots.len() == 1 {
            0
        } else {
            rand::random_range(0..entry.slots.len())
        };
        match &entry.slots[order] {
            Some(response) => {
                out.clear();
                out.extend_from_slice(response);
                out[..2].copy_from_slice(id);
                Ok(Hit { ptr: entry.ptr })
            }
            None => Err(Miss { order }),
        }
    }

    /// Keeps `response`, the answer to `request` built in order `order` (as [`Miss`]
    /// said) with what `draw` found, if it may be kept.
    pub(crate) fn insert(
        &mut self,
        request: &[u8],
        order: usize,
        draw: &Draw,
        ptr: bool,
        response: &[u8],
    ) {
        let Some(orders) = draw.kept_orders() else {
            return;
        };
        let Some(key) = request
            .get(2..)
            .filter(|k| request.len() <= MAX_KEY && !k.is_empty())
        else {
            return;
        };
        let second = draw.timed().then(now_second);
        let fits = |e: &Entry| e.slots.len() == orders && e.second == second && e.ptr == ptr;
        if self.entries.get(key).is_some_and(|e| !fits(e)) {
            self.remove(key);
        }
        let new = !self.entries.contains_key(key);
        let added = response.len() + if new { key.len() } else { 0 };
        if self.bytes + added > MAX_BYTES || (new && self.entries.len() >= MAX_ENTRIES) {
            self.entries.clear();
            self.bytes = 0;
        }
        let entry = self.entries.entry(key.into()).or_insert_with(|| {
            self.bytes += key.len();
            Entry {
                slots: vec![None; orders].into_boxed_slice(),
                second,
                ptr,
            }
        });
        let slot = &mut entry.slots[order % orders];
        if slot.is_none() {
            *slot = Some(response.into());
            self.bytes += response.len();
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(entry) = self.entries.remove(key) {
            let kept: usize = entry.slots.iter().flatten().map(|s| s.len()).sum();
            self.bytes = self.bytes.saturating_sub(kept + key.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u16, name: &[u8]) -> Vec<u8> {
        let mut bytes = id.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&[0, 0, 1, 0, 1]);
        bytes
    }

    /// A response to `request`, as the ordinary path would make it (its ID first).
    fn response(request: &[u8], tag: u8) -> Vec<u8> {
        let mut bytes = request.to_vec();
        bytes[2] |= 0x80;
        bytes.push(tag);
        bytes
    }

    #[test]
    fn a_kept_answer_gets_the_new_id_and_only_at_its_index() {
        let mut cache = ResponseCache::new();
        let mut out = Vec::new();
        let first = request(1, b"\x03web");
        let miss = cache.get(&first, 7, &mut out).unwrap_err();
        let draw = Draw::random();
        cache.insert(&first, miss.order, &draw, false, &response(&first, 9));

        let again = request(0xbeef, b"\x03web");
        assert!(cache.get(&again, 7, &mut out).is_ok());
        assert_eq!(out, response(&again, 9));
        // Another case of the name is another question (the answer echoes it).
        assert!(cache.get(&request(2, b"\x03WEB"), 7, &mut out).is_err());
        // A newer catalog: nothing kept is served.
        assert!(cache.get(&again, 8, &mut out).is_err());
        assert!(cache.entries.is_empty());
    }

    #[test]
    fn the_cache_stays_within_its_bounds() {
        let mut cache = ResponseCache::new();
        let mut out = Vec::new();
        let draw = Draw::random();
        for i in 0..(MAX_ENTRIES * 3) {
            let name = format!("\x08{i:08}");
            let req = request(1, name.as_bytes());
            let resp = vec![0u8; 1000];
            cache.insert(&req, 0, &draw, false, &resp);
            assert!(cache.entries.len() <= MAX_ENTRIES);
            assert!(cache.bytes <= MAX_BYTES);
        }
        assert!(cache.get(&request(1, b"\x03web"), 0, &mut out).is_err());
        // Longer requests than the bound are never kept.
        let long = request(1, &vec![b'a'; MAX_KEY]);
        cache.insert(&long, 0, &draw, false, &response(&long, 1));
        assert!(cache.get(&long, 0, &mut out).is_err());
    }
}
