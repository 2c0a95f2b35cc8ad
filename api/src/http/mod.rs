//! Consul's HTTP API on the HTTP port (8500), and on the HTTPS port when it is on.
//!
//! Each handler parses its request into a catalog [`Query`](catalog::Query) or
//! [`Command`](catalog::Command) for a datacenter, hands it to the gateway, and
//! renders the answer in Consul's JSON shapes (`json`) with Consul's headers. Errors
//! become Consul's status codes and texts (`ApiError`). Listing endpoints that take
//! `?filter=` keep the rendered items its expression passes (`filter`).

mod acl;
pub(crate) mod agent;
mod agent_health;
mod agent_token;
mod autopilot;
pub(crate) mod catalog;
mod coordinate;
mod deadline;
pub(crate) mod event;
pub(crate) mod filter;
mod gate;
mod health;
mod host;
mod internal_ui;
pub(crate) mod json;
pub(crate) mod keyring;
mod kv;
mod maintenance;
mod metrics;
mod monitor;
pub(crate) mod query;
mod server;
pub(crate) mod session;
pub(crate) mod snapshot;
mod status;
pub(crate) mod txn;
mod ui;

use std::time::Duration;

use ::catalog::{Consistency, Principal, ReadError, ReadMeta, ReadOptions, WriteError};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use gateway::RouteError;
use serde::Serialize;
use tokio::time::Instant;

use crate::Context;

pub use ui::UiConfig;

pub use server::{
    BODY_TIMEOUT, HEADER_READ_TIMEOUT, HttpLimits, Https, Listening, MAX_BLOCKING_QUERIES,
    MAX_BLOCKING_QUERIES_PER_CLIENT, MAX_BODY_BYTES, MAX_CONNECTIONS, MAX_CONNS_PER_CLIENT,
    MAX_HEADER_BYTES, MAX_REFUSALS, WRITE_TIMEOUT, start,
};

/// Blocking-query wait when `?wait` is absent (Consul: 5m).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest blocking-query wait (Consul: 10m).
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Budget of a write, and of the consistency check of a non-blocking read.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP error in Consul's shape: a status and a plain-text body.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 400 with a message.
    BadRequest(String),
    /// 404 with a message.
    NotFound(String),
    /// 413 with a message: the request body is over a limit.
    TooLarge(String),
    /// 429 with a message: a limit was reached, retry later.
    TooManyRequests(String),
    /// 401 with a message: ACLs are off (Consul's answer to an ACL endpoint then).
    Unauthorized(String),
    /// 403 with a message: ACLs refused the request.
    Forbidden(String),
    /// 500 with a message.
    Internal(String),
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::Busy { .. } => ApiError::TooManyRequests(e.to_string()),
            RouteError::Read(e) => e.into(),
            RouteError::Write(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::AclNotFound | ReadError::Denied(_) => ApiError::Forbidden(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::AclNotFound | WriteError::Denied(_) => ApiError::Forbidden(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            ApiError::BadRequest(t) => (StatusCode::BAD_REQUEST, t),
            ApiError::NotFound(t) => (StatusCode::NOT_FOUND, t),
            ApiError::TooLarge(t) => (StatusCode::PAYLOAD_TOO_LARGE, t),
            ApiError::TooManyRequests(t) => (StatusCode::TOO_MANY_REQUESTS, t),
            ApiError::Unauthorized(t) => (StatusCode::UNAUTHORIZED, t),
            ApiError::Forbidden(t) => (StatusCode::FORBIDDEN, t),
            ApiError::Internal(t) => (StatusCode::INTERNAL_SERVER_ERROR, t),
        };
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text,
        )
            .into_response();
        response.extensions_mut().insert(Worded);
        response
    }
}

/// Marks a response whose error text is the handler's own (not to be reworded).
#[derive(Debug, Clone, Copy)]
struct Worded;

