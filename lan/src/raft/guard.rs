//! Raft messages are checked before openraft believes them.
//!
//! openraft trusts what its network hands it: a vote whose term is near `u64::MAX`, once
//! accepted, is saved and makes the next election overflow (`term + 1`), which stops
//! Raft on every server that saw it, for good (the term is on disk). Terms only grow by
//! one per election, so a term far ahead of this server's is not a real one: a message
//! whose term is more than [`MAX_TERM_STEP`] ahead of the term this server is in is
//! refused, as are log positions past [`MAX_INDEX`], entries that do not follow each
//! other, log IDs from a term after the sender's own, and snapshot chunks that would
//! place data past [`MAX_SNAPSHOT_BYTES`]. The same checks apply to the answers of the
//! servers this one calls. Refusals are logged with the peer by the caller.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{LogId, Vote};

use super::{NodeId, TypeConfig};

/// How far ahead of this server's term a message's term may be. Terms grow by one per
/// election; a server cut off for a long time campaigns again and again, but would need
/// more than sixteen million elections (weeks of back-to-back ones) to get this far.
pub(crate) const MAX_TERM_STEP: u64 = 1 << 24;
/// Largest log index believed: no log gets near it, and arithmetic on it cannot overflow.
pub(crate) const MAX_INDEX: u64 = 1 << 62;
/// Largest snapshot received, in bytes (the catalog's snapshot is held in memory).
pub(crate) const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// A message refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(String);

impl Refused {
    /// A refusal saying `why`.
    pub(crate) fn new(why: String) -> Refused {
        Refused(why)
    }
}

/// A message for the server `me`: one for another server (one that had this server's
/// address or name under an older Raft ID) is refused. Believing it would hand this
/// server another's log.
pub(crate) fn addressed(to: NodeId, me: NodeId) -> Result<(), Refused> {
    if to == me {
        Ok(())
    } else {
        Err(Refused(format!(
            "the message is for raft server {to}; this is raft server {me}"
        )))
    }
}

fn term_of(vote: &Vote<NodeId>) -> u64 {
    vote.leader_id.term
}

/// A vote (in a request or an answer) whose term this server can believe.
pub(crate) fn vote(vote: &Vote<NodeId>, current_term: u64) -> Result<(), Refused> {
    let term = term_of(vote);
    if term > current_term.saturating_add(MAX_TERM_STEP) {
        return Err(Refused(format!(
            "term {term} is more than {MAX_TERM_STEP} ahead of this server's term {current_term}"
        )));
    }
    Ok(())
}

/// A log ID a sender in `term` can have.
fn log_id(what: &str, id: &LogId<NodeId>, term: u64) -> Result<(), Refused> {
    if id.leader_id.term > term {
        return Err(Refused(format!(
            "{what} {id} is from term {}, after the sender's term {term}",
            id.leader_id.term
        )));
    }
    if id.index > MAX_INDEX {
        return Err(Refused(format!(
            "{what} {id} has an index past {MAX_INDEX}"
        )));
    }
    Ok(())
}

/// Checks an AppendEntries request against this server's `current_term`.
pub(crate) fn append_entries(
    request: &AppendEntriesRequest<TypeConfig>,
    current_term: u64,
) -> Result<(), Refused> {
    vote(&request.vote, current_term)?;
    let term = term_of(&request.vote);
    if let Some(prev) = &request.prev_log_id {
        log_id("prev_log_id", prev, term)?;
    }
    if let Some(commit) = &request.leader_commit {
        log_id("leader_commit", commit, term)?;
    }
    let first = request.prev_log_id.map_or(0, |p| p.index + 1);
    let mut last_term = request.prev_log_id.map_or(0, |p| p.leader_id.term);
    for (expected, entry) in (first..).zip(&request.entries) {
        log_id("entry", &entry.log_id, term)?;
        if entry.log_id.index != expected {
            return Err(Refused(format!(
                "entry {} does not follow the one before it (expected index {expected})",
                entry.log_id
            )));
        }
        if entry.log_id.leader_id.term < last_term {
            return Err(Refused(format!(
                "entry {} goes back to an earlier term",
                entry.log_id
            )));
        }
        last_term = entry.log_id.leader_id.term;
    }
    Ok(())
}

