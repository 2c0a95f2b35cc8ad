//! What an agent asks of another datacenter, on its way there and back.
//!
//! A [`Call`] crosses at most two hops, and neither carrier reads it:
//!
//! ```text
//!   client agent ──lan::Lan::relay (server port, 8300)──▶ server of its datacenter
//!        Relayed { dc, call }                               │ Gateway::serve_call(dc)
//!                                                           ▼
//!                    server of `dc` ◀──wan::Federation::call (QUIC, 8302)── Call
//!                    Gateway::serve_call(here)
//! ```
//!
//! Each hop answers with a [`Reply`] that holds the gateway's own [`RouteError`], so an
//! error reaches the caller as the datacenter that saw it said it: a `Busy` stays a
//! `Busy` (HTTP 429) however many hops it crossed.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use catalog::{
    Command, Datacenter, Query, QueryResult, RaftStatus, ReadError, SentReadOptions, WriteError,
    Written,
};
use gossip::{KeyOperation, KeyringReport};

use crate::{PoolKeyring, RouteError};

/// A request for another datacenter (or, relayed by a client agent, for whichever
/// datacenter its [`Relayed`] names).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Call {
    /// A catalog read, made there as a read in that datacenter would be.
    Read {
        /// The query.
        query: Query,
        /// How to read it.
        options: SentReadOptions,
    },
    /// A catalog write, applied by that datacenter's leader.
    Write {
        /// The change (boxed: it is much larger than the other calls).
        command: Box<Command>,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
        /// The caller's token (`None`: anonymous).
        #[serde(default)]
        token: Option<String>,
    },
    /// That datacenter's Raft state.
    Status {
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
    },
    /// A keyring operation on that datacenter's LAN pool.
    Keyring {
        /// The operation.
        op: KeyOperation,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
    },
    /// A keyring operation on every pool the receiving server reaches (what a client
    /// agent asks a server of its own datacenter).
    KeyringAll {
        /// The operation.
        op: KeyOperation,
        /// Only the local LAN pool (`-local-only`).
        local_only: bool,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
    },
    /// A user event to fire in that datacenter's LAN pool.
    FireEvent {
        /// The event.
        fire: lan::events::Fire,
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
        /// The caller's token (`None`: anonymous).
        #[serde(default)]
        token: Option<String>,
    },
    /// The federation's datacenters, nearest first, as the receiving server sees them.
    Datacenters,
    /// The health of that datacenter's servers, as its leader sees it (autopilot).
    AutopilotHealth {
        /// Time left until the caller's deadline, in milliseconds.
        timeout_ms: u64,
    },
    /// What a token may do by the receiving datacenter's ACL tables: a secondary's
    /// server asks the primary about a token it does not hold.
    ResolveToken {
        /// The token's secret.
        secret: String,
    },
}

impl Call {
    /// Whether it changes something, so that once it may have reached a server it must
    /// not be sent to another (the first copy could still be applied after the second).
    pub(crate) fn is_write(&self) -> bool {
        matches!(self, Call::Write { .. } | Call::FireEvent { .. })
    }

    /// Whether it may take until its deadline to be answered (a blocking read).
    pub(crate) fn is_long(&self) -> bool {
        matches!(self, Call::Read { options, .. } if options.min_index > 0)
    }

    /// How a WAN carrier may deliver it.
    pub(crate) fn delivery(&self) -> wan::rpc::Delivery {
        wan::rpc::Delivery {
            long: self.is_long(),
            at_most_once: self.is_write(),
        }
    }

    /// How the caller sees a call that got no answer of its kind: as the error of the
    /// kind of call it was.
    pub(crate) fn failed(&self, why: String) -> RouteError {
        if self.is_write() {
            RouteError::Write(WriteError::Rpc(why))
        } else {
            RouteError::Read(ReadError::Rpc(why))
        }
    }
}

