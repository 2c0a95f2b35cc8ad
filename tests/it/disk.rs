//! A server whose disk fills up: Raft cannot write its log, and the agent must not stay
//! up as a server that can neither vote nor write. It exits 1 with a clear last line,
//! and once there is room again a restart keeps every write it acknowledged.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{ext_listing_after_restart, register_until_failure};
use crate::support::process::Proc;

/// A small tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `megabytes` at `path`; `None` where that is not allowed.
    fn mount(path: &Path, megabytes: u32) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(path)
            .status()
            .ok()?;
        status.success().then(|| SmallDisk {
            path: path.to_owned(),
        })
    }

    /// Fills what is left with a file; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_stops_a_server_with_exit_1_and_a_restart_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("data"), 32) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let data = format!("-data-dir={}", disk.path.display());
    let args = [
        "agent",
        "-server",
        "-bootstrap-expect=1",
        "-bind=127.0.0.1",
        &data,
        "-http-port=0",
        "-server-port=0",
        "-serf-lan-port=0",
        "-dns-port=0",
        "-node=full",
        "-log-level=info",
    ];
    let mut p = Proc::spawn(&args);
    let http = p.listening("http").to_string();
    let before = register_until_failure(&http, 20);
    assert_eq!(before.len(), 20, "{}", p.output());

    // The disk fills up; writes go on until the log cannot take them.
    let filler = disk.fill();
    let acknowledged = register_until_failure(&http, 100_000);
    assert!(acknowledged.len() < 100_000, "writes never failed");
    let status = p.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", p.output());
    let output = p.output();
    let last = output.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        last.contains("exiting with an error so that a supervisor restarts the agent"),
        "the last line says why: {last}\n{output}"
    );

    // Room again: the restarted server holds every acknowledged write.
    std::fs::remove_file(filler).unwrap();
    let p = Proc::spawn(&args);
    let present = ext_listing_after_restart(&p);
    for i in before.iter().chain(&acknowledged) {
        assert!(
            present.contains(&format!("ext-{i} ")),
            "acknowledged ext-{i} lost after the disk filled up"
        );
    }
}
