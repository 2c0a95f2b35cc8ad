//! `/v1/internal/ui/*`: the summaries the web UI reads, in Consul's shapes
//! (`agent/ui_endpoint.go`), plus `datacenters`, which is proconsul's own.
//!
//! `services`, `nodes` and `node/:node` are one catalog read each (`Query::NodeDump`),
//! blocking with `?index=` like the catalog endpoints, for any datacenter with `?dc=`,
//! and filtered by ACLs as those are: a node the token may not read is left out, and so
//! is a service (with its checks) the token may not read.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use catalog::{Answer, Health, NodeInfo, Query};
use serde::Serialize;

use super::catalog::{read_and_render, unexpected};
use super::json::{CheckJson, ServiceJson, check, service};
use super::{ApiError, Params, json};
use crate::Context;

/// The service meta key naming the system a service was synced from (Consul's
/// `external-source`), shown as a badge.
const EXTERNAL_SOURCE: &str = "external-source";

/// An element of `/v1/internal/ui/services` (Consul's `ServiceListingSummary`; the
/// service-mesh fields are always false or empty in proconsul).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ServiceSummary {
    name: String,
    datacenter: String,
    /// `null` when no instance has a tag, as Consul's nil slice.
    tags: Option<Vec<String>>,
    nodes: Vec<String>,
    external_sources: Option<Vec<String>>,
    instance_count: usize,
    checks_passing: usize,
    checks_warning: usize,
    checks_critical: usize,
    gateway_config: super::json::Empty,
    transparent_proxy: bool,
    connect_native: bool,
    connected_with_proxy: bool,
    connected_with_gateway: bool,
}

/// Sums up the instances of every service in `dump`, by name: their nodes, tags and
/// external sources, and the checks that cover them (each check of a node once per
/// service, however many instances of it the node runs).
pub(crate) fn summarize(dump: &[NodeInfo]) -> Vec<ServiceSummary> {
    #[derive(Default)]
    struct Acc {
        datacenter: String,
        tags: BTreeSet<String>,
        nodes: BTreeSet<String>,
        sources: Vec<String>,
        instances: usize,
        checks: BTreeMap<(String, String), Health>,
    }
    let mut by_name: BTreeMap<&str, Acc> = BTreeMap::new();
    for info in dump {
        for s in &info.services {
            let acc = by_name.entry(s.name.as_str()).or_default();
            acc.datacenter.clone_from(&info.node.datacenter);
            acc.instances += 1;
            acc.nodes.insert(info.node.name.clone());
            acc.tags.extend(s.tags.iter().cloned());
            if let Some(source) = s.meta.get(EXTERNAL_SOURCE).filter(|v| !v.is_empty())
                && !acc.sources.contains(source)
            {
                acc.sources.push(source.clone());
            }
            for c in &info.checks {
                if c.service_id.is_empty() || c.service_id.eq_ignore_ascii_case(&s.id) {
                    acc.checks
                        .insert((info.node.name.clone(), c.check_id.clone()), c.status);
                }
            }
        }
    }
    by_name
        .into_iter()
        .map(|(name, acc)| {
            let count = |h: Health| acc.checks.values().filter(|s| **s == h).count();
            ServiceSummary {
                name: name.to_owned(),
                datacenter: acc.datacenter,
                tags: (!acc.tags.is_empty()).then(|| acc.tags.into_iter().collect()),
                nodes: acc.nodes.into_iter().collect(),
                external_sources: (!acc.sources.is_empty()).then_some(acc.sources),
                instance_count: acc.instances,
                checks_passing: count(Health::Passing),
                checks_warning: count(Health::Warning),
                checks_critical: count(Health::Critical),
                gateway_config: super::json::Empty {},
                transparent_proxy: false,
                connect_native: false,
                connected_with_proxy: false,
                connected_with_gateway: false,
            }
        })
        .collect()
}

/// An element of `/v1/internal/ui/nodes` (Consul's `NodeInfo`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeInfoJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    node: &'a str,
    address: &'a str,
    datacenter: &'a str,
    tagged_addresses: &'a BTreeMap<String, String>,
    meta: &'a BTreeMap<String, String>,
    services: Vec<ServiceJson<'a>>,
    checks: Vec<CheckJson<'a>>,
}

fn node_info(i: &NodeInfo) -> NodeInfoJson<'_> {
    NodeInfoJson {
        id: &i.node.id,
        node: &i.node.name,
        address: &i.node.address,
        datacenter: &i.node.datacenter,
        tagged_addresses: &i.node.tagged_addresses,
        meta: &i.node.meta,
        services: i.services.iter().map(|s| service(s)).collect(),
        checks: i.checks.iter().map(|c| check(c)).collect(),
    }
}

/// `GET /v1/internal/ui/services`.
pub(crate) async fn services(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    read_and_render(
        &ctx,
        &params,
        Query::NodeDump { node: None },
        |answer, pretty| match answer {
            Answer::NodeDump(dump) => json(&summarize(dump), pretty),
            _ => unexpected(),
        },
    )
    .await
}

