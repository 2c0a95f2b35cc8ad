//! `PUT /v1/agent/maintenance` and `PUT /v1/agent/service/maintenance/:id`: this node or
//! one of its service instances in or out of maintenance mode (a critical check the
//! agent registers, see `lan::Maintenance`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use catalog::acl::{Access, Resource};

use super::{ApiError, Params, gate};
use crate::Context;

/// `?enable=` read as Consul reads it: required, and one of Go's `strconv.ParseBool`
/// spellings (an empty value is not one).
fn enable(params: &Params) -> Result<bool, ApiError> {
    match params.get("enable") {
        None => Err(ApiError::BadRequest("Missing value for enable".into())),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(ApiError::BadRequest(format!(
            "Invalid value for enable: {other:?}"
        ))),
    }
}

/// `PUT /v1/agent/maintenance?enable=true|false[&reason=…]`: needs `node:write` on this
/// node. Enabling twice keeps the first reason; disabling when off is not an error.
pub(crate) async fn node(State(ctx): State<Context>, params: Params) -> Result<Response, ApiError> {
    let enable = enable(&params)?;
    gate::require(
        &ctx,
        &params,
        Resource::Node,
        ctx.lan.node_name(),
        Access::Write,
    )
    .await?;
    let local = ctx.lan.local();
    if enable {
        local.enable_node_maintenance(params.get("reason").unwrap_or_default());
    } else {
        local.disable_node_maintenance();
    }
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/service/maintenance/:id?enable=true|false[&reason=…]`: needs
/// `service:write` on the service; an ID this agent does not have is 404.
pub(crate) async fn service(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let enable = enable(&params)?;
    let local = ctx.lan.local();
    let unknown = || ApiError::NotFound(lan::LocalError::NoSuchService(id.clone()).to_string());
    let service = local.service(&id).ok_or_else(unknown)?;
    gate::require(
        &ctx,
        &params,
        Resource::Service,
        &service.name,
        Access::Write,
    )
    .await?;
    let result = if enable {
        local.enable_service_maintenance(&id, params.get("reason").unwrap_or_default())
    } else {
        local.disable_service_maintenance(&id)
    };
    // The service may have gone while the token was checked.
    result.map_err(|e| ApiError::NotFound(e.to_string()))?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/service/maintenance/` with no ID (Consul's answer).
pub(crate) async fn service_without_id() -> ApiError {
    ApiError::BadRequest("Missing service ID".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enable_is_required_and_read_as_go_reads_booleans() {
        let read = |q: &str| enable(&Params::parse(Some(q))).map_err(|e| format!("{e:?}"));
        assert_eq!(read("enable=true"), Ok(true));
        assert_eq!(read("enable=0"), Ok(false));
        assert_eq!(
            read("reason=x"),
            Err(r#"BadRequest("Missing value for enable")"#.into())
        );
        assert_eq!(
            read("enable="),
            Err(r#"BadRequest("Invalid value for enable: \"\"")"#.into())
        );
        assert_eq!(
            read("enable=yes"),
            Err(r#"BadRequest("Invalid value for enable: \"yes\"")"#.into())
        );
    }
}
