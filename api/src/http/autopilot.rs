//! `/v1/operator/autopilot/{configuration,health,state}`: autopilot's settings (in the
//! Raft log, with check-and-set) and the leader's view of its servers' health.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use catalog::acl::{Access, Resource};
use catalog::{Answer, AutopilotConfig, AutopilotHealth, Command, Query};

use super::catalog::read_and_render;
use super::{ApiError, Params, REQUEST_TIMEOUT, gate, json};
use crate::Context;

/// Autopilot's settings in Consul's JSON (durations as Go writes them).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ConfigJson {
    #[serde(default)]
    cleanup_dead_servers: Option<bool>,
    #[serde(default)]
    last_contact_threshold: Option<GoDuration>,
    #[serde(default)]
    max_trailing_logs: Option<u64>,
    #[serde(default)]
    min_quorum: Option<u32>,
    #[serde(default)]
    server_stabilization_time: Option<GoDuration>,
    #[serde(default)]
    redundancy_zone_tag: Option<String>,
    #[serde(default)]
    disable_upgrade_migration: Option<bool>,
    #[serde(default)]
    upgrade_version_tag: Option<String>,
    #[serde(default)]
    create_index: Option<u64>,
    #[serde(default)]
    modify_index: Option<u64>,
}

/// A duration as Consul's API reads it: Go's text (`"200ms"`) or nanoseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(untagged)]
enum GoDuration {
    #[serde(skip_deserializing)]
    Text(#[serde(serialize_with = "go_text")] Duration),
    Nanos(u64),
    #[serde(skip_serializing)]
    Parsed(#[serde(deserialize_with = "from_text")] Duration),
}

fn go_text<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&catalog::duration::format(*d))
}

fn from_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    catalog::duration::parse(&text)
        .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a duration")))
}

impl GoDuration {
    fn millis(self) -> u64 {
        let d = match self {
            GoDuration::Text(d) | GoDuration::Parsed(d) => d,
            GoDuration::Nanos(n) => Duration::from_nanos(n),
        };
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }
}

fn to_json(c: &AutopilotConfig) -> ConfigJson {
    ConfigJson {
        cleanup_dead_servers: Some(c.cleanup_dead_servers),
        last_contact_threshold: Some(GoDuration::Text(Duration::from_millis(
            c.last_contact_threshold_ms,
        ))),
        max_trailing_logs: Some(c.max_trailing_logs),
        min_quorum: Some(c.min_quorum),
        server_stabilization_time: Some(GoDuration::Text(Duration::from_millis(
            c.server_stabilization_time_ms,
        ))),
        redundancy_zone_tag: Some(String::new()),
        disable_upgrade_migration: Some(false),
        upgrade_version_tag: Some(String::new()),
        create_index: Some(c.create_index),
        modify_index: Some(c.modify_index),
    }
}

/// `body` over `current`: what a PUT of the configuration sets (absent fields keep
/// Consul's zero values, as its decoder leaves them).
pub(crate) fn from_body(body: &[u8]) -> Result<AutopilotConfig, ApiError> {
    let c: ConfigJson = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("Error parsing autopilot config: {e}")))?;
    Ok(AutopilotConfig {
        cleanup_dead_servers: c.cleanup_dead_servers.unwrap_or(false),
        last_contact_threshold_ms: c.last_contact_threshold.map_or(0, GoDuration::millis),
        max_trailing_logs: c.max_trailing_logs.unwrap_or(0),
        min_quorum: c.min_quorum.unwrap_or(0),
        server_stabilization_time_ms: c.server_stabilization_time.map_or(0, GoDuration::millis),
        create_index: 0,
        modify_index: 0,
    })
}

/// `GET /v1/operator/autopilot/configuration` (`operator:read`).
pub(crate) async fn get_config(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    read_and_render(
        &ctx,
        &params,
        Query::Autopilot,
        |answer, pretty| match answer {
            Answer::Autopilot(c) => json(&to_json(c), pretty),
            other => {
                ApiError::Internal(format!("unexpected answer to an autopilot read: {other:?}"))
                    .into_response()
            }
        },
    )
    .await
}

/// `PUT /v1/operator/autopilot/configuration[?cas=INDEX]` (`operator:write`): `true`, or
/// `false` when `cas` did not match.
pub(crate) async fn put_config(
    State(ctx): State<Context>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let config = from_body(&body)?;
    let cas = match params.get("cas") {
        None => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!("Error parsing cas value: {text:?} is not an index"))
        })?),
    };
    let written = ctx
        .gateway
        .write(
            params.dc(),
            Command::Autopilot { config, cas },
            Instant::now() + REQUEST_TIMEOUT,
            params.principal(),
        )
        .await?;
    let set = matches!(written.applied, catalog::Applied::Set(true));
    Ok(json(&set, params.pretty()))
}

