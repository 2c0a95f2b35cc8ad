//! The configuration as the user wrote it: Consul's JSON keys, every field optional,
//! unknown keys rejected. One `RawConfig` per source (a file, or the command line);
//! `merge` layers them in Consul's order.

// The fields are Consul's own config keys under their own names; Consul's documentation
// describes each, and the checked meaning lives on `AgentConfig`.
#![allow(missing_docs)]

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// `ports`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawPorts {
    pub dns: Option<i64>,
    pub http: Option<i64>,
    pub https: Option<i64>,
    pub grpc: Option<i64>,
    pub grpc_tls: Option<i64>,
    pub serf_lan: Option<i64>,
    pub serf_wan: Option<i64>,
    pub server: Option<i64>,
}

/// `dns_config.soa`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSoa {
    pub refresh: Option<u64>,
    pub retry: Option<u64>,
    pub expire: Option<u64>,
    pub min_ttl: Option<u64>,
}

/// `limits`: Consul's `http_max_conns_per_client` and `rpc_max_conns_per_client`, and
/// proconsul's own bounds.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub http_max_conns_per_client: Option<u64>,
    pub rpc_max_conns_per_client: Option<u64>,
    pub http_max_connections: Option<u64>,
    pub http_max_header_bytes: Option<u64>,
    pub http_max_body_bytes: Option<u64>,
    pub http_header_timeout: Option<String>,
    pub http_body_timeout: Option<String>,
    pub http_write_timeout: Option<String>,
    pub http_max_blocking_queries: Option<u64>,
    pub http_max_blocking_queries_per_client: Option<u64>,
    pub dns_udp_max_response_bytes: Option<u64>,
    pub dns_rate_per_source: Option<u64>,
    pub kv_max_value_size: Option<u64>,
}

/// `dns_config.failover` (not a Consul key): where plain service lookups go when this
/// datacenter has no healthy instance.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawFailover {
    pub nearest_n: Option<u64>,
    pub datacenters: Option<Vec<String>>,
}

/// `dns_config`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawDnsConfig {
    pub allow_stale: Option<bool>,
    pub max_stale: Option<String>,
    pub node_ttl: Option<String>,
    pub service_ttl: Option<BTreeMap<String, String>>,
    pub enable_truncate: Option<bool>,
    pub only_passing: Option<bool>,
    pub udp_answer_limit: Option<u64>,
    pub a_record_limit: Option<u64>,
    pub enable_additional_node_meta_txt: Option<bool>,
    pub recursor_strategy: Option<String>,
    pub recursor_timeout: Option<String>,
    pub disable_compression: Option<bool>,
    pub soa: Option<RawSoa>,
    pub use_cache: Option<bool>,
    pub cache_max_age: Option<String>,
    pub failover: Option<RawFailover>,
}

/// A later source's value replaces an earlier one's (Consul's rule for scalars).
fn scalar<T>(into: &mut Option<T>, from: Option<T>) {
    if from.is_some() {
        *into = from;
    }
}

/// One block of `tls` (`defaults`, `internal_rpc`, `https`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTlsBlock {
    pub ca_file: Option<String>,
    pub ca_path: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub tls_min_version: Option<String>,
    pub verify_incoming: Option<bool>,
    pub verify_outgoing: Option<bool>,
    pub verify_server_hostname: Option<bool>,
}

impl RawTlsBlock {
    /// Layers `later` over `self`, key by key.
    pub fn merge(&mut self, later: RawTlsBlock) {
        let l = later;
        scalar(&mut self.ca_file, l.ca_file);
        scalar(&mut self.ca_path, l.ca_path);
        scalar(&mut self.cert_file, l.cert_file);
        scalar(&mut self.key_file, l.key_file);
        scalar(&mut self.tls_min_version, l.tls_min_version);
        scalar(&mut self.verify_incoming, l.verify_incoming);
        scalar(&mut self.verify_outgoing, l.verify_outgoing);
        scalar(&mut self.verify_server_hostname, l.verify_server_hostname);
    }
}

/// `tls` (Consul 1.12+).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub defaults: Option<RawTlsBlock>,
    pub internal_rpc: Option<RawTlsBlock>,
    pub https: Option<RawTlsBlock>,
}

