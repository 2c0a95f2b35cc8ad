//! # proconsul-wan: between datacenters
//!
//! - [`endpoint`]: one QUIC endpoint per server on the serf WAN port, mutual TLS with the
//!   federation's CA, one long-lived connection per peer;
//! - [`federation`]: the WAN gossip pool (the `proconsul-gossip` driver over QUIC
//!   datagrams and streams, still sealed with the gossip keyring), flood join, and calls
//!   to a datacenter;
//! - [`rpc`]: what servers of different datacenters send each other: a ping, and the
//!   gateway's requests, carried as JSON this crate does not read;
//! - [`tls`]: TLS material for the whole federation: the CA and the certificates of
//!   `proconsul tls`, and the rustls configurations built from `ca_file`, `cert_file` and
//!   `key_file`.

//!
//! Invariants: this crate knows nothing of the catalog, Raft or HTTP (it depends on
//! `proconsul-gossip` alone among proconsul's crates); every call has a deadline and
//! every connection, stream and datagram queue a bound.

#![warn(missing_docs)]

pub mod endpoint;
pub mod federation;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod rpc;
pub mod tls;

#[cfg(test)]
mod tests;

pub use endpoint::{Endpoint, EndpointConfig, WanError};
pub use federation::{DatacenterHealth, Federation, FederationConfig};

/// The serf WAN port, used when a WAN join address has no port.
pub const DEFAULT_SERF_WAN_PORT: u16 = 8302;
