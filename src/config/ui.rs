//! `ui_config` (and the older `ui` and `ui_content_path`): the web UI.

use api::http::UiConfig;

use super::problem::{Problem, problem};
use super::raw::RawConfig;

/// The web UI's settings: on with `ui_config.enabled` (or `ui`, `-ui`), and with `-dev`
/// unless a later source turns it off; served under `ui_config.content_path`.
pub(super) fn settings(m: &RawConfig, dev: bool, problems: &mut Vec<Problem>) -> UiConfig {
    let block = m.ui_config.clone().unwrap_or_default();
    let enabled = block.enabled.or(m.ui).unwrap_or(dev);
    if block.dir.is_some() {
        problems.push(problem(
            None,
            "ui_config.dir",
            "not supported: proconsul's web UI is built into the binary",
        ));
    }
    let (key, raw) = match (&block.content_path, &m.ui_content_path) {
        (Some(p), _) => ("ui_config.content_path", Some(p.as_str())),
        (None, Some(p)) => ("ui_content_path", Some(p.as_str())),
        (None, None) => ("ui_config.content_path", None),
    };
    let content_path = match raw.map(UiConfig::content_path) {
        None => UiConfig::DEFAULT_CONTENT_PATH.to_owned(),
        Some(Ok(path)) => path,
        Some(Err(why)) => {
            problems.push(problem(None, key, why));
            UiConfig::DEFAULT_CONTENT_PATH.to_owned()
        }
    };
    UiConfig {
        enabled,
        content_path,
    }
}
