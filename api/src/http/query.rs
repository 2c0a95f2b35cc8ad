//! `/v1/query`: prepared queries — create, list, read, update, delete, execute, explain.
//!
//! Definitions are stored in the catalog of the datacenter named by `?dc=` (the local
//! one by default) and executed through the gateway, which applies the failover policy.
//! Executing needs no right on the query; its results are filtered as its stored
//! `Token` (else the caller's) may read them, as in Consul. Reads show that token only
//! to callers that may write ACLs (`<hidden>` to the others). Sessions, templates, mesh
//! (`Connect`) and peering targets are not part of proconsul; a definition that uses
//! them is refused with 400 rather than stored and then ignored.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use catalog::{Command, Failover, PreparedQuery, ServiceQuery};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use super::catalog::{field, string_field, string_map_field};
use super::{ApiError, Params, REQUEST_TIMEOUT, add_meta_headers, json, parse_body, read_request};
use crate::Context;

/// Consul's text for an ID or name that matches no query (HTTP 404).
pub(crate) const NOT_FOUND: &str = "Query not found";

fn bad(text: impl Into<String>) -> ApiError {
    ApiError::BadRequest(text.into())
}

fn string_list(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    name: &str,
) -> Result<Vec<String>, ApiError> {
    match field(obj, key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(bad(format!(
                    "Request decode failed: {name} must be a list of strings"
                ))),
            })
            .collect(),
        Some(_) => Err(bad(format!(
            "Request decode failed: {name} must be a list of strings"
        ))),
    }
}

fn bool_field(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    name: &str,
) -> Result<bool, ApiError> {
    match field(obj, key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!(
            "Request decode failed: {name} must be a boolean"
        ))),
    }
}

fn object<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
    name: &str,
) -> Result<Option<&'a serde_json::Map<String, Value>>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(bad(format!(
            "Request decode failed: {name} must be an object"
        ))),
    }
}

