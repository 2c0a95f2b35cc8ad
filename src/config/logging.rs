//! The agent's log: `log_level`, `log_json`, `log_file` and its rotation
//! (`log_rotate_bytes`, `log_rotate_duration`, `log_rotate_max_files`).

use api::monitor::LogLevel;

use super::problem::{Origin, Problem, problem};
use super::raw::RawConfig;
use super::value::{checked_duration, duration};
use crate::logging::LogFileConfig;
use crate::logging::file::DEFAULT_ROTATE_DURATION;

/// Checks the log keys one source sets.
pub(super) fn check_layer(o: Option<&Origin>, r: &RawConfig, problems: &mut Vec<Problem>) {
    if let Some(level) = &r.log_level
        && LogLevel::parse(level).is_none()
    {
        problems.push(problem(
            o,
            "log_level",
            format!("{level:?} is not one of trace, debug, info, warn, error"),
        ));
    }
    if r.log_file.as_deref() == Some("") {
        problems.push(problem(o, "log_file", "must name a file or a directory"));
    }
    duration(o, "log_rotate_duration", &r.log_rotate_duration, problems);
}

/// The log level of the merged layers (`info` when none is set).
pub(super) fn level(m: &RawConfig) -> LogLevel {
    m.log_level
        .as_deref()
        .and_then(LogLevel::parse)
        .unwrap_or(LogLevel::Info)
}

/// The log file of the merged layers, if `log_file` is set. Consul's defaults: 24h
/// between rotations (also when given as 0), no size limit, every old file kept.
pub(super) fn file(m: &RawConfig) -> Option<LogFileConfig> {
    let log_file = m.log_file.as_deref().filter(|f| !f.is_empty())?;
    Some(LogFileConfig {
        path: LogFileConfig::path_of(log_file),
        rotate_bytes: m.log_rotate_bytes.unwrap_or(0),
        rotate_duration: checked_duration(&m.log_rotate_duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_ROTATE_DURATION),
        max_files: m.log_rotate_max_files.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::source::dev_layer;
    use crate::config::{AgentConfig, Layer, Origin, Sources, parse_layer};

    fn load(texts: &[&str]) -> Result<AgentConfig, crate::config::Problems> {
        let mut layers = vec![Layer::new(Origin::Defaults, dev_layer())];
        for (n, text) in texts.iter().enumerate() {
            layers.push(parse_layer(Origin::File(format!("{n}.json").into()), text).unwrap());
        }
        AgentConfig::from_layers(
            &layers,
            Sources {
                dev: true,
                ..Sources::default()
            },
        )
    }

    #[test]
    fn log_keys_are_read_with_consuls_defaults() {
        let c = load(&[]).unwrap();
        assert!(!c.log_json);
        assert_eq!(c.log_file, None);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.log");
        let c = load(&[
            &format!(r#"{{"log_file": "{}", "log_json": true}}"#, file.display()),
            r#"{"log_rotate_bytes": 1048576, "log_rotate_max_files": -1, "log_level": "WARN"}"#,
        ])
        .unwrap();
        assert!(c.log_json);
        assert_eq!(c.log.get(), api::monitor::LogLevel::Warn);
        let f = c.log_file.unwrap();
        assert_eq!(f.path, file);
        assert_eq!(f.rotate_bytes, 1_048_576);
        assert_eq!(f.rotate_duration, Duration::from_secs(24 * 3600));
        assert_eq!(f.max_files, -1);
        let c = load(&[&format!(
            r#"{{"log_file": "{}/", "log_rotate_duration": "90m"}}"#,
            dir.path().display()
        )])
        .unwrap();
        let f = c.log_file.unwrap();
        assert_eq!(f.path, dir.path().join("consul.log"));
        assert_eq!(f.rotate_duration, Duration::from_secs(90 * 60));
    }

    #[test]
    fn bad_log_keys_are_named() {
        let problems =
            load(&[r#"{"log_level": "loud", "log_rotate_duration": "soon", "log_file": ""}"#])
                .unwrap_err()
                .to_string();
        for key in ["log_level", "log_rotate_duration", "log_file"] {
            assert!(
                problems.contains(&format!("0.json: {key}")),
                "{key}: {problems}"
            );
        }
    }
}
