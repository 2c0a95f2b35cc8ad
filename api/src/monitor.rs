//! The agent's log as live streams, for `/v1/agent/monitor` readers.
//!
//! ```text
//!   tracing event ─▶ the agent's log layer ─▶ Monitor::publish ─┬─▶ reader queue ─▶ HTTP body
//!                    (asks Monitor::wanted)                      ├─▶ reader queue ─▶ HTTP body
//!                                                                └─▶ full? reader cut off
//! ```
//!
//! The binary's log layer feeds a [`Monitor`]; each reader gets a [`Subscription`] with
//! its own level, its own format (text or JSON) and its own bounded queue. Publishing
//! never waits: a line goes into every queue that has room, and a reader whose queue is
//! full is cut off — its queue is emptied and its stream ends with an error, which
//! closes its connection. A slow reader therefore costs at most one queue of memory and
//! never slows the agent down.
//!
//! A reader may ask for more detail than the agent logs (`debug` while the agent logs
//! at `info`). [`Monitor::wanted`] says the most verbose level any reader wants, so the
//! log layer lets those events through only while someone asks for them; when that level
//! changes, tracing's per-callsite cache is rebuilt so the change takes effect.
//!
//! Invariant: nothing here logs while holding the reader list (a log line would come
//! back to [`Monitor::publish`] on the same thread).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use bytes::Bytes;

/// Lines a reader may have waiting; one more and it is cut off. Consul's monitor buffers
/// 512 lines per reader too.
pub const READER_QUEUE_LINES: usize = 512;

/// Bytes a reader may have waiting; more and it is cut off (a few very long lines must
/// not hold more memory than [`READER_QUEUE_LINES`] ordinary ones).
pub const READER_QUEUE_BYTES: usize = 1024 * 1024;

/// Readers at once; a further one is refused (each may hold a full queue).
pub const MAX_READERS: usize = 32;

/// A log level, as Consul names them (`trace` is the most verbose).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Errors only.
    Error = 1,
    /// Warnings and errors.
    Warn = 2,
    /// Lifecycle events (Consul's default).
    Info = 3,
    /// Per request.
    Debug = 4,
    /// Per packet.
    Trace = 5,
}

impl LogLevel {
    /// The level a Consul user wrote: `trace`, `debug`, `info`, `warn` (or `warning`),
    /// `err` or `error`, in any case; `None` for anything else.
    pub fn parse(text: &str) -> Option<LogLevel> {
        match text.to_ascii_lowercase().as_str() {
            "trace" => Some(LogLevel::Trace),
            "debug" => Some(LogLevel::Debug),
            "info" => Some(LogLevel::Info),
            "warn" | "warning" => Some(LogLevel::Warn),
            "err" | "error" => Some(LogLevel::Error),
            _ => None,
        }
    }

    /// The lower-case name (`info`), as Consul's JSON lines give it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    /// Whether a reader or output at this level shows an event at `event`.
    pub fn shows(self, event: LogLevel) -> bool {
        event <= self
    }

    fn from_rank(rank: u8) -> Option<LogLevel> {
        match rank {
            1 => Some(LogLevel::Error),
            2 => Some(LogLevel::Warn),
            3 => Some(LogLevel::Info),
            4 => Some(LogLevel::Debug),
            5 => Some(LogLevel::Trace),
            _ => None,
        }
    }
}

/// The two shapes of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// go-hclog's text line: `2024-05-01T10:20:30.123Z [INFO]  agent: message: key=value`.
    Text,
    /// One JSON object: `{"@level":"info","@message":"…","@module":"agent",…}`.
    Json,
}

/// A reader that was cut off while publishing, for the publisher to report once it may
/// log again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutOff {
    /// Who was reading (the client's address, when known).
    pub reader: String,
    /// Lines that were waiting in its queue and were thrown away.
    pub dropped: usize,
}

/// The agent's log, fanned out to monitor readers. Cheap to clone; the default has no
/// readers and costs the log layer one atomic load per event.
#[derive(Clone, Default)]
pub struct Monitor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("wanted", &self.wanted())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    readers: Mutex<Vec<Arc<Reader>>>,
    /// The rank of the most verbose level any reader wants; 0 when nobody reads.
    wanted: AtomicU8,
}

struct Reader {
    level: LogLevel,
    format: LineFormat,
    who: String,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<Bytes>,
    bytes: usize,
    cut_off: bool,
    waker: Option<Waker>,
}

