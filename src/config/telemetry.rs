//! `telemetry`: how `/v1/agent/metrics` names and filters what the agent records, and
//! whether Prometheus's format is served (Consul's keys). Sinks that push elsewhere
//! (statsd, DogStatsD, Circonus) are not built: their keys are refused with a pointer to
//! the Prometheus output.

use api::telemetry::TelemetryConfig;

use super::problem::{Problem, problem};
use super::raw::{RawConfig, RawTelemetry};

/// Push sinks Consul has and proconsul does not.
const PUSH_SINKS: &[&str] = &[
    "statsd_address",
    "statsite_address",
    "dogstatsd_addr",
    "circonus_api_token",
    "circonus_submission_url",
];

/// The telemetry settings, checked.
pub(super) fn settings(m: &RawConfig, problems: &mut Vec<Problem>) -> TelemetryConfig {
    let mut config = TelemetryConfig::default();
    let Some(t) = &m.telemetry else {
        return config;
    };
    let mut fail = |key: &str, what: String| {
        problems.push(problem(None, &format!("telemetry.{key}"), &what));
    };
    for (key, set) in PUSH_SINKS.iter().zip([
        &t.statsd_address,
        &t.statsite_address,
        &t.dogstatsd_addr,
        &t.circonus_api_token,
        &t.circonus_submission_url,
    ]) {
        if set.as_deref().is_some_and(|s| !s.is_empty()) {
            fail(
                key,
                "proconsul pushes metrics to no sink; scrape /v1/agent/metrics?format=prometheus instead".into(),
            );
        }
    }
    if let Some(text) = &t.prometheus_retention_time {
        match catalog::duration::parse(text) {
            Ok(d) => config.prometheus_retention = d,
            Err(_) => fail(
                "prometheus_retention_time",
                format!("{text:?} is not a duration"),
            ),
        }
    }
    if let Some(prefix) = &t.metrics_prefix {
        config.prefix = prefix.trim_end_matches('.').to_string();
    }
    if t.disable_hostname == Some(false) {
        config.hostname = Some(super::node::hostname());
    }
    if let Some(d) = t.filter_default {
        config.filter_default = d;
    }
    for entry in t.prefix_filter.iter().flatten() {
        let (keep, prefix) = match entry.split_at_checked(1) {
            Some(("+", rest)) => (true, rest),
            Some(("-", rest)) => (false, rest),
            _ => {
                fail(
                    "prefix_filter",
                    format!("{entry:?} must start with + (keep) or - (drop)"),
                );
                continue;
            }
        };
        if prefix.is_empty() {
            fail("prefix_filter", format!("{entry:?} names no prefix"));
            continue;
        }
        config.prefix_filter.push((prefix.to_string(), keep));
    }
    config
}

/// Layers `later` over `telemetry`, key by key (lists appended, as Consul merges).
pub(super) fn merge(telemetry: &mut Option<RawTelemetry>, later: Option<RawTelemetry>) {
    let Some(l) = later else {
        return;
    };
    let t = telemetry.get_or_insert_with(RawTelemetry::default);
    macro_rules! take {
        ($($field:ident),*) => { $( if l.$field.is_some() { t.$field = l.$field; } )* };
    }
    take!(
        prometheus_retention_time,
        metrics_prefix,
        disable_hostname,
        filter_default,
        disable_compat_1_9,
        statsd_address,
        statsite_address,
        dogstatsd_addr,
        circonus_api_token,
        circonus_submission_url
    );
    if let Some(mut more) = l.prefix_filter {
        t.prefix_filter
            .get_or_insert_with(Vec::new)
            .append(&mut more);
    }
}
