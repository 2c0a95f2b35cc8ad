//! The real binary as a child process, killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_proconsul")
}

/// Runs a CLI verb to completion.
pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_SSL")
        .env_remove("CONSUL_CACERT")
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_TOKEN_FILE")
        .output()
        .unwrap()
}

/// Runs a CLI verb to completion in `dir` (for verbs that write files there).
pub fn run_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env_remove("CONSUL_HTTP_ADDR")
        .output()
        .unwrap()
}

/// A running agent process; its output is collected line by line.
pub struct Proc {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    /// The threads reading stdout and stderr into `lines`.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        let mut command = Command::new(binary());
        command.args(args);
        Proc::spawn_command(command)
    }

    /// Runs the binary inside network namespace `ns` (`ip netns exec` replaces itself
    /// with the binary, so signals reach the agent).
    pub fn spawn_in(ns: &str, args: &[&str]) -> Proc {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, binary()]).args(args);
        Proc::spawn_command(command)
    }

    fn spawn_command(mut command: Command) -> Proc {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            }));
        }
        Proc {
            child: Some(child),
            lines,
            readers,
        }
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for a line matching `pred`; fails the test with the output so far.
    pub fn wait_for_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "no matching line within {timeout:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of the listener the agent logged for `proto` (`http`, `dns-udp`), from
    /// its text log line (`listening: proto=http addr=127.0.0.1:8500`).
    pub fn listening(&self, proto: &str) -> SocketAddr {
        let marker = format!("proto={proto} addr=");
        let line = self.wait_for_line(Duration::from_secs(20), |l| {
            l.contains("listening") && l.contains(&marker)
        });
        let rest = &line[line.find(&marker).unwrap() + marker.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, and then for what it wrote to be read (for a
    /// few seconds at most: a child it left behind may hold its output open).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                let read_by = Instant::now() + Duration::from_secs(5);
                while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < read_by {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "process did not exit within {timeout:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
