//! What changed under a prefix after an index ([`KvRead::Changes`]): KV replication's
//! incremental read of its source.
//!
//! The entries modified after the index and the tombstones of deletions after it are
//! every change since, as long as no tombstone after the index is gone. The table keeps
//! the newest deletion index whose tombstones are gone (reaped after
//! [`TOMBSTONE_TTL`], or lost to a snapshot restore: Consul's
//! tombstone reap index), so it can say when the list would be incomplete. The answer
//! also carries the KV table's index it is as of: every later change has a higher one,
//! so the reader asks next from there, even when nothing under its prefix changed.

use serde::{Deserialize, Serialize};

use super::{KvEntry, under};
use crate::state::State;
// For the links above and below.
#[cfg(doc)]
use super::{KvRead, TOMBSTONE_TTL};

/// The most changes one [`KvRead::Changes`] answer lists. Past this many the reader is
/// told to compare the whole prefix instead ([`Unlisted::TooMany`]): a list that long
/// saves little over a full read, and the answer must stay well under what one answer
/// between datacenters may carry.
pub const KV_CHANGES_MAX: usize = 4096;

/// The most bytes (keys and values) one [`KvRead::Changes`] answer lists, for the same
/// reason: a few large values must not make one answer of hundreds of MiB (values travel
/// as base64, a third larger).
pub const KV_CHANGES_MAX_BYTES: usize = 8 * 1024 * 1024;

/// What changed under a prefix after an index: the answer to [`KvRead::Changes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvChanges {
    /// Every change after the index, oldest first (by index, then key). A key appears at
    /// most once, with its newest state.
    Listed {
        /// The changes.
        changes: Vec<KvChange>,
        /// The KV table's index when they were listed: every later change under the
        /// prefix will have a higher index, so a reader that applied `changes` may ask
        /// next for what changed after this one.
        kv_index: u64,
    },
    /// Every entry under the prefix, in key order (the answer when no `since` was
    /// given): the reader has no earlier state to go from and compares its copy with
    /// this. Not bounded by [`KV_CHANGES_MAX`], as a [`KvRead::Tree`] is not.
    Whole {
        /// The entries.
        entries: Vec<KvEntry>,
        /// The KV table's index they are as of: every later change under the prefix
        /// will have a higher index.
        kv_index: u64,
    },
    /// The changes cannot be listed; the reader must compare the whole prefix (ask
    /// again without `since`).
    Unlisted(Unlisted),
}

/// One change in [`KvChanges::Listed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvChange {
    /// The key was created or changed; this is its entry now.
    Set(KvEntry),
    /// The key was deleted at `index`.
    Deleted {
        /// The key.
        key: String,
        /// The index of its deletion.
        index: u64,
    },
}

impl KvChange {
    /// The key changed.
    pub fn key(&self) -> &str {
        match self {
            KvChange::Set(e) => &e.key,
            KvChange::Deleted { key, .. } => key,
        }
    }

    /// The index of the change.
    pub fn index(&self) -> u64 {
        match self {
            KvChange::Set(e) => e.modify_index,
            KvChange::Deleted { index, .. } => *index,
        }
    }
}

/// Why [`KvRead::Changes`] could not list the changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Unlisted {
    /// Tombstones of deletions up to `up_to` are gone (reaped after
    /// [`TOMBSTONE_TTL`], or a snapshot was restored at `up_to`), and `up_to` is after
    /// the index asked about: some deletions may be missing.
    #[error("tombstones up to index {up_to} are reaped")]
    Reaped {
        /// The newest deletion index whose tombstones are gone.
        up_to: u64,
    },
    /// The KV table's index is before the index asked about: this catalog is behind the
    /// one the reader last saw, or has another history (rebuilt, restored elsewhere).
    #[error("the KV index {kv_index} is before the index asked about")]
    Behind {
        /// The KV table's index.
        kv_index: u64,
    },
    /// More changed than one answer lists ([`KV_CHANGES_MAX`], [`KV_CHANGES_MAX_BYTES`]).
    #[error("too many changes for one answer")]
    TooMany,
}

