//! `/v1/snapshot`: save the whole catalog to a file, or replace it with one.
//!
//! The file is proconsul's own (a JSON document holding the catalog and the index it was
//! taken at), not Consul's gzipped archive: it restores into proconsul only. A restore
//! goes through Raft like any write, so every server replaces its catalog at the same
//! log index and blocking queries on anything wake.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use catalog::acl::{Access, Resource};
use catalog::{Answer, Command, Query, Snapshot};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::catalog::read_and_render;
use super::{ApiError, Params, json};
use crate::Context;

/// Largest snapshot accepted by a restore, in bytes.
pub(crate) const MAX_SNAPSHOT_BYTES: usize = 32 * 1024 * 1024;
/// How long a restore may take to commit.
const RESTORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// What a snapshot file says it is.
const FORMAT: &str = "proconsul-snapshot";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SnapshotFile {
    format: String,
    version: u32,
    datacenter: String,
    catalog: Snapshot,
}

/// `GET /v1/snapshot`: the catalog as a snapshot file.
pub(crate) async fn save(State(ctx): State<Context>, params: Params) -> Result<Response, ApiError> {
    let dc = params
        .dc()
        .map(str::to_owned)
        .unwrap_or_else(|| ctx.agent.datacenter.clone());
    read_and_render(
        &ctx,
        &params,
        Query::Snapshot,
        |answer, pretty| match answer {
            Answer::Snapshot(s) => {
                let file = SnapshotFile {
                    format: FORMAT.into(),
                    version: 1,
                    datacenter: dc.clone(),
                    catalog: (**s).clone(),
                };
                json(&file, pretty)
            }
            _ => ApiError::Internal("unexpected answer to a snapshot read".into()).into_response(),
        },
    )
    .await
}

/// `PUT /v1/snapshot`: replaces the catalog with the snapshot in the body.
pub(crate) async fn restore(
    State(ctx): State<Context>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    // The servers decide the write; asking first here keeps a caller without the
    // right from learning anything from the body's checks (Consul refuses before it
    // reads the snapshot).
    if params.dc().is_none() {
        super::gate::require(&ctx, &params, Resource::Acl, "", Access::Write).await?;
    }
    let command = restore_command(&body)?;
    ctx.gateway
        .write(
            params.dc(),
            command,
            Instant::now() + RESTORE_TIMEOUT,
            params.principal(),
        )
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// The catalog change a restore body makes, or why it is not a snapshot this agent can
/// restore (400).
pub(crate) fn restore_command(body: &[u8]) -> Result<Command, ApiError> {
    let file: SnapshotFile = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!("Request decode failed: not a snapshot file: {e}"))
    })?;
    if file.format != FORMAT || file.version != 1 {
        return Err(ApiError::BadRequest(format!(
            "Request decode failed: unsupported snapshot format {:?} version {}",
            file.format, file.version
        )));
    }
    file.catalog.validate().map_err(|e| {
        ApiError::BadRequest(format!("Request decode failed: invalid snapshot: {e}"))
    })?;
    Ok(Command::Restore(Box::new(file.catalog)))
}
