//! `/v1/session/*`: sessions, which hold KV locks (`?acquire`) and end with their node,
//! their checks, their TTL or on request.
//!
//! | request | answers |
//! |---|---|
//! | `PUT create` | `{"ID": …}` |
//! | `PUT destroy/:id` | `true`, also for an unknown ID |
//! | `PUT renew/:id` | `[session]`, 404 `Session id '…' not found` when unknown |
//! | `GET info/:id`, `node/:node`, `list` | arrays, `[]` when none; blocking |
//!
//! A session belongs to the datacenter it was created in: `?dc=` creates it there (only
//! a server does that, as in Consul: a client agent's node is no node of that
//! datacenter).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use catalog::{
    Answer, ApplyError, Behavior, Command, DEFAULT_LOCK_DELAY, Query, SERF_HEALTH_CHECK,
    SESSION_TTL_MAX, SESSION_TTL_MIN, Session, SessionRead, SessionWrite, WriteError,
};
use gateway::RouteError;
use serde_json::Value;
use tokio::time::Instant;

use super::catalog::{field, read_and_render};
use super::{ApiError, Params, REQUEST_TIMEOUT, json, parse_body};
use crate::Context;

/// `PUT /v1/session/create`.
pub(crate) async fn create(
    State(ctx): State<Context>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !ctx.agent.server && !ctx.gateway.is_local(params.dc()) {
        return Err(ApiError::Internal(
            "cross datacenter lock must be created at server agent".into(),
        ));
    }
    let session = parse_session(&body, &ctx.agent.node_name)?;
    let id = session.id.clone();
    write(&ctx, &params, SessionWrite::Create(Box::new(session))).await?;
    Ok(json(&serde_json::json!({ "ID": id }), params.pretty()))
}

/// `PUT /v1/session/destroy/:id`.
pub(crate) async fn destroy(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let id = needed(id, "Missing session")?;
    write(&ctx, &params, SessionWrite::Destroy { id }).await?;
    Ok(json(&true, params.pretty()))
}

/// `PUT /v1/session/renew/:id`.
pub(crate) async fn renew(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let id = needed(id, "Missing session")?;
    write(&ctx, &params, SessionWrite::Renew { id: id.clone() }).await?;
    let rest = params.without(&["index", "wait"]);
    read_and_render(&ctx, &rest, Query::Sessions(SessionRead::Info(id)), render).await
}

/// `GET /v1/session/info/:id`.
pub(crate) async fn info(
    State(ctx): State<Context>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let id = needed(id, "Missing session")?;
    read(&ctx, &params, SessionRead::Info(id)).await
}

/// `GET /v1/session/node/:node`.
pub(crate) async fn node(
    State(ctx): State<Context>,
    Path(node): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let node = needed(node, "Missing node name")?;
    read(&ctx, &params, SessionRead::Node(node)).await
}

/// `GET /v1/session/list`.
pub(crate) async fn list(State(ctx): State<Context>, params: Params) -> Result<Response, ApiError> {
    read(&ctx, &params, SessionRead::List).await
}

async fn read(ctx: &Context, params: &Params, which: SessionRead) -> Result<Response, ApiError> {
    read_and_render(ctx, params, Query::Sessions(which), render).await
}

fn render(answer: &Answer, pretty: bool) -> Response {
    match answer {
        Answer::Sessions(list) => json(
            &list.iter().map(super::json::session).collect::<Vec<_>>(),
            pretty,
        ),
        other => ApiError::Internal(format!("unexpected answer to a session read: {other:?}"))
            .into_response(),
    }
}

