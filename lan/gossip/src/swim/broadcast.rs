//! The queue of state changes waiting to be piggybacked on outgoing packets.
//!
//! Each entry is about one member; a newer entry about the same member replaces the older
//! one (it carries fresher state, so spreading the old one is wasted space). Entries are
//! sent least-transmitted first and dropped after the retransmit limit, which grows with
//! the logarithm of the pool size (SWIM's infection-style dissemination: enough copies that
//! every member hears of the change with high probability, no more).

use std::collections::BTreeMap;

use super::message::Message;

/// Most entries queued; when full, the most-transmitted entry is dropped (it has been
/// spread the most already).
pub(crate) const MAX_QUEUED: usize = 4096;

#[derive(Debug, Clone)]
struct Entry {
    message: Message,
    transmits: u32,
    /// Insertion order, to keep the queue stable among equals.
    id: u64,
}

/// Broadcasts keyed by the member they are about.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    entries: BTreeMap<String, Entry>,
    next_id: u64,
}

impl Queue {
    /// Queues `message` about `member`, replacing what was queued about it.
    pub(crate) fn push(&mut self, member: &str, message: Message) {
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
        self.entries.insert(
            member.to_owned(),
            Entry {
                message,
                transmits: 0,
                id: self.next_id,
            },
        );
    }

    /// Takes at most `count` queued messages that fit in `space` bytes, least
    /// transmitted first, counting a transmission for each and dropping those that
    /// reached `limit`.
    pub(crate) fn take(&mut self, mut space: usize, count: usize, limit: u32) -> Vec<Message> {
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
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
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

    fn ack(seq: u32) -> Message {
        Message::Ack { seq }
    }

    #[test]
    fn newer_news_replaces_older_and_retransmits_are_limited() {
        let mut q = Queue::default();
        q.push("a", ack(1));
        q.push("a", ack(2));
        q.push("b", ack(3));
        assert_eq!(q.len(), 2);
        let first = q.take(1000, 64, 2);
        assert_eq!(first, vec![ack(2), ack(3)]);
        assert_eq!(q.take(1000, 64, 2).len(), 2);
        assert_eq!(q.len(), 0, "dropped after two transmissions");
    }

    #[test]
    fn only_what_fits_is_taken_and_fresh_news_goes_first() {
        let mut q = Queue::default();
        q.push("a", ack(1));
        q.take(1000, 64, 10);
        q.push("b", ack(2));
        let one = ack(0).encoded_len();
        assert_eq!(q.take(one, 64, 10), vec![ack(2)]);
        assert!(q.take(one - 1, 64, 10).is_empty());
    }

    #[test]
    fn no_more_than_count_messages_are_taken() {
        let mut q = Queue::default();
        for i in 0..10 {
            q.push(&format!("m{i}"), ack(i));
        }
        assert_eq!(q.take(10_000, 4, 10).len(), 4);
        assert_eq!(q.len(), 10, "the rest stays queued");
    }

    #[test]
    fn limits_grow_with_the_pool() {
        assert_eq!(retransmit_limit(4, 1), 4);
        assert_eq!(retransmit_limit(4, 9), 4);
        assert_eq!(retransmit_limit(4, 10), 8);
        assert_eq!(retransmit_limit(4, 100), 12);
    }
}
