//! Two datacenters of one server each, the real binary as child processes on
//! 127.0.0.1, federated over QUIC with mutual TLS, each server's WAN port reached only
//! through a [`DelayProxy`] that holds every datagram a fixed time in each direction (so
//! any WAN round trip costs twice that).
//!
//! The agents cannot advertise another port than the one they bind, so each proxy takes
//! the server's own WAN port on another loopback address (127.0.0.2 for dc1, 127.0.0.3
//! for dc2), which the server advertises with `-advertise-wan`:
//!
//! ```text
//!  s1 (dc1) ◀──D ms── proxy 127.0.0.2 ◀──QUIC── s2 (dc2)
//!           ──────────────▶ D ms ─────────────▶ proxy 127.0.0.3
//! ```
//!
//! The servers are stopped (SIGTERM, then SIGKILL) when dropped; a driver killed by a
//! signal cannot do that, so with a PID file each server's PID is appended to it as it
//! starts, for the calling script to stop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wan::tls::{self, CertKind, CertRequest};

use crate::delay::DelayProxy;
use crate::http::{Conn, Reply};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Where dc1's and dc2's WAN proxies listen: the servers' own WAN ports on these.
const PROXY_IPS: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
];
/// Budget of each setup step (leaders, federation, first copy).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Time between two tries of a setup step.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A request unanswered this long is an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the delay proxies' tasks get to stop after a run.
pub const PROXY_GRACE: Duration = Duration::from_secs(5);

