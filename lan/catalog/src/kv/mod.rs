//! The key/value store: entries, tombstones, and the writes and reads of Consul's
//! `/v1/kv` endpoint.
//!
//! Keys are UTF-8 strings compared byte for byte (case-sensitive, as in Consul) and
//! ordered so that a prefix is one range of the map. Every change carries the Raft index
//! it was applied at: that index becomes the entry's `ModifyIndex` (and `CreateIndex`
//! when new) and the KV table's index.
//!
//! A delete leaves a *tombstone*, the key and the index of its deletion, so that the
//! index of a prefix read is the newest change under the prefix, deletions included:
//! a blocking read of `app/` wakes when `app/x` is deleted, and its index never goes
//! back. The leader reaps tombstones older than [`TOMBSTONE_TTL`] through the log
//! ([`KvWrite::Reap`]); a prefix index may go down after that, which Consul's clients
//! already handle (they restart at index 0).
//!
//! Entries and tombstones together also answer "what changed under this prefix after
//! index I" ([`changes`]).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::state::{ApplyError, State};

mod changes;

pub use changes::{KV_CHANGES_MAX, KV_CHANGES_MAX_BYTES, KvChange, KvChanges, Unlisted};

/// The largest value, in bytes (Consul's `kv_max_value_size` default).
pub const KV_MAX_VALUE_SIZE: usize = 512 * 1024;

/// How long a deleted key's tombstone is kept before the leader reaps it (Consul's
/// `TombstoneTTL`).
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(15 * 60);

/// One key and its value, as Consul's `DirEntry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value; empty is shown as `null` by the HTTP API.
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
    /// Opaque flags the client chose.
    pub flags: u64,
    /// The session holding the key's lock, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// How many times the lock was acquired.
    pub lock_index: u64,
    /// The index the key was created at.
    pub create_index: u64,
    /// The index of its last change.
    pub modify_index: u64,
}

/// A change to the key/value store (Consul's KV verbs that write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvWrite {
    /// Sets `key` to `value` and `flags` (`PUT /v1/kv/key`). With `cas`, only if the key
    /// is absent (`Some(0)`) or its `ModifyIndex` equals it.
    Set {
        /// The key.
        key: String,
        /// The new value.
        #[serde(with = "base64_bytes")]
        value: Vec<u8>,
        /// The new flags.
        flags: u64,
        /// Check-and-set index.
        cas: Option<u64>,
    },
    /// Deletes `key` (`DELETE /v1/kv/key`). With `cas`, only if its `ModifyIndex`
    /// equals it; an absent key counts as deleted either way, as in Consul.
    Delete {
        /// The key.
        key: String,
        /// Check-and-set index.
        cas: Option<u64>,
    },
    /// Deletes every key that starts with `prefix` (`DELETE /v1/kv/prefix?recurse`).
    DeleteTree {
        /// The prefix; empty deletes every key.
        prefix: String,
    },
    /// Takes the lock of `key` for `session` and writes `value` and `flags`
    /// (`PUT ?acquire=`).
    Acquire {
        /// The key.
        key: String,
        /// The new value.
        #[serde(with = "base64_bytes")]
        value: Vec<u8>,
        /// The new flags.
        flags: u64,
        /// The session taking the lock.
        session: String,
    },
    /// Gives back the lock of `key` held by `session` and writes `value` and `flags`
    /// (`PUT ?release=`).
    Release {
        /// The key.
        key: String,
        /// The new value.
        #[serde(with = "base64_bytes")]
        value: Vec<u8>,
        /// The new flags.
        flags: u64,
        /// The session giving it back.
        session: String,
    },
    /// Forgets the tombstones of deletions made at or before index `up_to` (the leader's
    /// upkeep).
    Reap {
        /// The newest deletion index to forget.
        up_to: u64,
    },
}

impl KvWrite {
    /// The key or prefix the write touches (empty for [`KvWrite::Reap`]).
    pub fn key(&self) -> &str {
        match self {
            KvWrite::Set { key, .. }
            | KvWrite::Delete { key, .. }
            | KvWrite::Acquire { key, .. }
            | KvWrite::Release { key, .. } => key,
            KvWrite::DeleteTree { prefix } => prefix,
            KvWrite::Reap { .. } => "",
        }
    }
}

