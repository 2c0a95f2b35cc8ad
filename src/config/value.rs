//! Readers of the value types several areas share: ports, IP addresses, durations (Go's
//! syntax, as Consul writes them) and counts. The `check`-time readers record a
//! [`Problem`]; the others read what the checks already accepted.

use std::net::IpAddr;
use std::time::Duration;

use super::problem::{Origin, Problem, problem};

pub(super) fn port(
    origin: Option<&Origin>,
    key: &str,
    value: Option<i64>,
    default: u16,
    problems: &mut Vec<Problem>,
) -> Option<u16> {
    match value {
        None => Some(default),
        Some(-1) => None,
        Some(p) => match u16::try_from(p) {
            Ok(p) => Some(p),
            Err(_) => {
                problems.push(problem(
                    origin,
                    key,
                    "must be a port number (0-65535), or -1 to disable",
                ));
                Some(default)
            }
        },
    }
}

pub(super) fn duration(
    origin: Option<&Origin>,
    key: &str,
    value: &Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<Duration> {
    let text = value.as_ref()?;
    match catalog::duration::parse(text) {
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(problem(origin, key, e.to_string()));
            None
        }
    }
}

pub(super) fn ip(
    origin: Option<&Origin>,
    key: &str,
    value: &Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<IpAddr> {
    let text = value.as_ref()?;
    match text.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            problems.push(problem(
                origin,
                key,
                format!("{text:?} is not an IP address (go-sockaddr templates are not supported)"),
            ));
            None
        }
    }
}

/// A duration the layers' checks already parsed, or `None` when not set.
pub(super) fn checked_duration(value: &Option<String>) -> Option<Duration> {
    value
        .as_deref()
        .and_then(|t| catalog::duration::parse(t).ok())
}

/// A count or size from the config, `default` when not set.
pub(super) fn size(value: Option<u64>, default: usize) -> usize {
    value.map_or(default, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// A per-client limit: as [`size`], except that 0 means no limit (Consul's rule).
pub(super) fn per_client(value: Option<u64>, default: usize) -> usize {
    match value {
        Some(0) => usize::MAX,
        v => size(v, default),
    }
}
