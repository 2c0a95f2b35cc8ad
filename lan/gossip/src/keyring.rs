//! Gossip encryption keys: the keyring, sealing and opening of packets, the keyring file.
//!
//! A key is 16, 24 or 32 random bytes (AES-128/192/256-GCM), written as standard base64
//! as Consul's are. The keyring holds every installed key with the primary first: packets
//! are sealed with the primary and opened with whichever installed key works, so a key can
//! be rotated on a running pool (install everywhere, make primary, remove the old one).
//!
//! Sealed packet layout: `[version = 1][nonce: 12][ciphertext][tag: 16]`, AES-GCM with a
//! random nonce and the caller's associated data. Stream frames are sealed chunk by chunk
//! with a `Cipher` (see [`crate::stream`]). The layouts are our own; wire compatibility
//! with Consul agents is not a goal.

use std::path::Path;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, AeadInOut, KeyInit, Payload};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Version byte of a sealed message.
pub const SEALED_VERSION: u8 = 1;
/// Bytes of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not base64; give the output of `proconsul keygen`.
    #[error("key is not valid base64: {0}")]
    Base64(String),
    /// Wrong length (Consul's text).
    #[error("key size must be 16, 24 or 32 bytes")]
    Size,
}

/// One gossip key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "Key({} bytes)", self.0.len())
    }
}

impl Key {
    /// Parses a base64 key of 16, 24 or 32 bytes.
    pub fn parse(text: &str) -> Result<Key, KeyError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| KeyError::Base64(e.to_string()))?;
        Key::from_bytes(bytes)
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Key, KeyError> {
        match bytes.len() {
            16 | 24 | 32 => Ok(Key(bytes)),
            _ => Err(KeyError::Size),
        }
    }

    /// A new random 32-byte key.
    pub fn generate() -> Key {
        let bytes: [u8; 32] = rand::random();
        Key(bytes.to_vec())
    }

    /// The raw key material, for deriving other keys from it (never log it).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key in base64, as `keygen` prints and keyring files hold it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.0)
    }

    /// This key, set up to seal or open many messages (the chunks of one stream frame).
    pub(crate) fn cipher(&self) -> Cipher {
        // A key of a valid size always sets up (checked in `from_bytes`).
        match self.0.len() {
            16 => Cipher::Aes128(Box::new(
                Aes128Gcm::new_from_slice(&self.0).expect("16-byte key"),
            )),
            24 => Cipher::Aes192(Box::new(
                AesGcm::<Aes192, U12>::new_from_slice(&self.0).expect("24-byte key"),
            )),
            _ => Cipher::Aes256(Box::new(
                Aes256Gcm::new_from_slice(&self.0).expect("32-byte key"),
            )),
        }
    }

    fn seal(&self, nonce: &[u8; NONCE_LEN], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = aes_gcm::Nonce::<U12>::from(*nonce);
        let payload = Payload {
            msg: plaintext,
            aad,
        };
        // Encryption with a valid key size only fails for absurd lengths (> 64 GiB).
        let sealed = match self.0.len() {
            16 => Aes128Gcm::new_from_slice(&self.0)
                .expect("16-byte key")
                .encrypt(&nonce, payload),
            24 => AesGcm::<Aes192, U12>::new_from_slice(&self.0)
                .expect("24-byte key")
                .encrypt(&nonce, payload),
            _ => Aes256Gcm::new_from_slice(&self.0)
                .expect("32-byte key")
                .encrypt(&nonce, payload),
        };
        sealed.expect("AES-GCM encrypts any message of a sane size")
    }

    fn open(&self, nonce: &[u8], ciphertext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let nonce = aes_gcm::Nonce::<U12>::try_from(nonce).ok()?;
        let payload = Payload {
            msg: ciphertext,
            aad,
        };
        match self.0.len() {
            16 => Aes128Gcm::new_from_slice(&self.0)
                .ok()?
                .decrypt(&nonce, payload),
            24 => AesGcm::<Aes192, U12>::new_from_slice(&self.0)
                .ok()?
                .decrypt(&nonce, payload),
            _ => Aes256Gcm::new_from_slice(&self.0)
                .ok()?
                .decrypt(&nonce, payload),
        }
        .ok()
    }
}

