//! `/v1/acl/*`: bootstrap, tokens, policies and roles, in Consul's JSON.
//!
//! Every request goes to the servers with the caller's token, where the read needs
//! `acl:read` and the write `acl:write` (a bootstrap needs nothing: the state machine
//! refuses the second one; reading one's own token needs nothing). With ACLs off every
//! endpoint answers 401 `ACL support disabled`, as Consul's.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use catalog::acl::{
    Access, AclAnswer, AclRead, AclWrite, Link, MANAGEMENT_POLICY_ID, NodeIdentity, Policy,
    RESERVED_ID_PREFIX, Resource, Role, ServiceIdentity, Token,
};
use catalog::uuid::{is_uuid, new_uuid};
use catalog::{Answer, ApplyError, Command, Query, WriteError};
use gateway::RouteError;
use serde_json::{Map, Value, json as json_value};
use tokio::time::Instant;

use super::{ApiError, Params, REQUEST_TIMEOUT, add_meta_headers, json, parse_body, read_request};
use crate::Context;

/// The file an operator writes the reset index into, in the agent's data directory, to
/// allow one more bootstrap (Consul's name).
pub(crate) const BOOTSTRAP_RESET_FILE: &str = "acl-bootstrap-reset";

/// Refuses an ACL write before anything is read for it when the caller may not write
/// ACLs here, so the refusal names `acl:write` as Consul's does (the reads a write makes
/// first would otherwise refuse it for `acl:read`). The servers check the write again.
async fn may_write(ctx: &Context, params: &Params) -> Result<(), ApiError> {
    disabled(ctx)?;
    if params.dc().is_none() {
        super::gate::require(ctx, params, Resource::Acl, "", Access::Write).await?;
    }
    Ok(())
}

fn disabled(ctx: &Context) -> Result<(), ApiError> {
    if ctx.lan.acl_enabled() {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("ACL support disabled".into()))
    }
}

/// A token in Consul's JSON (`secret`: whether to show the SecretID).
fn token_json(t: &Token) -> Value {
    let mut out = Map::new();
    out.insert("AccessorID".into(), t.accessor_id.clone().into());
    out.insert("SecretID".into(), t.secret_id.clone().into());
    out.insert("Description".into(), t.description.clone().into());
    if !t.policies.is_empty() {
        out.insert("Policies".into(), links(&t.policies));
    }
    if !t.roles.is_empty() {
        out.insert("Roles".into(), links(&t.roles));
    }
    if !t.service_identities.is_empty() {
        let list: Vec<Value> = t.service_identities.iter().map(service_identity).collect();
        out.insert("ServiceIdentities".into(), list.into());
    }
    if !t.node_identities.is_empty() {
        let list: Vec<Value> = t.node_identities.iter().map(node_identity).collect();
        out.insert("NodeIdentities".into(), list.into());
    }
    out.insert("Local".into(), t.local.into());
    if let Some(at) = t.expiration_time {
        out.insert(
            "ExpirationTime".into(),
            catalog::clock::rfc3339_nanos(at).into(),
        );
    }
    out.insert(
        "CreateTime".into(),
        catalog::clock::rfc3339_nanos(t.create_time).into(),
    );
    out.insert("CreateIndex".into(), t.create_index.into());
    out.insert("ModifyIndex".into(), t.modify_index.into());
    Value::Object(out)
}

fn links(links: &[Link]) -> Value {
    links
        .iter()
        .map(|l| json_value!({"ID": l.id, "Name": l.name}))
        .collect::<Vec<_>>()
        .into()
}

fn service_identity(s: &ServiceIdentity) -> Value {
    let mut v = json_value!({"ServiceName": s.service_name});
    if !s.datacenters.is_empty() {
        v["Datacenters"] = s.datacenters.clone().into();
    }
    v
}

fn node_identity(n: &NodeIdentity) -> Value {
    json_value!({"NodeName": n.node_name, "Datacenter": n.datacenter})
}

/// A policy in Consul's JSON; lists leave the rules out, as Consul's do.
fn policy_json(p: &Policy, with_rules: bool) -> Value {
    let mut v = json_value!({
        "ID": p.id,
        "Name": p.name,
        "Description": p.description,
        "CreateIndex": p.create_index,
        "ModifyIndex": p.modify_index,
    });
    if with_rules {
        v["Rules"] = p.rules.clone().into();
    }
    if !p.datacenters.is_empty() {
        v["Datacenters"] = p.datacenters.clone().into();
    }
    v
}

