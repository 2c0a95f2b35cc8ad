//! Maintenance mode kept across restarts, in `<data_dir>/maintenance.json`.
//!
//! Consul saves its maintenance checks with the agent's other checks, so a node or
//! service taken out of service stays out after a restart until an operator disables
//! maintenance. proconsul keeps the same promise with one small file: the agent restores
//! it at start (the node before the config files' services register, each service right
//! after), and [`keep`] rewrites it on every change `lan::Local` publishes, whether the
//! change came from the maintenance endpoints, a check deregistration or the removal of
//! a service.
//!
//! The file is written whole to a temporary name and renamed, so a crash leaves the old
//! or the new state, never half of one. A file that cannot be read stops the start: an
//! agent that silently forgot its maintenance would put a node back in service.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The file's name in the data dir.
const FILE: &str = "maintenance.json";

/// The file's shape; its own type, so that the in-memory one may change freely.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    /// The node's reason, when it is in maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// Service ID → reason.
    #[serde(default)]
    services: BTreeMap<String, String>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// What was in maintenance when the agent last ran (nothing without a file).
pub(crate) fn load(dir: &Path) -> anyhow::Result<lan::Maintenance> {
    let path = path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(lan::Maintenance::default());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let saved: Saved = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} does not hold maintenance state; fix it, or remove it to start with nothing in maintenance",
            path.display()
        )
    })?;
    Ok(lan::Maintenance {
        node: saved.node,
        services: saved.services,
    })
}

/// Writes `state` to the file in `dir`, atomically.
fn save(dir: &Path, state: &lan::Maintenance) -> std::io::Result<()> {
    let saved = Saved {
        node: state.node.clone(),
        services: state.services.clone(),
    };
    let text = serde_json::to_vec_pretty(&saved).map_err(std::io::Error::other)?;
    let path = path(dir);
    let temporary = dir.join(format!("{FILE}.tmp"));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, &path)
}

/// Saves what `local` has in maintenance now and after every change, until `shutdown`;
/// a change published before the shutdown is still saved.
pub(crate) async fn keep(local: lan::Local, dir: PathBuf, shutdown: CancellationToken) {
    let mut changes = local.subscribe_maintenance();
    // The state just restored may differ from the file (a service that did not come
    // back): save it once at start.
    changes.mark_changed();
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            changed = changes.changed() => changed.is_err(),
        };
        if changes.has_changed().unwrap_or(false) || !stopping {
            let state = changes.borrow_and_update().clone();
            let dir = dir.clone();
            let written = tokio::task::spawn_blocking(move || save(&dir, &state)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "could not save the maintenance state");
                }
                Err(e) => tracing::error!(error = %e, "saving the maintenance state stopped"),
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_and_a_missing_file_is_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        let state = lan::Maintenance {
            node: Some("kernel upgrade".into()),
            services: [("web-1".to_owned(), "draining".to_owned())].into(),
        };
        save(dir.path(), &state).unwrap();
        assert_eq!(load(dir.path()).unwrap(), state);
        save(dir.path(), &lan::Maintenance::default()).unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_damaged_file_stops_the_start_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "{\"node\": 3").unwrap();
        let e = format!("{:#}", load(dir.path()).unwrap_err());
        assert!(
            e.contains("remove it to start with nothing in maintenance"),
            "{e}"
        );
    }
}
