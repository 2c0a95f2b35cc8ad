//! The raw client of an agent's HTTP API: one request on one connection, the whole
//! answer read into memory, every request bounded by [`REQUEST_TIMEOUT`]. proconsul's
//! CLI verbs and tests use it directly; [`super::AgentClient`] decodes its answers into
//! typed values.
//!
//! An `https://` address (or any address with [`Client::with_tls`] told to default to
//! HTTPS, as `CONSUL_HTTP_SSL=true` does) speaks TLS: the agent's certificate must chain
//! to the CA of [`TlsOptions`] (else to the system's CA bundle) and name the host
//! dialled (or [`TlsOptions::server_name`]); a client certificate is presented when one
//! is given, for agents with `verify_incoming`.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Method;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};

/// Budget of one request, from connecting to the last byte of the answer: a CLI verb or
/// a program waits no longer for an agent that does not answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response read; a bigger one fails rather than filling memory. A snapshot save
/// is the largest answer (80 MiB for 170,000 instances); an agent restores up to 256 MiB.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Where the system's CA bundle may be, as Go's TLS stack (and so Consul's CLI) looks
/// for it on Linux and the BSDs; the first that can be read is used.
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/etc/ssl/cert.pem",
];

/// An agent's HTTP API, as `-http-addr` / `CONSUL_HTTP_ADDR` name it. Its `Debug` form
/// leaves the token out.
#[derive(Clone)]
pub struct Client {
    authority: String,
    tls: Option<Tls>,
    /// Sent as `X-Consul-Token` with every request.
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("authority", &self.authority)
            .field("https", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "redacted"))
            .finish()
    }
}

/// How to speak TLS to an agent's HTTPS API: Consul's `-ca-file`, `-ca-path`,
/// `-client-cert`, `-client-key` and `-tls-server-name` flags (`CONSUL_CACERT`,
/// `CONSUL_CAPATH`, `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`,
/// `CONSUL_TLS_SERVER_NAME`) and `CONSUL_HTTP_SSL_VERIFY`.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// A PEM file of the CA certificates the agent's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// A directory of such files (read when `ca_file` is not given).
    pub ca_path: Option<PathBuf>,
    /// The certificate to present, for an agent with `verify_incoming`.
    pub client_cert: Option<PathBuf>,
    /// Its key.
    pub client_key: Option<PathBuf>,
    /// The name the agent's certificate must carry, instead of the host dialled.
    pub server_name: Option<String>,
    /// Accept any certificate (`CONSUL_HTTP_SSL_VERIFY=false`): the connection is
    /// encrypted but the agent is not authenticated.
    pub skip_verify: bool,
}

/// A TLS connector and the name to check the agent's certificate against.
#[derive(Clone)]
struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// A response: status, headers and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Response {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why [`Client::new`] or [`Client::with_tls`] refused an address or its TLS settings.
/// Nothing was sent; the user should give another address or fix the files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// A `unix://` address: this client speaks HTTP over TCP only.
    #[error("{addr}: only http:// and https:// agent addresses are supported")]
    Scheme {
        /// The address as given (trimmed).
        addr: String,
    },
    /// Nothing left once the scheme and trailing slashes are taken off.
    #[error("the HTTP address is empty")]
    Empty,
    /// The TLS settings cannot be used: a file is unreadable or holds no PEM
    /// certificate or key, a certificate comes without its key, or no CA is known.
    #[error("{0}")]
    Tls(String),
    /// The token file (`-token-file`, `CONSUL_HTTP_TOKEN_FILE`) cannot be read.
    #[error("Error loading token file {path}: {error}")]
    TokenFile {
        /// The file.
        path: String,
        /// Why.
        error: String,
    },
}