/// The answer to a [`Call`], variant for variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// For [`Call::Read`].
    Read(Result<QueryResult, RouteError>),
    /// For [`Call::Write`]: the index the write was applied at.
    Write(Result<Written, RouteError>),
    /// For [`Call::Status`].
    Status(Result<RaftStatus, RouteError>),
    /// For [`Call::Keyring`]: the pool's report, or why it could not be asked.
    Keyring(Result<KeyringReport, String>),
    /// For [`Call::KeyringAll`].
    KeyringAll(Result<Vec<PoolKeyring>, RouteError>),
    /// For [`Call::FireEvent`]: the event as fired, or why it was not (the event's own
    /// refusal inside, the route's outside).
    Fired(Result<Result<lan::events::UserEvent, lan::events::FireError>, RouteError>),
    /// For [`Call::Datacenters`].
    Datacenters(Vec<String>),
    /// For [`Call::ResolveToken`]: what the token may do (`None`: no such token).
    ResolvedToken(Option<lan::acl::Grant>),
    /// For [`Call::AutopilotHealth`].
    AutopilotHealth(Result<catalog::AutopilotHealth, RouteError>),
    /// The call was not served: unreadable, not allowed to this caller, or not served on
    /// this hop.
    Refused(String),
}

/// A call a client agent relays through a server of its datacenter, for `dc`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Relayed {
    /// The datacenter the call is for.
    pub(crate) dc: Datacenter,
    /// The call.
    pub(crate) call: Call,
}

/// `value` as the JSON a carrier relays without reading.
pub(crate) fn encode<T: Serialize>(value: &T) -> Box<RawValue> {
    let json = serde_json::to_string(value).expect("calls and replies serialise");
    RawValue::from_string(json).expect("serde_json writes valid JSON")
}

/// Reads what a carrier handed over.
pub(crate) fn decode<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Result<T, String> {
    serde_json::from_str(raw.get()).map_err(|e| format!("unreadable relayed message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::Consistency;

    #[test]
    fn a_busy_error_crosses_hops_as_it_was() {
        let busy = Reply::Read(Err(RouteError::Busy {
            dc: "dc2".into(),
            limit: 3,
        }));
        // Client agent ← server ← other datacenter: two encodings, two decodings.
        let once: Reply = decode(&encode(&busy)).unwrap();
        let twice: Reply = decode(&encode(&once)).unwrap();
        match twice {
            Reply::Read(Err(e @ RouteError::Busy { .. })) => assert_eq!(
                e.to_string(),
                "too many requests in flight to datacenter \"dc2\" (the limit is 3)"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn calls_say_how_they_may_be_delivered() {
        let read = |min_index| Call::Read {
            query: Query::Snapshot,
            options: SentReadOptions {
                consistency: Consistency::Default,
                min_index,
                timeout_ms: 1000,
                max_stale_ms: None,
                token: None,
            },
        };
        assert!(!read(0).is_long() && read(7).is_long());
        let write = Call::Write {
            command: Box::new(Command::Deregister(catalog::Deregistration {
                node: "n".into(),
                service_id: None,
                check_id: None,
            })),
            timeout_ms: 1,
            token: None,
        };
        assert!(write.is_write() && write.delivery().at_most_once);
        assert!(matches!(write.failed("x".into()), RouteError::Write(_)));
        assert!(matches!(read(0).failed("x".into()), RouteError::Read(_)));
        let fire = Call::FireEvent {
            fire: lan::events::Fire::default(),
            timeout_ms: 1,
            token: None,
        };
        assert!(fire.delivery().at_most_once, "an event is fired once");
        let relayed = Relayed {
            dc: Datacenter::new("dc2").unwrap(),
            call: read(3),
        };
        let back: Relayed = decode(&encode(&relayed)).unwrap();
        assert!(back.dc.as_str() == "dc2" && back.call.is_long());
        assert!(decode::<Relayed>(&RawValue::from_string("[1]".into()).unwrap()).is_err());
    }
}