fn role_json(r: &Role) -> Value {
    let mut v = json_value!({
        "ID": r.id,
        "Name": r.name,
        "Description": r.description,
        "CreateIndex": r.create_index,
        "ModifyIndex": r.modify_index,
    });
    if !r.policies.is_empty() {
        v["Policies"] = links(&r.policies);
    }
    if !r.service_identities.is_empty() {
        v["ServiceIdentities"] = r
            .service_identities
            .iter()
            .map(service_identity)
            .collect::<Vec<_>>()
            .into();
    }
    if !r.node_identities.is_empty() {
        v["NodeIdentities"] = r
            .node_identities
            .iter()
            .map(node_identity)
            .collect::<Vec<_>>()
            .into();
    }
    v
}

/// Where ACL objects are kept: the primary datacenter when this one is a secondary
/// (`None`: here).
fn home(ctx: &Context) -> Option<String> {
    ctx.lan
        .acl_config()
        .and_then(|c| c.primary_datacenter.clone())
}

/// Reads the ACL tables of `dc` (`None`: this datacenter) with the caller's token.
async fn read(
    ctx: &Context,
    params: &Params,
    dc: Option<&str>,
    read: AclRead,
) -> Result<(AclAnswer, catalog::QueryResult), ApiError> {
    let request = read_request(params)?;
    let result = ctx
        .gateway
        .read(dc, &Query::Acl(read), request.options)
        .await?;
    match &result.answer {
        Answer::Acl(answer) => Ok((answer.clone(), result)),
        other => Err(ApiError::Internal(format!(
            "unexpected answer to an ACL read: {other:?}"
        ))),
    }
}

/// Whether the object `read_one` names exists where ACL objects are kept.
async fn exists(ctx: &Context, params: &Params, read_one: AclRead) -> Result<bool, ApiError> {
    let (answer, _) = read(ctx, params, home(ctx).as_deref(), read_one).await?;
    Ok(match answer {
        AclAnswer::Policies(p) => !p.is_empty(),
        AclAnswer::Roles(r) => !r.is_empty(),
        AclAnswer::Tokens(t) => !t.is_empty(),
    })
}

/// Answers `body` with the read's index headers.
fn answered(body: &Value, result: &catalog::QueryResult, params: &Params) -> Response {
    let mut response = json(body, params.pretty());
    add_meta_headers(
        &mut response,
        result.index,
        result.meta,
        catalog::Consistency::Default,
    );
    response
}

/// Writes to the ACL tables with the caller's token. State-machine refusals are the
/// caller's mistakes (400); a refused bootstrap is Consul's 403.
async fn write(
    ctx: &Context,
    params: &Params,
    dc: Option<&str>,
    write: AclWrite,
) -> Result<(), ApiError> {
    let done = ctx
        .gateway
        .write(
            dc,
            Command::Acl(write),
            Instant::now() + REQUEST_TIMEOUT,
            params.principal(),
        )
        .await;
    match done {
        Ok(_) => Ok(()),
        Err(RouteError::Write(WriteError::Rejected(ApplyError::AclBootstrap(at)))) => {
            Err(ApiError::Forbidden(format!(
                "Permission denied: {}",
                ApplyError::AclBootstrap(at)
            )))
        }
        Err(RouteError::Write(WriteError::Rejected(e))) => Err(ApiError::BadRequest(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// The token an answer holds; an expired one is not there (Consul's reads skip them
/// until the leader deletes them).
fn one_token(answer: AclAnswer) -> Option<Token> {
    match answer {
        AclAnswer::Tokens(mut t) if !t.is_empty() => {
            Some(t.remove(0)).filter(|t| !t.expired(lan::acl::now_ns()))
        }
        _ => None,
    }
}

/// `PUT /v1/acl/bootstrap`.
pub(crate) async fn bootstrap(
    State(ctx): State<Context>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    disabled(&ctx)?;
    let secret = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let value = parse_body(&body)?;
        field(&value, "bootstrapsecret")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    if let Some(s) = &secret
        && !is_uuid(s)
    {
        return Err(ApiError::BadRequest(
            "BootstrapSecret must be a UUID".into(),
        ));
    }
    let reset_index = ctx.agent.data_dir.as_ref().and_then(|dir| {
        let text = std::fs::read_to_string(dir.join(BOOTSTRAP_RESET_FILE)).ok()?;
        text.trim().parse::<u64>().ok()
    });
    let token = Token {
        accessor_id: new_uuid(),
        secret_id: secret.unwrap_or_else(new_uuid),
        description: "Bootstrap Token (Global Management)".into(),
        policies: vec![Link {
            id: MANAGEMENT_POLICY_ID.into(),
            name: catalog::acl::MANAGEMENT_POLICY_NAME.into(),
        }],
        roles: Vec::new(),
        service_identities: Vec::new(),
        node_identities: Vec::new(),
        local: false,
        create_time: lan::acl::now_ns(),
        expiration_time: None,
        create_index: 0,
        modify_index: 0,
    };
    let accessor = token.accessor_id.clone();
    write(
        &ctx,
        &params,
        home(&ctx).as_deref(),
        AclWrite::Bootstrap {
            token: token.clone(),
            reset_index,
        },
    )
    .await?;
    if reset_index.is_some()
        && let Some(dir) = &ctx.agent.data_dir
    {
        // Used up: the next bootstrap needs a new reset index.
        let _ = std::fs::remove_file(dir.join(BOOTSTRAP_RESET_FILE));
    }
    // Read back as stored (indexes), with the caller's new management token.
    let as_root = Params::with_token(&params, &token.secret_id);
    let stored = match read(
        &ctx,
        &as_root,
        home(&ctx).as_deref(),
        AclRead::Token(accessor),
    )
    .await
    {
        Ok((answer, _)) => one_token(answer).unwrap_or(token),
        Err(_) => token,
    };
    let mut body = token_json(&stored);
    body["ID"] = stored.secret_id.clone().into();
    Ok(json(&body, params.pretty()))
}

/// A field of a JSON object, its name compared case-insensitively (Go's decoder).
fn field<'a>(value: &'a Value, folded: &str) -> Option<&'a Value> {
    value
        .as_object()?
        .iter()
        .find(|(k, _)| k.to_ascii_lowercase() == folded)
        .map(|(_, v)| v)
}

fn string(value: &Value, folded: &str, what: &str) -> Result<String, ApiError> {
    match field(value, folded) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::BadRequest(format!(
            "{what} decoding failed: {folded} must be a string"
        ))),
    }
}