impl State {
    /// What changed under `prefix` after `since`, and the newest `ModifyIndex` of an
    /// entry under it (for the prefix's index).
    pub(super) fn kv_changes(&self, prefix: &str, since: u64) -> (KvChanges, Option<u64>) {
        let newest_entry = || {
            under(&self.kv.entries, prefix)
                .map(|(_, e)| e.modify_index)
                .max()
        };
        if self.kv.reaped > since {
            let why = Unlisted::Reaped {
                up_to: self.kv.reaped,
            };
            return (KvChanges::Unlisted(why), newest_entry());
        }
        if self.indexes.kv < since {
            let why = Unlisted::Behind {
                kv_index: self.indexes.kv,
            };
            return (KvChanges::Unlisted(why), newest_entry());
        }
        let mut changes = Vec::new();
        let mut bytes = 0usize;
        let mut newest = None;
        let mut list = |change: KvChange| {
            bytes = bytes
                .saturating_add(change.key().len())
                .saturating_add(match &change {
                    KvChange::Set(e) => e.value.len(),
                    KvChange::Deleted { .. } => 0,
                });
            changes.push(change);
            changes.len() <= KV_CHANGES_MAX && bytes <= KV_CHANGES_MAX_BYTES
        };
        for (_, e) in under(&self.kv.entries, prefix) {
            newest = newest.max(Some(e.modify_index));
            if e.modify_index > since && !list(KvChange::Set(KvEntry::clone(e))) {
                return (KvChanges::Unlisted(Unlisted::TooMany), newest_entry());
            }
        }
        for (key, &index) in under(&self.kv.tombstones, prefix) {
            let deleted = || KvChange::Deleted {
                key: key.clone(),
                index,
            };
            if index > since && !list(deleted()) {
                return (KvChanges::Unlisted(Unlisted::TooMany), newest);
            }
        }
        // A key is either live or a tombstone, never both, so (index, key) orders the
        // changes totally.
        changes.sort_by(|a, b| (a.index(), a.key()).cmp(&(b.index(), b.key())));
        let listed = KvChanges::Listed {
            changes,
            kv_index: self.indexes.kv,
        };
        (listed, newest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KV_MAX_VALUE_SIZE, KvAnswer, KvRead, KvWrite};

    fn set(key: &str, value: &str, cas: Option<u64>) -> KvWrite {
        KvWrite::Set {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            flags: 0,
            cas,
        }
    }

    fn changes(state: &State, prefix: &str, since: u64) -> (KvChanges, u64) {
        match state.query_kv(prefix, &KvRead::Changes { since: Some(since) }) {
            (KvAnswer::Changes(c), index) => (c, index),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// `(key, index, Some(value))` for a set, `(key, index, None)` for a deletion.
    fn listed(c: &KvChanges) -> Vec<(&str, u64, Option<&[u8]>)> {
        match c {
            KvChanges::Listed { changes, .. } => changes
                .iter()
                .map(|c| match c {
                    KvChange::Set(e) => (e.key.as_str(), e.modify_index, Some(&e.value[..])),
                    KvChange::Deleted { key, index } => (key.as_str(), *index, None),
                })
                .collect(),
            other => panic!("not a list: {other:?}"),
        }
    }

    fn delete(key: &str) -> KvWrite {
        KvWrite::Delete {
            key: key.into(),
            cas: None,
        }
    }

    #[test]
    fn changes_list_what_was_set_and_deleted_under_the_prefix_after_the_index_in_order() {
        let mut s = State::new();
        s.apply_kv(2, &set("app/a", "1", None)).unwrap();
        s.apply_kv(3, &set("app/b", "1", None)).unwrap();
        s.apply_kv(4, &set("app/c", "1", None)).unwrap();
        s.apply_kv(5, &set("other", "1", None)).unwrap();
        let (before, index) = changes(&s, "app/", 4);
        assert_eq!(listed(&before), []);
        assert_eq!(index, 4, "the prefix's index, as a tree read has");
        s.apply_kv(6, &set("app/c", "2", None)).unwrap();
        s.apply_kv(7, &delete("app/a")).unwrap();
        s.apply_kv(8, &set("other", "2", None)).unwrap();
        s.apply_kv(
            9,
            &KvWrite::DeleteTree {
                prefix: "app/b".into(),
            },
        )
        .unwrap();
        // Deleted then created again: listed once, as it is now.
        s.apply_kv(10, &delete("app/c")).unwrap();
        s.apply_kv(11, &set("app/c", "3", None)).unwrap();
        s.apply_kv(12, &set("app/d", "1", None)).unwrap();
        let (after, index) = changes(&s, "app/", 4);
        assert_eq!(
            listed(&after),
            [
                ("app/a", 7, None),
                ("app/b", 9, None),
                ("app/c", 11, Some(&b"3"[..])),
                ("app/d", 12, Some(&b"1"[..])),
            ]
        );
        assert_eq!(index, 12);
        assert!(matches!(after, KvChanges::Listed { kv_index: 12, .. }));
        // From a later index, only what came after it.
        assert_eq!(
            listed(&changes(&s, "app/", 9).0),
            [
                ("app/c", 11, Some(&b"3"[..])),
                ("app/d", 12, Some(&b"1"[..]))
            ]
        );
        // A change elsewhere moves the KV index the reader may go on from, not the
        // prefix's index.
        s.apply_kv(13, &set("other", "3", None)).unwrap();
        let (c, index) = changes(&s, "app/", 12);
        assert_eq!((listed(&c), index), (vec![], 12));
        assert!(matches!(c, KvChanges::Listed { kv_index: 13, .. }));
    }

    #[test]
    fn without_an_index_the_whole_prefix_comes_with_the_kv_index() {
        let mut s = State::new();
        s.apply_kv(2, &set("app/a", "1", None)).unwrap();
        s.apply_kv(3, &set("app/b", "1", None)).unwrap();
        s.apply_kv(4, &delete("app/a")).unwrap();
        s.apply_kv(5, &set("other", "1", None)).unwrap();
        s.apply_kv(6, &KvWrite::Reap { up_to: 4 }).unwrap();
        let read = KvRead::Changes { since: None };
        let (answer, index) = s.query_kv("app/", &read);
        let (tree, tree_index) = s.query_kv("app/", &KvRead::Tree);
        assert_eq!(index, tree_index);
        let KvAnswer::Entries(entries) = tree else {
            panic!("{tree:?}")
        };
        assert_eq!(
            answer,
            KvAnswer::Changes(KvChanges::Whole {
                entries,
                kv_index: 5
            })
        );
    }

    #[test]
    fn changes_after_reaped_tombstones_are_unlisted() {
        let mut s = State::new();
        s.apply_kv(2, &set("app/a", "1", None)).unwrap();
        s.apply_kv(3, &set("app/b", "1", None)).unwrap();
        s.apply_kv(4, &delete("app/a")).unwrap();
        s.apply_kv(5, &set("app/b", "2", None)).unwrap();
        s.apply_kv(6, &KvWrite::Reap { up_to: 4 }).unwrap();
        // The deletion at 4 is forgotten: after 3 it would be missing.
        assert_eq!(
            changes(&s, "app/", 3).0,
            KvChanges::Unlisted(Unlisted::Reaped { up_to: 4 })
        );
        // After 4 nothing is missing.
        assert_eq!(
            listed(&changes(&s, "app/", 4).0),
            [("app/b", 5, Some(&b"2"[..]))]
        );
        // An older reap does not lower the mark.
        s.apply_kv(7, &KvWrite::Reap { up_to: 2 }).unwrap();
        assert!(matches!(
            changes(&s, "app/", 3).0,
            KvChanges::Unlisted(Unlisted::Reaped { up_to: 4 })
        ));
    }

    #[test]
    fn changes_after_an_index_the_store_has_not_reached_are_unlisted() {
        let mut s = State::new();
        s.apply_kv(2, &set("app/a", "1", None)).unwrap();
        assert_eq!(
            changes(&s, "app/", 9).0,
            KvChanges::Unlisted(Unlisted::Behind { kv_index: 2 })
        );
    }

    #[test]
    fn too_many_changes_are_unlisted() {
        let mut s = State::new();
        for i in 0..=KV_CHANGES_MAX as u64 {
            s.apply_kv(i + 1, &set(&format!("app/{i}"), "v", None))
                .unwrap();
        }
        assert_eq!(
            changes(&s, "app/", 0).0,
            KvChanges::Unlisted(Unlisted::TooMany)
        );
        assert!(matches!(changes(&s, "app/", 1).0, KvChanges::Listed { .. }));
        let mut s = State::new();
        let big = "x".repeat(KV_MAX_VALUE_SIZE);
        for i in 0..KV_CHANGES_MAX_BYTES / KV_MAX_VALUE_SIZE {
            s.apply_kv(i as u64 + 1, &set(&format!("app/{i}"), &big, None))
                .unwrap();
        }
        assert_eq!(
            changes(&s, "app/", 0).0,
            KvChanges::Unlisted(Unlisted::TooMany),
            "the keys push it over the byte bound"
        );
        assert!(matches!(changes(&s, "app/", 1).0, KvChanges::Listed { .. }));
    }

    #[test]
    fn a_restored_snapshot_unlists_the_changes_before_it_and_snapshots_keep_the_mark() {
        let mut s = State::new();
        s.apply_kv(2, &set("app/a", "1", None)).unwrap();
        let old = s.to_snapshot();
        s.apply_kv(3, &set("app/b", "1", None)).unwrap();
        // app/b vanishes without a tombstone.
        s.apply(4, &crate::Command::Restore(crate::PackedSnapshot::new(old)))
            .unwrap();
        assert_eq!(
            changes(&s, "app/", 3),
            (KvChanges::Unlisted(Unlisted::Reaped { up_to: 4 }), 4),
            "answered past the index asked about, so a blocking read of it returns"
        );
        assert_eq!(listed(&changes(&s, "app/", 4).0), []);
        let copy = State::from_snapshot(s.to_snapshot());
        assert_eq!(copy.kv.reaped, 4);
        // A snapshot from before the mark was kept: its KV index stands in.
        let mut text = serde_json::to_value(s.to_snapshot()).unwrap();
        text.as_object_mut().unwrap().remove("kv_reaped");
        let older: crate::Snapshot = serde_json::from_value(text).unwrap();
        assert_eq!(State::from_snapshot(older).kv.reaped, s.indexes().kv);
    }
}
