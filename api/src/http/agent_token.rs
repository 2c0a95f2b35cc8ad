//! `PUT /v1/agent/token/:type`: replaces one of the agent's own tokens while it runs
//! (Consul's `consul acl set-agent-token`). The new token is used by the next request;
//! with `acl.enable_token_persistence` it is also kept in `<data_dir>/acl-tokens.json`
//! and used again after a restart (see `lan::Tokens`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use catalog::acl::Access;
use lan::TokenKind;
use serde_json::Value;

use super::{ApiError, Params, gate, parse_body};
use crate::Context;

/// The token a URL names, by Consul's names and the older ones it still accepts.
fn kind(name: &str) -> Option<TokenKind> {
    Some(match name {
        "default" | "acl_token" => TokenKind::Default,
        "agent" | "acl_agent_token" => TokenKind::Agent,
        "agent_recovery" | "agent_master" | "acl_agent_master_token" => TokenKind::AgentRecovery,
        "replication" | "acl_replication_token" => TokenKind::Replication,
        "config_file_service_registration" => TokenKind::ConfigFileServiceRegistration,
        "dns" | "dns_token" => TokenKind::Dns,
        _ => return None,
    })
}

/// `PUT /v1/agent/token/:type` with `{"Token": "…"}`; needs `agent:write` on this node
/// (what Consul's code checks; its documentation still says `acl:write`). With ACLs off
/// it answers 401 `ACL support disabled`, and an unknown type 404
/// `Token "X" is unknown`, as Consul's.
pub(crate) async fn set(
    State(ctx): State<Context>,
    Path(name): Path<String>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !ctx.lan.acl_enabled() {
        return Err(ApiError::Unauthorized("ACL support disabled".into()));
    }
    gate::require_agent(&ctx, &params, Access::Write).await?;
    let value = parse_body(&body)?;
    let token = match token_field(&value) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "Request decode failed: Token must be a string".into(),
            ));
        }
    };
    let kind =
        kind(&name).ok_or_else(|| ApiError::NotFound(format!("Token {name:?} is unknown")))?;
    let lan = ctx.lan.clone();
    tokio::task::spawn_blocking(move || lan.tokens().set(kind, token))
        .await
        .map_err(|e| ApiError::Internal(format!("Failed to persist tokens - {e}")))?
        // Consul's text for a token file that cannot be written.
        .map_err(|e| ApiError::Internal(format!("Failed to persist tokens - {e}")))?;
    tracing::info!(token = %name, "updated the agent's ACL token");
    Ok(StatusCode::OK.into_response())
}

/// The `Token` field, its name compared case-insensitively (Go's decoder).
fn token_field(value: &Value) -> Option<&Value> {
    value
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("token"))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_names_and_their_old_forms_name_the_same_token() {
        assert_eq!(kind("default"), kind("acl_token"));
        assert_eq!(kind("agent"), kind("acl_agent_token"));
        assert_eq!(kind("agent_recovery"), Some(TokenKind::AgentRecovery));
        assert_eq!(kind("agent_master"), Some(TokenKind::AgentRecovery));
        assert_eq!(kind("replication"), kind("acl_replication_token"));
        assert_eq!(kind("dns"), Some(TokenKind::Dns));
        assert_eq!(
            kind("config_file_service_registration"),
            Some(TokenKind::ConfigFileServiceRegistration)
        );
        assert_eq!(kind("recovery"), None, "the CLI's name, not the URL's");
        assert_eq!(kind("Default"), None);
    }

    #[test]
    fn the_token_field_is_read_whatever_its_case() {
        let v: Value = serde_json::from_str(r#"{"token":"x"}"#).unwrap();
        assert_eq!(token_field(&v), Some(&Value::from("x")));
        let v: Value = serde_json::from_str("[1]").unwrap();
        assert_eq!(token_field(&v), None);
    }
}
