//! Stream exchanges: a pool's requests on a stream of their own, its answers to the ones
//! it receives, and joining, which is one push-pull with the member at an address.
//!
//! A stream carries one request frame (a push-pull or a keyring request) and one answer
//! frame, in the layout of [`crate::stream`]: a header whose announced length is checked
//! against its kind's limit before anything is buffered, then the payload, sealed in
//! chunks that are each authenticated before the next is read. What a pool's frames hold
//! while they are read is bounded by its budget ([`stream::MAX_STREAM_BYTES`], with a
//! share per IP address), for incoming requests and for the answers to its own exchanges.
//!
//! A stream whose frame the other side cannot open is answered with a short plaintext
//! error frame ([`Inbound::serve`](super::Inbound::serve) writes it), so that an agent
//! joining with the wrong key is told why ([`JoinError::Refused`]), and the refusing side
//! logs it too.
//!
//! Every stream exchange fails with a [`JoinError`], whichever link it runs on. The
//! requesting side is `exchange` ([`Pool::join_one`] and the driver's push-pulls go
//! through `push_pull`); the answering side is `answer_request`. What a keyring
//! request carries, both ways, is `keyring_ops`'.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::quota::Grant;
use crate::stream::{self, Expect, Frame, FrameError, Kind};
use crate::swim::MemberState;
use crate::swim::message::{Message, decode_frame, encode_frame};

use super::keyring_ops::answer_key_request;
use super::pool::{Command, Pool, Shared};

/// Why joining an address failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The address does not resolve; fix it.
    #[error("failed to resolve {0}")]
    Resolve(String),
    /// No answer in time; the agent may be down or unreachable.
    #[error("timed out")]
    Timeout,
    /// The connection failed.
    #[error("{0}")]
    Io(String),
    /// The other agent refused our message and said why (a different gossip key, or
    /// encryption on one side only).
    #[error("remote refused: {0}")]
    Refused(String),
    /// The answer could not be read: a different key or protocol.
    #[error("{0}")]
    Protocol(String),
    /// This agent is stopping.
    #[error("the agent is shutting down")]
    ShuttingDown,
}

impl Pool {
    /// Joins the pool of the agent at `addr` (`host:port`, or `host` for port 8301) by a
    /// full state exchange with it.
    pub async fn join_one(&self, addr: &str, deadline: Instant) -> Result<(), JoinError> {
        let target = resolve(addr, crate::DEFAULT_SERF_LAN_PORT, deadline).await?;
        let ours = self
            .ask(Command::LocalState)
            .await
            .ok_or(JoinError::ShuttingDown)?;
        let theirs = push_pull(&self.shared, target, true, ours, deadline).await?;
        // Answered once the member list shows the pool joined, so that a caller (a
        // starting agent, say) can use it at once.
        self.ask(|merged| Command::Join {
            seed: target,
            states: theirs,
            merged,
        })
        .await
        .ok_or(JoinError::ShuttingDown)
    }

    /// Joins every address; returns each one's result, in order.
    pub async fn join(&self, addrs: &[String], deadline: Instant) -> Vec<Result<(), JoinError>> {
        let attempts = addrs.iter().map(|a| self.join_one(a, deadline));
        futures_util::future::join_all(attempts).await
    }
}

/// Resolves `host[:port]` to one address; a bare host or IP gets `default_port`.
pub async fn resolve(
    addr: &str,
    default_port: u16,
    deadline: Instant,
) -> Result<SocketAddr, JoinError> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let with_port = if addr
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        addr.to_owned()
    } else {
        format!("{addr}:{default_port}")
    };
    let found = tokio::time::timeout_at(deadline, tokio::net::lookup_host(with_port))
        .await
        .map_err(|_| JoinError::Timeout)?
        .map_err(|_| JoinError::Resolve(addr.to_owned()))?
        .next();
    found.ok_or_else(|| JoinError::Resolve(addr.to_owned()))
}

