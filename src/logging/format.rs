//! Log lines in go-hclog's two shapes, which Consul's users and tools read:
//!
//! ```text
//! 2024-05-01T10:20:30.123Z [INFO]  agent.http: listening: proto=http addr=127.0.0.1:8500
//! {"@level":"info","@message":"listening","@module":"agent.http","@timestamp":"2024-05-01T10:20:30.123456Z","addr":"127.0.0.1:8500","proto":"http"}
//! ```
//!
//! Times are UTC. A tracing target becomes a module name under `agent` ([`module`]).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use api::monitor::{LineFormat, LogLevel};
use tracing::field::{Field, Visit};

/// The longest message or field value kept in a line; longer ones are cut with `…`, so
/// that one huge value cannot fill a monitor reader's queue on its own.
pub const MAX_VALUE_CHARS: usize = 16 * 1024;

/// One event, ready to be written in either shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// When it happened.
    pub time: SystemTime,
    /// Its level.
    pub level: LogLevel,
    /// Consul-style module name (`agent.http`).
    pub module: Cow<'static, str>,
    /// The message.
    pub message: String,
    /// The other fields, in the order they were given.
    pub fields: Vec<(&'static str, Value)>,
}

/// A field's value; numbers and booleans stay typed in JSON lines.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text (`%` and `?` fields, strings, errors).
    Str(String),
    /// A signed integer.
    I64(i64),
    /// An unsigned integer.
    U64(u64),
    /// A float.
    F64(f64),
    /// A boolean.
    Bool(bool),
}

impl Record {
    /// The record of a tracing event.
    pub fn of_event(event: &tracing::Event<'_>, time: SystemTime) -> Record {
        let meta = event.metadata();
        let mut record = Record {
            time,
            level: level_of(meta.level()),
            module: module(meta.target()),
            message: String::new(),
            fields: Vec::new(),
        };
        event.record(&mut record);
        record
    }

    /// The line in `format`, ending in `\n`.
    pub fn render(&self, format: LineFormat) -> String {
        match format {
            LineFormat::Text => self.text(),
            LineFormat::Json => self.json(),
        }
    }

    /// go-hclog's text line.
    pub fn text(&self) -> String {
        let mut line = String::with_capacity(64 + self.message.len() + 24 * self.fields.len());
        push_timestamp(&mut line, self.time, 3);
        // go-hclog pads the bracket to seven characters, then a space.
        line.push_str(match self.level {
            LogLevel::Trace => " [TRACE] ",
            LogLevel::Debug => " [DEBUG] ",
            LogLevel::Info => " [INFO]  ",
            LogLevel::Warn => " [WARN]  ",
            LogLevel::Error => " [ERROR] ",
        });
        line.push_str(&self.module);
        line.push_str(": ");
        line.push_str(&self.message);
        if !self.fields.is_empty() {
            line.push(':');
            for (key, value) in &self.fields {
                line.push(' ');
                line.push_str(key);
                line.push('=');
                match value {
                    Value::Str(s) => push_text_value(&mut line, s),
                    Value::I64(n) => {
                        let _ = write!(line, "{n}");
                    }
                    Value::U64(n) => {
                        let _ = write!(line, "{n}");
                    }
                    Value::F64(n) => {
                        let _ = write!(line, "{n}");
                    }
                    Value::Bool(b) => {
                        let _ = write!(line, "{b}");
                    }
                }
            }
        }
        line.push('\n');
        line
    }

    /// go-hclog's JSON line: an object with `@level`, `@message`, `@module`, `@timestamp`
    /// and the fields, keys in sorted order as Go writes a map.
    pub fn json(&self) -> String {
        let mut object = serde_json::Map::new();
        let mut timestamp = String::with_capacity(32);
        push_timestamp(&mut timestamp, self.time, 6);
        // Inserted in sorted order, so the order is Go's whether or not serde_json keeps
        // insertion order (its `preserve_order` feature).
        object.insert("@level".into(), self.level.as_str().into());
        object.insert("@message".into(), self.message.as_str().into());
        object.insert("@module".into(), self.module.as_ref().into());
        object.insert("@timestamp".into(), timestamp.into());
        let mut fields: Vec<_> = self.fields.iter().collect();
        fields.sort_by_key(|(key, _)| *key);
        for (key, value) in fields {
            let value = match value {
                Value::Str(s) => serde_json::Value::from(s.as_str()),
                Value::I64(n) => serde_json::Value::from(*n),
                Value::U64(n) => serde_json::Value::from(*n),
                Value::F64(n) => serde_json::Value::from(*n),
                Value::Bool(b) => serde_json::Value::from(*b),
            };
            object.insert((*key).to_owned(), value);
        }
        let mut line = serde_json::Value::Object(object).to_string();
        line.push('\n');
        line
    }
}

