//! `/v1/status/...`

use axum::extract::State;
use axum::response::Response;

use tokio::time::Instant;

use catalog::acl::{Access, Resource};

use super::{ApiError, Params, REQUEST_TIMEOUT, gate, json};
use crate::Context;

/// The Raft status of the datacenter the request names.
async fn raft_status(ctx: &Context, params: &Params) -> Result<catalog::RaftStatus, ApiError> {
    Ok(ctx
        .gateway
        .raft_status(params.dc(), Instant::now() + REQUEST_TIMEOUT)
        .await?)
}

pub(crate) async fn leader(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    let status = raft_status(&ctx, &params).await?;
    Ok(json(&status.leader.unwrap_or_default(), params.pretty()))
}

pub(crate) async fn peers(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
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
    params: Params,
) -> Result<Response, ApiError> {
    gate::require(&ctx, &params, Resource::Operator, "", Access::Read).await?;
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

/// `DELETE /v1/operator/raft/peer?id=ID` or `?address=IP:PORT`: removes a server that is
/// gone for good from this datacenter's Raft configuration (on the leader).
pub(crate) async fn raft_remove_peer(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    gate::require(&ctx, &params, Resource::Operator, "", Access::Write).await?;
    if !ctx.gateway.is_local(params.dc()) {
        return Err(ApiError::BadRequest(
            "removing a Raft peer of another datacenter is not supported by proconsul: \
             ask an agent of that datacenter"
                .into(),
        ));
    }
    let given = |key: &str| params.get(key).filter(|v| !v.is_empty()).map(str::to_owned);
    let peer = match (given("id"), given("address")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "Must specify only one of ?id or ?address".into(),
            ));
        }
        (Some(id), None) => lan::RaftPeer::Id(id),
        (None, Some(address)) => lan::RaftPeer::Address(address),
        (None, None) => {
            return Err(ApiError::BadRequest(
                "Must specify either ?id with the server's ID or ?address with IP:port of peer to remove"
                    .into(),
            ));
        }
    };
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    tokio::select! {
        r = ctx.gateway.lan().remove_raft_peer(peer, deadline) => {
            r.map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        _ = ctx.shutdown.cancelled() => {
            return Err(ApiError::Internal("the agent is shutting down".into()));
        }
    }
    Ok(axum::response::IntoResponse::into_response(()))
}