fn strings(value: &Value, folded: &str, what: &str) -> Result<Vec<String>, ApiError> {
    match field(value, folded) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "{what} decoding failed: {folded} must be a list of strings"
                    ))
                })
            })
            .collect(),
        Some(_) => Err(ApiError::BadRequest(format!(
            "{what} decoding failed: {folded} must be a list"
        ))),
    }
}

/// Links given by ID or by name (`[{"ID": …}]` or `[{"Name": …}]`), resolved to IDs.
async fn link_list(
    ctx: &Context,
    params: &Params,
    value: &Value,
    folded: &str,
    what: &str,
    by_name: impl Fn(String) -> AclRead,
) -> Result<Vec<Link>, ApiError> {
    let Some(list) = field(value, folded).filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or_else(|| {
        ApiError::BadRequest(format!("{what} decoding failed: {folded} must be a list"))
    })?;
    let mut out = Vec::new();
    for item in list {
        let id = string(item, "id", what)?;
        let name = string(item, "name", what)?;
        let id = if !id.is_empty() {
            id
        } else if !name.is_empty() {
            let (answer, _) =
                read(ctx, params, home(ctx).as_deref(), by_name(name.clone())).await?;
            let found = match answer {
                AclAnswer::Policies(p) => p.into_iter().next().map(|p| p.id),
                AclAnswer::Roles(r) => r.into_iter().next().map(|r| r.id),
                AclAnswer::Tokens(_) => None,
            };
            found.ok_or_else(|| {
                ApiError::BadRequest(format!("{what}: cannot find {folded} with name {name:?}"))
            })?
        } else {
            return Err(ApiError::BadRequest(format!(
                "{what}: each of {folded} needs an ID or a Name"
            )));
        };
        out.push(Link { id, name });
    }
    Ok(out)
}

fn identities(
    value: &Value,
    what: &str,
) -> Result<(Vec<ServiceIdentity>, Vec<NodeIdentity>), ApiError> {
    let mut services = Vec::new();
    if let Some(Value::Array(list)) = field(value, "serviceidentities") {
        for item in list {
            let service_name = string(item, "servicename", what)?;
            if service_name.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "{what}: a service identity needs a ServiceName"
                )));
            }
            services.push(ServiceIdentity {
                service_name,
                datacenters: strings(item, "datacenters", what)?,
            });
        }
    }
    let mut nodes = Vec::new();
    if let Some(Value::Array(list)) = field(value, "nodeidentities") {
        for item in list {
            let node_name = string(item, "nodename", what)?;
            let datacenter = string(item, "datacenter", what)?;
            if node_name.is_empty() || datacenter.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "{what}: a node identity needs a NodeName and a Datacenter"
                )));
            }
            nodes.push(NodeIdentity {
                node_name,
                datacenter,
            });
        }
    }
    Ok((services, nodes))
}

