//! The bounds in `limits` (those of DNS are read by [`super::dns`]).

use std::time::Duration;

use super::problem::{Origin, Problem, problem};
use super::raw::{self, RawConfig};
use super::value::{checked_duration, duration, per_client, size};

/// Checks the `limits` block of one source.
pub(super) fn check_layer(o: Option<&Origin>, r: &RawConfig, problems: &mut Vec<Problem>) {
    if let Some(l) = &r.limits {
        for (key, value) in [
            ("limits.http_header_timeout", &l.http_header_timeout),
            ("limits.http_body_timeout", &l.http_body_timeout),
            ("limits.http_write_timeout", &l.http_write_timeout),
        ] {
            if let Some(d) = duration(o, key, value, problems)
                && d < Duration::from_secs(1)
            {
                problems.push(problem(o, key, "must be at least 1s"));
            }
        }
        let range = |key: &str, v: Option<u64>, min: u64, max: u64, problems: &mut Vec<Problem>| {
            if let Some(n) = v
                && !(min..=max).contains(&n)
            {
                problems.push(problem(o, key, format!("must be between {min} and {max}")));
            }
        };
        range(
            "limits.http_max_connections",
            l.http_max_connections,
            1,
            1 << 20,
            problems,
        );
        range(
            "limits.http_max_blocking_queries",
            l.http_max_blocking_queries,
            1,
            1 << 20,
            problems,
        );
        range(
            "limits.http_max_blocking_queries_per_client",
            l.http_max_blocking_queries_per_client,
            0,
            1 << 20,
            problems,
        );
        range(
            "limits.http_max_header_bytes",
            l.http_max_header_bytes,
            8192,
            16 << 20,
            problems,
        );
        range(
            "limits.http_max_body_bytes",
            l.http_max_body_bytes,
            1024,
            1 << 30,
            problems,
        );
        range(
            "limits.dns_udp_max_response_bytes",
            l.dns_udp_max_response_bytes,
            512,
            65467,
            problems,
        );
        range(
            "limits.dns_rate_per_source",
            l.dns_rate_per_source,
            0,
            1 << 24,
            problems,
        );
    }
}

/// The HTTP server's bounds from `limits`.
pub(super) fn http_limits(limits: &raw::RawLimits) -> api::http::HttpLimits {
    let default = api::http::HttpLimits::default();
    api::http::HttpLimits {
        max_connections: size(limits.http_max_connections, default.max_connections),
        max_conns_per_client: per_client(
            limits.http_max_conns_per_client,
            default.max_conns_per_client,
        ),
        max_header_bytes: size(limits.http_max_header_bytes, default.max_header_bytes),
        max_body_bytes: size(limits.http_max_body_bytes, default.max_body_bytes),
        kv_max_value_size: size(limits.kv_max_value_size, default.kv_max_value_size),
        header_timeout: checked_duration(&limits.http_header_timeout)
            .unwrap_or(default.header_timeout),
        body_timeout: checked_duration(&limits.http_body_timeout).unwrap_or(default.body_timeout),
        write_timeout: checked_duration(&limits.http_write_timeout)
            .unwrap_or(default.write_timeout),
        max_blocking_queries: size(
            limits.http_max_blocking_queries,
            default.max_blocking_queries,
        ),
        max_blocking_queries_per_client: per_client(
            limits.http_max_blocking_queries_per_client,
            default.max_blocking_queries_per_client,
        ),
    }
}