/// Query-string parameters in order, with repeats (`?tag=a&tag=b`), and whom the request
/// is for: the token it presents (`?token=`, else `X-Consul-Token`, else
/// `Authorization: Bearer`), else the agent's default token, else anonymous.
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
    principal: Principal,
}

impl Params {
    /// The parameters of a query string, for an anonymous caller.
    pub(crate) fn parse(raw: Option<&str>) -> Params {
        Params {
            pairs: raw
                .map(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            principal: Principal::Anonymous,
        }
    }

    /// Whom the request is for.
    pub(crate) fn principal(&self) -> &Principal {
        &self.principal
    }

    /// These parameters for the holder of `secret` instead.
    pub(crate) fn with_token(&self, secret: &str) -> Params {
        Params {
            pairs: self.pairs.clone(),
            principal: Principal::Token(secret.into()),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// `?dc=`; empty means the local datacenter.
    pub(crate) fn dc(&self) -> Option<&str> {
        self.get("dc").filter(|d| !d.is_empty())
    }

    /// Go's `strconv.ParseBool` on a flag parameter: absent → `None`, present with no
    /// value → true.
    pub(crate) fn flag(&self, key: &str) -> Result<Option<bool>, ()> {
        match self.get(key) {
            None => Ok(None),
            Some("") => Ok(Some(true)),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
            Some(_) => Err(()),
        }
    }

    /// These parameters without `keys` (which the caller handles itself).
    pub(crate) fn without(&self, keys: &[&str]) -> Params {
        Params {
            pairs: self
                .pairs
                .iter()
                .filter(|(k, _)| !keys.contains(&k.as_str()))
                .cloned()
                .collect(),
            principal: self.principal.clone(),
        }
    }

    /// These parameters sorted by name (Go's `url.Values.Encode` order).
    pub(crate) fn sorted(&self) -> Params {
        let mut pairs = self.pairs.clone();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        Params {
            pairs,
            principal: self.principal.clone(),
        }
    }

    /// These parameters as a query string (without the `?`).
    pub(crate) fn encode(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&self.pairs)
            .finish()
    }

    /// `?pretty` (any value).
    pub(crate) fn pretty(&self) -> bool {
        self.has("pretty")
    }

    /// `?node-meta=key:value`, repeatable.
    pub(crate) fn node_meta(&self) -> Result<Vec<(String, String)>, ApiError> {
        self.all("node-meta")
            .into_iter()
            .map(|kv| match kv.split_once(':') {
                Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
                None => Ok((kv, String::new())),
            })
            .collect()
    }

    /// `?filter=`, checked against `schema` (the fields of the endpoint's items); absent
    /// or empty means no filter, as in Consul. A bad expression is a 400 with Consul's
    /// text.
    pub(crate) fn filter(
        &self,
        schema: filter::Schema,
    ) -> Result<Option<filter::Filter>, ApiError> {
        match self.get("filter") {
            None | Some("") => Ok(None),
            Some(text) => filter::Filter::new(text, schema)
                .map(Some)
                .map_err(|e| ApiError::BadRequest(e.to_string())),
        }
    }

    /// Parameters proconsul does not implement; refusing them beats answering as if
    /// they were not there.
    pub(crate) fn refuse_unsupported(&self) -> Result<(), ApiError> {
        for key in ["filter", "near", "peer"] {
            if self.has(key) {
                return Err(ApiError::BadRequest(format!(
                    "the ?{key} parameter is not supported by proconsul"
                )));
            }
        }
        Ok(())
    }
}

/// The token a request presents, by Consul's precedence: `?token=`, `X-Consul-Token`,
/// `Authorization: Bearer` (scheme in any case). Empty values count as none.
fn presented_token(params: &Params, headers: &axum::http::HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = header("authorization").and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    params
        .get("token")
        .or_else(|| header("x-consul-token"))
        .or(bearer)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

impl axum::extract::FromRequestParts<Context> for Params {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        ctx: &Context,
    ) -> Result<Params, Self::Rejection> {
        let mut params = Params::parse(parts.uri.query());
        let token = presented_token(&params, &parts.headers).or_else(|| ctx.lan.default_token());
        params.principal = Principal::from_wire(token);
        Ok(params)
    }
}

/// The read parameters every blocking-capable endpoint shares.
pub(crate) struct ReadRequest {
    pub(crate) options: ReadOptions,
    pub(crate) pretty: bool,
    /// `?cached`, with `max-age` and `stale-if-error` (parameters, or directives of the
    /// `Cache-Control` header).
    pub(crate) cache: Option<gateway::CachePolicy>,
}

/// How old a cached answer `?cached` accepts when no `max-age` says (proconsul's cache
/// is not refreshed in the background, so "any age" would mean "any staleness").
pub const DEFAULT_CACHE_MAX_AGE: Duration = Duration::from_secs(3);

fn seconds_param(params: &Params, key: &str) -> Result<Option<Duration>, ApiError> {
    match params.get(key) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .map(|s| Some(Duration::from_secs(s)))
            .map_err(|_| {
                ApiError::BadRequest(format!("Invalid {key} value {v:?}: seconds expected"))
            }),
    }
}

fn cache_policy(params: &Params) -> Result<Option<gateway::CachePolicy>, ApiError> {
    if !params.has("cached") {
        return Ok(None);
    }
    if params.has("consistent") {
        return Err(ApiError::BadRequest(
            "Cannot specify ?cached with ?consistent, conflicting semantics.".into(),
        ));
    }
    Ok(Some(gateway::CachePolicy {
        max_age: seconds_param(params, "max-age")?.unwrap_or(DEFAULT_CACHE_MAX_AGE),
        stale_if_error: seconds_param(params, "stale-if-error")?,
    }))
}

/// Moves the `max-age`, `must-revalidate` and `stale-if-error` directives of a
/// `Cache-Control` request header into the query string, where the read handlers find
/// them (a query-string value wins).
async fn cache_control_params(mut request: axum::extract::Request) -> axum::extract::Request {
    let Some(control) = request
        .headers()
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return request;
    };
    let query = request.uri().query().unwrap_or("").to_owned();
    let present = Params::parse(Some(&query));
    let mut extra = Vec::new();
    for directive in control.split(',').map(str::trim) {
        let (name, value) = directive.split_once('=').unwrap_or((directive, ""));
        let name = name.trim().to_ascii_lowercase();
        let (key, value) = match name.as_str() {
            "max-age" | "stale-if-error" => (name.clone(), value.trim().to_owned()),
            "must-revalidate" => ("max-age".to_owned(), "0".to_owned()),
            _ => continue,
        };
        if !present.has(&key) && value.chars().all(|c| c.is_ascii_digit()) && !value.is_empty() {
            extra.push(format!("{key}={value}"));
        }
    }
    if extra.is_empty() {
        return request;
    }
    let joined = if query.is_empty() {
        extra.join("&")
    } else {
        format!("{query}&{}", extra.join("&"))
    };
    let path_and_query = format!("{}?{joined}", request.uri().path());
    if let Ok(uri) = path_and_query.parse() {
        *request.uri_mut() = uri;
    }
    request
}

