//! Who a change wakes. A blocking read waits on what its answer is made of (one key, a key
//! prefix, one service) rather than on the whole catalog, so that a write wakes only the
//! readers whose answer it can change; readers of anything else are not even scheduled.
//!
//! ```text
//!   State::apply ──records──▶ Changes { keys, services }
//!   CatalogWriter ──announce(Changes)──▶ Waiters ──bumps──▶ the slots of matching topics
//!   query_blocking ──subscribe(Topic)──▶ Waiting (a watch receiver on one slot)
//! ```
//!
//! Invariants: a slot exists while a reader holds it and goes with its last reader, so the
//! table is bounded by the readers held; a reader marks its slot seen before it reads the
//! state and the writer bumps after it writes, so no change falls between the two.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// What a blocking read waits on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    /// One key of the KV store.
    Key(String),
    /// Every key that starts with this prefix.
    Prefix(String),
    /// One service (its lower-case name): its instances, their checks and their nodes.
    Service(String),
}

/// The most keys or services one apply records one by one; past it, it wakes everyone
/// (a tree deletion of a whole store wakes every KV reader anyway).
const MOST_RECORDED: usize = 4096;

/// What applied commands changed, recorded by the state machine for its writer to
/// announce. Bounded: past [`MOST_RECORDED`] names it becomes "everything".
#[derive(Debug, Clone, Default)]
pub(crate) struct Changes {
    keys: Vec<String>,
    services: Vec<String>,
    everything: bool,
}

impl Changes {
    /// Records a change to `key`.
    pub(crate) fn key(&mut self, key: &str) {
        if !self.everything {
            self.keys.push(key.to_owned());
            self.cap();
        }
    }

    /// Records a change to service `name` (lower case).
    pub(crate) fn service(&mut self, name: &str) {
        if !self.everything {
            self.services.push(name.to_owned());
            self.cap();
        }
    }

    /// Records that everything changed.
    pub(crate) fn everything(&mut self) {
        self.everything = true;
        self.keys = Vec::new();
        self.services = Vec::new();
    }

    fn cap(&mut self) {
        if self.keys.len() + self.services.len() > MOST_RECORDED {
            self.everything();
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    keys: HashMap<String, watch::Sender<u64>>,
    prefixes: HashMap<String, watch::Sender<u64>>,
    services: HashMap<String, watch::Sender<u64>>,
    /// How many prefix topics have each length, so that a changed key looks up only the
    /// lengths in use rather than every prefix of itself.
    prefix_lengths: BTreeMap<usize, usize>,
    /// The writer is gone: readers answer at once.
    closed: bool,
}

impl Table {
    fn map<'a>(
        &'a mut self,
        topic: &'a Topic,
    ) -> (&'a mut HashMap<String, watch::Sender<u64>>, &'a str) {
        match topic {
            Topic::Key(k) => (&mut self.keys, k),
            Topic::Prefix(p) => (&mut self.prefixes, p),
            Topic::Service(s) => (&mut self.services, s),
        }
    }
}

fn bump(slot: &watch::Sender<u64>) {
    slot.send_modify(|n| *n = n.wrapping_add(1));
}

/// The readers waiting on topics. Cheap to clone; clones share one table.
#[derive(Debug, Clone, Default)]
pub(crate) struct Waiters {
    table: Arc<Mutex<Table>>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table holds no invariant a panicking holder could break halfway.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts waiting on `topic`. The receiver has seen the slot's current value.
    pub(crate) fn subscribe(&self, topic: Topic) -> Waiting {
        let mut table = self.lock();
        if table.closed {
            let (_, rx) = watch::channel(0);
            return Waiting {
                waiters: None,
                topic,
                rx: Some(rx),
            };
        }
        if let Topic::Prefix(p) = &topic
            && !table.prefixes.contains_key(p)
        {
            *table.prefix_lengths.entry(p.len()).or_default() += 1;
        }
        let (map, name) = table.map(&topic);
        let rx = match map.get(name) {
            Some(slot) => slot.subscribe(),
            None => {
                let (tx, rx) = watch::channel(0);
                map.insert(name.to_owned(), tx);
                rx
            }
        };
        Waiting {
            waiters: Some(self.clone()),
            topic,
            rx: Some(rx),
        }
    }

    /// Wakes the readers of everything `changes` names.
    pub(crate) fn announce(&self, changes: &Changes) {
        let table = self.lock();
        if changes.everything {
            table
                .keys
                .values()
                .chain(table.prefixes.values())
                .chain(table.services.values())
                .for_each(bump);
            return;
        }
        for name in &changes.services {
            if let Some(slot) = table.services.get(name) {
                bump(slot);
            }
        }
        if table.keys.is_empty() && table.prefixes.is_empty() {
            return;
        }
        for key in &changes.keys {
            if let Some(slot) = table.keys.get(key) {
                bump(slot);
            }
            for &len in table.prefix_lengths.keys() {
                if len > key.len() {
                    break;
                }
                if key.is_char_boundary(len)
                    && let Some(slot) = table.prefixes.get(&key[..len])
                {
                    bump(slot);
                }
            }
        }
    }