/// Why a conditional KV write did nothing. The HTTP API answers `false` for these; the
/// texts are Consul's transaction errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvRefusal {
    /// A `cas` set whose index did not match.
    #[error("failed to set key {0:?}, index is stale")]
    SetStale(String),
    /// A `cas` delete whose index did not match.
    #[error("failed to delete key {0:?}, index is stale")]
    DeleteStale(String),
    /// An acquire of a key another session holds.
    #[error("failed to lock key {0:?}, lock is already held")]
    LockHeld(String),
    /// An acquire of a key within an invalidated session's lock delay (refused by the
    /// leader before the log).
    #[error("failed to lock key {0:?} due to lock delay")]
    LockDelay(String),
    /// A release of a key the session does not hold.
    #[error("failed to unlock key {0:?}, lock isn't held, or is held by another session")]
    NotHeld(String),
}

/// What a KV read returns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvRead {
    /// The entry of one key.
    Entry,
    /// Every entry whose key starts with the given one (`?recurse`).
    Tree,
    /// The keys that start with the given one (`?keys`), each cut after the first
    /// `separator` past the prefix when one is given (`?separator=/`).
    Keys {
        /// Where to cut keys, if anywhere.
        separator: Option<String>,
    },
    /// What changed under the prefix after index `since`: entries modified and keys
    /// deleted, oldest first, or with no `since` the whole prefix (KV replication's
    /// reads of its source). Either comes with the KV table's index it is as of, to ask
    /// from next. Answered with the prefix's index, as [`KvRead::Tree`] is, so a
    /// blocking read wakes on the same changes; or, when the changes after `since` are
    /// reaped, with the reap mark if later, so that it wakes for that too.
    Changes {
        /// Changes at or before this index are left out; `None` asks for every entry.
        since: Option<u64>,
    },
}

/// The answer to a KV read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvAnswer {
    /// Entries, in key order (none when the key or prefix holds nothing).
    Entries(Vec<KvEntry>),
    /// Keys, in order, without duplicates.
    Keys(Vec<String>),
    /// For [`KvRead::Changes`].
    Changes(KvChanges),
}

/// Which keys a datacenter copies from another one (KV replication): every key under one
/// of `prefixes` and under none of `exclude`. Such keys are written only by the
/// replicator; other writes to them are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvReplication {
    /// The datacenter the keys come from.
    pub source: String,
    /// The prefixes copied.
    pub prefixes: Vec<String>,
    /// Prefixes within those that are not.
    pub exclude: Vec<String>,
}

impl KvReplication {
    /// Whether `key` is copied from the source.
    pub fn covers(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
            && !self.exclude.iter().any(|x| key.starts_with(x.as_str()))
    }

    /// Whether deleting every key under `prefix` would touch a copied key.
    fn tree_touches(&self, prefix: &str) -> bool {
        self.covers(prefix)
            || self.prefixes.iter().any(|p| {
                p.starts_with(prefix) && !self.exclude.iter().any(|x| p.starts_with(x.as_str()))
            })
    }

    /// Why `command` may not be applied here: it writes a copied key. Replication's own
    /// writes ([`Command::KvReplicate`](crate::Command::KvReplicate)) are not asked about.
    pub fn refusal(&self, command: &crate::Command) -> Option<String> {
        let touched: Vec<(&str, bool)> = match command {
            crate::Command::Kv(KvWrite::Reap { .. }) => Vec::new(),
            crate::Command::Kv(KvWrite::DeleteTree { prefix }) => vec![(prefix, true)],
            crate::Command::Kv(write) => vec![(write.key(), false)],
            crate::Command::Txn(ops) => ops
                .iter()
                .filter(|op| !op.verb.reads_only())
                .map(|op| (op.key.as_str(), op.verb == crate::TxnVerb::DeleteTree))
                .collect(),
            _ => Vec::new(),
        };
        let key = touched.into_iter().find(|(key, tree)| {
            if *tree {
                self.tree_touches(key)
            } else {
                self.covers(key)
            }
        })?;
        Some(format!(
            "Key {:?} is replicated from datacenter {:?} and read-only here: write it in {}",
            key.0, self.source, self.source
        ))
    }
}

