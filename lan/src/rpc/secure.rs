//! Who may speak on the server port, and how a connection proves it.
//!
//! A connection says how it speaks with its first bytes:
//!
//! | first bytes | the server needs | the caller is proven by |
//! |---|---|---|
//! | a TLS handshake (`0x16`) | a certificate (`cert_file`) | a certificate from the CA, when it presents one |
//! | `PCS1` and a nonce | a gossip key (`encrypt`) | the keyring handshake below |
//! | a frame length (`0x00`–`0x03`) | nothing | nothing |
//!
//! **The keyring handshake** lets a datacenter whose agents share a gossip key (and no
//! TLS) authenticate every server-port connection with it; Consul leaves that port open.
//! The caller sends `PCS1` and a random 32-byte nonce `c`. The server answers a random
//! nonce `s` and `HMAC-SHA256(k, "proconsul server-port server" ‖ c ‖ s)` under its
//! primary key `k`; the caller finds `k` among its installed keys by checking that tag
//! (so keys rotate as the keyring does: install everywhere, use, remove) and answers
//! `HMAC-SHA256(k, "proconsul server-port client" ‖ c ‖ s)`; the server checks it and
//! sends one byte to accept. Both then derive one AES-256-GCM key per direction with
//! HKDF-SHA256 (salt `c ‖ s`, secret `k`) and seal every frame ([`super::frame`]). Fresh
//! nonces on both sides make a recorded handshake useless, tags are compared in constant
//! time, and no key, tag or session key is ever logged. A session outlives the removal
//! of the key it was opened with (only its two ends know its session keys); new
//! connections need an installed key.
//!
//! **What a connection may ask** ([`Caller`]):
//! - keyring operations, which return the keys: a proven caller only, whatever the
//!   configuration;
//! - Raft and `remove-peer`: a proven caller, or anyone when the port has nothing to
//!   prove with (no TLS, no gossip key; the agent warns at start that the port is open);
//! - catalog reads and writes, status: any connection that was accepted.
//!
//! Plaintext is refused with TLS `verify_incoming`, and with a gossip key while
//! `encrypt_verify_incoming` is on (the default), as gossip itself is; while it is off
//! (a datacenter turning encryption on) plaintext callers are served as before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ring::aead::{AES_256_GCM, UnboundKey};
use ring::{hkdf, hmac};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::frame::{FrameBudget, FrameReader, FrameWriter, Reader, Seal, Writer};
use gossip::keyring::{Key, Keyring};
use gossip::transport::Encryption;

/// Budget of a handshake (TLS or keyring) on the server port, and of a plaintext
/// caller's first byte.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS handshake record; a plaintext connection starts with a frame
/// length, whose first byte is at most 3 for any frame the port accepts.
const TLS_HANDSHAKE_BYTE: u8 = 0x16;
/// What a keyring handshake starts with.
const MAGIC: [u8; 4] = *b"PCS1";
const NONCE_BYTES: usize = 32;
const TAG_BYTES: usize = 32;
const SERVER_LABEL: &[u8] = b"proconsul server-port server";
const CLIENT_LABEL: &[u8] = b"proconsul server-port client";
const CALLER_TO_SERVER: &[u8] = b"proconsul server-port c2s";
const SERVER_TO_CALLER: &[u8] = b"proconsul server-port s2c";
/// The server's last handshake byte: the caller's proof was accepted.
const ACCEPTED: u8 = 1;

/// TLS on the server port (Consul's `verify_incoming`, `verify_outgoing` and
/// `verify_server_hostname` for internal RPC).
#[derive(Clone)]
pub struct RpcTls {
    /// What a server presents to callers; `None` on a client agent or without a
    /// certificate (the port then speaks plaintext only).
    pub server: Option<Arc<rustls::ServerConfig>>,
    /// Refuse callers that do not speak TLS (the server config then also asks them for a
    /// certificate from the CA).
    pub verify_incoming: bool,
    /// What this agent uses to call servers (`verify_outgoing`); `None` calls in
    /// plaintext.
    pub client: Option<Arc<rustls::ClientConfig>>,
    /// The name servers' certificates must carry (`server.<dc>.<domain>`).
    pub server_name: String,
}

