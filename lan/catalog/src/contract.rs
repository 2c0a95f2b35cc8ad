//! The read/write contract every layer shares: how fresh a read must be, what it
//! reports about the answer (Consul's `X-Consul-*` headers), why a read or a write
//! failed, and deadlines as requests carry them from server to server.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::acl::Denied;
use crate::{Answer, Applied, ApplyError};

/// How fresh a read must be (Consul's consistency modes). A default read is served by
/// the leader from its state; a stale one by any server, possibly behind the leader; a
/// consistent one by the leader once a quorum has confirmed it still leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Consistency {
    /// Read on the leader.
    #[default]
    Default,
    /// Read on any server, possibly behind the leader.
    Stale,
    /// Linearizable read.
    Consistent,
}

/// A write the catalog applied: the Raft index it was applied at, and what it produced
/// (a transaction's results).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The index it was applied at.
    pub index: u64,
    /// What it produced.
    pub applied: Applied,
}

/// Why a catalog write failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum WriteError {
    /// No leader is known; retry later or report to the user (Consul's text).
    #[error("No cluster leader")]
    NoLeader,
    /// The deadline passed before the write was committed; it may still be applied.
    #[error("timed out waiting for the catalog write to commit")]
    Timeout,
    /// This server lost its leadership after the write was handed to Raft; it may still
    /// be applied by the next leader (Consul's text).
    #[error("leadership lost while committing log")]
    LeadershipLost,
    /// The catalog refused the command; the same command will always be refused.
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// Raft is stopping; the agent is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// A client agent knows no server of its datacenter: it has not joined one (Consul's
    /// text).
    #[error("No known Consul servers")]
    NoServers,
    /// No server could be reached; the write may or may not have been applied.
    #[error("rpc error making call: {0}")]
    Rpc(String),
    /// The change is larger than a log entry may be; it was not applied.
    #[error("the change of {0} bytes is too large for the catalog log")]
    TooLarge(usize),
    /// The token presented is unknown or expired (Consul's text).
    #[error("ACL not found")]
    AclNotFound,
    /// The token lacks a permission the write needs.
    #[error(transparent)]
    Denied(#[from] Denied),
}

impl WriteError {
    /// Whether sending the same write again (elsewhere or later) can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            WriteError::NoLeader
                | WriteError::Timeout
                | WriteError::LeadershipLost
                | WriteError::NoServers
                | WriteError::Rpc(_)
        )
    }
}

/// Why a catalog read could not be served in the consistency mode asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ReadError {
    /// The read needs a leader and none is known; `?stale` reads still work (Consul's text).
    #[error("No cluster leader")]
    NoLeader,
    /// A consistent read could not confirm leadership in time (Consul's text).
    #[error("Not ready to serve consistent reads")]
    NotReady,
    /// The deadline passed.
    #[error("timed out waiting for a consistent read")]
    Timeout,
    /// Raft is stopping; the agent is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// A client agent knows no server of its datacenter (Consul's text).
    #[error("No known Consul servers")]
    NoServers,
    /// No server could be reached.
    #[error("rpc error making call: {0}")]
    Rpc(String),
    /// The token presented is unknown or expired (Consul's text).
    #[error("ACL not found")]
    AclNotFound,
    /// The token lacks a permission the read needs.
    #[error(transparent)]
    Denied(#[from] Denied),
}

/// What a read reports about the Raft state behind its answer (Consul's headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMeta {
    /// Whether the answering server knows a leader (`X-Consul-KnownLeader`).
    pub known_leader: bool,
    /// Time since the answering server last heard from the leader; zero on the leader
    /// (`X-Consul-LastContact`).
    pub last_contact: Duration,
}

