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
}
