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

/// Reads an RFC 3339 time as Go's JSON decoder does (`2026-12-03T17:18:49Z`,
/// `2026-12-03T18:18:49.5+01:00`) into nanoseconds since the Unix epoch; `None` for
/// anything else, or a time before 1970.
pub fn parse_rfc3339_nanos(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(at(4, b'-')
        && at(7, b'-')
        && (at(10, b'T') || at(10, b't'))
        && at(13, b':')
        && at(16, b':'))
    {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if at(i, b'.') {
        let start = i + 1;
        let len = b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 || len > 9 {
            return None;
        }
        nanos = digits(start, len)? * 10i64.pow(9 - len as u32);
        i = start + len;
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(i + 1, 2)?, digits(i + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let o = h * 3600 + m * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let ns = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    u64::try_from(ns).ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
    fn rfc3339_times_parse_back_to_what_was_written() {
        for ns in [0, 1_796_318_329_500_000_000, 951_782_400_000_000_001] {
            assert_eq!(parse_rfc3339_nanos(&rfc3339_nanos(ns)), Some(ns));
        }
        assert_eq!(
            parse_rfc3339_nanos("2026-12-03T18:18:49.5+01:00"),
            Some(1_796_318_329_500_000_000)
        );
        for bad in [
            "",
            "2026-12-03",
            "2026-02-30T00:00:00Z",
            "2026-12-03T17:18:49",
            "2026-12-03T17:18:49.Z",
            "1969-12-31T23:59:59Z",
            "2026-12-03T17:18:49Zjunk",
            "２026-12-03T17:18:49Z",
        ] {
            assert_eq!(parse_rfc3339_nanos(bad), None, "{bad}");
        }
    }

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