/// The log positions an AppendEntries speaks of (its `prev_log_id`, then its entries).
fn positions(request: &AppendEntriesRequest<TypeConfig>) -> impl Iterator<Item = &LogId<NodeId>> {
    request
        .prev_log_id
        .iter()
        .chain(request.entries.iter().map(|e| &e.log_id))
}

/// The indexes below this server's committed one that an AppendEntries speaks of: the
/// log IDs this server holds there are what [`agrees_with_committed`] compares it with.
pub(crate) fn below_committed(
    request: &AppendEntriesRequest<TypeConfig>,
    committed: Option<LogId<NodeId>>,
) -> Option<std::ops::RangeInclusive<u64>> {
    let committed = committed?.index;
    let below = || {
        positions(request)
            .map(|id| id.index)
            .filter(|&i| i < committed)
    };
    Some(below().min()?..=below().max()?)
}

/// Checks that what an AppendEntries says of positions within this server's committed
/// log agrees with it. Committed entries are the same on every server and every leader
/// holds them all, so a real leader never sends a log ID there that this server does not
/// hold: the one at the committed index must be the committed one, the ones below it
/// those in `local` (this server's log IDs over [`below_committed`]; an index missing
/// from it is in a snapshot, where only a log ID after the committed one can be told
/// wrong). openraft takes this on trust: it would cut committed entries from its log,
/// and its debug builds stop on it.
pub(crate) fn agrees_with_committed(
    request: &AppendEntriesRequest<TypeConfig>,
    committed: Option<LogId<NodeId>>,
    local: &[LogId<NodeId>],
) -> Result<(), Refused> {
    let Some(committed) = committed else {
        return Ok(());
    };
    for id in positions(request).filter(|id| id.index <= committed.index) {
        let ours = if id.index == committed.index {
            Some(&committed)
        } else {
            local
                .binary_search_by_key(&id.index, |l| l.index)
                .ok()
                .map(|i| &local[i])
        };
        let agrees = match ours {
            Some(ours) => ours == id,
            None => *id <= committed,
        };
        if !agrees {
            return Err(Refused(format!(
                "{id} contradicts this server's committed log (committed up to {committed})"
            )));
        }
    }
    Ok(())
}

/// Checks a vote request against this server's `current_term`.
pub(crate) fn vote_request(
    request: &VoteRequest<NodeId>,
    current_term: u64,
) -> Result<(), Refused> {
    vote(&request.vote, current_term)?;
    if let Some(last) = &request.last_log_id {
        log_id("last_log_id", last, term_of(&request.vote))?;
    }
    Ok(())
}

/// Checks a snapshot chunk against this server's `current_term`.
pub(crate) fn install_snapshot(
    request: &InstallSnapshotRequest<TypeConfig>,
    current_term: u64,
) -> Result<(), Refused> {
    vote(&request.vote, current_term)?;
    if let Some(last) = &request.meta.last_log_id {
        log_id("snapshot last_log_id", last, term_of(&request.vote))?;
    }
    let end = request.offset.saturating_add(request.data.len() as u64);
    if end > MAX_SNAPSHOT_BYTES {
        return Err(Refused(format!(
            "snapshot chunk ends at byte {end}, past the limit of {MAX_SNAPSHOT_BYTES}"
        )));
    }
    Ok(())
}

/// What the snapshot chunks this server accepted add up to, so that the last chunk of a
/// snapshot can be checked before openraft installs it: openraft takes a snapshot whose
/// data the state machine cannot read as fatal, and stops Raft. The chunks are written
/// as openraft writes them (a chunk at offset 0 starts a snapshot, the others are written
/// at their offset into the snapshot of the same ID).
#[derive(Default)]
pub(crate) struct SnapshotShadow(std::sync::Mutex<Option<(String, std::io::Cursor<Vec<u8>>)>>);

impl SnapshotShadow {
    /// Called before `request` goes to openraft: a final chunk is refused unless the
    /// snapshot it completes passes `check` (the state machine's reading of its data).
    pub(crate) fn before(
        &self,
        request: &InstallSnapshotRequest<TypeConfig>,
        check: impl FnOnce(&[u8]) -> Result<(), String>,
    ) -> Result<(), Refused> {
        if !request.done {
            return Ok(());
        }
        let id = &request.meta.snapshot_id;
        let mut shadow = self.lock();
        let mut data = match shadow.take() {
            _ if request.offset == 0 => std::io::Cursor::new(Vec::new()),
            Some((held, data)) if held == *id => data,
            _ => {
                return Err(Refused(format!(
                    "the last chunk of snapshot {id} arrived without the chunks before it"
                )));
            }
        };
        write_at(&mut data, request.offset, &request.data);
        check(data.get_ref()).map_err(|e| Refused(format!("snapshot {id} cannot be read: {e}")))
    }

