//! `/v1/catalog/...`

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use catalog::{Answer, Check, Command, Deregistration, Health, Node, Query, Registration, Service};
use gossip::transport::Coordinates;
use serde_json::Value;
use tokio::time::Instant;

use super::filter::{self, Filter, schema};
use super::{ApiError, Params, REQUEST_TIMEOUT, add_meta_headers, json, parse_body, read_request};
use crate::Context;
use crate::definition::{self, Style, fold_key};

/// Runs a read through the gateway and renders it with the blocking-query headers.
pub(crate) async fn read_and_render(
    ctx: &Context,
    params: &Params,
    query: Query,
    render: impl FnOnce(&Answer, bool) -> Response,
) -> Result<Response, ApiError> {
    read_sort_and_render(ctx, params, query, None, render).await
}

/// [`read_and_render`] for the reads that take `?near=NODE` (`_agent` is this agent):
/// the answer is ordered by estimated round-trip time from that node, nearest first,
/// entries of nodes without a coordinate last. Only this datacenter's coordinates are
/// known here. With `?dc=` naming another datacenter, `_agent` leaves the answer in its
/// usual order, as in Consul, where this agent is no node of that datacenter; another
/// node name is refused. A node without a coordinate leaves the order as it is, as in
/// Consul.
pub(crate) async fn read_near_and_render(
    ctx: &Context,
    params: &Params,
    query: Query,
    render: impl FnOnce(&Answer, bool) -> Response,
) -> Result<Response, ApiError> {
    let near = params
        .get("near")
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let rest = params.without(&["near"]);
    let near = match near {
        Some(near) if ctx.gateway.is_local(params.dc()) => Some(near),
        Some(near) if near != "_agent" => {
            return Err(ApiError::BadRequest(format!(
                "?near={near} with another datacenter's ?dc is not supported by proconsul: \
                 only this datacenter's network coordinates are known here"
            )));
        }
        _ => None,
    };
    read_sort_and_render(ctx, &rest, query, near, render).await
}

async fn read_sort_and_render(
    ctx: &Context,
    params: &Params,
    query: Query,
    near: Option<String>,
    render: impl FnOnce(&Answer, bool) -> Response,
) -> Result<Response, ApiError> {
    let request = read_request(params)?;
    let cached = tokio::select! {
        result = ctx.gateway.read_cached(params.dc(), &query, request.options.clone(), request.cache) => result?,
        _ = ctx.shutdown.cancelled() => {
            return Err(ApiError::Internal("the agent is shutting down".into()));
        }
    };
    let mut result = cached.result;
    if let Some(near) = near {
        let lan = ctx.gateway.lan();
        let origin = if near == "_agent" {
            lan.node_name()
        } else {
            &near
        };
        sort_by_distance(&mut result.answer, &lan.coordinates().await, origin);
    }
    let mut response = render(&result.answer, request.pretty);
    super::add_cache_headers(&mut response, cached.cache);
    super::add_filtered_header(&mut response, result.filtered);
    add_meta_headers(
        &mut response,
        result.index,
        result.meta,
        request.options.consistency,
    );
    Ok(response)
}

/// Orders the entries of `answer` by the estimated round-trip time from `origin` to
/// their node, nearest first; the sort is stable, and entries whose node has no
/// coordinate go last. Leaves `answer` as it is when `origin` has no coordinate.
pub(crate) fn sort_by_distance(answer: &mut Answer, coordinates: &Coordinates, origin: &str) {
    let Some(from) = coordinates.get(origin) else {
        return;
    };
    let rtt = |node: &str| {
        coordinates
            .get(node)
            .map_or(f64::INFINITY, |c| from.distance(c))
    };
    match answer {
        Answer::Nodes(list) => list.sort_by(|a, b| rtt(&a.name).total_cmp(&rtt(&b.name))),
        Answer::ServiceNodes(list) => {
            list.sort_by(|a, b| rtt(&a.node.name).total_cmp(&rtt(&b.node.name)));
        }
        Answer::ServiceHealth(list) => {
            list.sort_by(|a, b| rtt(&a.node.name).total_cmp(&rtt(&b.node.name)));
        }
        Answer::Checks(list) => list.sort_by(|a, b| rtt(&a.node).total_cmp(&rtt(&b.node))),
        _ => {}
    }
}

