//! Running a gossip pool over a network: the side of a pool that [`crate::swim`] leaves
//! out (tasks, sockets, the clock, the keyring in use).
//!
//! ```text
//!                Inbound::packet, serve
//!   network ──▶ link ──────────────────────▶ ┌─────────────┐
//!                                            │ pool: the   │ ──▶ swim::Engine (sans-IO)
//!   network ◀── link ◀────────────────────── │ driver task │ ◀── its outputs
//!                Link::send_packet, exchange └─────────────┘
//!                                       commands ▲     │ watch<Arc<Vec<Member>>>
//!                                                │     ▼
//!                                            Pool (handle)
//! ```
//!
//! Six parts, each in its own file:
//!
//! - `pool`: the driver, the task that owns the engine, the clock and the keyring, and its
//!   handle [`Pool`]: [`PoolConfig`], the commands the handle sends, the packets it opens,
//!   the member events it publishes.
//! - `exchange`: stream exchanges, one request and one answer on a stream of their own:
//!   sending one and reading its answer (push-pull), answering a received request,
//!   joining through an address ([`Pool::join_one`], [`resolve`], [`JoinError`]).
//! - `keyring_ops`: keyring operations across the pool ([`Pool::keyring`],
//!   [`KeyringReport`]): asking every live member, and answering a member that asks.
//! - `encryption`: the keyring in use and the `encrypt_verify_*` settings ([`Encryption`]
//!   configures them): sealing and opening packets and stream frames, and applying a
//!   [`KeyOperation`] to this member's keyring.
//! - `link`: what a pool runs over, the contract every link implements: [`Link`] (send a
//!   packet, open a stream exchange) and [`Inbound`] (hand over a received packet, serve
//!   a received stream), with [`Exchange`] and [`Reply`].
//! - `udp_tcp`: the LAN pool's link, UDP and TCP on the serf LAN port: binding, the
//!   packet reader, the stream accept loop and its bounds. [`Pool::start`] is there. The
//!   WAN pool's link is QUIC, in crate `proconsul-wan`, and starts its pool with
//!   [`Pool::start_with`].
//!
//! Everything public is re-exported here (`gossip::transport::…`), and the main types at
//! the crate root too.

mod encryption;
mod exchange;
mod keyring_ops;
mod link;
mod pool;
#[cfg(test)]
mod support;
mod udp_tcp;

pub use encryption::{Encryption, KeyOperation};
pub use exchange::{JoinError, resolve};
pub use keyring_ops::{KEYRING_FANOUT, KEYRING_MEMBER_TIMEOUT, KeyringReport};
pub use link::{
    Exchange, Inbound, Link, PACKET_QUEUE, PACKET_QUEUE_PER_PEER, Reply, STREAM_TIMEOUT,
};
pub use pool::{
    Coordinates, LEAVE_PROPAGATE_TIMEOUT, MAX_OUTBOUND_STREAMS, PUBLISH_INTERVAL, PUBLISH_STEP,
    Pool, PoolConfig, publish_interval,
};
pub use udp_tcp::{MAX_INBOUND_STREAMS, MAX_INBOUND_STREAMS_PER_PEER, MAX_WAITING_STREAMS};

// What the rest of the crate uses: stream frames are refused for the same reasons as
// packets, and the fuzz entry points run a received packet through the driver's code.
pub(crate) use encryption::Refusal;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use encryption::{Crypto, PACKET_AAD};
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use pool::{PacketError, receive_packet};
