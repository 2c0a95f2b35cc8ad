//! The agent's own log: lines in Consul's (go-hclog's) text or JSON shape on stdout,
//! optionally in a rotated file (`log_file`), and live to `/v1/agent/monitor` readers.
//!
//! ```text
//!   tracing event ─▶ Layer ─┬─ at log_level ──▶ stdout (text or JSON, log_json)
//!                           │                └▶ FileSink ─▶ thread ─▶ LogFile (rotates, prunes)
//!                           └─ at each reader's level ─▶ api::monitor::Monitor ─▶ HTTP readers
//! ```
//!
//! - [`format`]: one event as a go-hclog text line or JSON object.
//! - [`file`]: the log file, its rotation by size and age, and the thread that writes it.
//! - [`Layer`]: the tracing layer that decides what goes where.
//!
//! Invariant: logging never waits on a reader or the disk. Monitor readers and the file
//! each have a bounded queue; a reader that falls behind is cut off, and lines the file
//! cannot take are counted and dropped.

pub mod file;
pub mod format;
mod layer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use api::monitor::{LineFormat, LogLevel, Monitor};
use tracing_subscriber::layer::SubscriberExt;

pub use self::file::{FileSink, LogFile, LogFileConfig};
pub use self::layer::{Layer, Sink};

impl Sink for FileSink {
    fn write_line(&self, line: &[u8]) {
        FileSink::write_line(self, line);
    }
}

/// The level the agent's outputs (stdout, the log file) write at: `log_level`, which a
/// reload may change, as Consul's does. Cheap to clone; every clone is the same setting.
#[derive(Clone, Debug)]
pub struct OutputLevel {
    rank: Arc<AtomicU8>,
}

impl OutputLevel {
    /// A setting at `level`.
    pub fn new(level: LogLevel) -> OutputLevel {
        OutputLevel {
            rank: Arc::new(AtomicU8::new(level as u8)),
        }
    }

    /// The level now.
    pub fn get(&self) -> LogLevel {
        match self.rank.load(Ordering::Relaxed) {
            1 => LogLevel::Error,
            2 => LogLevel::Warn,
            3 => LogLevel::Info,
            4 => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }

    /// Changes the level; tracing's per-callsite cache is rebuilt when it changed, so
    /// that callsites turned off before are asked again.
    pub fn set(&self, level: LogLevel) {
        if self.rank.swap(level as u8, Ordering::Relaxed) != level as u8 {
            tracing::callsite::rebuild_interest_cache();
        }
    }
}

/// The log once installed: what must be flushed at exit.
pub struct Installed {
    file: Option<FileSink>,
}

impl Installed {
    /// Waits (briefly) until the lines logged so far are in the log file.
    pub fn flush(&self) {
        if let Some(file) = &self.file {
            file.flush(file::FLUSH_TIMEOUT);
        }
    }
}

/// Why the log could not be set up; the agent does not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The log file could not be opened or its old files rotated: fix `log_file` or the
    /// permissions of its directory.
    #[error("Failed to setup logging: {path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What opening it reported.
        #[source]
        source: std::io::Error,
    },
    /// The log file's writer thread could not start.
    #[error("Failed to setup logging: cannot start the log file thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Installs the agent's log as the process's tracing subscriber: `stdout` at `level`
/// in text or JSON (`json`), the log file if configured, and `monitor`'s readers.
/// A subscriber installed earlier (by a program embedding the agent) is kept.
pub fn install(
    level: OutputLevel,
    json: bool,
    log_file: Option<&LogFileConfig>,
    stdout: Box<dyn Sink>,
    monitor: Monitor,
) -> Result<Installed, SetupError> {
    let mut sinks = vec![stdout];
    let file = match log_file {
        None => None,
        Some(config) => {
            let opened =
                LogFile::open(config.clone(), std::time::SystemTime::now()).map_err(|source| {
                    SetupError::File {
                        path: config.path.clone(),
                        source,
                    }
                })?;
            let sink = FileSink::spawn(opened).map_err(SetupError::Thread)?;
            sinks.push(Box::new(sink.clone()));
            Some(sink)
        }
    };
    let format = if json {
        LineFormat::Json
    } else {
        LineFormat::Text
    };
    let layer = Layer::new(level, format, sinks, monitor);
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
    Ok(Installed { file })
}