/// The key/value table of the catalog.
#[derive(Debug, Clone, Default)]
pub(super) struct Kv {
    // Shared with snapshots, as the catalog's nodes are (see `State`).
    pub(super) entries: BTreeMap<String, Arc<KvEntry>>,
    /// Deleted keys and the index each was deleted at.
    pub(super) tombstones: BTreeMap<String, u64>,
    /// The newest deletion index whose tombstones are gone: reaped, or lost when a
    /// snapshot was restored (at that index). The changes after an index at or past it
    /// can be listed in full; those after an earlier one cannot.
    pub(super) reaped: u64,
}

/// The keys of `map` that start with `prefix`, in order.
pub(super) fn under<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    map.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
}

impl State {
    /// Applies a KV write at `index`.
    pub(super) fn apply_kv(&mut self, index: u64, write: &KvWrite) -> Result<(), ApplyError> {
        match write {
            KvWrite::Set {
                key,
                value,
                flags,
                cas,
            } => {
                if key.is_empty() {
                    return Err(ApplyError::Kv("Missing key name".into()));
                }
                let existing = self.kv.entries.get(key);
                match (cas, existing) {
                    (Some(0), Some(_)) => return Err(KvRefusal::SetStale(key.clone()).into()),
                    (Some(n), Some(e)) if *n != 0 && e.modify_index != *n => {
                        return Err(KvRefusal::SetStale(key.clone()).into());
                    }
                    (Some(n), None) if *n != 0 => {
                        return Err(KvRefusal::SetStale(key.clone()).into());
                    }
                    _ => {}
                }
                match self.kv.entries.get_mut(key) {
                    // The same value and flags: nothing changes, no one wakes.
                    Some(e) if e.value == *value && e.flags == *flags => {}
                    Some(e) => {
                        let e = Arc::make_mut(e);
                        e.value.clone_from(value);
                        e.flags = *flags;
                        e.modify_index = index;
                        self.indexes.kv = index;
                        self.changed.key(key);
                    }
                    None => {
                        self.kv.tombstones.remove(key);
                        self.kv.entries.insert(
                            key.clone(),
                            Arc::new(KvEntry {
                                key: key.clone(),
                                value: value.clone(),
                                flags: *flags,
                                session: None,
                                lock_index: 0,
                                create_index: index,
                                modify_index: index,
                            }),
                        );
                        self.indexes.kv = index;
                        self.changed.key(key);
                    }
                }
                Ok(())
            }
            KvWrite::Acquire {
                key,
                value,
                flags,
                session,
            } => self.acquire(index, key, value, *flags, session),
            KvWrite::Release {
                key,
                value,
                flags,
                session,
            } => self.release(index, key, value, *flags, session),
            KvWrite::Delete { key, cas } => {
                let Some(existing) = self.kv.entries.get(key) else {
                    return Ok(());
                };
                if let Some(n) = cas
                    && existing.modify_index != *n
                {
                    return Err(KvRefusal::DeleteStale(key.clone()).into());
                }
                if let Some(holder) = self.kv.entries.remove(key).and_then(|e| e.session.clone()) {
                    self.unhold(&holder, key);
                }
                self.kv.tombstones.insert(key.clone(), index);
                self.indexes.kv = index;
                self.changed.key(key);
                Ok(())
            }
            KvWrite::DeleteTree { prefix } => {
                let keys: Vec<String> = under(&self.kv.entries, prefix)
                    .map(|(k, _)| k.clone())
                    .collect();
                if keys.is_empty() {
                    return Ok(());
                }
                for key in keys {
                    if let Some(holder) =
                        self.kv.entries.remove(&key).and_then(|e| e.session.clone())
                    {
                        self.unhold(&holder, &key);
                    }
                    self.changed.key(&key);
                    self.kv.tombstones.insert(key, index);
                }
                self.indexes.kv = index;
                Ok(())
            }
            KvWrite::Reap { up_to } => {
                self.kv.tombstones.retain(|_, deleted| *deleted > *up_to);
                self.kv.reaped = self.kv.reaped.max(*up_to);
                Ok(())
            }
        }
    }

