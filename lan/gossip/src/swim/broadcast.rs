//! The queue of state changes waiting to be piggybacked on outgoing packets.
//!
//! Each entry is about one member; a newer entry about the same member replaces the older
//! one (it carries fresher state, so spreading the old one is wasted space). Entries are
//! sent least-transmitted first and dropped after the retransmit limit, which grows with
//! the logarithm of the pool size (SWIM's infection-style dissemination: enough copies that
//! every member hears of the change with high probability, no more).

use std::collections::BTreeMap;

use super::message::{Message, Packet, encode_message};

/// Most entries queued; when full, the most-transmitted entry is dropped (it has been
/// spread the most already).
pub(crate) const MAX_QUEUED: usize = 4096;

#[derive(Debug, Clone)]
struct Entry {
    /// The message, encoded once when queued and copied into every packet that takes it.
    encoded: Vec<u8>,
    transmits: u32,
    /// Insertion order, to keep the queue stable among equals.
    id: u64,
}

/// Broadcasts keyed by the member they are about, with an index in sending order.
///
/// [`Queue::take_into`] runs for every packet sent, and in a large pool just after a join
/// the queue holds news of most members: the index (least transmitted first, then oldest)
/// and each message's encoded size let it walk the queue without sorting or copying keys,
/// and messages are kept encoded, so that taking one copies its bytes into the packet.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    entries: BTreeMap<String, Entry>,
    /// `(transmits, id)` of every entry, in the order they are sent, with the member it
    /// is about and the message's encoded size.
    order: BTreeMap<(u32, u64), (String, usize)>,
    /// How many entries have each encoded size: once a packet has less room left than
    /// the smallest, [`Queue::take_into`] stops instead of walking the rest of the queue.
    sizes: BTreeMap<usize, usize>,
    next_id: u64,
}

impl Queue {
    /// Queues `message` about `member`, replacing what was queued about it.
    pub(crate) fn push(&mut self, member: &str, message: &Message) {
        self.push_encoded(member, encode_message(message));
    }

    /// Queues a message encoded by `encode_message` (or `encode_alive`) about `member`,
    /// replacing what was queued about it.
    pub(crate) fn push_encoded(&mut self, member: &str, encoded: Vec<u8>) {
        if self.entries.len() >= MAX_QUEUED
            && !self.entries.contains_key(member)
            && let Some(worst) = self.most_transmitted()
        {
            self.remove(&worst);
        }
        self.remove(member);
        self.next_id += 1;
        let size = encoded.len();
        self.order
            .insert((0, self.next_id), (member.to_owned(), size));
        *self.sizes.entry(size).or_default() += 1;
        self.entries.insert(
            member.to_owned(),
            Entry {
                encoded,
                transmits: 0,
                id: self.next_id,
            },
        );
    }

    /// The member whose entry was transmitted most, the oldest among equals: the one
    /// dropped when the queue is full.
    fn most_transmitted(&self) -> Option<String> {
        let (&(most, _), _) = self.order.last_key_value()?;
        self.order
            .range((most, 0)..)
            .next()
            .map(|(_, (member, _))| member.clone())
    }

    fn remove(&mut self, member: &str) {
        if let Some(old) = self.entries.remove(member)
            && let Some((_, size)) = self.order.remove(&(old.transmits, old.id))
        {
            self.forget_size(size);
        }
    }

    fn forget_size(&mut self, size: usize) {
        if let Some(n) = self.sizes.get_mut(&size) {
            *n -= 1;
            if *n == 0 {
                self.sizes.remove(&size);
            }
        }
    }

    /// Adds to `packet` at most `count` queued messages that fit in `space` bytes, least
    /// transmitted first, counting a transmission for each and dropping those that
    /// reached `limit`. Returns how many it added.
    pub(crate) fn take_into(
        &mut self,
        packet: &mut Packet,
        mut space: usize,
        count: usize,
        limit: u32,
    ) -> usize {
        let mut picked = Vec::new();
        let smallest = self.sizes.first_key_value().map_or(0, |(&size, _)| size);
        for (&rank, (_, size)) in &self.order {
            if picked.len() >= count || space < smallest {
                break;
            }
            if *size > space {
                continue;
            }
            space -= size;
            picked.push(rank);
        }
        let mut added = 0;
        for rank in picked {
            let Some((member, size)) = self.order.remove(&rank) else {
                continue;
            };
            let Some(entry) = self.entries.get_mut(&member) else {
                continue;
            };
            packet.push_encoded(&entry.encoded);
            added += 1;
            entry.transmits += 1;
            if entry.transmits >= limit {
                self.entries.remove(&member);
                self.forget_size(size);
            } else {
                self.order
                    .insert((entry.transmits, entry.id), (member, size));
            }
        }
        added
    }

