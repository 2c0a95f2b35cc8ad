//! Where the agent listens: `bind_addr`, `advertise_addr[_wan]`, `client_addr`,
//! `addresses` and `ports`.

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
    /// HTTPS (off by default; Consul's convention is 8501).
    pub https: Option<u16>,
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
    if let Some(a) = &r.addresses {
        for (key, value) in [
            ("addresses.dns", &a.dns),
            ("addresses.http", &a.http),
            ("addresses.https", &a.https),
        ] {
            for part in value.iter().flat_map(|v| v.split_whitespace()) {
                ip(o, key, &Some(part.to_owned()), problems);
            }
        }
        if a.grpc.is_some() {
            problems.push(problem(
                o,
                "addresses.grpc",
                "not supported: proconsul has no gRPC interface",
            ));
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
        port(o, "ports.https", p.https, 0, problems);
        for (key, value) in [("ports.grpc", p.grpc), ("ports.grpc_tls", p.grpc_tls)] {
            if value.is_some_and(|v| v > 0) {
                problems.push(problem(
                    o,
                    key,
                    "not supported: proconsul has no gRPC interface",
                ));
            }
        }
    }
}

/// The ports of the merged layers (checked per layer; `-1` disables HTTP, HTTPS and
/// DNS; HTTPS is off unless set).
pub(super) fn ports(m: &RawConfig) -> Ports {
    let raw = m.ports.clone().unwrap_or_default();
    let mut ignore = Vec::new();
    Ports {
        dns: port(None, "", raw.dns, 8600, &mut ignore),
        http: port(None, "", raw.http, 8500, &mut ignore),
        https: raw
            .https
            .and_then(|p| port(None, "", Some(p), 0, &mut ignore)),
        server: port(None, "", raw.server, 8300, &mut ignore).unwrap_or(8300),
        serf_lan: port(None, "", raw.serf_lan, 8301, &mut ignore).unwrap_or(8301),
        serf_wan: port(None, "", raw.serf_wan, 8302, &mut ignore).unwrap_or(8302),
    }
}

/// Where each client interface listens; each defaults to `client_addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    /// DNS (`addresses.dns`).
    pub dns: Vec<IpAddr>,
    /// HTTP (`addresses.http`).
    pub http: Vec<IpAddr>,
    /// HTTPS (`addresses.https`).
    pub https: Vec<IpAddr>,
}

/// The addresses of `client_addr` (space-separated; checked per layer).
pub(super) fn client_addrs(m: &RawConfig) -> Vec<IpAddr> {
    ips(m.client_addr.as_deref().unwrap_or("127.0.0.1"))
}

fn ips(text: &str) -> Vec<IpAddr> {
    text.split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The addresses of each client interface: its key in `addresses`, else `client_addr`.
pub(super) fn addresses(m: &RawConfig) -> Addresses {
    let raw = m.addresses.clone().unwrap_or_default();
    let or_client = |v: &Option<String>| v.as_deref().map_or_else(|| client_addrs(m), ips);
    Addresses {
        dns: or_client(&raw.dns),
        http: or_client(&raw.http),
        https: or_client(&raw.https),
    }
}
