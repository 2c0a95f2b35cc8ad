//! Gossip encryption in a running pool: the keyring in use and the `encrypt_verify_*`
//! settings ([`Crypto`]), how packets and stream frames are sealed and opened with them, and
//! a keyring operation applied to this member's keyring.
//!
//! The settings are Consul's. With a keyring, what arrives sealed is opened with any
//! installed key, and plaintext is accepted unless `encrypt_verify_incoming` is on; what
//! is sent is sealed with the primary key while `encrypt_verify_outgoing` is on. Keyring
//! requests travel sealed whatever the settings. Turning the two on one after the other
//! moves a running pool to encryption without a split. A change of the keyring is saved
//! to the keyring file (when there is one) before it is answered; one that cannot be saved
//! is undone.

use std::path::PathBuf;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::keyring::{Key, Keyring, KeyringError, OpenError, SEALED_VERSION};
use crate::stream::Opener;

/// Gossip encryption settings of a pool.
#[derive(Debug, Clone)]
pub struct Encryption {
    /// The keys, primary first.
    pub keyring: Keyring,
    /// Where the keyring is saved after every change (`serf/local.keyring`); `None`
    /// keeps changes in memory only (`-dev`).
    pub file: Option<PathBuf>,
    /// Refuse plaintext messages (`encrypt_verify_incoming`).
    pub verify_incoming: bool,
    /// Seal what is sent (`encrypt_verify_outgoing`).
    pub verify_outgoing: bool,
}

/// One keyring operation, run by every member on its own keyring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyOperation {
    /// Report the installed keys.
    List,
    /// Add a key.
    Install(String),
    /// Make a key the primary.
    Use(String),
    /// Remove a key.
    Remove(String),
}

/// A member's answer to a keyring operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct KeyAnswer {
    /// Installed keys after the operation, primary first.
    pub(super) keys: Vec<String>,
    /// The error, when the member refused.
    pub(super) error: Option<String>,
}

/// The keyring in use and how messages are sealed and opened with it.
pub(crate) struct Crypto {
    keyring: RwLock<Option<Keyring>>,
    file: Option<PathBuf>,
    verify_incoming: bool,
    verify_outgoing: bool,
}

/// Why a received message was dropped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("{0}")]
    Open(#[from] OpenError),
    #[error("encryption is not configured on this agent, but the message is encrypted")]
    Unexpected,
    #[error("encryption is required by this agent, but the message is not encrypted")]
    Plaintext,
}

pub(crate) const PACKET_AAD: &[u8] = b"packet";