/// `addresses`: where each client interface listens, instead of `client_addr`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAddresses {
    pub dns: Option<String>,
    pub http: Option<String>,
    pub https: Option<String>,
    pub grpc: Option<String>,
}

/// `kv_replication` (proconsul's own block, what consul-replicate does for Consul): copy
/// another datacenter's keys under some prefixes.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawKvReplication {
    pub source_datacenter: Option<String>,
    pub prefixes: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
}

/// `autopilot` (Consul's keys; the Enterprise ones are read and have no effect).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAutopilot {
    pub cleanup_dead_servers: Option<bool>,
    pub last_contact_threshold: Option<String>,
    pub max_trailing_logs: Option<u64>,
    pub min_quorum: Option<u32>,
    pub server_stabilization_time: Option<String>,
    pub redundancy_zone_tag: Option<String>,
    pub disable_upgrade_migration: Option<bool>,
    pub upgrade_version_tag: Option<String>,
}

/// `telemetry` (Consul's metrics settings).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub prometheus_retention_time: Option<String>,
    pub metrics_prefix: Option<String>,
    pub disable_hostname: Option<bool>,
    pub filter_default: Option<bool>,
    pub prefix_filter: Option<Vec<String>>,
    #[serde(rename = "disable_compat_1.9")]
    pub disable_compat_1_9: Option<bool>,
    pub statsd_address: Option<String>,
    pub statsite_address: Option<String>,
    pub dogstatsd_addr: Option<String>,
    pub circonus_api_token: Option<String>,
    pub circonus_submission_url: Option<String>,
}

/// `ui_config` (the web UI).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawUiConfig {
    pub enabled: Option<bool>,
    pub content_path: Option<String>,
    pub dir: Option<String>,
}

impl RawUiConfig {
    fn merge(&mut self, later: RawUiConfig) {
        scalar(&mut self.enabled, later.enabled);
        scalar(&mut self.content_path, later.content_path);
        scalar(&mut self.dir, later.dir);
    }
}

/// `acl` (Consul's ACL settings).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAcl {
    pub enabled: Option<bool>,
    pub default_policy: Option<String>,
    pub down_policy: Option<String>,
    pub enable_key_list_policy: Option<bool>,
    pub enable_token_persistence: Option<bool>,
    pub enable_token_replication: Option<bool>,
    pub token_ttl: Option<String>,
    pub policy_ttl: Option<String>,
    pub role_ttl: Option<String>,
    /// proconsul's key: the shortest `ExpirationTTL` a token may be given (Consul: 1m, fixed).
    pub token_min_expiration_ttl: Option<String>,
    /// proconsul's key: the longest `ExpirationTTL` a token may be given (Consul: 24h, fixed).
    pub token_max_expiration_ttl: Option<String>,
    pub tokens: Option<RawAclTokens>,
}

/// `acl.tokens`, with the names Consul had before 1.11 (`master`, `agent_master`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAclTokens {
    pub initial_management: Option<String>,
    pub master: Option<String>,
    pub agent: Option<String>,
    pub agent_recovery: Option<String>,
    pub agent_master: Option<String>,
    pub default: Option<String>,
    pub replication: Option<String>,
    pub dns: Option<String>,
    pub config_file_service_registration: Option<String>,
}