/// One key set up for AES-GCM, for sealing or opening in place with a detached tag.
pub(crate) enum Cipher {
    Aes128(Box<Aes128Gcm>),
    Aes192(Box<AesGcm<Aes192, U12>>),
    Aes256(Box<Aes256Gcm>),
}

impl Cipher {
    /// Encrypts `buf` in place and returns its tag.
    pub(crate) fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let nonce = aes_gcm::Nonce::<U12>::from(*nonce);
        let tag = match self {
            Cipher::Aes128(c) => c.encrypt_inout_detached(&nonce, aad, buf.into()),
            Cipher::Aes192(c) => c.encrypt_inout_detached(&nonce, aad, buf.into()),
            Cipher::Aes256(c) => c.encrypt_inout_detached(&nonce, aad, buf.into()),
        };
        // Only lengths beyond 64 GiB fail; callers seal at most one chunk at a time.
        tag.expect("AES-GCM encrypts any chunk of a sane size")
            .into()
    }

    /// Decrypts `buf` in place when `tag` authenticates it with `aad`; returns whether it
    /// did. On failure `buf` is left as it was (AES-GCM checks the tag before it
    /// decrypts), so the next installed key can be tried on the same bytes.
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> bool {
        let Ok(tag) = aes_gcm::Tag::try_from(tag) else {
            return false;
        };
        let nonce = aes_gcm::Nonce::<U12>::from(*nonce);
        match self {
            Cipher::Aes128(c) => c.decrypt_inout_detached(&nonce, aad, buf.into(), &tag),
            Cipher::Aes192(c) => c.decrypt_inout_detached(&nonce, aad, buf.into(), &tag),
            Cipher::Aes256(c) => c.decrypt_inout_detached(&nonce, aad, buf.into(), &tag),
        }
        .is_ok()
    }
}

/// Why a keyring operation was refused; the keyring is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// `use` of a key this node does not have (Consul's text).
    #[error("Requested key is not in the keyring")]
    NotInstalled,
    /// `remove` of the primary key (Consul's text).
    #[error("Removing the primary key is not allowed")]
    RemovePrimary,
}

/// Why a sealed message could not be opened. The message must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Too short, or not a sealed message of a version we know.
    #[error("not a sealed message")]
    Malformed,
    /// No installed key opens it (Consul's text, the line users see when keys diverge).
    #[error("No installed keys could decrypt the message")]
    NoKey,
}