impl Crypto {
    pub(crate) fn new(encryption: Option<Encryption>) -> Crypto {
        match encryption {
            None => Crypto {
                keyring: RwLock::new(None),
                file: None,
                verify_incoming: false,
                verify_outgoing: false,
            },
            Some(e) => Crypto {
                keyring: RwLock::new(Some(e.keyring)),
                file: e.file,
                verify_incoming: e.verify_incoming,
                verify_outgoing: e.verify_outgoing,
            },
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.keyring.read().expect("keyring lock").is_some()
    }

    /// The keyring as it is now and the `encrypt_verify_*` settings (without the file);
    /// `None` without encryption.
    pub(super) fn settings(&self) -> Option<Encryption> {
        let keyring = self.keyring.read().expect("keyring lock").clone()?;
        Some(Encryption {
            keyring,
            file: None,
            verify_incoming: self.verify_incoming,
            verify_outgoing: self.verify_outgoing,
        })
    }

    pub(super) fn seal(&self, plaintext: Vec<u8>, aad: &[u8]) -> Vec<u8> {
        if !self.verify_outgoing {
            return plaintext;
        }
        match &*self.keyring.read().expect("keyring lock") {
            Some(ring) => ring.seal(&plaintext, aad),
            None => plaintext,
        }
    }

    /// The key to seal a stream frame with: the primary when there is a keyring and
    /// `encrypt_verify_outgoing` is on, or with `always` (keyring requests always travel
    /// sealed).
    pub(super) fn stream_key(&self, always: bool) -> Option<Key> {
        if !(always || self.verify_outgoing) {
            return None;
        }
        let guard = self.keyring.read().expect("keyring lock");
        guard.as_ref().map(|ring| ring.primary().clone())
    }

    /// What stream frames are read with: the keys installed now, and whether plaintext
    /// is refused.
    pub(super) fn opener(&self) -> Opener {
        Opener {
            keyring: self.keyring.read().expect("keyring lock").clone(),
            verify_incoming: self.verify_incoming,
        }
    }

    pub(super) fn open(&self, bytes: &[u8], aad: &[u8]) -> Result<Vec<u8>, Refusal> {
        let guard = self.keyring.read().expect("keyring lock");
        match (&*guard, bytes.first()) {
            (None, Some(&SEALED_VERSION)) => Err(Refusal::Unexpected),
            (None, _) => Ok(bytes.to_vec()),
            (Some(ring), Some(&SEALED_VERSION)) => Ok(ring.open(bytes, aad)?),
            (Some(_), _) if self.verify_incoming => Err(Refusal::Plaintext),
            (Some(_), _) => Ok(bytes.to_vec()),
        }
    }

    /// Applies a keyring operation to this member's keyring and saves it.
    pub(super) fn apply(&self, op: &KeyOperation) -> KeyAnswer {
        let mut guard = self.keyring.write().expect("keyring lock");
        let Some(ring) = guard.as_mut() else {
            return KeyAnswer {
                keys: Vec::new(),
                error: Some("Gossip encryption is not enabled".into()),
            };
        };
        let parse = |text: &str| Key::parse(text).map_err(|e| e.to_string());
        let before = ring.clone();
        let result: Result<(), String> = match op {
            KeyOperation::List => Ok(()),
            KeyOperation::Install(k) => parse(k).map(|k| ring.install(k)),
            KeyOperation::Use(k) => {
                parse(k).and_then(|k| ring.use_key(&k).map_err(|e: KeyringError| e.to_string()))
            }
            KeyOperation::Remove(k) => {
                parse(k).and_then(|k| ring.remove(&k).map_err(|e: KeyringError| e.to_string()))
            }
        };
        let mut error = result.err();
        if error.is_none()
            && *ring != before
            && let Some(file) = &self.file
            && let Err(e) = ring.save(file)
        {
            // Keep memory and disk in step: a change that cannot be saved is undone.
            *ring = before;
            error = Some(format!("failed to write {}: {e}", file.display()));
        }
        KeyAnswer {
            keys: ring.keys().iter().map(Key::to_base64).collect(),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::MemberStatus;
    use crate::transport::JoinError;
    use crate::transport::support::{Cluster, encrypted, eventually, sees, soon};

    #[tokio::test]
    async fn encryption_is_turned_on_in_a_running_pool_without_a_split() {
        // Consul's rolling procedure: every agent gets the key with both verify flags
        // off (they read both), then outgoing on, then incoming on.
        let key = Key::generate();
        let lenient = |outgoing: bool| {
            Some(Encryption {
                keyring: Keyring::new(key.clone()),
                file: None,
                verify_incoming: false,
                verify_outgoing: outgoing,
            })
        };
        let c = Cluster::start(4, |i| match i {
            0 => None,
            1 => lenient(false),
            2 => lenient(true),
            _ => encrypted(&key),
        })
        .await;
        // n0 (no key) and n1 (key, plaintext out) speak plaintext to each other.
        c.pools[0]
            .join_one(&c.pools[1].addr().to_string(), soon())
            .await
            .unwrap();
        eventually("n0 and n1 together", || {
            sees(&c.pools[0], "n1", MemberStatus::Alive)
                && sees(&c.pools[1], "n0", MemberStatus::Alive)
        })
        .await;
        // n2 seals what it sends but still reads plaintext: n1 reads both, so n2 and n1
        // agree; n0, which has no key, cannot read n2.
        c.pools[2]
            .join_one(&c.pools[1].addr().to_string(), soon())
            .await
            .unwrap();
        eventually("n1 and n2 together", || {
            sees(&c.pools[1], "n2", MemberStatus::Alive)
                && sees(&c.pools[2], "n1", MemberStatus::Alive)
        })
        .await;
        // n3 is strict: it joins n2 (which seals) but refuses n1's plaintext.
        c.pools[3]
            .join_one(&c.pools[2].addr().to_string(), soon())
            .await
            .unwrap();
        let refused = c.pools[1]
            .join_one(&c.pools[3].addr().to_string(), soon())
            .await;
        assert_eq!(
            refused,
            Err(JoinError::Refused(
                "encryption is required by this agent, but the message is not encrypted".into()
            ))
        );
    }
}
