//! Requests this crate carries without reading them: a client agent hands one to a server
//! of its datacenter ([`crate::Lan::relay`]), whose relay (the gateway's, set by the
//! agent as a [`crate::Relay`]) serves it. This is how a client agent reaches other
//! datacenters: the route, the request and its answer are the gateway's; this crate only
//! knows a server of its own datacenter to ask.

use std::future::Future;
use std::pin::Pin;

use serde_json::value::RawValue;

/// A relayed request or its answer: JSON this crate does not read.
pub type Opaque = Box<RawValue>;

/// The answer of a [`crate::Relay`].
pub type Relaying<'a> = Pin<Box<dyn Future<Output = Opaque> + Send + 'a>>;