/// Parses `?stale`, `?consistent`, `?index` and `?wait`.
pub(crate) fn read_request(params: &Params) -> Result<ReadRequest, ApiError> {
    params.refuse_unsupported()?;
    let max_stale = match params.get("max_stale") {
        None | Some("") => None,
        Some(m) => Some(
            ::catalog::duration::parse(m)
                .map_err(|_| ApiError::BadRequest("Invalid max_stale value".into()))?,
        ),
    };
    let stale = params.has("stale") || max_stale.is_some();
    let consistent = params.has("consistent");
    if stale && consistent {
        return Err(ApiError::BadRequest(
            "Cannot specify ?stale with ?consistent, conflicting semantics.".into(),
        ));
    }
    let consistency = if stale {
        Consistency::Stale
    } else if consistent {
        Consistency::Consistent
    } else {
        Consistency::Default
    };
    let min_index = match params.get("index") {
        None | Some("") => 0,
        Some(i) => i
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest("Invalid index".into()))?,
    };
    let wait = match params.get("wait") {
        None | Some("") => DEFAULT_WAIT,
        Some(w) => ::catalog::duration::parse(w)
            .map_err(|_| ApiError::BadRequest("Invalid wait time".into()))?,
    }
    .min(MAX_WAIT);
    let deadline = if min_index > 0 {
        // Consul adds up to wait/16 of jitter so that many watchers do not return at once.
        let jitter_ms = (wait.as_millis() / 16) as u64;
        Instant::now() + wait + Duration::from_millis(rand::random_range(0..=jitter_ms))
    } else {
        Instant::now() + REQUEST_TIMEOUT
    };
    Ok(ReadRequest {
        options: ReadOptions {
            consistency,
            min_index,
            deadline,
            max_stale,
            principal: params.principal().clone(),
        },
        pretty: params.pretty(),
        cache: cache_policy(params)?,
    })
}

