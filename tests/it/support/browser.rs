//! Headless Chromium, driven over the DevTools protocol.
//!
//! The browser is started with `--remote-debugging-pipe`: it reads commands on file
//! descriptor 3 and writes replies and events on 4, each a JSON message ended by a NUL
//! byte. A shell opens two named pipes on those descriptors and `exec`s the browser, so
//! no WebSocket client and no `unsafe` descriptor juggling are needed here. Calls are
//! blocking; async tests make them inside `tokio::task::block_in_place`.
//!
//! Where no browser is installed, [`Browser::find`] says so and the tests that need one
//! print why they skip (CI installs Debian's `chromium`).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long one DevTools command may take before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A running headless browser with one page open.
pub struct Browser {
    child: Child,
    commands: File,
    replies: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    _dir: tempfile::TempDir,
}

impl Browser {
    /// The browser to run: `$CHROMIUM` (none if that is no file), else the first of
    /// `chromium`, `chromium-browser`, `google-chrome` on the `PATH`.
    pub fn find() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("CHROMIUM") {
            return Some(PathBuf::from(p)).filter(|p| p.is_file());
        }
        let path = std::env::var_os("PATH")?;
        ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
            .find(|p| p.is_file())
    }

    /// Starts `program` headless with a blank page of `width`×`height`.
    pub fn start(program: &Path, width: u32, height: u32) -> Browser {
        let dir = tempfile::tempdir().unwrap();
        let to_browser = dir.path().join("in");
        let from_browser = dir.path().join("out");
        for fifo in [&to_browser, &from_browser] {
            let status = Command::new("mkfifo").arg(fifo).status().unwrap();
            assert!(status.success(), "mkfifo {}", fifo.display());
        }
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<"$TO_BROWSER" 4>"$FROM_BROWSER""#)
            .arg(program)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--no-first-run",
                "--no-default-browser-check",
                "--mute-audio",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", dir.path().join("profile").display()),
                "about:blank",
            ])
            .env("TO_BROWSER", &to_browser)
            .env("FROM_BROWSER", &from_browser)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The shell opens "in" for reading, then "out" for writing; each open waits for
        // the other end, so these two opens pair with the shell's in the same order.
        let commands = File::options().write(true).open(&to_browser).unwrap();
        let replies_file = File::open(&from_browser).unwrap();
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(replies_file);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                            && tx.send(v).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            commands,
            replies,
            next_id: 0,
            session: String::new(),
            _dir: dir,
        };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser.page_call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser
    }

    /// Sends a command and waits for its reply: the result, or the protocol's error.
    fn send(
        &mut self,
        method: &str,
        params: Value,
        session: Option<String>,
    ) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = Value::String(s);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self
                .replies
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no reply to {method} from the browser: {e}"));
            if reply["id"] == id {
                return match reply.get("error") {
                    Some(err) => Err(err.clone()),
                    None => Ok(reply["result"].clone()),
                };
            }
        }
    }

    /// A browser-level command.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None)
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// A command to the page.
    fn page_call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(session))
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// Opens `url` in the page and waits until the new document has replaced the old
    /// one (not for anything on it).
    pub fn goto(&mut self, url: &str) {
        self.eval("window.previousDocument = true");
        self.page_call("Page.navigate", json!({"url": url}));
        self.wait(
            COMMAND_TIMEOUT,
            &format!("the new document of {url}"),
            "document.readyState !== 'loading' && window.previousDocument !== true",
        );
    }

    /// The value of a JavaScript expression in the page (`null` for what JSON cannot
    /// hold, and while the page is between documents).
    pub fn eval(&mut self, expression: &str) -> Value {
        let session = self.session.clone();
        let reply = self.send(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            Some(session),
        );
        match reply {
            // A document being replaced has no context to evaluate in: as good as null.
            Err(_) => Value::Null,
            Ok(r) if r.get("exceptionDetails").is_some() => Value::Null,
            Ok(r) => r["result"]["value"].clone(),
        }
    }

    /// Waits until `expression` is truthy in the page and returns its value; fails the
    /// test after `timeout`, showing the page's text.
    pub fn wait(&mut self, timeout: Duration, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(expression);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() >= deadline {
                let text = self
                    .eval("location.href + '\\n' + (document.body ? document.body.innerText : '')");
                panic!("timed out after {timeout:?} waiting for {what}; the page:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Writes a PNG of the page as it is now to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        use base64::Engine as _;
        let r = self.page_call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask politely so the browser takes its helper processes down with it; kill it
        // if it has not gone after a few seconds.
        let id = self.next_id + 1;
        let mut close = serde_json::to_vec(&json!({"id": id, "method": "Browser.close"})).unwrap();
        close.push(0);
        let _ = self.commands.write_all(&close);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where tests write screenshots: `$CARGO_TARGET_DIR/ui-screenshots` (or the
/// workspace's `target/`), for the README to pick from.
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("ui-screenshots")
}