    /// Called once openraft has accepted `request`.
    pub(crate) fn accepted(&self, request: &InstallSnapshotRequest<TypeConfig>) {
        if request.done {
            return;
        }
        let id = &request.meta.snapshot_id;
        let mut shadow = self.lock();
        if request.offset == 0 {
            *shadow = Some((id.clone(), std::io::Cursor::new(Vec::new())));
        }
        match shadow.as_mut() {
            Some((held, data)) if held == id => write_at(data, request.offset, &request.data),
            // openraft refuses a chunk of another snapshot too.
            _ => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, std::io::Cursor<Vec<u8>>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes `chunk` at `offset` (bounded by [`install_snapshot`]), filling a gap with zeros.
fn write_at(data: &mut std::io::Cursor<Vec<u8>>, offset: u64, chunk: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    // Writing into a Vec cannot fail short of running out of memory.
    let _ = data.seek(SeekFrom::Start(offset));
    let _ = data.write_all(chunk);
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    fn vote_at(term: u64) -> Vote<NodeId> {
        Vote::new_committed(term, 123)
    }

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 0), index)
    }

    fn append(
        term: u64,
        prev: Option<LogId<NodeId>>,
        entries: &[LogId<NodeId>],
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: vote_at(term),
            prev_log_id: prev,
            entries: entries
                .iter()
                .map(|l| Entry {
                    log_id: *l,
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: prev,
        }
    }

    #[test]
    fn the_poisoned_append_entries_is_refused() {
        // The frame of the finding: a committed vote at u64::MAX - 1, no entries.
        let poisoned = append(u64::MAX - 1, None, &[]);
        assert!(append_entries(&poisoned, 3).is_err());
        assert!(append_entries(&append(1_000_000_000, None, &[]), 3).is_err());
        // A real leader a few terms ahead, with entries that follow on, is believed.
        let real = append(7, Some(id(3, 10)), &[id(3, 11), id(7, 12)]);
        assert_eq!(append_entries(&real, 3), Ok(()));
        assert_eq!(
            append_entries(&append(3 + MAX_TERM_STEP, None, &[]), 3),
            Ok(())
        );
    }

    #[test]
    fn log_positions_that_cannot_be_are_refused() {
        let cases = [
            ("an entry from a later term", append(7, None, &[id(8, 0)])),
            ("a gap", append(7, Some(id(3, 10)), &[id(3, 12)])),
            ("terms going back", append(7, Some(id(5, 10)), &[id(4, 11)])),
            (
                "an index past the limit",
                append(7, Some(id(3, MAX_INDEX + 1)), &[]),
            ),
            (
                "a prev_log_id after the vote",
                append(7, Some(id(9, 1)), &[]),
            ),
        ];
        for (what, request) in cases {
            assert!(append_entries(&request, 7).is_err(), "{what} was believed");
        }
    }

    #[test]
    fn a_log_id_that_contradicts_the_committed_log_is_refused() {
        let lid = |term, node, index| LogId::new(CommittedLeaderId::new(term, node), index);
        let committed = Some(lid(3, 1, 10));
        // This server's log: index 4 is in a snapshot, 5..=9 are held.
        let local = [
            lid(2, 7, 5),
            lid(2, 7, 6),
            lid(3, 1, 7),
            lid(3, 1, 8),
            lid(3, 1, 9),
        ];
        let at = |term, node, index| {
            let mut r = append(5, None, &[]);
            r.prev_log_id = Some(lid(term, node, index));
            r
        };
        let check = |r: &AppendEntriesRequest<TypeConfig>| {
            let range = below_committed(r, committed);
            let held: Vec<_> = local
                .iter()
                .filter(|l| range.as_ref().is_some_and(|r| r.contains(&l.index)))
                .copied()
                .collect();
            agrees_with_committed(r, committed, &held)
        };
        assert_eq!(below_committed(&at(3, 1, 10), committed), None);
        assert_eq!(below_committed(&at(2, 7, 5), committed), Some(5..=5));
        assert_eq!(check(&at(3, 1, 10)), Ok(()));
        assert_eq!(check(&at(2, 7, 6)), Ok(()));
        assert_eq!(
            check(&at(1, 1, 4)),
            Ok(()),
            "in the snapshot, before the commit"
        );
        assert_eq!(check(&at(5, 2, 12)), Ok(()), "past the commit");
        assert!(
            check(&at(3, 2, 10)).is_err(),
            "another leader at the commit"
        );
        assert!(check(&at(3, 0, 10)).is_err(), "a lesser one too");
        assert!(check(&at(2, 6, 6)).is_err(), "not the one held below it");
        assert!(check(&at(4, 1, 4)).is_err(), "a later term in the snapshot");
        let overlapping = |last| {
            let entries = [lid(3, 1, 7), lid(3, 1, 8), last, lid(3, 1, 10)];
            append(5, Some(lid(2, 7, 6)), &entries)
        };
        assert!(
            check(&overlapping(lid(3, 2, 9))).is_err(),
            "an entry that differs"
        );
        assert_eq!(check(&overlapping(lid(3, 1, 9))), Ok(()));
        assert_eq!(agrees_with_committed(&at(4, 1, 9), None, &[]), Ok(()));
    }

    #[test]
    fn votes_and_snapshots_are_checked_too() {
        let request = VoteRequest::new(vote_at(u64::MAX), Some(id(1, 1)));
        assert!(vote_request(&request, 1).is_err());
        let request = VoteRequest::new(vote_at(2), Some(id(3, 1)));
        assert!(vote_request(&request, 1).is_err(), "a log after the vote");
        assert_eq!(
            vote_request(&VoteRequest::new(vote_at(2), Some(id(1, 1))), 1),
            Ok(())
        );
        let chunk = |offset: u64| InstallSnapshotRequest::<TypeConfig> {
            vote: vote_at(2),
            meta: Default::default(),
            offset,
            data: vec![0; 16],
            done: false,
        };
        assert_eq!(install_snapshot(&chunk(0), 2), Ok(()));
        assert!(install_snapshot(&chunk(MAX_SNAPSHOT_BYTES), 2).is_err());
        assert!(install_snapshot(&chunk(u64::MAX), 2).is_err());
    }

    #[test]
    fn the_last_snapshot_chunk_is_refused_when_the_whole_cannot_be_read() {
        let chunk = |id: &str, offset: u64, data: &[u8], done: bool| {
            let meta = openraft::SnapshotMeta::<NodeId, catalog::ServerNode> {
                snapshot_id: id.into(),
                ..Default::default()
            };
            InstallSnapshotRequest::<TypeConfig> {
                vote: vote_at(2),
                meta,
                offset,
                data: data.to_vec(),
                done,
            }
        };
        let is_hello = |data: &[u8]| {
            if data == b"hello" {
                Ok(())
            } else {
                Err(format!("{} bytes that are not hello", data.len()))
            }
        };
        let shadow = SnapshotShadow::default();
        for c in [chunk("a", 0, b"he", false), chunk("a", 2, b"l", false)] {
            shadow.before(&c, is_hello).unwrap();
            shadow.accepted(&c);
        }
        assert_eq!(shadow.before(&chunk("a", 3, b"lo", true), is_hello), Ok(()));
        // A chunk of another snapshot, then the end of the first: nothing before it.
        let other = chunk("b", 0, b"xx", false);
        shadow.accepted(&other);
        assert!(
            shadow
                .before(&chunk("a", 2, b"llo", true), is_hello)
                .is_err()
        );
        // One chunk that is the whole snapshot.
        assert_eq!(
            shadow.before(&chunk("c", 0, b"hello", true), is_hello),
            Ok(())
        );
        assert!(
            shadow
                .before(&chunk("c", 0, b"{}", true), is_hello)
                .is_err()
        );
        // A chunk written again at its offset replaces what was there.
        for c in [chunk("d", 0, b"hexxo", false), chunk("d", 2, b"ll", false)] {
            shadow.accepted(&c);
        }
        assert_eq!(shadow.before(&chunk("d", 5, b"", true), is_hello), Ok(()));
    }
}