    /// Answers a KV read of `key` with its index: the key's `ModifyIndex`, or for a
    /// prefix the newest change under it (deletions included); the table's index when
    /// there is nothing to go by. Never below 1.
    pub(super) fn query_kv(&self, key: &str, read: &KvRead) -> (KvAnswer, u64) {
        let table = self.indexes.kv;
        let (answer, index) = match read {
            KvRead::Entry => match self.kv.entries.get(key) {
                Some(e) => (KvAnswer::Entries(vec![KvEntry::clone(e)]), e.modify_index),
                None => (KvAnswer::Entries(Vec::new()), table),
            },
            KvRead::Tree => {
                let entries: Vec<KvEntry> = under(&self.kv.entries, key)
                    .map(|(_, e)| KvEntry::clone(e))
                    .collect();
                let index = self.prefix_index(key, &entries);
                (KvAnswer::Entries(entries), index)
            }
            KvRead::Keys { separator } => {
                let entries: Vec<&KvEntry> =
                    under(&self.kv.entries, key).map(|(_, e)| &**e).collect();
                let mut keys: Vec<String> = Vec::new();
                for e in &entries {
                    let cut = match separator.as_deref().filter(|s| !s.is_empty()) {
                        Some(sep) => match e.key[key.len()..].find(sep) {
                            Some(at) => &e.key[..key.len() + at + sep.len()],
                            None => e.key.as_str(),
                        },
                        None => e.key.as_str(),
                    };
                    // Keys cut to the same folder are next to each other in key order.
                    if keys.last().map(String::as_str) != Some(cut) {
                        keys.push(cut.to_owned());
                    }
                }
                let newest = entries.iter().map(|e| e.modify_index).max();
                (KvAnswer::Keys(keys), self.prefix_index_of(key, newest))
            }
            KvRead::Changes { since: None } => {
                let entries: Vec<KvEntry> = under(&self.kv.entries, key)
                    .map(|(_, e)| KvEntry::clone(e))
                    .collect();
                let index = self.prefix_index(key, &entries);
                let whole = KvChanges::Whole {
                    entries,
                    kv_index: self.indexes.kv,
                };
                (KvAnswer::Changes(whole), index)
            }
            KvRead::Changes { since: Some(since) } => {
                let (changes, newest) = self.kv_changes(key, *since);
                let mut index = self.prefix_index_of(key, newest);
                // Keys gone with a restore (or tombstones reaped) may leave the prefix's
                // index behind: a reader waiting past it hears at once that its changes
                // cannot be listed.
                if let KvChanges::Unlisted(Unlisted::Reaped { up_to }) = &changes {
                    index = index.max(*up_to);
                }
                (KvAnswer::Changes(changes), index)
            }
        };
        (answer, index.max(1))
    }

    fn acquire(
        &mut self,
        index: u64,
        key: &str,
        value: &[u8],
        flags: u64,
        session: &str,
    ) -> Result<(), ApplyError> {
        if key.is_empty() {
            return Err(ApplyError::Kv("Missing key name".into()));
        }
        if session.is_empty() {
            return Err(ApplyError::Kv("missing session".into()));
        }
        if !self.sessions.by_id.contains_key(session) {
            return Err(ApplyError::Kv(format!("invalid session {session:?}")));
        }
        match self.kv.entries.get_mut(key) {
            Some(e) if e.session.as_deref().is_some_and(|s| s != session) => {
                return Err(KvRefusal::LockHeld(key.to_owned()).into());
            }
            // The holder again: only a new value or new flags change anything.
            Some(e) if e.session.is_some() => {
                if e.value != value || e.flags != flags {
                    let e = Arc::make_mut(e);
                    e.value = value.to_vec();
                    e.flags = flags;
                    e.modify_index = index;
                    self.indexes.kv = index;
                    self.changed.key(key);
                }
            }
            Some(e) => {
                let e = Arc::make_mut(e);
                e.value = value.to_vec();
                e.flags = flags;
                e.session = Some(session.to_owned());
                e.lock_index += 1;
                e.modify_index = index;
                self.indexes.kv = index;
                self.changed.key(key);
            }
            None => {
                self.kv.tombstones.remove(key);
                self.kv.entries.insert(
                    key.to_owned(),
                    Arc::new(KvEntry {
                        key: key.to_owned(),
                        value: value.to_vec(),
                        flags,
                        session: Some(session.to_owned()),
                        lock_index: 1,
                        create_index: index,
                        modify_index: index,
                    }),
                );
                self.indexes.kv = index;
                self.changed.key(key);
            }
        }
        self.hold(session, key);
        Ok(())
    }

