//! Telemetry: the process's metrics recorder and the two ways `/v1/agent/metrics`
//! shows it.
//!
//! Library code records through the [`metrics`] facade under Consul's names without
//! the prefix (`raft.apply`, `dns.domain_query`); the recorder installed here adds
//! `metrics_prefix` (`consul`), applies `prefix_filter`, and feeds two sinks:
//!
//! - an in-memory one ([`inmem`]) for Consul's JSON, ten-second intervals; it also
//!   keeps timers and samples for `?format=prometheus`, as summaries with the 0.5, 0.9
//!   and 0.99 quantiles over ten to twenty seconds, sharded by thread so that the DNS
//!   threads timing every query do not contend;
//! - metrics-exporter-prometheus's recorder for the counters and gauges of
//!   `?format=prometheus` (atomics; the timers' summaries are appended to its text).
//!
//! Timers are recorded in milliseconds, as Consul's. The recorder is per process (as
//! Consul's): several agents embedded in one process share it, and the first agent's
//! telemetry settings apply. A series filtered out costs nothing where it is recorded
//! (its handle does nothing).
//!
//! Hot paths hold their handles ([`metrics::Counter`] and friends, registered once,
//! after [`install`]) instead of looking a name up on every event.

pub mod inmem;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use inmem::Inmem;

/// `telemetry` settings (Consul's keys).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// `prometheus_retention_time`: Prometheus output is served only when positive.
    pub prometheus_retention: Duration,
    /// `metrics_prefix` (`consul`).
    pub prefix: String,
    /// The host name inserted into gauge names (`consul.<host>.runtime.alloc_bytes`):
    /// only when `disable_hostname = false` is set explicitly.
    pub hostname: Option<String>,
    /// `filter_default`: whether a name no `prefix_filter` entry matches is kept.
    pub filter_default: bool,
    /// `prefix_filter`: `(prefix, keep)`, from `+prefix` and `-prefix` entries.
    pub prefix_filter: Vec<(String, bool)>,
}

impl Default for TelemetryConfig {
    fn default() -> TelemetryConfig {
        TelemetryConfig {
            prometheus_retention: Duration::ZERO,
            prefix: "consul".into(),
            hostname: None,
            filter_default: true,
            prefix_filter: Vec::new(),
        }
    }
}

impl TelemetryConfig {
    /// Whether `name` (with its prefix) is recorded: the longest matching
    /// `prefix_filter` entry decides, else `filter_default`.
    pub fn allows(&self, name: &str) -> bool {
        self.prefix_filter
            .iter()
            .filter(|(p, _)| name.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map_or(self.filter_default, |(_, keep)| *keep)
    }

    /// `name` as it is exposed: the prefix added (and, for gauges, the host name when
    /// asked for), except for the process series (`process_*`), which keep theirs.
    fn full_name(&self, name: &str, gauge: bool) -> String {
        if name.starts_with("process_") {
            return name.to_string();
        }
        let mut full = String::with_capacity(self.prefix.len() + name.len() + 1);
        if !self.prefix.is_empty() {
            full.push_str(&self.prefix);
            full.push('.');
        }
        if gauge && let Some(host) = &self.hostname {
            full.push_str(host);
            full.push('.');
        }
        full.push_str(name);
        full
    }
}

/// The process's telemetry: both sinks and the settings they were built with.
#[derive(Debug)]
pub struct Telemetry {
    config: TelemetryConfig,
    inmem: Arc<Inmem>,
    prometheus: PrometheusHandle,
}

/// What Prometheus's answer is refused with when `prometheus_retention_time` is not
/// positive (Consul's 415 text).
pub const PROMETHEUS_DISABLED: &str =
    "Prometheus is not enabled since its retention time is not positive";

static INSTALLED: OnceLock<Arc<Telemetry>> = OnceLock::new();

/// Installs the process's recorder with `config` (the first call wins; later calls get
/// the installed one back, whatever their settings).
pub fn install(config: &TelemetryConfig) -> Arc<Telemetry> {
    INSTALLED
        .get_or_init(|| {
            let prometheus = prometheus_recorder();
            let handle = prometheus.handle();
            let inmem = Arc::new(Inmem::new());
            let recorder = Fanout {
                config: config.clone(),
                prometheus,
                inmem: inmem.clone(),
            };
            // An embedding program may have installed its own recorder first; then
            // both sinks stay empty.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "another metrics recorder is installed in this process; /v1/agent/metrics stays empty"
                );
            }
            let telemetry = Arc::new(Telemetry {
                config: config.clone(),
                inmem,
                prometheus: handle,
            });
            describe();
            telemetry
        })
        .clone()
}

