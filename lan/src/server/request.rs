//! The server port's requests and answers: what client agents and other servers ask of
//! a server, Raft's messages among them.
//!
//! A frame's body is one [`Request`] or one [`Response`] in serde's JSON for enums:
//! `"Status"`, `{"Read": {…}}`, `{"AppendEntries": {"to": 2, "request": {…}}}`.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::RaftPeer;
use crate::raft::{NodeId, TypeConfig};
use catalog::{Command, Query, QueryResult, RaftStatus, ReadError, SentReadOptions, WriteError};
use gossip::{KeyOperation, KeyringReport};

/// A request to a server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// A catalog read.
    Read {
        /// The query.
        query: Query,
        /// How to read it.
        #[serde(flatten)]
        options: SentReadOptions,
        /// Already forwarded once: answer here or fail, never forward again.
        forwarded: bool,
    },
    /// A catalog write.
    Write {
        /// The change.
        command: Command,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
        /// Already forwarded once.
        forwarded: bool,
    },
    /// A keyring operation for the whole LAN pool, run by the receiving server.
    Keyring {
        /// The operation.
        op: KeyOperation,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
    },
    /// This datacenter's Raft state (leader, peers).
    Status,
    /// A request for the receiving server's [`crate::Relay`], which this crate does not
    /// read (a client agent's request for another datacenter, say).
    Relay {
        /// The request.
        request: crate::Opaque,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
        /// Whether it may be sent again to another server (see [`crate::Lan::relay`]).
        retry_safe: bool,
    },
    /// Raft: replicate entries or heartbeat.
    AppendEntries {
        /// The Raft ID of the server it is for: a server refuses a message for another
        /// (one that now answers at an address or name an old ID had).
        to: NodeId,
        /// The message.
        request: AppendEntriesRequest<TypeConfig>,
    },
    /// Raft: ask for a vote.
    Vote {
        /// The Raft ID of the server it is for.
        to: NodeId,
        /// The message.
        request: VoteRequest<NodeId>,
    },
    /// Raft: a snapshot chunk.
    InstallSnapshot {
        /// The Raft ID of the server it is for.
        to: NodeId,
        /// The message.
        request: InstallSnapshotRequest<TypeConfig>,
    },
    /// Remove a server from the Raft configuration (`operator raft remove-peer`).
    RemovePeer {
        /// The server.
        peer: RaftPeer,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
        /// Already forwarded once.
        forwarded: bool,
    },
}

/// The answer to a [`Request`], variant for variant.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    /// For [`Request::Read`].
    Read(Result<QueryResult, ReadError>),
    /// For [`Request::Write`].
    Write(Result<u64, WriteError>),
    /// For [`Request::Keyring`].
    Keyring(KeyringReport),
    /// For [`Request::Status`].
    Status(RaftStatus),
    /// For [`Request::Relay`]: the relay's answer.
    Relay(crate::Opaque),
    /// For [`Request::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// For [`Request::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// For [`Request::InstallSnapshot`].
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// The receiver cannot serve this kind of request (a client agent, say).
    Unsupported(String),
    /// The request was served but its answer cannot be sent (too large).
    Error(String),
    /// For [`Request::RemovePeer`]: the leader's refusal inside, or why no leader did it.
    RemovePeer(Result<Result<(), String>, WriteError>),
    /// The caller may not ask this (it proved too little), or the request carries values
    /// that cannot be true; nothing was done.
    Refused(String),
}

/// What to report for an answer of the wrong kind: the text of a refusal or error the
/// server sent, else the answer itself.
pub(crate) fn unexpected(answer: Response) -> String {
    match answer {
        Response::Refused(text) | Response::Unsupported(text) | Response::Error(text) => text,
        other => format!("unexpected answer {other:?}"),
    }
}
