//! Where the agent listens: `bind_addr`, `advertise_addr[_wan]`, `client_addr` and
//! `ports`.

use std::net::IpAddr;

use super::problem::{Origin, Problem, problem};
use super::raw::RawConfig;
use super::value::{ip, port};

/// Ports; `None` means disabled (`-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// DNS (8600).
    pub dns: Option<u16>,
    /// HTTP (8500).
    pub http: Option<u16>,
    /// Server RPC (8300).
    pub server: u16,
    /// LAN gossip (8301).
    pub serf_lan: u16,
    /// WAN gossip (8302).
    pub serf_wan: u16,
}

/// Checks the addresses one source sets.
pub(super) fn check_addresses(o: Option<&Origin>, r: &RawConfig, problems: &mut Vec<Problem>) {
    ip(o, "bind_addr", &r.bind_addr, problems);
    ip(o, "advertise_addr", &r.advertise_addr, problems);
    ip(o, "advertise_addr_wan", &r.advertise_addr_wan, problems);
    if let Some(c) = &r.client_addr {
        for part in c.split_whitespace() {
            ip(o, "client_addr", &Some(part.to_owned()), problems);
        }
    }
}

/// Checks the ports one source sets.
pub(super) fn check_ports(o: Option<&Origin>, r: &RawConfig, problems: &mut Vec<Problem>) {
    if let Some(p) = &r.ports {
        port(o, "ports.dns", p.dns, 8600, problems);
        port(o, "ports.http", p.http, 8500, problems);
        port(o, "ports.server", p.server, 8300, problems);
        port(o, "ports.serf_lan", p.serf_lan, 8301, problems);
        port(o, "ports.serf_wan", p.serf_wan, 8302, problems);
        for (key, value) in [
            ("ports.https", p.https),
            ("ports.grpc", p.grpc),
            ("ports.grpc_tls", p.grpc_tls),
        ] {
            if value.is_some_and(|v| v > 0) {
                problems.push(problem(
                    o,
                    key,
                    "not supported: proconsul serves only plain HTTP and DNS in this version",
                ));
            }
        }
    }
}

/// The ports of the merged layers (checked per layer; `-1` disables HTTP and DNS).
pub(super) fn ports(m: &RawConfig) -> Ports {
    let raw = m.ports.clone().unwrap_or_default();
    let mut ignore = Vec::new();
    Ports {
        dns: port(None, "", raw.dns, 8600, &mut ignore),
        http: port(None, "", raw.http, 8500, &mut ignore),
        server: port(None, "", raw.server, 8300, &mut ignore).unwrap_or(8300),
        serf_lan: port(None, "", raw.serf_lan, 8301, &mut ignore).unwrap_or(8301),
        serf_wan: port(None, "", raw.serf_wan, 8302, &mut ignore).unwrap_or(8302),
    }
}

/// The addresses HTTP and DNS listen on (`client_addr`, space-separated).
pub(super) fn client_addrs(m: &RawConfig) -> Vec<IpAddr> {
    m.client_addr
        .as_deref()
        .unwrap_or("127.0.0.1")
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}
