//! `log_file`: the agent's log also written to a file, rotated by size and age the way
//! Consul rotates it.
//!
//! - `log_file` ending in `/` (or naming a directory) means `consul.log` in it, Consul's
//!   name, so that log shippers set up for Consul find the file.
//! - The file being written always has that name. Before a line is written, the file is
//!   rotated if it holds `log_rotate_bytes` or more (0: no size limit) or was started
//!   `log_rotate_duration` ago (default 24h): it is renamed `consul-<unix nanoseconds>.log`
//!   (the stem and extension of the configured name; `.log` when it has none) and a new
//!   one is started.
//! - After a rotation, `log_rotate_max_files` old files are kept, the newest ones: 0
//!   keeps them all, a negative number keeps none.
//! - A non-empty file found at start is rotated out of the way rather than truncated
//!   (Consul truncates it, which loses the log of the run before).
//!
//! Writing happens on a thread of its own behind a bounded queue ([`FILE_QUEUE_LINES`]):
//! a slow or full disk never holds up the agent; lines that do not fit are counted,
//! and the count is written to the file once it takes lines again.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines waiting for the file thread at most; when it is full (the disk is slow), new
/// lines are dropped and counted.
pub const FILE_QUEUE_LINES: usize = 4096;

/// How long the agent waits at exit for the file thread to write what is queued.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Consul's rotation age when `log_rotate_duration` is not set.
pub const DEFAULT_ROTATE_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The file name Consul uses when `log_file` names a directory.
pub const DEFAULT_FILE_NAME: &str = "consul.log";

/// Where and when the log file is written and rotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFileConfig {
    /// The file being written (directory and name resolved).
    pub path: PathBuf,
    /// Size at which the file is rotated; 0 for no limit (`log_rotate_bytes`).
    pub rotate_bytes: u64,
    /// Age at which the file is rotated (`log_rotate_duration`).
    pub rotate_duration: Duration,
    /// Rotated files kept: 0 all, negative none (`log_rotate_max_files`).
    pub max_files: i64,
}

impl LogFileConfig {
    /// The file `log_file` names: `consul.log` inside it when it ends in a separator or
    /// is an existing directory.
    pub fn path_of(log_file: &str) -> PathBuf {
        let path = PathBuf::from(log_file);
        if log_file.ends_with(std::path::MAIN_SEPARATOR) || path.is_dir() {
            path.join(DEFAULT_FILE_NAME)
        } else {
            path
        }
    }
}

/// The log file and its rotation; writes synchronously (the [`FileSink`] thread owns it).
#[derive(Debug)]
pub struct LogFile {
    config: LogFileConfig,
    file: File,
    written: u64,
    started: SystemTime,
}

impl LogFile {
    /// Opens the log file at `now`, rotating a non-empty one left by an earlier run.
    /// Fails when the file cannot be created (the agent does not start then).
    pub fn open(config: LogFileConfig, now: SystemTime) -> io::Result<LogFile> {
        let file = open_new(&config.path, now)?;
        let log = LogFile {
            config,
            file,
            written: 0,
            started: now,
        };
        log.prune()?;
        Ok(log)
    }

    /// Writes one line at `now`, rotating first if the file is full or old.
    pub fn write_line(&mut self, line: &[u8], now: SystemTime) -> io::Result<()> {
        let full = self.config.rotate_bytes > 0 && self.written >= self.config.rotate_bytes;
        let old = now
            .duration_since(self.started)
            .is_ok_and(|age| age >= self.config.rotate_duration);
        if full || old {
            self.rotate(now)?;
        }
        self.file.write_all(line)?;
        self.written += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self, now: SystemTime) -> io::Result<()> {
        self.file.flush()?;
        std::fs::rename(&self.config.path, rotated_name(&self.config.path, now))?;
        self.file = create(&self.config.path)?;
        self.written = 0;
        self.started = now;
        self.prune()
    }

    /// Removes the oldest rotated files beyond `max_files`.
    fn prune(&self) -> io::Result<()> {
        let keep = match self.config.max_files {
            0 => return Ok(()),
            n if n < 0 => 0,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let mut old = rotated_files(&self.config.path)?;
        old.sort();
        let excess = old.len().saturating_sub(keep);
        for (_, path) in old.into_iter().take(excess) {
            std::fs::remove_file(path)?;
        }
        Ok(())
    }
}

fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
}