/// Why a reader could not start.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// [`MAX_READERS`] readers are streaming already: try again when one has left.
    #[error("too many monitor streams at once ({MAX_READERS}); try again later")]
    Busy,
}

impl Monitor {
    /// The most verbose level any reader wants, or `None` when nobody reads. The log
    /// layer lets an event through to [`publish`](Monitor::publish) only when this shows
    /// it.
    pub fn wanted(&self) -> Option<LogLevel> {
        LogLevel::from_rank(self.shared.wanted.load(Ordering::Relaxed))
    }

    /// Starts a reader of lines at `level` or more severe, in `format`. `who` names the
    /// reader in the warning logged if it is cut off.
    pub fn subscribe(
        &self,
        level: LogLevel,
        format: LineFormat,
        who: String,
    ) -> Result<Subscription, SubscribeError> {
        let reader = Arc::new(Reader {
            level,
            format,
            who,
            queue: Mutex::new(Queue::default()),
        });
        let changed = {
            let mut readers = self
                .shared
                .readers
                .lock()
                .expect("monitor readers poisoned");
            if readers.len() >= MAX_READERS {
                return Err(SubscribeError::Busy);
            }
            readers.push(reader.clone());
            self.shared.recompute(&readers)
        };
        if changed {
            tracing::callsite::rebuild_interest_cache();
        }
        Ok(Subscription {
            monitor: self.clone(),
            reader,
        })
    }

    /// Hands an event at `level` to every reader that shows it; `render` is asked for
    /// each format at most once. Never waits on a reader: a reader whose queue is full
    /// is cut off and returned, for the caller to report once it may log again.
    pub fn publish(
        &self,
        level: LogLevel,
        render: &mut dyn FnMut(LineFormat) -> Bytes,
    ) -> Vec<CutOff> {
        let mut text = None;
        let mut json = None;
        let mut cut = Vec::new();
        let mut wakers = Vec::new();
        let mut readers = self
            .shared
            .readers
            .lock()
            .expect("monitor readers poisoned");
        readers.retain(|reader| {
            if !reader.level.shows(level) {
                return true;
            }
            let slot = match reader.format {
                LineFormat::Text => &mut text,
                LineFormat::Json => &mut json,
            };
            let line = slot.get_or_insert_with(|| render(reader.format)).clone();
            let mut queue = reader.queue.lock().expect("monitor queue poisoned");
            let full = queue.lines.len() >= READER_QUEUE_LINES
                || queue.bytes + line.len() > READER_QUEUE_BYTES;
            if full {
                cut.push(CutOff {
                    reader: reader.who.clone(),
                    dropped: queue.lines.len(),
                });
                queue.cut_off = true;
                queue.lines = VecDeque::new();
                queue.bytes = 0;
            } else {
                queue.bytes += line.len();
                queue.lines.push_back(line);
            }
            wakers.extend(queue.waker.take());
            !full
        });
        // The level readers want is recomputed when their subscriptions are dropped, not
        // here: rebuilding tracing's interest cache in the middle of an event is avoided.
        drop(readers);
        for waker in wakers {
            waker.wake();
        }
        cut
    }
}

impl Shared {
    /// Sets `wanted` from `readers`; true when it changed.
    fn recompute(&self, readers: &[Arc<Reader>]) -> bool {
        let rank = readers.iter().map(|r| r.level as u8).max().unwrap_or(0);
        self.wanted.swap(rank, Ordering::Relaxed) != rank
    }
}

/// What [`Subscription::poll_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    /// The next line, ending in `\n`.
    Line(Bytes),
    /// The reader fell behind and was cut off; its stream is over.
    CutOff,
}

/// One reader's stream of lines. Dropping it removes the reader.
pub struct Subscription {
    monitor: Monitor,
    reader: Arc<Reader>,
}

