//! The agent's `watches`: each watch of the configuration runs against the agent's own
//! HTTP API and invokes its handler on each change, one invocation at a time, each
//! bounded in time.
//!
//! A watch is Consul's: `type` and the type's parameters, and a handler, either
//! `handler_type` `"script"` (the default) with `args` (run directly) or the older
//! `handler` (a command line run through the shell), or `"http"` with
//! `http_handler_config` (`path`, `method`, `header`, `timeout`, `tls_skip_verify`).
//! A script gets the data as JSON on its stdin and `CONSUL_INDEX` in its environment;
//! the last 4 KiB of its output are logged at debug level. An HTTP handler gets the data
//! as the body, with `Content-Type: application/json` and `X-Consul-Index`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Doc, Flow, Params, Plan, run};
use crate::client::Client;

/// How long a script handler may run before it is killed. Consul has no such bound: a
/// handler that hangs would stop its watch for good.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// The default `http_handler_config.timeout` (Consul's).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a handler's output is kept for the log: the last 4 KiB (Consul's).
pub const OUTPUT_TAIL: usize = 4 * 1024;
/// How long the output of a script that has exited is still read (a process it left in
/// the background may hold its output open).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Consul's warning for the deprecated `handler` key.
pub const HANDLER_DEPRECATED: &str = "The 'handler' field in watches has been deprecated and replaced with the 'args' field. See https://www.consul.io/docs/agent/watches.html";

/// What a watch runs on each change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// `args`: a program and its arguments, run directly.
    Script(Vec<String>),
    /// `handler`: a command line run with `$SHELL -c` (`/bin/sh` without `SHELL`).
    Shell(String),
    /// `handler_type` `"http"`.
    Http(HttpHandler),
}

/// `http_handler_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpHandler {
    /// The URL to call (`path`); `http://` only.
    pub url: String,
    /// The method (`POST` by default).
    pub method: String,
    /// Extra headers, each with its values.
    pub header: BTreeMap<String, Vec<String>>,
    /// Budget of one call (10 s by default).
    pub timeout: Duration,
    /// `tls_skip_verify`: accepted for Consul's sake; without `https://` it changes
    /// nothing.
    pub tls_skip_verify: bool,
}

/// One watch of the configuration: what it looks at and what it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    /// The query.
    pub plan: Plan,
    /// The handler.
    pub handler: Handler,
}

/// The parameters of a watch that are its handler's.
const HANDLER_KEYS: &[&str] = &["handler_type", "http_handler_config", "handler", "args"];

