//! Requests between servers of different datacenters, one per QUIC stream.
//!
//! The WAN layer knows how to carry a request to a datacenter, not what it asks: besides
//! its own [`Request::Ping`], a request is JSON it relays to the receiving server's
//! [`Service`] (the agent's gateway) without reading it. What it needs to know to deliver
//! one (may it take until its deadline, may it be sent twice) comes as a [`Delivery`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A relayed request or its answer: JSON this crate does not read.
pub type Opaque = Box<RawValue>;

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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Are you there? Answered with the server's node and datacenter.
    Ping,
    /// A request for the receiving server's [`Service`].
    Relay(Opaque),
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// For [`Request::Ping`].
    Pong {
        /// The answering server's node name.
        node: String,
        /// Its datacenter.
        datacenter: String,
    },
    /// For [`Request::Relay`]: the service's answer.
    Relay(Opaque),
    /// The request could not be served.
    Error(String),
}

/// How a request may be delivered, for a layer that does not read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery {
    /// It may take until its deadline to be answered (a blocking read): reaching a
    /// server gets a share of the time, then the answer is awaited.
    pub long: bool,
    /// Once it may have reached a server it is never sent to another (a write: the first
    /// copy could still be applied after the second).
    pub at_most_once: bool,
}

/// The answer of a [`Service`].
pub type Serving<'a> = Pin<Box<dyn Future<Output = Response> + Send + 'a>>;

/// What a server does with requests from other datacenters.
pub trait Service: Send + Sync + 'static {
    /// Serves one request. The WAN layer bounds it with
    /// [`crate::endpoint::STREAM_TIMEOUT`].
    fn serve(&self, caller: Caller, request: Request) -> Serving<'_>;
}
