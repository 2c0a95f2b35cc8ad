//! Raft's messages between servers, and how a server takes one in.
//!
//! Each message names the Raft ID of the server it is for (`to`): a server refuses a
//! message for another, one that now answers at an address or name an old ID had. A
//! message is checked ([`super::guard`]) before openraft sees it, since openraft trusts
//! what its network hands it.
//!
//! The messages travel as requests of the server port: `crate::server` wraps each in its
//! request enum, variant for variant with the same names, so that a frame reads
//! `{"id": 1, "body": {"AppendEntries": {"to": 2, "request": {…}}}}`. Sending goes
//! through [`super::network`], receiving through [`Consensus::receive`]; neither knows
//! the server port's other requests.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::{Consensus, NodeId, TypeConfig, guard};

/// Raft: replicate entries or heartbeat.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AppendEntries {
    /// The Raft ID of the server it is for.
    pub(crate) to: NodeId,
    /// The message.
    pub(crate) request: AppendEntriesRequest<TypeConfig>,
}

/// Raft: ask for a vote.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Vote {
    /// The Raft ID of the server it is for.
    pub(crate) to: NodeId,
    /// The message.
    pub(crate) request: VoteRequest<NodeId>,
}

/// Raft: a snapshot chunk.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InstallSnapshot {
    /// The Raft ID of the server it is for.
    pub(crate) to: NodeId,
    /// The message.
    pub(crate) request: InstallSnapshotRequest<TypeConfig>,
}

/// The answer to an [`AppendEntries`]: openraft's, or the error the receiving Raft
/// returned.
pub(crate) type AppendEntriesAnswer = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>;
/// The answer to a [`Vote`].
pub(crate) type VoteAnswer = Result<VoteResponse<NodeId>, RaftError<NodeId>>;
/// The answer to an [`InstallSnapshot`].
pub(crate) type InstallSnapshotAnswer =
    Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

/// One of Raft's messages.
#[derive(Debug)]
pub(crate) enum Message {
    /// Replicate entries or heartbeat.
    AppendEntries(AppendEntries),
    /// Ask for a vote.
    Vote(Vote),
    /// A snapshot chunk.
    InstallSnapshot(InstallSnapshot),
}

/// The answer to a [`Message`], variant for variant.
#[derive(Debug)]
pub(crate) enum Answer {
    /// For [`Message::AppendEntries`].
    AppendEntries(AppendEntriesAnswer),
    /// For [`Message::Vote`].
    Vote(VoteAnswer),
    /// For [`Message::InstallSnapshot`].
    InstallSnapshot(InstallSnapshotAnswer),
}

impl Message {
    /// What the message is, for a log line about refusing it.
    pub(crate) fn what(&self) -> &'static str {
        match self {
            Message::AppendEntries(_) => "a raft append-entries",
            Message::Vote(_) => "a raft vote request",
            Message::InstallSnapshot(_) => "a raft snapshot chunk",
        }
    }
}

impl From<AppendEntries> for Message {
    fn from(m: AppendEntries) -> Message {
        Message::AppendEntries(m)
    }
}

impl From<Vote> for Message {
    fn from(m: Vote) -> Message {
        Message::Vote(m)
    }
}

impl From<InstallSnapshot> for Message {
    fn from(m: InstallSnapshot) -> Message {
        Message::InstallSnapshot(m)
    }
}

/// `raft.rpc.appendEntries`: a follower's time to take in one AppendEntries.
static APPEND_ENTRIES: std::sync::LazyLock<metrics::Histogram> =
    std::sync::LazyLock::new(|| metrics::histogram!("raft.rpc.appendEntries"));

impl Consensus {
    /// Takes in a message from another server: checks it ([`guard`]), hands it to Raft
    /// and returns Raft's answer. A message refused by a check never reaches Raft; the
    /// caller logs the refusal with the peer and answers with it.
    pub(crate) async fn receive(&self, message: Message) -> Result<Answer, guard::Refused> {
        match message {
            Message::AppendEntries(AppendEntries { to, request }) => {
                guard::addressed(to, self.id)?;
                guard::append_entries(&request, self.current_term())?;
                self.check_committed(&request).await?;
                let start = std::time::Instant::now();
                let answer = self.raft.append_entries(request).await;
                APPEND_ENTRIES.record(start.elapsed().as_secs_f64() * 1000.0);
                if answer.as_ref().is_ok_and(|a| a.is_success()) {
                    self.heard_from_leader();
                }
                Ok(Answer::AppendEntries(answer))
            }
            Message::Vote(Vote { to, request }) => {
                guard::addressed(to, self.id)?;
                guard::vote_request(&request, self.current_term())?;
                Ok(Answer::Vote(self.raft.vote(request).await))
            }
            Message::InstallSnapshot(InstallSnapshot { to, request }) => {
                guard::addressed(to, self.id)?;
                guard::install_snapshot(&request, self.current_term())?;
                Ok(Answer::InstallSnapshot(
                    self.install_snapshot(request).await?,
                ))
            }
        }
    }
}
