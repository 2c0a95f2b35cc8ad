//! TLS: the top-level keys of Consul before 1.12 (`ca_file`, `verify_incoming`, …) and
//! the `tls` block's `defaults` and per-interface blocks, merged in that order.

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

/// The TLS settings of the merged configuration, or `None` without a `ca_file`.
pub(super) fn settings(
    m: &RawConfig,
    server: bool,
    problems: &mut Vec<Problem>,
) -> Option<TlsSettings> {
    let mut block = raw::RawTlsBlock {
        ca_file: m.ca_file.clone(),
        cert_file: m.cert_file.clone(),
        key_file: m.key_file.clone(),
        verify_incoming: m.verify_incoming,
        verify_outgoing: m.verify_outgoing,
        verify_server_hostname: m.verify_server_hostname,
    };
    if let Some(t) = &m.tls {
        if let Some(d) = &t.defaults {
            block.merge(d.clone());
        }
        if let Some(r) = &t.internal_rpc {
            block.merge(r.clone());
        }
    }
    let verify_incoming = block.verify_incoming.unwrap_or(false);
    let verify_outgoing = block.verify_outgoing.unwrap_or(false);
    let verify_server_hostname = block.verify_server_hostname.unwrap_or(false);
    let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
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
            problems.push(problem(
                None,
                "ca_file",
                "verify_incoming, verify_outgoing and verify_server_hostname need a ca_file",
            ));
        }
        if cert.is_some() {
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
