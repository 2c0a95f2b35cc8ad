//! Who the agent is and how it runs: `datacenter`, `node_name`, `node_id`, `node_meta`,
//! `server`, `bootstrap[_expect]`, `data_dir` and `raft_snapshot_threshold`; also the
//! keys of Consul features proconsul lacks.

use catalog::Datacenter;
use catalog::uuid::is_uuid;

use super::problem::{Origin, Problem, problem};
use super::raw::RawConfig;

/// Checks the identity one source gives: datacenter, node name, metadata and ID; and names the unsupported keys it sets.
pub(super) fn check_identity(o: Option<&Origin>, r: &RawConfig, problems: &mut Vec<Problem>) {
    for (key, why) in r.unsupported_keys() {
        problems.push(problem(o, key, format!("not supported: {why}")));
    }
    if let Some(dc) = &r.datacenter
        && let Err(e) = Datacenter::new(&dc.to_ascii_lowercase())
    {
        problems.push(problem(o, "datacenter", e.to_string()));
    }
    if let Some(name) = &r.node_name
        && let Err(e) = check_node_name(name)
    {
        problems.push(problem(o, "node_name", e));
    }
    if let Some(meta) = &r.node_meta
        && let Err(e) = catalog::validate_meta(meta)
    {
        problems.push(problem(o, "node_meta", e));
    }
    if let Some(id) = &r.node_id
        && !is_uuid(id)
    {
        problems.push(problem(o, "node_id", format!("{id:?} is not a UUID")));
    }
}

/// A node name Consul accepts: not empty, no whitespace or quotes.
pub(super) fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("node name must not be empty".into());
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'')
    {
        return Err(format!(
            "node name {name:?} must not contain whitespace or quotes"
        ));
    }
    Ok(())
}

/// Consul's warnings about the number of servers a datacenter bootstraps with (its
/// texts, which operators know): two servers tolerate no failure, and an even number
/// tolerates no more than one server fewer would.
pub(super) fn bootstrap_warnings(
    server: bool,
    dev: bool,
    bootstrap: bool,
    expect: u32,
) -> Vec<String> {
    const TABLE: &str = "See https://www.consul.io/docs/internals/consensus.html#deployment-table";
    let mut warnings = Vec::new();
    if !server || dev || bootstrap {
        return warnings;
    }
    if expect > 1 {
        warnings.push(format!("bootstrap_expect > 0: expecting {expect} servers"));
    }
    if expect == 2 {
        warnings.push(format!(
            "bootstrap_expect = 2: A cluster with 2 servers will provide no failure tolerance. {TABLE}"
        ));
    } else if expect > 2 && expect.is_multiple_of(2) {
        warnings.push(format!(
            "bootstrap_expect is even number: A cluster with an even number of servers does not achieve optimum fault tolerance. {TABLE}"
        ));
    }
    warnings
}

/// Whether the agent is a server, and how its datacenter's first leader is elected.
pub(super) struct Role {
    pub(super) server: bool,
    pub(super) bootstrap: bool,
    pub(super) bootstrap_expect: u32,
}

/// `server`, `bootstrap` and `bootstrap_expect` of the merged layers, checked against
/// each other and `-dev`.
pub(super) fn role(m: &RawConfig, dev: bool, problems: &mut Vec<Problem>) -> Role {
    let server = m.server.unwrap_or(false);
    let bootstrap_expect = m.bootstrap_expect.unwrap_or(0);
    let bootstrap = m.bootstrap.unwrap_or(false) || bootstrap_expect == 1;
    if m.bootstrap.unwrap_or(false) && bootstrap_expect > 0 {
        problems.push(problem(
            None,
            "bootstrap_expect",
            "bootstrap cannot be combined with bootstrap_expect",
        ));
    }
    if dev && bootstrap_expect > 1 {
        problems.push(problem(
            None,
            "bootstrap_expect",
            "-dev runs a single server: bootstrap_expect cannot be above 1",
        ));
    }
    if !server && (bootstrap || bootstrap_expect > 0) {
        problems.push(problem(
            None,
            "bootstrap_expect",
            "bootstrap and bootstrap_expect are only for servers (add -server)",
        ));
    }
    Role {
        server,
        bootstrap,
        bootstrap_expect,
    }
}

/// Where and how the agent keeps its state: a data dir unless `-dev`, and a usable
/// snapshot threshold.
pub(super) fn check_storage(m: &RawConfig, dev: bool, problems: &mut Vec<Problem>) {
    if m.raft_snapshot_threshold == Some(0) {
        problems.push(problem(
            None,
            "raft_snapshot_threshold",
            "must be at least 1",
        ));
    }
    if !dev && m.data_dir.as_deref().unwrap_or("").is_empty() {
        problems.push(problem(
            None,
            "data_dir",
            "data_dir cannot be empty (give -data-dir, or use -dev)",
        ));
    }
}

/// This machine's host name, the default node name.
pub fn hostname() -> String {
    gethostname::gethostname()
        .to_string_lossy()
        .split('.')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("localhost")
        .to_owned()
}