/// One exchange on a new stream to `to`: sends a frame of `kind` carrying `payload`
/// (sealed when `encrypt_verify_outgoing` is on, or always with `seal_always`) and reads
/// the answer, holding what it buffers in `grant`, all before `deadline`. Returns the
/// answer's payload; an error frame becomes [`JoinError::Refused`].
pub(super) async fn exchange(
    shared: &Shared,
    to: SocketAddr,
    kind: Kind,
    payload: &[u8],
    seal_always: bool,
    grant: &mut Grant<IpAddr>,
    deadline: Instant,
) -> Result<Vec<u8>, JoinError> {
    let key = shared.crypto.stream_key(seal_always);
    let frame = stream::encode(kind, payload, key.as_ref())
        .map_err(|e| JoinError::Protocol(e.to_string()))?;
    let work = async {
        let mut reply = shared.link.exchange(to, frame).await?;
        let opener = shared.crypto.opener();
        match stream::read(&mut reply, &opener, Expect::Answer(kind), grant).await {
            Ok(Frame {
                kind: Kind::Error,
                payload,
            }) => Err(JoinError::Refused(
                String::from_utf8_lossy(&payload).into_owned(),
            )),
            Ok(answer) => Ok(answer.payload),
            Err(FrameError::Io(e)) => Err(JoinError::Io(e.to_string())),
            Err(e) => {
                shared.refused(to, "gossip stream answer", &e);
                Err(JoinError::Protocol(e.to_string()))
            }
        }
    };
    tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| JoinError::Timeout)?
}

/// A full state exchange with the member at `to`.
pub(super) async fn push_pull(
    shared: &Shared,
    to: SocketAddr,
    join: bool,
    ours: Vec<MemberState>,
    deadline: Instant,
) -> Result<Vec<MemberState>, JoinError> {
    let request = encode_frame(&Message::PushPull { join, states: ours });
    // Held until the answer is decoded.
    let mut grant = shared.streams.grant(to.ip());
    let (kind, seal_always) = (Kind::PushPull, false);
    let answer = exchange(
        shared,
        to,
        kind,
        &request,
        seal_always,
        &mut grant,
        deadline,
    )
    .await?;
    match decode_frame(&answer) {
        Ok(Message::PushPull { states, .. }) => Ok(states),
        Ok(_) => Err(JoinError::Protocol(
            "unexpected answer to a push-pull".into(),
        )),
        Err(e) => Err(JoinError::Protocol(e.to_string())),
    }
}

/// The answer frame to a stream's request from `peer` (what
/// [`Inbound::serve`](super::Inbound::serve) writes back), or `None` to close the stream
/// without one.
pub(super) async fn answer_request(
    commands: &mpsc::Sender<Command>,
    shared: &Arc<Shared>,
    peer: SocketAddr,
    request: Frame,
) -> Option<Vec<u8>> {
    let (kind, payload) = match request.kind {
        Kind::KeyRequest => (
            Kind::KeyAnswer,
            answer_key_request(shared, peer, &request.payload).await?,
        ),
        Kind::PushPull => match decode_frame(&request.payload) {
            Ok(Message::PushPull { states, .. }) => {
                let (reply, ours) = oneshot::channel();
                commands
                    .send(Command::Remote { states, reply })
                    .await
                    .ok()?;
                let ours = ours.await.ok()?;
                let state = encode_frame(&Message::PushPull {
                    join: false,
                    states: ours,
                });
                (Kind::PushPull, state)
            }
            Ok(_) => {
                shared.refused(peer, "gossip stream", &"not a push-pull");
                return None;
            }
            Err(e) => {
                shared.refused(peer, "undecodable gossip stream", &e);
                return None;
            }
        },
        other => {
            shared.refused(peer, "gossip stream", &format!("unexpected {other} frame"));
            return None;
        }
    };
    let key = shared.crypto.stream_key(false);
    match stream::encode(kind, &payload, key.as_ref()) {
        Ok(frame) => Some(frame),
        Err(e) => {
            // This pool's own state is over the limit: the peer is told, and the log
            // says so once per peer per PEER_LOG_INTERVAL.
            shared.refused(peer, "gossip stream answer", &e);
            Some(stream::error_frame(&e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::Key;
    use crate::transport::support::{Cluster, encrypted, soon};

    #[tokio::test]
    async fn joining_with_another_key_is_refused_and_both_sides_say_why() {
        let (k1, k2) = (Key::generate(), Key::generate());
        let c = Cluster::start(3, |i| match i {
            0 => encrypted(&k1),
            1 => encrypted(&k2),
            _ => None,
        })
        .await;
        let seed = c.pools[0].addr().to_string();
        let wrong_key = c.pools[1].join_one(&seed, soon()).await.unwrap_err();
        assert_eq!(
            wrong_key,
            JoinError::Refused("No installed keys could decrypt the message".into())
        );
        let plaintext = c.pools[2].join_one(&seed, soon()).await.unwrap_err();
        assert_eq!(
            plaintext,
            JoinError::Refused(
                "encryption is required by this agent, but the message is not encrypted".into()
            )
        );
        assert_eq!(c.pools[0].members().len(), 1);
    }
}
