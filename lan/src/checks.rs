//! Health-check runners: one task per check, started and stopped by [`crate::Local`].
//!
//! | kind | passes when | Consul's rule |
//! |---|---|---|
//! | TTL | updated through the API before the TTL runs out | same |
//! | HTTP | the response status is 2xx (429 warns) | same |
//! | TCP | a connection opens | same |
//! | script | exit code 0 (1 warns) | same; only with `enable_script_checks` |
//!
//! Each run is bounded by the check's timeout; a run that times out is critical.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use catalog::Health;

/// What a check runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// Passive: the application reports its status before `ttl` runs out.
    Ttl {
        /// Time allowed between updates.
        ttl: Duration,
    },
    /// An HTTP request.
    Http {
        /// `http://` URL.
        url: String,
        /// Request method (GET unless given).
        method: String,
        /// Request headers.
        header: BTreeMap<String, Vec<String>>,
        /// Request body.
        body: String,
        /// Time between runs.
        interval: Duration,
        /// Budget of one run.
        timeout: Duration,
    },
    /// A TCP connection attempt.
    Tcp {
        /// `host:port`.
        address: String,
        /// Time between runs.
        interval: Duration,
        /// Budget of one run.
        timeout: Duration,
    },
    /// A command run without a shell.
    Script {
        /// Program and arguments.
        args: Vec<String>,
        /// Time between runs.
        interval: Duration,
        /// Budget of one run.
        timeout: Duration,
    },
    /// Maintenance mode: critical for as long as it is registered, with nothing to run
    /// (Consul's `_node_maintenance` and `_service_maintenance:<id>` checks).
    Maintenance,
}

impl CheckKind {
    /// Consul's `Type`, `Interval` and `Timeout` strings for this check.
    pub fn describe(&self) -> (&'static str, String, String) {
        match self {
            CheckKind::Ttl { .. } => ("ttl", String::new(), String::new()),
            CheckKind::Maintenance => ("maintenance", String::new(), String::new()),
            CheckKind::Http {
                interval, timeout, ..
            } => (
                "http",
                catalog::duration::format(*interval),
                catalog::duration::format(*timeout),
            ),
            CheckKind::Tcp {
                interval, timeout, ..
            } => (
                "tcp",
                catalog::duration::format(*interval),
                catalog::duration::format(*timeout),
            ),
            CheckKind::Script {
                interval, timeout, ..
            } => (
                "script",
                catalog::duration::format(*interval),
                catalog::duration::format(*timeout),
            ),
        }
    }
}

struct Running {
    token: CancellationToken,
    wake: Arc<Notify>,
}

/// The largest `output_max_size` accepted: check output is stored in the catalog, so it
/// must stay small.
pub const CHECK_OUTPUT_LIMIT: usize = 64 * 1024;

/// Where a runner's checks report, and where a TTL check's deadline is kept: the agent's
/// local state. Owned here so that the runner needs nothing else of the agent.
pub(crate) trait Reports: Send + Sync + 'static {
    /// Records a check's result.
    fn record(&self, id: &str, status: Health, output: String);
    /// When TTL check `id` expires (`Some(None)`: no deadline now; `None`: no such check).
    fn ttl_expiry(&self, id: &str) -> Option<Option<Instant>>;
    /// Marks TTL check `id` critical if its deadline is still `expired_at`.
    fn expire_ttl(&self, id: &str, expired_at: Instant);
}

/// Starts and stops check tasks. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Runner {
    tasks: TaskTracker,
    shutdown: CancellationToken,
    running: Arc<Mutex<HashMap<String, Running>>>,
    scripts_enabled: bool,
}

impl Runner {
    pub(crate) fn new(
        tasks: TaskTracker,
        shutdown: CancellationToken,
        scripts_enabled: bool,
    ) -> Runner {
        Runner {
            tasks,
            shutdown,
            running: Arc::default(),
            scripts_enabled,
        }
    }

    pub(crate) fn scripts_enabled(&self) -> bool {
        self.scripts_enabled
    }