/// Parses a definition (the body of a create or an update), with Consul's checks.
pub(crate) fn definition(body: &[u8]) -> Result<PreparedQuery, ApiError> {
    let value = parse_body(body)?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("Request decode failed: body must be an object"))?;
    let name = string_field(obj, "name", "Name")?;
    if catalog::uuid::is_uuid(&name) {
        return Err(bad("Query name cannot be a UUID"));
    }
    if !string_field(obj, "session", "Session")?.is_empty() {
        return Err(bad(
            "proconsul has no sessions: a prepared query cannot be bound to one",
        ));
    }
    if let Some(template) = object(obj, "template", "Template")?
        && !string_field(template, "type", "Template.Type")?.is_empty()
    {
        return Err(bad(
            "prepared query templates are not supported by proconsul",
        ));
    }
    let service = object(obj, "service", "Service")?
        .ok_or_else(|| bad("Must provide a Service name to query"))?;
    let service_name = string_field(service, "service", "Service.Service")?;
    if service_name.is_empty() {
        return Err(bad("Must provide a Service name to query"));
    }
    let failover = match object(service, "failover", "Service.Failover")? {
        None => Failover::default(),
        Some(f) => {
            let nearest_n = match field(f, "nearestn") {
                None => 0,
                Some(Value::Number(n)) => match n.as_i64() {
                    Some(n) if n < 0 => {
                        return Err(bad(format!("Bad NearestN '{n}', must be >= 0")));
                    }
                    Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                    None => {
                        return Err(bad(
                            "Request decode failed: Service.Failover.NearestN must be an integer",
                        ));
                    }
                },
                Some(_) => {
                    return Err(bad(
                        "Request decode failed: Service.Failover.NearestN must be an integer",
                    ));
                }
            };
            if matches!(field(f, "targets"), Some(Value::Array(t)) if !t.is_empty()) {
                return Err(bad(
                    "Failover.Targets (cluster peering) is not supported by proconsul; use NearestN or Datacenters",
                ));
            }
            Failover {
                nearest_n,
                datacenters: string_list(f, "datacenters", "Service.Failover.Datacenters")?,
            }
        }
    };
    if let Some(connect) = object(service, "connect", "Service.Connect")?
        && bool_field(connect, "enabled", "Service.Connect.Enabled")?
    {
        return Err(bad(
            "proconsul has no service mesh: Connect queries are not supported",
        ));
    }
    if !string_field(service, "peer", "Service.Peer")?.is_empty() {
        return Err(bad("cluster peering is not supported by proconsul"));
    }
    let node_meta = string_map_field(service, "nodemeta", "Service.NodeMeta")?;
    let service_meta = string_map_field(service, "servicemeta", "Service.ServiceMeta")?;
    let dns_ttl = match object(obj, "dns", "DNS")? {
        None => String::new(),
        Some(dns) => string_field(dns, "ttl", "DNS.TTL")?,
    };
    if !dns_ttl.is_empty() && catalog::duration::parse(&dns_ttl).is_err() {
        return Err(bad(format!("Bad DNS TTL '{dns_ttl}'")));
    }
    Ok(PreparedQuery {
        id: String::new(),
        name,
        service: ServiceQuery {
            service: service_name,
            failover,
            only_passing: bool_field(service, "onlypassing", "Service.OnlyPassing")?,
            ignore_check_ids: string_list(service, "ignorecheckids", "Service.IgnoreCheckIDs")?,
            near: string_field(service, "near", "Service.Near")?,
            tags: string_list(service, "tags", "Service.Tags")?,
            node_meta,
            service_meta,
        },
        token: string_field(obj, "token", "Token")?,
        dns_ttl,
        create_index: 0,
        modify_index: 0,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct FailoverJson<'a> {
    nearest_n: usize,
    datacenters: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceQueryJson<'a> {
    service: &'a str,
    failover: FailoverJson<'a>,
    only_passing: bool,
    #[serde(rename = "IgnoreCheckIDs")]
    ignore_check_ids: &'a [String],
    near: &'a str,
    tags: &'a [String],
    node_meta: &'a BTreeMap<String, String>,
    service_meta: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TtlJson<'a> {
    #[serde(rename = "TTL")]
    ttl: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct QueryJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    session: &'a str,
    token: &'a str,
    service: ServiceQueryJson<'a>,
    #[serde(rename = "DNS")]
    dns: TtlJson<'a>,
    create_index: u64,
    modify_index: u64,
}

fn query_json(q: &PreparedQuery) -> QueryJson<'_> {
    let s = &q.service;
    QueryJson {
        id: &q.id,
        name: &q.name,
        session: "",
        token: &q.token,
        service: ServiceQueryJson {
            service: &s.service,
            failover: FailoverJson {
                nearest_n: s.failover.nearest_n,
                datacenters: &s.failover.datacenters,
            },
            only_passing: s.only_passing,
            ignore_check_ids: &s.ignore_check_ids,
            near: &s.near,
            tags: &s.tags,
            node_meta: &s.node_meta,
            service_meta: &s.service_meta,
        },
        dns: TtlJson { ttl: &q.dns_ttl },
        create_index: q.create_index,
        modify_index: q.modify_index,
    }
}

/// `POST /v1/query` (Consul also takes `PUT`): stores a new query, answers its ID.
pub(crate) async fn create(
    State(ctx): State<Context>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut query = definition(&body)?;
    query.id = catalog::uuid::new_uuid();
    let id = query.id.clone();
    let command = Command::SetQuery {
        query: Box::new(query),
        create: true,
    };
    ctx.gateway
        .write(
            params.dc(),
            command,
            Instant::now() + REQUEST_TIMEOUT,
            params.principal(),
        )
        .await?;
    #[derive(Serialize)]
    struct Created {
        #[serde(rename = "ID")]
        id: String,
    }
    Ok(json(&Created { id }, params.pretty()))
}