/// Serialises `value` as Consul does: compact, or with 4-space indents and a trailing
/// newline under `?pretty`.
pub(crate) fn to_json<T: Serialize>(value: &T, pretty: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let result = if pretty {
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
        value.serialize(&mut ser)
    } else {
        serde_json::to_writer(&mut out, value)
    };
    // Our shapes are maps with string keys and plain values: serialising cannot fail.
    result.expect("response serialises");
    if pretty {
        out.push(b'\n');
    }
    out
}

/// A JSON response.
pub(crate) fn json<T: Serialize>(value: &T, pretty: bool) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        to_json(value, pretty),
    )
        .into_response()
}

/// Adds `X-Cache` and `Age` to the response of a read that asked for the cache.
pub(crate) fn add_cache_headers(response: &mut Response, status: Option<gateway::CacheStatus>) {
    let (hit, age) = match status {
        None => return,
        Some(gateway::CacheStatus::Hit(age)) => ("HIT", age.as_secs()),
        Some(gateway::CacheStatus::Miss) => ("MISS", 0),
    };
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("x-cache"),
        HeaderValue::from_static(hit),
    );
    if let Ok(v) = HeaderValue::from_str(&age.to_string()) {
        headers.insert(header::AGE, v);
    }
}

/// Adds the blocking-query headers to a read's response.
/// `X-Consul-Results-Filtered-By-ACLs: true` when ACLs left something out of an answer.
/// Consul hides it from anonymous callers; proconsul says it to everyone, as knowing that
/// something was hidden tells nothing about what.
pub(crate) fn add_filtered_header(response: &mut Response, filtered: bool) {
    if filtered {
        response.headers_mut().insert(
            HeaderName::from_static("x-consul-results-filtered-by-acls"),
            HeaderValue::from_static("true"),
        );
    }
}

pub(crate) fn add_meta_headers(
    response: &mut Response,
    index: u64,
    meta: ReadMeta,
    consistency: Consistency,
) {
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set(headers, "x-consul-index", index.max(1).to_string());
    set(
        headers,
        "x-consul-knownleader",
        meta.known_leader.to_string(),
    );
    set(
        headers,
        "x-consul-lastcontact",
        meta.last_contact.as_millis().to_string(),
    );
    let effective = match consistency {
        Consistency::Default => "leader",
        Consistency::Stale => "stale",
        Consistency::Consistent => "consistent",
    };
    set(headers, "x-consul-effective-consistency", effective.into());
}

/// Why a body read with [`read_limited`] was not taken.
pub(crate) enum BodyRead {
    /// It passed the limit.
    TooLarge,
    /// The client did not send it whole (closed, timed out).
    Failed(String),
}