/// An ID given in a body: empty, or a UUID outside the reserved range.
fn given_id(id: String, what: &str, field_name: &str) -> Result<String, ApiError> {
    if id.is_empty() {
        return Ok(id);
    }
    if !is_uuid(&id) {
        return Err(ApiError::BadRequest(format!(
            "Invalid {what}: {field_name} must be a UUID"
        )));
    }
    if id.starts_with(RESERVED_ID_PREFIX) {
        return Err(ApiError::BadRequest(format!(
            "Invalid {what}: {field_name} is in the reserved range"
        )));
    }
    Ok(id)
}

/// The token a create or update body describes (`existing`: the token updated).
async fn token_from_body(
    ctx: &Context,
    params: &Params,
    body: &[u8],
    existing: Option<&Token>,
) -> Result<Token, ApiError> {
    const WHAT: &str = "Token";
    let value = parse_body(body)?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "Token decoding failed: body must be an object".into(),
        ));
    }
    let policies = link_list(ctx, params, &value, "policies", WHAT, AclRead::PolicyByName).await?;
    let roles = link_list(ctx, params, &value, "roles", WHAT, AclRead::RoleByName).await?;
    let (service_identities, node_identities) = identities(&value, WHAT)?;
    let local = field(&value, "local")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ttl = expiration_ttl(&value)?;
    let time = expiration_time(&value)?;
    let now = lan::acl::now_ns();
    let expiration_time = match existing {
        // Consul: a token's life is fixed when it is created.
        Some(t) => {
            let changed = time.is_some_and(|at| t.expiration_time != Some(at));
            if ttl != 0 || changed {
                return Err(ApiError::BadRequest(format!(
                    "Cannot change expiration time of {}",
                    t.accessor_id
                )));
            }
            t.expiration_time
        }
        None => {
            if ttl < 0 {
                return Err(ApiError::BadRequest(format!(
                    "Token Expiration TTL '-{}' should be > 0",
                    catalog::duration::format(Duration::from_nanos(ttl.unsigned_abs()))
                )));
            }
            if ttl > 0 && time.is_some() {
                return Err(ApiError::BadRequest(
                    "Token Expiration TTL and Expiration Time cannot both be set".into(),
                ));
            }
            let at = match ttl.unsigned_abs() {
                0 => time,
                ttl => Some(now.saturating_add(ttl)),
            };
            check_expiration(ctx, at, now)?;
            at
        }
    };
    let accessor_id = given_id(string(&value, "accessorid", WHAT)?, "Token", "AccessorID")?;
    let secret_id = given_id(string(&value, "secretid", WHAT)?, "Token", "SecretID")?;
    let (accessor_id, secret_id) = match existing {
        Some(t) => {
            if !secret_id.is_empty() && secret_id != t.secret_id {
                return Err(ApiError::BadRequest(
                    "Changing a token's SecretID is not permitted".into(),
                ));
            }
            (t.accessor_id.clone(), t.secret_id.clone())
        }
        None => (
            if accessor_id.is_empty() {
                new_uuid()
            } else {
                accessor_id
            },
            if secret_id.is_empty() {
                new_uuid()
            } else {
                secret_id
            },
        ),
    };
    Ok(Token {
        accessor_id,
        secret_id,
        description: string(&value, "description", WHAT)?,
        policies,
        roles,
        service_identities,
        node_identities,
        local,
        create_time: existing.map_or(now, |t| t.create_time),
        expiration_time,
        create_index: 0,
        modify_index: 0,
    })
}

/// `ExpirationTTL` in nanoseconds, as Consul reads it: Go's duration text (`"1h"`, a
/// negative one included, refused later) or a number of nanoseconds; 0 when absent.
fn expiration_ttl(value: &Value) -> Result<i64, ApiError> {
    let bad = |v: &Value| {
        ApiError::BadRequest(format!(
            "Token decoding failed: ExpirationTTL {v} is not a duration"
        ))
    };
    match field(value, "expirationttl") {
        None | Some(Value::Null) => Ok(0),
        Some(v @ Value::Number(n)) => n.as_i64().ok_or_else(|| bad(v)),
        Some(v @ Value::String(text)) => {
            let (negative, magnitude) = match text.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, text.as_str()),
            };
            let d = catalog::duration::parse(magnitude).map_err(|_| bad(v))?;
            let ns = i64::try_from(d.as_nanos()).map_err(|_| bad(v))?;
            Ok(if negative { -ns } else { ns })
        }
        Some(v) => Err(bad(v)),
    }
}

