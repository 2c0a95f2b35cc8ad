//! TLS: the top-level keys of Consul before 1.12 (`ca_file`, `verify_incoming`, …) and
//! the `tls` block's `defaults` and per-interface blocks (`internal_rpc`, `https`),
//! merged in that order: the later wins, key by key.

use std::path::PathBuf;

use super::problem::{Problem, problem};
use super::raw::{self, RawConfig};

/// TLS settings for internal RPC, merged from the top-level keys, `tls.defaults` and
/// `tls.internal_rpc` (the later wins, as in Consul).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The files.
    pub files: wan::tls::TlsFiles,
    /// Servers require callers to present a certificate from the CA.
    pub verify_incoming: bool,
    /// This agent uses TLS (and checks the server's certificate) when it calls a server.
    pub verify_outgoing: bool,
    /// The server's certificate must name `server.<dc>.<domain>`.
    pub verify_server_hostname: bool,
}

/// TLS settings of the HTTPS API, merged from the top-level keys (`verify_incoming_https`
/// after `verify_incoming`), `tls.defaults` and `tls.https`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsSettings {
    /// The certificate the API presents (`cert_file`).
    pub cert_file: PathBuf,
    /// Its key (`key_file`).
    pub key_file: PathBuf,
    /// The CA client certificates must chain to: `ca_file`, else `ca_path` (a directory
    /// of PEM files); given with `verify_incoming`.
    pub ca_file: Option<PathBuf>,
    /// Clients must present a certificate from the CA, or the handshake fails.
    pub verify_incoming: bool,
    /// `tls_min_version` is `TLSv1_3`: TLS 1.2 clients are refused. proconsul speaks TLS 1.2
    /// and 1.3 only, so a lower minimum (`TLSv1_0`, `TLSv1_1`) means TLS 1.2.
    pub tls13_only: bool,
}

/// Consul's text when `verify_incoming` is set without a certificate to present.
const VERIFY_INCOMING_WITHOUT_CERT: &str = "VerifyIncoming set but neither a Cert/Key pair was provided nor was auto_encrypt/auto_config enabled";
/// Consul's text when `verify_incoming` is set without a CA to check client certificates.
const VERIFY_INCOMING_WITHOUT_CA: &str = "VerifyIncoming set but no CA certificates were provided";

/// The top-level keys of Consul before 1.12, as a block under `tls.defaults`.
fn legacy(m: &RawConfig) -> raw::RawTlsBlock {
    raw::RawTlsBlock {
        ca_file: m.ca_file.clone(),
        ca_path: m.ca_path.clone(),
        cert_file: m.cert_file.clone(),
        key_file: m.key_file.clone(),
        tls_min_version: m.tls_min_version.clone(),
        verify_incoming: m.verify_incoming,
        verify_outgoing: m.verify_outgoing,
        verify_server_hostname: m.verify_server_hostname,
    }
}

/// The block for one interface: the top-level keys, then `override_legacy` (the
/// interface's own top-level key), `tls.defaults`, and the interface's block.
fn merged(
    m: &RawConfig,
    override_legacy: raw::RawTlsBlock,
    interface: impl Fn(&raw::RawTls) -> Option<&raw::RawTlsBlock>,
) -> raw::RawTlsBlock {
    let mut block = legacy(m);
    block.merge(override_legacy);
    if let Some(t) = &m.tls {
        if let Some(d) = &t.defaults {
            block.merge(d.clone());
        }
        if let Some(b) = interface(t) {
            block.merge(b.clone());
        }
    }
    block
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.clone().filter(|s| !s.is_empty())
}

/// Whether `tls_min_version` asks for TLS 1.3 only; a value Consul does not know is a
/// problem (Consul's names, and the older `tls12` style it still reads).
fn tls13_only(key: &str, value: Option<&str>, problems: &mut Vec<Problem>) -> bool {
    match value {
        None | Some("") => false,
        Some("TLSv1_0" | "TLSv1_1" | "TLSv1_2" | "tls10" | "tls11" | "tls12") => false,
        Some("TLSv1_3" | "tls13") => true,
        Some(other) => {
            problems.push(problem(
                None,
                key,
                format!(
                    "value {other} not supported, please specify one of [TLSv1_0, TLSv1_1, TLSv1_2, TLSv1_3]"
                ),
            ));
            false
        }
    }
}

