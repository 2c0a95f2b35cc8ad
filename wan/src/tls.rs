//! TLS material: the federation's CA and its certificates (`proconsul tls ca create`,
//! `proconsul tls cert create`), and rustls configurations built from the files an agent
//! is given (`ca_file`, `cert_file`, `key_file`).
//!
//! Names follow Consul: the CA is `<domain>-agent-ca.pem` with `<domain>-agent-ca-key.pem`;
//! a server certificate of datacenter `dc1` is `dc1-server-<domain>-<n>.pem` for the first
//! free `<n>`, with the SANs `server.dc1.<domain>`, `localhost` and `127.0.0.1`. A server
//! that verifies hostnames accepts only a peer whose certificate names
//! `server.<its dc>.<domain>`. Keys are ECDSA P-256 (ring, through rcgen and rustls).
//!
//! Invariants: nothing here trusts the operating system's roots; only the configured CA.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why TLS material could not be made or loaded; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: String,
    },
    /// A file exists where a new one was to be written (Consul refuses too).
    #[error("{0} already exists")]
    Exists(PathBuf),
    /// The content is not what it should be.
    #[error("{path}: {error}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: String,
    },
    /// Certificate generation failed.
    #[error("generating the certificate: {0}")]
    Generate(String),
    /// rustls refused the material (a key that does not match the certificate, say).
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn generation(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// The kinds of certificate `tls cert create` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// A server of a datacenter: `server.<dc>.<domain>`, server and client auth.
    Server,
    /// A client agent: `client.<dc>.<domain>`, server and client auth.
    Client,
    /// The CLI: `cli.<dc>.<domain>`, client auth.
    Cli,
}

impl CertKind {
    fn label(self) -> &'static str {
        match self {
            CertKind::Server => "server",
            CertKind::Client => "client",
            CertKind::Cli => "cli",
        }
    }
}

/// What a new certificate says.
#[derive(Debug, Clone)]
pub struct CertRequest {
    /// Server, client or CLI.
    pub kind: CertKind,
    /// Datacenter (`dc1`).
    pub datacenter: String,
    /// Domain (`consul`).
    pub domain: String,
    /// A node name, adding `<node>.server.<dc>.<domain>` (servers only).
    pub node: Option<String>,
    /// Validity.
    pub days: u32,
    /// More DNS names.
    pub extra_dns: Vec<String>,
    /// More IP addresses.
    pub extra_ips: Vec<IpAddr>,
}

impl CertRequest {
    /// A request with Consul's defaults: domain `consul`, valid for [`CERT_DAYS`], no
    /// node name and no extra names.
    pub fn new(kind: CertKind, datacenter: &str) -> CertRequest {
        CertRequest {
            kind,
            datacenter: datacenter.to_owned(),
            domain: "consul".into(),
            node: None,
            days: CERT_DAYS,
            extra_dns: Vec::new(),
            extra_ips: Vec::new(),
        }
    }
}

/// A certificate and its private key, in PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8).
    pub key: String,
}

/// The name a server of `datacenter` must have in its certificate.
pub fn server_name(datacenter: &str, domain: &str) -> String {
    format!("server.{datacenter}.{}", domain.trim_end_matches('.'))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A minute of slack for clocks that are a little behind.
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// A new CA (`tls ca create`): valid for `days`, named for `domain`.
pub fn create_ca(domain: &str, days: u32) -> Result<Pem, TlsError> {
    let key = KeyPair::generate().map_err(generation)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let domain = domain.trim_end_matches('.');
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Proconsul Agent CA {}", rand_suffix()),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "proconsul");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![SanType::DnsName(domain.try_into().map_err(generation)?)];
    validity(&mut params, days);
    let cert = params.self_signed(&key).map_err(generation)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn rand_suffix() -> u32 {
    // Distinguishes CAs made on the same day; not a secret.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos % 1_000_000
}

/// A new certificate signed by the CA (`tls cert create`).
pub fn create_cert(ca: &Pem, request: &CertRequest) -> Result<Pem, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(generation)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(generation)?;
    let key = KeyPair::generate().map_err(generation)?;
    let domain = request.domain.trim_end_matches('.');
    let label = request.kind.label();
    let primary = format!("{label}.{}.{domain}", request.datacenter);
    let mut names = vec![primary.clone(), "localhost".to_string()];
    if let (CertKind::Server, Some(node)) = (request.kind, &request.node) {
        names.push(format!("{node}.{primary}"));
    }
    names.extend(request.extra_dns.iter().cloned());
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, primary);
    params.subject_alt_names = names
        .iter()
        .map(|n| n.as_str().try_into().map(SanType::DnsName))
        .collect::<Result<_, _>>()
        .map_err(generation)?;
    let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
    if request.kind == CertKind::Cli {
        ips.clear();
    }
    ips.extend(request.extra_ips.iter().copied());
    params
        .subject_alt_names
        .extend(ips.into_iter().map(SanType::IpAddress));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match request.kind {
        CertKind::Cli => vec![ExtendedKeyUsagePurpose::ClientAuth],
        _ => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, request.days);
    let cert = params.signed_by(&key, &issuer).map_err(generation)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Consul's file names for the CA of `domain`.
pub fn ca_file_names(domain: &str) -> (String, String) {
    let d = domain.trim_end_matches('.');
    (format!("{d}-agent-ca.pem"), format!("{d}-agent-ca-key.pem"))
}

/// The first free `<dc>-<kind>-<domain>-<n>.pem` / `…-key.pem` pair in `dir`.
pub fn cert_file_names(dir: &Path, request: &CertRequest) -> (PathBuf, PathBuf) {
    let d = request.domain.trim_end_matches('.');
    let label = request.kind.label();
    let mut n = 0;
    loop {
        let base = format!("{}-{label}-{d}-{n}", request.datacenter);
        let cert = dir.join(format!("{base}.pem"));
        let key = dir.join(format!("{base}-key.pem"));
        if !cert.exists() && !key.exists() {
            return (cert, key);
        }
        n += 1;
    }
}

/// Writes `text` to a new file (never over an existing one); `secret` files are 0600.
pub fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file = |error: std::io::Error| TlsError::File {
        path: path.to_owned(),
        error: error.to_string(),
    };
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 });
    let mut f = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::Exists(path.to_owned())
        } else {
            file(e)
        }
    })?;
    f.write_all(text.as_bytes()).map_err(file)?;
    f.sync_all().map_err(file)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        error: e.to_string(),
    })
}