/// The log file for a new run: a non-empty file from before is rotated away first.
fn open_new(path: &Path, now: SystemTime) -> io::Result<File> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > 0 => std::fs::rename(path, rotated_name(path, now))?,
        _ => {}
    }
    create(path)
}

/// `(stem, extension)` of the log file name, `.log` when it has none.
fn stem_and_extension(path: &Path) -> (String, String) {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let extension = path
        .extension()
        .map_or_else(|| "log".to_owned(), |e| e.to_string_lossy().into_owned());
    (stem, extension)
}

/// `dir/<stem>-<unix nanoseconds>.<ext>`.
fn rotated_name(path: &Path, now: SystemTime) -> PathBuf {
    let (stem, extension) = stem_and_extension(path);
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    path.with_file_name(format!("{stem}-{nanos}.{extension}"))
}

/// The rotated files of `path`, with their timestamps: only names of the exact shape
/// [`rotated_name`] writes, so that no other file in the directory is ever removed.
fn rotated_files(path: &Path) -> io::Result<Vec<(u128, PathBuf)>> {
    let (stem, extension) = stem_and_extension(path);
    let prefix = format!("{stem}-");
    let suffix = format!(".{extension}");
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stamp = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(&suffix))
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u128>().ok());
        if let Some(stamp) = stamp {
            found.push((stamp, entry.path()));
        }
    }
    Ok(found)
}

/// The writing end of the log file: lines go to a thread that owns the [`LogFile`].
/// Cheap to clone.
#[derive(Clone)]
pub struct FileSink {
    queue: SyncSender<Item>,
    dropped: Arc<Mutex<u64>>,
}

enum Item {
    Line(Vec<u8>),
    /// Answered once every line queued before it is written.
    Flush(std::sync::mpsc::Sender<()>),
}

impl FileSink {
    /// Starts the file thread for an opened log file.
    pub fn spawn(file: LogFile) -> io::Result<FileSink> {
        let (queue, items) = std::sync::mpsc::sync_channel(FILE_QUEUE_LINES);
        let dropped = Arc::new(Mutex::new(0));
        let counted = dropped.clone();
        std::thread::Builder::new()
            .name("log-file".into())
            .spawn(move || write_lines(file, items, counted))?;
        Ok(FileSink { queue, dropped })
    }

    /// Queues a line; drops and counts it when the queue is full. Never waits.
    pub fn write_line(&self, line: &[u8]) {
        if self.queue.try_send(Item::Line(line.to_vec())).is_err() {
            *self.dropped.lock().expect("log file count poisoned") += 1;
        }
    }

    /// Waits up to `timeout` for the lines queued so far to be written (at exit); false
    /// if they were not.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let (done, written) = std::sync::mpsc::channel();
        let mut item = Item::Flush(done);
        loop {
            match self.queue.try_send(item) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    if std::time::Instant::now() >= deadline {
                        return false;
                    }
                    item = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        written.recv_timeout(left).is_ok()
    }
}