impl Subscription {
    /// The next line, or `Pending` (the task is woken when one arrives).
    pub fn poll_line(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Polled> {
        let mut queue = self.reader.queue.lock().expect("monitor queue poisoned");
        if queue.cut_off {
            return std::task::Poll::Ready(Polled::CutOff);
        }
        match queue.lines.pop_front() {
            Some(line) => {
                queue.bytes -= line.len();
                std::task::Poll::Ready(Polled::Line(line))
            }
            None => {
                queue.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }

    /// The next line; `None` once the reader has been cut off.
    pub async fn next_line(&self) -> Option<Bytes> {
        match std::future::poll_fn(|cx| self.poll_line(cx)).await {
            Polled::Line(line) => Some(line),
            Polled::CutOff => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let changed = {
            let shared = &self.monitor.shared;
            let mut readers = shared.readers.lock().expect("monitor readers poisoned");
            readers.retain(|r| !Arc::ptr_eq(r, &self.reader));
            shared.recompute(&readers)
        };
        if changed {
            tracing::callsite::rebuild_interest_cache();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> impl FnMut(LineFormat) -> Bytes {
        move |format| match format {
            LineFormat::Text => Bytes::from(format!("text {n}\n")),
            LineFormat::Json => Bytes::from(format!("{{\"n\":{n}}}\n")),
        }
    }

    #[test]
    fn levels_parse_as_consul_spells_them() {
        for (text, level) in [
            ("trace", LogLevel::Trace),
            ("DEBUG", LogLevel::Debug),
            ("Info", LogLevel::Info),
            ("warn", LogLevel::Warn),
            ("warning", LogLevel::Warn),
            ("ERR", LogLevel::Error),
            ("error", LogLevel::Error),
        ] {
            assert_eq!(LogLevel::parse(text), Some(level), "{text}");
        }
        assert_eq!(LogLevel::parse("verbose"), None);
        assert_eq!(LogLevel::parse(""), None);
        assert!(LogLevel::Debug.shows(LogLevel::Info));
        assert!(!LogLevel::Info.shows(LogLevel::Debug));
    }

    #[tokio::test]
    async fn each_reader_gets_its_level_and_format() {
        let monitor = Monitor::default();
        assert_eq!(monitor.wanted(), None);
        let info = monitor
            .subscribe(LogLevel::Info, LineFormat::Text, "a".into())
            .unwrap();
        let debug = monitor
            .subscribe(LogLevel::Debug, LineFormat::Json, "b".into())
            .unwrap();
        assert_eq!(monitor.wanted(), Some(LogLevel::Debug));
        assert!(monitor.publish(LogLevel::Debug, &mut line(1)).is_empty());
        assert!(monitor.publish(LogLevel::Info, &mut line(2)).is_empty());
        assert_eq!(info.next_line().await.unwrap(), "text 2\n");
        assert_eq!(debug.next_line().await.unwrap(), "{\"n\":1}\n");
        assert_eq!(debug.next_line().await.unwrap(), "{\"n\":2}\n");
        drop(debug);
        assert_eq!(monitor.wanted(), Some(LogLevel::Info));
        drop(info);
        assert_eq!(monitor.wanted(), None);
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_is_cut_off_and_its_queue_freed() {
        let monitor = Monitor::default();
        let slow = monitor
            .subscribe(LogLevel::Info, LineFormat::Text, "slow".into())
            .unwrap();
        let fast = monitor
            .subscribe(LogLevel::Info, LineFormat::Text, "fast".into())
            .unwrap();
        for n in 0..READER_QUEUE_LINES {
            assert!(monitor.publish(LogLevel::Info, &mut line(n)).is_empty());
            assert_eq!(fast.next_line().await.unwrap(), format!("text {n}\n"));
        }
        let cut = monitor.publish(LogLevel::Info, &mut line(9999));
        assert_eq!(
            cut,
            [CutOff {
                reader: "slow".into(),
                dropped: READER_QUEUE_LINES
            }]
        );
        assert_eq!(slow.next_line().await, None, "the stream ends at once");
        assert_eq!(fast.next_line().await.unwrap(), "text 9999\n");
        // Later lines still reach the reader that keeps up.
        assert!(
            monitor
                .publish(LogLevel::Info, &mut line(10_000))
                .is_empty()
        );
        assert_eq!(fast.next_line().await.unwrap(), "text 10000\n");
    }

    #[test]
    fn readers_are_bounded() {
        let monitor = Monitor::default();
        let held: Vec<_> = (0..MAX_READERS)
            .map(|n| {
                monitor
                    .subscribe(LogLevel::Info, LineFormat::Text, n.to_string())
                    .unwrap()
            })
            .collect();
        assert!(matches!(
            monitor.subscribe(LogLevel::Info, LineFormat::Text, "one more".into()),
            Err(SubscribeError::Busy)
        ));
        drop(held);
        assert!(
            monitor
                .subscribe(LogLevel::Info, LineFormat::Text, "again".into())
                .is_ok()
        );
    }
}