/// Why a request failed. Each message carries the text of its cause (so `{:#}` and
/// `to_string` print the same line); the variant says whether the request can have
/// reached the agent.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The agent could not be reached, so nothing was sent: check the address or that
    /// the agent runs, or ask another agent.
    #[error("Error connecting to the agent at {authority}: {error}")]
    Connect {
        /// The agent's `host:port`.
        authority: String,
        /// What connecting reported.
        error: std::io::Error,
    },
    /// No whole answer within [`REQUEST_TIMEOUT`]. The agent may have acted on the
    /// request (a write may have been applied); try again later or ask another agent.
    #[error("no answer from the agent at {authority} within {REQUEST_TIMEOUT:?}: {error}")]
    Timeout {
        /// The agent's `host:port`.
        authority: String,
        /// The elapsed timer.
        error: tokio::time::error::Elapsed,
    },
    /// The TLS handshake with an HTTPS agent failed (its certificate is not from the CA
    /// or does not carry the name, or it wants a client certificate): nothing was sent.
    /// Check `-ca-file`, `-tls-server-name` and `-client-cert`.
    #[error("TLS handshake with the agent at {authority} failed: {error}")]
    Tls {
        /// The agent's `host:port`.
        authority: String,
        /// What the handshake reported.
        error: std::io::Error,
    },
    /// The HTTP exchange broke after the connection was made (the handshake, sending, or
    /// the response head). The agent may have acted on the request.
    #[error("{}", Chain(.0))]
    Exchange(hyper::Error),
    /// The request could not be built: the path is not a valid request target. Fix the
    /// path; nothing was sent.
    #[error("{}", Chain(.0))]
    Request(hyper::http::Error),
    /// The body of the answer could not be read, or was larger than this client reads
    /// (64 MiB). The agent may have acted on the request.
    #[error("reading the response: {0}")]
    Body(Box<dyn StdError + Send + Sync>),
    /// The agent answered with a status other than 200 (from [`Client::get`] and
    /// [`Client::put`] only; [`Client::call`] returns every answer). `message` is its
    /// text, trimmed: report it to the user. The words are Consul's CLI's.
    #[error("Unexpected response code: {status} ({message})")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The agent's plain-text error.
        message: String,
    },
}

/// An error followed by its sources, `: `-separated, the way `{:#}` prints an
/// `anyhow::Error`.
struct Chain<'a>(&'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

impl Client {
    /// `127.0.0.1:8500`, `http://127.0.0.1:8500` or `https://127.0.0.1:8501` (checked
    /// against the system's CA bundle; see [`Client::with_tls`] for the other settings).
    pub fn new(http_addr: &str) -> Result<Client, AddressError> {
        Client::with_tls(http_addr, false, &TlsOptions::default())
    }

    /// An agent's address with a scheme (`http://`, `https://`) or without one: then
    /// HTTPS when `https` is true (`CONSUL_HTTP_SSL=true`), else plain HTTP. Over HTTPS,
    /// `tls` says how to check the agent and what to present to it; its files are read
    /// now.
    pub fn with_tls(
        http_addr: &str,
        https: bool,
        tls: &TlsOptions,
    ) -> Result<Client, AddressError> {
        let addr = http_addr.trim();
        let (authority, https) = if let Some(rest) = addr.strip_prefix("http://") {
            (rest, false)
        } else if let Some(rest) = addr.strip_prefix("https://") {
            (rest, true)
        } else if addr.contains("://") {
            return Err(AddressError::Scheme {
                addr: addr.trim_end_matches('/').to_owned(),
            });
        } else {
            (addr, https)
        };
        let authority = authority.trim_end_matches('/');
        if authority.is_empty() {
            return Err(AddressError::Empty);
        }
        let tls = if https {
            Some(Tls::new(authority, tls)?)
        } else {
            None
        };
        Ok(Client {
            authority: authority.to_owned(),
            tls,
            token: None,
        })
    }

    /// Whether a token is sent.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// This client, sending `token` (when set) as `X-Consul-Token` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// Whether requests go over HTTPS.
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }

    /// Sends a request and reads the whole response, whatever its status.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Response, RequestError> {
        let body = body.map(String::into_bytes).unwrap_or_default();
        self.call_bytes(method, path, body).await
    }

    /// Sends a request whose body is any bytes (a key's value, say) and reads the whole
    /// response, whatever its status.
    pub async fn call_bytes(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Response, RequestError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body)).await {
            Ok(answer) => answer,
            Err(elapsed) => Err(RequestError::Timeout {
                authority: self.authority.clone(),
                error: elapsed,
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Response, RequestError> {
        match self.connect().await? {
            Connected::Plain(stream) => self.send(stream, method, path, body).await,
            Connected::Tls(stream) => self.send(*stream, method, path, body).await,
        }
    }

    /// Sends one request on a connection and reads the whole answer.
    async fn send<S>(
        &self,
        stream: S,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Response, RequestError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(RequestError::Exchange)?;
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONNECTION, "close");
        if let Some(token) = &self.token {
            request = request.header("x-consul-token", token);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(RequestError::Request)?;
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(RequestError::Exchange)?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(RequestError::Body)?
                .to_bytes();
            Ok(Response {
                status,
                headers,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            })
        };
        let (response, _) = tokio::join!(exchange, conn);
        response
    }

    /// GET, failing on a non-200 answer with the agent's message.
    pub async fn get(&self, path: &str) -> Result<String, RequestError> {
        let r = self.call(Method::GET, path, None).await?;
        ok(r)
    }

    /// PUT, failing on a non-200 answer with the agent's message.
    pub async fn put(&self, path: &str, body: Option<String>) -> Result<String, RequestError> {
        let r = self.call(Method::PUT, path, body).await?;
        ok(r)
    }
}

/// The connection under a [`Stream`], driven while its body is read.
type Driver = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), hyper::Error>> + Send>>;