/// `ExpirationTime` (RFC 3339), in nanoseconds since the Unix epoch; Go's zero time,
/// which Consul's older clients send for "none", is none.
fn expiration_time(value: &Value) -> Result<Option<u64>, ApiError> {
    match field(value, "expirationtime") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.starts_with("0001-01-01T00:00:00") => Ok(None),
        Some(v @ Value::String(text)) => catalog::clock::parse_rfc3339_nanos(text)
            .map(Some)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "Token decoding failed: ExpirationTime {v} is not an RFC 3339 time"
                ))
            }),
        Some(v) => Err(ApiError::BadRequest(format!(
            "Token decoding failed: ExpirationTime {v} is not an RFC 3339 time"
        ))),
    }
}

/// Consul's checks of a new token's expiration time `at`, created `now`: not in the
/// past, and within `acl.token_min_expiration_ttl`..`token_max_expiration_ttl` of now.
fn check_expiration(ctx: &Context, at: Option<u64>, now: u64) -> Result<(), ApiError> {
    let Some(at) = at else {
        return Ok(());
    };
    if at < now {
        return Err(ApiError::BadRequest(
            "ExpirationTime cannot be before CreateTime".into(),
        ));
    }
    let (min, max) = ctx.lan.acl_config().map_or(
        (
            lan::acl::TOKEN_MIN_EXPIRATION_TTL,
            lan::acl::TOKEN_MAX_EXPIRATION_TTL,
        ),
        |c| (c.token_min_expiration_ttl, c.token_max_expiration_ttl),
    );
    let expires_in = Duration::from_nanos(at - now);
    let go = catalog::duration::format;
    if expires_in > max {
        return Err(ApiError::BadRequest(format!(
            "ExpirationTime cannot be more than {} in the future (was {})",
            go(max),
            go(expires_in)
        )));
    }
    if expires_in < min {
        return Err(ApiError::BadRequest(format!(
            "ExpirationTime cannot be less than {} in the future (was {})",
            go(min),
            go(expires_in)
        )));
    }
    Ok(())
}

/// Writes `token` and answers with it as stored.
/// A local token is kept here; every other one where ACL objects are kept.
async fn set_token(ctx: &Context, params: &Params, token: Token) -> Result<Response, ApiError> {
    let accessor = token.accessor_id.clone();
    let dc = if token.local { None } else { home(ctx) };
    write(ctx, params, dc.as_deref(), AclWrite::TokenSet(token)).await?;
    let (answer, result) = read(ctx, params, dc.as_deref(), AclRead::Token(accessor)).await?;
    let stored = one_token(answer).ok_or_else(|| ApiError::Internal("token not stored".into()))?;
    Ok(answered(&token_json(&stored), &result, params))
}

/// `PUT /v1/acl/token`.
pub(crate) async fn token_create(
    State(ctx): State<Context>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    may_write(&ctx, &params).await?;
    let token = token_from_body(&ctx, &params, &body, None).await?;
    set_token(&ctx, &params, token).await
}

/// The token with this AccessorID: where ACL objects are kept, else (a local token of
/// a secondary) here.
async fn existing_token(ctx: &Context, params: &Params, accessor: &str) -> Result<Token, ApiError> {
    let home = home(ctx);
    let (answer, _) = read(
        ctx,
        params,
        home.as_deref(),
        AclRead::Token(accessor.to_owned()),
    )
    .await?;
    if let Some(t) = one_token(answer) {
        return Ok(t);
    }
    if home.is_some() {
        let (answer, _) = read(ctx, params, None, AclRead::Token(accessor.to_owned())).await?;
        if let Some(t) = one_token(answer) {
            return Ok(t);
        }
    }
    Err(ApiError::NotFound("Requested token does not exist".into()))
}

/// `GET /v1/acl/token/:accessor`.
pub(crate) async fn token_read(
    State(ctx): State<Context>,
    Path(accessor): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    disabled(&ctx)?;
    let (answer, result) = read(
        &ctx,
        &params,
        home(&ctx).as_deref(),
        AclRead::Token(accessor.clone()),
    )
    .await?;
    let token = match one_token(answer) {
        Some(t) => t,
        None => existing_token(&ctx, &params, &accessor).await?,
    };
    Ok(answered(&token_json(&token), &result, &params))
}

/// `GET /v1/acl/token/self`.
pub(crate) async fn token_self(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    disabled(&ctx)?;
    // Consul looks the presented secret up; with none there is nothing to find.
    let secret = match params.principal() {
        catalog::Principal::Token(t) => t.to_string(),
        _ => return Err(ApiError::Forbidden("ACL not found".into())),
    };
    let (answer, result) = read(
        &ctx,
        &params,
        home(&ctx).as_deref(),
        AclRead::TokenBySecret(secret),
    )
    .await?;
    // Consul: a secret nobody holds is "ACL not found".
    let token = one_token(answer).ok_or_else(|| ApiError::Forbidden("ACL not found".into()))?;
    Ok(answered(&token_json(&token), &result, &params))
}