/// The file thread: writes lines until every sender is gone. A failed write (a full
/// disk) is said once on stderr, and lines are counted as dropped until writes succeed
/// again; then the count is written to the file.
fn write_lines(mut file: LogFile, items: Receiver<Item>, dropped: Arc<Mutex<u64>>) {
    let mut failing = false;
    for item in items {
        let line = match item {
            Item::Line(line) => line,
            Item::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let lost = std::mem::take(&mut *dropped.lock().expect("log file count poisoned"));
        if lost > 0 {
            let note =
                format!("[log_file] {lost} log lines were dropped: the file could not take them\n");
            if file.write_line(note.as_bytes(), SystemTime::now()).is_err() {
                *dropped.lock().expect("log file count poisoned") += lost;
            }
        }
        match file.write_line(&line, SystemTime::now()) {
            Ok(()) => failing = false,
            Err(e) => {
                *dropped.lock().expect("log file count poisoned") += 1;
                if !failing {
                    failing = true;
                    eprintln!(
                        "==> log_file {}: {e}; log lines are dropped until it can be written",
                        file.config.path.display()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, rotate_bytes: u64, max_files: i64) -> LogFileConfig {
        LogFileConfig {
            path: dir.join("agent.log"),
            rotate_bytes,
            rotate_duration: DEFAULT_ROTATE_DURATION,
            max_files,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_directory_means_consul_log_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let with_slash = format!("{}/", dir.path().display());
        assert_eq!(
            LogFileConfig::path_of(&with_slash),
            dir.path().join("consul.log")
        );
        let existing = dir.path().display().to_string();
        assert_eq!(
            LogFileConfig::path_of(&existing),
            dir.path().join("consul.log")
        );
        let file = dir.path().join("agent.log").display().to_string();
        assert_eq!(LogFileConfig::path_of(&file), dir.path().join("agent.log"));
    }

    #[test]
    fn the_file_rotates_once_it_holds_rotate_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFile::open(config(dir.path(), 20, 0), at(0)).unwrap();
        log.write_line(b"0123456789\n", at(1)).unwrap();
        log.write_line(b"0123456789\n", at(2)).unwrap();
        assert_eq!(
            names(dir.path()),
            ["agent.log"],
            "22 bytes, not rotated yet"
        );
        log.write_line(b"third\n", at(3)).unwrap();
        let stamp = at(3).duration_since(UNIX_EPOCH).unwrap().as_nanos();
        assert_eq!(
            names(dir.path()),
            [format!("agent-{stamp}.log"), "agent.log".to_owned()]
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap(),
            "third\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(format!("agent-{stamp}.log"))).unwrap(),
            "0123456789\n0123456789\n"
        );
    }

    #[test]
    fn the_file_rotates_when_old() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), 0, 0);
        c.rotate_duration = Duration::from_secs(60);
        let mut log = LogFile::open(c, at(0)).unwrap();
        log.write_line(b"a\n", at(59)).unwrap();
        assert_eq!(names(dir.path()).len(), 1);
        log.write_line(b"b\n", at(60)).unwrap();
        assert_eq!(names(dir.path()).len(), 2);
    }

    #[test]
    fn max_files_keeps_the_newest_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        // Not ours: never removed, whatever they look like.
        std::fs::write(dir.path().join("agent-old.log"), "x").unwrap();
        std::fs::write(dir.path().join("other-1.log"), "x").unwrap();
        let mut log = LogFile::open(config(dir.path(), 1, 2), at(0)).unwrap();
        for n in 1..=5 {
            log.write_line(b"line\n", at(n)).unwrap();
        }
        // Rotations at 2, 3, 4 and 5; the two newest stay.
        let stamp = |n| at(n).duration_since(UNIX_EPOCH).unwrap().as_nanos();
        assert_eq!(
            names(dir.path()),
            [
                format!("agent-{}.log", stamp(4)),
                format!("agent-{}.log", stamp(5)),
                "agent-old.log".to_owned(),
                "agent.log".to_owned(),
                "other-1.log".to_owned(),
            ]
        );
    }

    #[test]
    fn negative_max_files_keeps_no_rotated_file_and_zero_keeps_all() {
        let none = tempfile::tempdir().unwrap();
        let mut log = LogFile::open(config(none.path(), 1, -1), at(0)).unwrap();
        for n in 1..=3 {
            log.write_line(b"line\n", at(n)).unwrap();
        }
        assert_eq!(names(none.path()), ["agent.log"]);

        let all = tempfile::tempdir().unwrap();
        let mut log = LogFile::open(config(all.path(), 1, 0), at(0)).unwrap();
        for n in 1..=4 {
            log.write_line(b"line\n", at(n)).unwrap();
        }
        assert_eq!(names(all.path()).len(), 4);
    }

    #[test]
    fn a_file_from_an_earlier_run_is_rotated_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.log"), "before\n").unwrap();
        let mut log = LogFile::open(config(dir.path(), 0, 0), at(0)).unwrap();
        log.write_line(b"after\n", at(1)).unwrap();
        let stamp = at(0).duration_since(UNIX_EPOCH).unwrap().as_nanos();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(format!("agent-{stamp}.log"))).unwrap(),
            "before\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap(),
            "after\n"
        );
    }

    #[test]
    fn a_file_that_cannot_be_created_is_an_error_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let c = LogFileConfig {
            path: dir.path().join("missing").join("agent.log"),
            ..config(dir.path(), 0, 0)
        };
        assert!(LogFile::open(c, at(0)).is_err());
    }

    #[test]
    fn the_sink_writes_every_queued_line_before_exit() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(config(dir.path(), 0, 0), SystemTime::now()).unwrap();
        let sink = FileSink::spawn(log).unwrap();
        for n in 0..100 {
            sink.write_line(format!("line {n}\n").as_bytes());
        }
        assert!(sink.flush(FLUSH_TIMEOUT));
        let text = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
        assert_eq!(text.lines().count(), 100);
        assert_eq!(text.lines().last(), Some("line 99"));
    }
}