impl Visit for Record {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = cut(value.to_owned());
        } else {
            self.fields
                .push((field.name(), Value::Str(cut(value.to_owned()))));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name(), Value::I64(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name(), Value::U64(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name(), Value::F64(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name(), Value::Bool(value)));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%x` fields arrive here as their Display form; `message` too.
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = cut(text);
        } else {
            self.fields.push((field.name(), Value::Str(cut(text))));
        }
    }
}

/// Cuts `text` to [`MAX_VALUE_CHARS`].
fn cut(mut text: String) -> String {
    if text.len() > MAX_VALUE_CHARS {
        let mut end = MAX_VALUE_CHARS;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// A tracing level as Consul names it.
pub fn level_of(level: &tracing::Level) -> LogLevel {
    match *level {
        tracing::Level::TRACE => LogLevel::Trace,
        tracing::Level::DEBUG => LogLevel::Debug,
        tracing::Level::INFO => LogLevel::Info,
        tracing::Level::WARN => LogLevel::Warn,
        _ => LogLevel::Error,
    }
}

/// The Consul-style module of a tracing target: this agent's parts get the names
/// Consul's own loggers use where there is one (`agent.http`, `agent.dns`,
/// `agent.server.raft`, `agent.router`, `agent.anti_entropy`), other parts of proconsul
/// `agent.<crate>`, and dependencies `agent.<crate>` too.
pub fn module(target: &str) -> Cow<'static, str> {
    /// Longest prefix first within a crate.
    const NAMES: &[(&str, &str)] = &[
        ("proconsul_api::http", "agent.http"),
        ("proconsul_api::dns", "agent.dns"),
        ("proconsul_api", "agent.http"),
        ("proconsul_lan::raft", "agent.server.raft"),
        ("proconsul_lan::local", "agent.anti_entropy"),
        ("proconsul_lan::checks", "agent.checks"),
        ("proconsul_lan::server", "agent.server"),
        ("proconsul_lan::rpc", "agent.server.rpc"),
        ("proconsul_lan", "agent.server"),
        ("proconsul_gossip", "agent.memberlist"),
        ("proconsul_catalog", "agent.catalog"),
        ("proconsul_wan", "agent.wan"),
        ("proconsul_gateway", "agent.router"),
        ("proconsul::watch", "agent.watch"),
        ("proconsul::agent", "agent"),
        ("proconsul", "agent"),
        ("openraft", "agent.server.raft"),
    ];
    for (prefix, name) in NAMES {
        if let Some(rest) = target.strip_prefix(prefix)
            && (rest.is_empty() || rest.starts_with("::"))
        {
            return Cow::Borrowed(name);
        }
    }
    let krate = target.split("::").next().unwrap_or(target);
    Cow::Owned(format!("agent.{krate}"))
}

/// A text value as go-hclog writes it: bare, or quoted with Go's escapes when it is
/// empty or holds a space, a quote, `=` or a control character.
fn push_text_value(line: &mut String, value: &str) {
    let quote = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=');
    if !quote {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{:04x}", u32::from(c));
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// `2024-05-01T10:20:30.123Z` (3 digits) or `…30.123456Z` (6 digits), UTC.
fn push_timestamp(line: &mut String, time: SystemTime, digits: u32) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_date(secs / 86_400);
    let of_day = secs % 86_400;
    let fraction = since.subsec_nanos() / 10u32.pow(9 - digits);
    let _ = write!(
        line,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:0width$}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        width = digits as usize,
    );
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (the days-from-civil
/// inverse described by Howard Hinnant, for days on or after the epoch).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// 2024-05-01T10:20:30.123456789Z
    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_714_558_830, 123_456_789)
    }

    fn record(level: LogLevel, fields: Vec<(&'static str, Value)>) -> Record {
        Record {
            time: at(),
            level,
            module: "agent.http".into(),
            message: "listening".into(),
            fields,
        }
    }

    #[test]
    fn text_lines_have_go_hclogs_shape() {
        let r = record(
            LogLevel::Info,
            vec![
                ("proto", Value::Str("http".into())),
                ("addr", Value::Str("127.0.0.1:8500".into())),
                ("port", Value::U64(8500)),
                ("leave", Value::Bool(true)),
            ],
        );
        assert_eq!(
            r.text(),
            "2024-05-01T10:20:30.123Z [INFO]  agent.http: listening: proto=http addr=127.0.0.1:8500 port=8500 leave=true\n"
        );
        let bare = record(LogLevel::Error, vec![]);
        assert_eq!(
            bare.text(),
            "2024-05-01T10:20:30.123Z [ERROR] agent.http: listening\n"
        );
        for (level, bracket) in [
            (LogLevel::Trace, "[TRACE] agent"),
            (LogLevel::Debug, "[DEBUG] agent"),
            (LogLevel::Warn, "[WARN]  agent"),
        ] {
            assert!(record(level, vec![]).text().contains(bracket), "{level:?}");
        }
    }

    #[test]
    fn text_values_are_quoted_when_they_must_be() {
        let r = record(
            LogLevel::Warn,
            vec![
                (
                    "error",
                    Value::Str("connection refused (os error 111)".into()),
                ),
                ("empty", Value::Str(String::new())),
                ("odd", Value::Str("a=b\"c\nd".into())),
            ],
        );
        assert!(
            r.text().ends_with(
                ": listening: error=\"connection refused (os error 111)\" empty=\"\" odd=\"a=b\\\"c\\nd\"\n"
            ),
            "{}",
            r.text()
        );
    }

    #[test]
    fn json_lines_have_go_hclogs_keys_and_typed_values() {
        let r = record(
            LogLevel::Debug,
            vec![
                ("proto", Value::Str("http".into())),
                ("n", Value::I64(-3)),
                ("ok", Value::Bool(false)),
            ],
        );
        let line = r.json();
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(
            line,
            "{\"@level\":\"debug\",\"@message\":\"listening\",\"@module\":\"agent.http\",\"@timestamp\":\"2024-05-01T10:20:30.123456Z\",\"n\":-3,\"ok\":false,\"proto\":\"http\"}\n"
        );
    }

    #[test]
    fn targets_become_consul_module_names() {
        for (target, name) in [
            ("proconsul_api::http::server", "agent.http"),
            ("proconsul_api::dns", "agent.dns"),
            ("proconsul_lan::raft::store", "agent.server.raft"),
            ("proconsul_lan::local::sync", "agent.anti_entropy"),
            ("proconsul_lan", "agent.server"),
            ("proconsul_gateway::remote", "agent.router"),
            ("proconsul::agent", "agent"),
            ("proconsul", "agent"),
            ("openraft::core", "agent.server.raft"),
            ("hyper::proto", "agent.hyper"),
            ("proconsul_lanx", "agent.proconsul_lanx"),
        ] {
            assert_eq!(module(target), name, "{target}");
        }
    }

    #[test]
    fn dates_are_right_across_years_and_leap_days() {
        let mut line = String::new();
        push_timestamp(&mut line, UNIX_EPOCH, 3);
        assert_eq!(line, "1970-01-01T00:00:00.000Z");
        for (secs, date) in [
            (951_782_400, "2000-02-29T00:00:00.000Z"),
            (1_709_251_199, "2024-02-29T23:59:59.000Z"),
            (4_102_444_800, "2100-01-01T00:00:00.000Z"),
        ] {
            let mut line = String::new();
            push_timestamp(&mut line, UNIX_EPOCH + Duration::from_secs(secs), 3);
            assert_eq!(line, date);
        }
    }

    #[test]
    fn huge_values_are_cut() {
        let long = "é".repeat(MAX_VALUE_CHARS);
        let kept = cut(long);
        assert!(kept.len() <= MAX_VALUE_CHARS + '…'.len_utf8());
        assert!(kept.ends_with('…'));
    }
}
