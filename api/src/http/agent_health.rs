//! `GET /v1/agent/health/service/id/:id` and `/v1/agent/health/service/name/:name`: the
//! health of this agent's own service instances, for load balancers that probe the
//! agent beside each instance.
//!
//! Answered from the agent's local state, with no server round trip: it works while the
//! servers are away, and its cost does not grow with the catalog. The status code says
//! the health (Consul's mapping): 200 passing, 429 warning, 503 critical or maintenance,
//! 404 no such instance. An instance's health aggregates its own checks and the node's
//! checks; maintenance wins over critical, critical over warning, warning over passing,
//! and no check at all is passing.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use catalog::acl::{Access, Resource};
use catalog::{Check, Health, Service};
use serde::Serialize;

use super::{ApiError, Params, gate, json};
use crate::Context;

/// The aggregated status of an instance in maintenance (Consul's word).
const MAINTENANCE: &str = "maintenance";

/// What one instance looks like to a load balancer (Consul's `AgentServiceChecksInfo`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ChecksInfo<'a> {
    aggregated_status: &'static str,
    service: Option<json::ServiceJson<'a>>,
    checks: Option<Vec<json::CheckJson<'a>>>,
}

/// The worst of `checks` by Consul's order: maintenance, critical, warning, passing
/// (also for no checks).
pub(crate) fn aggregate<'a>(checks: impl IntoIterator<Item = &'a Check>) -> &'static str {
    let (mut maintenance, mut critical, mut warning) = (false, false, false);
    for c in checks {
        if c.check_id == lan::NODE_MAINTENANCE_CHECK
            || c.check_id.starts_with(lan::SERVICE_MAINTENANCE_PREFIX)
        {
            maintenance = true;
            continue;
        }
        match c.status {
            Health::Critical => critical = true,
            Health::Warning => warning = true,
            Health::Passing => {}
        }
    }
    if maintenance {
        MAINTENANCE
    } else if critical {
        Health::Critical.as_str()
    } else if warning {
        Health::Warning.as_str()
    } else {
        Health::Passing.as_str()
    }
}

/// The status code a load balancer reads from an aggregated status.
fn code(status: &str) -> StatusCode {
    match status {
        "passing" => StatusCode::OK,
        "warning" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Whether the answer is the status word alone: `Accept: text/plain…`, else
/// `?format=text`.
fn wants_text(headers: &HeaderMap, params: &Params) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.starts_with("text/plain") {
        return true;
    }
    params.get("format").is_some_and(|f| f == "text")
}

/// A response with `code`, Consul's `X-Consul-Reason` header, and either the reason as
/// plain text or `body` as JSON.
fn answer<T: Serialize>(
    code: StatusCode,
    reason: &str,
    text: bool,
    body: &T,
    pretty: bool,
) -> Response {
    let mut response = if text {
        ([(header::CONTENT_TYPE, "text/plain")], reason.to_owned()).into_response()
    } else {
        json(body, pretty)
    };
    *response.status_mut() = code;
    if let Ok(v) = HeaderValue::from_str(reason) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-consul-reason"), v);
    }
    response
}

/// The checks that decide instance `id`'s health: its own and the node's.
fn checks_of<'a>(checks: &'a [Check], id: &'a str) -> impl Iterator<Item = &'a Check> + 'a {
    checks
        .iter()
        .filter(move |c| c.service_id.is_empty() || c.service_id == id)
}

fn info<'a>(
    service: &'a Service,
    checks: &'a [Check],
    dc: &'a str,
) -> (ChecksInfo<'a>, &'static str) {
    let status = aggregate(checks_of(checks, &service.id));
    let info = ChecksInfo {
        aggregated_status: status,
        service: Some(json::agent_service(service, dc)),
        checks: Some(checks_of(checks, &service.id).map(json::check).collect()),
    };
    (info, status)
}