impl std::fmt::Debug for RpcTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcTls")
            .field("server", &self.server.is_some())
            .field("verify_incoming", &self.verify_incoming)
            .field("client", &self.client.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// The gossip keyring as it is now, and its `encrypt_verify_*` settings; `None` without
/// gossip encryption. Read again for every connection, so rotations apply at once.
pub(crate) type Keys = Arc<dyn Fn() -> Option<Encryption> + Send + Sync>;

/// Who is at the other end of an accepted connection, and what it may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller {
    /// Its address.
    pub(crate) addr: SocketAddr,
    /// It proved it belongs to the datacenter: a certificate from the CA, or the
    /// keyring handshake.
    pub(crate) proven: bool,
    /// The port had nothing to prove with when it was accepted: anyone may speak Raft.
    pub(crate) open: bool,
}

impl Caller {
    /// Whether it may send Raft's messages and remove servers.
    pub(crate) fn may_change_raft(&self) -> bool {
        self.proven || self.open
    }

    /// Whether it may run keyring operations (which answer with the keys).
    pub(crate) fn may_use_keyring(&self) -> bool {
        self.proven
    }
}

/// Whether a server with this configuration can tell its own servers from strangers:
/// if not, its port is open to anyone who reaches it.
pub(crate) fn can_prove(tls: Option<&RpcTls>, keys: Option<&Encryption>) -> bool {
    tls.is_some_and(|t| t.verify_incoming || (t.client.is_some() && t.server.is_some()))
        || keys.is_some_and(|k| k.verify_incoming)
}

/// Splits any stream into boxed halves.
fn halves<S>(stream: S) -> (Reader, Writer)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (r, w) = tokio::io::split(stream);
    (Box::new(r), Box::new(w))
}

fn hmac_key(key: &Key) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, key.bytes())
}

fn transcript(label: &[u8], caller: &[u8], server: &[u8]) -> Vec<u8> {
    [label, caller, server].concat()
}

/// The session keys (caller to server, server to caller) of a handshake under `key`.
fn session_keys(key: &Key, caller: &[u8], server: &[u8]) -> (UnboundKey, UnboundKey) {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &[caller, server].concat());
    let prk = salt.extract(key.bytes());
    let derive = |info: &[u8]| -> UnboundKey {
        let info = [info];
        prk.expand(&info, &AES_256_GCM)
            .expect("an AES-256 key is a valid HKDF output length")
            .into()
    };
    (derive(CALLER_TO_SERVER), derive(SERVER_TO_CALLER))
}

fn io_error(text: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, text.into())
}

/// The caller's side of the keyring handshake; returns the seals for writing and reading.
async fn handshake_as_caller(
    stream: &mut TcpStream,
    ring: &Keyring,
) -> std::io::Result<(Seal, Seal)> {
    let nonce: [u8; NONCE_BYTES] = rand::random();
    stream.write_all(&[&MAGIC[..], &nonce].concat()).await?;
    let mut challenge = [0u8; NONCE_BYTES + TAG_BYTES];
    stream.read_exact(&mut challenge).await?;
    let (server_nonce, tag) = challenge.split_at(NONCE_BYTES);
    let said = transcript(SERVER_LABEL, &nonce, server_nonce);
    let key = ring
        .keys()
        .iter()
        .find(|k| hmac::verify(&hmac_key(k), &said, tag).is_ok())
        .ok_or_else(|| {
            io_error("the server's primary gossip key is not installed on this agent")
        })?;
    let proof = hmac::sign(
        &hmac_key(key),
        &transcript(CLIENT_LABEL, &nonce, server_nonce),
    );
    stream.write_all(proof.as_ref()).await?;
    let mut accepted = [0u8; 1];
    stream
        .read_exact(&mut accepted)
        .await
        .map_err(|_| io_error("the server refused this agent's gossip key"))?;
    if accepted[0] != ACCEPTED {
        return Err(io_error("the server refused this agent's gossip key"));
    }
    let (out, back) = session_keys(key, &nonce, server_nonce);
    Ok((Seal::new(out), Seal::new(back)))
}

