//! `kv_replication`: the keys a datacenter copies from another one.

use catalog::Datacenter;

use super::problem::{Problem, problem};
use super::raw::RawConfig;

/// The `kv_replication` block, checked: a server's, naming another datacenter and at
/// least one prefix.
pub(super) fn settings(
    m: &RawConfig,
    server: bool,
    problems: &mut Vec<Problem>,
) -> Option<std::sync::Arc<catalog::KvReplication>> {
    let r = m.kv_replication.as_ref()?;
    let mut fail = |key: &str, what: String| {
        problems.push(problem(None, &format!("kv_replication.{key}"), &what));
        None
    };
    if !server {
        return fail(
            "source_datacenter",
            "KV replication runs on servers; a client agent's writes go to its servers, which refuse writes to the copied keys".into(),
        );
    }
    let source = r.source_datacenter.clone().unwrap_or_default();
    if let Err(e) = Datacenter::new(&source) {
        return fail("source_datacenter", e.to_string());
    }
    let own = m
        .datacenter
        .as_deref()
        .unwrap_or("dc1")
        .to_ascii_lowercase();
    if source == own {
        return fail(
            "source_datacenter",
            format!("must be another datacenter than this one ({own})"),
        );
    }
    let prefixes = r.prefixes.clone().unwrap_or_default();
    if prefixes.is_empty() {
        return fail("prefixes", "name at least one prefix to copy".into());
    }
    Some(std::sync::Arc::new(catalog::KvReplication {
        source,
        prefixes,
        exclude: r.exclude.clone().unwrap_or_default(),
    }))
}