/// The exporter, for counters and gauges only (timers are the in-memory sink's).
fn prometheus_recorder() -> PrometheusRecorder {
    PrometheusBuilder::new().build_recorder()
}

impl Telemetry {
    /// The settings the recorder was installed with.
    pub fn config(&self) -> &TelemetryConfig {
        &self.config
    }

    /// Consul's JSON (`GET /v1/agent/metrics`).
    pub fn summary(&self) -> inmem::Summary {
        self.inmem.summary()
    }

    /// Prometheus's text format (`?format=prometheus`).
    pub fn prometheus(&self) -> String {
        let mut text = self.prometheus.render();
        self.inmem.render_prometheus(&mut text);
        text
    }

    /// Moves the recording clock on; called every few seconds.
    pub fn upkeep(&self) {
        inmem::tick();
        self.prometheus.run_upkeep();
    }
}

/// The recorder: names completed and filtered, then recorded into both sinks.
struct Fanout {
    config: TelemetryConfig,
    prometheus: PrometheusRecorder,
    inmem: Arc<Inmem>,
}

impl Fanout {
    /// The key as exposed, or `None` when filtered out.
    fn key(&self, key: &Key, gauge: bool) -> Option<Key> {
        let name = self.config.full_name(key.name(), gauge);
        if !self.config.allows(&name) {
            return None;
        }
        let labels: Vec<metrics::Label> = key.labels().cloned().collect();
        Some(Key::from_parts(name, labels))
    }

    fn key_name(&self, name: &KeyName, gauge: bool) -> KeyName {
        KeyName::from(self.config.full_name(name.as_str(), gauge))
    }
}

/// One event, recorded in both sinks.
struct Both<P, I> {
    prometheus: P,
    inmem: Option<Arc<I>>,
}

impl metrics::CounterFn for Both<Counter, inmem::Series> {
    fn increment(&self, value: u64) {
        self.prometheus.increment(value);
        if let Some(s) = &self.inmem {
            metrics::CounterFn::increment(&**s, value);
        }
    }

    fn absolute(&self, value: u64) {
        self.prometheus.absolute(value);
    }
}

impl metrics::GaugeFn for Both<Gauge, inmem::Series> {
    fn increment(&self, value: f64) {
        self.prometheus.increment(value);
        if let Some(s) = &self.inmem {
            metrics::GaugeFn::increment(&**s, value);
        }
    }

    fn decrement(&self, value: f64) {
        self.prometheus.decrement(value);
        if let Some(s) = &self.inmem {
            metrics::GaugeFn::decrement(&**s, value);
        }
    }

    fn set(&self, value: f64) {
        self.prometheus.set(value);
        if let Some(s) = &self.inmem {
            metrics::GaugeFn::set(&**s, value);
        }
    }
}

