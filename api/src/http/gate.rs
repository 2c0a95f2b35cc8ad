//! ACLs at this agent's own endpoints: its services and checks, members, joins and
//! leaves, the keyring, Raft and operator views. (Catalog, KV, session and ACL requests
//! are decided by the server that answers them, which gets the caller's token with the
//! request.)
//!
//! | endpoint | needs |
//! |---|---|
//! | `agent/self`, `agent/metrics`-like views | `agent:read` on this node |
//! | `agent/join`, `leave`, `reload` | `agent:write` on this node |
//! | `agent/force-leave` | `operator:write` |
//! | `agent/members`, `coordinate/*` | filtered by `node:read` |
//! | `agent/services`, `agent/checks` | filtered by `service:read` / `node:read` |
//! | registering or changing a service or its checks | `service:write` on it |
//! | a node check, `agent/maintenance` | `node:write` on this node |
//! | `agent/service/maintenance/:id` | `service:write` on the service |
//! | `agent/health/service/{id,name}/*` | `service:read` on the service |
//! | `agent/host` | `operator:read` |
//! | `operator/keyring` | `keyring:read` / `keyring:write` |
//! | `event/fire/:name` | `event:write` on the name (checked by `lan::Lan::fire_event` where it is fired) |
//! | `event/list` | filtered by `event:read` |
//! | `operator/raft/*`, `operator/kv-replication` | `operator:read` / `operator:write` |

use catalog::Check;
use catalog::acl::{Access, Caller, Resource};

use super::{ApiError, Params};
use crate::Context;

/// Who the request is for; `None` when ACLs are off.
pub(crate) async fn caller(ctx: &Context, params: &Params) -> Result<Option<Caller>, ApiError> {
    ctx.lan
        .authorize(params.principal())
        .await
        .map_err(|e| ApiError::Forbidden(e.to_string()))
}

/// Refuses the request unless its caller may have `access` to `label` of `resource`.
pub(crate) async fn require(
    ctx: &Context,
    params: &Params,
    resource: Resource,
    label: &str,
    access: Access,
) -> Result<(), ApiError> {
    if let Some(c) = caller(ctx, params).await? {
        c.need(resource, label, access)
            .map_err(|d| ApiError::Forbidden(d.to_string()))?;
    }
    Ok(())
}

/// Refuses the request unless its caller may have `access` to this agent
/// (`agent:read`/`agent:write` on this node's name).
pub(crate) async fn require_agent(
    ctx: &Context,
    params: &Params,
    access: Access,
) -> Result<(), ApiError> {
    require(ctx, params, Resource::Agent, ctx.lan.node_name(), access).await
}

/// Whether `caller` may see check `check`: its service's read, or for a node check the
/// node's.
pub(crate) fn may_read_check(caller: &Caller, check: &Check) -> bool {
    if check.service_id.is_empty() {
        caller.may(Resource::Node, &check.node, Access::Read)
    } else {
        caller.may(Resource::Service, &check.service_name, Access::Read)
    }
}

/// Refuses a change to check `check` of this agent unless the caller may write its
/// service (by the name this agent knows it under), or for a node check this node.
pub(crate) async fn require_check_write(
    ctx: &Context,
    params: &Params,
    service_id: &str,
) -> Result<(), ApiError> {
    let Some(c) = caller(ctx, params).await? else {
        return Ok(());
    };
    let service = (!service_id.is_empty())
        .then(|| ctx.lan.local().service(service_id))
        .flatten();
    let need = match &service {
        Some(s) => c.need(Resource::Service, &s.name, Access::Write),
        None => c.need(Resource::Node, ctx.lan.node_name(), Access::Write),
    };
    need.map_err(|d| ApiError::Forbidden(d.to_string()))
}
