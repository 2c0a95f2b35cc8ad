//! What the config files define: `service[s]`, `check[s]` and `watches`. Each source's
//! definitions are decoded on their own; together they must not clash.

use api::definition::{self, Style};
use catalog::Service;
use lan::CheckDefinition;

use super::problem::{Origin, Problem, problem};
use super::raw::RawConfig;
use crate::watch::agent::WatchSpec;

/// The services, with their checks, the node-level checks and the watches of the
/// config files, and warnings about them.
#[derive(Default)]
pub(super) struct Definitions {
    pub(super) services: Vec<(Service, Vec<CheckDefinition>)>,
    pub(super) checks: Vec<CheckDefinition>,
    pub(super) watches: Vec<WatchSpec>,
    pub(super) warnings: Vec<String>,
}

/// Decodes the services, checks and watches one source defines.
pub(super) fn of_layer(
    o: Option<&Origin>,
    r: &RawConfig,
    problems: &mut Vec<Problem>,
) -> Definitions {
    let mut services = Vec::new();
    let mut checks = Vec::new();
    let service_defs = r.service.iter().map(|s| ("service".to_string(), s)).chain(
        r.services
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, s)| (format!("services[{i}]"), s)),
    );
    for (key, s) in service_defs {
        match definition::service(s, Style::Config, &key) {
            Ok(def) => services.push(def),
            Err(e) => problems.push(problem(o, &e.field, e.message)),
        }
    }
    for (key, c) in r.check.iter().map(|c| ("check".to_string(), c)).chain(
        r.checks
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| (format!("checks[{i}]"), c)),
    ) {
        match definition::check(c, Style::Config, &key) {
            Ok(def) => checks.push(def),
            Err(e) => problems.push(problem(o, &e.field, e.message)),
        }
    }
    let mut watches = Vec::new();
    let mut warnings = Vec::new();
    for (i, w) in r.watches.iter().flatten().enumerate() {
        match WatchSpec::parse(w) {
            Ok((spec, warning)) => {
                watches.push(spec);
                warnings.extend(warning.map(str::to_owned));
            }
            Err(e) => problems.push(problem(o, &format!("watches[{i}]"), e)),
        }
    }
    Definitions {
        services,
        checks,
        watches,
        warnings,
    }
}

/// Checks the config files' services and checks together: script checks need one of
/// the two switches, IDs are unique (without case, as the catalog compares them), and
/// a check's `service_id` names a service the files define.
pub(super) fn check(definitions: &Definitions, scripts_enabled: bool, problems: &mut Vec<Problem>) {
    let Definitions {
        services, checks, ..
    } = definitions;
    let every_check = || {
        services
            .iter()
            .flat_map(|(_, cs)| cs.iter())
            .chain(checks.iter())
    };
    if !scripts_enabled && every_check().any(|c| matches!(c.kind, lan::CheckKind::Script { .. })) {
        // Consul's text when it registers such a check at start.
        problems.push(problem(
            None,
            "enable_script_checks",
            "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or 'enable_local_script_checks' to true",
        ));
    }
    let mut service_ids = std::collections::BTreeSet::new();
    for (s, _) in services {
        if !service_ids.insert(s.id.to_ascii_lowercase()) {
            problems.push(problem(
                None,
                "services",
                format!("service ID {:?} is defined twice", s.id),
            ));
        }
    }
    let mut check_ids = std::collections::BTreeSet::new();
    for c in every_check() {
        if !check_ids.insert(c.id.to_ascii_lowercase()) {
            problems.push(problem(
                None,
                "checks",
                format!("check ID {:?} is defined twice", c.id),
            ));
        }
    }
    for c in checks {
        if !c.service_id.is_empty() && !service_ids.contains(&c.service_id.to_ascii_lowercase()) {
            problems.push(problem(
                None,
                "checks",
                format!(
                    "check {:?} names service_id {:?}, which no config file defines",
                    c.id, c.service_id
                ),
            ));
        }
    }
}