pub(crate) async fn datacenters(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    let names: Vec<String> = ctx
        .gateway
        .datacenters()
        .await
        .into_iter()
        .map(String::from)
        .collect();
    Ok(json(&names, params.pretty()))
}

pub(crate) async fn nodes(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    let query = Query::Nodes {
        node_meta: params.node_meta()?,
    };
    let filter = params.filter(schema::NODE)?;
    let params = params.without(&["filter"]);
    read_near_and_render(&ctx, &params, query, move |answer, pretty| match answer {
        Answer::Nodes(nodes) => json(
            &filter::retain(nodes.iter().map(|n| super::json::node(n)), filter.as_ref()),
            pretty,
        ),
        _ => unexpected(),
    })
    .await
}

pub(crate) async fn services(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    let node_meta = params.node_meta()?;
    // With `?filter=`, the expression selects instances (Consul's `ServiceNode` fields)
    // and the answer gathers the names and tags of those it keeps, as Consul's does.
    let Some(filter) = params.filter(schema::SERVICE_NODE)? else {
        let query = Query::Services { node_meta };
        return read_and_render(&ctx, &params, query, |answer, pretty| match answer {
            Answer::Services(map) => json(map, pretty),
            _ => unexpected(),
        })
        .await;
    };
    let params = params.without(&["filter"]);
    let query = Query::ServiceInstances { node_meta };
    read_and_render(&ctx, &params, query, move |answer, pretty| match answer {
        Answer::ServiceInstances(list) => {
            let mut names: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for instance in list {
                if filter.keeps(&super::json::service_node(instance)) {
                    names
                        .entry(&instance.service.name)
                        .or_default()
                        .extend(instance.service.tags.iter().map(String::as_str));
                }
            }
            json(&names, pretty)
        }
        _ => unexpected(),
    })
    .await
}

pub(crate) async fn service(
    State(ctx): State<Context>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    if name.is_empty() {
        return Err(ApiError::BadRequest("Missing service name".into()));
    }
    let query = Query::ServiceNodes {
        service: name,
        tags: params.all("tag"),
        node_meta: params.node_meta()?,
    };
    let filter = params.filter(schema::SERVICE_NODE)?;
    let params = params.without(&["filter"]);
    read_near_and_render(&ctx, &params, query, move |answer, pretty| match answer {
        Answer::ServiceNodes(list) => json(
            &filter::retain(list.iter().map(super::json::service_node), filter.as_ref()),
            pretty,
        ),
        _ => unexpected(),
    })
    .await
}

pub(crate) async fn node(
    State(ctx): State<Context>,
    Path(node): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let query = Query::NodeServices { node };
    // Consul filters the node's services, not the node.
    let filter = params.filter(schema::NODE_SERVICE)?;
    let params = params.without(&["filter"]);
    read_and_render(&ctx, &params, query, move |answer, pretty| match answer {
        // Consul answers an unknown node with 200 and `null` (issue #9330); clients
        // depend on it, so we keep it.
        Answer::NodeServices(None) => json(&Value::Null, pretty),
        Answer::NodeServices(Some(ns)) => json(
            &super::json::node_services(&ns.node, kept_services(&ns.services, filter.as_ref())),
            pretty,
        ),
        _ => unexpected(),
    })
    .await
}

pub(crate) async fn node_services(
    State(ctx): State<Context>,
    Path(node): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let query = Query::NodeServices { node };
    let filter = params.filter(schema::NODE_SERVICE)?;
    let params = params.without(&["filter"]);
    read_and_render(&ctx, &params, query, move |answer, pretty| match answer {
        Answer::NodeServices(None) => json(&Value::Null, pretty),
        Answer::NodeServices(Some(ns)) => json(
            &super::json::node_service_list(&ns.node, kept_services(&ns.services, filter.as_ref())),
            pretty,
        ),
        _ => unexpected(),
    })
    .await
}

/// The services of a node that `filter` keeps, judged in the shape Consul filters
/// (`NodeService`).
fn kept_services<'a>(
    services: &'a [Arc<Service>],
    filter: Option<&'a Filter>,
) -> impl Iterator<Item = &'a Service> {
    services
        .iter()
        .map(|s| &**s)
        .filter(move |s| filter.is_none_or(|f| f.keeps(&super::json::service(s))))
}

/// A gateway answer of the wrong variant for its query: a bug, reported as a 500.
pub(crate) fn unexpected() -> Response {
    use axum::response::IntoResponse;
    ApiError::Internal("internal error: unexpected answer for the query".into()).into_response()
}

