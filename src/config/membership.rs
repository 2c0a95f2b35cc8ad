//! Joining and staying in the pools: `encrypt` (the gossip key), `start_join`,
//! `retry_join[_wan]` and their intervals, `reconnect_timeout`.

use std::time::Duration;

use gossip::keyring::Key;

use super::problem::{Origin, Problem, problem};
use super::raw::RawConfig;
use super::value::duration;

/// The shortest `reconnect_timeout` Consul accepts.
pub const MIN_RECONNECT_TIMEOUT: Duration = Duration::from_secs(8 * 3600);

/// Checks the gossip key and the join timings one source sets.
pub(super) fn check_layer(o: Option<&Origin>, r: &RawConfig, problems: &mut Vec<Problem>) {
    if let Some(key) = &r.encrypt
        && let Err(e) = Key::parse(key)
    {
        problems.push(problem(
            o,
            "encrypt",
            format!("Failed to configure keyring: {e}"),
        ));
    }
    duration(o, "retry_interval", &r.retry_interval, problems);
    duration(o, "retry_interval_wan", &r.retry_interval_wan, problems);
    if let Some(d) = duration(o, "reconnect_timeout", &r.reconnect_timeout, problems)
        && d < MIN_RECONNECT_TIMEOUT
    {
        problems.push(problem(o, "reconnect_timeout", "must be at least 8h"));
    }
}