    /// How many entries wait.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// How many times a change is retransmitted in a pool of `members`: `mult` times the
/// base-10 logarithm of the size, rounded up (memberlist's rule).
pub(crate) fn retransmit_limit(mult: u32, members: usize) -> u32 {
    let scale = ((members + 1) as f64).log10().ceil() as u32;
    mult * scale.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swim::message::decode_packet;

    impl Queue {
        /// [`Queue::take_into`] an empty packet, decoded.
        fn take(&mut self, space: usize, count: usize, limit: u32) -> Vec<Message> {
            let mut packet = Packet::new();
            self.take_into(&mut packet, space, count, limit);
            decode_packet(&packet.finish()).expect("the queue's messages decode")
        }
    }

    fn ack(seq: u32) -> Message {
        Message::Ack { seq }
    }

    #[test]
    fn newer_news_replaces_older_and_retransmits_are_limited() {
        let mut q = Queue::default();
        q.push("a", &ack(1));
        q.push("a", &ack(2));
        q.push("b", &ack(3));
        assert_eq!(q.len(), 2);
        let first = q.take(1000, 64, 2);
        assert_eq!(first, vec![ack(2), ack(3)]);
        assert_eq!(q.take(1000, 64, 2).len(), 2);
        assert_eq!(q.len(), 0, "dropped after two transmissions");
    }

    #[test]
    fn only_what_fits_is_taken_and_fresh_news_goes_first() {
        let mut q = Queue::default();
        q.push("a", &ack(1));
        q.take(1000, 64, 10);
        q.push("b", &ack(2));
        let one = ack(0).encoded_len();
        assert_eq!(q.take(one, 64, 10), vec![ack(2)]);
        assert!(q.take(one - 1, 64, 10).is_empty());
    }

    #[test]
    fn no_more_than_count_messages_are_taken() {
        let mut q = Queue::default();
        for i in 0..10 {
            q.push(&format!("m{i}"), &ack(i));
        }
        assert_eq!(q.take(10_000, 4, 10).len(), 4);
        assert_eq!(q.len(), 10, "the rest stays queued");
    }

    /// The queue as it was before its index: every `take` sorts all entries and
    /// encodes each one it considers. The indexed queue must choose the same messages.
    #[derive(Default)]
    struct Reference {
        entries: BTreeMap<String, RefEntry>,
        next_id: u64,
    }

    struct RefEntry {
        message: Message,
        transmits: u32,
        id: u64,
    }

    impl Reference {
        fn push(&mut self, member: &str, message: Message) {
            if self.entries.len() >= MAX_QUEUED
                && !self.entries.contains_key(member)
                && let Some(worst) = self
                    .entries
                    .iter()
                    .max_by_key(|(_, e)| (e.transmits, std::cmp::Reverse(e.id)))
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&worst);
            }
            self.next_id += 1;
            let id = self.next_id;
            self.entries.insert(
                member.to_owned(),
                RefEntry {
                    message,
                    transmits: 0,
                    id,
                },
            );
        }

        fn take(&mut self, mut space: usize, count: usize, limit: u32) -> Vec<Message> {
            let mut order: Vec<(u32, u64, String)> = self
                .entries
                .iter()
                .map(|(k, e)| (e.transmits, e.id, k.clone()))
                .collect();
            order.sort();
            let mut out = Vec::new();
            for (_, _, key) in order {
                if out.len() >= count {
                    break;
                }
                let entry = self.entries.get_mut(&key).unwrap();
                let size = entry.message.encoded_len();
                if size > space {
                    continue;
                }
                space -= size;
                out.push(entry.message.clone());
                entry.transmits += 1;
                if entry.transmits >= limit {
                    self.entries.remove(&key);
                }
            }
            out
        }
    }

    fn alive(node: &str, incarnation: u32, tags: usize) -> Message {
        Message::Alive {
            incarnation,
            node: node.to_owned(),
            addr: "127.0.0.1:8301".parse().unwrap(),
            tags: (0..tags)
                .map(|i| (format!("k{i}"), "v".repeat(i * 7)))
                .collect(),
        }
    }

    proptest::proptest! {
        /// Random pushes (messages of different sizes about a few members, so that some
        /// replace others) and takes with random room: the indexed queue takes exactly
        /// what the sorting one took, in the same order, and keeps as many entries.
        #[test]
        fn the_index_takes_what_a_full_sort_took(
            ops in proptest::collection::vec(
                (proptest::bool::ANY, 0usize..24, 0usize..6, 0usize..1500, 1usize..8, 1u32..5),
                1..300,
            )
        ) {
            let (mut fast, mut slow) = (Queue::default(), Reference::default());
            for (i, (push, member, tags, space, count, limit)) in ops.into_iter().enumerate() {
                if push {
                    let m = alive(&format!("m{member}"), i as u32, tags);
                    fast.push(&format!("m{member}"), &m);
                    slow.push(&format!("m{member}"), m);
                } else {
                    proptest::prop_assert_eq!(
                        fast.take(space, count, limit),
                        slow.take(space, count, limit)
                    );
                }
                proptest::prop_assert_eq!(fast.len(), slow.entries.len());
                proptest::prop_assert_eq!(fast.order.len(), fast.entries.len());
                let mut sizes = BTreeMap::new();
                for (_, size) in fast.order.values() {
                    *sizes.entry(*size).or_insert(0usize) += 1;
                }
                proptest::prop_assert_eq!(&fast.sizes, &sizes);
            }
        }
    }

    #[test]
    fn a_full_queue_drops_the_most_transmitted_oldest_entry_like_before() {
        let (mut fast, mut slow) = (Queue::default(), Reference::default());
        for i in 0..MAX_QUEUED {
            let m = ack(i as u32);
            fast.push(&format!("m{i}"), &m);
            slow.push(&format!("m{i}"), m);
        }
        // Two rounds of sends give some entries one and some two transmissions.
        for (space, count) in [(70, 10), (35, 5)] {
            assert_eq!(fast.take(space, count, 10), slow.take(space, count, 10));
        }
        for i in 0..8 {
            fast.push(&format!("new{i}"), &ack(0));
            slow.push(&format!("new{i}"), ack(0));
        }
        let fast_keys: Vec<_> = fast.entries.keys().collect();
        assert_eq!(fast_keys, slow.entries.keys().collect::<Vec<_>>());
        assert_eq!(fast.len(), MAX_QUEUED);
    }

    #[test]
    fn limits_grow_with_the_pool() {
        assert_eq!(retransmit_limit(4, 1), 4);
        assert_eq!(retransmit_limit(4, 9), 4);
        assert_eq!(retransmit_limit(4, 10), 8);
        assert_eq!(retransmit_limit(4, 100), 12);
    }
}
