//! `/v1/kv/:key`: Consul's key/value endpoint.
//!
//! | request | does | answers |
//! |---|---|---|
//! | `GET` | one key; `?recurse` every key with the prefix; `?keys` (with `?separator`) the key names | JSON array, or 404 with the index headers |
//! | `GET ?raw` | one key's value as it was stored | the bytes |
//! | `PUT` | sets the value (the body) and `?flags` (0 when absent); `?cas=N` only at that index | `true`/`false` |
//! | `DELETE` | one key, or `?recurse` the prefix; `?cas=N` only at that index | `true`/`false` |
//!
//! Every request takes `?dc=`; reads also `?stale`, `?consistent`, `?index` and `?wait`.
//! A blocking read of a key waits on that key's index, and a prefix read on the newest
//! change under the prefix, deletions included (see the catalog's KV table).
//!
//! Keys are taken as the path gives them after `/v1/kv/`, case-sensitive. A key with a
//! `.` or `..` segment is refused: Consul's router never delivers those, and they read
//! as a path traversal to every proxy in front of it.
//!
//! `PUT ?acquire=SESSION` takes the key's lock for a session (and writes the value), and
//! `?release=SESSION` gives it back; each answers `false` when the lock is held by
//! another session, is not held, or is in an ended session's lock delay.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use catalog::{Answer, ApplyError, Command, KvAnswer, KvRead, KvWrite, Query, WriteError};
use gateway::RouteError;
use tokio::time::Instant;

use super::catalog::read_and_render;
use catalog::acl::{Access, Resource};

use super::{ApiError, BodyRead, Params, REQUEST_TIMEOUT, json, read_limited};
use crate::Context;

/// `GET /v1/kv/` (the root, for `?recurse` and `?keys`).
pub(crate) async fn get_root(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    read(&ctx, String::new(), &params).await
}

/// `GET /v1/kv/:key`.
pub(crate) async fn get(
    State(ctx): State<Context>,
    Path(key): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    read(&ctx, checked_key(key)?, &params).await
}

/// `PUT /v1/kv/` (always refused: a write needs a key).
pub(crate) async fn put_root() -> Result<Response, ApiError> {
    Err(missing_key())
}

/// `PUT /v1/kv/:key`.
pub(crate) async fn put(
    State(ctx): State<Context>,
    Path(key): Path<String>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = checked_key(key)?;
    conflicting_flags(&params, &["cas", "acquire", "release"])?;
    let flags = number(&params, "flags")?.unwrap_or(0);
    let cas = number(&params, "cas")?;
    let value = read_value(&ctx, &headers, body).await?;
    let write = if let Some(session) = params.get("acquire") {
        KvWrite::Acquire {
            key,
            value,
            flags,
            session: session.to_owned(),
        }
    } else if let Some(session) = params.get("release") {
        KvWrite::Release {
            key,
            value,
            flags,
            session: session.to_owned(),
        }
    } else {
        KvWrite::Set {
            key,
            value,
            flags,
            cas,
        }
    };
    write_and_answer(&ctx, &params, write).await
}

/// `DELETE /v1/kv/` (every key with `?recurse`).
pub(crate) async fn delete_root(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    delete(&ctx, String::new(), &params).await
}

/// `DELETE /v1/kv/:key`.
pub(crate) async fn delete_key(
    State(ctx): State<Context>,
    Path(key): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    delete(&ctx, checked_key(key)?, &params).await
}

async fn delete(ctx: &Context, key: String, params: &Params) -> Result<Response, ApiError> {
    let recurse = params.has("recurse");
    if recurse {
        conflicting_flags(params, &["recurse", "cas"])?;
    } else if key.is_empty() {
        return Err(missing_key());
    }
    let write = if recurse {
        KvWrite::DeleteTree { prefix: key }
    } else {
        KvWrite::Delete {
            key,
            cas: number(params, "cas")?,
        }
    };
    write_and_answer(ctx, params, write).await
}

async fn read(ctx: &Context, key: String, params: &Params) -> Result<Response, ApiError> {
    let keys = params.has("keys");
    let recurse = params.has("recurse");
    if key.is_empty() && !keys && !recurse {
        return Err(missing_key());
    }
    let raw = params.has("raw") && !keys && !recurse;
    let kv_read = if keys {
        // Consul takes its own misspelling too.
        let separator = params
            .get("separator")
            .or_else(|| params.get("seperator"))
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        KvRead::Keys { separator }
    } else if recurse {
        KvRead::Tree
    } else {
        KvRead::Entry
    };
    let root = key.is_empty();
    let query = Query::Kv { key, read: kv_read };
    let rest = params.without(&["keys", "recurse", "raw", "separator", "seperator"]);
    read_and_render(ctx, &rest, query, |answer, pretty| match answer {
        Answer::Kv(KvAnswer::Entries(entries)) if entries.is_empty() => not_found(),
        Answer::Kv(KvAnswer::Entries(entries)) if raw => raw_value(&entries[0].value),
        Answer::Kv(KvAnswer::Entries(entries)) => json(
            &entries
                .iter()
                .map(super::json::kv_entry)
                .collect::<Vec<_>>(),
            pretty,
        ),
        // An empty key list is `[]` at the root and 404 under a prefix, as in Consul.
        Answer::Kv(KvAnswer::Keys(list)) if list.is_empty() && !root => not_found(),
        Answer::Kv(KvAnswer::Keys(list)) => json(&list, pretty),
        other => {
            ApiError::Internal(format!("unexpected answer to a KV read: {other:?}")).into_response()
        }
    })
    .await
}

