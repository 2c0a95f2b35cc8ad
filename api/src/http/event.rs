//! `/v1/event/fire/:name` and `/v1/event/list`: user events.
//!
//! Firing needs `event:write` on the name (decided by the agent that fires it: this one,
//! or with `?dc=` a server of that datacenter). Listing shows this agent's last
//! [`lan::events::EVENT_BUFFER`] events, without those the caller may not `event:read`.
//! The list blocks as Consul's does: its index is derived from the last event's ID, and
//! `?index=` waits until the index differs from it (or `?wait=` passes).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use base64::Engine;
use catalog::acl::{Access, Resource};
use lan::events::{Fire, FireError, UserEvent};
use serde::Serialize;

use super::{ApiError, Params, REQUEST_TIMEOUT, add_filtered_header, json, read_request};
use crate::Context;

/// Consul's `UserEvent` JSON: `Payload` in base64, `null` when empty.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EventJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    payload: Option<String>,
    node_filter: &'a str,
    service_filter: &'a str,
    tag_filter: &'a str,
    version: u32,
    #[serde(rename = "LTime")]
    ltime: u64,
}

impl<'a> From<&'a UserEvent> for EventJson<'a> {
    fn from(e: &'a UserEvent) -> EventJson<'a> {
        EventJson {
            id: &e.id,
            name: &e.name,
            payload: (!e.payload.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&e.payload)),
            node_filter: &e.node_filter,
            service_filter: &e.service_filter,
            tag_filter: &e.tag_filter,
            version: e.version,
            ltime: e.ltime,
        }
    }
}

fn fire_error(e: FireError) -> ApiError {
    match e {
        FireError::Denied(text) => ApiError::Forbidden(text),
        other => ApiError::Internal(other.to_string()),
    }
}

/// `PUT /v1/event/fire/` with no name.
pub(crate) async fn fire_unnamed() -> Result<Response, ApiError> {
    Err(ApiError::BadRequest("Missing name".into()))
}

/// `PUT /v1/event/fire/:name?node=&service=&tag=&dc=`, the payload as body.
pub(crate) async fn fire(
    State(ctx): State<Context>,
    Path(name): Path<String>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    if name.is_empty() {
        return fire_unnamed().await;
    }
    let filter = |key| params.get(key).unwrap_or_default().to_owned();
    let fire = Fire {
        name,
        payload: body.to_vec(),
        node_filter: filter("node"),
        service_filter: filter("service"),
        tag_filter: filter("tag"),
    };
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let fired = ctx
        .gateway
        .fire_event(params.dc(), fire, deadline, params.principal())
        .await?
        .map_err(fire_error)?;
    Ok(json(&EventJson::from(&fired), params.pretty()))
}

/// The blocking index of a list: from its last event's ID, 1 when empty (never 0, so
/// that a watcher does not spin).
fn list_index(events: &[UserEvent]) -> u64 {
    events
        .last()
        .and_then(UserEvent::index)
        .filter(|i| *i > 0)
        .unwrap_or(1)
}

/// `GET /v1/event/list?name=&index=&wait=`.
pub(crate) async fn list(State(ctx): State<Context>, params: Params) -> Result<Response, ApiError> {
    let request = read_request(&params)?;
    let caller = super::gate::caller(&ctx, &params).await?;
    let name = params.get("name").filter(|n| !n.is_empty());
    let min_index = request.options.min_index;
    let mut changes = ctx.lan.events().subscribe();
    let (events, filtered, index) = loop {
        changes.mark_unchanged();
        let mut events = ctx.lan.events().list();
        if let Some(name) = name {
            events.retain(|e| e.name == name);
        }
        let before = events.len();
        if let Some(c) = &caller {
            events.retain(|e| c.may(Resource::Event, &e.name, Access::Read));
        }
        let filtered = events.len() != before;
        let index = list_index(&events);
        if min_index == 0 || index != min_index {
            break (events, filtered, index);
        }
        // The index is not monotonic: wait for any change, then look again.
        tokio::select! {
            changed = changes.changed() => if changed.is_err() {
                break (events, filtered, index);
            },
            _ = tokio::time::sleep_until(request.options.deadline) => break (events, filtered, index),
            _ = ctx.shutdown.cancelled() => break (events, filtered, index),
        }
    };
    let shown: Vec<EventJson> = events.iter().map(EventJson::from).collect();
    let mut response = json(&shown, request.pretty);
    add_filtered_header(&mut response, filtered);
    if let Ok(v) = HeaderValue::from_str(&index.to_string()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-consul-index"), v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_shown_as_consul_shows_it() {
        let mut e = UserEvent {
            id: "b54fe110-7af5-cafc-d1fb-afc8ba432b1c".into(),
            name: "deploy".into(),
            payload: b"abc".to_vec(),
            node_filter: String::new(),
            service_filter: "web".into(),
            tag_filter: String::new(),
            version: 1,
            ltime: 3,
        };
        let text = serde_json::to_string(&EventJson::from(&e)).unwrap();
        assert_eq!(
            text,
            r#"{"ID":"b54fe110-7af5-cafc-d1fb-afc8ba432b1c","Name":"deploy","Payload":"YWJj","NodeFilter":"","ServiceFilter":"web","TagFilter":"","Version":1,"LTime":3}"#
        );
        e.payload.clear();
        let text = serde_json::to_string(&EventJson::from(&e)).unwrap();
        assert!(text.contains(r#""Payload":null"#));
        assert_eq!(list_index(&[]), 1);
        assert_eq!(list_index(&[e]), 0xb54fe1107af5cafc ^ 0xd1fbafc8ba432b1c);
    }
}
