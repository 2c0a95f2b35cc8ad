//! The command run under the lock: started through the shell or as a program, told of
//! SIGINT and SIGTERM, and stopped (SIGTERM, then SIGKILL) when the lock is lost.

use super::*;

pub(super) struct Shutdown {
    pub(super) rx: watch::Receiver<bool>,
}

impl Shutdown {
    pub(super) fn listen(child_pid: Arc<Mutex<Option<u32>>>) -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    Some(()) = interrupt.recv() => rustix::process::Signal::INT,
                    Some(()) = terminate.recv() => rustix::process::Signal::TERM,
                    else => break,
                };
                let pid = *child_pid.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(pid) = pid
                    && let Err(e) = send_signal(pid, sig)
                {
                    eprintln!("Warning, could not forward signal: {e}");
                }
                tx.send_replace(true);
            }
        });
        Ok(Shutdown { rx })
    }

    pub(super) fn triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Returns once a signal came.
    pub(super) async fn wait(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|on| *on).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// `work`'s output, or `None` when a signal comes first.
    pub(super) async fn unless<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            out = work => Some(out),
            () = self.wait() => None,
        }
    }
}

pub(super) fn send_signal(pid: u32, sig: rustix::process::Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("no such process {pid}")))?;
    rustix::process::kill_process(pid, sig).map_err(std::io::Error::from)
}

// ---------------------------------------------------------------------------------------
// The child

pub(super) struct Child {
    pub(super) ui: Ui,
    /// The running child's pid, for the signal forwarder.
    pub(super) pid: Arc<Mutex<Option<u32>>>,
}

/// A started child: resolves to whether it ran and exited with status 0.
type Running = JoinHandle<bool>;

impl Child {
    pub(super) fn set_pid(pid: &Mutex<Option<u32>>, value: Option<u32>) {
        *pid.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }

    /// Starts the command and a task that waits for it.
    pub(super) fn start(&self, command: &[OsString], shell: bool, pass_stdin: bool) -> Running {
        let ui = self.ui;
        ui.info("Starting handler");
        let mut cmd = child_command(command, shell, std::env::var_os("SHELL"));
        cmd.env("CONSUL_LOCK_HELD", "true")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        if pass_stdin {
            ui.info("Stdin passed to handler process");
            cmd.stdin(Stdio::inherit());
        } else {
            cmd.stdin(Stdio::null());
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                ui.error(&format!("Error starting handler: {e}"));
                return tokio::spawn(async { false });
            }
        };
        // Known before anything can signal it; cleared once it has been reaped.
        Child::set_pid(&self.pid, child.id());
        let pid = self.pid.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            Child::set_pid(&pid, None);
            match status {
                Ok(status) if status.success() => true,
                Ok(status) => {
                    ui.error(&format!("Error running handler: {}", go_exit_text(status)));
                    false
                }
                Err(e) => {
                    ui.error(&format!("Error running handler: {e}"));
                    false
                }
            }
        })
    }

    /// Stops the child: SIGTERM, then SIGKILL if it has not exited within the grace
    /// period; then waits for it to be gone.
    pub(super) async fn kill(&self, mut running: Running) {
        let ui = self.ui;
        let pid = *self.pid.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pid) = pid else {
            // It did not start, or has just exited.
            ui.info("No child process to kill");
            let _ = running.await;
            return;
        };
        ui.info(&format!("Terminating child pid {pid}"));
        if let Err(e) = send_signal(pid, rustix::process::Signal::TERM) {
            if running.is_finished() {
                // It exited as we signalled it.
                let _ = running.await;
            } else {
                ui.error(&format!("Failed to terminate {pid}: {e}"));
            }
            return;
        }
        if tokio::time::timeout(KILL_GRACE_PERIOD, &mut running)
            .await
            .is_ok()
        {
            ui.info("Child terminated");
            return;
        }
        ui.info(&format!(
            "Child did not exit after grace period of {}",
            catalog::duration::format(KILL_GRACE_PERIOD)
        ));
        ui.info(&format!("Killing child pid {pid}"));
        if let Err(e) = send_signal(pid, rustix::process::Signal::KILL) {
            ui.error(&format!("Failed to kill {pid}: {e}"));
            return;
        }
        // A killed process is gone at once; this only reaps it.
        let _ = tokio::time::timeout(KILL_GRACE_PERIOD, running).await;
    }
}

/// The command to run: `$SHELL -c "<words joined by spaces>"` (`/bin/sh` without
/// `SHELL`), or the words as a program and its arguments.
pub(super) fn child_command(
    words: &[OsString],
    shell: bool,
    shell_var: Option<OsString>,
) -> tokio::process::Command {
    if shell {
        let program = shell_var
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| OsString::from("/bin/sh"));
        let mut script = OsString::new();
        for (i, word) in words.iter().enumerate() {
            if i > 0 {
                script.push(" ");
            }
            script.push(word);
        }
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg("-c").arg(script);
        cmd
    } else {
        let mut cmd = tokio::process::Command::new(&words[0]);
        cmd.args(&words[1..]);
        cmd
    }
}

/// How Go's `exec.ExitError` reads: `exit status 3`, `signal: terminated`.
pub(super) fn go_exit_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    let Some(sig) = status.signal() else {
        return status.to_string();
    };
    let name = match sig {
        1 => "hangup".to_owned(),
        2 => "interrupt".to_owned(),
        3 => "quit".to_owned(),
        6 => "aborted".to_owned(),
        9 => "killed".to_owned(),
        11 => "segmentation fault".to_owned(),
        13 => "broken pipe".to_owned(),
        15 => "terminated".to_owned(),
        n => format!("signal {n}"),
    };
    format!("signal: {name}")
}
