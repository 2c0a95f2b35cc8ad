//! Consul's JSON shapes, built from catalog types. The catalog types never carry serde
//! renames of their own: the Raft log format and this HTTP format evolve separately.

use std::collections::BTreeMap;

use catalog::{
    Check, KvEntry, Node, Service, ServiceAddress, ServiceHealth, ServiceNode, Session, Weights,
};
use gossip::Member;
use serde::Serialize;

/// A KV entry (Consul's `DirEntry`): `Value` in base64, `null` when empty; `Session`
/// only while a session holds the key.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KvEntryJson<'a> {
    lock_index: u64,
    key: &'a str,
    flags: u64,
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    create_index: u64,
    modify_index: u64,
}

pub(crate) fn kv_entry(e: &KvEntry) -> KvEntryJson<'_> {
    use base64::Engine;
    KvEntryJson {
        lock_index: e.lock_index,
        key: &e.key,
        flags: e.flags,
        value: (!e.value.is_empty())
            .then(|| base64::engine::general_purpose::STANDARD.encode(&e.value)),
        session: e.session.as_deref(),
        create_index: e.create_index,
        modify_index: e.modify_index,
    }
}

/// A session (Consul's `Session`): `LockDelay` in nanoseconds, `ServiceChecks` as
/// objects with an `ID` (null when none).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SessionJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    node: &'a str,
    lock_delay: u64,
    behavior: &'static str,
    #[serde(rename = "TTL")]
    ttl: &'a str,
    node_checks: &'a [String],
    service_checks: Option<Vec<ServiceCheckJson<'a>>>,
    create_index: u64,
    modify_index: u64,
}

#[derive(Serialize)]
pub(crate) struct ServiceCheckJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    #[serde(rename = "Namespace")]
    namespace: &'static str,
}

pub(crate) fn session(s: &Session) -> SessionJson<'_> {
    SessionJson {
        id: &s.id,
        name: &s.name,
        node: &s.node,
        lock_delay: u64::try_from(s.lock_delay.as_nanos()).unwrap_or(u64::MAX),
        behavior: s.behavior.as_str(),
        ttl: &s.ttl,
        node_checks: &s.node_checks,
        service_checks: (!s.service_checks.is_empty()).then(|| {
            s.service_checks
                .iter()
                .map(|id| ServiceCheckJson { id, namespace: "" })
                .collect()
        }),
        create_index: s.create_index,
        modify_index: s.modify_index,
    }
}

/// `Node` in catalog responses.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NodeJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    node: &'a str,
    address: &'a str,
    datacenter: &'a str,
    tagged_addresses: &'a BTreeMap<String, String>,
    meta: &'a BTreeMap<String, String>,
    create_index: u64,
    modify_index: u64,
}

pub(crate) fn node(n: &Node) -> NodeJson<'_> {
    NodeJson {
        id: &n.id,
        node: &n.name,
        address: &n.address,
        datacenter: &n.datacenter,
        tagged_addresses: &n.tagged_addresses,
        meta: &n.meta,
        create_index: n.create_index,
        modify_index: n.modify_index,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AddressJson<'a> {
    address: &'a str,
    port: u16,
}

fn tagged(map: &BTreeMap<String, ServiceAddress>) -> BTreeMap<&str, AddressJson<'_>> {
    map.iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                AddressJson {
                    address: &v.address,
                    port: v.port,
                },
            )
        })
        .collect()
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct WeightsJson {
    passing: u32,
    warning: u32,
}

fn weights(w: &Weights) -> WeightsJson {
    WeightsJson {
        passing: w.passing,
        warning: w.warning,
    }
}

/// An empty object, for fields Consul always sends (`Proxy`, `Connect`, `Definition`).
#[derive(Serialize)]
pub(crate) struct Empty {}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ProxyJson {
    mesh_gateway: Empty,
    expose: Empty,
}

/// An element of `/v1/catalog/service/:name`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ServiceNodeJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    node: &'a str,
    address: &'a str,
    datacenter: &'a str,
    tagged_addresses: &'a BTreeMap<String, String>,
    node_meta: &'a BTreeMap<String, String>,
    service_kind: &'static str,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    service_address: &'a str,
    service_tagged_addresses: BTreeMap<&'a str, AddressJson<'a>>,
    service_weights: WeightsJson,
    service_meta: &'a BTreeMap<String, String>,
    service_port: u16,
    service_socket_path: &'static str,
    service_enable_tag_override: bool,
    service_proxy: ProxyJson,
    service_connect: Empty,
    create_index: u64,
    modify_index: u64,
}

pub(crate) fn service_node(e: &ServiceNode) -> ServiceNodeJson<'_> {
    let (n, s) = (&e.node, &e.service);
    ServiceNodeJson {
        id: &n.id,
        node: &n.name,
        address: &n.address,
        datacenter: &n.datacenter,
        tagged_addresses: &n.tagged_addresses,
        node_meta: &n.meta,
        service_kind: "",
        service_id: &s.id,
        service_name: &s.name,
        service_tags: &s.tags,
        service_address: &s.address,
        service_tagged_addresses: tagged(&s.tagged_addresses),
        service_weights: weights(&s.weights),
        service_meta: &s.meta,
        service_port: s.port,
        service_socket_path: "",
        service_enable_tag_override: s.enable_tag_override,
        service_proxy: ProxyJson {
            mesh_gateway: Empty {},
            expose: Empty {},
        },
        service_connect: Empty {},
        create_index: s.create_index,
        modify_index: s.modify_index,
    }
}

