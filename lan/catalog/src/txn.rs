//! KV transactions (`PUT /v1/txn`): up to [`TXN_MAX_OPS`] operations applied together
//! or not at all.
//!
//! A transaction that writes is one command in the Raft log. Its operations run in
//! order against the state as the earlier ones left it; one that fails does nothing and
//! the others still run, so that every failure is reported, and then everything the
//! transaction changed is put back from an undo log (the entries and tombstones of the
//! keys it touched, and the KV table's index). A transaction that only reads
//! (`get`, `get-tree`, `check-*`) is a read query instead and never enters the log.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::kv::{KvEntry, KvWrite, under};
use super::state::{ApplyError, State};

/// Most operations in one transaction (Consul's limit).
pub const TXN_MAX_OPS: usize = 64;

/// A KV verb of a transaction (Consul's `Verb` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxnVerb {
    /// `set`: a plain put.
    Set,
    /// `cas`: a put only if the key is absent (`Index` 0) or at `Index`.
    Cas,
    /// `lock`: acquire the key's lock for `Session`.
    Lock,
    /// `unlock`: release the key's lock held by `Session`.
    Unlock,
    /// `get`: read the key; fails when it is absent.
    Get,
    /// `get-tree`: read every key with the prefix.
    GetTree,
    /// `check-index`: fail unless the key is at `Index`.
    CheckIndex,
    /// `check-session`: fail unless `Session` holds the key.
    CheckSession,
    /// `check-not-exists`: fail if the key exists.
    CheckNotExists,
    /// `delete`: delete the key.
    Delete,
    /// `delete-tree`: delete every key with the prefix.
    DeleteTree,
    /// `delete-cas`: delete the key only if it is at `Index` (absent counts as deleted).
    DeleteCas,
}

impl TxnVerb {
    /// The verb Consul's JSON names.
    pub fn parse(name: &str) -> Option<TxnVerb> {
        Some(match name {
            "set" => TxnVerb::Set,
            "cas" => TxnVerb::Cas,
            "lock" => TxnVerb::Lock,
            "unlock" => TxnVerb::Unlock,
            "get" => TxnVerb::Get,
            "get-tree" => TxnVerb::GetTree,
            "check-index" => TxnVerb::CheckIndex,
            "check-session" => TxnVerb::CheckSession,
            "check-not-exists" => TxnVerb::CheckNotExists,
            "delete" => TxnVerb::Delete,
            "delete-tree" => TxnVerb::DeleteTree,
            "delete-cas" => TxnVerb::DeleteCas,
            _ => return None,
        })
    }

    /// Whether the verb only reads.
    pub fn reads_only(self) -> bool {
        matches!(
            self,
            TxnVerb::Get
                | TxnVerb::GetTree
                | TxnVerb::CheckIndex
                | TxnVerb::CheckSession
                | TxnVerb::CheckNotExists
        )
    }
}

/// One KV operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TxnOp {
    /// What to do.
    pub verb: TxnVerb,
    /// The key (or prefix, for the tree verbs).
    pub key: String,
    /// The value to write.
    #[serde(with = "super::kv::base64_bytes")]
    pub value: Vec<u8>,
    /// The flags to write.
    pub flags: u64,
    /// The index `cas`, `check-index` and `delete-cas` compare with.
    pub index: u64,
    /// The session of `lock`, `unlock` and `check-session`.
    pub session: Option<String>,
}

/// Why one operation failed (Consul's `TxnError`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnError {
    /// The operation's position, from 0.
    pub op_index: usize,
    /// Why, in Consul's words.
    pub what: String,
}

/// What a transaction produced: one result per entry it returns (writes and checks
/// return the entry without its value, `get` and `get-tree` with it), or every failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOutcome {
    /// Every operation succeeded.
    Done(Vec<KvEntry>),
    /// These failed; nothing was changed.
    Failed(Vec<TxnError>),
}

/// The state of the keys a transaction touched before it touched them.
#[derive(Default)]
struct Undo {
    kv_index: u64,
    keys: HashMap<String, (Option<Arc<KvEntry>>, Option<u64>)>,
}