    fn release(
        &mut self,
        index: u64,
        key: &str,
        value: &[u8],
        flags: u64,
        session: &str,
    ) -> Result<(), ApplyError> {
        if session.is_empty() {
            return Err(ApplyError::Kv("missing session".into()));
        }
        match self.kv.entries.get_mut(key) {
            Some(e) if e.session.as_deref() == Some(session) => {
                let e = Arc::make_mut(e);
                e.session = None;
                e.value = value.to_vec();
                e.flags = flags;
                e.modify_index = index;
                self.indexes.kv = index;
                self.changed.key(key);
            }
            _ => return Err(KvRefusal::NotHeld(key.to_owned()).into()),
        }
        self.unhold(session, key);
        Ok(())
    }

    /// The deletion index of the oldest tombstone, if any.
    pub fn oldest_tombstone(&self) -> Option<u64> {
        self.kv.tombstones.values().min().copied()
    }

    fn prefix_index(&self, prefix: &str, entries: &[KvEntry]) -> u64 {
        self.prefix_index_of(prefix, entries.iter().map(|e| e.modify_index).max())
    }

    /// The newest of `newest_entry` and the tombstones under `prefix`; the table's index
    /// when there is neither.
    fn prefix_index_of(&self, prefix: &str, newest_entry: Option<u64>) -> u64 {
        let newest_tombstone = under(&self.kv.tombstones, prefix).map(|(_, i)| *i).max();
        match newest_entry.max(newest_tombstone) {
            Some(i) => i,
            None => self.indexes.kv,
        }
    }
}

