//! Wall-clock times as Consul's JSON writes them (RFC 3339, UTC).

use std::time::{SystemTime, UNIX_EPOCH};

/// `time` as RFC 3339 in UTC, to the second (`2026-12-03T17:18:49Z`).
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{}Z", civil(secs))
}

/// `ns` (nanoseconds since the Unix epoch) as RFC 3339 in UTC with its fraction of a
/// second, trailing zeros dropped, as Go's `time.RFC3339Nano` (`2026-12-03T17:18:49.5Z`).
pub fn rfc3339_nanos(ns: u64) -> String {
    let (secs, frac) = (ns / 1_000_000_000, ns % 1_000_000_000);
    if frac == 0 {
        return format!("{}Z", civil(secs));
    }
    let digits = format!("{frac:09}");
    format!("{}.{}Z", civil(secs), digits.trim_end_matches('0'))
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS`.
fn civil(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_read_as_go_writes_them() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_318_329);
        assert_eq!(rfc3339(t), "2026-12-03T17:18:49Z");
        assert_eq!(
            rfc3339_nanos(1_796_318_329_500_000_000),
            "2026-12-03T17:18:49.5Z"
        );
        assert_eq!(
            rfc3339_nanos(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
    }
}