impl State {
    /// Applies a transaction at `index`; on any failure, undoes every change it made.
    pub(super) fn apply_txn(
        &mut self,
        index: u64,
        ops: &[TxnOp],
    ) -> Result<TxnOutcome, ApplyError> {
        if ops.len() > TXN_MAX_OPS {
            return Err(ApplyError::Kv(too_many(ops.len())));
        }
        let mut undo = Undo {
            kv_index: self.indexes.kv,
            ..Undo::default()
        };
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (op_index, op) in ops.iter().enumerate() {
            let outcome = if op.verb.reads_only() {
                self.txn_read(op, &mut results)
            } else {
                self.remember(&mut undo, op);
                self.txn_write(index, op, &mut results)
            };
            if let Err(what) = outcome {
                errors.push(TxnError { op_index, what });
            }
        }
        if errors.is_empty() {
            return Ok(TxnOutcome::Done(results));
        }
        for (key, (entry, tombstone)) in undo.keys {
            // The session that holds the key now lets go; the one that held it before
            // holds it again.
            if let Some(Some(now)) = self.kv.entries.get(&key).map(|e| e.session.clone()) {
                self.unhold(&now, &key);
            }
            if let Some(before) = entry.as_ref().and_then(|e| e.session.clone()) {
                self.hold(&before, &key);
            }
            match entry {
                Some(e) => self.kv.entries.insert(key.clone(), e),
                None => self.kv.entries.remove(&key),
            };
            match tombstone {
                Some(t) => self.kv.tombstones.insert(key, t),
                None => self.kv.tombstones.remove(&key),
            };
        }
        self.indexes.kv = undo.kv_index;
        Ok(TxnOutcome::Failed(errors))
    }

    /// Answers a transaction of reads only.
    pub fn read_txn(&self, ops: &[TxnOp]) -> TxnOutcome {
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (op_index, op) in ops.iter().enumerate() {
            let outcome = if op.verb.reads_only() {
                self.txn_read(op, &mut results)
            } else {
                Err(format!(
                    "a write ({:?}) in a read-only transaction",
                    op.verb
                ))
            };
            if let Err(what) = outcome {
                errors.push(TxnError { op_index, what });
            }
        }
        if errors.is_empty() {
            TxnOutcome::Done(results)
        } else {
            TxnOutcome::Failed(errors)
        }
    }

    /// Records the state of every key `op` may change, the first time it is touched.
    fn remember(&self, undo: &mut Undo, op: &TxnOp) {
        let mut keep = |key: &str| {
            if !undo.keys.contains_key(key) {
                let before = (
                    self.kv.entries.get(key).cloned(),
                    self.kv.tombstones.get(key).copied(),
                );
                undo.keys.insert(key.to_owned(), before);
            }
        };
        if op.verb == TxnVerb::DeleteTree {
            for (key, _) in under(&self.kv.entries, &op.key) {
                keep(key);
            }
        } else {
            keep(&op.key);
        }
    }

    fn txn_read(&self, op: &TxnOp, results: &mut Vec<KvEntry>) -> Result<(), String> {
        let key = &op.key;
        let entry = self.kv.entries.get(key);
        match op.verb {
            TxnVerb::Get => match entry {
                Some(e) => results.push(KvEntry::clone(e)),
                None => return Err(format!("key {key:?} doesn't exist")),
            },
            TxnVerb::GetTree => {
                results.extend(under(&self.kv.entries, key).map(|(_, e)| KvEntry::clone(e)))
            }
            TxnVerb::CheckIndex => match entry {
                Some(e) if e.modify_index == op.index => results.push(without_value(e)),
                Some(e) => {
                    return Err(format!(
                        "failed index check for key {key:?}, current modify index {} != {}",
                        e.modify_index, op.index
                    ));
                }
                None => return Err(format!("failed to check index, key {key:?} doesn't exist")),
            },
            TxnVerb::CheckSession => match entry {
                Some(e) if e.session == op.session => results.push(without_value(e)),
                Some(e) => {
                    return Err(format!(
                        "failed session check for key {key:?}, current session {:?} != {:?}",
                        e.session.as_deref().unwrap_or(""),
                        op.session.as_deref().unwrap_or("")
                    ));
                }
                None => {
                    return Err(format!(
                        "failed to check session, key {key:?} doesn't exist"
                    ));
                }
            },
            TxnVerb::CheckNotExists => {
                if entry.is_some() {
                    return Err(format!("key {key:?} exists"));
                }
            }
            _ => return Err(format!("{:?} does not only read", op.verb)),
        }
        Ok(())
    }

    fn txn_write(
        &mut self,
        index: u64,
        op: &TxnOp,
        results: &mut Vec<KvEntry>,
    ) -> Result<(), String> {
        let key = op.key.clone();
        let write = match op.verb {
            TxnVerb::Set | TxnVerb::Cas => KvWrite::Set {
                key: key.clone(),
                value: op.value.clone(),
                flags: op.flags,
                cas: (op.verb == TxnVerb::Cas).then_some(op.index),
            },
            TxnVerb::Lock => KvWrite::Acquire {
                key: key.clone(),
                value: op.value.clone(),
                flags: op.flags,
                session: op.session.clone().unwrap_or_default(),
            },
            TxnVerb::Unlock => KvWrite::Release {
                key: key.clone(),
                value: op.value.clone(),
                flags: op.flags,
                session: op.session.clone().unwrap_or_default(),
            },
            TxnVerb::Delete => KvWrite::Delete {
                key: key.clone(),
                cas: None,
            },
            TxnVerb::DeleteCas => KvWrite::Delete {
                key: key.clone(),
                cas: Some(op.index),
            },
            TxnVerb::DeleteTree => KvWrite::DeleteTree {
                prefix: key.clone(),
            },
            _ => return Err(format!("{:?} does not write", op.verb)),
        };
        self.apply_kv(index, &write).map_err(|e| match e {
            ApplyError::KvRefused(r) => r.to_string(),
            other => other.to_string(),
        })?;
        if matches!(
            op.verb,
            TxnVerb::Set | TxnVerb::Cas | TxnVerb::Lock | TxnVerb::Unlock
        ) && let Some(e) = self.kv.entries.get(&key)
        {
            results.push(without_value(e));
        }
        Ok(())
    }
}

