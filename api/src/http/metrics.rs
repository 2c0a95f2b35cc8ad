//! `GET /v1/agent/metrics`: the agent's metrics in Consul's JSON, or in Prometheus's
//! text format with `?format=prometheus` (or an `Accept` asking for OpenMetrics text).

use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use catalog::acl::Access;

use super::{ApiError, Params, gate, json};
use crate::Context;

/// Prometheus's text format version 0.0.4.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) async fn metrics(
    State(ctx): State<Context>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    gate::require_agent(&ctx, &params, Access::Read).await?;
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let prometheus = match params.get("format") {
        None | Some("") => openmetrics,
        Some("prometheus") => true,
        Some("json") => false,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "Unknown format {other:?}: use format=prometheus, or no format for JSON"
            )));
        }
    };
    if !prometheus {
        return Ok(json(&ctx.telemetry.summary(), params.pretty()));
    }
    if ctx.agent.prometheus_retention.is_zero() {
        return Ok((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            crate::telemetry::PROMETHEUS_DISABLED,
        )
            .into_response());
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        ctx.telemetry.prometheus(),
    )
        .into_response())
}

/// Timers of `api.http` by route, then method, registered on first use (bounded by
/// the routes: only requests that matched one are timed).
type HttpTimers = HashMap<String, Vec<(Method, metrics::Histogram)>>;
static HTTP_TIMERS: LazyLock<RwLock<HttpTimers>> = LazyLock::new(|| RwLock::new(HashMap::new()));

/// Most routes timed (the router has fewer).
const MAX_HTTP_ROUTES: usize = 512;

/// Times each request that matched a route as `api.http{method, path}`, the path
/// labelled as Consul labels its handlers (`/v1/catalog/service/:name` →
/// `v1_catalog_service__`).
pub(crate) async fn record_http(request: Request, next: Next) -> Response {
    let start = std::time::Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    if let Some(route) = route
        && let Some(timer) = http_timer(&method, route.as_str())
    {
        timer.record(crate::telemetry::millis_since(start));
    }
    response
}

fn http_timer(method: &Method, route: &str) -> Option<metrics::Histogram> {
    let find = |all: &HttpTimers| {
        all.get(route)?
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, t)| t.clone())
    };
    if let Some(t) = find(&HTTP_TIMERS.read().unwrap_or_else(|p| p.into_inner())) {
        return Some(t);
    }
    let mut all = HTTP_TIMERS.write().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = find(&all) {
        return Some(t);
    }
    if all.len() >= MAX_HTTP_ROUTES && !all.contains_key(route) {
        return None;
    }
    let timer = metrics::histogram!(
        "api.http",
        "method" => method.to_string(),
        "path" => path_label(route)
    );
    all.entry(route.to_string())
        .or_default()
        .push((method.clone(), timer.clone()));
    Some(timer)
}

/// Consul's `path` label of a route: the part before its first parameter, split on
/// `/`, a trailing `/` (a parameter follows) kept as `_`, joined with `_`.
fn path_label(route: &str) -> String {
    let fixed = route.split('{').next().unwrap_or(route);
    let parts: Vec<&str> = fixed
        .split('/')
        .enumerate()
        .filter(|(i, p)| *i > 0 || !p.is_empty())
        .map(|(_, p)| if p.is_empty() { "_" } else { p })
        .collect();
    parts.join("_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_labelled_as_consul_labels_its_handlers() {
        assert_eq!(path_label("/v1/agent/self"), "v1_agent_self");
        assert_eq!(
            path_label("/v1/catalog/service/{name}"),
            "v1_catalog_service__"
        );
        assert_eq!(path_label("/v1/kv/{*key}"), "v1_kv__");
        assert_eq!(path_label("/v1/query/{id}/execute"), "v1_query__");
        assert_eq!(path_label("/"), "_");
    }
}