    /// Starts the task for check `id`, replacing any task it had.
    pub(crate) fn start(&self, id: String, kind: CheckKind, local: Arc<dyn Reports>) {
        let token = self.shutdown.child_token();
        let wake = Arc::new(Notify::new());
        let previous = self.running.lock().expect("runner lock poisoned").insert(
            id.clone(),
            Running {
                token: token.clone(),
                wake: wake.clone(),
            },
        );
        if let Some(p) = previous {
            p.token.cancel();
        }
        match kind {
            CheckKind::Ttl { .. } => {
                self.tasks.spawn(run_ttl(id, local, wake, token));
            }
            // Nothing runs: the check is critical until it is removed.
            CheckKind::Maintenance => {}
            other => {
                self.tasks.spawn(run_interval(id, other, local, token));
            }
        }
    }

    /// Stops the task for check `id`.
    pub(crate) fn stop(&self, id: &str) {
        if let Some(r) = self
            .running
            .lock()
            .expect("runner lock poisoned")
            .remove(id)
        {
            r.token.cancel();
        }
    }

    /// Tells a TTL task its timer was reset.
    pub(crate) fn wake(&self, id: &str) {
        if let Some(r) = self.running.lock().expect("runner lock poisoned").get(id) {
            r.wake.notify_one();
        }
    }
}

async fn run_ttl(id: String, local: Arc<dyn Reports>, wake: Arc<Notify>, token: CancellationToken) {
    loop {
        let expiry = match local.ttl_expiry(&id) {
            None => return,
            Some(e) => e,
        };
        match expiry {
            Some(at) => tokio::select! {
                _ = token.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(at) => local.expire_ttl(&id, at),
            },
            None => tokio::select! {
                _ = token.cancelled() => return,
                _ = wake.notified() => {}
            },
        }
    }
}

async fn run_interval(
    id: String,
    kind: CheckKind,
    local: Arc<dyn Reports>,
    token: CancellationToken,
) {
    let (interval, timeout) = match &kind {
        CheckKind::Http {
            interval, timeout, ..
        }
        | CheckKind::Tcp {
            interval, timeout, ..
        }
        | CheckKind::Script {
            interval, timeout, ..
        } => (*interval, *timeout),
        CheckKind::Ttl { .. } | CheckKind::Maintenance => return,
    };
    // Consul staggers the first run randomly within the interval; a short fixed spread
    // keeps start-up quick while still avoiding a thundering herd of checks.
    let first = Duration::from_millis(rand::random_range(0..=interval.as_millis().min(500) as u64));
    tokio::select! {
        _ = token.cancelled() => return,
        _ = tokio::time::sleep(first) => {}
    }
    loop {
        let run = async {
            match &kind {
                CheckKind::Http {
                    url,
                    method,
                    header,
                    body,
                    ..
                } => http_check(url, method, header, body).await,
                CheckKind::Tcp { address, .. } => tcp_check(address).await,
                CheckKind::Script { args, .. } => script_check(args).await,
                CheckKind::Ttl { .. } | CheckKind::Maintenance => {
                    unreachable!("ttl and maintenance checks do not run on an interval")
                }
            }
        };
        let (status, output) = tokio::select! {
            _ = token.cancelled() => return,
            result = tokio::time::timeout(timeout, run) => result.unwrap_or_else(|_| {
                (Health::Critical, format!("Timed out ({}) running check", catalog::duration::format(timeout)))
            }),
        };
        local.record(&id, status, output);
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Status from an HTTP response code, by Consul's rule.
fn http_status(code: u16) -> Health {
    match code {
        200..=299 => Health::Passing,
        429 => Health::Warning,
        _ => Health::Critical,
    }
}

async fn http_check(
    url: &str,
    method: &str,
    header: &BTreeMap<String, Vec<String>>,
    body: &str,
) -> (Health, String) {
    match http_request(url, method, header, body).await {
        Ok((code, reason, text)) => (
            http_status(code),
            format!("HTTP {method} {url}: {code} {reason} Output: {text}"),
        ),
        Err(e) => (Health::Critical, format!("HTTP {method} {url}: {e}")),
    }
}

async fn http_request(
    url: &str,
    method: &str,
    header: &BTreeMap<String, Vec<String>>,
    body: &str,
) -> Result<(u16, String, String), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs are supported".into());
    }
    let host = uri.host().ok_or("URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    // An IPv6 literal comes bracketed (`[::1]`); the resolver wants it bare.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let stream = tokio::net::TcpStream::connect((bare, port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(
            hyper::header::HOST,
            uri.authority().map(|a| a.as_str()).unwrap_or(host),
        )
        .header(hyper::header::USER_AGENT, "proconsul health check")
        .header(hyper::header::CONNECTION, "close");
    for (name, values) in header {
        for value in values {
            request = request.header(name.as_str(), value.as_str());
        }
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        // The body is read up to the largest output a check may keep; the check's own
        // limit is applied when the result is recorded.
        let collected = Limited::new(response.into_body(), CHECK_OUTPUT_LIMIT)
            .collect()
            .await;
        let text = match collected {
            Ok(c) => String::from_utf8_lossy(&c.to_bytes()).into_owned(),
            Err(_) => String::new(),
        };
        Ok::<_, String>((
            status.as_u16(),
            status.canonical_reason().unwrap_or("").to_owned(),
            text,
        ))
    };
    // The connection future must be driven while the request runs; it ends when the
    // server closes the connection (we asked it to) or the sender is dropped.
    let (result, _) = tokio::join!(exchange, conn);
    result
}