/// The HTTPS API's TLS settings when `ports.https` is on; `None` when it is off.
pub(super) fn https(
    m: &RawConfig,
    enabled: bool,
    problems: &mut Vec<Problem>,
) -> Option<HttpsSettings> {
    if !enabled {
        return None;
    }
    let block = merged(
        m,
        raw::RawTlsBlock {
            verify_incoming: m.verify_incoming_https,
            ..raw::RawTlsBlock::default()
        },
        |t| t.https.as_ref(),
    );
    if m.tls
        .as_ref()
        .and_then(|t| t.https.as_ref())
        .is_some_and(|h| h.verify_server_hostname.is_some())
    {
        problems.push(problem(
            None,
            "tls.https.verify_server_hostname",
            "only for internal RPC: set it in tls.internal_rpc or tls.defaults",
        ));
    }
    let verify_incoming = block.verify_incoming.unwrap_or(false);
    let tls13_only = tls13_only(
        "tls.https.tls_min_version",
        block.tls_min_version.as_deref(),
        problems,
    );
    let (ca, cert, key) = (
        nonempty(&block.ca_file).or_else(|| nonempty(&block.ca_path)),
        nonempty(&block.cert_file),
        nonempty(&block.key_file),
    );
    let (Some(cert), Some(key)) = (cert.clone(), key.clone()) else {
        let message = if verify_incoming {
            VERIFY_INCOMING_WITHOUT_CERT.to_owned()
        } else if cert.is_some() || key.is_some() {
            "cert_file and key_file must be given together".to_owned()
        } else {
            "HTTPS needs a certificate: set cert_file and key_file (in tls.https, tls.defaults, or at the top level)".to_owned()
        };
        problems.push(problem(None, "tls.https.cert_file", message));
        return None;
    };
    if verify_incoming && ca.is_none() {
        problems.push(problem(
            None,
            "tls.https.ca_file",
            VERIFY_INCOMING_WITHOUT_CA,
        ));
        return None;
    }
    Some(HttpsSettings {
        cert_file: PathBuf::from(cert),
        key_file: PathBuf::from(key),
        ca_file: ca.map(PathBuf::from),
        verify_incoming,
        tls13_only,
    })
}

/// The TLS settings of the merged configuration, or `None` without a `ca_file`.
/// With `https`, a certificate without a CA is the HTTPS API's, not a problem.
pub(super) fn settings(
    m: &RawConfig,
    server: bool,
    https: bool,
    problems: &mut Vec<Problem>,
) -> Option<TlsSettings> {
    let block = merged(
        m,
        raw::RawTlsBlock {
            verify_incoming: m.verify_incoming_rpc,
            ..raw::RawTlsBlock::default()
        },
        |t| t.internal_rpc.as_ref(),
    );
    if m.tls
        .as_ref()
        .and_then(|t| t.internal_rpc.as_ref())
        .is_some_and(|r| r.tls_min_version.is_some())
    {
        problems.push(problem(
            None,
            "tls.internal_rpc.tls_min_version",
            "not supported: internal RPC always speaks TLS 1.2 or 1.3; tls_min_version applies to HTTPS",
        ));
    }
    let verify_incoming = block.verify_incoming.unwrap_or(false);
    let verify_outgoing = block.verify_outgoing.unwrap_or(false);
    let verify_server_hostname = block.verify_server_hostname.unwrap_or(false);
    let (ca, cert, key) = (
        nonempty(&block.ca_file),
        nonempty(&block.cert_file),
        nonempty(&block.key_file),
    );
    if cert.is_some() != key.is_some() {
        problems.push(problem(
            None,
            "cert_file",
            "cert_file and key_file must be given together",
        ));
    }
    let Some(ca) = ca else {
        if verify_incoming || verify_outgoing || verify_server_hostname {
            let also = if nonempty(&block.ca_path).is_some() {
                " (ca_path is read for HTTPS only)"
            } else {
                ""
            };
            problems.push(problem(
                None,
                "ca_file",
                format!(
                    "verify_incoming, verify_outgoing and verify_server_hostname need a ca_file{also}"
                ),
            ));
        }
        if cert.is_some() && !https {
            problems.push(problem(None, "ca_file", "cert_file needs a ca_file"));
        }
        return None;
    };
    if server && verify_incoming && cert.is_none() {
        problems.push(problem(
            None,
            "cert_file",
            "a server with verify_incoming needs its own cert_file and key_file",
        ));
    }
    if verify_server_hostname && !verify_outgoing {
        problems.push(problem(
            None,
            "verify_server_hostname",
            "verify_server_hostname needs verify_outgoing",
        ));
    }
    Some(TlsSettings {
        files: wan::tls::TlsFiles {
            ca_file: PathBuf::from(ca),
            cert_file: cert.map(PathBuf::from),
            key_file: key.map(PathBuf::from),
        },
        verify_incoming,
        verify_outgoing,
        verify_server_hostname,
    })
}