/// Looks up a key of a JSON object case-insensitively (Go's decoding rule).
pub(crate) fn field<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| fold_key(k) == key)
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

pub(crate) fn string_field(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    name: &str,
) -> Result<String, ApiError> {
    match field(obj, key) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::BadRequest(format!(
            "Request decode failed: {name} must be a string"
        ))),
    }
}

pub(crate) fn string_map_field(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    name: &str,
) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    match field(obj, key) {
        None => Ok(Default::default()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(ApiError::BadRequest(format!(
                    "Request decode failed: {name}.{k} must be a string"
                ))),
            })
            .collect(),
        Some(_) => Err(ApiError::BadRequest(format!(
            "Request decode failed: {name} must be an object"
        ))),
    }
}

/// The service of a catalog registration. The catalog API names the service under
/// `Service` where the agent API says `Name`; everything else is the same definition.
fn catalog_service(value: &Value) -> Result<Service, ApiError> {
    let mut obj = value.as_object().cloned().ok_or_else(|| {
        ApiError::BadRequest("Request decode failed: Service must be an object".into())
    })?;
    if let Some(key) = obj.keys().find(|k| fold_key(k) == "service").cloned()
        && let Some(name) = obj.remove(&key)
    {
        obj.insert("Name".into(), name);
    }
    let (service, checks) = definition::service(&Value::Object(obj), Style::Api, "Service")
        .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))?;
    if !checks.is_empty() {
        return Err(ApiError::BadRequest(
            "Request decode failed: give catalog checks in Check or Checks, not in Service".into(),
        ));
    }
    Ok(service)
}

/// A check of a catalog registration: status and texts only; the catalog does not run it.
fn catalog_check(value: &Value, node: &str) -> Result<Check, ApiError> {
    let obj = value.as_object().ok_or_else(|| {
        ApiError::BadRequest("Request decode failed: Check must be an object".into())
    })?;
    let status = string_field(obj, "status", "Check.Status")?;
    let status = if status.is_empty() {
        Health::Critical
    } else {
        Health::parse(&status)
            .ok_or_else(|| ApiError::BadRequest(format!("Invalid check status: '{status}'")))?
    };
    let name = string_field(obj, "name", "Check.Name")?;
    let mut check_id = string_field(obj, "checkid", "Check.CheckID")?;
    if check_id.is_empty() {
        check_id = name.clone();
    }
    Ok(Check {
        node: node.to_owned(),
        check_id,
        name,
        status,
        notes: string_field(obj, "notes", "Check.Notes")?,
        output: string_field(obj, "output", "Check.Output")?,
        service_id: string_field(obj, "serviceid", "Check.ServiceID")?,
        ..Check::default()
    })
}

pub(crate) async fn register(
    State(ctx): State<Context>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let local_dc = ctx.gateway.local_datacenter().as_str();
    let (dc, command) = registration(&params, &body, local_dc)?;
    ctx.gateway
        .write(
            dc.as_deref(),
            command,
            Instant::now() + REQUEST_TIMEOUT,
            params.principal(),
        )
        .await?;
    Ok(json(&true, params.pretty()))
}

/// The datacenter and the command of a registration's body (`local_dc` when it names
/// none).
pub(crate) fn registration(
    params: &Params,
    body: &[u8],
    local_dc: &str,
) -> Result<(Option<String>, Command), ApiError> {
    let value = parse_body(body)?;
    let obj = value.as_object().ok_or_else(|| {
        ApiError::BadRequest("Request decode failed: body must be an object".into())
    })?;
    let node_name = string_field(obj, "node", "Node")?;
    if node_name.is_empty() {
        return Err(ApiError::BadRequest("Must provide node".into()));
    }
    let address = string_field(obj, "address", "Address")?;
    let skip_node_update = matches!(field(obj, "skipnodeupdate"), Some(Value::Bool(true)));
    let body_dc = string_field(obj, "datacenter", "Datacenter")?;
    let dc = params
        .dc()
        .map(str::to_owned)
        .or_else(|| (!body_dc.is_empty()).then_some(body_dc));
    let service = match field(obj, "service") {
        None => None,
        Some(v) => Some(catalog_service(v)?),
    };
    let mut checks = Vec::new();
    if let Some(c) = field(obj, "check") {
        checks.push(catalog_check(c, &node_name)?);
    }
    if let Some(cs) = field(obj, "checks") {
        let list = cs.as_array().ok_or_else(|| {
            ApiError::BadRequest("Request decode failed: Checks must be a list".into())
        })?;
        for c in list {
            checks.push(catalog_check(c, &node_name)?);
        }
    }
    let node_meta = string_map_field(obj, "nodemeta", "NodeMeta")?;
    catalog::validate_meta(&node_meta)
        .map_err(|e| ApiError::BadRequest(format!("Invalid node metadata: {e}")))?;
    let node = Node {
        id: string_field(obj, "id", "ID")?,
        name: node_name,
        address,
        datacenter: dc.clone().unwrap_or_else(|| local_dc.to_owned()),
        tagged_addresses: string_map_field(obj, "taggedaddresses", "TaggedAddresses")?,
        meta: node_meta,
        create_index: 0,
        modify_index: 0,
    };
    let command = Command::Register(Registration {
        node,
        skip_node_update,
        service,
        checks,
    });
    Ok((dc, command))
}