/// `GET /v1/query`: every stored query.
pub(crate) async fn list(State(ctx): State<Context>, params: Params) -> Result<Response, ApiError> {
    read_queries(&ctx, &params, None).await
}

async fn read_queries(
    ctx: &Context,
    params: &Params,
    key: Option<String>,
) -> Result<Response, ApiError> {
    let request = read_request(params)?;
    let missing_is_404 = key.is_some();
    let query = catalog::Query::PreparedQueries { key };
    let result = ctx
        .gateway
        .read(params.dc(), &query, request.options.clone())
        .await?;
    let catalog::Answer::PreparedQueries(list) = &result.answer else {
        return Ok(super::catalog::unexpected());
    };
    if missing_is_404 && list.is_empty() {
        return Err(missing(result.filtered));
    }
    let mut response = json(
        &list.iter().map(query_json).collect::<Vec<_>>(),
        request.pretty,
    );
    super::add_filtered_header(&mut response, result.filtered);
    add_meta_headers(
        &mut response,
        result.index,
        result.meta,
        request.options.consistency,
    );
    Ok(response)
}

/// Why one asked-for query is not in the answer: the caller may not read it (Consul's
/// bare 403 `Permission denied`, as its prepared-query reads say), or there is none.
fn missing(filtered: bool) -> ApiError {
    if filtered {
        ApiError::Forbidden("Permission denied".into())
    } else {
        ApiError::NotFound(NOT_FOUND.into())
    }
}

/// `GET /v1/query/:id`: one query (by ID or name), as a list of one.
pub(crate) async fn read(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    read_queries(&ctx, &params, Some(id)).await
}

/// `PUT /v1/query/:id`: replaces a stored query.
pub(crate) async fn update(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut query = definition(&body)?;
    query.id = id;
    let command = Command::SetQuery {
        query: Box::new(query),
        create: false,
    };
    ctx.gateway
        .write(
            params.dc(),
            command,
            Instant::now() + REQUEST_TIMEOUT,
            params.principal(),
        )
        .await?;
    Ok(().into_response())
}

/// `DELETE /v1/query/:id`.
pub(crate) async fn delete(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    ctx.gateway
        .write(
            params.dc(),
            Command::DeleteQuery { id },
            Instant::now() + REQUEST_TIMEOUT,
            params.principal(),
        )
        .await?;
    Ok(().into_response())
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ExecuteJson<'a> {
    service: &'a str,
    nodes: Vec<super::json::ServiceHealthJson<'a>>,
    #[serde(rename = "DNS")]
    dns: TtlJson<'a>,
    datacenter: &'a str,
    failovers: usize,
}

/// `GET /v1/query/:id/execute`: runs the query (`?near=`, `?limit=`).
pub(crate) async fn execute(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let near = params.get("near").map(str::to_owned);
    let limit = match params.get("limit") {
        None | Some("") => None,
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| bad(format!("Invalid limit '{l}'")))?,
        ),
    };
    let request = read_request(&params.without(&["near", "limit", "connect"]))?;
    let executed = tokio::select! {
        r = ctx.gateway.execute(params.dc(), &id, near.as_deref(), request.options.clone()) => r?,
        _ = ctx.shutdown.cancelled() => {
            return Err(ApiError::Internal("the agent is shutting down".into()));
        }
    };
    let Some(mut executed) = executed else {
        return Err(ApiError::NotFound(NOT_FOUND.into()));
    };
    if let Some(limit) = limit {
        executed.nodes.truncate(limit);
    }
    let body = ExecuteJson {
        service: &executed.service,
        nodes: executed
            .nodes
            .iter()
            .map(super::json::service_health)
            .collect(),
        dns: TtlJson {
            ttl: &executed.dns_ttl,
        },
        datacenter: &executed.datacenter,
        failovers: executed.failovers,
    };
    let mut response = json(&body, request.pretty);
    super::add_filtered_header(&mut response, executed.filtered);
    add_meta_headers(
        &mut response,
        executed.index,
        executed.meta,
        request.options.consistency,
    );
    Ok(response)
}