/// One configuration source.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub datacenter: Option<String>,
    pub primary_datacenter: Option<String>,
    pub node_name: Option<String>,
    pub node_id: Option<String>,
    pub node_meta: Option<BTreeMap<String, String>>,
    pub server: Option<bool>,
    pub bootstrap: Option<bool>,
    pub bootstrap_expect: Option<u32>,
    pub bind_addr: Option<String>,
    pub advertise_addr: Option<String>,
    pub advertise_addr_wan: Option<String>,
    pub client_addr: Option<String>,
    pub addresses: Option<RawAddresses>,
    pub data_dir: Option<String>,
    pub domain: Option<String>,
    pub log_level: Option<String>,
    pub log_json: Option<bool>,
    pub log_file: Option<String>,
    pub log_rotate_bytes: Option<u64>,
    pub log_rotate_duration: Option<String>,
    pub log_rotate_max_files: Option<i64>,
    pub ports: Option<RawPorts>,
    pub recursors: Option<Vec<String>>,
    pub dns_config: Option<RawDnsConfig>,
    pub limits: Option<RawLimits>,
    pub enable_script_checks: Option<bool>,
    pub enable_local_script_checks: Option<bool>,
    pub leave_on_terminate: Option<bool>,
    pub skip_leave_on_interrupt: Option<bool>,
    pub disable_update_check: Option<bool>,
    /// Service definitions are decoded by `api::definition`, which names bad fields.
    pub service: Option<Value>,
    pub services: Option<Vec<Value>>,
    pub check: Option<Value>,
    pub checks: Option<Vec<Value>>,
    /// Watches are decoded by `watch::agent::WatchSpec`, which names bad parameters.
    pub watches: Option<Vec<Value>>,
    pub encrypt: Option<String>,
    pub encrypt_verify_incoming: Option<bool>,
    pub encrypt_verify_outgoing: Option<bool>,
    pub disable_keyring_file: Option<bool>,
    pub retry_join: Option<Vec<String>>,
    pub start_join: Option<Vec<String>>,
    pub retry_interval: Option<String>,
    pub retry_max: Option<u32>,
    pub retry_join_wan: Option<Vec<String>>,
    pub start_join_wan: Option<Vec<String>>,
    pub retry_interval_wan: Option<String>,
    pub retry_max_wan: Option<u32>,
    pub reconnect_timeout: Option<String>,
    pub raft_snapshot_threshold: Option<u64>,
    pub tls: Option<RawTls>,
    pub ca_file: Option<String>,
    pub ca_path: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub tls_min_version: Option<String>,
    pub verify_incoming: Option<bool>,
    pub verify_incoming_rpc: Option<bool>,
    pub verify_incoming_https: Option<bool>,
    pub verify_outgoing: Option<bool>,
    pub verify_server_hostname: Option<bool>,
    pub kv_replication: Option<RawKvReplication>,
    pub acl: Option<RawAcl>,
    pub telemetry: Option<RawTelemetry>,
    pub autopilot: Option<RawAutopilot>,
    pub ui_config: Option<RawUiConfig>,
    /// `ui`: Consul's spelling of `ui_config.enabled` before 1.9.
    pub ui: Option<bool>,
    /// `ui_content_path`: the same for `ui_config.content_path`.
    pub ui_content_path: Option<String>,

    // Keys of Consul features this version does not have. They are accepted by the
    // parser only so that validation can say so plainly instead of "unknown key".
    pub connect: Option<Value>,
    pub alt_domain: Option<Value>,
    pub translate_wan_addrs: Option<Value>,
}

/// The keys above that name features proconsul lacks, with what to say about them.
pub const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "connect",
        "service mesh (Connect) is not supported by proconsul",
    ),
    ("alt_domain", "alt_domain is not supported by proconsul yet"),
    (
        "translate_wan_addrs",
        "WAN address translation is not supported by proconsul yet",
    ),
];