/// Values travel in the Raft log and snapshots as base64 text, as in Consul's JSON.
pub(crate) mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str, cas: Option<u64>) -> KvWrite {
        KvWrite::Set {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            flags: 0,
            cas,
        }
    }

    fn entry(state: &State, key: &str) -> (Option<KvEntry>, u64) {
        match state.query_kv(key, &KvRead::Entry) {
            (KvAnswer::Entries(mut e), index) => (e.pop(), index),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn set_creates_then_updates_and_an_identical_set_changes_nothing() {
        let mut s = State::new();
        s.apply_kv(5, &set("a", "1", None)).unwrap();
        let (e, index) = entry(&s, "a");
        let e = e.unwrap();
        assert_eq!((e.create_index, e.modify_index, index), (5, 5, 5));
        s.apply_kv(6, &set("a", "1", None)).unwrap();
        assert_eq!(entry(&s, "a").0.unwrap().modify_index, 5);
        assert_eq!(s.indexes().kv, 5);
        s.apply_kv(7, &set("a", "2", None)).unwrap();
        let e = entry(&s, "a").0.unwrap();
        assert_eq!((e.create_index, e.modify_index), (5, 7));
        assert_eq!(e.value, b"2");
    }

    #[test]
    fn cas_creates_only_when_absent_and_updates_only_at_its_index() {
        let mut s = State::new();
        s.apply_kv(3, &set("k", "x", Some(0))).unwrap();
        assert_eq!(
            s.apply_kv(4, &set("k", "y", Some(0))),
            Err(KvRefusal::SetStale("k".into()).into())
        );
        assert_eq!(
            s.apply_kv(4, &set("k", "y", Some(2))),
            Err(KvRefusal::SetStale("k".into()).into())
        );
        s.apply_kv(4, &set("k", "y", Some(3))).unwrap();
        assert_eq!(entry(&s, "k").0.unwrap().value, b"y");
        assert_eq!(
            s.apply_kv(5, &set("absent", "y", Some(9))),
            Err(KvRefusal::SetStale("absent".into()).into())
        );
    }

    #[test]
    fn deletes_leave_tombstones_that_keep_a_prefix_index_from_going_back() {
        let mut s = State::new();
        s.apply_kv(2, &set("app/a", "1", None)).unwrap();
        s.apply_kv(3, &set("app/b", "1", None)).unwrap();
        s.apply_kv(4, &set("other", "1", None)).unwrap();
        let (_, before) = s.query_kv("app/", &KvRead::Tree);
        assert_eq!(before, 3);
        s.apply_kv(
            5,
            &KvWrite::Delete {
                key: "app/b".into(),
                cas: None,
            },
        )
        .unwrap();
        let (answer, after) = s.query_kv("app/", &KvRead::Tree);
        assert_eq!(after, 5);
        assert!(matches!(answer, KvAnswer::Entries(e) if e.len() == 1));
        // An unrelated change does not move the prefix's index.
        s.apply_kv(6, &set("other", "2", None)).unwrap();
        assert_eq!(s.query_kv("app/", &KvRead::Tree).1, 5);
        // A missing key answers with the table's index.
        assert_eq!(entry(&s, "app/b").1, 6);
        // Reaping forgets the tombstone.
        s.apply_kv(7, &KvWrite::Reap { up_to: 5 }).unwrap();
        assert_eq!(s.query_kv("app/", &KvRead::Tree).1, 2);
    }

    #[test]
    fn cas_delete_needs_the_index_but_an_absent_key_counts_as_deleted() {
        let mut s = State::new();
        s.apply_kv(2, &set("k", "1", None)).unwrap();
        let del = |cas| KvWrite::Delete {
            key: "k".into(),
            cas: Some(cas),
        };
        assert_eq!(
            s.apply_kv(3, &del(0)),
            Err(KvRefusal::DeleteStale("k".into()).into())
        );
        s.apply_kv(3, &del(2)).unwrap();
        s.apply_kv(4, &del(2)).unwrap();
        assert_eq!(entry(&s, "k").0, None);
    }

    #[test]
    fn delete_tree_takes_every_key_with_the_prefix_and_only_those() {
        let mut s = State::new();
        for (i, k) in ["foo", "food", "fo", "bar"].iter().enumerate() {
            s.apply_kv(i as u64 + 1, &set(k, "v", None)).unwrap();
        }
        s.apply_kv(
            9,
            &KvWrite::DeleteTree {
                prefix: "foo".into(),
            },
        )
        .unwrap();
        let (answer, index) = s.query_kv("", &KvRead::Keys { separator: None });
        assert_eq!(answer, KvAnswer::Keys(vec!["bar".into(), "fo".into()]));
        assert_eq!(index, 9);
    }

    #[test]
    fn keys_are_cut_after_the_separator_past_the_prefix() {
        let mut s = State::new();
        for (i, k) in [
            "config/web/a",
            "config/web/b",
            "config/db",
            "config/x/y/z",
            "configs",
        ]
        .iter()
        .enumerate()
        {
            s.apply_kv(i as u64 + 1, &set(k, "v", None)).unwrap();
        }
        let read = KvRead::Keys {
            separator: Some("/".into()),
        };
        let (answer, _) = s.query_kv("config/", &read);
        assert_eq!(
            answer,
            KvAnswer::Keys(vec![
                "config/db".into(),
                "config/web/".into(),
                "config/x/".into()
            ])
        );
        let (answer, _) = s.query_kv("", &read);
        assert_eq!(
            answer,
            KvAnswer::Keys(vec!["config/".into(), "configs".into()])
        );
    }

    #[test]
    fn an_empty_store_answers_with_index_one() {
        let s = State::new();
        assert_eq!(entry(&s, "x"), (None, 1));
        assert_eq!(s.query_kv("", &KvRead::Tree).1, 1);
    }

    #[test]
    fn values_travel_as_base64() {
        let e = KvEntry {
            key: "k".into(),
            value: vec![0, 255, b'a'],
            flags: 42,
            session: None,
            lock_index: 0,
            create_index: 1,
            modify_index: 1,
        };
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains("\"AP9h\""), "{text}");
        assert_eq!(serde_json::from_str::<KvEntry>(&text).unwrap(), e);
    }
}
