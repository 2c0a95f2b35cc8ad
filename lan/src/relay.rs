//! Requests this crate carries without reading them: a client agent hands one to a server
//! of its datacenter, whose [`Relay`] (the gateway's, set by the agent) serves it. This is
//! how a client agent reaches other datacenters: the route, the request and its answer
//! are the gateway's; this crate only knows a server of its own datacenter to ask.

use std::future::Future;
use std::pin::Pin;

use serde_json::value::RawValue;
use tokio::time::Instant;

/// A relayed request or its answer: JSON this crate does not read.
pub type Opaque = Box<RawValue>;

/// The answer of a [`Relay`].
pub type Relaying<'a> = Pin<Box<dyn Future<Output = Opaque> + Send + 'a>>;

/// What a server does with requests relayed by the client agents of its datacenter.
pub trait Relay: Send + Sync + 'static {
    /// Serves `request` by `deadline`. `proven` tells whether the caller proved it
    /// belongs to the datacenter (gossip key or TLS client certificate): keyring
    /// operations need it.
    /// `lan` is this server's datacenter layer.
    fn relay<'a>(
        &'a self,
        lan: &'a crate::Lan,
        request: Opaque,
        proven: bool,
        deadline: Instant,
    ) -> Relaying<'a>;
}
