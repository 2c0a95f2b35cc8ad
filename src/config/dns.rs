//! The DNS interface: `domain`, `recursors`, `dns_config` and the DNS keys of `limits`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use api::dns::Name;
use api::dns::{DnsConfig, RecursorStrategy, Soa};

use super::problem::{Origin, Problem, problem};
use super::raw::{self, RawConfig};
use super::value::{checked_duration, duration};

/// Checks the domain one source sets.
pub(super) fn check_domain(o: Option<&Origin>, r: &RawConfig, problems: &mut Vec<Problem>) {
    if let Some(domain) = &r.domain
        && Name::from_ascii(domain).is_err()
    {
        problems.push(problem(
            o,
            "domain",
            format!("{domain:?} is not a valid domain name"),
        ));
    }
}

/// Checks the recursors one source sets.
pub(super) fn check_recursors(o: Option<&Origin>, r: &RawConfig, problems: &mut Vec<Problem>) {
    for (i, r) in r.recursors.iter().flatten().enumerate() {
        if recursor(r).is_none() {
            problems.push(problem(
                o,
                &format!("recursors[{i}]"),
                format!("{r:?} is not an IP address or ip:port"),
            ));
        }
    }
}

/// Checks the `dns_config` block of one source.
pub(super) fn check_dns_config(o: Option<&Origin>, r: &RawConfig, problems: &mut Vec<Problem>) {
    if let Some(d) = &r.dns_config {
        duration(o, "dns_config.max_stale", &d.max_stale, problems);
        duration(o, "dns_config.node_ttl", &d.node_ttl, problems);
        duration(
            o,
            "dns_config.recursor_timeout",
            &d.recursor_timeout,
            problems,
        );
        for (name, ttl) in d.service_ttl.iter().flatten() {
            duration(
                o,
                &format!("dns_config.service_ttl.{name}"),
                &Some(ttl.clone()),
                problems,
            );
        }
        if let Some(s) = &d.recursor_strategy
            && s != "sequential"
            && s != "random"
        {
            problems.push(problem(
                o,
                "dns_config.recursor_strategy",
                "must be \"sequential\" or \"random\"",
            ));
        }
        for dc in d
            .failover
            .iter()
            .flat_map(|f| f.datacenters.iter().flatten())
        {
            if let Err(e) = catalog::Datacenter::new(dc) {
                problems.push(problem(o, "dns_config.failover.datacenters", e.to_string()));
            }
        }
        duration(o, "dns_config.cache_max_age", &d.cache_max_age, problems);
    }
}

pub(super) fn recursor(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    text.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 53))
}

/// The DNS interface's settings: `domain`, `recursors`, `dns_config` and the DNS keys
/// of `limits`.
pub(super) fn dns_config(m: &RawConfig, limits: &raw::RawLimits) -> DnsConfig {
    let raw = m.dns_config.clone().unwrap_or_default();
    let mut domain = m
        .domain
        .clone()
        .unwrap_or_else(|| "consul".into())
        .to_ascii_lowercase();
    if !domain.ends_with('.') {
        domain.push('.');
    }
    let soa = raw.soa.clone().unwrap_or_default();
    let default_soa = Soa::default();
    DnsConfig {
        udp_max_response: limits
            .dns_udp_max_response_bytes
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or(api::dns::DEFAULT_UDP_MAX_RESPONSE),
        rate_per_source: limits
            .dns_rate_per_source
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        domain: Name::from_ascii(&domain).expect("checked per layer"),
        node_ttl: checked_duration(&raw.node_ttl).unwrap_or(Duration::ZERO),
        service_ttl: raw
            .service_ttl
            .iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), catalog::duration::parse(v).ok()?)))
            .collect(),
        only_passing: raw.only_passing.unwrap_or(false),
        udp_answer_limit: raw.udp_answer_limit.unwrap_or(3).clamp(1, 8) as usize,
        a_record_limit: raw.a_record_limit.unwrap_or(0) as usize,
        enable_additional_node_meta_txt: raw.enable_additional_node_meta_txt.unwrap_or(true),
        recursors: m
            .recursors
            .iter()
            .flatten()
            .filter_map(|r| recursor(r))
            .collect(),
        recursor_strategy: match raw.recursor_strategy.as_deref() {
            Some("random") => RecursorStrategy::Random,
            _ => RecursorStrategy::Sequential,
        },
        recursor_timeout: checked_duration(&raw.recursor_timeout).unwrap_or(Duration::from_secs(2)),
        soa: Soa {
            refresh: soa
                .refresh
                .map(Duration::from_secs)
                .unwrap_or(default_soa.refresh),
            retry: soa
                .retry
                .map(Duration::from_secs)
                .unwrap_or(default_soa.retry),
            expire: soa
                .expire
                .map(Duration::from_secs)
                .unwrap_or(default_soa.expire),
            min_ttl: soa
                .min_ttl
                .map(Duration::from_secs)
                .unwrap_or(default_soa.min_ttl),
        },
        cache: (raw.use_cache == Some(true)).then(|| {
            checked_duration(&raw.cache_max_age)
                .filter(|age| !age.is_zero())
                .unwrap_or(api::dns::DEFAULT_CACHE_MAX_AGE)
        }),
        failover: raw
            .failover
            .as_ref()
            .map(|f| catalog::Failover {
                nearest_n: usize::try_from(f.nearest_n.unwrap_or(0)).unwrap_or(usize::MAX),
                datacenters: f.datacenters.clone().unwrap_or_default(),
            })
            .unwrap_or_default(),
    }
}
