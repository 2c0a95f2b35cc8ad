//! Requests between servers of different datacenters, one per QUIC stream.
//!
//! The receiving server serves them through a [`Service`] the agent provides: the WAN
//! layer knows how to carry a request to a datacenter, not what a catalog is.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use catalog::{Command, Query};
use catalog::{QueryResult, RaftStatus, ReadError, SentReadOptions, WriteError};
use gossip::{KeyOperation, KeyringReport};

/// Who sent a request: the connection's address and the datacenter its certificate is
/// for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The datacenter named by its certificate (`server.<datacenter>.<domain>`).
    pub datacenter: String,
}

/// A request to a server of another datacenter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Are you there? Answered with the server's node and datacenter.
    Ping,
    /// Run a keyring operation across the receiver's LAN pool.
    Keyring {
        /// The operation.
        op: KeyOperation,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
    },
    /// A read of the receiver's catalog, as a read in its own datacenter would be made.
    Read {
        /// The query.
        query: Query,
        /// How to read it.
        options: SentReadOptions,
    },
    /// A write to the receiver's catalog, applied by its datacenter's leader.
    Write {
        /// The change (boxed: it is much larger than the other requests).
        command: Box<Command>,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
    },
    /// The receiver's datacenter's Raft state.
    Status {
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// For [`Request::Ping`].
    Pong {
        /// The answering server's node name.
        node: String,
        /// Its datacenter.
        datacenter: String,
    },
    /// For [`Request::Keyring`]: the LAN pool's report.
    Keyring(KeyringReport),
    /// For [`Request::Read`].
    Read(Result<QueryResult, ReadError>),
    /// For [`Request::Write`].
    Write(Result<u64, WriteError>),
    /// For [`Request::Status`].
    Status(Result<RaftStatus, ReadError>),
    /// The request could not be served.
    Error(String),
}

/// The answer of a [`Service`].
pub type Serving<'a> = Pin<Box<dyn Future<Output = Response> + Send + 'a>>;

/// What a server does with requests from other datacenters.
pub trait Service: Send + Sync + 'static {
    /// Serves one request. The WAN layer bounds it with
    /// [`crate::endpoint::STREAM_TIMEOUT`].
    fn serve(&self, caller: Caller, request: Request) -> Serving<'_>;
}
