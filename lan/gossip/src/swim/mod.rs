//! Gossip: SWIM membership with Lifeguard, sans-IO.
//!
//! SWIM (Das, Gupta, Motivala, 2002) keeps a membership list consistent with constant
//! load per member:
//!
//! - **Probe** (§3.1): every probe interval a member pings the next member of a shuffled
//!   round-robin order and waits for an ack.
//! - **Indirect probe** (§3.1): with no ack within the probe timeout, it asks `k` other
//!   members to ping the target for it; any ack relayed back counts.
//! - **Suspicion** (§4.2): with no ack by the end of the interval the target is *suspect*,
//!   not dead; a suspect that hears of it refutes by announcing itself alive with a higher
//!   **incarnation** number; a suspicion not refuted in time becomes *dead*.
//! - **Dissemination** (§4.1): changes (alive, suspect, dead) are piggybacked on the
//!   protocol's own packets and on a few gossip packets per interval, each retransmitted
//!   `mult × log(n)` times, so news reaches everyone in O(log n) rounds.
//!
//! Lifeguard (Dadgar et al., 2018) makes it robust to slow members:
//!
//! - **Local health awareness**: a score that rises when this member misses acks or nacks
//!   (evidence that *it* is slow) scales its probe interval and timeout, so a struggling
//!   member stops accusing healthy ones.
//! - **Nacks**: helpers of an indirect probe answer "no ack" when the target stays silent,
//!   so the prober can tell a silent target from its own lost messages.
//! - **Dynamic suspicion**: a suspicion starts long and shrinks with each independent
//!   confirmation from another member.
//!
//! **User events** (serf's) ride the same dissemination: an event fired here is stamped
//! with the pool's Lamport clock and queued like a membership change; each member
//! delivers it and queues it again the first time it hears it (IDs already seen are
//! remembered, bounded), so every member gets it once.
//!
//! A periodic **push-pull** (full state exchange over a stream) heals partitions and
//! brings joining members up to date. The [`Engine`] holds all of this as plain state and
//! is driven by [`transport`](crate::transport), which owns the sockets and the clock; the
//! WAN pool runs the same engine over QUIC.

mod broadcast;
pub mod coordinate;
mod engine;
pub mod message;

use std::time::Duration;

pub use engine::{Engine, Event, MAX_RELAYS, Member, Output, UserEventError};
pub use message::{DecodeError, MAX_USER_EVENT, MemberState, State, UserEvent};

/// Largest plaintext gossip packet on the LAN, in bytes (memberlist's UDP buffer size):
/// [`Config::lan`]'s `max_packet_size`. A member's announcement must fit in one.
pub const MAX_PACKET_SIZE: usize = 1400;

/// Timers and sizes of the protocol. Use [`Config::lan`] or [`Config::wan`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Time between probes.
    pub probe_interval: Duration,
    /// Wait for a direct ack before asking for indirect probes.
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly.
    pub indirect_checks: usize,
    /// Suspicion timeout multiplier (of the probe interval and log10 of the pool size).
    pub suspicion_mult: u32,
    /// The longest suspicion, as a multiple of the shortest.
    pub suspicion_max_timeout_mult: u32,
    /// Highest local-health score plus one: probe timers stretch up to this factor.
    pub awareness_max_multiplier: u32,
    /// Time between gossip rounds.
    pub gossip_interval: Duration,
    /// Members gossiped to per round.
    pub gossip_nodes: usize,
    /// How long dead members still receive gossip (so they can refute).
    pub gossip_to_the_dead_time: Duration,
    /// Retransmissions of a change, times log10 of the pool size.
    pub retransmit_mult: u32,
    /// Time between full state exchanges.
    pub push_pull_interval: Duration,
    /// Time between attempts to reach a failed member again (serf's reconnect).
    pub reconnect_interval: Duration,
    /// How long a failed member is kept before it is forgotten (`reconnect_timeout`).
    pub dead_reap_timeout: Duration,
    /// How long a member that left is kept before it is forgotten.
    pub left_reap_timeout: Duration,
    /// Largest plaintext packet, in bytes (before encryption).
    pub max_packet_size: usize,
}

impl Config {
    /// memberlist's LAN defaults (Consul's `gossip_lan`).
    pub fn lan() -> Config {
        Config {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: 3,
            suspicion_mult: 4,
            suspicion_max_timeout_mult: 6,
            awareness_max_multiplier: 8,
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
            gossip_to_the_dead_time: Duration::from_secs(30),
            retransmit_mult: 4,
            push_pull_interval: Duration::from_secs(30),
            reconnect_interval: Duration::from_secs(30),
            dead_reap_timeout: Duration::from_secs(72 * 3600),
            left_reap_timeout: Duration::from_secs(24 * 3600),
            max_packet_size: MAX_PACKET_SIZE,
        }
    }

    /// memberlist's WAN defaults (Consul's `gossip_wan`).
    pub fn wan() -> Config {
        Config {
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
            suspicion_mult: 6,
            gossip_interval: Duration::from_millis(500),
            gossip_nodes: 4,
            gossip_to_the_dead_time: Duration::from_secs(60),
            push_pull_interval: Duration::from_secs(60),
            ..Config::lan()
        }
    }

    /// Short timers for `-dev` and tests on one machine (Consul's dev mode shortens them
    /// too).
    pub fn local() -> Config {
        Config {
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(100),
            gossip_interval: Duration::from_millis(100),
            push_pull_interval: Duration::from_secs(5),
            reconnect_interval: Duration::from_secs(2),
            gossip_to_the_dead_time: Duration::from_secs(15),
            ..Config::lan()
        }
    }
}