/// Reads a request body of at most `max` bytes, telling a body over the limit from one
/// that could not be read.
pub(crate) async fn read_limited(
    body: axum::body::Body,
    max: usize,
) -> Result<axum::body::Bytes, BodyRead> {
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return BodyRead::TooLarge;
            }
            source = err.source();
        }
        BodyRead::Failed(format!("Request body could not be read: {e}"))
    })
}

/// Parses a JSON request body, with Consul's error text on failure.
pub(crate) fn parse_body(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "Request decode failed: request body is empty".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))
}

/// Paths no route claims: the web UI's, when it is on and the path is under its content
/// path; otherwise Consul's 404.
async fn fallback(
    axum::extract::State(ctx): axum::extract::State<Context>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    ui: std::sync::Arc<ui::Ui>,
) -> Response {
    if let Some(response) = ui.serve(&ctx, &method, uri.path(), &headers) {
        return response;
    }
    not_found(uri)
}

fn not_found(uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!(
            "Invalid URL path: not a recognized HTTP API endpoint: {}",
            uri.path()
        ),
    )
        .into_response()
}

async fn method_not_allowed(method: Method) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("method {method} not allowed"),
    )
        .into_response()
}

/// Adds what Consul adds to every answer: `X-Consul-Default-ACL-Policy`, the agent's
/// `acl.default_policy` (`allow` with ACLs off), which the UI reads.
async fn add_common_headers(
    mut response: Response,
    max_body_bytes: usize,
    default_policy: &'static str,
) -> Response {
    response.headers_mut().insert(
        HeaderName::from_static("x-consul-default-acl-policy"),
        HeaderValue::from_static(default_policy),
    );
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE
        && response.extensions().get::<Worded>().is_none()
    {
        let text = format!("Request body too large: the limit is {max_body_bytes} bytes");
        let mut replaced = (StatusCode::PAYLOAD_TOO_LARGE, text).into_response();
        std::mem::swap(replaced.headers_mut(), response.headers_mut());
        replaced.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        replaced.headers_mut().remove(header::CONTENT_LENGTH);
        return replaced;
    }
    response
}

