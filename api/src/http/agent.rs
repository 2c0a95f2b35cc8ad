//! `/v1/agent/...`: this agent's own view and its services and checks.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use catalog::Health;
use lan::{LocalError, Source};
use serde_json::{Value, json as json_value};

use super::filter::{self, schema};
use super::{ApiError, Params, gate, json, parse_body};
use crate::Context;
use crate::definition::{self, Style, fold_key};
use catalog::acl::{Access, Resource};

/// How long `/v1/agent/reload` waits for the agent to re-read its config.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

fn local_error(e: LocalError) -> ApiError {
    match e {
        LocalError::UnknownService(_)
        | LocalError::UnknownCheck(_)
        | LocalError::NoSuchService(_) => ApiError::NotFound(e.to_string()),
        LocalError::ScriptsDisabled | LocalError::Reserved(_) | LocalError::CaseClash(..) => {
            ApiError::BadRequest(e.to_string())
        }
        LocalError::NotTtl(_) => ApiError::Internal(e.to_string()),
    }
}

fn empty_ok() -> Response {
    StatusCode::OK.into_response()
}

pub(crate) async fn self_info(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    gate::require_agent(&ctx, &params, Access::Read).await?;
    let info = &ctx.agent;
    let raft = if ctx.lan.is_server() {
        ctx.gateway
            .raft_status(None, tokio::time::Instant::now() + super::REQUEST_TIMEOUT)
            .await
            .ok()
    } else {
        None
    };
    let known_datacenters = ctx.gateway.datacenters().await.len();
    let members = ctx.lan.members();
    let me = members.iter().find(|m| m.name == info.node_name);
    let local = ctx.lan.local();
    let body = json_value!({
        "Config": {
            "Datacenter": info.datacenter,
            "PrimaryDatacenter": info.datacenter,
            "NodeName": info.node_name,
            "NodeID": info.node_id,
            "Revision": info.revision,
            "Server": info.server,
            "Version": info.version,
            "BuildDate": "",
        },
        "DebugConfig": info.debug_config,
        "Coord": Value::Null,
        "Member": me.map(super::json::member),
        "Meta": ctx.lan.local().node().meta,
        "Stats": {
            "agent": {
                "checks": local.checks().len().to_string(),
                "services": local.services().len().to_string(),
            },
            "build": {
                "version": info.version,
                "revision": info.revision,
                "prerelease": "",
            },
            "consul": {
                "server": info.server.to_string(),
                "leader": raft
                    .as_ref()
                    .is_some_and(|r| r.leader.is_some() && r.leader == ctx.lan.server_addr().map(|a| a.to_string()))
                    .to_string(),
                "leader_addr": raft.as_ref().and_then(|r| r.leader.clone()).unwrap_or_default(),
                "known_datacenters": known_datacenters.to_string(),
                "bootstrap": info.bootstrap.to_string(),
            },
            "raft": raft.as_ref().map(|r| json_value!({
                "state": r.state,
                "term": r.term.to_string(),
                "last_log_index": r.last_log_index.to_string(),
                "applied_index": r.applied_index.to_string(),
                "num_peers": r.peers.len().saturating_sub(1).to_string(),
            })),
            "serf_lan": {
                "members": members.len().to_string(),
                "failed": members.iter().filter(|m| m.status == gossip::MemberStatus::Failed).count().to_string(),
                "left": members.iter().filter(|m| m.status == gossip::MemberStatus::Left).count().to_string(),
                "encrypted": ctx.lan.encrypted().to_string(),
            },
            "runtime": {
                "os": std::env::consts::OS,
                "arch": std::env::consts::ARCH,
                "cpu_count": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string(),
            },
        },
    });
    Ok(json(&body, params.pretty()))
}

pub(crate) async fn members(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    let filter = params.filter(schema::MEMBER)?;
    params.without(&["filter"]).refuse_unsupported()?;
    let caller = gate::caller(&ctx, &params).await?;
    let members = if wan(&params) {
        ctx.gateway.federation()?.members()
    } else {
        ctx.lan.members()
    };
    let visible = |name: &str| {
        caller
            .as_ref()
            .is_none_or(|c| c.may(Resource::Node, name, Access::Read))
    };
    let list: Vec<_> = members
        .iter()
        .filter(|m| visible(&m.name))
        .map(super::json::member)
        .collect();
    // ACLs first, so that the header tells only what they left out (Consul's order).
    let acl_filtered = list.len() != members.len();
    let list = filter::retain(list, filter.as_ref());
    let mut response = json(&list, params.pretty());
    super::add_filtered_header(&mut response, acl_filtered);
    Ok(response)
}

pub(crate) async fn services(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    let filter = params.filter(schema::AGENT_SERVICE)?;
    params.without(&["filter"]).refuse_unsupported()?;
    let caller = gate::caller(&ctx, &params).await?;
    let services = ctx.lan.local().services();
    let dc = ctx.agent.datacenter.as_str();
    let readable: Vec<_> = services
        .iter()
        .filter(|s| {
            caller
                .as_ref()
                .is_none_or(|c| c.may(Resource::Service, &s.name, Access::Read))
        })
        .map(|s| (s.id.as_str(), super::json::agent_service(s, dc)))
        .collect();
    let hidden = readable.len() != services.len();
    let map: BTreeMap<&str, _> = readable
        .into_iter()
        .filter(|(_, s)| filter.as_ref().is_none_or(|f| f.keeps(s)))
        .collect();
    let mut response = json(&map, params.pretty());
    super::add_filtered_header(&mut response, hidden);
    Ok(response)
}

