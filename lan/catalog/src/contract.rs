//! The read/write contract every layer shares: how fresh a read must be, what it
//! reports about the answer (Consul's `X-Consul-*` headers), why a read or a write
//! failed, and deadlines as requests carry them from server to server.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

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

/// Options of a read.
#[derive(Debug, Clone, Copy)]
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
}

/// [`ReadOptions`] as a request to another server carries them: the deadline becomes the
/// time left, counted again from the request's arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl ReadOptions {
    /// These options as a request carries them.
    pub fn to_sent(&self) -> SentReadOptions {
        SentReadOptions {
            consistency: self.consistency,
            min_index: self.min_index,
            timeout_ms: remaining_ms(self.deadline),
            max_stale_ms: self
                .max_stale
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
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