async fn tcp_check(address: &str) -> (Health, String) {
    match tokio::net::TcpStream::connect(address).await {
        Ok(_) => (Health::Passing, format!("TCP connect {address}: Success")),
        Err(e) => (Health::Critical, format!("dial tcp {address}: {e}")),
    }
}

async fn script_check(args: &[String]) -> (Health, String) {
    let Some((program, rest)) = args.split_first() else {
        return (Health::Critical, "script check has no command".into());
    };
    let child = tokio::process::Command::new(program)
        .args(rest)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (Health::Critical, format!("failed to run {program}: {e}")),
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (out, err, status) = tokio::join!(read_bounded(stdout), read_bounded(stderr), child.wait());
    let mut text = String::from_utf8_lossy(&out).into_owned();
    text.push_str(&String::from_utf8_lossy(&err));
    match status {
        Ok(status) => {
            let health = match status.code() {
                Some(0) => Health::Passing,
                Some(1) => Health::Warning,
                _ => Health::Critical,
            };
            (health, text)
        }
        Err(e) => (
            Health::Critical,
            format!("failed to wait for {program}: {e}"),
        ),
    }
}

/// Reads a pipe to its end, keeping at most [`CHECK_OUTPUT_LIMIT`] bytes: the rest is
/// read and dropped, so a chatty script neither blocks on a full pipe nor fills memory.
async fn read_bounded(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = CHECK_OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(chunk.get(..n.min(room)).unwrap_or(&[]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_codes_map_to_consul_statuses() {
        assert_eq!(http_status(200), Health::Passing);
        assert_eq!(http_status(204), Health::Passing);
        assert_eq!(http_status(429), Health::Warning);
        assert_eq!(http_status(500), Health::Critical);
        assert_eq!(http_status(301), Health::Critical);
    }

    #[tokio::test]
    async fn tcp_check_passes_on_an_open_port_and_fails_on_a_closed_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert_eq!(tcp_check(&addr).await.0, Health::Passing);
        // A port bound but not listening refuses connections, and, held, cannot be
        // taken by another test meanwhile (a port let go could be).
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        assert_eq!(tcp_check(&addr).await.0, Health::Critical);
    }

    #[tokio::test]
    async fn script_check_maps_exit_codes() {
        let sh = |code: &str| {
            vec![
                "sh".to_string(),
                "-c".into(),
                format!("echo out; exit {code}"),
            ]
        };
        let (status, output) = script_check(&sh("0")).await;
        assert_eq!(status, Health::Passing);
        assert_eq!(output, "out\n");
        assert_eq!(script_check(&sh("1")).await.0, Health::Warning);
        assert_eq!(script_check(&sh("2")).await.0, Health::Critical);
    }

    #[tokio::test]
    async fn script_output_is_bounded_and_the_script_is_not_blocked() {
        let args = vec![
            "sh".to_string(),
            "-c".into(),
            "head -c 1000000 /dev/zero; echo done >&2".into(),
        ];
        let (status, output) = script_check(&args).await;
        assert_eq!(status, Health::Passing);
        assert!(output.len() <= 2 * CHECK_OUTPUT_LIMIT, "{}", output.len());
        assert!(output.ends_with("done\n"));
    }
}