pub(crate) async fn service(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let service = ctx
        .lan
        .local()
        .service(&id)
        .ok_or_else(|| ApiError::NotFound(format!("unknown service ID: {id}")))?;
    gate::require(
        &ctx,
        &params,
        Resource::Service,
        &service.name,
        Access::Read,
    )
    .await?;
    let dc = ctx.agent.datacenter.as_str();
    Ok(json(
        &super::json::agent_service(&service, dc),
        params.pretty(),
    ))
}

pub(crate) async fn checks(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    let filter = params.filter(schema::HEALTH_CHECK)?;
    params.without(&["filter"]).refuse_unsupported()?;
    let caller = gate::caller(&ctx, &params).await?;
    let checks = ctx.lan.local().checks();
    let readable: Vec<_> = checks
        .iter()
        .filter(|c| caller.as_ref().is_none_or(|a| gate::may_read_check(a, c)))
        .map(|c| (c.check_id.as_str(), super::json::check(c)))
        .collect();
    let hidden = readable.len() != checks.len();
    let map: BTreeMap<&str, _> = readable
        .into_iter()
        .filter(|(_, c)| filter.as_ref().is_none_or(|f| f.keeps(c)))
        .collect();
    let mut response = json(&map, params.pretty());
    super::add_filtered_header(&mut response, hidden);
    Ok(response)
}

/// Consul's refusal of a script check registered through the API (its text, and its
/// status: 500, as for any error its handlers do not map).
const REMOTE_SCRIPTS_DISABLED: &str = "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true";

/// Script checks through the API need `enable_script_checks` (config files may also use
/// `enable_local_script_checks`): a check that runs commands is remote code execution.
fn refuse_api_scripts(ctx: &Context, checks: &[lan::CheckDefinition]) -> Result<(), ApiError> {
    let scripts = checks
        .iter()
        .any(|c| matches!(c.kind, lan::CheckKind::Script { .. }));
    if scripts && !ctx.agent.enable_script_checks {
        return Err(ApiError::Internal(REMOTE_SCRIPTS_DISABLED.into()));
    }
    Ok(())
}

fn definition_error(e: definition::DefinitionError) -> ApiError {
    ApiError::BadRequest(format!("Request decode failed: {e}"))
}

pub(crate) async fn register_service(
    State(ctx): State<Context>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (service, checks) = service_registration(&body)?;
    gate::require(
        &ctx,
        &params,
        Resource::Service,
        &service.name,
        Access::Write,
    )
    .await?;
    let id = if service.id.is_empty() {
        &service.name
    } else {
        &service.id
    };
    if let Some(old) = ctx.lan.local().service(id) {
        gate::require(&ctx, &params, Resource::Service, &old.name, Access::Write).await?;
    }
    let replace = params
        .flag("replace-existing-checks")
        .map_err(|()| ApiError::BadRequest("Invalid value for ?replace-existing-checks".into()))?
        .unwrap_or(false);
    refuse_api_scripts(&ctx, &checks)?;
    ctx.lan
        .local()
        .register_service(service, checks, Source::Api, replace)
        .map_err(local_error)?;
    Ok(empty_ok())
}

/// The service and checks of a `/v1/agent/service/register` body.
pub(crate) fn service_registration(
    body: &[u8],
) -> Result<(catalog::Service, Vec<lan::CheckDefinition>), ApiError> {
    let value = parse_body(body)?;
    definition::service(&value, Style::Api, "").map_err(definition_error)
}

pub(crate) async fn deregister_service(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    match ctx.lan.local().service(&id) {
        Some(s) => gate::require(&ctx, &params, Resource::Service, &s.name, Access::Write).await?,
        None => gate::require_check_write(&ctx, &params, "").await?,
    }
    ctx.lan.local().deregister_service(&id);
    Ok(empty_ok())
}

pub(crate) async fn register_check(
    State(ctx): State<Context>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let check = check_registration(&body)?;
    gate::require_check_write(&ctx, &params, &check.service_id).await?;
    refuse_api_scripts(&ctx, std::slice::from_ref(&check))?;
    ctx.lan
        .local()
        .register_check(check, Source::Api)
        .map_err(local_error)?;
    Ok(empty_ok())
}

/// The check of a `/v1/agent/check/register` body.
pub(crate) fn check_registration(body: &[u8]) -> Result<lan::CheckDefinition, ApiError> {
    let value = parse_body(body)?;
    definition::check(&value, Style::Api, "").map_err(|e| {
        if e.message == "Missing check name" {
            ApiError::BadRequest(e.message)
        } else {
            definition_error(e)
        }
    })
}

pub(crate) async fn deregister_check(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    require_check_change(&ctx, &params, &id).await?;
    ctx.lan.local().deregister_check(&id);
    Ok(empty_ok())
}