impl WatchSpec {
    /// Reads one element of `watches`, with Consul's errors (and clear ones for what
    /// Consul would let pass: an unknown `handler_type`, unknown keys in
    /// `http_handler_config`, a handler URL other than `http://`). Returns Consul's
    /// deprecation warning when the watch uses `handler`.
    pub fn parse(value: &Value) -> Result<(WatchSpec, Option<&'static str>), String> {
        let Value::Object(params) = value else {
            return Err("a watch must be an object".into());
        };
        let (plan, mut rest) = Plan::parse(params, HANDLER_KEYS)?;
        let handler_type = match rest.remove("handler_type") {
            None => String::new(),
            Some(Value::String(s)) => s,
            Some(_) => return Err("Expecting handler_type to be a string".into()),
        };
        let http = match handler_type.as_str() {
            "" | "script" => false,
            "http" => true,
            other => {
                return Err(format!(
                    "Unsupported handler_type: {other} (must be \"script\" or \"http\")"
                ));
            }
        };
        let http_config = rest.remove("http_handler_config");
        if http_config.is_some() && !http {
            return Err("Invalid parameters: [http_handler_config]".into());
        }
        let handler = match rest.remove("handler") {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err("Watch handler must be a string".into()),
        };
        let args = match rest.remove("args") {
            None => None,
            Some(Value::String(s)) => Some(vec![s]),
            Some(Value::Array(items)) => Some(
                items
                    .into_iter()
                    .map(|item| match item {
                        Value::String(s) => Ok(s),
                        _ => Err("Watch args must be a list of strings".to_owned()),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => return Err("Watch args must be a list of strings".into()),
        };
        let warning = handler.is_some().then_some(HANDLER_DEPRECATED);
        let handler = match (handler, args, http) {
            (Some(_), Some(_), _) | (Some(_), None, true) | (None, Some(_), true) => {
                return Err("Only one watch handler allowed".into());
            }
            (None, None, false) => return Err("Must define a watch handler".into()),
            (Some(script), None, false) => Handler::Shell(script),
            (None, Some(args), false) => {
                if args.first().is_none_or(String::is_empty) {
                    return Err("Watch args must name the program to run".into());
                }
                Handler::Script(args)
            }
            (None, None, true) => {
                let config = http_config.ok_or(
                    "Handler type 'http' requires 'http_handler_config' to be set".to_owned(),
                )?;
                Handler::Http(
                    HttpHandler::parse(&config)
                        .map_err(|e| format!("Failed to parse 'http_handler_config': {e}"))?,
                )
            }
        };
        Ok((WatchSpec { plan, handler }, warning))
    }
}

impl HttpHandler {
    fn parse(value: &Value) -> Result<HttpHandler, String> {
        let Value::Object(fields) = value else {
            return Err("must be an object".into());
        };
        let mut fields: Params = fields.clone();
        let string = |fields: &mut Params, name: &str| match fields.remove(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("'{name}' must be a string")),
        };
        let url = string(&mut fields, "path")?
            .filter(|p| !p.is_empty())
            .ok_or("Requires 'path' to be set")?;
        check_url(&url)?;
        let method = string(&mut fields, "method")?
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "POST".into());
        hyper::Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("'method' {method:?} is not an HTTP method"))?;
        let timeout = match string(&mut fields, "timeout")?.filter(|t| !t.is_empty()) {
            None => HTTP_TIMEOUT,
            Some(text) => catalog::duration::parse(&text)
                .map_err(|e| format!("Failed to parse timeout: {e}"))?,
        };
        let tls_skip_verify = match fields.remove("tls_skip_verify") {
            None => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err("'tls_skip_verify' must be a boolean".into()),
        };
        let mut header = BTreeMap::new();
        match fields.remove("header") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (name, values) in map {
                    let values = match values {
                        Value::String(s) => vec![s],
                        Value::Array(items) => items
                            .into_iter()
                            .map(|v| match v {
                                Value::String(s) => Ok(s),
                                _ => Err(format!("'header.{name}' must be a list of strings")),
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                        _ => return Err(format!("'header.{name}' must be a list of strings")),
                    };
                    hyper::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("'header' {name:?} is not a header name"))?;
                    for v in &values {
                        hyper::header::HeaderValue::from_str(v)
                            .map_err(|_| format!("'header.{name}' {v:?} is not a header value"))?;
                    }
                    header.insert(name, values);
                }
            }
            Some(_) => return Err("'header' must be an object of lists of strings".into()),
        }
        if let Some(name) = fields.keys().next() {
            return Err(format!("unknown key '{name}'"));
        }
        Ok(HttpHandler {
            url,
            method,
            header,
            timeout,
            tls_skip_verify,
        })
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("'path' {url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(()),
        Some("https") => Err(format!(
            "'path' {url:?}: only http:// handlers are supported by proconsul"
        )),
        _ => Err(format!("'path' {url:?} must be an http:// URL")),
    }
}

/// A command that runs `script` through the shell, as Consul's handlers do: `$SHELL -c`,
/// `/bin/sh` when `SHELL` is unset or empty.
pub fn shell_command(script: &str) -> tokio::process::Command {
    let shell = std::env::var_os("SHELL")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/sh".into());
    let mut command = tokio::process::Command::new(shell);
    command.arg("-c").arg(script);
    command
}

/// How an exit status reads in Consul's messages (Go's `exec.ExitError`): `exit status
/// 2`, `signal: killed`.
pub fn go_exit_text(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(9) => "signal: killed".into(),
        Some(15) => "signal: terminated".into(),
        Some(2) => "signal: interrupt".into(),
        Some(n) => format!("signal: {n}"),
        None => status.to_string(),
    }
}