/// The CA certificates of a PEM file (at least one).
fn load_roots(ca_file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    add_roots(&mut roots, ca_file)?;
    if roots.is_empty() {
        return Err(TlsError::Invalid {
            path: ca_file.to_owned(),
            error: "no PEM certificate in it".into(),
        });
    }
    Ok(roots)
}

/// Adds the certificates of a PEM file to `roots`.
fn add_roots(roots: &mut RootCertStore, ca_file: &Path) -> Result<(), TlsError> {
    let invalid = |error: String| TlsError::Invalid {
        path: ca_file.to_owned(),
        error,
    };
    let ca = read(ca_file)?;
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| invalid(e.to_string()))?;
        roots.add(cert).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(())
}

/// The CA certificates of a PEM file, or of every file under a directory (Consul's
/// `ca_path`; files holding no certificate add nothing); at least one.
fn load_roots_from(path: &Path) -> Result<RootCertStore, TlsError> {
    if !path.is_dir() {
        return load_roots(path);
    }
    let mut roots = RootCertStore::empty();
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| TlsError::File {
            path: dir.clone(),
            error: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let file = entry.path();
            if file.is_dir() {
                dirs.push(file);
            } else {
                add_roots(&mut roots, &file)?;
            }
        }
    }
    if roots.is_empty() {
        return Err(TlsError::Invalid {
            path: path.to_owned(),
            error: "no PEM certificate under it".into(),
        });
    }
    Ok(roots)
}

/// A certificate chain and its private key, from PEM files.
fn load_identity(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let bytes = read(cert_file)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid {
            path: cert_file.to_owned(),
            error: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Invalid {
            path: cert_file.to_owned(),
            error: "no PEM certificate in it".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_file)?).map_err(|e| TlsError::Invalid {
        path: key_file.to_owned(),
        error: format!("no private key in it: {e}"),
    })?;
    Ok((chain, key))
}

/// The server configuration of an HTTPS API: it presents the certificate of
/// `cert_file` (with `key_file`); with `client_ca` (a PEM file, or a directory of them),
/// a client must present a certificate from that CA or the handshake fails
/// (`verify_incoming`); with `tls13_only`, TLS 1.2
/// clients are refused (`tls_min_version = "TLSv1_3"`). Offers `http/1.1` by ALPN.
pub fn https_server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
    tls13_only: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca_file) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(load_roots_from(ca_file)?),
                provider,
            )
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let (chain, key) = load_identity(cert_file, key_file)?;
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("{}: {e}", cert_file.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The files an agent is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate(s) peers must chain to (`ca_file`).
    pub ca_file: PathBuf,
    /// This agent's certificate (`cert_file`), if it has one.
    pub cert_file: Option<PathBuf>,
    /// Its key (`key_file`).
    pub key_file: Option<PathBuf>,
}

/// Loaded TLS material.
#[derive(Debug, Clone)]
pub struct Material {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Option<Arc<PrivateKeyDer<'static>>>,
}