/// Refuses a change to this agent's check `id` unless the caller may write what it
/// covers (an unknown check: this node).
async fn require_check_change(ctx: &Context, params: &Params, id: &str) -> Result<(), ApiError> {
    let service_id = ctx
        .lan
        .local()
        .checks()
        .into_iter()
        .find(|c| c.check_id == id)
        .map(|c| c.service_id)
        .unwrap_or_default();
    gate::require_check_write(ctx, params, &service_id).await
}

async fn ttl_update(
    ctx: &Context,
    params: &Params,
    id: &str,
    status: Health,
    note: String,
) -> Result<Response, ApiError> {
    require_check_change(ctx, params, id).await?;
    ctx.lan
        .local()
        .update_ttl(id, status, note)
        .map_err(local_error)?;
    Ok(empty_ok())
}

fn note(params: &Params) -> String {
    params.get("note").unwrap_or_default().to_owned()
}

pub(crate) async fn check_pass(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    ttl_update(&ctx, &params, &id, Health::Passing, note(&params)).await
}

pub(crate) async fn check_warn(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    ttl_update(&ctx, &params, &id, Health::Warning, note(&params)).await
}

pub(crate) async fn check_fail(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    ttl_update(&ctx, &params, &id, Health::Critical, note(&params)).await
}

pub(crate) async fn check_update(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (status, output) = check_update_body(&body)?;
    ttl_update(&ctx, &params, &id, status, output).await
}

/// The status and output of a `/v1/agent/check/update/:id` body.
pub(crate) fn check_update_body(body: &[u8]) -> Result<(Health, String), ApiError> {
    let value = parse_body(body)?;
    let obj = value.as_object().ok_or_else(|| {
        ApiError::BadRequest("Request decode failed: body must be an object".into())
    })?;
    let get = |key: &str| {
        obj.iter()
            .find(|(k, _)| fold_key(k) == key)
            .and_then(|(_, v)| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let status_text = get("status");
    let status = Health::parse(&status_text)
        .ok_or_else(|| ApiError::BadRequest(format!("Invalid check status: '{status_text}'")))?;
    Ok((status, get("output")))
}

pub(crate) async fn leave(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    gate::require_agent(&ctx, &params, Access::Write).await?;
    tracing::info!("graceful leave requested through the HTTP API");
    ctx.lan.leave().await;
    ctx.control.leave.cancel();
    Ok(empty_ok())
}

pub(crate) async fn reload(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    gate::require_agent(&ctx, &params, Access::Write).await?;
    let (reply, done) = tokio::sync::oneshot::channel();
    ctx.control
        .reload
        .try_send(reply)
        .map_err(|_| ApiError::Internal("a reload is already in progress".into()))?;
    match tokio::time::timeout(RELOAD_TIMEOUT, done).await {
        Ok(Ok(Ok(()))) => Ok(empty_ok()),
        Ok(Ok(Err(message))) => Err(ApiError::Internal(message)),
        Ok(Err(_)) => Err(ApiError::Internal("the agent is shutting down".into())),
        Err(_) => Err(ApiError::Internal(
            "timed out waiting for the reload".into(),
        )),
    }
}

/// Whether the request is for the WAN pool. Consul treats any non-empty value of `wan`
/// as true, even "0".
fn wan(params: &Params) -> bool {
    params.get("wan").is_some_and(|v| !v.is_empty())
}

/// How long a join waits for the other agent.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// `PUT /v1/agent/join/:address[?wan=1]`: joins the LAN pool of the agent there, or
/// with `wan` the WAN pool of the server there.
pub(crate) async fn join(
    State(ctx): State<Context>,
    Path(addr): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    gate::require_agent(&ctx, &params, Access::Write).await?;
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let addrs = std::slice::from_ref(&addr);
    let results = if wan(&params) {
        ctx.gateway.federation()?.join(addrs, deadline).await
    } else {
        ctx.lan.join(addrs, deadline).await
    };
    match results.into_iter().next() {
        Some(Ok(())) => Ok(empty_ok()),
        Some(Err(e)) => Err(ApiError::Internal(format!(
            "1 error occurred:\n\t* Failed to join {addr}: {e}\n\n"
        ))),
        None => Err(ApiError::Internal("nothing to join".into())),
    }
}

/// `PUT /v1/agent/force-leave/:node[?prune][&wan=1]`: marks a failed member left, or
/// with `prune` forgets it at once; with `wan`, a member of the WAN pool (`node.dc`).
pub(crate) async fn force_leave(
    State(ctx): State<Context>,
    Path(node): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    gate::require(&ctx, &params, Resource::Operator, "", Access::Write).await?;
    let prune = params.get("prune").is_some();
    let known = if wan(&params) {
        ctx.gateway.federation()?.force_leave(&node, prune).await
    } else {
        ctx.lan.force_leave(&node, prune).await
    };
    if known {
        Ok(empty_ok())
    } else {
        // Consul's serf answers a force-leave of an unknown node with this text.
        Err(ApiError::Internal(format!(
            "agent: No node found with name '{node}'"
        )))
    }
}