/// The server's side of the keyring handshake, after the caller's first byte was seen;
/// returns the seals for reading and writing.
async fn handshake_as_server(
    stream: &mut TcpStream,
    ring: &Keyring,
) -> Result<(Seal, Seal), String> {
    let mut hello = [0u8; MAGIC.len() + NONCE_BYTES];
    stream
        .read_exact(&mut hello)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (magic, nonce) = hello.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err("not a keyring handshake".into());
    }
    let key = ring.primary();
    let server_nonce: [u8; NONCE_BYTES] = rand::random();
    let tag = hmac::sign(
        &hmac_key(key),
        &transcript(SERVER_LABEL, nonce, &server_nonce),
    );
    stream
        .write_all(&[&server_nonce[..], tag.as_ref()].concat())
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut proof = [0u8; TAG_BYTES];
    stream
        .read_exact(&mut proof)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let expected = transcript(CLIENT_LABEL, nonce, &server_nonce);
    if hmac::verify(&hmac_key(key), &expected, &proof).is_err() {
        return Err("the caller does not hold this server's primary gossip key".into());
    }
    stream
        .write_all(&[ACCEPTED])
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (inbound, outbound) = session_keys(key, nonce, &server_nonce);
    Ok((Seal::new(inbound), Seal::new(outbound)))
}

/// Opens the caller's side of a connection to a server: TLS when this agent calls
/// servers over TLS, else the keyring handshake when it holds a gossip key and seals
/// what it sends (`encrypt_verify_outgoing`), else plaintext. `Err` says why, for
/// [`super::RpcError::Connect`].
pub(crate) async fn connect(
    addr: SocketAddr,
    deadline: Instant,
    tls: Option<&RpcTls>,
    keys: Option<Encryption>,
) -> Result<(FrameReader, FrameWriter), String> {
    // A server that does not answer at all is unreachable (try another), not slow.
    let mut stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| "connection timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    if let Some((config, tls)) = tls.and_then(|t| t.client.clone().map(|c| (c, t))) {
        let name = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
            .map_err(|e| format!("bad server name: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let stream = tokio::time::timeout_at(deadline, connector.connect(name, stream))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (reader, writer) = halves(stream);
        return Ok((
            FrameReader::new(reader, None, None),
            FrameWriter::new(writer, None),
        ));
    }
    let seals = match keys.filter(|k| k.verify_outgoing) {
        Some(keys) => Some(
            tokio::time::timeout_at(deadline, handshake_as_caller(&mut stream, &keys.keyring))
                .await
                .map_err(|_| "keyring handshake timed out".to_string())?
                .map_err(|e| format!("keyring handshake: {e}"))?,
        ),
        None => None,
    };
    let (reader, writer) = halves(stream);
    let (out, back) = match seals {
        Some((out, back)) => (Some(out), Some(back)),
        None => (None, None),
    };
    Ok((
        FrameReader::new(reader, back, None),
        FrameWriter::new(writer, out),
    ))
}

/// An accepted connection, ready for frames.
pub(crate) struct Accepted {
    pub(crate) reader: FrameReader,
    pub(crate) writer: FrameWriter,
    pub(crate) caller: Caller,
}

/// Why a connection was refused, for the log.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// What was refused.
    pub(crate) what: &'static str,
    /// Why.
    pub(crate) error: String,
}

/// Time a refused plaintext caller gets to hear why, before the connection closes.
const TELL_TIMEOUT: Duration = Duration::from_secs(1);
/// What is read (and dropped) of a refused caller's frames before closing, so that the
/// close does not reset the connection before the caller reads why.
const TELL_DRAIN: usize = 64 * 1024;

/// Tells a plaintext caller why it is refused, in one frame it reads as an answer,
/// then closes: the caller's error then names the cause and the keys that fix it
/// instead of "connection closed". Bounded by [`TELL_TIMEOUT`] and [`TELL_DRAIN`].
async fn tell_and_close(stream: &mut TcpStream, why: super::Refused) {
    use tokio::io::AsyncWriteExt;
    let frame = super::refusal_frame(why);
    let told = tokio::time::timeout(TELL_TIMEOUT, stream.write_all(&frame)).await;
    if matches!(told, Ok(Ok(()))) {
        drain_and_close(stream).await;
    }
}