/// The installed gossip keys, primary first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    /// A keyring whose only (and primary) key is `primary`.
    pub fn new(primary: Key) -> Keyring {
        Keyring {
            keys: vec![primary],
        }
    }

    /// The primary key.
    pub fn primary(&self) -> &Key {
        &self.keys[0]
    }

    /// Every installed key, primary first.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Adds a key; installing a present key changes nothing, and the primary stays.
    pub fn install(&mut self, key: Key) {
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
    }

    /// Makes an installed key the primary.
    pub fn use_key(&mut self, key: &Key) -> Result<(), KeyringError> {
        let at = self
            .keys
            .iter()
            .position(|k| k == key)
            .ok_or(KeyringError::NotInstalled)?;
        let key = self.keys.remove(at);
        self.keys.insert(0, key);
        Ok(())
    }

    /// Removes a key; removing an absent key succeeds, removing the primary does not.
    pub fn remove(&mut self, key: &Key) -> Result<(), KeyringError> {
        if self.primary() == key {
            return Err(KeyringError::RemovePrimary);
        }
        self.keys.retain(|k| k != key);
        Ok(())
    }

    /// Seals `plaintext` with the primary key, binding `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        out.push(SEALED_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&self.primary().seal(&nonce, plaintext, aad));
        out
    }

    /// Opens a sealed message with whichever installed key works.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        let (&version, rest) = sealed.split_first().ok_or(OpenError::Malformed)?;
        if version != SEALED_VERSION || rest.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Malformed);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        self.keys
            .iter()
            .find_map(|k| k.open(nonce, ciphertext, aad))
            .ok_or(OpenError::NoKey)
    }

    /// The keyring file's contents: a JSON list of base64 keys, primary first.
    pub fn to_file_contents(&self) -> String {
        let keys: Vec<String> = self.keys.iter().map(Key::to_base64).collect();
        serde_json::to_string(&keys).expect("a list of strings serialises")
    }

    /// Parses a keyring file.
    pub fn from_file_contents(text: &str) -> Result<Keyring, String> {
        let keys: Vec<String> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON list of keys: {e}"))?;
        let keys = keys
            .iter()
            .map(|k| Key::parse(k).map_err(|e| e.to_string()))
            .collect::<Result<Vec<Key>, String>>()?;
        if keys.is_empty() {
            return Err("the keyring holds no key".into());
        }
        Ok(Keyring { keys })
    }

    /// Reads a keyring file; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<Keyring>, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Keyring::from_file_contents(&text)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    /// Writes the keyring file (mode 0600), replacing any previous one atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(self.to_file_contents().as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(len: usize, fill: u8) -> Key {
        Key::from_bytes(vec![fill; len]).unwrap()
    }

    #[test]
    fn keys_of_every_size_round_trip() {
        for len in [16, 24, 32] {
            let ring = Keyring::new(key(len, 7));
            let sealed = ring.seal(b"hello", b"hdr");
            assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
            assert_eq!(ring.open(&sealed, b"hdr").unwrap(), b"hello");
            assert_eq!(
                ring.open(&sealed, b"other"),
                Err(OpenError::NoKey),
                "aad is bound"
            );
        }
    }

    #[test]
    fn parsing_follows_consul() {
        let k = Key::generate();
        assert_eq!(k.to_base64().len(), 44);
        assert_eq!(Key::parse(&k.to_base64()).unwrap(), k);
        assert_eq!(Key::parse("AAAA"), Err(KeyError::Size));
        assert!(matches!(
            Key::parse("not base64!"),
            Err(KeyError::Base64(_))
        ));
        assert!(Key::parse(&STANDARD.encode([1u8; 16])).is_ok());
        assert!(Key::parse(&STANDARD.encode([1u8; 24])).is_ok());
    }

    #[test]
    fn rotation_keeps_old_messages_readable_until_the_key_is_removed() {
        let (k1, k2) = (key(32, 1), key(32, 2));
        let mut ring = Keyring::new(k1.clone());
        let old = ring.seal(b"m", b"");
        ring.install(k2.clone());
        assert_eq!(ring.primary(), &k1, "install does not change the primary");
        ring.use_key(&k2).unwrap();
        assert_eq!(ring.open(&old, b"").unwrap(), b"m");
        assert_eq!(ring.remove(&k2), Err(KeyringError::RemovePrimary));
        ring.remove(&k1).unwrap();
        assert_eq!(ring.open(&old, b""), Err(OpenError::NoKey));
        assert_eq!(ring.use_key(&k1), Err(KeyringError::NotInstalled));
        ring.remove(&k1).unwrap();
    }

    #[test]
    fn the_keyring_file_round_trips_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serf/local.keyring");
        assert_eq!(Keyring::load(&path).unwrap(), None);
        let mut ring = Keyring::new(key(32, 1));
        ring.install(key(16, 2));
        ring.save(&path).unwrap();
        assert_eq!(Keyring::load(&path).unwrap(), Some(ring));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, "[]").unwrap();
        assert!(Keyring::load(&path).is_err());
    }

    #[test]
    fn a_chunk_that_does_not_open_is_left_as_it_was() {
        let nonce = [3u8; NONCE_LEN];
        let mut buf = b"chunk of a frame".to_vec();
        let tag = key(32, 1).cipher().seal_in_place(&nonce, b"aad", &mut buf);
        let sealed = buf.clone();
        for other in [key(16, 2), key(24, 2), key(32, 2)] {
            assert!(!other.cipher().open_in_place(&nonce, b"aad", &mut buf, &tag));
            assert_eq!(buf, sealed, "a failed open must not touch the bytes");
        }
        assert!(
            !key(32, 1)
                .cipher()
                .open_in_place(&nonce, b"other", &mut buf, &tag)
        );
        assert!(
            !key(32, 1)
                .cipher()
                .open_in_place(&nonce, b"aad", &mut buf, &tag[..8])
        );
        assert_eq!(buf, sealed);
        assert!(
            key(32, 1)
                .cipher()
                .open_in_place(&nonce, b"aad", &mut buf, &tag)
        );
        assert_eq!(buf, b"chunk of a frame");
    }

    proptest! {
        #[test]
        fn opening_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let ring = Keyring::new(key(32, 9));
            prop_assert!(ring.open(&bytes, b"").is_err());
        }
    }
}
