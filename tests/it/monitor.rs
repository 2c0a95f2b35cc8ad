//! The agent's log with the real binary: `/v1/agent/monitor` (levels, JSON, a reader
//! that falls behind), `proconsul monitor`, `log_json` and `log_file` with rotation.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::process::Proc;

/// Starts `agent -dev` on OS-chosen ports at log level `level`; returns it and its
/// HTTP address.
fn dev_agent(level: &str, extra: &[&str]) -> (Proc, String) {
    let level = format!("-log-level={level}");
    let mut args = vec![
        "agent",
        "-dev",
        "-http-port=0",
        "-server-port=0",
        "-serf-lan-port=0",
        "-dns-port=0",
        "-node=monitor-node",
        &level,
    ];
    args.extend_from_slice(extra);
    let p = Proc::spawn(&args);
    let http = p.listening("http").to_string();
    (p, http)
}

/// One request on its own connection; returns the status and the body.
fn request(http: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn register(http: &str, name: &str) {
    let (status, body) = request(
        http,
        "PUT",
        "/v1/agent/service/register",
        &format!(r#"{{"Name":"{name}","Port":8080}}"#),
    );
    assert_eq!(status, 200, "{body}");
}

/// A monitor request left open: the head is read, then lines as they come.
struct Stream {
    reader: BufReader<TcpStream>,
}

impl Stream {
    fn open(http: &str, query: &str) -> Stream {
        let mut s = TcpStream::connect(http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "GET /v1/agent/monitor{query} HTTP/1.1\r\nHost: {http}\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header == "\r\n" {
                break;
            }
        }
        Stream { reader }
    }

    /// The next log line (chunk sizes of the chunked encoding are skipped).
    fn line(&mut self) -> String {
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap();
            assert!(n > 0, "the stream ended");
            let line = line.trim_end().to_owned();
            let chunk_size = !line.is_empty() && line.bytes().all(|b| b.is_ascii_hexdigit());
            if !line.is_empty() && !chunk_size {
                return line;
            }
        }
    }

    /// Reads lines until one satisfies `pred`.
    fn until(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let line = self.line();
            if pred(&line) {
                return line;
            }
            assert!(Instant::now() < deadline, "no line with {what}");
        }
    }
}

/// go-hclog's text shape: `2024-05-01T10:20:30.123Z [DEBUG] agent.x: message…`.
fn is_hclog_text(line: &str, level: &str) -> bool {
    let Some((time, rest)) = line.split_once(' ') else {
        return false;
    };
    let time_ok = time.len() == 24
        && time.ends_with('Z')
        && time.as_bytes()[10] == b'T'
        && time.as_bytes()[19] == b'.';
    let bracket = format!("[{level}]");
    let padded = format!("{bracket:<7} agent");
    time_ok && rest.starts_with(&padded)
}

#[test]
fn monitor_streams_lines_at_a_level_below_the_agents_own() {
    let (p, http) = dev_agent("info", &[]);
    let mut stream = Stream::open(&http, "?loglevel=debug");
    // A registration makes anti-entropy run, which it logs at debug.
    register(&http, "web");
    let line = stream.until("an anti-entropy line", |l| {
        l.contains("anti-entropy pass done")
    });
    assert!(is_hclog_text(&line, "DEBUG"), "{line}");
    assert!(line.contains(" agent.anti_entropy: "), "{line}");
    // The agent itself logs at info: the debug line went to the monitor only.
    let output = p.output();
    assert!(!output.contains("[DEBUG]"), "{output}");
    assert!(
        output.contains("[INFO]  agent.http: listening: proto=http"),
        "{output}"
    );
}

