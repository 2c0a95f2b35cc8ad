//! The server port's requests and answers: what client agents and other servers ask of
//! a server, Raft's messages among them.
//!
//! A frame's body is one [`Request`] or one [`Response`] in serde's JSON for enums:
//! `"Status"`, `{"Read": {…}}`, `{"AppendEntries": {"to": 2, "request": {…}}}`. Raft's
//! messages are [`crate::raft`]'s own types, wrapped variant for variant under their own
//! names, so the port reads them without a second layer of nesting; Raft's network sends
//! them through the [`Carrier`] impl below.

use serde::{Deserialize, Serialize};

use catalog::{
    Command, Query, QueryResult, RaftStatus, ReadError, SentReadOptions, WriteError, Written,
};
use gossip::{KeyOperation, KeyringReport};

use crate::raft::{self, network::Carrier};
use crate::relay::Opaque;

/// A server of the Raft configuration, as `operator raft remove-peer` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftPeer {
    /// By its server ID (the node UUID, `ID` in `/v1/operator/raft/configuration`).
    Id(String),
    /// By its server RPC address, `ip:port`.
    Address(String),
}

impl RaftPeer {
    /// Consul's text for a server that is not in the configuration.
    pub fn not_found(&self) -> String {
        match self {
            RaftPeer::Id(id) => format!("id {id:?} was not found in the Raft configuration"),
            RaftPeer::Address(a) => {
                format!("address {a:?} was not found in the Raft configuration")
            }
        }
    }
}

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
        /// The caller's token (`None`: anonymous).
        #[serde(default)]
        token: Option<String>,
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
    /// The leader's view of the servers' health (autopilot).
    AutopilotHealth {
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
        /// Already forwarded once: answer here (as the leader) or fail.
        forwarded: bool,
    },
    /// A request for the receiving server's relay ([`crate::relay`]), which this crate does not
    /// read (a client agent's request for another datacenter, say).
    Relay {
        /// The request.
        request: Opaque,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
        /// Whether it may be sent again to another server (see [`crate::Lan::relay`]).
        retry_safe: bool,
    },
    /// Raft: replicate entries or heartbeat.
    AppendEntries(raft::AppendEntries),
    /// Raft: ask for a vote.
    Vote(raft::Vote),
    /// Raft: a snapshot chunk.
    InstallSnapshot(raft::InstallSnapshot),
    /// What a token may do (a client agent asks, for its own endpoints).
    ResolveToken {
        /// The token (`None`: anonymous).
        token: Option<String>,
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
    Write(Result<Written, WriteError>),
    /// For [`Request::Keyring`].
    Keyring(KeyringReport),
    /// For [`Request::Status`].
    Status(RaftStatus),
    /// For [`Request::Relay`]: the relay's answer.
    Relay(Opaque),
    /// For [`Request::AppendEntries`].
    AppendEntries(raft::AppendEntriesAnswer),
    /// For [`Request::Vote`].
    Vote(raft::VoteAnswer),
    /// For [`Request::InstallSnapshot`].
    InstallSnapshot(raft::InstallSnapshotAnswer),
    /// The receiver cannot serve this kind of request (a client agent, say).
    Unsupported(String),
    /// The request was served but its answer cannot be sent (too large).
    Error(String),
    /// For [`Request::ResolveToken`]: the grant, or `None` for an unknown token.
    ResolveToken(Option<crate::acl::Grant>),
    /// For [`Request::AutopilotHealth`].
    AutopilotHealth(Result<catalog::AutopilotHealth, ReadError>),
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

impl From<raft::Answer> for Response {
    fn from(answer: raft::Answer) -> Response {
        match answer {
            raft::Answer::AppendEntries(a) => Response::AppendEntries(a),
            raft::Answer::Vote(a) => Response::Vote(a),
            raft::Answer::InstallSnapshot(a) => Response::InstallSnapshot(a),
        }
    }
}

impl Carrier for Request {
    type Answer = Response;

    fn carry(message: raft::Message) -> Request {
        match message {
            raft::Message::AppendEntries(m) => Request::AppendEntries(m),
            raft::Message::Vote(m) => Request::Vote(m),
            raft::Message::InstallSnapshot(m) => Request::InstallSnapshot(m),
        }
    }

    fn answer(answer: Response) -> Result<raft::Answer, Response> {
        match answer {
            Response::AppendEntries(a) => Ok(raft::Answer::AppendEntries(a)),
            Response::Vote(a) => Ok(raft::Answer::Vote(a)),
            Response::InstallSnapshot(a) => Ok(raft::Answer::InstallSnapshot(a)),
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A heartbeat for server 2 as it travels in a frame's body.
    fn heartbeat() -> serde_json::Value {
        json!({"AppendEntries": {"to": 2, "request": {
            "vote": {"leader_id": {"term": 3, "node_id": 9}, "committed": true},
            "prev_log_id": null, "entries": [], "leader_commit": null
        }}})
    }

    #[test]
    fn raft_messages_travel_under_their_own_names_in_the_port_requests() {
        let request: Request = serde_json::from_value(heartbeat()).unwrap();
        let Request::AppendEntries(message) = request else {
            panic!("not read as an append-entries: {request:?}");
        };
        assert_eq!(message.to, 2);
        // What Raft's network sends is the same JSON.
        let sent = Request::carry(message.into());
        assert_eq!(serde_json::to_value(&sent).unwrap(), heartbeat());
    }

    #[test]
    fn raft_finds_its_answer_in_the_port_answer_and_nothing_else() {
        let refused = Request::answer(Response::Refused("no".into()));
        assert!(matches!(refused, Err(Response::Refused(t)) if t == "no"));
        let answer: Response = serde_json::from_value(json!({"Vote": {"Ok": {
            "vote": {"leader_id": {"term": 3, "node_id": 9}, "committed": false},
            "vote_granted": true, "last_log_id": null
        }}}))
        .unwrap();
        assert!(matches!(
            Request::answer(answer),
            Ok(raft::Answer::Vote(Ok(v))) if v.vote_granted
        ));
    }
}
