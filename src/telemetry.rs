//! The agent's gauges: sampled every [`SAMPLE_EVERY`] from what the agent already
//! knows (Raft, the catalog's sizes, the pools, the federation, the process), as
//! Consul samples its runtime and state gauges on a timer. Event counters and timers
//! are recorded where the events happen.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use api::telemetry::Telemetry;
use gateway::Gateway;
use gossip::MemberStatus;
use lan::Lan;
use tokio_util::sync::CancellationToken;

/// Time between two samples.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Samples the gauges until `stop`.
pub(crate) async fn sample(
    telemetry: Arc<Telemetry>,
    lan: Lan,
    gateway: Gateway,
    stop: CancellationToken,
) {
    let mut sampler = Sampler::default();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        sampler.process();
        sampler.raft(&lan).await;
        sampler.members(&lan);
        if let Ok(federation) = gateway.federation() {
            sampler.federation(federation, lan.datacenter().as_str());
        }
        telemetry.upkeep();
    }
}

/// What the previous sample saw, where a counter moves on a change.
#[derive(Default)]
struct Sampler {
    raft_state: String,
    cpu_ticks: u64,
    /// Datacenters given a series, so that one that left the pool reads 0.
    datacenters: HashSet<String>,
}

impl Sampler {
    fn process(&mut self) {
        if let Some(status) = read_proc("status") {
            let kib = |field: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|n| n.parse::<f64>().ok())
                    .map(|n| n * 1024.0)
            };
            if let Some(rss) = kib("VmRSS:") {
                metrics::gauge!("runtime.sys_bytes").set(rss);
                metrics::gauge!("process_resident_memory_bytes").set(rss);
            }
            if let Some(anon) = kib("RssAnon:") {
                metrics::gauge!("runtime.alloc_bytes").set(anon);
            }
            if let Some(size) = kib("VmSize:") {
                metrics::gauge!("process_virtual_memory_bytes").set(size);
            }
        }
        if let Some(stat) = read_proc("stat")
            && let Some(ticks) = cpu_ticks(&stat)
        {
            // The kernel's clock tick is 100 Hz on every Linux this runs on.
            if ticks > self.cpu_ticks {
                metrics::counter!("process_cpu_seconds_total").absolute(ticks / 100);
                self.cpu_ticks = ticks;
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            metrics::gauge!("process_open_fds").set(fds.count() as f64);
        }
        let runtime = tokio::runtime::Handle::current().metrics();
        metrics::gauge!("runtime.num_goroutines").set(runtime.num_alive_tasks() as f64);
    }

    async fn raft(&mut self, lan: &Lan) {
        if !lan.is_server() {
            return;
        }
        lan.refresh_stale();
        let leader = lan.is_leader();
        metrics::gauge!("server.isLeader").set(if leader { 1.0 } else { 0.0 });
        if let Some(last) = lan.leader_last_contact() {
            metrics::histogram!("raft.leader.lastContact").record(last.as_secs_f64() * 1000.0);
        }
        if let Some((nodes, services, keys)) = lan.catalog_sizes() {
            metrics::gauge!("state.nodes").set(nodes as f64);
            metrics::gauge!("state.services").set(services as f64);
            metrics::gauge!("state.kv_entries").set(keys as f64);
        }
        // A server's status is its own: no request leaves the process.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let Ok(status) = lan.raft_status(deadline).await else {
            return;
        };
        metrics::gauge!("raft.applied_index").set(status.applied_index as f64);
        metrics::gauge!("raft.last_index").set(status.last_log_index as f64);
        if status.state != self.raft_state {
            match status.state.as_str() {
                "Leader" => metrics::counter!("raft.state.leader").increment(1),
                "Candidate" => metrics::counter!("raft.state.candidate").increment(1),
                _ => {}
            }
            self.raft_state = status.state;
        }
    }

    fn members(&mut self, lan: &Lan) {
        let dc = lan.datacenter().as_str();
        let (mut servers, mut clients) = (0u32, 0u32);
        for m in lan.members().iter() {
            if m.status != MemberStatus::Alive || !m.in_datacenter(dc) {
                continue;
            }
            if m.is_server() {
                servers += 1;
            } else {
                clients += 1;
            }
        }
        metrics::gauge!("members.servers").set(f64::from(servers));
        metrics::gauge!("members.clients").set(f64::from(clients));
    }

    fn federation(&mut self, federation: &wan::Federation, own: &str) {
        metrics::gauge!("wan.quic_connections").set(federation.endpoint().connections() as f64);
        let health = federation.datacenter_health();
        let seen: Vec<String> = health.iter().map(|h| h.datacenter.clone()).collect();
        for h in &health {
            let dc = h.datacenter.clone();
            for (status, count) in [
                ("alive", h.alive),
                ("leaving", h.leaving),
                ("left", h.left),
                ("failed", h.failed),
            ] {
                metrics::gauge!("wan.members", "datacenter" => dc.clone(), "status" => status)
                    .set(count as f64);
            }
            if dc == own {
                continue;
            }
            metrics::gauge!("gateway.reachable", "datacenter" => dc.clone()).set(if h.alive > 0 {
                1.0
            } else {
                0.0
            });
            if let Some(rtt) = h.rtt {
                metrics::gauge!("gateway.rtt", "datacenter" => dc.clone())
                    .set(rtt.as_secs_f64() * 1000.0);
            }
            self.datacenters.insert(dc);
        }
        // A datacenter gone from the pool is no longer reachable.
        for dc in &self.datacenters {
            if !seen.contains(dc) {
                metrics::gauge!("gateway.reachable", "datacenter" => dc.clone()).set(0.0);
            }
        }
    }
}

/// `/proc/self/<file>`, when readable.
fn read_proc(file: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/{file}")).ok()
}

/// User plus system CPU time in clock ticks from `/proc/self/stat`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces: fields are counted after its closing ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let stat = "4242 (proconsul (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 75 0 0 20 0 9 0 100 1000000 2000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
    }
}
