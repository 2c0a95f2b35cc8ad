//! `/v1/status/...`

use axum::extract::{RawQuery, State};
use axum::response::Response;

use tokio::time::Instant;

use super::{ApiError, Params, REQUEST_TIMEOUT, json};
use crate::Context;

pub(crate) async fn leader(
    State(ctx): State<Context>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let status = ctx
        .gateway
        .raft_status(params.dc(), Instant::now() + REQUEST_TIMEOUT)
        .await?;
    Ok(json(&status.leader.unwrap_or_default(), params.pretty()))
}

pub(crate) async fn peers(
    State(ctx): State<Context>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let status = ctx
        .gateway
        .raft_status(params.dc(), Instant::now() + REQUEST_TIMEOUT)
        .await?;
    Ok(json(&status.peers, params.pretty()))
}