async fn write(ctx: &Context, params: &Params, write: SessionWrite) -> Result<(), ApiError> {
    let done = ctx
        .gateway
        .write(
            params.dc(),
            Command::Session(write),
            Instant::now() + REQUEST_TIMEOUT,
            params.principal(),
        )
        .await;
    match done {
        Ok(_) => Ok(()),
        Err(RouteError::Write(WriteError::Rejected(ApplyError::Session(why)))) => {
            Err(ApiError::Internal(why))
        }
        Err(RouteError::Write(WriteError::Rejected(e @ ApplyError::UnknownSession(_)))) => {
            Err(ApiError::NotFound(e.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

fn needed(value: String, missing: &str) -> Result<String, ApiError> {
    if value.is_empty() {
        Err(ApiError::BadRequest(missing.into()))
    } else {
        Ok(value)
    }
}

/// A session from a create request's body (every field optional, names in any case, as
/// Go's decoder takes them), owned by `agent_node` unless it names a node.
pub(crate) fn parse_session(body: &[u8], agent_node: &str) -> Result<Session, ApiError> {
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        parse_body(body)?
    };
    let obj = value.as_object().ok_or_else(|| {
        ApiError::BadRequest("Request decode failed: body must be an object".into())
    })?;
    let text = |key: &str, name: &str| -> Result<String, ApiError> {
        match field(obj, key) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ApiError::BadRequest(format!(
                "Request decode failed: {name} must be a string"
            ))),
        }
    };
    let list = |key: &str, name: &str| -> Result<Option<Vec<String>>, ApiError> {
        match field(obj, key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    // `ServiceChecks` are objects with an `ID`.
                    Value::Object(o) => match field(o, "id") {
                        Some(Value::String(s)) => Ok(s.clone()),
                        _ => Err(ApiError::BadRequest(format!(
                            "Request decode failed: each of {name} needs an ID"
                        ))),
                    },
                    _ => Err(ApiError::BadRequest(format!(
                        "Request decode failed: {name} must be a list"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(ApiError::BadRequest(format!(
                "Request decode failed: {name} must be a list"
            ))),
        }
    };
    let node = match text("node", "Node")? {
        n if n.is_empty() => agent_node.to_owned(),
        n => n,
    };
    let behavior = match text("behavior", "Behavior")?.as_str() {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => {
            return Err(ApiError::Internal(format!(
                "Invalid Behavior setting '{other}'"
            )));
        }
    };
    let ttl = text("ttl", "TTL")?;
    if !ttl.is_empty() && ttl != "0" {
        let d = catalog::duration::parse(&ttl)
            .map_err(|e| ApiError::Internal(format!("Session TTL '{ttl}' invalid: {e}")))?;
        if !d.is_zero() && !(SESSION_TTL_MIN..=SESSION_TTL_MAX).contains(&d) {
            return Err(ApiError::Internal(format!(
                "Invalid Session TTL '{}', must be between [10s=24h0m0s]",
                d.as_nanos()
            )));
        }
    }
    let ttl = if ttl == "0" { String::new() } else { ttl };
    // `Checks` is the old name of `NodeChecks`; an empty list means no check at all.
    let node_checks = match (list("nodechecks", "NodeChecks")?, list("checks", "Checks")?) {
        (Some(n), _) => n,
        (None, Some(c)) => c,
        (None, None) => vec![SERF_HEALTH_CHECK.to_owned()],
    };
    Ok(Session {
        id: catalog::uuid::new_uuid(),
        name: text("name", "Name")?,
        node,
        lock_delay: lock_delay(field(obj, "lockdelay"))?,
        behavior,
        ttl,
        node_checks,
        service_checks: list("servicechecks", "ServiceChecks")?.unwrap_or_default(),
        create_index: 0,
        modify_index: 0,
        renewals: 0,
    })
}

/// `LockDelay`: nanoseconds as a number, or a Go duration as text; either way a value
/// under a microsecond counts in seconds (Consul's rule, so `15` is 15 s).
fn lock_delay(value: Option<&Value>) -> Result<Duration, ApiError> {
    let bad = |why: String| ApiError::BadRequest(format!("Request decode failed: {why}"));
    let d = match value {
        None => return Ok(DEFAULT_LOCK_DELAY),
        Some(Value::Number(n)) => Duration::from_nanos(
            n.as_u64()
                .ok_or_else(|| bad(format!("LockDelay {n} is not a duration")))?,
        ),
        Some(Value::String(s)) => {
            catalog::duration::parse(s).map_err(|e| bad(format!("LockDelay: {e}")))?
        }
        Some(other) => return Err(bad(format!("LockDelay {other} is not a duration"))),
    };
    Ok(if d < Duration::from_micros(1) {
        Duration::from_secs(d.as_nanos() as u64)
    } else {
        d
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Session, ApiError> {
        parse_session(body.as_bytes(), "agent-node")
    }

    #[test]
    fn an_empty_body_makes_a_session_of_the_agents_node_with_consuls_defaults() {
        let s = parse("").unwrap();
        assert_eq!(s.node, "agent-node");
        assert_eq!(s.lock_delay, Duration::from_secs(15));
        assert_eq!(s.behavior, Behavior::Release);
        assert_eq!(s.node_checks, [SERF_HEALTH_CHECK]);
        assert!(catalog::uuid::is_uuid(&s.id));
    }

    #[test]
    fn fields_are_read_in_any_case_as_py_consul_sends_them() {
        let s = parse(
            r#"{"name":"job","lockdelay":"0s","ttl":"30s","behavior":"delete","checks":[],
                "ServiceChecks":[{"ID":"svc-check"}],"Node":"n2"}"#,
        )
        .unwrap();
        assert_eq!(s.name, "job");
        assert_eq!(s.lock_delay, Duration::ZERO);
        assert_eq!(s.ttl, "30s");
        assert_eq!(s.behavior, Behavior::Delete);
        assert!(
            s.node_checks.is_empty(),
            "an empty Checks list drops serfHealth"
        );
        assert_eq!(s.service_checks, ["svc-check"]);
        assert_eq!(s.node, "n2");
    }

    #[test]
    fn lock_delays_under_a_microsecond_count_in_seconds() {
        assert_eq!(
            parse(r#"{"LockDelay": 15}"#).unwrap().lock_delay,
            Duration::from_secs(15)
        );
        assert_eq!(
            parse(r#"{"LockDelay": 2000000000}"#).unwrap().lock_delay,
            Duration::from_secs(2)
        );
        assert_eq!(
            parse(r#"{"LockDelay": "1500ms"}"#).unwrap().lock_delay,
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn bad_settings_get_consuls_texts() {
        let text = |body: &str| match parse(body) {
            Err(ApiError::Internal(t) | ApiError::BadRequest(t)) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            text(r#"{"Behavior":"keep"}"#),
            "Invalid Behavior setting 'keep'"
        );
        assert_eq!(
            text(r#"{"TTL":"5s"}"#),
            "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"
        );
        assert!(text(r#"{"TTL":"soon"}"#).starts_with("Session TTL 'soon' invalid"));
        assert!(text("{").starts_with("Request decode failed"));
    }
}
