//! Keyring operations across a pool: [`Pool::keyring`] asks every live member on a stream
//! of its own ([`KEYRING_FANOUT`] at once, each within [`KEYRING_MEMBER_TIMEOUT`]) and sums
//! up their answers in a [`KeyringReport`], and `answer_key_request` applies a request
//! another member sent to this one. A keyring request is sealed even where plaintext gossip
//! is accepted (see `stream::Opener`); applying one to this member's keyring is
//! `encryption`'s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::stream::Kind;

use super::encryption::{KeyAnswer, KeyOperation};
use super::exchange::{JoinError, exchange};
use super::pool::{Command, Pool, Shared};

/// Keyring requests sent to members at once during a pool-wide keyring operation.
pub const KEYRING_FANOUT: usize = 32;
/// How long one member has to answer a keyring request.
pub const KEYRING_MEMBER_TIMEOUT: Duration = Duration::from_secs(2);

/// The pool-wide result of a keyring operation, as Consul reports it per pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringReport {
    /// Members asked (the live members of the pool).
    pub num_nodes: usize,
    /// Members that answered.
    pub num_resp: usize,
    /// Members that failed or did not answer.
    pub num_err: usize,
    /// Each key with the number of members holding it.
    pub keys: BTreeMap<String, usize>,
    /// Each primary key with the number of members using it.
    pub primary_keys: BTreeMap<String, usize>,
    /// Member name → its error (including "no answer" for silent members).
    pub messages: BTreeMap<String, String>,
}

