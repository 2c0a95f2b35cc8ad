//! `/v1/operator/keyring`: gossip keys across the pool.
//!
//! Every operation runs on every live member of the WAN pool and of the LAN pool of every
//! datacenter (one server of each datacenter runs it there); `?local-only` lists the
//! local LAN pool only. A client agent asks a server of its datacenter to run it, and a
//! server outside any federation runs it on its LAN pool. The answer has one entry per
//! pool in Consul's shape (`WAN`, `Datacenter`, `Keys`, `PrimaryKeys`, `NumNodes`).
//! Unlike Consul, a listing where some member did not answer still succeeds with what the
//! others said, and names the silent members in `Messages`; a change that any member
//! refused fails with Consul's per-pool error text.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gateway::PoolKeyring;
use gossip::KeyOperation;
use gossip::keyring::Key;
use serde::Serialize;
use tokio::time::Instant;

use catalog::acl::{Access, Resource};

use super::{ApiError, Params, json, parse_body};
use crate::Context;

/// How long members have to answer a keyring operation.
pub(crate) const KEYRING_TIMEOUT: Duration = Duration::from_secs(5);

/// One pool's answer, as Consul's `KeyringResponse`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PoolKeys<'a> {
    #[serde(rename = "WAN")]
    wan: bool,
    datacenter: &'a str,
    segment: &'a str,
    messages: &'a BTreeMap<String, String>,
    keys: &'a BTreeMap<String, usize>,
    primary_keys: &'a BTreeMap<String, usize>,
    num_nodes: usize,
}

fn check_params(params: &Params, write: bool) -> Result<(), ApiError> {
    if write && params.get("local-only").is_some() {
        return Err(ApiError::BadRequest(
            "local-only can only be set for list requests".into(),
        ));
    }
    if let Some(r) = params.get("relay-factor") {
        match r.parse::<u8>() {
            Ok(n) if n <= 5 => {}
            _ => {
                return Err(ApiError::BadRequest(
                    "Relay factor must be in range: [0, 5]".into(),
                ));
            }
        }
    }
    Ok(())
}

pub(crate) fn key_from_body(body: &[u8]) -> Result<String, ApiError> {
    let value = parse_body(body)?;
    let key = value
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("key")))
        .and_then(|(_, v)| v.as_str())
        .ok_or_else(|| {
            ApiError::BadRequest("Request decode failed: the body needs a \"Key\"".into())
        })?;
    Key::parse(key).map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))?;
    Ok(key.to_owned())
}

async fn run(
    ctx: &Context,
    op: KeyOperation,
    local_only: bool,
) -> Result<Vec<PoolKeyring>, ApiError> {
    Ok(ctx
        .gateway
        .keyring(op, local_only, Instant::now() + KEYRING_TIMEOUT)
        .await?)
}

/// Consul's error text for a pool where some member failed (or that could not be
/// asked).
fn pool_error(pool: &PoolKeyring) -> String {
    if let Some(e) = &pool.error {
        return format!("{} error: {e}", pool.label());
    }
    let report = &pool.report;
    let mut text = format!(
        "{} error: {}/{} nodes reported failure",
        pool.label(),
        report.num_err,
        report.num_nodes
    );
    for (node, message) in &report.messages {
        text.push_str(&format!("\n  {node}: {message}"));
    }
    text
}

fn errors(pools: &[PoolKeyring], failed: impl Fn(&PoolKeyring) -> bool) -> Result<(), ApiError> {
    let text: Vec<String> = pools.iter().filter(|p| failed(p)).map(pool_error).collect();
    if text.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Internal(text.join("\n")))
    }
}

pub(crate) async fn list(State(ctx): State<Context>, params: Params) -> Result<Response, ApiError> {
    check_params(&params, false)?;
    super::gate::require(&ctx, &params, Resource::Keyring, "", Access::Read).await?;
    let pools = run(&ctx, KeyOperation::List, params.get("local-only").is_some()).await?;
    // A listing fails only for a pool where nobody answered.
    errors(&pools, |p| p.error.is_some() || p.report.num_resp == 0)?;
    let shown: Vec<PoolKeys> = pools
        .iter()
        .map(|p| PoolKeys {
            wan: p.wan,
            datacenter: &p.datacenter,
            segment: "",
            messages: &p.report.messages,
            keys: &p.report.keys,
            primary_keys: &p.report.primary_keys,
            num_nodes: p.report.num_nodes,
        })
        .collect();
    Ok(json(&shown, params.pretty()))
}

async fn change(
    ctx: Context,
    params: Params,
    body: Bytes,
    op: impl FnOnce(String) -> KeyOperation,
) -> Result<Response, ApiError> {
    check_params(&params, true)?;
    super::gate::require(&ctx, &params, Resource::Keyring, "", Access::Write).await?;
    let key = key_from_body(&body)?;
    let pools = run(&ctx, op(key), false).await?;
    errors(&pools, |p| p.error.is_some() || p.report.num_err > 0)?;
    Ok(StatusCode::OK.into_response())
}

pub(crate) async fn install(
    State(ctx): State<Context>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    change(ctx, params, body, KeyOperation::Install).await
}

pub(crate) async fn use_key(
    State(ctx): State<Context>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    change(ctx, params, body, KeyOperation::Use).await
}

pub(crate) async fn remove(
    State(ctx): State<Context>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    change(ctx, params, body, KeyOperation::Remove).await
}