/// `PUT /v1/acl/token/:accessor`.
pub(crate) async fn token_update(
    State(ctx): State<Context>,
    Path(accessor): Path<String>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    may_write(&ctx, &params).await?;
    let value = parse_body(&body)?;
    let given = string(&value, "accessorid", "Token")?;
    if !given.is_empty() && given != accessor {
        return Err(ApiError::BadRequest(
            "Token Accessor ID in URL and payload do not match".into(),
        ));
    }
    let existing = existing_token(&ctx, &params, &accessor).await?;
    let token = token_from_body(&ctx, &params, &body, Some(&existing)).await?;
    set_token(&ctx, &params, token).await
}

/// `PUT /v1/acl/token/:accessor/clone`: a new token with the same links, a new
/// AccessorID and SecretID, and the description in the body if any.
pub(crate) async fn token_clone(
    State(ctx): State<Context>,
    Path(accessor): Path<String>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    may_write(&ctx, &params).await?;
    let mut token = existing_token(&ctx, &params, &accessor).await?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let value = parse_body(&body)?;
        let description = string(&value, "description", "Token")?;
        if !description.is_empty() {
            token.description = description;
        }
    }
    token.accessor_id = new_uuid();
    token.secret_id = new_uuid();
    token.create_time = lan::acl::now_ns();
    // Consul: the clone keeps the original's expiration time, checked as a new token's.
    check_expiration(&ctx, token.expiration_time, token.create_time)?;
    set_token(&ctx, &params, token).await
}

/// `DELETE /v1/acl/token/:accessor`.
pub(crate) async fn token_delete(
    State(ctx): State<Context>,
    Path(accessor): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    may_write(&ctx, &params).await?;
    let Ok(existing) = existing_token(&ctx, &params, &accessor).await else {
        return Err(ApiError::NotFound("Cannot find token to delete".into()));
    };
    if let catalog::Principal::Token(own) = params.principal() {
        let (answer, _) = read(
            &ctx,
            &params,
            home(&ctx).as_deref(),
            AclRead::TokenBySecret(own.to_string()),
        )
        .await?;
        if one_token(answer).is_some_and(|t| t.accessor_id == accessor) {
            return Err(ApiError::Forbidden(
                "Deletion of the request's authorization token is not permitted".into(),
            ));
        }
    }
    let dc = if existing.local { None } else { home(&ctx) };
    write(
        &ctx,
        &params,
        dc.as_deref(),
        AclWrite::TokenDelete {
            accessor_id: accessor,
        },
    )
    .await?;
    Ok(json(&true, params.pretty()))
}

/// `GET /v1/acl/tokens[?policy=&role=&servicename=]`.
pub(crate) async fn token_list(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    disabled(&ctx)?;
    let nonempty = |k: &str| params.get(k).filter(|v| !v.is_empty()).map(str::to_owned);
    let query = AclRead::Tokens {
        policy: nonempty("policy"),
        role: nonempty("role"),
        service_name: nonempty("servicename"),
    };
    let (answer, result) = read(&ctx, &params, home(&ctx).as_deref(), query).await?;
    let AclAnswer::Tokens(tokens) = answer else {
        return Err(ApiError::Internal(
            "unexpected answer to a token list".into(),
        ));
    };
    let now = lan::acl::now_ns();
    let list: Vec<Value> = tokens
        .iter()
        .filter(|t| !t.expired(now))
        .map(token_json)
        .collect();
    Ok(answered(&Value::Array(list), &result, &params))
}

/// The policy a create or update body describes (`id`: the policy updated).
fn policy_from_body(body: &[u8], id: String) -> Result<Policy, ApiError> {
    const WHAT: &str = "Policy";
    let value = parse_body(body)?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "Policy decoding failed: body must be an object".into(),
        ));
    }
    let rules = string(&value, "rules", WHAT)?;
    // Checked here for a clear 400 before the write; the state machine checks again.
    catalog::acl::Rules::parse(&rules).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Policy {
        id,
        name: string(&value, "name", WHAT)?,
        description: string(&value, "description", WHAT)?,
        rules,
        datacenters: strings(&value, "datacenters", WHAT)?,
        create_index: 0,
        modify_index: 0,
    })
}

