//! `/v1/health/...`

use axum::extract::{Path, State};
use axum::response::Response;
use catalog::{Answer, Health, Query};

use super::catalog::{read_and_render, read_near_and_render, unexpected};
use super::filter::{self, Filter, schema};
use super::{ApiError, Params, json};
use crate::Context;

/// Renders a list of checks, keeping those `filter` passes.
fn render_checks(filter: Option<Filter>) -> impl FnOnce(&Answer, bool) -> Response {
    move |answer, pretty| match answer {
        Answer::Checks(list) => json(
            &filter::retain(list.iter().map(|c| super::json::check(c)), filter.as_ref()),
            pretty,
        ),
        _ => unexpected(),
    }
}

/// The `?filter=` of a checks endpoint, and the parameters without it.
fn checks_filter(params: &Params) -> Result<(Option<Filter>, Params), ApiError> {
    Ok((
        params.filter(schema::HEALTH_CHECK)?,
        params.without(&["filter"]),
    ))
}

pub(crate) async fn service(
    State(ctx): State<Context>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    if name.is_empty() {
        return Err(ApiError::BadRequest("Missing service name".into()));
    }
    let passing_only = params
        .flag("passing")
        .map_err(|()| ApiError::BadRequest("Invalid value for ?passing".into()))?
        .unwrap_or(false);
    let query = Query::ServiceHealth {
        service: name,
        tags: params.all("tag"),
        passing_only,
        node_meta: params.node_meta()?,
    };
    let filter = params.filter(schema::CHECK_SERVICE_NODE)?;
    let params = params.without(&["filter"]);
    read_near_and_render(&ctx, &params, query, move |answer, pretty| match answer {
        Answer::ServiceHealth(list) => json(
            &filter::retain(
                list.iter().map(super::json::service_health),
                filter.as_ref(),
            ),
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
    let (filter, params) = checks_filter(&params)?;
    read_and_render(
        &ctx,
        &params,
        Query::NodeChecks { node },
        render_checks(filter),
    )
    .await
}

pub(crate) async fn checks(
    State(ctx): State<Context>,
    Path(service): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let (filter, params) = checks_filter(&params)?;
    read_near_and_render(
        &ctx,
        &params,
        Query::ServiceChecks { service },
        render_checks(filter),
    )
    .await
}

pub(crate) async fn state(
    State(ctx): State<Context>,
    Path(state): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let state = match state.as_str() {
        "any" => None,
        other => Some(
            Health::parse(other)
                .ok_or_else(|| ApiError::BadRequest(format!("Unsupported state: {other}")))?,
        ),
    };
    let (filter, params) = checks_filter(&params)?;
    read_near_and_render(
        &ctx,
        &params,
        Query::ChecksInState { state },
        render_checks(filter),
    )
    .await
}