/// A service as `/v1/catalog/node/:node`, `/v1/health/service/:name` and
/// `/v1/agent/services` show it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ServiceJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    service: &'a str,
    tags: &'a [String],
    address: &'a str,
    tagged_addresses: BTreeMap<&'a str, AddressJson<'a>>,
    meta: &'a BTreeMap<String, String>,
    port: u16,
    weights: WeightsJson,
    enable_tag_override: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    datacenter: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    create_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    modify_index: Option<u64>,
}

/// A catalog service (with its indexes).
pub(crate) fn service(s: &Service) -> ServiceJson<'_> {
    ServiceJson {
        id: &s.id,
        service: &s.name,
        tags: &s.tags,
        address: &s.address,
        tagged_addresses: tagged(&s.tagged_addresses),
        meta: &s.meta,
        port: s.port,
        weights: weights(&s.weights),
        enable_tag_override: s.enable_tag_override,
        datacenter: None,
        create_index: Some(s.create_index),
        modify_index: Some(s.modify_index),
    }
}

/// An agent-local service (no indexes, with the datacenter), as `/v1/agent/services`.
pub(crate) fn agent_service<'a>(s: &'a Service, dc: &'a str) -> ServiceJson<'a> {
    ServiceJson {
        datacenter: Some(dc),
        create_index: None,
        modify_index: None,
        ..service(s)
    }
}

/// `HealthCheck`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CheckJson<'a> {
    node: &'a str,
    #[serde(rename = "CheckID")]
    check_id: &'a str,
    name: &'a str,
    status: &'static str,
    notes: &'a str,
    output: &'a str,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    #[serde(rename = "Type")]
    check_type: &'a str,
    interval: &'a str,
    timeout: &'a str,
    exposed_port: u16,
    definition: Empty,
    create_index: u64,
    modify_index: u64,
}

pub(crate) fn check(c: &Check) -> CheckJson<'_> {
    CheckJson {
        node: &c.node,
        check_id: &c.check_id,
        name: &c.name,
        status: c.status.as_str(),
        notes: &c.notes,
        output: &c.output,
        service_id: &c.service_id,
        service_name: &c.service_name,
        service_tags: &c.service_tags,
        check_type: &c.check_type,
        interval: &c.interval,
        timeout: &c.timeout,
        exposed_port: 0,
        definition: Empty {},
        create_index: c.create_index,
        modify_index: c.modify_index,
    }
}

/// An element of `/v1/health/service/:name`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ServiceHealthJson<'a> {
    node: NodeJson<'a>,
    service: ServiceJson<'a>,
    checks: Vec<CheckJson<'a>>,
}

pub(crate) fn service_health(e: &ServiceHealth) -> ServiceHealthJson<'_> {
    ServiceHealthJson {
        node: node(&e.node),
        service: service(&e.service),
        checks: e.checks.iter().map(|c| check(c)).collect(),
    }
}

/// `/v1/catalog/node/:node`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NodeServicesJson<'a> {
    node: NodeJson<'a>,
    services: BTreeMap<&'a str, ServiceJson<'a>>,
}

pub(crate) fn node_services<'a>(
    n: &'a Node,
    services: impl IntoIterator<Item = &'a Service>,
) -> NodeServicesJson<'a> {
    NodeServicesJson {
        node: node(n),
        services: services
            .into_iter()
            .map(|s| (s.id.as_str(), service(s)))
            .collect(),
    }
}

/// `/v1/catalog/node-services/:node`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NodeServiceListJson<'a> {
    node: NodeJson<'a>,
    services: Vec<ServiceJson<'a>>,
}

pub(crate) fn node_service_list<'a>(
    n: &'a Node,
    services: impl IntoIterator<Item = &'a Service>,
) -> NodeServiceListJson<'a> {
    NodeServiceListJson {
        node: node(n),
        services: services.into_iter().map(service).collect(),
    }
}

/// An element of `/v1/agent/members`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct MemberJson<'a> {
    name: &'a str,
    addr: String,
    port: u16,
    tags: &'a BTreeMap<String, String>,
    status: u8,
    protocol_min: u8,
    protocol_max: u8,
    protocol_cur: u8,
    delegate_min: u8,
    delegate_max: u8,
    delegate_cur: u8,
}

pub(crate) fn member(m: &Member) -> MemberJson<'_> {
    MemberJson {
        name: &m.name,
        addr: m.addr.to_string(),
        port: m.port,
        tags: &m.tags,
        status: m.status.code(),
        protocol_min: 1,
        protocol_max: 5,
        protocol_cur: 2,
        delegate_min: 2,
        delegate_max: 5,
        delegate_cur: 4,
    }
}
