//! `autopilot`: the settings a datacenter's first leader writes as its autopilot
//! configuration (later changed with `/v1/operator/autopilot/configuration` or
//! `operator autopilot set-config`, which win over the file from then on, as in Consul).

use catalog::AutopilotConfig;

use super::problem::{Problem, problem};
use super::raw::{RawAutopilot, RawConfig};

/// The `autopilot` block, checked, over Consul's defaults.
pub(super) fn settings(m: &RawConfig, problems: &mut Vec<Problem>) -> AutopilotConfig {
    let mut config = AutopilotConfig::default();
    let Some(a) = &m.autopilot else {
        return config;
    };
    let mut millis = |key: &str, text: &Option<String>, into: &mut u64| {
        let Some(text) = text else { return };
        match catalog::duration::parse(text) {
            Ok(d) => *into = u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Err(_) => problems.push(problem(
                None,
                &format!("autopilot.{key}"),
                format!("{text:?} is not a duration"),
            )),
        }
    };
    millis(
        "last_contact_threshold",
        &a.last_contact_threshold,
        &mut config.last_contact_threshold_ms,
    );
    millis(
        "server_stabilization_time",
        &a.server_stabilization_time,
        &mut config.server_stabilization_time_ms,
    );
    if let Some(v) = a.cleanup_dead_servers {
        config.cleanup_dead_servers = v;
    }
    if let Some(v) = a.max_trailing_logs {
        config.max_trailing_logs = v;
    }
    if let Some(v) = a.min_quorum {
        config.min_quorum = v;
    }
    config
}

/// Layers `later` over `autopilot`, key by key.
pub(super) fn merge(autopilot: &mut Option<RawAutopilot>, later: Option<RawAutopilot>) {
    let Some(l) = later else {
        return;
    };
    let a = autopilot.get_or_insert_with(RawAutopilot::default);
    macro_rules! take {
        ($($field:ident),*) => { $( if l.$field.is_some() { a.$field = l.$field; } )* };
    }
    take!(
        cleanup_dead_servers,
        last_contact_threshold,
        max_trailing_logs,
        min_quorum,
        server_stabilization_time,
        redundancy_zone_tag,
        disable_upgrade_migration,
        upgrade_version_tag
    );
}
