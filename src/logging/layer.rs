//! The tracing layer that writes the agent's log: to its outputs (stdout, `log_file`) at
//! `log_level`, and to monitor readers at whatever level they ask for.
//!
//! Which events reach the layer is decided per callsite and cached by tracing: an event
//! is wanted when the outputs' level shows it, or when some monitor reader's does.
//! proconsul's own crates log at the level asked; dependencies at `warn` at most, as
//! their `info` and `debug` lines are chatter to an operator (openraft's per-election
//! lines, hyper's per-connection ones). When nobody monitors, a `debug!` below the
//! agent's level costs what it costs without this layer: tracing's global level check.

use std::cell::{Cell, OnceCell};
use std::time::SystemTime;

use api::monitor::{LineFormat, LogLevel, Monitor};
use bytes::Bytes;
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::Context;

use super::OutputLevel;
use super::format::{Record, level_of};

/// Somewhere whole log lines are written (stdout, the log file). Writing must not wait
/// long: it runs on the thread that logs.
pub trait Sink: Send + Sync + 'static {
    /// Writes one line, `\n` included.
    fn write_line(&self, line: &[u8]);
}

/// The agent's log layer.
pub struct Layer {
    level: OutputLevel,
    format: LineFormat,
    sinks: Vec<Box<dyn Sink>>,
    monitor: Monitor,
}

impl Layer {
    /// Writes events at `level` in `format` to `sinks`, and feeds `monitor`.
    pub fn new(
        level: OutputLevel,
        format: LineFormat,
        sinks: Vec<Box<dyn Sink>>,
        monitor: Monitor,
    ) -> Layer {
        Layer {
            level,
            format,
            sinks,
            monitor,
        }
    }

    /// Whether any output or reader wants events of this callsite.
    fn wants(&self, meta: &Metadata<'_>) -> bool {
        if !meta.is_event() {
            return false;
        }
        let level = level_of(meta.level());
        let ours = is_ours(meta.target());
        shows(Some(self.level.get()), ours, level) || shows(self.monitor.wanted(), ours, level)
    }
}

/// Whether the target is one of proconsul's crates (`proconsul`, `proconsul_lan`, …).
fn is_ours(target: &str) -> bool {
    target.starts_with("proconsul")
}

/// Whether an output or reader at `at` shows an event at `level` (dependencies' events
/// only at `warn` or more severe).
fn shows(at: Option<LogLevel>, ours: bool, level: LogLevel) -> bool {
    let Some(at) = at else { return false };
    let at = if ours { at } else { at.min(LogLevel::Warn) };
    at.shows(level)
}

fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Trace => LevelFilter::TRACE,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Error => LevelFilter::ERROR,
    }
}

thread_local! {
    /// Set while this thread is inside the layer: an event logged from within (by a
    /// waker, say) is dropped instead of re-entering the monitor's reader list.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// The thread is inside the layer until this is dropped.
struct Inside;

impl Inside {
    fn enter() -> Option<Inside> {
        INSIDE
            .try_with(|inside| (!inside.replace(true)).then_some(Inside))
            .ok()
            .flatten()
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let _ = INSIDE.try_with(|inside| inside.set(false));
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        // Re-asked whenever the monitor's wanted level changes (it rebuilds tracing's
        // interest cache), so `always`/`never` stay true.
        if self.wants(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        self.wants(meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let outputs = self.level.get();
        let most = self.monitor.wanted().map_or(outputs, |w| w.max(outputs));
        Some(level_filter(most))
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let level = level_of(meta.level());
        let ours = is_ours(meta.target());
        let to_outputs = shows(Some(self.level.get()), ours, level);
        // The interest cache may lag a reader that just left: ask again.
        let to_monitor = shows(self.monitor.wanted(), ours, level);
        if !to_outputs && !to_monitor {
            return;
        }
        let Some(inside) = Inside::enter() else {
            return;
        };
        let record = Record::of_event(event, SystemTime::now());
        let text = OnceCell::new();
        let json = OnceCell::new();
        let mut render = |format: LineFormat| -> Bytes {
            let cell = match format {
                LineFormat::Text => &text,
                LineFormat::Json => &json,
            };
            cell.get_or_init(|| Bytes::from(record.render(format)))
                .clone()
        };
        if to_outputs {
            let line = render(self.format);
            for sink in &self.sinks {
                sink.write_line(&line);
            }
        }
        let cut = if to_monitor {
            self.monitor.publish(level, &mut render)
        } else {
            Vec::new()
        };
        drop(inside);
        for c in cut {
            tracing::warn!(
                reader = %c.reader,
                dropped = c.dropped,
                "monitor reader fell behind: its stream was cut off"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<String>>>);

    impl Sink for Lines {
        fn write_line(&self, line: &[u8]) {
            self.0
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(line).into_owned());
        }
    }

    #[test]
    fn dependencies_are_shown_at_warn_at_most() {
        assert!(shows(Some(LogLevel::Debug), true, LogLevel::Debug));
        assert!(!shows(Some(LogLevel::Debug), false, LogLevel::Info));
        assert!(shows(Some(LogLevel::Debug), false, LogLevel::Warn));
        assert!(!shows(Some(LogLevel::Error), false, LogLevel::Warn));
        assert!(!shows(None, true, LogLevel::Error));
    }

    #[tokio::test]
    async fn outputs_get_the_agents_level_and_readers_their_own() {
        let out = Lines::default();
        let monitor = Monitor::default();
        let layer = Layer::new(
            OutputLevel::new(LogLevel::Info),
            LineFormat::Text,
            vec![Box::new(out.clone())],
            monitor.clone(),
        );
        let subscriber = tracing_subscriber::registry().with(layer);
        let reader = monitor
            .subscribe(LogLevel::Debug, LineFormat::Json, "test".into())
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "proconsul_api::http", service = "web", "request");
            tracing::info!(target: "proconsul::agent", n = 3, "started");
            tracing::info!(target: "hyper::proto", "chatter");
        });
        let written = out.0.lock().unwrap().clone();
        assert_eq!(written.len(), 1, "{written:?}");
        assert!(
            written[0].ends_with(" [INFO]  agent: started: n=3\n"),
            "{written:?}"
        );
        let first: serde_json::Value =
            serde_json::from_slice(&reader.next_line().await.unwrap()).unwrap();
        assert_eq!(first["@level"], "debug");
        assert_eq!(first["@module"], "agent.http");
        assert_eq!(first["@message"], "request");
        assert_eq!(first["service"], "web");
        let second: serde_json::Value =
            serde_json::from_slice(&reader.next_line().await.unwrap()).unwrap();
        assert_eq!(second["@message"], "started");
        assert_eq!(second["n"], 3);
    }
}