#[test]
fn monitor_with_logjson_gives_one_json_object_a_line() {
    let (_p, http) = dev_agent("info", &[]);
    let mut stream = Stream::open(&http, "?loglevel=DEBUG&logjson");
    register(&http, "api");
    let line = stream.until("an anti-entropy line", |l| {
        l.contains("anti-entropy pass done")
    });
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["@level"], "debug", "{line}");
    assert_eq!(v["@module"], "agent.anti_entropy", "{line}");
    assert_eq!(v["@message"], "anti-entropy pass done", "{line}");
    assert!(v["@timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
    assert!(v["writes"].is_u64(), "numbers stay numbers: {line}");
}

#[test]
fn monitor_refuses_an_unknown_level_with_consuls_text() {
    let (_p, http) = dev_agent("info", &[]);
    let (status, body) = request(&http, "GET", "/v1/agent/monitor?loglevel=verbose", "");
    assert_eq!((status, body.as_str()), (400, "Unknown log level: verbose"));
}

/// A connection the agent answers with an error, which it logs at debug
/// (`http connection ended`): a cheap way to make it log a lot.
fn provoke_debug_line(http: &str) {
    if let Ok(mut s) = TcpStream::connect(http) {
        let _ = s.write_all(b"NOT HTTP AT ALL\r\n\r\n");
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
}

#[test]
fn a_monitor_reader_that_falls_behind_is_cut_off_and_the_agent_keeps_answering() {
    let (p, http) = dev_agent("info", &[]);
    // A reader with a small receive window that never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let slow = {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stream = runtime
            .block_on(socket.connect(http.parse().unwrap()))
            .unwrap();
        stream.into_std().unwrap()
    };
    slow.set_nonblocking(false).unwrap();
    let mut slow = slow;
    write!(
        slow,
        "GET /v1/agent/monitor?loglevel=debug HTTP/1.1\r\nHost: {http}\r\n\r\n"
    )
    .unwrap();

    // The agent logs far more than the reader's queue and socket hold, and answers
    // meanwhile.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut n = 0;
    while !p.output().contains("monitor reader fell behind") {
        for _ in 0..50 {
            provoke_debug_line(&http);
        }
        n += 1;
        if n % 10 == 0 {
            let (status, body) = request(&http, "GET", "/v1/agent/self", "");
            assert_eq!(status, 200, "{body}");
        }
        assert!(
            Instant::now() < deadline,
            "the slow reader was never cut off:\n{}",
            p.output()
        );
    }
    let warning = p.wait_for_line(Duration::from_secs(1), |l| {
        l.contains("monitor reader fell behind")
    });
    assert!(is_hclog_text(&warning, "WARN"), "{warning}");
    assert!(warning.contains("reader=127.0.0.1"), "{warning}");
    let (status, body) = request(&http, "GET", "/v1/agent/self", "");
    assert_eq!(status, 200, "{body}");

    // Its connection is closed: what was in flight arrives, then the end, without the
    // chunked encoding's last chunk (a cut stream, not a finished one).
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut received = Vec::new();
    let end = slow.read_to_end(&mut received);
    assert!(
        end.is_ok()
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "{end:?}"
    );
    assert!(
        !received.ends_with(b"\r\n0\r\n\r\n"),
        "the stream was not cut"
    );
    // A new reader is served.
    let mut again = Stream::open(&http, "?loglevel=debug");
    provoke_debug_line(&http);
    again.until("a debug line", |l| l.contains("[DEBUG]"));
}

#[test]
fn proconsul_monitor_prints_the_log_until_interrupted_or_the_agent_stops() {
    let (mut agent, http) = dev_agent("info", &[]);
    let addr = format!("-http-addr={http}");

    let mut monitor = Proc::spawn(&["monitor", &addr, "-log-level=debug"]);
    // The monitor connects when it connects: keep causing lines until one arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !monitor.output().contains("[DEBUG] agent.http") {
        provoke_debug_line(&http);
        assert!(Instant::now() < deadline, "{}", monitor.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    monitor.signal("INT");
    assert_eq!(monitor.wait(Duration::from_secs(10)).code(), Some(0));

    let mut bad = Proc::spawn(&["monitor", &addr, "-log-level=loud"]);
    assert_eq!(bad.wait(Duration::from_secs(10)).code(), Some(1));
    assert!(
        bad.output().contains(
            "Error starting monitor: Unexpected response code: 400 (Unknown log level: loud)"
        ),
        "{}",
        bad.output()
    );

    let json = Proc::spawn(&["monitor", &addr, "-log-json"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !json
        .output()
        .contains("\"@message\":\"configuration reloaded\"")
    {
        // Info lines are what it streams by default; a reload logs one.
        let _ = request(&http, "PUT", "/v1/agent/reload", "");
        assert!(Instant::now() < deadline, "{}", json.output());
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(json);

    let mut watching = Proc::spawn(&["monitor", &addr]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !watching.output().contains("configuration reloaded") {
        let _ = request(&http, "PUT", "/v1/agent/reload", "");
        assert!(Instant::now() < deadline, "{}", watching.output());
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.signal("INT");
    assert_eq!(agent.wait(Duration::from_secs(20)).code(), Some(0));
    assert_eq!(watching.wait(Duration::from_secs(20)).code(), Some(1));
    let out = watching.output();
    assert!(out.contains("caught interrupt, stopping"), "{out}");
    assert!(
        out.contains("Remote side ended the monitor! This usually means that the"),
        "{out}"
    );
}

fn rotated(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("consul-") && n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

#[test]
fn log_file_is_written_and_rotated_by_size_keeping_max_files() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = format!("-log-file={}/", dir.path().display());
    let (mut p, http) = dev_agent(
        "debug",
        &[
            &log_dir,
            "-log-rotate-bytes=2000",
            "-log-rotate-max-files=2",
        ],
    );
    // At 2000 bytes a file, a few hundred debug lines rotate it many times over.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rounds = 0;
    while rounds < 3 || rotated(dir.path()).len() < 2 {
        for _ in 0..50 {
            provoke_debug_line(&http);
        }
        rounds += 1;
        assert!(Instant::now() < deadline, "{:?}", rotated(dir.path()));
    }
    // Stopped, so that no rotation is under way while the files are counted.
    p.signal("INT");
    assert_eq!(p.wait(Duration::from_secs(20)).code(), Some(0));
    let old = rotated(dir.path());
    assert_eq!(old.len(), 2, "max files keeps two: {old:?}");
    for name in old.iter().chain([&"consul.log".to_owned()]) {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        for line in text.lines() {
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                    .iter()
                    .any(|level| is_hclog_text(line, level)),
                "{name}: {line}"
            );
        }
    }
    for name in &old {
        let size = std::fs::metadata(dir.path().join(name)).unwrap().len();
        // Rotated once it held 2000 bytes: at most one line more.
        assert!((2000..2000 + 1024).contains(&size), "{name}: {size} bytes");
    }
}

#[test]
fn log_json_writes_json_lines_to_stdout_and_the_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.log");
    let log_file = format!("-log-file={}", file.display());
    let p = Proc::spawn(&[
        "agent",
        "-dev",
        "-http-port=0",
        "-server-port=0",
        "-serf-lan-port=0",
        "-dns-port=0",
        "-log-json",
        &log_file,
    ]);
    let line = p.wait_for_line(Duration::from_secs(20), |l| {
        l.contains("\"@message\":\"listening\"") && l.contains("\"proto\":\"http\"")
    });
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["@level"], "info");
    assert_eq!(v["@module"], "agent.http");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.contains("\"@message\":\"listening\"") {
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert!(v["@timestamp"].is_string(), "{line}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_log_file_that_cannot_be_opened_stops_the_agent_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("agent.log");
    let log_file = format!("-log-file={}", missing.display());
    let mut p = Proc::spawn(&["agent", "-dev", "-http-port=0", &log_file]);
    assert_eq!(p.wait(Duration::from_secs(20)).code(), Some(1));
    assert!(
        p.output().contains("Failed to setup logging"),
        "{}",
        p.output()
    );
}

/// The status line of a monitor request with `token` (the stream is then dropped).
fn monitor_status(http: &str, token: Option<&str>) -> String {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let header = token.map_or_else(String::new, |t| format!("X-Consul-Token: {t}\r\n"));
    write!(
        s,
        "GET /v1/agent/monitor HTTP/1.1\r\nHost: {http}\r\n{header}\r\n"
    )
    .unwrap();
    let mut status = String::new();
    BufReader::new(s).read_line(&mut status).unwrap();
    status.trim_end().to_owned()
}

#[test]
fn monitor_needs_agent_read() {
    const MANAGEMENT: &str = "5b7d0c1e-2f3a-4b5c-8d9e-0a1b2c3d4e5f";
    let acl = format!(
        r#"-hcl=acl = {{ enabled = true, default_policy = "deny", tokens = {{ initial_management = "{MANAGEMENT}" }} }}"#
    );
    let (p, http) = dev_agent("info", &[&acl]);
    // The management token works once the leader has written it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while monitor_status(&http, Some(MANAGEMENT)) != "HTTP/1.1 200 OK" {
        assert!(Instant::now() < deadline, "{}", p.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(monitor_status(&http, None), "HTTP/1.1 403 Forbidden");
}

#[test]
fn a_reload_changes_the_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("log.json");
    std::fs::write(&file, r#"{"log_level": "info"}"#).unwrap();
    let config = format!("-config-file={}", file.display());
    let p = Proc::spawn(&[
        "agent",
        "-dev",
        "-http-port=0",
        "-server-port=0",
        "-serf-lan-port=0",
        "-dns-port=0",
        &config,
    ]);
    let http = p.listening("http").to_string();
    provoke_debug_line(&http);
    assert!(!p.output().contains("[DEBUG]"), "{}", p.output());
    std::fs::write(&file, r#"{"log_level": "debug"}"#).unwrap();
    let (status, body) = request(&http, "PUT", "/v1/agent/reload", "");
    assert_eq!(status, 200, "{body}");
    p.wait_for_line(Duration::from_secs(10), |l| {
        l.contains("configuration reloaded")
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p
        .output()
        .contains("[DEBUG] agent.http: http connection ended")
    {
        provoke_debug_line(&http);
        assert!(Instant::now() < deadline, "{}", p.output());
    }
    // Applied, so not among the changes that wait for a restart.
    assert!(!p.output().contains("LogLevel"), "{}", p.output());
}