/// Whom a request acts for, as ACLs see it. Its `Debug` form never shows the secret.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub enum Principal {
    /// Whoever presented no token: the anonymous token decides.
    #[default]
    Anonymous,
    /// The holder of this secret.
    Token(Arc<str>),
    /// The agent itself, for its own duties (anti-entropy, the leader's tasks): on a
    /// server it may do anything; a client agent sends its agent token for it. Never
    /// read from the network.
    Agent,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Principal::Anonymous => "Anonymous",
            Principal::Token(_) => "Token(redacted)",
            Principal::Agent => "Agent",
        })
    }
}

impl Principal {
    /// The principal of a token sent over the network (`None`: anonymous).
    pub fn from_wire(token: Option<String>) -> Principal {
        match token {
            Some(t) if !t.is_empty() => Principal::Token(t.into()),
            _ => Principal::Anonymous,
        }
    }

    /// The token a request sends for this principal; `agent_token` stands for the agent.
    pub fn to_wire(&self, agent_token: Option<&str>) -> Option<String> {
        match self {
            Principal::Anonymous => None,
            Principal::Token(t) => Some(t.to_string()),
            Principal::Agent => agent_token.map(str::to_owned),
        }
    }
}

/// Options of a read.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Consistency mode.
    pub consistency: Consistency,
    /// Blocking query: answer once the result's index exceeds this (0 = at once).
    pub min_index: u64,
    /// When a blocking query answers anyway, and the budget of any consistency check.
    pub deadline: Instant,
    /// With [`Consistency::Stale`]: a follower that has not heard from the leader for
    /// longer than this sends the read to the leader instead (`?max_stale`).
    pub max_stale: Option<Duration>,
    /// Whom the read is for (ACLs).
    pub principal: Principal,
}

/// [`ReadOptions`] as a request to another server carries them: the deadline becomes the
/// time left, counted again from the request's arrival.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentReadOptions {
    /// Consistency mode.
    pub consistency: Consistency,
    /// Blocking query index (0 = answer at once).
    pub min_index: u64,
    /// Time left until the caller's deadline, in milliseconds.
    pub timeout_ms: u64,
    /// `?max_stale`, in milliseconds.
    #[serde(default)]
    pub max_stale_ms: Option<u64>,
    /// The caller's token (`None`: anonymous).
    #[serde(default)]
    pub token: Option<String>,
}

impl ReadOptions {
    /// These options as a request carries them; `agent_token` stands for
    /// [`Principal::Agent`].
    pub fn to_sent(&self, agent_token: Option<&str>) -> SentReadOptions {
        SentReadOptions {
            consistency: self.consistency,
            min_index: self.min_index,
            timeout_ms: remaining_ms(self.deadline),
            max_stale_ms: self
                .max_stale
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            token: self.principal.to_wire(agent_token),
        }
    }
}

impl SentReadOptions {
    /// The options of a request that just arrived.
    pub fn to_options(&self) -> ReadOptions {
        ReadOptions {
            consistency: self.consistency,
            min_index: self.min_index,
            deadline: deadline_in(self.timeout_ms),
            max_stale: self.max_stale_ms.map(Duration::from_millis),
            principal: Principal::from_wire(self.token.clone()),
        }
    }
}

/// An answer with what Consul reports in its headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryResult {
    /// The answer.
    pub answer: Answer,
    /// `X-Consul-Index`.
    pub index: u64,
    /// `X-Consul-KnownLeader` and `X-Consul-LastContact`.
    pub meta: ReadMeta,
    /// Whether ACLs left something out (`X-Consul-Results-Filtered-By-ACLs`).
    #[serde(default)]
    pub filtered: bool,
}

/// Milliseconds left until `deadline` (0 once it passed), as requests carry it.
pub fn remaining_ms(deadline: Instant) -> u64 {
    u64::try_from(
        deadline
            .saturating_duration_since(Instant::now())
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// The deadline a request's `timeout_ms` gives, counted from its arrival (at most a
/// day away, whatever the peer sent).
pub fn deadline_in(timeout_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(timeout_ms.min(24 * 3600 * 1000))
}