/// Starts the agent's watches against its HTTP API at `http` (an unspecified address is
/// reached on loopback). They stop when `stop` is cancelled: a handler still running is
/// killed.
pub fn start(specs: &[WatchSpec], http: SocketAddr, tasks: &TaskTracker, stop: CancellationToken) {
    let ip = match http.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, http.port());
    for spec in specs {
        let Ok(client) = Client::new(&addr.to_string()) else {
            return;
        };
        let spec = spec.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = watch(client, spec) => {}
            }
        });
    }
}

/// Runs one watch for good (until dropped).
async fn watch(client: Client, spec: WatchSpec) {
    let watch_type = spec.plan.type_name();
    let handler = &spec.handler;
    run(
        &client,
        &spec.plan,
        |error, retry| {
            tracing::error!(watch_type, error, retry = ?retry, "Watch errored");
        },
        move |index, data| async move {
            handler.invoke(index, &data).await;
            Flow::Continue
        },
    )
    .await;
}

impl Handler {
    /// How the handler is named in log lines.
    pub fn describe(&self) -> String {
        match self {
            Handler::Script(args) => args.join(" "),
            Handler::Shell(script) => script.clone(),
            Handler::Http(h) => h.url.clone(),
        }
    }

    /// Runs the handler once for `data` at `index`; failures are logged.
    pub async fn invoke(&self, index: u64, data: &Doc) {
        let input = format!("{}\n", data.to_go_json());
        match self {
            Handler::Script(args) => {
                let mut command = tokio::process::Command::new(&args[0]);
                command.args(&args[1..]);
                run_script(command, &self.describe(), index, input).await;
            }
            Handler::Shell(script) => {
                run_script(shell_command(script), script, index, input).await;
            }
            Handler::Http(h) => h.call(index, input).await,
        }
    }
}

/// The last [`OUTPUT_TAIL`] bytes of what a pipe gives until it closes, and how many
/// bytes it gave.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>) -> (Vec<u8>, usize) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), 0);
    };
    let mut tail = Vec::new();
    let mut total = 0;
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return (tail, total),
            Ok(n) => {
                total += n;
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > OUTPUT_TAIL {
                    tail.drain(..tail.len() - OUTPUT_TAIL);
                }
            }
        }
    }
}

/// Consul's rendering of captured output: the tail, announced as such when cut.
fn captured(tail: &[u8], total: usize) -> String {
    let text = String::from_utf8_lossy(tail);
    if total > tail.len() {
        format!("Captured {} of {total} bytes\n...\n{text}", tail.len())
    } else {
        text.into_owned()
    }
}

async fn run_script(mut command: tokio::process::Command, name: &str, index: u64, input: String) {
    command
        .env("CONSUL_INDEX", index.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            tracing::error!(handler = name, error = %e, "Failed to run watch handler");
            return;
        }
    };
    let stdin = child.stdin.take();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let mut reading = pin!(async { tokio::join!(read_tail(stdout), read_tail(stderr)) });
    let mut output = None;
    let mut status = None;
    {
        let mut waiting = pin!(async {
            if let Some(mut stdin) = stdin {
                // A handler that does not read its input is no error.
                let _ = stdin.write_all(input.as_bytes()).await;
            }
            child.wait().await
        });
        let deadline = pin!(tokio::time::sleep(SCRIPT_TIMEOUT));
        let mut deadline = deadline;
        while status.is_none() {
            tokio::select! {
                out = &mut reading, if output.is_none() => output = Some(out),
                s = &mut waiting => status = Some(s),
                _ = &mut deadline => break,
            }
        }
    }
    let Some(status) = status else {
        let _ = child.start_kill();
        let _ = child.wait().await;
        tracing::error!(
            handler = name,
            timeout = ?SCRIPT_TIMEOUT,
            "Failed to run watch handler: it did not finish in time and was killed"
        );
        return;
    };
    if output.is_none() {
        output = tokio::time::timeout(OUTPUT_GRACE, reading).await.ok();
    }
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            tracing::error!(handler = name, error = %go_exit_text(s), "Failed to run watch handler");
        }
        Err(e) => tracing::error!(handler = name, error = %e, "Failed to run watch handler"),
    }
    let ((out, out_total), (err, err_total)) = output.unwrap_or_default();
    let mut tail = out;
    tail.extend_from_slice(&err);
    if tail.len() > OUTPUT_TAIL {
        tail.drain(..tail.len() - OUTPUT_TAIL);
    }
    tracing::debug!(
        handler = name,
        output = %captured(&tail, out_total + err_total),
        "watch handler output"
    );
}

