//! # proconsul-gossip: gossip pools
//!
//! A gossip pool is a set of agents that know of each other through SWIM: who is there,
//! who is alive, where each is and how far away (network coordinates). A datacenter's
//! agents form the LAN pool on the serf LAN port (UDP packets, TCP streams); the servers
//! of every datacenter form the WAN pool, which crate `proconsul-wan` runs over QUIC with
//! the same driver.
//!
//! ```text
//!   Link (UDP/TCP here, QUIC in wan) ─▶ the pool's driver task ─▶ swim::Engine (sans-IO)
//!                                          │  the keyring seals and opens every packet and stream
//!   Pool (handle) ── join, leave, keyring ─┘─▶ members: watch<Arc<Vec<Member>>>
//! ```
//!
//! Main types: [`Pool`] (the handle of a running pool), [`PoolConfig`], [`Link`] (what a
//! pool runs over), [`Member`], [`keyring::Keyring`], [`swim::Engine`].
//!
//! ## Layout
//!
//! - [`swim`]: the SWIM engine, sans-IO: members, probes, suspicion, dissemination, push-pull
//!   state, network coordinates, the packet codec.
//! - [`transport`]: running a pool over a network. Its files: `pool` (the driver task that
//!   owns the engine, the clock and the keyring; the [`Pool`] handle), `exchange` (stream
//!   exchanges: push-pull, joining, answering a request), `keyring_ops` (keyring
//!   operations across the pool), `encryption` (the keyring in use: sealing, opening,
//!   applying a keyring operation), `link` ([`Link`] and [`Inbound`], what every link
//!   implements and hands what it receives to) and `udp_tcp` (the LAN pool's link on the
//!   serf LAN port).
//! - [`stream`]: the frames of a stream exchange, read without trusting the sender.
//! - [`keyring`]: keys, the keyring file, sealing and opening bytes.
//! - [`quota`]: per-peer shares of a bound, and memory budgets.
//! - [`Member`], [`PeerLog`]: what a pool publishes of each member; rate-limited logging
//!   of bad input per peer.
//!
//! Invariants: nothing from the network is trusted. Every packet and stream frame is
//! bounded before it is buffered ([`stream`], [`quota`]); what does not open or decode
//! is dropped and logged with its sender at a bounded rate ([`PeerLog`]); every remote
//! exchange has a deadline. This crate knows nothing of Raft, the catalog or HTTP.

#![warn(missing_docs)]

mod accept;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod keyring;
mod member;
mod peer_log;
pub mod quota;
pub mod stream;
pub mod swim;
pub mod transport;

pub use member::{Member, MemberStatus};
pub use peer_log::{PEER_LOG_ENTRIES, PEER_LOG_INTERVAL, PeerLog};
pub use transport::{
    Encryption, Exchange, Inbound, JoinError, KeyOperation, KeyringReport, Link, Pool, PoolConfig,
    Reply,
};

/// The serf LAN port Consul agents gossip on, used when a join address has no port.
pub const DEFAULT_SERF_LAN_PORT: u16 = 8301;