/// The API's routes.
pub(crate) fn router(ctx: Context, max_body_bytes: usize) -> Router {
    let ui = std::sync::Arc::new(ui::Ui::new(ctx.ui.clone()));
    let root = ui.clone();
    let default_policy = match ctx.lan.acl_config() {
        Some(acl) if !acl.default_allow => "deny",
        _ => "allow",
    };
    Router::new()
        .route(
            "/",
            get(move || {
                let root = root.clone();
                async move { root.root() }
            }),
        )
        .route("/v1/internal/ui/services", get(internal_ui::services))
        .route("/v1/internal/ui/nodes", get(internal_ui::nodes))
        .route("/v1/internal/ui/node/{node}", get(internal_ui::node))
        .route("/v1/internal/ui/datacenters", get(internal_ui::datacenters))
        .route("/v1/catalog/datacenters", get(catalog::datacenters))
        .route("/v1/catalog/nodes", get(catalog::nodes))
        .route("/v1/catalog/services", get(catalog::services))
        .route("/v1/catalog/service/{name}", get(catalog::service))
        .route("/v1/catalog/node/{node}", get(catalog::node))
        .route(
            "/v1/catalog/node-services/{node}",
            get(catalog::node_services),
        )
        .route("/v1/catalog/register", put(catalog::register))
        .route("/v1/catalog/deregister", put(catalog::deregister))
        .route("/v1/health/service/{name}", get(health::service))
        .route("/v1/health/node/{node}", get(health::node))
        .route("/v1/health/checks/{service}", get(health::checks))
        .route("/v1/health/state/{state}", get(health::state))
        .route("/v1/coordinate/datacenters", get(coordinate::datacenters))
        .route("/v1/coordinate/nodes", get(coordinate::nodes))
        .route("/v1/coordinate/node/{node}", get(coordinate::node))
        .route("/v1/event/fire/", put(event::fire_unnamed))
        .route("/v1/event/fire/{name}", put(event::fire))
        .route("/v1/event/list", get(event::list))
        .route("/v1/agent/self", get(agent::self_info))
        .route("/v1/agent/members", get(agent::members))
        .route("/v1/agent/metrics", get(metrics::metrics))
        .route("/v1/agent/services", get(agent::services))
        .route("/v1/agent/service/{id}", get(agent::service))
        .route("/v1/agent/checks", get(agent::checks))
        .route("/v1/agent/service/register", put(agent::register_service))
        .route(
            "/v1/agent/service/deregister/{id}",
            put(agent::deregister_service),
        )
        .route("/v1/agent/check/register", put(agent::register_check))
        .route(
            "/v1/agent/check/deregister/{id}",
            put(agent::deregister_check),
        )
        .route("/v1/agent/check/pass/{id}", put(agent::check_pass))
        .route("/v1/agent/check/warn/{id}", put(agent::check_warn))
        .route("/v1/agent/check/fail/{id}", put(agent::check_fail))
        .route("/v1/agent/check/update/{id}", put(agent::check_update))
        .route("/v1/agent/host", get(host::host_info))
        .route("/v1/agent/version", get(host::version))
        .route("/v1/agent/maintenance", put(maintenance::node))
        .route(
            "/v1/agent/service/maintenance/{id}",
            put(maintenance::service),
        )
        .route(
            "/v1/agent/service/maintenance/",
            put(maintenance::service_without_id),
        )
        .route("/v1/agent/health/service/id/{id}", get(agent_health::by_id))
        .route(
            "/v1/agent/health/service/id/",
            get(agent_health::id_missing),
        )
        .route(
            "/v1/agent/health/service/name/{name}",
            get(agent_health::by_name),
        )
        .route(
            "/v1/agent/health/service/name/",
            get(agent_health::name_missing),
        )
        .route("/v1/agent/leave", put(agent::leave))
        .route("/v1/agent/join/{addr}", put(agent::join))
        .route("/v1/agent/force-leave/{node}", put(agent::force_leave))
        .route("/v1/agent/monitor", get(monitor::monitor))
        .route(
            "/v1/operator/keyring",
            get(keyring::list)
                .post(keyring::install)
                .put(keyring::use_key)
                .delete(keyring::remove),
        )
        .route("/v1/agent/reload", put(agent::reload))
        .route("/v1/agent/token/{kind}", put(agent_token::set))
        .route(
            "/v1/query",
            get(query::list).post(query::create).put(query::create),
        )
        .route(
            "/v1/query/{id}",
            get(query::read).put(query::update).delete(query::delete),
        )
        .route("/v1/query/{id}/execute", get(query::execute))
        .route("/v1/query/{id}/explain", get(query::explain))
        .route(
            "/v1/kv/",
            get(kv::get_root).put(kv::put_root).delete(kv::delete_root),
        )
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete_key),
        )
        .route("/v1/session/create", put(session::create))
        .route("/v1/session/destroy/{id}", put(session::destroy))
        .route("/v1/session/renew/{id}", put(session::renew))
        .route("/v1/session/info/{id}", get(session::info))
        .route("/v1/session/node/{node}", get(session::node))
        .route("/v1/session/list", get(session::list))
        .route("/v1/txn", put(txn::apply))
        .route("/v1/operator/kv-replication", get(kv::replication))
        .route("/v1/acl/bootstrap", put(acl::bootstrap))
        .route("/v1/acl/replication", get(acl::replication))
        .route("/v1/acl/token", put(acl::token_create))
        .route("/v1/acl/tokens", get(acl::token_list))
        .route("/v1/acl/token/self", get(acl::token_self))
        .route(
            "/v1/acl/token/{accessor}",
            get(acl::token_read)
                .put(acl::token_update)
                .delete(acl::token_delete),
        )
        .route("/v1/acl/token/{accessor}/clone", put(acl::token_clone))
        .route("/v1/acl/policy", put(acl::policy_create))
        .route("/v1/acl/policies", get(acl::policy_list))
        .route("/v1/acl/policy/name/{name}", get(acl::policy_read_by_name))
        .route(
            "/v1/acl/policy/{id}",
            get(acl::policy_read)
                .put(acl::policy_update)
                .delete(acl::policy_delete),
        )
        .route("/v1/acl/role", put(acl::role_create))
        .route("/v1/acl/roles", get(acl::role_list))
        .route("/v1/acl/role/name/{name}", get(acl::role_read_by_name))
        .route(
            "/v1/acl/role/{id}",
            get(acl::role_read)
                .put(acl::role_update)
                .delete(acl::role_delete),
        )
        .route("/v1/acl/{*rest}", axum::routing::any(acl::unsupported))
        .route("/v1/status/leader", get(status::leader))
        .route("/v1/status/peers", get(status::peers))
        .route(
            "/v1/snapshot",
            // The restore reads its body itself, once it is its turn, up to
            // `snapshot::MAX_SNAPSHOT_BYTES`.
            get(snapshot::save).put(snapshot::restore),
        )
        .route(
            "/v1/operator/autopilot/configuration",
            get(autopilot::get_config).put(autopilot::put_config),
        )
        .route("/v1/operator/autopilot/health", get(autopilot::health))
        .route("/v1/operator/autopilot/state", get(autopilot::state))
        .route(
            "/v1/operator/raft/configuration",
            get(status::raft_configuration),
        )
        .route(
            "/v1/operator/raft/peer",
            axum::routing::delete(status::raft_remove_peer),
        )
        .fallback(
            move |state: axum::extract::State<Context>,
                  method: Method,
                  uri: axum::http::Uri,
                  headers: HeaderMap| fallback(state, method, uri, headers, ui.clone()),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(move |r: Response| {
            add_common_headers(r, max_body_bytes, default_policy)
        }))
        .layer(axum::middleware::map_request(cache_control_params))
        .layer(axum::middleware::from_fn(metrics::record_http))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_taken_from_the_query_then_the_header_then_bearer() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        let all = headers(&[("x-consul-token", "h"), ("authorization", "Bearer b")]);
        let p = Params::parse(Some("token=q"));
        assert_eq!(presented_token(&p, &all).as_deref(), Some("q"));
        let none = Params::parse(None);
        assert_eq!(presented_token(&none, &all).as_deref(), Some("h"));
        let bearer = headers(&[("authorization", "bEaReR  b2 ")]);
        assert_eq!(presented_token(&none, &bearer).as_deref(), Some("b2"));
        let basic = headers(&[("authorization", "Basic dXNlcg==")]);
        assert_eq!(presented_token(&none, &basic), None);
        let empty = Params::parse(Some("token="));
        assert_eq!(presented_token(&empty, &headers(&[])), None);
    }

    async fn rewritten(uri: &str, control: &str) -> String {
        let request = axum::http::Request::builder()
            .uri(uri)
            .header(header::CACHE_CONTROL, control)
            .body(axum::body::Body::empty())
            .unwrap();
        cache_control_params(request).await.uri().to_string()
    }

    #[tokio::test]
    async fn cache_control_directives_become_parameters() {
        assert_eq!(
            rewritten(
                "/v1/catalog/services?cached",
                "max-age=30, stale-if-error=600"
            )
            .await,
            "/v1/catalog/services?cached&max-age=30&stale-if-error=600"
        );
        assert_eq!(
            rewritten("/v1/catalog/services?cached", "must-revalidate").await,
            "/v1/catalog/services?cached&max-age=0"
        );
        assert_eq!(
            rewritten("/v1/catalog/services?cached&max-age=5", "max-age=30").await,
            "/v1/catalog/services?cached&max-age=5",
            "the query string wins"
        );
        assert_eq!(
            rewritten("/v1/catalog/services", "no-cache, max-age=abc").await,
            "/v1/catalog/services"
        );
    }
}