/// The text of a transaction over the limit (Consul's).
pub fn too_many(n: usize) -> String {
    format!("Transaction contains too many operations ({n} > {TXN_MAX_OPS})")
}

fn without_value(e: &KvEntry) -> KvEntry {
    KvEntry {
        value: Vec::new(),
        ..e.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvAnswer, KvRead};

    fn op(verb: TxnVerb, key: &str, value: &str, index: u64) -> TxnOp {
        TxnOp {
            verb,
            key: key.into(),
            value: value.as_bytes().to_vec(),
            flags: 0,
            index,
            session: None,
        }
    }

    fn keys(s: &State) -> Vec<String> {
        match s.query_kv("", &KvRead::Keys { separator: None }).0 {
            KvAnswer::Keys(k) => k,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_transaction_applies_all_its_writes_at_one_index() {
        let mut s = State::new();
        let out = s
            .apply_txn(
                5,
                &[
                    op(TxnVerb::Set, "a", "1", 0),
                    op(TxnVerb::Cas, "b", "2", 0),
                    op(TxnVerb::Get, "a", "", 0),
                ],
            )
            .unwrap();
        let TxnOutcome::Done(results) = out else {
            panic!("{out:?}")
        };
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].value, b"", "writes return no value");
        assert_eq!(results[2].value, b"1", "get returns the value");
        assert!(results.iter().all(|e| e.modify_index == 5));
        assert_eq!(keys(&s), ["a", "b"]);
    }

    #[test]
    fn a_failed_operation_undoes_everything_and_every_failure_is_reported() {
        let mut s = State::new();
        s.apply_kv(
            2,
            &KvWrite::Set {
                key: "keep".into(),
                value: b"old".to_vec(),
                flags: 0,
                cas: None,
            },
        )
        .unwrap();
        s.apply_kv(
            3,
            &KvWrite::Set {
                key: "gone".into(),
                value: b"x".to_vec(),
                flags: 0,
                cas: None,
            },
        )
        .unwrap();
        let before = s.to_snapshot();
        let out = s
            .apply_txn(
                9,
                &[
                    op(TxnVerb::Set, "keep", "new", 0),
                    op(TxnVerb::Delete, "gone", "", 0),
                    op(TxnVerb::Cas, "keep", "x", 2),
                    op(TxnVerb::DeleteTree, "", "", 0),
                    op(TxnVerb::CheckNotExists, "nothing", "", 0),
                    op(TxnVerb::Get, "missing", "", 0),
                ],
            )
            .unwrap();
        assert_eq!(
            out,
            TxnOutcome::Failed(vec![
                TxnError {
                    op_index: 2,
                    what: "failed to set key \"keep\", index is stale".into()
                },
                TxnError {
                    op_index: 5,
                    what: "key \"missing\" doesn't exist".into()
                },
            ])
        );
        assert_eq!(s.to_snapshot(), before, "nothing changed");
    }

    #[test]
    fn checks_compare_indexes_and_existence() {
        let mut s = State::new();
        s.apply_txn(4, &[op(TxnVerb::Set, "k", "v", 0)]).unwrap();
        let read = s.read_txn(&[
            op(TxnVerb::CheckIndex, "k", "", 4),
            op(TxnVerb::CheckIndex, "k", "", 3),
            op(TxnVerb::CheckNotExists, "k", "", 0),
            op(TxnVerb::CheckIndex, "x", "", 1),
        ]);
        let TxnOutcome::Failed(errors) = read else {
            panic!("{read:?}")
        };
        let what: Vec<&str> = errors.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "failed index check for key \"k\", current modify index 4 != 3",
                "key \"k\" exists",
                "failed to check index, key \"x\" doesn't exist",
            ]
        );
    }

    #[test]
    fn too_many_operations_are_refused_whole() {
        let mut s = State::new();
        let ops = vec![op(TxnVerb::Set, "k", "v", 0); 65];
        assert_eq!(
            s.apply_txn(1, &ops),
            Err(ApplyError::Kv(
                "Transaction contains too many operations (65 > 64)".into()
            ))
        );
        assert!(keys(&s).is_empty());
    }
}