impl HttpHandler {
    async fn call(&self, index: u64, body: String) {
        match tokio::time::timeout(self.timeout, self.exchange(index, body)).await {
            Err(_) => tracing::error!(
                handler = %self.url,
                error = %format!("no answer within {:?}", self.timeout),
                "Failed to invoke http watch handler"
            ),
            Ok(Err(e)) => {
                tracing::error!(handler = %self.url, error = %e, "Failed to invoke http watch handler");
            }
            Ok(Ok((status, output))) if (200..=299).contains(&status.as_u16()) => {
                tracing::trace!(handler = %self.url, output = %output, "http watch handler output");
            }
            Ok(Ok((status, output))) => tracing::error!(
                handler = %self.url,
                status = %status,
                output = %output,
                "http watch handler answered with an error"
            ),
        }
    }

    async fn exchange(
        &self,
        index: u64,
        body: String,
    ) -> Result<(hyper::StatusCode, String), String> {
        let uri: hyper::Uri = self.url.parse().map_err(|e| format!("{e}"))?;
        let host = uri.host().ok_or("the URL has no host")?;
        let port = uri.port_u16().unwrap_or(80);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::net::TcpStream::connect((bare, port))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        let mut request = hyper::Request::builder()
            .method(self.method.as_str())
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                hyper::header::HOST,
                uri.authority().map_or(host, |a| a.as_str()),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("X-Consul-Index", index.to_string())
            .header(hyper::header::CONNECTION, "close");
        for (name, values) in &self.header {
            for value in values {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let mut body = response.into_body();
            let mut tail = Vec::new();
            let mut total = 0;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    total += data.len();
                    tail.extend_from_slice(&data);
                    if tail.len() > OUTPUT_TAIL {
                        tail.drain(..tail.len() - OUTPUT_TAIL);
                    }
                }
            }
            Ok::<_, String>((status, captured(&tail, total)))
        };
        let (result, _) = tokio::join!(exchange, conn);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::Kind;