impl Pool {
    /// Runs a keyring operation on every live member of the pool (this one included),
    /// collecting their answers until `deadline`. Members that do not answer are named in
    /// [`KeyringReport::messages`].
    pub async fn keyring(&self, op: KeyOperation, deadline: Instant) -> KeyringReport {
        let targets = self.ask(Command::Targets).await.unwrap_or_default();
        let permits = Arc::new(Semaphore::new(KEYRING_FANOUT));
        let asks = targets.into_iter().map(|(name, addr)| {
            let (op, shared, permits) = (op.clone(), self.shared.clone(), permits.clone());
            let me = name == self.name;
            async move {
                let answer = if me {
                    let shared = shared.clone();
                    tokio::task::spawn_blocking(move || shared.crypto.apply(&op))
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    match permits.acquire().await {
                        // Each member gets its own share of the time, so a few silent
                        // ones cannot use up everyone's.
                        Ok(_permit) if Instant::now() < deadline => {
                            let own = deadline.min(Instant::now() + KEYRING_MEMBER_TIMEOUT);
                            key_request(&shared, addr, &op, own).await
                        }
                        Ok(_) => Err("not asked before the deadline".into()),
                        Err(e) => Err(e.to_string()),
                    }
                };
                answer.map(|a| (name.clone(), a)).map_err(|e| (name, e))
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut report = KeyringReport {
            num_nodes: answers.len(),
            ..KeyringReport::default()
        };
        for answer in answers {
            match answer {
                Ok((name, a)) => {
                    report.num_resp += 1;
                    if let Some(e) = a.error {
                        report.num_err += 1;
                        report.messages.insert(name, e);
                    }
                    for (i, k) in a.keys.iter().enumerate() {
                        *report.keys.entry(k.clone()).or_default() += 1;
                        if i == 0 {
                            *report.primary_keys.entry(k.clone()).or_default() += 1;
                        }
                    }
                }
                Err((name, e)) => {
                    report.num_err += 1;
                    report.messages.insert(name, e);
                }
            }
        }
        report
    }
}

/// Asks the member at `to` to apply a keyring operation.
async fn key_request(
    shared: &Shared,
    to: SocketAddr,
    op: &KeyOperation,
    deadline: Instant,
) -> Result<KeyAnswer, String> {
    let request = serde_json::to_vec(op).expect("a key operation serialises");
    let mut grant = shared.streams.grant(to.ip());
    let (kind, seal_always) = (Kind::KeyRequest, true);
    let answer = exchange(
        shared,
        to,
        kind,
        &request,
        seal_always,
        &mut grant,
        deadline,
    )
    .await
    .map_err(|e| match e {
        JoinError::Timeout => "no answer before the deadline".to_string(),
        other => other.to_string(),
    })?;
    serde_json::from_slice(&answer).map_err(|e| format!("unreadable answer: {e}"))
}

/// The answer to a keyring request from `peer` (the payload of its
/// [`Kind::KeyAnswer`] frame), or `None` to close the stream without one.
pub(super) async fn answer_key_request(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    payload: &[u8],
) -> Option<Vec<u8>> {
    // Only sealed ones get here while this agent has a keyring (see
    // `stream::Opener`).
    let op: KeyOperation = match serde_json::from_slice(payload) {
        Ok(op) => op,
        Err(e) => {
            shared.refused(peer, "keyring request", &e);
            return None;
        }
    };
    let worker = shared.clone();
    let answer = tokio::task::spawn_blocking(move || worker.crypto.apply(&op))
        .await
        .ok()?;
    let json = serde_json::to_vec(&answer).expect("an answer serialises");
    Some(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::{Key, Keyring};
    use crate::member::MemberStatus;
    use crate::stream;
    use crate::transport::Encryption;
    use crate::transport::support::{Cluster, encrypted, eventually, read_answer, sees, soon};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn a_key_rotates_across_the_pool_without_losing_a_member() {
        let k1 = Key::generate();
        let k2 = Key::generate();
        let c = Cluster::start(4, |_| encrypted(&k1)).await;
        let seed = c.pools[0].addr().to_string();
        for p in &c.pools[1..] {
            p.join_one(&seed, soon()).await.unwrap();
        }
        eventually("convergence", || c.all_alive()).await;
        let pool = &c.pools[1];
        let k2t = k2.to_base64();
        let installed = pool
            .keyring(KeyOperation::Install(k2t.clone()), soon())
            .await;
        assert_eq!(installed.num_nodes, 4);
        assert_eq!(installed.num_err, 0, "{:?}", installed.messages);
        assert_eq!(installed.keys.get(&k2t), Some(&4));
        let used = pool.keyring(KeyOperation::Use(k2t.clone()), soon()).await;
        assert_eq!(used.primary_keys.get(&k2t), Some(&4), "{used:?}");
        let refused = pool
            .keyring(KeyOperation::Remove(k2t.clone()), soon())
            .await;
        assert_eq!(refused.num_err, 4);
        assert!(
            refused
                .messages
                .values()
                .all(|m| m == "Removing the primary key is not allowed")
        );
        let removed = pool
            .keyring(KeyOperation::Remove(k1.to_base64()), soon())
            .await;
        assert_eq!(removed.num_err, 0);
        let list = pool.keyring(KeyOperation::List, soon()).await;
        assert_eq!(list.keys, BTreeMap::from([(k2t, 4)]));
        // Gossip keeps flowing with the new key: a leave still reaches everyone.
        c.pools[3].leave().await;
        eventually("the leave", || sees(&c.pools[0], "n3", MemberStatus::Left)).await;
        assert!(
            c.pools[..3]
                .iter()
                .all(|p| p.members().iter().all(|m| m.status != MemberStatus::Failed))
        );
    }

    #[tokio::test]
    async fn a_silent_member_is_named_in_a_keyring_listing() {
        let k1 = Key::generate();
        let c = Cluster::start(3, |_| encrypted(&k1)).await;
        let seed = c.pools[0].addr().to_string();
        for p in &c.pools[1..] {
            p.join_one(&seed, soon()).await.unwrap();
        }
        eventually("convergence", || c.all_alive()).await;
        // Stop n2 without a leave: until it is declared failed it is still asked.
        c.tokens[2].cancel();
        let list = c.pools[0]
            .keyring(KeyOperation::List, Instant::now() + Duration::from_secs(2))
            .await;
        // (n2 cannot have been declared failed yet: a suspicion alone lasts longer.)
        assert_eq!(list.num_nodes, 3);
        assert_eq!(list.num_resp, 2);
        assert!(list.messages.contains_key("n2"), "{list:?}");
        assert_eq!(list.keys.get(&k1.to_base64()), Some(&2));
    }

    #[tokio::test]
    async fn a_plaintext_keyring_request_is_refused_even_while_plaintext_gossip_is_accepted() {
        let key = Key::generate();
        let c = Cluster::start(1, |_| {
            Some(Encryption {
                keyring: Keyring::new(key.clone()),
                file: None,
                verify_incoming: false,
                verify_outgoing: false,
            })
        })
        .await;
        let mut stream = TcpStream::connect(c.pools[0].addr()).await.unwrap();
        let op = KeyOperation::Install(Key::generate().to_base64());
        let request = serde_json::to_vec(&op).unwrap();
        let frame = stream::encode(Kind::KeyRequest, &request, None).unwrap();
        stream.write_all(&frame).await.unwrap();
        let answer = read_answer(&mut stream, Kind::KeyRequest).await.unwrap();
        assert_eq!(answer.kind, Kind::Error);
        assert_eq!(
            answer.payload,
            b"keyring requests must be encrypted with an installed key"
        );
        // The pool's own operations still work: they are sealed.
        let report = c.pools[0].keyring(KeyOperation::List, soon()).await;
        assert_eq!(report.keys.len(), 1, "{report:?}");
    }
}