impl metrics::Recorder for Fanout {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        let name = self.key_name(&key, false);
        self.prometheus.describe_counter(name, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        let name = self.key_name(&key, true);
        self.prometheus.describe_gauge(name, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        let name = self.key_name(&key, false);
        self.inmem.describe(name.as_str(), &description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let Some(key) = self.key(key, false) else {
            return Counter::noop();
        };
        Counter::from_arc(Arc::new(Both {
            prometheus: self.prometheus.register_counter(&key, metadata),
            inmem: self.inmem.counter(&key),
        }))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let Some(key) = self.key(key, true) else {
            return Gauge::noop();
        };
        Gauge::from_arc(Arc::new(Both {
            prometheus: self.prometheus.register_gauge(&key, metadata),
            inmem: self.inmem.gauge(&key),
        }))
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        let Some(key) = self.key(key, false) else {
            return Histogram::noop();
        };
        match self.inmem.sample(&key) {
            Some(series) => Histogram::from_arc(series),
            None => Histogram::noop(),
        }
    }
}

/// The known series, declared with their help text so that Prometheus lists them
/// before their first event (Consul's pre-declared definitions do the same).
const KNOWN: &[(&str, Kind, &str)] = &[
    (
        "raft.apply",
        Kind::Counter,
        "Raft entries applied by the leader.",
    ),
    (
        "raft.commitTime",
        Kind::Timer,
        "Time from a write reaching the leader to its commit, in milliseconds.",
    ),
    (
        "raft.leader.lastContact",
        Kind::Timer,
        "Time since the leader last heard from a quorum, sampled every 2 s, in milliseconds.",
    ),
    (
        "raft.state.leader",
        Kind::Counter,
        "Elections this server won.",
    ),
    (
        "raft.state.candidate",
        Kind::Counter,
        "Elections this server started.",
    ),
    (
        "raft.fsm.apply",
        Kind::Timer,
        "Time to apply one Raft entry to the catalog, in milliseconds.",
    ),
    (
        "raft.rpc.appendEntries",
        Kind::Timer,
        "Time a follower took to take in one AppendEntries, in milliseconds.",
    ),
    (
        "rpc.consistentRead",
        Kind::Timer,
        "Time to confirm leadership for a consistent read, in milliseconds.",
    ),
    (
        "raft.applied_index",
        Kind::Gauge,
        "The last index applied to the state machine.",
    ),
    (
        "raft.last_index",
        Kind::Gauge,
        "The last index in the Raft log.",
    ),
    (
        "server.isLeader",
        Kind::Gauge,
        "1 while this server is the leader.",
    ),
    (
        "autopilot.healthy",
        Kind::Gauge,
        "1 while every server is healthy (leader only).",
    ),
    (
        "autopilot.failure_tolerance",
        Kind::Gauge,
        "Servers that may fail without losing quorum (leader only).",
    ),
    (
        "serf.member.join",
        Kind::Counter,
        "Members that joined a pool.",
    ),
    (
        "serf.member.left",
        Kind::Counter,
        "Members that left a pool.",
    ),
    ("serf.member.failed", Kind::Counter, "Members found failed."),
    (
        "serf.member.flap",
        Kind::Counter,
        "Members that came back soon after failing.",
    ),
    (
        "memberlist.gossip",
        Kind::Timer,
        "Time of one timer-driven gossip round (probes, gossip, exchanges due), in milliseconds.",
    ),
    (
        "memberlist.health.score",
        Kind::Gauge,
        "Lifeguard's local health score (0 is healthy).",
    ),
    (
        "memberlist.msg.suspect",
        Kind::Counter,
        "Suspicions raised or received.",
    ),
    (
        "memberlist.msg.dead",
        Kind::Counter,
        "Death declarations raised or received.",
    ),
    (
        "rpc.request",
        Kind::Counter,
        "Requests served on the server port.",
    ),
    (
        "rpc.query",
        Kind::Counter,
        "Reads served on the server port.",
    ),
    (
        "rpc.cross-dc",
        Kind::Counter,
        "Requests sent to another datacenter.",
    ),
    (
        "client.rpc",
        Kind::Counter,
        "Requests this agent sent to a server of its datacenter.",
    ),
    (
        "client.rpc.failed",
        Kind::Counter,
        "Requests to a server of this datacenter that failed.",
    ),
    (
        "process_cpu_seconds_total",
        Kind::Counter,
        "User and system CPU time of the process, in seconds.",
    ),
    (
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory of the process, in bytes.",
    ),
    (
        "process_virtual_memory_bytes",
        Kind::Gauge,
        "Virtual memory of the process, in bytes.",
    ),
    (
        "process_open_fds",
        Kind::Gauge,
        "Open file descriptors of the process.",
    ),
    (
        "dns.domain_query",
        Kind::Timer,
        "Time to answer a DNS query, in milliseconds.",
    ),
    (
        "dns.ptr_query",
        Kind::Timer,
        "Time to answer a reverse DNS query, in milliseconds.",
    ),
    (
        "dns.stale_queries",
        Kind::Counter,
        "DNS answers a server gave from a copy that had not heard from a leader for over 5 s.",
    ),
    (
        "catalog.register",
        Kind::Timer,
        "Time of a catalog registration, in milliseconds.",
    ),
    (
        "catalog.deregister",
        Kind::Timer,
        "Time of a catalog deregistration, in milliseconds.",
    ),
    (
        "kvs.apply",
        Kind::Timer,
        "Time of a KV write, in milliseconds.",
    ),
    (
        "txn.read",
        Kind::Timer,
        "Time of a read-only transaction, in milliseconds.",
    ),
    (
        "txn.apply",
        Kind::Timer,
        "Time of a transaction that writes, in milliseconds.",
    ),
    (
        "prepared-query.apply",
        Kind::Timer,
        "Time of a prepared query write, in milliseconds.",
    ),
    (
        "session.renew",
        Kind::Timer,
        "Time of a session renewal, in milliseconds.",
    ),
    (
        "session_ttl.active",
        Kind::Gauge,
        "Session TTL timers the leader runs.",
    ),
    (
        "leader.replication.acl-policies.status",
        Kind::Gauge,
        "1 while the last round of ACL policy replication succeeded (a secondary's leader).",
    ),
    (
        "leader.replication.acl-policies.index",
        Kind::Gauge,
        "The primary's policy index this datacenter reached.",
    ),
    (
        "leader.replication.acl-roles.status",
        Kind::Gauge,
        "1 while the last round of ACL role replication succeeded (a secondary's leader).",
    ),
    (
        "leader.replication.acl-roles.index",
        Kind::Gauge,
        "The primary's role index this datacenter reached.",
    ),
    (
        "leader.replication.acl-tokens.status",
        Kind::Gauge,
        "1 while the last round of ACL token replication succeeded (a secondary's leader).",
    ),
    (
        "leader.replication.acl-tokens.index",
        Kind::Gauge,
        "The primary's token index this datacenter reached.",
    ),
    (
        "acl.apply",
        Kind::Timer,
        "Time of an ACL table write, in milliseconds.",
    ),
    (
        "session.apply",
        Kind::Timer,
        "Time of a session create or destroy, in milliseconds.",
    ),
    (
        "acl.ResolveToken",
        Kind::Timer,
        "Time to resolve a token, in milliseconds.",
    ),
    (
        "acl.token.cache_hit",
        Kind::Counter,
        "Tokens resolved from the agent's cache.",
    ),
    (
        "acl.token.cache_miss",
        Kind::Counter,
        "Tokens the agent had to ask a server for.",
    ),
    (
        "api.http",
        Kind::Timer,
        "Time to answer an HTTP API request, in milliseconds.",
    ),
    (
        "runtime.alloc_bytes",
        Kind::Gauge,
        "Anonymous resident memory (heap) of the process, in bytes.",
    ),
    (
        "runtime.sys_bytes",
        Kind::Gauge,
        "Resident memory of the process, in bytes.",
    ),
    (
        "runtime.num_goroutines",
        Kind::Gauge,
        "Tasks alive in the agent's runtime.",
    ),
    ("state.nodes", Kind::Gauge, "Nodes in the catalog."),
    (
        "state.services",
        Kind::Gauge,
        "Service instances in the catalog.",
    ),
    ("state.kv_entries", Kind::Gauge, "Keys in the KV store."),
    (
        "members.clients",
        Kind::Gauge,
        "Client agents in the LAN pool.",
    ),
    ("members.servers", Kind::Gauge, "Servers in the LAN pool."),
    (
        "gateway.requests",
        Kind::Counter,
        "Requests sent to another datacenter, by datacenter.",
    ),
    (
        "gateway.errors",
        Kind::Counter,
        "Requests to another datacenter that failed, by datacenter.",
    ),
    (
        "gateway.latency",
        Kind::Timer,
        "Time of a request to another datacenter, in milliseconds.",
    ),
    (
        "gateway.failovers",
        Kind::Counter,
        "Requests to another datacenter retried on another of its servers.",
    ),
    (
        "gateway.cache_hit",
        Kind::Counter,
        "Reads of another datacenter answered from the cache.",
    ),
    (
        "gateway.cache_miss",
        Kind::Counter,
        "Cacheable reads of another datacenter that had to be fetched.",
    ),
    (
        "gateway.coalesced",
        Kind::Counter,
        "Reads that shared a request already in flight.",
    ),
    (
        "gateway.blocking_shared",
        Kind::Counter,
        "A client agent's blocking reads that joined an identical one held at a server.",
    ),
    (
        "gateway.rtt",
        Kind::Gauge,
        "Estimated round-trip time to a datacenter's nearest server, in milliseconds.",
    ),
    (
        "gateway.reachable",
        Kind::Gauge,
        "1 while a datacenter has a server this agent can reach.",
    ),
    (
        "wan.quic_connections",
        Kind::Gauge,
        "QUIC connections this server holds to other servers.",
    ),
    (
        "wan.members",
        Kind::Gauge,
        "WAN pool members, by datacenter and status.",
    ),
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Timer,
}

/// Prefixes of the known series that always carry labels (a network, a datacenter, a
/// node, a route): those appear with their first labelled event only.
const LABELLED: &[&str] = &[
    "serf.",
    "memberlist.",
    "rpc.cross-dc",
    "dns.domain_query",
    "dns.ptr_query",
    "api.http",
    "gateway.",
    "wan.",
];

/// Declares [`KNOWN`], and registers the unlabelled ones so that they are listed
/// before their first event.
fn describe() {
    metrics::with_recorder(|r| {
        let meta = Metadata::new(module_path!(), metrics::Level::INFO, None);
        for (name, kind, help) in KNOWN {
            let key_name = KeyName::from_const_str(name);
            let help = SharedString::const_str(help);
            let key = Key::from_static_name(name);
            let register = !LABELLED.iter().any(|p| name.starts_with(p));
            match kind {
                Kind::Counter => {
                    r.describe_counter(key_name, None, help);
                    if register {
                        let _ = r.register_counter(&key, &meta);
                    }
                }
                Kind::Gauge => {
                    r.describe_gauge(key_name, None, help);
                }
                Kind::Timer => {
                    r.describe_histogram(key_name, Some(Unit::Milliseconds), help);
                    if register {
                        let _ = r.register_histogram(&key, &meta);
                    }
                }
            }
        }
    });
}

/// Milliseconds since `start`, as timers record them.
pub fn millis_since(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_filters_pick_the_longest_match() {
        let config = TelemetryConfig {
            prefix_filter: vec![
                ("consul.raft".into(), true),
                ("consul.http".into(), false),
                ("consul".into(), false),
            ],
            ..TelemetryConfig::default()
        };
        assert!(config.allows("consul.raft.apply"));
        assert!(!config.allows("consul.http.GET"));
        assert!(!config.allows("consul.dns.domain_query"));
        assert!(config.allows("process_resident_memory_bytes"));
        let open = TelemetryConfig::default();
        assert!(open.allows("anything"));
    }

    #[test]
    fn names_get_the_prefix_and_gauges_the_host_when_asked() {
        let mut config = TelemetryConfig::default();
        assert_eq!(config.full_name("raft.apply", false), "consul.raft.apply");
        assert_eq!(
            config.full_name("runtime.alloc_bytes", true),
            "consul.runtime.alloc_bytes"
        );
        config.hostname = Some("web-1".into());
        assert_eq!(
            config.full_name("runtime.alloc_bytes", true),
            "consul.web-1.runtime.alloc_bytes"
        );
        assert_eq!(config.full_name("raft.apply", false), "consul.raft.apply");
        assert_eq!(
            config.full_name("process_open_fds", true),
            "process_open_fds"
        );
        config.prefix = String::new();
        config.hostname = None;
        assert_eq!(config.full_name("raft.apply", false), "raft.apply");
    }

    #[test]
    fn both_sinks_see_an_event_and_a_filtered_one_is_a_no_op() {
        let inmem = Arc::new(Inmem::new());
        let fanout = Fanout {
            config: TelemetryConfig {
                prefix_filter: vec![("consul.http".into(), false)],
                ..TelemetryConfig::default()
            },
            prometheus: prometheus_recorder(),
            inmem: inmem.clone(),
        };
        let handle = fanout.prometheus.handle();
        let meta = Metadata::new("t", metrics::Level::INFO, None);
        use metrics::Recorder;
        fanout
            .register_counter(
                &Key::from_parts(
                    "rpc.cross-dc",
                    vec![metrics::Label::new("datacenter", "dc2")],
                ),
                &meta,
            )
            .increment(2);
        fanout
            .register_counter(&Key::from_name("http.GET"), &meta)
            .increment(1);
        fanout
            .register_histogram(&Key::from_name("dns.domain_query"), &meta)
            .record(0.5);
        let mut text = handle.render();
        inmem.render_prometheus(&mut text);
        assert!(
            text.contains("consul_rpc_cross_dc{datacenter=\"dc2\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("consul_dns_domain_query{quantile=\"0.5\"}"),
            "{text}"
        );
        assert!(!text.contains("http_GET"), "{text}");
        let summary = inmem.summary();
        let names: Vec<&str> = summary.counters.iter().map(|c| c.name.as_str()).collect();
        assert!(
            names.is_empty() || names == ["consul.rpc.cross-dc"],
            "{names:?}"
        );
    }
}