/// An answer read as it arrives, for endpoints that stream (`/v1/agent/monitor`).
pub struct Stream {
    body: hyper::body::Incoming,
    connection: Driver,
    connection_done: bool,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream").finish_non_exhaustive()
    }
}

impl Stream {
    /// The next piece of the body as it arrives; `None` when the agent ended it. Waits
    /// as long as the agent sends nothing (no [`REQUEST_TIMEOUT`] here).
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, RequestError> {
        loop {
            tokio::select! {
                frame = self.body.frame() => match frame {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(RequestError::Body(Box::new(e))),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            return Ok(Some(data));
                        }
                    }
                },
                result = &mut self.connection, if !self.connection_done => {
                    self.connection_done = true;
                    result.map_err(RequestError::Exchange)?;
                }
            }
        }
    }
}

impl Client {
    /// GETs `path` and returns its body as a [`Stream`] once the agent has answered 200
    /// (within [`REQUEST_TIMEOUT`]); another status fails with the agent's message.
    pub async fn stream(&self, path: &str) -> Result<Stream, RequestError> {
        let open = async {
            match self.connect().await? {
                Connected::Plain(s) => self.open_stream(s, path).await,
                Connected::Tls(s) => self.open_stream(*s, path).await,
            }
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, open).await {
            Ok(stream) => stream,
            Err(elapsed) => Err(RequestError::Timeout {
                authority: self.authority.clone(),
                error: elapsed,
            }),
        }
    }

    async fn connect(&self) -> Result<Connected, RequestError> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|error| RequestError::Connect {
                authority: self.authority.clone(),
                error,
            })?;
        let Some(tls) = &self.tls else {
            return Ok(Connected::Plain(stream));
        };
        let stream = tls
            .connector
            .connect(tls.server_name.clone(), stream)
            .await
            .map_err(|error| RequestError::Tls {
                authority: self.authority.clone(),
                error,
            })?;
        Ok(Connected::Tls(Box::new(stream)))
    }

    async fn open_stream<S>(&self, stream: S, path: &str) -> Result<Stream, RequestError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(RequestError::Exchange)?;
        let mut request = hyper::Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONNECTION, "close");
        if let Some(token) = &self.token {
            request = request.header("x-consul-token", token);
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(RequestError::Request)?;
        let mut connection: Driver = Box::pin(conn);
        let mut connection_done = false;
        let responding = sender.send_request(request);
        tokio::pin!(responding);
        let response = tokio::select! {
            biased;
            response = &mut responding => response.map_err(RequestError::Exchange)?,
            // The agent may answer and close before the answer is picked up.
            result = &mut connection => {
                connection_done = true;
                result.map_err(RequestError::Exchange)?;
                responding.await.map_err(RequestError::Exchange)?
            }
        };
        let status = response.status().as_u16();
        let mut stream = Stream {
            body: response.into_body(),
            connection,
            connection_done,
        };
        if status == 200 {
            return Ok(stream);
        }
        let mut message = Vec::new();
        while let Some(chunk) = stream.next_chunk().await? {
            message.extend_from_slice(&chunk);
            if message.len() > MAX_ERROR_BYTES {
                break;
            }
        }
        Err(RequestError::Status {
            status,
            message: String::from_utf8_lossy(&message).trim().to_owned(),
        })
    }
}

/// A connection to the agent, plain or TLS.
enum Connected {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// Most of an error answer read from a stream endpoint.
const MAX_ERROR_BYTES: usize = 64 * 1024;

impl Tls {
    /// The TLS side of a client of the agent at `authority` (`host:port`).
    fn new(authority: &str, options: &TlsOptions) -> Result<Tls, AddressError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| AddressError::Tls(e.to_string()))?;
        let builder = if options.skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else {
            builder.with_root_certificates(roots(options)?)
        };
        let mut config = match (&options.client_cert, &options.client_key) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    AddressError::Tls(format!("{}: no private key in it: {e}", key.display()))
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| AddressError::Tls(format!("{}: {e}", cert.display())))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(AddressError::Tls(
                    "-client-cert and -client-key must be given together".into(),
                ));
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = options
            .server_name
            .clone()
            .unwrap_or_else(|| host(authority).to_owned());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| AddressError::Tls(format!("{name:?} is not a server name: {e}")))?;
        Ok(Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// The host part of `host:port` or `[v6]:port` (brackets removed).
fn host(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    }
}

