//! `/v1/health/...`

use axum::extract::{Path, State};
use axum::response::Response;
use catalog::{Answer, Health, Query};

use super::catalog::{read_and_render, read_near_and_render, unexpected};
use super::{ApiError, Params, json};
use crate::Context;

fn render_checks(answer: &Answer, pretty: bool) -> Response {
    match answer {
        Answer::Checks(list) => json(
            &list.iter().map(super::json::check).collect::<Vec<_>>(),
            pretty,
        ),
        _ => unexpected(),
    }
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
    read_near_and_render(&ctx, &params, query, |answer, pretty| match answer {
        Answer::ServiceHealth(list) => json(
            &list
                .iter()
                .map(super::json::service_health)
                .collect::<Vec<_>>(),
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
    read_and_render(&ctx, &params, Query::NodeChecks { node }, render_checks).await
}

pub(crate) async fn checks(
    State(ctx): State<Context>,
    Path(service): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    read_near_and_render(
        &ctx,
        &params,
        Query::ServiceChecks { service },
        render_checks,
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
    read_near_and_render(&ctx, &params, Query::ChecksInState { state }, render_checks).await
}