/// `GET /v1/internal/ui/nodes`.
pub(crate) async fn nodes(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    read_and_render(
        &ctx,
        &params,
        Query::NodeDump { node: None },
        |answer, pretty| match answer {
            Answer::NodeDump(dump) => json(&dump.iter().map(node_info).collect::<Vec<_>>(), pretty),
            _ => unexpected(),
        },
    )
    .await
}

/// `GET /v1/internal/ui/node/:node`: the node, or 404 with no body (Consul's answer).
pub(crate) async fn node(
    State(ctx): State<Context>,
    Path(node): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    if node.is_empty() {
        return Err(ApiError::BadRequest("Missing node name".into()));
    }
    read_and_render(
        &ctx,
        &params,
        Query::NodeDump { node: Some(node) },
        |answer, pretty| match answer {
            Answer::NodeDump(dump) => match dump.first() {
                Some(info) => json(&node_info(info), pretty),
                None => StatusCode::NOT_FOUND.into_response(),
            },
            _ => unexpected(),
        },
    )
    .await
}

/// An element of `/v1/internal/ui/datacenters` (proconsul's own: Consul's UI computes
/// the same from coordinates and has no view of reachability).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DatacenterJson {
    name: String,
    local: bool,
    /// Median estimated round-trip time to its servers, in milliseconds.
    #[serde(rename = "RTTMs")]
    rtt_ms: Option<f64>,
    servers: Option<usize>,
    servers_alive: Option<usize>,
    /// Whether any of its servers is alive; `null` when this agent cannot tell.
    reachable: Option<bool>,
}

/// `GET /v1/internal/ui/datacenters`: the datacenters nearest first (the order of
/// `/v1/catalog/datacenters`), each with its round-trip time and whether any of its
/// servers is alive in the WAN pool.
pub(crate) async fn datacenters(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    let list: Vec<DatacenterJson> = ctx
        .gateway
        .datacenter_reports()
        .await
        .into_iter()
        .map(|r| DatacenterJson {
            reachable: if r.local {
                Some(true)
            } else {
                r.alive.map(|n| n > 0)
            },
            name: r.name.to_string(),
            local: r.local,
            rtt_ms: r.rtt.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0),
            servers: r.servers,
            servers_alive: r.alive,
        })
        .collect();
    Ok(json(&list, params.pretty()))
}

#[cfg(test)]
mod tests {
    use catalog::{Check, Node, Service};

    use super::*;

    fn node(
        name: &str,
        services: &[(&str, &str, &[&str])],
        checks: &[(&str, &str, Health)],
    ) -> NodeInfo {
        NodeInfo {
            node: Node {
                name: name.into(),
                datacenter: "dc1".into(),
                ..Node::default()
            }
            .into(),
            services: services
                .iter()
                .map(|(id, name, tags)| {
                    Service {
                        id: (*id).into(),
                        name: (*name).into(),
                        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                        ..Service::default()
                    }
                    .into()
                })
                .collect(),
            checks: checks
                .iter()
                .map(|(id, service_id, status)| {
                    Check {
                        node: name.into(),
                        check_id: (*id).into(),
                        service_id: (*service_id).into(),
                        status: *status,
                        ..Check::default()
                    }
                    .into()
                })
                .collect(),
        }
    }

    #[test]
    fn a_summary_counts_instances_and_each_covering_check_once() {
        let dump = [
            node(
                "n1",
                &[("web1", "web", &["b", "a"]), ("web2", "web", &["a"])],
                &[
                    ("serfHealth", "", Health::Passing),
                    ("c1", "web1", Health::Critical),
                    ("c2", "web2", Health::Warning),
                ],
            ),
            node(
                "n2",
                &[("db", "db", &[])],
                &[("serfHealth", "", Health::Passing)],
            ),
        ];
        let list = summarize(&dump);
        assert_eq!(list.len(), 2);
        let (db, web) = (&list[0], &list[1]);
        assert_eq!(db.name, "db");
        assert_eq!(db.tags, None);
        assert_eq!((db.checks_passing, db.instance_count), (1, 1));
        assert_eq!(web.instance_count, 2);
        assert_eq!(web.nodes, ["n1"]);
        assert_eq!(
            web.tags.as_deref(),
            Some(&["a".to_owned(), "b".to_owned()][..])
        );
        assert_eq!(
            (web.checks_passing, web.checks_warning, web.checks_critical),
            (1, 1, 1)
        );
    }

    #[test]
    fn summary_json_has_consuls_field_names() {
        let dump = [node("n1", &[("web", "web", &[])], &[])];
        let v = serde_json::to_value(summarize(&dump)).unwrap();
        let obj = v[0].as_object().unwrap();
        for key in [
            "Name",
            "Datacenter",
            "Tags",
            "Nodes",
            "ExternalSources",
            "InstanceCount",
            "ChecksPassing",
            "ChecksWarning",
            "ChecksCritical",
            "GatewayConfig",
            "TransparentProxy",
            "ConnectNative",
            "ConnectedWithProxy",
            "ConnectedWithGateway",
        ] {
            assert!(obj.contains_key(key), "missing {key}");
        }
    }
}