/// `GET /v1/agent/health/service/id/:id`: one instance; needs `service:read` on it.
pub(crate) async fn by_id(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let text = wants_text(&headers, &params);
    let local = ctx.lan.local();
    let Some(service) = local.service(&id) else {
        let reason = format!("ServiceId {id} not found");
        let empty = ChecksInfo {
            aggregated_status: Health::Critical.as_str(),
            service: None,
            checks: None,
        };
        return Ok(answer(
            StatusCode::NOT_FOUND,
            &reason,
            text,
            &empty,
            params.pretty(),
        ));
    };
    gate::require(
        &ctx,
        &params,
        Resource::Service,
        &service.name,
        Access::Read,
    )
    .await?;
    let checks = local.checks();
    let (info, status) = info(&service, &checks, &ctx.agent.datacenter);
    Ok(answer(code(status), status, text, &info, params.pretty()))
}

/// `GET /v1/agent/health/service/name/:name`: every instance of a service on this
/// agent, answered with the worst code among them; needs `service:read` on the name.
pub(crate) async fn by_name(
    State(ctx): State<Context>,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    gate::require(&ctx, &params, Resource::Service, &name, Access::Read).await?;
    let text = wants_text(&headers, &params);
    let local = ctx.lan.local();
    let services: Vec<Service> = local
        .services()
        .into_iter()
        .filter(|s| s.name == name)
        .collect();
    let checks = local.checks();
    let mut worst: Option<(StatusCode, &'static str)> = None;
    let mut list = Vec::with_capacity(services.len());
    for service in &services {
        let (info, status) = info(service, &checks, &ctx.agent.datacenter);
        let c = code(status);
        if worst.is_none_or(|(w, _)| w.as_u16() < c.as_u16()) {
            worst = Some((c, status));
        }
        list.push(info);
    }
    let response = match worst {
        Some((c, status)) => answer(c, status, text, &list, params.pretty()),
        None => {
            let reason = format!("ServiceName {name} Not Found");
            answer(StatusCode::NOT_FOUND, &reason, text, &list, params.pretty())
        }
    };
    Ok(response)
}

/// `…/service/id/` with no ID (Consul's answer).
pub(crate) async fn id_missing() -> ApiError {
    ApiError::BadRequest("Missing serviceID".into())
}

/// `…/service/name/` with no name (Consul's answer).
pub(crate) async fn name_missing() -> ApiError {
    ApiError::BadRequest("Missing service Name".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: &str, status: Health) -> Check {
        Check {
            check_id: id.into(),
            status,
            ..Check::default()
        }
    }

    #[test]
    fn maintenance_beats_critical_beats_warning_beats_passing() {
        use Health::*;
        /// Checks by ID and status; the status and code they aggregate to.
        type Case<'a> = (&'a [(&'a str, Health)], &'a str, u16);
        let cases: &[Case] = &[
            (&[], "passing", 200),
            (&[("a", Passing)], "passing", 200),
            (&[("a", Passing), ("b", Warning)], "warning", 429),
            (&[("a", Critical), ("b", Warning)], "critical", 503),
            (
                &[("_node_maintenance", Critical), ("b", Passing)],
                "maintenance",
                503,
            ),
            (
                &[("_service_maintenance:web", Critical)],
                "maintenance",
                503,
            ),
        ];
        for (checks, status, status_code) in cases {
            let list: Vec<Check> = checks.iter().map(|(id, h)| check(id, *h)).collect();
            let got = aggregate(&list);
            assert_eq!(
                (got, code(got).as_u16()),
                (*status, *status_code),
                "{checks:?}"
            );
        }
    }

    #[test]
    fn text_is_asked_by_accept_header_first_then_format() {
        let mut text = HeaderMap::new();
        text.insert(header::ACCEPT, HeaderValue::from_static("text/plain; q=1"));
        let none = HeaderMap::new();
        assert!(wants_text(&text, &Params::parse(Some("format=json"))));
        assert!(wants_text(&none, &Params::parse(Some("format=text"))));
        assert!(!wants_text(&none, &Params::parse(Some("format=json"))));
        assert!(!wants_text(&none, &Params::parse(None)));
    }
}