    fn parse(json: &str) -> Result<(WatchSpec, Option<&'static str>), String> {
        WatchSpec::parse(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn script_handlers_take_args_or_the_older_handler() {
        let (spec, warning) = parse(
            r#"{"type": "key", "key": "app/x", "handler_type": "script", "args": ["/h.sh", "-v"]}"#,
        )
        .unwrap();
        assert_eq!(spec.plan.kind, Kind::Key("app/x".into()));
        assert_eq!(
            spec.handler,
            Handler::Script(vec!["/h.sh".into(), "-v".into()])
        );
        assert_eq!(warning, None);
        let (spec, warning) = parse(r#"{"type": "nodes", "args": "/h.sh"}"#).unwrap();
        assert_eq!(spec.handler, Handler::Script(vec!["/h.sh".into()]));
        assert_eq!(warning, None);
        let (spec, warning) =
            parse(r#"{"type": "services", "handler": "echo hi >> /tmp/x"}"#).unwrap();
        assert_eq!(spec.handler, Handler::Shell("echo hi >> /tmp/x".into()));
        assert_eq!(warning, Some(HANDLER_DEPRECATED));
    }

    #[test]
    fn http_handlers_take_consul_s_settings() {
        let (spec, _) = parse(
            r#"{"type": "service", "service": "web", "handler_type": "http",
                "http_handler_config": {"path": "http://127.0.0.1:9000/hook", "method": "PUT",
                  "header": {"X-A": ["1", "2"], "X-B": "3"}, "timeout": "3s", "tls_skip_verify": true}}"#,
        )
        .unwrap();
        assert_eq!(
            spec.handler,
            Handler::Http(HttpHandler {
                url: "http://127.0.0.1:9000/hook".into(),
                method: "PUT".into(),
                header: [
                    ("X-A".to_owned(), vec!["1".to_owned(), "2".to_owned()]),
                    ("X-B".to_owned(), vec!["3".to_owned()])
                ]
                .into(),
                timeout: Duration::from_secs(3),
                tls_skip_verify: true,
            })
        );
        let (spec, _) = parse(
            r#"{"type": "nodes", "handler_type": "http", "http_handler_config": {"path": "http://h/"}}"#,
        )
        .unwrap();
        let Handler::Http(h) = spec.handler else {
            panic!()
        };
        assert_eq!((h.method.as_str(), h.timeout), ("POST", HTTP_TIMEOUT));
    }

    #[test]
    fn bad_watches_are_refused_with_consul_s_words() {
        for (json, error) in [
            (
                r#"{"type": "key", "key": "k"}"#,
                "Must define a watch handler",
            ),
            (
                r#"{"type": "key", "key": "k", "handler": "a", "args": ["b"]}"#,
                "Only one watch handler allowed",
            ),
            (
                r#"{"type": "key", "key": "k", "handler_type": "http", "args": ["b"],
                    "http_handler_config": {"path": "http://h/"}}"#,
                "Only one watch handler allowed",
            ),
            (
                r#"{"type": "key", "key": "k", "handler": 1}"#,
                "Watch handler must be a string",
            ),
            (
                r#"{"type": "key", "key": "k", "args": [1]}"#,
                "Watch args must be a list of strings",
            ),
            (
                r#"{"type": "key", "key": "k", "args": []}"#,
                "Watch args must name the program to run",
            ),
            (
                r#"{"type": "key", "key": "k", "handler_type": "http"}"#,
                "Handler type 'http' requires 'http_handler_config' to be set",
            ),
            (
                r#"{"type": "key", "key": "k", "handler_type": "http", "http_handler_config": {}}"#,
                "Failed to parse 'http_handler_config': Requires 'path' to be set",
            ),
            (
                r#"{"type": "key", "key": "k", "handler_type": "http",
                    "http_handler_config": {"path": "http://h/", "timeout": "soon"}}"#,
                "Failed to parse 'http_handler_config': Failed to parse timeout: ",
            ),
            (
                r#"{"type": "key", "key": "k", "handler_type": "http",
                    "http_handler_config": {"path": "http://h/", "retries": 3}}"#,
                "Failed to parse 'http_handler_config': unknown key 'retries'",
            ),
            (
                r#"{"type": "key", "key": "k", "handler_type": "http",
                    "http_handler_config": {"path": "https://h/"}}"#,
                "only http:// handlers are supported by proconsul",
            ),
            (
                r#"{"type": "key", "key": "k", "args": ["a"], "http_handler_config": {"path": "http://h/"}}"#,
                "Invalid parameters: [http_handler_config]",
            ),
            (
                r#"{"type": "key", "key": "k", "handler_type": "exec", "args": ["a"]}"#,
                "Unsupported handler_type: exec",
            ),
            (
                r#"{"type": "key", "key": "k", "args": ["a"], "color": "red"}"#,
                "Invalid parameters: [color]",
            ),
            (
                r#"{"type": "connect_roots", "args": ["a"]}"#,
                "Unsupported watch type: connect_roots",
            ),
            (r#"["key"]"#, "a watch must be an object"),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.contains(error), "{json}: {e}");
        }
    }

    #[test]
    fn exits_read_as_go_s() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            go_exit_text(std::process::ExitStatus::from_raw(2 << 8)),
            "exit status 2"
        );
        assert_eq!(
            go_exit_text(std::process::ExitStatus::from_raw(9)),
            "signal: killed"
        );
        assert_eq!(captured(b"tail", 10), "Captured 4 of 10 bytes\n...\ntail");
        assert_eq!(captured(b"all", 3), "all");
    }

    #[tokio::test]
    async fn a_script_handler_gets_the_data_and_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!(
            "printf '%s ' \"$CONSUL_INDEX\" >> '{0}'; cat >> '{0}'",
            out.display()
        );
        let handler = Handler::Script(vec!["/bin/sh".into(), "-c".into(), script]);
        handler
            .invoke(42, &Doc::parse(r#"{"Key": "a<b"}"#).unwrap())
            .await;
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "42 {\"Key\":\"a\\u003cb\"}\n"
        );
        // A failing or missing program is logged, not fatal.
        Handler::Shell("exit 3".into()).invoke(1, &Doc::Null).await;
        Handler::Script(vec!["/nonexistent/handler".into()])
            .invoke(1, &Doc::Null)
            .await;
    }
}
