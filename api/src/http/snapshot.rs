//! `/v1/snapshot`: save the whole catalog to a file, or replace it with one.
//!
//! The file is proconsul's own (a JSON document holding the catalog and the index it was
//! taken at), not Consul's gzipped archive: it restores into proconsul only. A restore
//! goes through Raft like any write, so every server replaces its catalog at the same
//! log index and blocking queries on anything wake. A large one is written in parts
//! (`catalog::RestorePart`), one after the other, and takes effect with the last.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use catalog::acl::{Access, Resource};
use catalog::{Answer, Command, PackedSnapshot, Query, Snapshot};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::catalog::read_and_render;
use super::{ApiError, BodyRead, Params, json, read_limited};
use crate::Context;

/// Largest snapshot accepted by a restore, in bytes: three times a save of Consul's
/// benchmark catalog (10,000 nodes, 170,000 instances with a check each: 80 MiB). The
/// Raft command carries it packed (that catalog: about a fifteenth of it).
pub(crate) const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;
/// Restores an agent takes in at once: a body is read only once it is a restore's turn,
/// so that concurrent restores hold one snapshot's memory (several times its size while
/// it is parsed and packed), not one each.
static RESTORES: Semaphore = Semaphore::const_new(1);
/// How long a restore may take to commit.
const RESTORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// What a snapshot file says it is.
const FORMAT: &str = "proconsul-snapshot";

/// A snapshot file as a restore reads it. Its `Datacenter` (the one it was saved in) is
/// not checked: a snapshot may be restored into another datacenter, as in Consul.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SnapshotFile {
    format: String,
    version: u32,
    catalog: Snapshot,
}

/// A [`SnapshotFile`] to write, borrowing the catalog (80 MiB of JSON at 170,000
/// instances: not copied).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SnapshotFileOut<'a> {
    format: &'a str,
    version: u32,
    datacenter: &'a str,
    catalog: &'a Snapshot,
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
            Answer::Snapshot(s) => match s.snapshot() {
                Ok(catalog) => {
                    let file = SnapshotFileOut {
                        format: FORMAT,
                        version: 1,
                        datacenter: &dc,
                        catalog,
                    };
                    json(&file, pretty)
                }
                Err(e) => {
                    ApiError::Internal(format!("the snapshot did not unpack: {e}")).into_response()
                }
            },
            _ => ApiError::Internal("unexpected answer to a snapshot read".into()).into_response(),
        },
    )
    .await
}

/// `PUT /v1/snapshot`: replaces the catalog with the snapshot in the body.
pub(crate) async fn restore(
    State(ctx): State<Context>,
    params: Params,
    body: Body,
) -> Result<Response, ApiError> {
    // The servers decide the write; asking first here keeps a caller without the
    // right from learning anything from the body's checks (Consul refuses before it
    // reads the snapshot).
    if params.dc().is_none() {
        super::gate::require(&ctx, &params, Resource::Acl, "", Access::Write).await?;
    }
    let deadline = Instant::now() + RESTORE_TIMEOUT;
    let _turn = tokio::time::timeout_at(deadline, RESTORES.acquire())
        .await
        .map_err(|_| {
            ApiError::TooManyRequests(
                "another snapshot restore is in progress on this agent; retry later".into(),
            )
        })?
        .map_err(|_| ApiError::Internal("the agent is shutting down".into()))?;
    let body = match read_limited(body, MAX_SNAPSHOT_BYTES).await {
        Ok(body) => body,
        Err(BodyRead::TooLarge) => {
            return Err(ApiError::TooLarge(format!(
                "Request body too large: a snapshot may hold at most {MAX_SNAPSHOT_BYTES} bytes"
            )));
        }
        Err(BodyRead::Failed(why)) => return Err(ApiError::BadRequest(why)),
    };
    // Parsing, checking and packing an 80 MiB snapshot takes seconds: not on a runtime
    // thread, where it would hold up every other request (and a server's Raft timers).
    let restore: u64 = rand::random();
    let commands = tokio::task::spawn_blocking(move || restore_commands(&body, restore))
        .await
        .map_err(|e| ApiError::Internal(format!("the restore's check failed: {e}")))??;
    // In order, each once the one before is applied; a part that fails leaves the
    // catalog as it was (a later restore starts its parts over).
    for command in commands {
        ctx.gateway
            .write(params.dc(), command, deadline, params.principal())
            .await?;
    }
    Ok(StatusCode::OK.into_response())
}

/// The catalog changes a restore body makes, in order (several parts when it is large),
/// or why it is not a snapshot this agent can restore (400).
fn restore_commands(body: &[u8], restore: u64) -> Result<Vec<Command>, ApiError> {
    match restore_command(body)? {
        Command::Restore(snapshot) => snapshot
            .into_commands(restore)
            .map_err(|e| ApiError::Internal(format!("the snapshot could not be packed: {e}"))),
        other => Ok(vec![other]),
    }
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
    let snapshot = PackedSnapshot::new(file.catalog);
    snapshot
        .pack()
        .map_err(|e| ApiError::Internal(format!("the snapshot could not be packed: {e}")))?;
    Ok(Command::Restore(snapshot))
}