/// Runs a federation benchmark: `measure` gets a temp dir for the agents' files, a
/// tracker for the delay proxies' tasks and a token that stops them, on a runtime of
/// two workers; the proxies are stopped afterwards (waited for up to [`PROXY_GRACE`]).
/// An error is printed after `name`, and the exit code says whether it succeeded.
pub fn run<F>(name: &str, measure: F) -> ExitCode
where
    F: AsyncFnOnce(&Path, &TaskTracker, &CancellationToken) -> Result<(), String>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = runtime.block_on(async {
        let root = tempfile::tempdir().map_err(|e| format!("a temp dir: {e}"))?;
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let result = measure(root.path(), &tasks, &stop).await;
        stop.cancel();
        tasks.close();
        if timeout(PROXY_GRACE, tasks.wait()).await.is_err() {
            eprintln!("warning: {} proxy tasks did not stop in time", tasks.len());
        }
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
/// How long the servers get to stop on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What starts the servers: the binary, and where to list their PIDs.
pub struct Launch<'a> {
    /// The proconsul binary.
    pub bin: &'a Path,
    /// A file each server's PID is appended to, if any.
    pub pid_file: Option<&'a Path>,
}

/// A server process, stopped (SIGTERM, then SIGKILL) and reaped when dropped.
pub struct Server {
    /// Its node name.
    pub name: &'static str,
    child: Child,
    /// Its HTTP address.
    pub http: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + STOP_GRACE;
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two servers and the proxies in front of their WAN ports.
pub struct Federation {
    /// The only server of dc1.
    pub s1: Server,
    /// The only server of dc2, which joined dc1 over the WAN.
    pub s2: Server,
    /// dc1's and dc2's WAN proxies.
    pub links: Vec<DelayProxy>,
}

impl Federation {
    /// Starts the proxies (holding each datagram `delay`), then s1 in dc1 with
    /// `dc1_config` and s2 in dc2 with `dc2_config` (each merged into the TLS settings),
    /// with their data in `root`. The proxies' tasks stop with `stop`.
    pub async fn start(
        launch: &Launch<'_>,
        root: &Path,
        delay: Duration,
        (dc1_config, dc2_config): (Value, Value),
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<Federation, String> {
        let ca = tls::create_ca("consul", 30).map_err(|e| format!("the CA: {e}"))?;
        let ports = [Ports::pick()?, Ports::pick()?];
        let mut links = Vec::new();
        for (ip, p) in PROXY_IPS.iter().zip(&ports) {
            let link = DelayProxy::start_at(
                SocketAddr::new(*ip, p.serf_wan),
                SocketAddr::new(LOOPBACK, p.serf_wan),
                delay,
                tasks,
                stop.child_token(),
            )
            .await
            .map_err(|e| format!("the delay proxy on {ip}: {e}"))?;
            links.push(link);
        }
        let s1 = start_server(
            launch,
            root,
            &ca,
            ("s1", "dc1"),
            &ports[0],
            (PROXY_IPS[0], None),
            dc1_config,
        )?;
        let s2 = start_server(
            launch,
            root,
            &ca,
            ("s2", "dc2"),
            &ports[1],
            (PROXY_IPS[1], Some(links[0].addr)),
            dc2_config,
        )?;
        Ok(Federation { s1, s2, links })
    }

    /// Prints both servers' last log lines (after a failure).
    pub fn report_logs(&self) {
        for s in [&self.s1, &self.s2] {
            eprintln!("--- {} log, last lines:\n{}", s.name, s.log_tail());
        }
    }
}

/// The ports of one server, chosen before it starts so that its proxy can point at
/// its WAN port.
struct Ports {
    http: u16,
    server: u16,
    serf_lan: u16,
    serf_wan: u16,
}

impl Ports {
    fn pick() -> Result<Ports, String> {
        Ok(Ports {
            http: free_port()?,
            server: free_port()?,
            serf_lan: free_port()?,
            serf_wan: free_port()?,
        })
    }
}

/// Starts `name` as the only server of `dc`, advertising its WAN port on `wan_ip` (its
/// proxy) and joining `join_wan` if given, with `extra` config.
fn start_server(
    launch: &Launch<'_>,
    root: &Path,
    ca: &tls::Pem,
    (name, dc): (&'static str, &str),
    ports: &Ports,
    (wan_ip, join_wan): (IpAddr, Option<SocketAddr>),
    extra: Value,
) -> Result<Server, String> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    let leaf = tls::create_cert(ca, &CertRequest::new(CertKind::Server, dc))
        .map_err(|e| format!("a certificate for {name}: {e}"))?;
    let (ca_file, cert_file, key_file) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    );
    write(&ca_file, &ca.cert)?;
    write(&cert_file, &leaf.cert)?;
    write(&key_file, &leaf.key)?;
    let mut config = json!({
        "ca_file": ca_file, "cert_file": cert_file, "key_file": key_file,
        "verify_incoming": true, "verify_outgoing": true, "verify_server_hostname": true,
    });
    if let (Some(c), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    let config_file = dir.join("config.json");
    write(&config_file, &config.to_string())?;
    let log = dir.join("log");
    let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(launch.bin);
    command
        .arg("agent")
        .arg("-server")
        .arg("-bootstrap-expect=1")
        .arg(format!("-datacenter={dc}"))
        .arg(format!("-node={name}"))
        .arg(format!("-data-dir={}", dir.join("data").display()))
        .arg(format!("-config-file={}", config_file.display()))
        .arg(format!("-bind={LOOPBACK}"))
        .arg(format!("-client={LOOPBACK}"))
        .arg(format!("-advertise-wan={wan_ip}"))
        .arg(format!("-http-port={}", ports.http))
        .arg("-dns-port=-1")
        .arg(format!("-server-port={}", ports.server))
        .arg(format!("-serf-lan-port={}", ports.serf_lan))
        .arg(format!("-serf-wan-port={}", ports.serf_wan))
        .arg("-log-level=warn");
    if let Some(peer) = join_wan {
        command.arg(format!("-join-wan={peer}"));
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", launch.bin.display()))?;
    let server = Server {
        name,
        child,
        http: SocketAddr::new(LOOPBACK, ports.http),
        log,
    };
    if let Some(path) = launch.pid_file {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{}", server.child.id()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(server)
}

/// `GET path` on a new connection to `http`, within [`REQUEST_TIMEOUT`].
pub async fn get(http: SocketAddr, path: &str) -> Result<Reply, String> {
    let mut conn = Conn::open(http).await?;
    timeout(REQUEST_TIMEOUT, conn.call(Method::GET, path, Bytes::new()))
        .await
        .map_err(|_| format!("{path}: no answer"))?
}

/// Tries `step` until it succeeds or [`SETUP_TIMEOUT`] passes.
pub async fn poll(
    what: &str,
    mut step: impl AsyncFnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let last = match step().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() + POLL_INTERVAL >= deadline {
            return Err(format!(
                "{what}: not done within {SETUP_TIMEOUT:?} (last: {last})"
            ));
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// A port free for both UDP and TCP on the loopback right now (the server binds it a
/// moment later; another program could take it in between).
fn free_port() -> Result<u16, String> {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind(SocketAddr::new(LOOPBACK, 0))
            .map_err(|e| format!("a UDP port: {e}"))?;
        let port = udp.local_addr().map_err(|e| e.to_string())?.port();
        if std::net::TcpListener::bind(SocketAddr::new(LOOPBACK, port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no port free for UDP and TCP in 100 tries".into())
}
