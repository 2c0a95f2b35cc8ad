//! Hosts in network namespaces on one bridge, for process-level fault tests.
//!
//! ```text
//!   root namespace (the test)            hub namespace              host namespaces
//!   pc<pid><tag>  10.B.C.254 ──veth── uplink ┐                  ┌─ p1 ──veth── eth0 10.B.C.1  (s1)
//!                                            ├── br0 (bridge) ──┼─ p2 ──veth── eth0 10.B.C.2  (s2)
//!                                            ┘                  └─ p3 ──veth── eth0 10.B.C.3  (s3)
//! ```
//!
//! Every namespace is named `pc<pid>-<tag>-…`, so parallel runs and several nets in one
//! test never collide, and the /24 is chosen from the pid and the tag among those the
//! root namespace does not use. The bridge lives in a namespace of its own: no rule or
//! sysctl of the root namespace (a `FORWARD` policy, `bridge-nf-call-iptables`) touches
//! it, and the only link in the root namespace is one end of a veth pair whose other end
//! is in the hub, so deleting the hub deletes it too. The test reaches every host at its
//! address through that link.
//!
//! Two kinds of partition, both with iproute2 only (there is no netem, and iptables is
//! not promised):
//!
//! - [`Net::partition`] takes the host's bridge port down: the host reaches nothing and
//!   nothing reaches it, the test included;
//! - [`Net::isolate_from`] installs blackhole routes between the host and the hosts
//!   named (on both sides): the host is cut off from its peers, but the test (and any
//!   host not named, e.g. another datacenter's server) still talks to it, so clients
//!   keep sending it requests (the case where a deposed leader must not answer).
//!
//! [`Net::heal`] undoes both. `Drop` kills every process [`Net::spawn`] started (SIGKILL
//! to its process group) and deletes every namespace, also when the test panics.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// A handle on a process started by [`Net::spawn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId(usize);

/// Namespaces, links and processes of one test; removed on drop.
pub struct Net {
    prefix: String,
    subnet: [u8; 3],
    hosts: Vec<String>,
    uplink: String,
    logs: PathBuf,
    namespaces: Mutex<Vec<String>>,
    procs: Mutex<Vec<Option<Child>>>,
    /// Blackhole routes installed: (in the namespace of, towards).
    cuts: Mutex<BTreeSet<(usize, usize)>>,
}