/// Ends the connection without a reset: shuts the sending side, then reads (and drops)
/// what the caller sent, within [`TELL_TIMEOUT`] and [`TELL_DRAIN`], so that what was
/// sent to it last (a refusal, a TLS alert) is not discarded by its kernel.
async fn drain_and_close(stream: &mut TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(TELL_TIMEOUT, async {
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < TELL_DRAIN {
            match stream.read(&mut buf).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
}

fn refuse(what: &'static str, error: impl Into<String>) -> Refusal {
    Refusal {
        what,
        error: error.into(),
    }
}

/// Decides how a new connection speaks and what its caller proved (see the module
/// documentation). Frames from an unproven caller are charged to `budget`. A connection
/// that sends nothing within [`HANDSHAKE_TIMEOUT`] is dropped without a log line.
pub(crate) async fn accept(
    mut stream: TcpStream,
    peer: SocketAddr,
    tls: Option<&RpcTls>,
    keys: Option<Encryption>,
    budget: &Arc<FrameBudget>,
) -> Result<Option<Accepted>, Refusal> {
    let open = !can_prove(tls, keys.as_ref());
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) {
        return Ok(None);
    }
    let unproven = |reader, writer| Accepted {
        reader: FrameReader::new(reader, None, Some((budget.clone(), peer.ip()))),
        writer: FrameWriter::new(writer, None),
        caller: Caller {
            addr: peer,
            proven: false,
            open,
        },
    };
    if first[0] == TLS_HANDSHAKE_BYTE {
        let Some(config) = tls.and_then(|t| t.server.clone()) else {
            return Err(refuse(
                "TLS is not configured on this server",
                "a TLS handshake arrived",
            ));
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let accepted =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream).into_fallible())
                .await
                .map_err(|_| refuse("TLS handshake failed", "timed out"))?;
        let stream = match accepted {
            Ok(stream) => stream,
            Err((e, mut tcp)) => {
                // rustls sent its alert (a certificate refused after a TLS 1.3
                // handshake, say): close without resetting, so that the caller reads it.
                drain_and_close(&mut tcp).await;
                return Err(refuse("TLS handshake failed", e.to_string()));
            }
        };
        // The server config verifies any certificate a caller presents against the CA.
        let proven = stream
            .get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty());
        let (reader, writer) = halves(stream);
        if !proven {
            return Ok(Some(unproven(reader, writer)));
        }
        return Ok(Some(Accepted {
            reader: FrameReader::new(reader, None, None),
            writer: FrameWriter::new(writer, None),
            caller: Caller {
                addr: peer,
                proven: true,
                open,
            },
        }));
    }
    if first[0] == MAGIC[0] {
        let Some(keys) = keys else {
            return Err(refuse(
                "keyring handshake",
                "gossip encryption is not configured on this server",
            ));
        };
        let (inbound, outbound) = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            handshake_as_server(&mut stream, &keys.keyring),
        )
        .await
        .map_err(|_| refuse("keyring handshake failed", "timed out"))?
        .map_err(|e| refuse("keyring handshake failed", e))?;
        let (reader, writer) = halves(stream);
        return Ok(Some(Accepted {
            reader: FrameReader::new(reader, Some(inbound), None),
            writer: FrameWriter::new(writer, Some(outbound)),
            caller: Caller {
                addr: peer,
                proven: true,
                open,
            },
        }));
    }
    if tls.is_some_and(|t| t.verify_incoming) {
        tell_and_close(&mut stream, super::Refused::TlsRequired).await;
        return Err(refuse("plaintext", "verify_incoming requires TLS"));
    }
    if keys.is_some_and(|k| k.verify_incoming) {
        tell_and_close(&mut stream, super::Refused::KeyRequired).await;
        return Err(refuse(
            "plaintext",
            "this server port needs the gossip key (encrypt_verify_incoming)",
        ));
    }
    let (reader, writer) = halves(stream);
    Ok(Some(unproven(reader, writer)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn keys(ring: Keyring) -> Option<Encryption> {
        Some(Encryption {
            keyring: ring,
            file: None,
            verify_incoming: true,
            verify_outgoing: true,
        })
    }

    fn ring(fill: u8) -> Keyring {
        Keyring::new(Key::from_bytes(vec![fill; 32]).unwrap())
    }

    /// One accept of a connection made with `connect`, both sides' results.
    async fn pair(
        server_keys: Option<Encryption>,
        caller_keys: Option<Encryption>,
    ) -> (
        Result<Option<Accepted>, Refusal>,
        Result<(FrameReader, FrameWriter), String>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let budget = FrameBudget::new(1 << 20, 1 << 20);
        let server = async {
            let (stream, peer) = listener.accept().await.unwrap();
            accept(stream, peer, None, server_keys, &budget).await
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        // The caller speaks first on a plaintext connection.
        let caller = async {
            let (reader, mut writer) = connect(addr, deadline, None, caller_keys).await?;
            let _ = writer.write(b"hello").await;
            Ok((reader, writer))
        };
        tokio::join!(server, caller)
    }

    #[tokio::test]
    async fn a_caller_holding_the_servers_key_is_proven_and_frames_are_sealed() {
        let mut caller_ring = ring(2);
        caller_ring.install(Key::from_bytes(vec![1; 32]).unwrap());
        let (accepted, connected) = pair(keys(ring(1)), keys(caller_ring)).await;
        let mut accepted = accepted.unwrap().unwrap();
        assert!(accepted.caller.proven);
        assert!(accepted.caller.may_use_keyring());
        let (mut reader, _writer) = connected.unwrap();
        assert_eq!(accepted.reader.read().await.unwrap().payload, b"hello");
        accepted.writer.write(b"pong").await.unwrap();
        assert_eq!(reader.read().await.unwrap().payload, b"pong");
    }

    #[tokio::test]
    async fn a_caller_without_the_key_is_refused_and_told_why() {
        let (accepted, connected) = pair(keys(ring(1)), keys(ring(2))).await;
        // The caller does not find the server's key and gives up; the server sees the
        // handshake end.
        assert!(accepted.is_err());
        let e = connected.err().unwrap();
        assert!(e.contains("not installed on this agent"), "{e}");
    }

    #[tokio::test]
    async fn plaintext_is_refused_where_a_key_is_required_and_unproven_elsewhere() {
        let (accepted, _) = pair(keys(ring(1)), None).await;
        let refusal = accepted.err().unwrap();
        assert_eq!(refusal.what, "plaintext");
        // With encrypt_verify_incoming off, a plaintext caller is served unproven: it may
        // read and write the catalog, not speak Raft or touch the keyring.
        let mut lenient = keys(ring(1)).unwrap();
        lenient.verify_incoming = false;
        let (accepted, _) = pair(Some(lenient), None).await;
        let caller = accepted.unwrap().unwrap().caller;
        assert!(!caller.proven && !caller.may_use_keyring());
        assert!(caller.may_change_raft(), "nothing to prove with");
        // With nothing configured the port is open, but keys are never handed out.
        let (accepted, _) = pair(None, None).await;
        let caller = accepted.unwrap().unwrap().caller;
        assert!(caller.open && caller.may_change_raft() && !caller.may_use_keyring());
    }

    #[tokio::test]
    async fn a_handshake_to_a_server_without_a_key_is_refused() {
        let (accepted, connected) = pair(None, keys(ring(1))).await;
        assert_eq!(accepted.err().unwrap().what, "keyring handshake");
        assert!(connected.is_err());
    }

    #[test]
    fn only_a_configured_proof_closes_the_port() {
        let mut k = keys(ring(1)).unwrap();
        assert!(can_prove(None, Some(&k)));
        k.verify_incoming = false;
        assert!(!can_prove(None, Some(&k)));
        assert!(!can_prove(None, None));
    }
}