async fn set_policy(ctx: &Context, params: &Params, policy: Policy) -> Result<Response, ApiError> {
    let id = policy.id.clone();
    write(
        ctx,
        params,
        home(ctx).as_deref(),
        AclWrite::PolicySet(policy),
    )
    .await?;
    let (answer, result) = read(ctx, params, home(ctx).as_deref(), AclRead::Policy(id)).await?;
    match answer {
        AclAnswer::Policies(p) if !p.is_empty() => {
            Ok(answered(&policy_json(&p[0], true), &result, params))
        }
        _ => Err(ApiError::Internal("policy not stored".into())),
    }
}

/// `PUT /v1/acl/policy`.
pub(crate) async fn policy_create(
    State(ctx): State<Context>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    may_write(&ctx, &params).await?;
    let value = parse_body(&body)?;
    if !string(&value, "id", "Policy")?.is_empty() {
        return Err(ApiError::BadRequest(
            "Cannot specify the ID when creating a new policy".into(),
        ));
    }
    let policy = policy_from_body(&body, new_uuid())?;
    set_policy(&ctx, &params, policy).await
}

/// `PUT /v1/acl/policy/:id`.
pub(crate) async fn policy_update(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    may_write(&ctx, &params).await?;
    let value = parse_body(&body)?;
    let given = string(&value, "id", "Policy")?;
    if !given.is_empty() && given != id {
        return Err(ApiError::BadRequest(
            "Policy ID in URL and payload do not match".into(),
        ));
    }
    if !exists(&ctx, &params, AclRead::Policy(id.clone())).await? {
        return Err(ApiError::NotFound("Requested policy does not exist".into()));
    }
    let policy = policy_from_body(&body, id)?;
    set_policy(&ctx, &params, policy).await
}

async fn policy_answer(
    ctx: &Context,
    params: &Params,
    read_one: AclRead,
) -> Result<Response, ApiError> {
    let (answer, result) = read(ctx, params, home(ctx).as_deref(), read_one).await?;
    match answer {
        AclAnswer::Policies(p) if !p.is_empty() => {
            Ok(answered(&policy_json(&p[0], true), &result, params))
        }
        _ => Err(ApiError::NotFound("Requested policy does not exist".into())),
    }
}

/// `GET /v1/acl/policy/:id`.
pub(crate) async fn policy_read(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    disabled(&ctx)?;
    policy_answer(&ctx, &params, AclRead::Policy(id)).await
}

/// `GET /v1/acl/policy/name/:name`.
pub(crate) async fn policy_read_by_name(
    State(ctx): State<Context>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    disabled(&ctx)?;
    policy_answer(&ctx, &params, AclRead::PolicyByName(name)).await
}

/// `DELETE /v1/acl/policy/:id`.
pub(crate) async fn policy_delete(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    may_write(&ctx, &params).await?;
    if !exists(&ctx, &params, AclRead::Policy(id.clone())).await? {
        return Err(ApiError::NotFound("Cannot find policy to delete".into()));
    }
    write(
        &ctx,
        &params,
        home(&ctx).as_deref(),
        AclWrite::PolicyDelete { id },
    )
    .await?;
    Ok(json(&true, params.pretty()))
}

/// `GET /v1/acl/policies`.
pub(crate) async fn policy_list(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    disabled(&ctx)?;
    let (answer, result) = read(&ctx, &params, home(&ctx).as_deref(), AclRead::Policies).await?;
    let AclAnswer::Policies(list) = answer else {
        return Err(ApiError::Internal(
            "unexpected answer to a policy list".into(),
        ));
    };
    let body: Vec<Value> = list.iter().map(|p| policy_json(p, false)).collect();
    Ok(answered(&Value::Array(body), &result, &params))
}

/// The role a create or update body describes (`id`: the role updated).
async fn role_from_body(
    ctx: &Context,
    params: &Params,
    body: &[u8],
    id: String,
) -> Result<Role, ApiError> {
    const WHAT: &str = "Role";
    let value = parse_body(body)?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "Role decoding failed: body must be an object".into(),
        ));
    }
    let policies = link_list(ctx, params, &value, "policies", WHAT, AclRead::PolicyByName).await?;
    let (service_identities, node_identities) = identities(&value, WHAT)?;
    Ok(Role {
        id,
        name: string(&value, "name", WHAT)?,
        description: string(&value, "description", WHAT)?,
        policies,
        service_identities,
        node_identities,
        create_index: 0,
        modify_index: 0,
    })
}

async fn set_role(ctx: &Context, params: &Params, role: Role) -> Result<Response, ApiError> {
    let id = role.id.clone();
    write(ctx, params, home(ctx).as_deref(), AclWrite::RoleSet(role)).await?;
    role_answer(ctx, params, AclRead::Role(id)).await
}