impl RawConfig {
    /// Which unsupported keys this source sets (to anything but null or false).
    pub fn unsupported_keys(&self) -> Vec<(&'static str, &'static str)> {
        let set = |v: &Option<Value>| {
            v.as_ref()
                .is_some_and(|v| !v.is_null() && *v != Value::Bool(false))
        };
        let values = [&self.connect, &self.alt_domain, &self.translate_wan_addrs];
        UNSUPPORTED
            .iter()
            .zip(values)
            .filter(|(_, v)| set(v))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Layers `later` over `self`: scalars are replaced, lists appended, maps merged
    /// key by key (Consul's rules).
    pub fn merge(&mut self, later: RawConfig) {
        fn list<T>(into: &mut Option<Vec<T>>, from: Option<Vec<T>>) {
            if let Some(mut items) = from {
                into.get_or_insert_with(Vec::new).append(&mut items);
            }
        }
        fn map<V>(into: &mut Option<BTreeMap<String, V>>, from: Option<BTreeMap<String, V>>) {
            if let Some(items) = from {
                into.get_or_insert_with(BTreeMap::new).extend(items);
            }
        }
        let l = later;
        scalar(&mut self.datacenter, l.datacenter);
        scalar(&mut self.primary_datacenter, l.primary_datacenter);
        scalar(&mut self.node_name, l.node_name);
        scalar(&mut self.node_id, l.node_id);
        map(&mut self.node_meta, l.node_meta);
        scalar(&mut self.server, l.server);
        scalar(&mut self.bootstrap, l.bootstrap);
        scalar(&mut self.bootstrap_expect, l.bootstrap_expect);
        scalar(&mut self.bind_addr, l.bind_addr);
        scalar(&mut self.advertise_addr, l.advertise_addr);
        scalar(&mut self.advertise_addr_wan, l.advertise_addr_wan);
        scalar(&mut self.client_addr, l.client_addr);
        if let Some(a) = l.addresses {
            let addresses = self.addresses.get_or_insert_with(RawAddresses::default);
            scalar(&mut addresses.dns, a.dns);
            scalar(&mut addresses.http, a.http);
            scalar(&mut addresses.https, a.https);
            scalar(&mut addresses.grpc, a.grpc);
        }
        scalar(&mut self.data_dir, l.data_dir);
        scalar(&mut self.domain, l.domain);
        scalar(&mut self.log_level, l.log_level);
        scalar(&mut self.log_json, l.log_json);
        scalar(&mut self.log_file, l.log_file);
        scalar(&mut self.log_rotate_bytes, l.log_rotate_bytes);
        scalar(&mut self.log_rotate_duration, l.log_rotate_duration);
        scalar(&mut self.log_rotate_max_files, l.log_rotate_max_files);
        if let Some(p) = l.ports {
            let ports = self.ports.get_or_insert_with(RawPorts::default);
            scalar(&mut ports.dns, p.dns);
            scalar(&mut ports.http, p.http);
            scalar(&mut ports.https, p.https);
            scalar(&mut ports.grpc, p.grpc);
            scalar(&mut ports.grpc_tls, p.grpc_tls);
            scalar(&mut ports.serf_lan, p.serf_lan);
            scalar(&mut ports.serf_wan, p.serf_wan);
            scalar(&mut ports.server, p.server);
        }
        list(&mut self.recursors, l.recursors);
        // The last source that sets the block sets all of it.
        if l.kv_replication.is_some() {
            self.kv_replication = l.kv_replication;
        }
        if let Some(x) = l.limits {
            let limits = self.limits.get_or_insert_with(RawLimits::default);
            scalar(
                &mut limits.http_max_conns_per_client,
                x.http_max_conns_per_client,
            );
            scalar(
                &mut limits.rpc_max_conns_per_client,
                x.rpc_max_conns_per_client,
            );
            scalar(&mut limits.http_max_connections, x.http_max_connections);
            scalar(&mut limits.kv_max_value_size, x.kv_max_value_size);
            scalar(&mut limits.http_max_header_bytes, x.http_max_header_bytes);
            scalar(&mut limits.http_max_body_bytes, x.http_max_body_bytes);
            scalar(&mut limits.http_header_timeout, x.http_header_timeout);
            scalar(&mut limits.http_body_timeout, x.http_body_timeout);
            scalar(&mut limits.http_write_timeout, x.http_write_timeout);
            scalar(
                &mut limits.http_max_blocking_queries,
                x.http_max_blocking_queries,
            );
            scalar(
                &mut limits.http_max_blocking_queries_per_client,
                x.http_max_blocking_queries_per_client,
            );
            scalar(
                &mut limits.dns_udp_max_response_bytes,
                x.dns_udp_max_response_bytes,
            );
            scalar(&mut limits.dns_rate_per_source, x.dns_rate_per_source);
        }
        if let Some(d) = l.dns_config {
            let dns = self.dns_config.get_or_insert_with(RawDnsConfig::default);
            scalar(&mut dns.allow_stale, d.allow_stale);
            scalar(&mut dns.max_stale, d.max_stale);
            scalar(&mut dns.node_ttl, d.node_ttl);
            map(&mut dns.service_ttl, d.service_ttl);
            scalar(&mut dns.enable_truncate, d.enable_truncate);
            scalar(&mut dns.only_passing, d.only_passing);
            scalar(&mut dns.udp_answer_limit, d.udp_answer_limit);
            scalar(&mut dns.a_record_limit, d.a_record_limit);
            scalar(
                &mut dns.enable_additional_node_meta_txt,
                d.enable_additional_node_meta_txt,
            );
            scalar(&mut dns.recursor_strategy, d.recursor_strategy);
            scalar(&mut dns.recursor_timeout, d.recursor_timeout);
            scalar(&mut dns.disable_compression, d.disable_compression);
            if let Some(s) = d.soa {
                let soa = dns.soa.get_or_insert_with(RawSoa::default);
                scalar(&mut soa.refresh, s.refresh);
                scalar(&mut soa.retry, s.retry);
                scalar(&mut soa.expire, s.expire);
                scalar(&mut soa.min_ttl, s.min_ttl);
            }
            scalar(&mut dns.use_cache, d.use_cache);
            scalar(&mut dns.cache_max_age, d.cache_max_age);
            scalar(&mut dns.failover, d.failover);
        }
        scalar(&mut self.enable_script_checks, l.enable_script_checks);
        scalar(
            &mut self.enable_local_script_checks,
            l.enable_local_script_checks,
        );
        scalar(&mut self.leave_on_terminate, l.leave_on_terminate);
        scalar(&mut self.skip_leave_on_interrupt, l.skip_leave_on_interrupt);
        scalar(&mut self.disable_update_check, l.disable_update_check);
        // Each source's single `service` joins the list, so several files can each
        // define one.
        if let Some(s) = l.service {
            self.services.get_or_insert_with(Vec::new).push(s);
        }
        list(&mut self.services, l.services);
        if let Some(c) = l.check {
            self.checks.get_or_insert_with(Vec::new).push(c);
        }
        list(&mut self.checks, l.checks);
        list(&mut self.watches, l.watches);
        scalar(&mut self.encrypt, l.encrypt);
        scalar(&mut self.encrypt_verify_incoming, l.encrypt_verify_incoming);
        scalar(&mut self.encrypt_verify_outgoing, l.encrypt_verify_outgoing);
        scalar(&mut self.disable_keyring_file, l.disable_keyring_file);
        list(&mut self.retry_join, l.retry_join);
        list(&mut self.start_join, l.start_join);
        scalar(&mut self.retry_interval, l.retry_interval);
        scalar(&mut self.retry_max, l.retry_max);
        scalar(&mut self.reconnect_timeout, l.reconnect_timeout);
        scalar(&mut self.raft_snapshot_threshold, l.raft_snapshot_threshold);
        list(&mut self.retry_join_wan, l.retry_join_wan);
        list(&mut self.start_join_wan, l.start_join_wan);
        scalar(&mut self.retry_interval_wan, l.retry_interval_wan);
        scalar(&mut self.retry_max_wan, l.retry_max_wan);
        super::acl::merge(&mut self.acl, l.acl);
        super::telemetry::merge(&mut self.telemetry, l.telemetry);
        super::autopilot::merge(&mut self.autopilot, l.autopilot);
        scalar(&mut self.connect, l.connect);
        if let Some(u) = l.ui_config {
            self.ui_config
                .get_or_insert_with(RawUiConfig::default)
                .merge(u);
        }
        scalar(&mut self.ui, l.ui);
        scalar(&mut self.ui_content_path, l.ui_content_path);
        if let Some(t) = l.tls {
            let tls = self.tls.get_or_insert_with(RawTls::default);
            if let Some(d) = t.defaults {
                tls.defaults
                    .get_or_insert_with(RawTlsBlock::default)
                    .merge(d);
            }
            if let Some(r) = t.internal_rpc {
                tls.internal_rpc
                    .get_or_insert_with(RawTlsBlock::default)
                    .merge(r);
            }
            if let Some(h) = t.https {
                tls.https.get_or_insert_with(RawTlsBlock::default).merge(h);
            }
        }
        scalar(&mut self.ca_file, l.ca_file);
        scalar(&mut self.ca_path, l.ca_path);
        scalar(&mut self.cert_file, l.cert_file);
        scalar(&mut self.key_file, l.key_file);
        scalar(&mut self.tls_min_version, l.tls_min_version);
        scalar(&mut self.verify_incoming, l.verify_incoming);
        scalar(&mut self.verify_incoming_rpc, l.verify_incoming_rpc);
        scalar(&mut self.verify_incoming_https, l.verify_incoming_https);
        scalar(&mut self.verify_outgoing, l.verify_outgoing);
        scalar(&mut self.verify_server_hostname, l.verify_server_hostname);
        scalar(&mut self.alt_domain, l.alt_domain);
        scalar(&mut self.translate_wan_addrs, l.translate_wan_addrs);
    }
}