    /// The writer is gone: every reader answers now, and later ones at once.
    pub(crate) fn close(&self) {
        let mut table = self.lock();
        table.closed = true;
        table.keys.clear();
        table.prefixes.clear();
        table.services.clear();
        table.prefix_lengths.clear();
    }

    /// How many topics are waited on (for tests: slots go with their readers).
    #[cfg(test)]
    pub(crate) fn topics(&self) -> usize {
        let t = self.lock();
        t.keys.len() + t.prefixes.len() + t.services.len()
    }
}

/// One reader's hold on a topic. Dropping it lets the topic's slot go once no reader
/// holds it.
#[derive(Debug)]
pub(crate) struct Waiting {
    waiters: Option<Waiters>,
    topic: Topic,
    rx: Option<watch::Receiver<u64>>,
}

impl Waiting {
    /// The receiver that changes when the topic does.
    pub(crate) fn changes(&mut self) -> &mut watch::Receiver<u64> {
        self.rx.as_mut().expect("present until dropped")
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(waiters) = self.waiters.take() else {
            return;
        };
        let mut table = waiters.lock();
        // Our receiver goes first, so that the count below is of the others.
        self.rx = None;
        let is_prefix = matches!(self.topic, Topic::Prefix(_));
        let (map, name) = table.map(&self.topic);
        let Some(slot) = map.get(name) else {
            return; // closed meanwhile
        };
        if slot.receiver_count() > 0 {
            return;
        }
        map.remove(name);
        if is_prefix {
            let len = name.len();
            if let Some(n) = table.prefix_lengths.get_mut(&len) {
                *n -= 1;
                if *n == 0 {
                    table.prefix_lengths.remove(&len);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(keys: &[&str], services: &[&str]) -> Changes {
        let mut c = Changes::default();
        keys.iter().for_each(|k| c.key(k));
        services.iter().for_each(|s| c.service(s));
        c
    }

    #[test]
    fn a_key_wakes_its_own_readers_and_those_of_its_prefixes_only() {
        let w = Waiters::default();
        let mut exact = w.subscribe(Topic::Key("app/db".into()));
        let mut tree = w.subscribe(Topic::Prefix("app/".into()));
        let mut root = w.subscribe(Topic::Prefix(String::new()));
        let mut other_key = w.subscribe(Topic::Key("app/dbx".into()));
        let mut other_tree = w.subscribe(Topic::Prefix("web/".into()));
        let mut longer = w.subscribe(Topic::Prefix("app/db/".into()));
        let mut service = w.subscribe(Topic::Service("app".into()));
        w.announce(&changed(&["app/db"], &[]));
        assert!(exact.changes().has_changed().unwrap());
        assert!(tree.changes().has_changed().unwrap());
        assert!(root.changes().has_changed().unwrap());
        assert!(!other_key.changes().has_changed().unwrap());
        assert!(!other_tree.changes().has_changed().unwrap());
        assert!(!longer.changes().has_changed().unwrap());
        assert!(!service.changes().has_changed().unwrap());
        w.announce(&changed(&[], &["app"]));
        assert!(service.changes().has_changed().unwrap());
    }

    #[test]
    fn everything_wakes_every_reader() {
        let w = Waiters::default();
        let mut a = w.subscribe(Topic::Key("a".into()));
        let mut b = w.subscribe(Topic::Service("b".into()));
        let mut many = Changes::default();
        for i in 0..=MOST_RECORDED {
            many.key(&format!("k{i}"));
        }
        w.announce(&many);
        assert!(a.changes().has_changed().unwrap());
        assert!(b.changes().has_changed().unwrap());
    }

    #[test]
    fn a_slot_goes_with_its_last_reader() {
        let w = Waiters::default();
        let first = w.subscribe(Topic::Prefix("p/".into()));
        let second = w.subscribe(Topic::Prefix("p/".into()));
        let key = w.subscribe(Topic::Key("p/x".into()));
        assert_eq!(w.topics(), 2);
        drop(first);
        assert_eq!(w.topics(), 2);
        drop(second);
        drop(key);
        assert_eq!(w.topics(), 0);
        assert!(w.lock().prefix_lengths.is_empty());
    }

    #[test]
    fn closing_ends_every_wait() {
        let w = Waiters::default();
        let mut held = w.subscribe(Topic::Key("a".into()));
        w.close();
        assert!(held.changes().has_changed().is_err());
        let mut late = w.subscribe(Topic::Key("a".into()));
        assert!(late.changes().has_changed().is_err());
        drop(held);
        assert_eq!(w.topics(), 0);
    }

    #[test]
    fn keys_are_cut_only_at_character_boundaries() {
        let w = Waiters::default();
        let mut one_byte = w.subscribe(Topic::Prefix("a".into()));
        w.announce(&changed(&["é"], &[]));
        assert!(!one_byte.changes().has_changed().unwrap());
    }
}