pub(crate) async fn deregister(
    State(ctx): State<Context>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (dc, command) = deregistration(&params, &body)?;
    ctx.gateway
        .write(
            dc.as_deref(),
            command,
            Instant::now() + REQUEST_TIMEOUT,
            params.principal(),
        )
        .await?;
    Ok(json(&true, params.pretty()))
}

/// The datacenter and the command of a deregistration's body.
pub(crate) fn deregistration(
    params: &Params,
    body: &[u8],
) -> Result<(Option<String>, Command), ApiError> {
    let value = parse_body(body)?;
    let obj = value.as_object().ok_or_else(|| {
        ApiError::BadRequest("Request decode failed: body must be an object".into())
    })?;
    let node = string_field(obj, "node", "Node")?;
    if node.is_empty() {
        return Err(ApiError::BadRequest("Must provide node".into()));
    }
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    let body_dc = string_field(obj, "datacenter", "Datacenter")?;
    let dc = params
        .dc()
        .map(str::to_owned)
        .or_else(|| non_empty(body_dc));
    let command = Command::Deregister(Deregistration {
        node,
        service_id: non_empty(string_field(obj, "serviceid", "ServiceID")?),
        check_id: non_empty(string_field(obj, "checkid", "CheckID")?),
    });
    Ok((dc, command))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossip::swim::coordinate::Coordinate;

    /// Nodes on one axis, `x` seconds from the origin.
    fn at(x: f64) -> Coordinate {
        let mut c = Coordinate::default();
        c.vec[0] = x;
        c
    }

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            ..Node::default()
        }
    }

    fn coordinates() -> Coordinates {
        [("a", 0.0), ("b", 0.010), ("c", 0.002)]
            .into_iter()
            .map(|(n, x)| (n.to_owned(), at(x)))
            .collect()
    }

    fn names(answer: &Answer) -> Vec<&str> {
        match answer {
            Answer::Nodes(list) => list.iter().map(|n| n.name.as_str()).collect(),
            Answer::Checks(list) => list.iter().map(|c| c.node.as_str()).collect(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn near_orders_by_round_trip_time_with_unknown_nodes_last() {
        let mut answer = Answer::Nodes(["d", "b", "a", "e", "c"].map(|n| node(n).into()).to_vec());
        sort_by_distance(&mut answer, &coordinates(), "a");
        assert_eq!(names(&answer), ["a", "c", "b", "d", "e"]);
        sort_by_distance(&mut answer, &coordinates(), "b");
        assert_eq!(names(&answer), ["b", "c", "a", "d", "e"]);
        let check = |node: &str| Check {
            node: node.into(),
            ..Check::default()
        };
        let mut answer = Answer::Checks(vec![
            check("b").into(),
            check("x").into(),
            check("c").into(),
        ]);
        sort_by_distance(&mut answer, &coordinates(), "a");
        assert_eq!(names(&answer), ["c", "b", "x"]);
    }

    #[test]
    fn near_a_node_without_a_coordinate_keeps_the_order() {
        let mut answer = Answer::Nodes(["b", "a", "c"].map(|n| node(n).into()).to_vec());
        sort_by_distance(&mut answer, &coordinates(), "nowhere");
        assert_eq!(names(&answer), ["b", "a", "c"]);
    }
}
