//! `/v1/status/...`

use axum::extract::{RawQuery, State};
use axum::response::Response;

use tokio::time::Instant;

use super::{ApiError, Params, REQUEST_TIMEOUT, json};
use crate::Context;

/// The Raft status of the datacenter the request names.
async fn raft_status(ctx: &Context, params: &Params) -> Result<lan::RaftStatus, ApiError> {
    Ok(ctx
        .gateway
        .raft_status(params.dc(), Instant::now() + REQUEST_TIMEOUT)
        .await?)
}

pub(crate) async fn leader(
    State(ctx): State<Context>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let status = raft_status(&ctx, &params).await?;
    Ok(json(&status.leader.unwrap_or_default(), params.pretty()))
}

pub(crate) async fn peers(
    State(ctx): State<Context>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let status = raft_status(&ctx, &params).await?;
    Ok(json(&status.peers, params.pretty()))
}

/// One server as `/v1/operator/raft/configuration` shows it.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct RaftServerJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    node: &'a str,
    address: &'a str,
    leader: bool,
    protocol_version: &'a str,
    voter: bool,
    last_index: u64,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct RaftConfigurationJson<'a> {
    servers: Vec<RaftServerJson<'a>>,
    index: u64,
}

/// `GET /v1/operator/raft/configuration`: the servers of the Raft configuration.
pub(crate) async fn raft_configuration(
    State(ctx): State<Context>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let status = raft_status(&ctx, &params).await?;
    let body = RaftConfigurationJson {
        servers: status
            .servers
            .iter()
            .map(|s| RaftServerJson {
                id: &s.node.node_id,
                node: &s.node.name,
                address: &s.node.rpc_addr,
                leader: s.leader,
                protocol_version: "3",
                voter: s.voter,
                last_index: if s.leader { status.last_log_index } else { 0 },
            })
            .collect(),
        index: status.configuration_index,
    };
    Ok(json(&body, params.pretty()))
}
