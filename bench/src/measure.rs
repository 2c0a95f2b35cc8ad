//! Figures the drivers compute and read alike: percentiles of latencies, milliseconds as
//! JSON, and a process's resident memory and CPU time from `/proc`.

use serde_json::{Value, json};

/// Nearest-rank percentile `p` (0 to 100) of `sorted` values (the formula of
/// `kv_load.py`); `None` when there are none.
pub fn pct(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let k = ((p / 100.0 * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1);
    Some(sorted[k])
}

/// Seconds as milliseconds with three decimals, for a JSON report (`null` for none).
pub fn ms(seconds: Option<f64>) -> Value {
    seconds.map_or(Value::Null, |s| json!((s * 1e6).round() / 1e3))
}

/// Process `pid`'s resident memory in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0))
}

/// Process `pid`'s CPU time, user and system, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(field(11) + field(12))
}