/// One server in Consul's health JSON.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServerJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    address: &'a str,
    serf_status: &'a str,
    version: &'a str,
    leader: bool,
    last_contact: String,
    last_term: u64,
    last_index: u64,
    healthy: bool,
    voter: bool,
    stable_since: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct HealthJson<'a> {
    healthy: bool,
    failure_tolerance: u32,
    servers: Vec<ServerJson<'a>>,
}

fn last_contact(ms: Option<u64>) -> String {
    match ms {
        // Consul writes a negative duration for a server never heard from.
        None => "-1ns".into(),
        Some(ms) => catalog::duration::format(Duration::from_millis(ms)),
    }
}

fn stable_since(ns: u64) -> String {
    catalog::clock::rfc3339_nanos(ns)
}

async fn health_of(ctx: &Context, params: &Params) -> Result<AutopilotHealth, ApiError> {
    gate::require(ctx, params, Resource::Operator, "", Access::Read).await?;
    Ok(ctx
        .gateway
        .autopilot_health(params.dc(), Instant::now() + REQUEST_TIMEOUT)
        .await?)
}

/// `GET /v1/operator/autopilot/health` (`operator:read`): 200 when every server is
/// healthy, else 429, as Consul.
pub(crate) async fn health(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    let h = health_of(&ctx, &params).await?;
    let version = ctx.agent.version.as_str();
    let body = HealthJson {
        healthy: h.healthy,
        failure_tolerance: h.failure_tolerance,
        servers: h
            .servers
            .iter()
            .map(|s| ServerJson {
                id: &s.id,
                name: &s.name,
                address: &s.address,
                serf_status: &s.serf_status,
                version,
                leader: s.leader,
                last_contact: last_contact(s.last_contact_ms),
                last_term: s.last_term,
                last_index: s.last_index,
                healthy: s.healthy,
                voter: s.voter,
                stable_since: stable_since(s.stable_since_ns),
            })
            .collect(),
    };
    let mut response = json(&body, params.pretty());
    if !h.healthy {
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    }
    Ok(response)
}

/// `GET /v1/operator/autopilot/state` (`operator:read`): Consul 1.9's shape, servers by
/// ID.
pub(crate) async fn state(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    let h = health_of(&ctx, &params).await?;
    let voters = h.servers.iter().filter(|s| s.voter).count();
    let mut servers = serde_json::Map::new();
    for s in &h.servers {
        let status = if s.leader {
            "leader"
        } else if s.voter {
            "voter"
        } else {
            "non-voter"
        };
        servers.insert(
            s.id.clone(),
            serde_json::json!({
                "ID": s.id,
                "Name": s.name,
                "Address": s.address,
                "NodeStatus": s.serf_status,
                "Version": ctx.agent.version,
                "LastContact": last_contact(s.last_contact_ms),
                "LastTerm": s.last_term,
                "LastIndex": s.last_index,
                "Healthy": s.healthy,
                "StableSince": stable_since(s.stable_since_ns),
                "ReadReplica": false,
                "Status": status,
                "Meta": {},
                "NodeType": "voter",
            }),
        );
    }
    let optimistic = u32::try_from(voters.saturating_sub(voters / 2 + 1)).unwrap_or(0);
    let body = serde_json::json!({
        "Healthy": h.healthy,
        "FailureTolerance": h.failure_tolerance,
        "OptimisticFailureTolerance": optimistic,
        "Servers": servers,
        "Leader": h.servers.iter().find(|s| s.leader).map(|s| s.id.clone()).unwrap_or_default(),
        "Voters": h.servers.iter().filter(|s| s.voter).map(|s| s.id.clone()).collect::<Vec<_>>(),
    });
    Ok(json(&body, params.pretty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_reads_go_durations_and_nanoseconds() {
        let c = from_body(
            br#"{"CleanupDeadServers": false, "LastContactThreshold": "1s",
                 "MaxTrailingLogs": 10, "ServerStabilizationTime": 5000000000}"#,
        )
        .unwrap();
        assert!(!c.cleanup_dead_servers);
        assert_eq!(c.last_contact_threshold_ms, 1000);
        assert_eq!(c.max_trailing_logs, 10);
        assert_eq!(c.server_stabilization_time_ms, 5000);
        let e = from_body(br#"{"LastContactThreshold": "soon"}"#).unwrap_err();
        assert!(
            matches!(e, ApiError::BadRequest(t) if t.starts_with("Error parsing autopilot config"))
        );
        let out = serde_json::to_value(to_json(&AutopilotConfig::default())).unwrap();
        assert_eq!(out["LastContactThreshold"], "200ms");
        assert_eq!(out["ServerStabilizationTime"], "10s");
        assert_eq!(out["CleanupDeadServers"], true);
        assert_eq!(last_contact(None), "-1ns");
    }
}