/// Why the machine cannot run namespace tests, if it cannot.
pub fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned));
    if uid.as_deref() != Some("0") {
        return Some("network namespaces need root".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("`ip` (iproute2) is missing: {e}")),
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

/// A /24 in 10.0.0.0/8 that the root namespace has no address or route in.
fn free_subnet(seed: u64) -> [u8; 3] {
    let out = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let used = out(&["-4", "-o", "addr", "show"]) + &out(&["-4", "route", "show", "table", "all"]);
    for attempt in 0..1000u64 {
        let s = seed.wrapping_add(attempt.wrapping_mul(7919));
        let b = 64 + (s % 128) as u8;
        let c = 1 + ((s / 128) % 250) as u8;
        let net = format!("10.{b}.{c}.");
        if !used.contains(&net) {
            return [10, b, c];
        }
    }
    panic!("no free 10.x.y.0/24 for the test network");
}

impl Net {
    /// Creates one namespace per host on a shared bridge. `Err` says why this machine
    /// cannot (not root, no `ip netns`); any later failure panics (and cleans up).
    pub fn create(tag: &str, hosts: &[&str], logs: &Path) -> Result<Net, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        let pid = std::process::id();
        let tag_seed = tag
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
        let net = Net {
            prefix: format!("pc{pid}-{tag}"),
            subnet: free_subnet(u64::from(pid).wrapping_mul(131).wrapping_add(tag_seed)),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            uplink: format!("pc{pid}{tag}"),
            logs: logs.to_owned(),
            namespaces: Mutex::new(Vec::new()),
            procs: Mutex::new(Vec::new()),
            cuts: Mutex::new(BTreeSet::new()),
        };
        assert!(
            net.uplink.len() <= 15,
            "interface name {} too long",
            net.uplink
        );
        std::fs::create_dir_all(logs).unwrap();
        let hub = net.hub();
        if let Err(e) = net.add_namespace(&hub) {
            return Err(format!("cannot create a network namespace: {e}"));
        }
        must(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        must(&["-n", &hub, "link", "set", "br0", "up"]);
        must(&["-n", &hub, "link", "set", "lo", "up"]);
        for h in 0..hosts.len() {
            let ns = net.ns(h);
            net.add_namespace(&ns).unwrap();
            let port = format!("p{}", h + 1);
            must(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            must(&["-n", &hub, "link", "set", &port, "master", "br0"]);
            must(&["-n", &hub, "link", "set", &port, "up"]);
            let addr = format!("{}/24", net.ip(h));
            must(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            must(&["-n", &ns, "link", "set", "eth0", "up"]);
            must(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        must(&[
            "link",
            "add",
            &net.uplink,
            "type",
            "veth",
            "peer",
            "name",
            "uplink",
            "netns",
            &hub,
        ]);
        must(&["-n", &hub, "link", "set", "uplink", "master", "br0"]);
        must(&["-n", &hub, "link", "set", "uplink", "up"]);
        let addr = format!("{}/24", net.root_ip());
        must(&["addr", "add", &addr, "dev", &net.uplink]);
        must(&["link", "set", &net.uplink, "up"]);
        Ok(net)
    }

    fn add_namespace(&self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.namespaces.lock().unwrap().push(name.to_owned());
        Ok(())
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// The namespace of host `h`.
    pub fn ns(&self, h: usize) -> String {
        format!("{}-{}", self.prefix, self.hosts[h])
    }

    /// Host `h`'s address.
    pub fn ip(&self, h: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, u8::try_from(h + 1).unwrap())
    }

    /// The root namespace's address on the bridge (where the test's requests come from).
    pub fn root_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 254)
    }

    /// The host with this address.
    pub fn host_of(&self, addr: Ipv4Addr) -> Option<usize> {
        (0..self.hosts.len()).find(|h| self.ip(*h) == addr)
    }

    /// Host `h`'s name.
    pub fn name(&self, h: usize) -> &str {
        &self.hosts[h]
    }

    /// Cuts host `h` off from everything: its bridge port goes down.
    pub fn partition(&self, h: usize) {
        must(&[
            "-n",
            &self.hub(),
            "link",
            "set",
            &format!("p{}", h + 1),
            "down",
        ]);
    }

    /// Cuts host `h` off from `others` (both ways); the rest of the hosts and the test
    /// still reach it.
    pub fn isolate_from(&self, h: usize, others: &[usize]) {
        let mut cuts = self.cuts.lock().unwrap();
        for &other in others.iter().filter(|o| **o != h) {
            for (from, to) in [(h, other), (other, h)] {
                if cuts.insert((from, to)) {
                    let dst = format!("{}/32", self.ip(to));
                    must(&["-n", &self.ns(from), "route", "add", "blackhole", &dst]);
                }
            }
        }
    }

    /// Undoes [`Net::partition`] and [`Net::isolate_from`] of host `h`.
    pub fn heal(&self, h: usize) {
        must(&[
            "-n",
            &self.hub(),
            "link",
            "set",
            &format!("p{}", h + 1),
            "up",
        ]);
        let mut cuts = self.cuts.lock().unwrap();
        let mine: Vec<(usize, usize)> = cuts
            .iter()
            .copied()
            .filter(|(from, to)| *from == h || *to == h)
            .collect();
        for (from, to) in mine {
            let dst = format!("{}/32", self.ip(to));
            must(&["-n", &self.ns(from), "route", "del", "blackhole", &dst]);
            cuts.remove(&(from, to));
        }
    }

    /// Heals every host.
    pub fn heal_all(&self) {
        for h in 0..self.hosts.len() {
            self.heal(h);
        }
    }

    /// Runs the proconsul binary with `args` in host `h`'s namespace, in a process group
    /// of its own, with stdout and stderr appended to `<logs>/<log>.log`.
    pub fn spawn(&self, h: usize, log: &str, args: &[String]) -> ProcId {
        let path = self.logs.join(format!("{log}.log"));
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(file, "==== start: {}", args.join(" ")).unwrap();
        // `ip netns exec` enters the namespace and execs the binary: the child's pid is
        // the agent's.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(h), super::process::binary()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .unwrap();
        let mut procs = self.procs.lock().unwrap();
        procs.push(Some(child));
        ProcId(procs.len() - 1)
    }

    /// The path of a log written by [`Net::spawn`].
    pub fn log_path(&self, log: &str) -> PathBuf {
        self.logs.join(format!("{log}.log"))
    }

    /// SIGKILL to the process group, then reaps the process.
    pub fn kill(&self, id: ProcId) {
        let child = self.procs.lock().unwrap()[id.0].take();
        if let Some(child) = child {
            kill_group(child);
        }
    }

    /// Whether the process is still running (false once killed or exited).
    pub fn running(&self, id: ProcId) -> bool {
        let mut procs = self.procs.lock().unwrap();
        match &mut procs[id.0] {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

fn kill_group(mut child: Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Net {
    fn drop(&mut self) {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        for child in procs.into_iter().flatten() {
            kill_group(child);
        }
        let namespaces =
            std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|e| e.into_inner()));
        for ns in namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
        // Gone with its peer in the hub; deleting it here makes that synchronous.
        let _ = ip(&["link", "del", &self.uplink]);
    }
}