async fn role_answer(
    ctx: &Context,
    params: &Params,
    read_one: AclRead,
) -> Result<Response, ApiError> {
    let (answer, result) = read(ctx, params, home(ctx).as_deref(), read_one).await?;
    match answer {
        AclAnswer::Roles(r) if !r.is_empty() => Ok(answered(&role_json(&r[0]), &result, params)),
        _ => Err(ApiError::NotFound("Requested role does not exist".into())),
    }
}

/// `PUT /v1/acl/role`.
pub(crate) async fn role_create(
    State(ctx): State<Context>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    may_write(&ctx, &params).await?;
    let value = parse_body(&body)?;
    if !string(&value, "id", "Role")?.is_empty() {
        return Err(ApiError::BadRequest(
            "Cannot specify the ID when creating a new role".into(),
        ));
    }
    let role = role_from_body(&ctx, &params, &body, new_uuid()).await?;
    set_role(&ctx, &params, role).await
}

/// `PUT /v1/acl/role/:id`.
pub(crate) async fn role_update(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    may_write(&ctx, &params).await?;
    let value = parse_body(&body)?;
    let given = string(&value, "id", "Role")?;
    if !given.is_empty() && given != id {
        return Err(ApiError::BadRequest(
            "Role ID in URL and payload do not match".into(),
        ));
    }
    if !exists(&ctx, &params, AclRead::Role(id.clone())).await? {
        return Err(ApiError::NotFound("Requested role does not exist".into()));
    }
    let role = role_from_body(&ctx, &params, &body, id).await?;
    set_role(&ctx, &params, role).await
}

/// `GET /v1/acl/role/:id`.
pub(crate) async fn role_read(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    disabled(&ctx)?;
    role_answer(&ctx, &params, AclRead::Role(id)).await
}

/// `GET /v1/acl/role/name/:name`.
pub(crate) async fn role_read_by_name(
    State(ctx): State<Context>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    disabled(&ctx)?;
    role_answer(&ctx, &params, AclRead::RoleByName(name)).await
}

/// `DELETE /v1/acl/role/:id`.
pub(crate) async fn role_delete(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    may_write(&ctx, &params).await?;
    if !exists(&ctx, &params, AclRead::Role(id.clone())).await? {
        return Err(ApiError::NotFound("Cannot find role to delete".into()));
    }
    write(
        &ctx,
        &params,
        home(&ctx).as_deref(),
        AclWrite::RoleDelete { id },
    )
    .await?;
    Ok(json(&true, params.pretty()))
}

/// `GET /v1/acl/roles`.
pub(crate) async fn role_list(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    disabled(&ctx)?;
    let (answer, result) = read(&ctx, &params, home(&ctx).as_deref(), AclRead::Roles).await?;
    let AclAnswer::Roles(list) = answer else {
        return Err(ApiError::Internal(
            "unexpected answer to a role list".into(),
        ));
    };
    let body: Vec<Value> = list.iter().map(role_json).collect();
    Ok(answered(&Value::Array(body), &result, &params))
}

/// `GET /v1/acl/replication`: where copying the primary's ACL tables stands here.
pub(crate) async fn replication(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    disabled(&ctx)?;
    super::gate::require(
        &ctx,
        &params,
        catalog::acl::Resource::Acl,
        "",
        catalog::acl::Access::Read,
    )
    .await?;
    let body = match &ctx.acl_replication {
        Some(status) => {
            serde_json::to_value(status.report()).map_err(|e| ApiError::Internal(e.to_string()))?
        }
        None => json_value!({
            "Enabled": false,
            "Running": false,
            "SourceDatacenter": "",
            "ReplicationType": "",
            "ReplicatedIndex": 0,
            "ReplicatedRoleIndex": 0,
            "ReplicatedTokenIndex": 0,
            "LastSuccess": "0001-01-01T00:00:00Z",
            "LastError": "0001-01-01T00:00:00Z",
            "LastErrorMessage": "",
        }),
    };
    Ok(json(&body, params.pretty()))
}

/// Any other `/v1/acl/…` path Consul has that proconsul does not (auth methods,
/// binding rules, templated policies, legacy endpoints): 404 with what is missing.
pub(crate) async fn unsupported(State(ctx): State<Context>) -> Result<Response, ApiError> {
    disabled(&ctx)?;
    Ok((
        StatusCode::NOT_FOUND,
        "this ACL endpoint (auth methods, binding rules, templated policies) is not supported by proconsul",
    )
        .into_response())
}