/// `GET /v1/query/:id/explain`: the stored definition (proconsul has no templates, so
/// nothing is rendered). Unlike executing, it needs `query:read` (Consul's rule).
pub(crate) async fn explain(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let request = read_request(&params)?;
    let query = catalog::Query::PreparedQueries { key: Some(id) };
    let result = ctx
        .gateway
        .read(params.dc(), &query, request.options)
        .await?;
    let catalog::Answer::PreparedQueries(mut list) = result.answer else {
        return Ok(super::catalog::unexpected());
    };
    let Some(query) = list.pop() else {
        return Err(missing(result.filtered));
    };
    #[derive(Serialize)]
    struct Explained<'a> {
        #[serde(rename = "Query")]
        query: QueryJson<'a>,
    }
    Ok(json(
        &Explained {
            query: query_json(&query),
        },
        request.pretty,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<PreparedQuery, String> {
        definition(body.as_bytes()).map_err(|e| match e {
            ApiError::BadRequest(t) => t,
            other => format!("{other:?}"),
        })
    }

    #[test]
    fn definitions_are_read_case_insensitively_with_consul_checks() {
        let q = parse(
            r#"{"name": "web-q", "Service": {"service": "web", "OnlyPassing": true,
                "Failover": {"NearestN": 2, "Datacenters": ["dc3"]}, "Tags": ["v1", "!old"],
                "NodeMeta": {"rack": "r1"}, "Near": "_agent"}, "DNS": {"TTL": "10s"}}"#,
        )
        .unwrap();
        assert_eq!(q.name, "web-q");
        assert_eq!(q.service.service, "web");
        assert!(q.service.only_passing);
        assert_eq!(q.service.failover.nearest_n, 2);
        assert_eq!(q.service.failover.datacenters, ["dc3"]);
        assert_eq!(q.service.tags, ["v1", "!old"]);
        assert_eq!(q.service.near, "_agent");
        assert_eq!(q.dns_ttl, "10s");
        let q = parse(r#"{"Token": "t-1", "Service": {"Service": "w"}}"#).unwrap();
        assert_eq!(q.token, "t-1");
        for (body, want) in [
            (r#"{"Name": "x"}"#, "Must provide a Service name to query"),
            (
                r#"{"Service": {"Service": ""}}"#,
                "Must provide a Service name to query",
            ),
            (
                r#"{"Service": {"Service": "w", "Failover": {"NearestN": -1}}}"#,
                "Bad NearestN '-1', must be >= 0",
            ),
            (
                r#"{"Name": "8f246b77-f3e1-ff88-5b48-8ec93abf3e05", "Service": {"Service": "w"}}"#,
                "Query name cannot be a UUID",
            ),
            (
                r#"{"Service": {"Service": "w"}, "DNS": {"TTL": "soon"}}"#,
                "Bad DNS TTL 'soon'",
            ),
            (
                r#"{"Service": "w"}"#,
                "Request decode failed: Service must be an object",
            ),
            ("[1]", "Request decode failed: body must be an object"),
            ("{", "Request decode failed"),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.starts_with(want), "{body}: {e}");
        }
        for refused in [
            r#"{"Session": "s", "Service": {"Service": "w"}}"#,
            r#"{"Template": {"Type": "name_prefix_match"}, "Service": {"Service": "w"}}"#,
            r#"{"Service": {"Service": "w", "Connect": {"Enabled": true}}}"#,
            r#"{"Service": {"Service": "w", "Failover": {"Targets": [{"Peer": "p"}]}}}"#,
        ] {
            let e = parse(refused).unwrap_err();
            assert!(
                e.contains("not supported") || e.contains("proconsul has no"),
                "{refused}: {e}"
            );
        }
    }
}