/// The certificates of a PEM file (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, AddressError> {
    let bad = |e: String| AddressError::Tls(format!("{}: {e}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The CAs to check the agent's certificate against: `ca_file`, else the certificates of
/// the files under `ca_path`, else the system's bundle.
fn roots(options: &TlsOptions) -> Result<RootCertStore, AddressError> {
    let mut roots = RootCertStore::empty();
    let mut add = |certs: Vec<CertificateDer<'static>>, path: &Path| {
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| AddressError::Tls(format!("{}: {e}", path.display())))?;
        }
        Ok::<(), AddressError>(())
    };
    if let Some(file) = &options.ca_file {
        add(certificates(file)?, file)?;
    } else if let Some(dir) = &options.ca_path {
        let mut files = Vec::new();
        let mut dirs = vec![dir.clone()];
        while let Some(d) = dirs.pop() {
            let entries = std::fs::read_dir(&d)
                .map_err(|e| AddressError::Tls(format!("{}: {e}", d.display())))?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        // As Go's cert pool does, a file that holds no certificate (a key, a README)
        // adds nothing.
        for file in files {
            if let Ok(certs) = certificates(&file) {
                add(certs, &file)?;
            }
        }
    } else if let Some(bundle) = SYSTEM_CA_FILES
        .iter()
        .map(Path::new)
        .find_map(|p| certificates(p).ok().map(|c| (c, p)))
    {
        // A system bundle may hold a certificate rustls cannot use; skip it as Go does.
        for cert in bundle.0 {
            let _ = roots.add(cert);
        }
    }
    if roots.is_empty() {
        return Err(AddressError::Tls(
            "no CA certificate to check the agent's certificate against: give -ca-file or -ca-path (CONSUL_CACERT, CONSUL_CAPATH)".into(),
        ));
    }
    Ok(roots)
}

/// Accepts any server certificate (`CONSUL_HTTP_SSL_VERIFY=false`), still checking that
/// the server holds its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn ok(r: Response) -> Result<String, RequestError> {
    if r.status == 200 {
        Ok(r.body)
    } else {
        Err(RequestError::Status {
            status: r.status,
            message: r.body.trim().to_owned(),
        })
    }
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters stay as they are).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_addresses_say_why() {
        assert_eq!(
            Client::new("unix:///tmp/consul.sock")
                .unwrap_err()
                .to_string(),
            "unix:///tmp/consul.sock: only http:// and https:// agent addresses are supported"
        );
        assert_eq!(Client::new("  ").unwrap_err(), AddressError::Empty);
        assert_eq!(Client::new("https://").unwrap_err(), AddressError::Empty);
        let missing = TlsOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsOptions::default()
        };
        let e = Client::with_tls("127.0.0.1:8501", true, &missing).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/ca.pem: "), "{e}");
        let half = TlsOptions {
            client_cert: Some("/c.pem".into()),
            skip_verify: true,
            ..TlsOptions::default()
        };
        assert!(Client::with_tls("https://127.0.0.1:8501", false, &half).is_err());
    }

    #[test]
    fn the_scheme_or_the_https_default_chooses_tls() {
        let insecure = TlsOptions {
            skip_verify: true,
            ..TlsOptions::default()
        };
        let https = |addr: &str, default: bool| {
            Client::with_tls(addr, default, &insecure)
                .unwrap()
                .is_https()
        };
        assert!(https("https://127.0.0.1:8501", false));
        assert!(https("127.0.0.1:8501", true));
        assert!(!https("http://127.0.0.1:8500", true));
        assert!(!https("127.0.0.1:8500", false));
    }

    #[test]
    fn the_host_is_the_name_checked() {
        assert_eq!(host("127.0.0.1:8501"), "127.0.0.1");
        assert_eq!(host("localhost:8501"), "localhost");
        assert_eq!(host("[::1]:8501"), "::1");
        assert_eq!(host("consul.example"), "consul.example");
    }

    #[tokio::test]
    async fn an_agent_that_is_not_there_is_a_connect_error_naming_its_address() {
        // A port the OS handed out and nobody listens on any more.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = Client::new(&addr.to_string()).unwrap();
        let error = client.get("/v1/status/leader").await.unwrap_err();
        assert!(matches!(error, RequestError::Connect { .. }), "{error:?}");
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("Error connecting to the agent at {addr}: ")),
            "{text}"
        );
    }
}