impl Material {
    /// Reads and checks the files.
    pub fn load(files: &TlsFiles) -> Result<Material, TlsError> {
        let roots = load_roots(&files.ca_file)?;
        let (chain, key) = match (&files.cert_file, &files.key_file) {
            (Some(cert_file), Some(key_file)) => {
                let (chain, key) = load_identity(cert_file, key_file)?;
                (chain, Some(Arc::new(key)))
            }
            (None, None) => (Vec::new(), None),
            (Some(c), None) | (None, Some(c)) => {
                return Err(TlsError::Invalid {
                    path: c.clone(),
                    error: "cert_file and key_file must be given together".into(),
                });
            }
        };
        Ok(Material {
            roots: Arc::new(roots),
            chain,
            key,
        })
    }

    /// Whether this agent has a certificate of its own.
    pub fn has_certificate(&self) -> bool {
        self.key.is_some()
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        self.key
            .as_ref()
            .map(|k| k.clone_key())
            .ok_or_else(|| TlsError::Config("this agent has no certificate (cert_file)".into()))
    }

    /// A server configuration: this agent's certificate. Peers are asked for a
    /// certificate, and one they present must come from the CA; with
    /// `require_client_cert` (`verify_incoming`) they must present one.
    pub fn server_config(
        &self,
        require_client_cert: bool,
        alpn: &[&[u8]],
    ) -> Result<rustls::ServerConfig, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(Material::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), Material::provider());
        // Without `verify_incoming` a caller may come without a certificate: it is then
        // served as unproven (see the server port's rules in proconsul-lan).
        let verifier = if require_client_cert {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        let verifier = verifier
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = builder.with_client_cert_verifier(verifier);
        let mut config = builder
            .with_single_cert(self.chain.clone(), self.key()?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// A client configuration that trusts only the CA and presents this agent's
    /// certificate when it has one. Without `verify_hostname` the server's certificate
    /// must chain to the CA but may carry any name.
    pub fn client_config(
        &self,
        verify_hostname: bool,
        alpn: &[&[u8]],
    ) -> Result<rustls::ClientConfig, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(Material::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if verify_hostname {
            builder.with_root_certificates(self.roots.clone())
        } else {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                self.roots.clone(),
                Material::provider(),
            )
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { inner }))
        };
        let mut config = match &self.key {
            Some(_) => builder
                .with_client_auth_cert(self.chain.clone(), self.key()?)
                .map_err(|e| TlsError::Config(e.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// Verifies that a server certificate chains to the CA and is valid now, whatever name it
/// carries (`verify_server_hostname = false`, Consul's default).
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Default validity of a new CA, as Consul's (5 years).
pub const CA_DAYS: u32 = 1825;
/// Default validity of a new certificate, as Consul's (1 year).
pub const CERT_DAYS: u32 = 365;

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: CertKind, dc: &str) -> CertRequest {
        CertRequest::new(kind, dc)
    }

    #[test]
    fn files_get_consul_names_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ca_file_names("consul"),
            (
                "consul-agent-ca.pem".to_string(),
                "consul-agent-ca-key.pem".to_string()
            )
        );
        let r = request(CertKind::Server, "dc1");
        let (cert, key) = cert_file_names(dir.path(), &r);
        assert!(cert.ends_with("dc1-server-consul-0.pem"));
        assert!(key.ends_with("dc1-server-consul-0-key.pem"));
        write_new(&cert, "x", false).unwrap();
        assert!(matches!(
            write_new(&cert, "y", false),
            Err(TlsError::Exists(_))
        ));
        let (next, _) = cert_file_names(dir.path(), &r);
        assert!(next.ends_with("dc1-server-consul-1.pem"));
    }

    #[test]
    fn certificates_chain_to_their_ca_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca("consul", 30).unwrap();
        let server = create_cert(&ca, &request(CertKind::Server, "dc1")).unwrap();
        let ca_path = dir.path().join("ca.pem");
        let cert_path = dir.path().join("s.pem");
        let key_path = dir.path().join("s-key.pem");
        std::fs::write(&ca_path, &ca.cert).unwrap();
        std::fs::write(&cert_path, &server.cert).unwrap();
        std::fs::write(&key_path, &server.key).unwrap();
        let files = TlsFiles {
            ca_file: ca_path.clone(),
            cert_file: Some(cert_path.clone()),
            key_file: Some(key_path.clone()),
        };
        let material = Material::load(&files).unwrap();
        assert!(material.has_certificate());
        material.server_config(true, &[]).unwrap();
        material.client_config(true, &[]).unwrap();
        // A key that is not the certificate's is refused by rustls.
        let other = create_cert(&ca, &request(CertKind::Server, "dc1")).unwrap();
        std::fs::write(&key_path, &other.key).unwrap();
        let material = Material::load(&files).unwrap();
        assert!(material.server_config(true, &[]).is_err());
        // Missing and broken files name the file.
        let e = Material::load(&TlsFiles {
            ca_file: dir.path().join("nope.pem"),
            cert_file: None,
            key_file: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("nope.pem"), "{e}");
        std::fs::write(&ca_path, "not pem").unwrap();
        let e = Material::load(&files).unwrap_err();
        assert!(e.to_string().contains("ca.pem"), "{e}");
    }
}