/// Makes `write` in the datacenter `?dc=` names and answers `true`, or `false` when its
/// condition (`?cas`) did not hold.
async fn write_and_answer(
    ctx: &Context,
    params: &Params,
    write: KvWrite,
) -> Result<Response, ApiError> {
    let done = ctx
        .gateway
        .write(
            params.dc(),
            Command::Kv(write),
            Instant::now() + REQUEST_TIMEOUT,
            params.principal(),
        )
        .await;
    match done {
        Ok(_) => Ok(json(&true, params.pretty())),
        Err(RouteError::Write(WriteError::Rejected(ApplyError::KvRefused(_)))) => {
            Ok(json(&false, params.pretty()))
        }
        // Consul answers what it does not map (an unknown session) with 500 and the text.
        Err(RouteError::Write(WriteError::Rejected(ApplyError::Kv(why)))) => {
            Err(ApiError::Internal(why))
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /v1/operator/kv-replication`: where the copy of another datacenter's keys
/// stands on this server (only the leader replicates; the others say `Running: false`).
pub(crate) async fn replication(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    super::gate::require(&ctx, &params, Resource::Operator, "", Access::Read).await?;
    let body = match &ctx.kv_replication {
        None => serde_json::json!({ "Enabled": false }),
        Some(status) => serde_json::json!({
            "Enabled": true,
            "SourceDatacenter": status.config().source,
            "Exclude": status.config().exclude,
            "Prefixes": status.prefixes(),
        }),
    };
    Ok(json(&body, params.pretty()))
}

/// The key as the path gave it, refused when it has a `.` or `..` segment.
fn checked_key(key: String) -> Result<String, ApiError> {
    if key
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(ApiError::BadRequest(format!(
            "Invalid key {key:?}: a key must not have a \".\" or \"..\" segment"
        )));
    }
    Ok(key)
}

fn missing_key() -> ApiError {
    ApiError::BadRequest("Missing key name".into())
}

/// Refuses more than one of `flags` in the request, with Consul's text (the whole query,
/// its parameters sorted by name).
fn conflicting_flags(params: &Params, flags: &[&str]) -> Result<(), ApiError> {
    if flags.iter().filter(|f| params.has(f)).count() > 1 {
        return Err(ApiError::BadRequest(format!(
            "Conflicting flags: {}",
            params.without(&["token"]).sorted().encode()
        )));
    }
    Ok(())
}

/// An unsigned number parameter, refused with Go's `strconv` text (Consul's answer).
fn number(params: &Params, key: &str) -> Result<Option<u64>, ApiError> {
    let Some(text) = params.get(key) else {
        return Ok(None);
    };
    match text.parse::<u64>() {
        Ok(n) => Ok(Some(n)),
        Err(e) => {
            let why = match e.kind() {
                std::num::IntErrorKind::PosOverflow => "value out of range",
                _ => "invalid syntax",
            };
            Err(ApiError::Internal(format!(
                "strconv.ParseUint: parsing {text:?}: {why}"
            )))
        }
    }
}

/// Reads a value of at most `kv_max_value_size` bytes, refusing a larger one (by its
/// `Content-Length`, or as it arrives) with Consul's 413 text.
async fn read_value(ctx: &Context, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
    let max = ctx.agent.kv_max_value_size;
    let too_large = |n: String| {
        ApiError::TooLarge(format!(
            "Request body({n} bytes) too large, max size: {max} bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared
        && n > max as u64
    {
        return Err(too_large(n.to_string()));
    }
    match read_limited(body, max).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(BodyRead::TooLarge) => Err(too_large(format!("more than {max}"))),
        Err(BodyRead::Failed(why)) => Err(ApiError::BadRequest(why)),
    }
}

/// A 404 with an empty body (the index headers are added by the caller).
fn not_found() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

/// A value as stored, served so that no browser renders it as a page.
fn raw_value(value: &[u8]) -> Response {
    let mut response = value.to_vec().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_segments_are_refused_and_other_keys_kept_as_given() {
        assert!(checked_key("a/../b".into()).is_err());
        assert!(checked_key("..".into()).is_err());
        assert!(checked_key("./x".into()).is_err());
        assert_eq!(checked_key("a..b/c.".into()).unwrap(), "a..b/c.");
        assert_eq!(checked_key("Config/Web/".into()).unwrap(), "Config/Web/");
    }

    #[test]
    fn numbers_are_refused_with_go_s_text() {
        let p = Params::parse(Some("cas=abc&flags=99999999999999999999999"));
        let text = |r: Result<Option<u64>, ApiError>| match r {
            Err(ApiError::Internal(t)) => t,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(
            text(number(&p, "cas")),
            "strconv.ParseUint: parsing \"abc\": invalid syntax"
        );
        assert_eq!(
            text(number(&p, "flags")),
            "strconv.ParseUint: parsing \"99999999999999999999999\": value out of range"
        );
        assert_eq!(number(&p, "absent").unwrap(), None);
    }

    #[test]
    fn conflicting_flags_name_the_sorted_query() {
        let p = Params::parse(Some("cas=0&acquire=x"));
        match conflicting_flags(&p, &["cas", "acquire", "release"]) {
            Err(ApiError::BadRequest(t)) => assert_eq!(t, "Conflicting flags: acquire=x&cas=0"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(conflicting_flags(&Params::parse(Some("cas=0")), &["cas", "acquire"]).is_ok());
    }
}
