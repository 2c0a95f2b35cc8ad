//! # Watches: Consul's `consul watch` and the agent's `watches`
//!
//! A watch asks an agent's HTTP API for one view of the data (a key, the keys under a
//! prefix, the services, the nodes, the instances of a service, the checks, the user
//! events the agent received) with
//! blocking queries, and hands the view to a handler each time it changes:
//!
//! ```text
//!   GET /v1/kv/app/x?index=N&wait=25s ──▶ X-Consul-Index, data ──▶ Tracker ──▶ changed? ──▶ handler
//!        ▲                                                                           │
//!        └───────────────────────── next index ◀─────────────────────────────────────┘
//! ```
//!
//! [`Plan::parse`] reads Consul's watch parameters (the CLI's flags and the agent's
//! config use the same ones, with Consul's error texts); [`run`] is the loop; the
//! [`Tracker`] holds Consul's rules: the first answer is always handed over (even
//! `null`), then only data that differs from the last; an unchanged index is no change;
//! an index that goes backwards makes the next request start again from 0; a failed
//! request waits 5 s × failures² (at most 180 s) and starts again from 0.
//!
//! [`agent`] runs the watches of an agent's configuration with their handlers.

pub mod agent;
pub mod doc;

use std::future::Future;
use std::time::Duration;

use hyper::Method;
use serde_json::{Map, Value};

pub use self::doc::{Doc, go_json_string};
use crate::client::{Client, MAX_WAIT, encode, encode_segment};

/// Watch parameters as Consul takes them: a JSON object (a config file's watch, or the
/// CLI's flags gathered into one).
pub type Params = Map<String, Value>;

/// The first wait after a failed request; the n-th waits n² times as long.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// The longest wait after failed requests.
pub const MAX_BACKOFF: Duration = Duration::from_secs(180);

/// What a watch looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// One key (`/v1/kv/:key`): the entry, or `null`.
    Key(String),
    /// The keys under a prefix (`/v1/kv/:prefix?recurse`): the entries, or `null`.
    KeyPrefix(String),
    /// Every service with its tags (`/v1/catalog/services`).
    Services,
    /// Every node (`/v1/catalog/nodes`).
    Nodes,
    /// The instances of a service with their nodes and checks (`/v1/health/service/:s`).
    Service {
        /// The service name.
        service: String,
        /// Only instances with every one of these tags.
        tags: Vec<String>,
        /// Only instances whose every check passes.
        passing_only: bool,
    },
    /// Checks: of a service (`/v1/health/checks/:s`) or in a state
    /// (`/v1/health/state/:state`, `any` for all).
    Checks {
        /// The service, or the state.
        of: ChecksOf,
        /// With a state, only the checks of services with every one of these tags.
        tags: Vec<String>,
    },
    /// The user events the agent received (`/v1/event/list`), only those of a name when
    /// given. Each change hands over the events that arrived since the last one (all
    /// the agent keeps, the first time), as Consul's event watch does.
    Event(Option<String>),
}

/// Whose checks a `checks` watch looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksOf {
    /// The checks of a service's instances.
    Service(String),
    /// Every check in a state (`passing`, `warning`, `critical`, or `any`).
    State(String),
}

/// A parsed watch: what to look at, and where and how to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The watch type and its parameters.
    pub kind: Kind,
    /// The datacenter to ask (`?dc=`); `None` is the agent's own.
    pub datacenter: Option<String>,
    /// Lets any server answer (`?stale`).
    pub stale: bool,
}

/// Consul's watch types that proconsul does not run, with why.
fn unsupported(kind: &str) -> Option<&'static str> {
    match kind {
        "connect_roots" | "connect_leaf" => Some("proconsul has no service mesh"),
        "agent_service" => Some("proconsul does not run agent_service watches"),
        _ => None,
    }
}

fn take_string(params: &mut Params, name: &str) -> Result<Option<String>, String> {
    match params.remove(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("Expecting {name} to be a string")),
    }
}

fn take_bool(params: &mut Params, name: &str) -> Result<bool, String> {
    match params.remove(name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(_) => Err(format!("Expecting {name} to be a boolean")),
    }
}

/// A string or a list of strings (Consul's `tag`).
fn take_strings(params: &mut Params, name: &str) -> Result<Vec<String>, String> {
    match params.remove(name) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s),
                _ => Err(format!("Index {i} of {name} expected to be string")),
            })
            .collect(),
        Some(_) => Err(format!("Expecting {name} to be a string or []string")),
    }
}

impl Plan {
    /// Reads Consul's watch parameters (`type`, the type's own, `datacenter`, `token`,
    /// `stale`), with Consul's errors. The parameters named in `exempt` are the
    /// caller's (a handler's): they are returned, untouched; any other parameter left
    /// over is an error (`Invalid parameters: [..]`). `token` is accepted and unused:
    /// proconsul has no ACLs.
    pub fn parse(params: &Params, exempt: &[&str]) -> Result<(Plan, Params), String> {
        let mut rest = params.clone();
        let datacenter = take_string(&mut rest, "datacenter")?.filter(|dc| !dc.is_empty());
        take_string(&mut rest, "token")?;
        let kind = take_string(&mut rest, "type")?.unwrap_or_default();
        if kind.is_empty() {
            return Err("Watch type must be specified".into());
        }
        let mut exempted = Params::new();
        for name in exempt {
            if let Some(value) = rest.remove(*name) {
                exempted.insert((*name).to_owned(), value);
            }
        }
        let stale = match kind.as_str() {
            "key" | "keyprefix" | "services" | "nodes" | "service" | "checks" | "event" => {
                take_bool(&mut rest, "stale")?
            }
            other => {
                return Err(match unsupported(other) {
                    Some(why) => format!("Unsupported watch type: {other} ({why})"),
                    None => format!("Unsupported watch type: {other}"),
                });
            }
        };
        let kind = match kind.as_str() {
            "key" => Kind::Key(
                take_string(&mut rest, "key")?
                    .filter(|k| !k.is_empty())
                    .ok_or("Must specify a single key to watch")?,
            ),
            "keyprefix" => Kind::KeyPrefix(
                take_string(&mut rest, "prefix")?
                    .filter(|p| !p.is_empty())
                    .ok_or("Must specify a single prefix to watch")?,
            ),
            "services" => Kind::Services,
            "nodes" => Kind::Nodes,
            "event" => Kind::Event(take_string(&mut rest, "name")?.filter(|n| !n.is_empty())),
            "service" => {
                let service = take_string(&mut rest, "service")?
                    .filter(|s| !s.is_empty())
                    .ok_or("Must specify a single service to watch")?;
                let tags = take_strings(&mut rest, "tag")?;
                let passing_only = take_bool(&mut rest, "passingonly")?;
                Kind::Service {
                    service,
                    tags,
                    passing_only,
                }
            }
            _ => {
                let service = take_string(&mut rest, "service")?.unwrap_or_default();
                let state = take_string(&mut rest, "state")?.unwrap_or_default();
                let of = match (service.is_empty(), state.is_empty()) {
                    (false, false) => return Err("Cannot specify service and state".into()),
                    (false, true) => ChecksOf::Service(service),
                    (true, false) => ChecksOf::State(state),
                    (true, true) => ChecksOf::State("any".into()),
                };
                let tags = take_strings(&mut rest, "tag")?;
                Kind::Checks { of, tags }
            }
        };
        if !rest.is_empty() {
            let names: Vec<&str> = rest.keys().map(String::as_str).collect();
            return Err(format!("Invalid parameters: [{}]", names.join(" ")));
        }
        Ok((
            Plan {
                kind,
                datacenter,
                stale,
            },
            exempted,
        ))
    }

    /// The watch type's name (`key`, `service`, …).
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Key(_) => "key",
            Kind::KeyPrefix(_) => "keyprefix",
            Kind::Services => "services",
            Kind::Nodes => "nodes",
            Kind::Service { .. } => "service",
            Kind::Checks { .. } => "checks",
            Kind::Event(_) => "event",
        }
    }

    /// The request for the view: a blocking one on `index` (waiting up to `wait`), or
    /// with `index` 0 one that answers at once.
    pub fn path(&self, index: u64, wait: Duration) -> String {
        let kv = |key: &str| {
            let key = key.strip_prefix('/').unwrap_or(key);
            let segments: Vec<String> = key.split('/').map(encode_segment).collect();
            format!("/v1/kv/{}", segments.join("/"))
        };
        let mut query = Vec::new();
        let path = match &self.kind {
            Kind::Key(key) => kv(key),
            Kind::KeyPrefix(prefix) => {
                query.push("recurse".to_owned());
                kv(prefix)
            }
            Kind::Services => "/v1/catalog/services".into(),
            Kind::Nodes => "/v1/catalog/nodes".into(),
            Kind::Service {
                service,
                tags,
                passing_only,
            } => {
                query.extend(tags.iter().map(|t| format!("tag={}", encode(t))));
                if *passing_only {
                    query.push("passing=1".into());
                }
                format!("/v1/health/service/{}", encode_segment(service))
            }
            Kind::Checks {
                of: ChecksOf::Service(service),
                ..
            } => format!("/v1/health/checks/{}", encode_segment(service)),
            Kind::Checks {
                of: ChecksOf::State(state),
                ..
            } => format!("/v1/health/state/{}", encode_segment(state)),
            Kind::Event(name) => {
                if let Some(name) = name {
                    query.push(format!("name={}", encode(name)));
                }
                "/v1/event/list".into()
            }
        };
        if let Some(dc) = &self.datacenter {
            query.push(format!("dc={}", encode(dc)));
        }
        if self.stale {
            query.push("stale".into());
        }
        if index > 0 {
            let wait = wait.min(MAX_WAIT);
            query.push(format!("index={index}"));
            query.push(format!("wait={}", go_duration(wait)));
        }
        if query.is_empty() {
            path
        } else {
            format!("{path}?{}", query.join("&"))
        }
    }

    /// The index and the view from the agent's answer to [`Plan::path`]; an error as
    /// Consul's API client words it.
    pub fn interpret(
        &self,
        status: u16,
        headers: &[(String, String)],
        body: &str,
    ) -> Result<(u64, Doc), String> {
        let kv = matches!(self.kind, Kind::Key(_) | Kind::KeyPrefix(_));
        if status != 200 && !(kv && status == 404) {
            return Err(format!(
                "Unexpected response code: {status} ({})",
                body.trim()
            ));
        }
        let index = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-consul-index"))
            .map(|(_, v)| v.trim())
            .ok_or("Failed to parse X-Consul-Index: the header is missing")?;
        let index: u64 = index
            .parse()
            .map_err(|e| format!("Failed to parse X-Consul-Index: {e}"))?;
        // A blocking query on index 0 would not block: servers never answer 0.
        let index = index.max(1);
        if status == 404 {
            return Ok((index, Doc::Null));
        }
        let doc = Doc::parse(body).map_err(|e| format!("Failed to decode the answer: {e}"))?;
        let doc = match &self.kind {
            Kind::Key(_) => match doc {
                Doc::Array(entries) => entries.into_iter().next().map_or(Doc::Null, kv_pair),
                other => other,
            },
            Kind::KeyPrefix(_) => match doc {
                Doc::Array(entries) => Doc::Array(entries.into_iter().map(kv_pair).collect()),
                other => other,
            },
            Kind::Checks {
                of: ChecksOf::State(_),
                tags,
            } if !tags.is_empty() => match doc {
                Doc::Array(checks) => Doc::Array(
                    checks
                        .into_iter()
                        .filter(|check| has_tags(check, tags))
                        .collect(),
                ),
                other => other,
            },
            _ => doc,
        };
        Ok((index, doc))
    }

    /// Whether the view's index only grows. An event list's index comes from its last
    /// event's random ID: it moves both ways, and a smaller one is news, not a reset.
    fn ordered(&self) -> bool {
        !matches!(self.kind, Kind::Event(_))
    }

    /// What of the view asked for with index `asked` is news: for events, those after the
    /// one the index came from (all of them when it is gone, or on the first request).
    fn news(&self, asked: u64, doc: Doc) -> Doc {
        match (&self.kind, doc) {
            (Kind::Event(_), Doc::Array(mut events)) if asked > 0 => {
                let seen = events.iter().position(|e| {
                    let id = e.get("ID").and_then(Doc::as_str).unwrap_or_default();
                    lan::events::id_to_index(id) == Some(asked)
                });
                if let Some(at) = seen {
                    events.drain(..=at);
                }
                Doc::Array(events)
            }
            (_, doc) => doc,
        }
    }
}

/// A duration as Go's `time.ParseDuration` reads it: `25s`, or `1500ms`.
fn go_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Whether a check's service has every one of `tags`.
fn has_tags(check: &Doc, tags: &[String]) -> bool {
    let Some(Doc::Array(service_tags)) = check.get("ServiceTags") else {
        return false;
    };
    tags.iter()
        .all(|t| service_tags.iter().any(|s| s.as_str() == Some(t.as_str())))
}

/// A KV entry as Consul's API client hands it to watches (its `KVPair`): `Key`, the
/// indexes, `Flags`, `Value` (base64, `null` when empty) and `Session` (`""` when none),
/// in that order.
fn kv_pair(entry: Doc) -> Doc {
    let field = |name: &str, default: Doc| entry.get(name).cloned().unwrap_or(default);
    let zero = || Doc::Number(0.into());
    Doc::Object(vec![
        ("Key".into(), field("Key", Doc::String(String::new()))),
        ("CreateIndex".into(), field("CreateIndex", zero())),
        ("ModifyIndex".into(), field("ModifyIndex", zero())),
        ("LockIndex".into(), field("LockIndex", zero())),
        ("Flags".into(), field("Flags", zero())),
        ("Value".into(), field("Value", Doc::Null)),
        (
            "Session".into(),
            field("Session", Doc::String(String::new())),
        ),
    ])
}

/// Consul's rules for what a watch hands over and which index it asks with next.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// The index of the next request; `None` before the first answer and after a
    /// failure (the next answer is then handed over whatever it is).
    index: Option<u64>,
    /// The data last handed over.
    last: Option<Doc>,
    /// Failures in a row.
    failures: u32,
    /// Whether an index below the last one is a reset (see [`Plan::ordered`]).
    unordered: bool,
}

impl Tracker {
    /// The index to block on (0: answer at once).
    pub fn index(&self) -> u64 {
        self.index.unwrap_or(0)
    }

    /// Takes an answer; returns the data to hand over when it is the first answer
    /// (since the start or a failure) or differs from the last data handed over. An
    /// answer with the index asked with is no change; an index below it makes the next
    /// request start from 0.
    pub fn answer(&mut self, index: u64, data: Doc) -> Option<&Doc> {
        self.failures = 0;
        let previous = self.index;
        if previous == Some(index) {
            return None;
        }
        self.index = Some(match previous {
            Some(p) if index < p && !self.unordered => 0,
            _ => index,
        });
        if previous.is_some() && self.last.as_ref() == Some(&data) {
            return None;
        }
        self.last = Some(data);
        self.last.as_ref()
    }

    /// Takes a failed request; returns how long to wait before the next one, which
    /// starts from index 0.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.index = None;
        RETRY_INTERVAL
            .saturating_mul(self.failures.saturating_mul(self.failures))
            .min(MAX_BACKOFF)
    }
}

/// What a handler tells the watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep watching.
    Continue,
    /// Stop: [`run`] returns.
    Stop,
}

/// Runs a watch against the agent at `client` until `handler` returns [`Flow::Stop`];
/// drop the future to stop it sooner. Each change is handed to `handler` with the
/// answer's index, one at a time: the next request waits for the handler. A failed
/// request is reported to `on_error` with the wait before the next one.
pub async fn run<H, F, E>(client: &Client, plan: &Plan, mut on_error: E, mut handler: H)
where
    H: FnMut(u64, Doc) -> F,
    F: Future<Output = Flow>,
    E: FnMut(&str, Duration),
{
    let mut tracker = Tracker {
        unordered: !plan.ordered(),
        ..Tracker::default()
    };
    loop {
        let asked = tracker.index();
        let path = plan.path(asked, MAX_WAIT);
        let answer = match client.call(Method::GET, &path, None).await {
            Ok(r) => plan
                .interpret(r.status, &r.headers, &r.body)
                .map(|(index, doc)| (index, plan.news(asked, doc))),
            Err(e) => Err(e.to_string()),
        };
        match answer {
            Ok((index, data)) => {
                if let Some(data) = tracker.answer(index, data) {
                    let data = data.clone();
                    if handler(index, data).await == Flow::Stop {
                        return;
                    }
                }
            }
            Err(e) => {
                let retry = tracker.failed();
                on_error(&e, retry);
                tokio::time::sleep(retry).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> Params {
        serde_json::from_str(json).unwrap()
    }

    fn plan(json: &str) -> Result<Plan, String> {
        Plan::parse(&params(json), &[]).map(|(p, _)| p)
    }

    #[test]
    fn an_event_watch_hands_over_only_new_events() {
        let plan = plan(r#"{"type": "event", "name": "deploy"}"#).unwrap();
        assert_eq!(plan.kind, Kind::Event(Some("deploy".into())));
        assert_eq!(plan.type_name(), "event");
        assert_eq!(plan.path(0, MAX_WAIT), "/v1/event/list?name=deploy");
        let id = |n: u8| format!("00000000-0000-0000-0000-0000000000{n:02}");
        let list = |ids: &[u8]| {
            let events: Vec<String> = ids
                .iter()
                .map(|n| format!(r#"{{"ID":"{}","Name":"deploy"}}"#, id(*n)))
                .collect();
            Doc::parse(&format!("[{}]", events.join(","))).unwrap()
        };
        let index = |n: u8| lan::events::id_to_index(&id(n)).unwrap();
        assert_eq!(plan.news(0, list(&[1, 2])), list(&[1, 2]));
        assert_eq!(plan.news(index(1), list(&[1, 2, 3])), list(&[2, 3]));
        assert_eq!(plan.news(index(9), list(&[1, 2])), list(&[1, 2]));
        // A smaller index is news, not a reset to 0.
        let mut t = Tracker {
            unordered: !plan.ordered(),
            ..Tracker::default()
        };
        assert!(t.answer(50, list(&[1])).is_some());
        assert!(t.answer(7, list(&[2])).is_some());
        assert_eq!(t.index(), 7);
    }

    #[test]
    fn parameters_are_read_as_consul_reads_them() {
        assert_eq!(
            plan(r#"{"type": "key", "key": "app/x", "datacenter": "dc2", "stale": true}"#),
            Ok(Plan {
                kind: Kind::Key("app/x".into()),
                datacenter: Some("dc2".into()),
                stale: true
            })
        );
        assert_eq!(
            plan(r#"{"type": "service", "service": "web", "tag": "v1", "passingonly": true}"#)
                .unwrap()
                .kind,
            Kind::Service {
                service: "web".into(),
                tags: vec!["v1".into()],
                passing_only: true
            }
        );
        assert_eq!(
            plan(r#"{"type": "checks", "tag": ["a", "b"]}"#)
                .unwrap()
                .kind,
            Kind::Checks {
                of: ChecksOf::State("any".into()),
                tags: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(
            plan(r#"{"type": "checks", "service": "web", "token": "t"}"#)
                .unwrap()
                .kind,
            Kind::Checks {
                of: ChecksOf::Service("web".into()),
                tags: vec![]
            }
        );
        for (json, error) in [
            (r#"{}"#, "Watch type must be specified"),
            (r#"{"type": ""}"#, "Watch type must be specified"),
            (r#"{"type": "nope"}"#, "Unsupported watch type: nope"),
            (r#"{"type": "key"}"#, "Must specify a single key to watch"),
            (
                r#"{"type": "keyprefix", "prefix": ""}"#,
                "Must specify a single prefix to watch",
            ),
            (
                r#"{"type": "service"}"#,
                "Must specify a single service to watch",
            ),
            (
                r#"{"type": "checks", "service": "a", "state": "passing"}"#,
                "Cannot specify service and state",
            ),
            (r#"{"type": 5}"#, "Expecting type to be a string"),
            (
                r#"{"type": "key", "key": "k", "stale": "yes"}"#,
                "Expecting stale to be a boolean",
            ),
            (
                r#"{"type": "service", "service": "s", "tag": [1]}"#,
                "Index 0 of tag expected to be string",
            ),
            (
                r#"{"type": "service", "service": "s", "tag": 1}"#,
                "Expecting tag to be a string or []string",
            ),
            (
                r#"{"type": "services", "key": "k", "prefix": "p"}"#,
                "Invalid parameters: [key prefix]",
            ),
        ] {
            assert_eq!(plan(json), Err(error.to_owned()), "{json}");
        }
    }

    #[test]
    fn exempt_parameters_are_handed_back() {
        let (plan, rest) = Plan::parse(
            &params(r#"{"type": "nodes", "args": ["/h"], "handler_type": "script"}"#),
            &["args", "handler_type", "handler"],
        )
        .unwrap();
        assert_eq!(plan.kind, Kind::Nodes);
        assert_eq!(
            rest,
            params(r#"{"args": ["/h"], "handler_type": "script"}"#)
        );
    }

    #[test]
    fn requests_name_the_view_and_block_on_the_index() {
        let p = plan(r#"{"type": "key", "key": "/a b/c?"}"#).unwrap();
        assert_eq!(p.path(0, MAX_WAIT), "/v1/kv/a%20b/c%3F");
        assert_eq!(
            p.path(42, Duration::from_secs(600)),
            "/v1/kv/a%20b/c%3F?index=42&wait=25s"
        );
        let p =
            plan(r#"{"type": "keyprefix", "prefix": "app/", "stale": true, "datacenter": "dc2"}"#)
                .unwrap();
        assert_eq!(p.path(0, MAX_WAIT), "/v1/kv/app/?recurse&dc=dc2&stale");
        let p = plan(
            r#"{"type": "service", "service": "web", "tag": ["a", "b c"], "passingonly": true}"#,
        )
        .unwrap();
        assert_eq!(
            p.path(7, Duration::from_secs(1)),
            "/v1/health/service/web?tag=a&tag=b+c&passing=1&index=7&wait=1s"
        );
        assert_eq!(
            plan(r#"{"type": "checks"}"#).unwrap().path(0, MAX_WAIT),
            "/v1/health/state/any"
        );
        assert_eq!(
            plan(r#"{"type": "checks", "service": "web"}"#)
                .unwrap()
                .path(0, MAX_WAIT),
            "/v1/health/checks/web"
        );
        assert_eq!(
            plan(r#"{"type": "services"}"#).unwrap().path(0, MAX_WAIT),
            "/v1/catalog/services"
        );
        assert_eq!(
            plan(r#"{"type": "nodes"}"#).unwrap().path(0, MAX_WAIT),
            "/v1/catalog/nodes"
        );
    }

    fn index_header(n: &str) -> Vec<(String, String)> {
        vec![("x-consul-index".into(), n.into())]
    }

    #[test]
    fn answers_become_consul_s_shapes() {
        let key = plan(r#"{"type": "key", "key": "k"}"#).unwrap();
        let body = r#"[{"LockIndex": 0, "Key": "k", "Flags": 3, "Value": "dg==", "CreateIndex": 5, "ModifyIndex": 9}]"#;
        let (index, doc) = key.interpret(200, &index_header("9"), body).unwrap();
        assert_eq!(index, 9);
        assert_eq!(
            doc.to_go_json(),
            r#"{"Key":"k","CreateIndex":5,"ModifyIndex":9,"LockIndex":0,"Flags":3,"Value":"dg==","Session":""}"#
        );
        assert_eq!(
            key.interpret(404, &index_header("0"), "").unwrap(),
            (1, Doc::Null)
        );
        let prefix = plan(r#"{"type": "keyprefix", "prefix": "p"}"#).unwrap();
        assert_eq!(
            prefix.interpret(404, &index_header("4"), "").unwrap(),
            (4, Doc::Null)
        );
        assert_eq!(
            key.interpret(500, &index_header("4"), "No leader\n"),
            Err("Unexpected response code: 500 (No leader)".into())
        );
        assert!(
            key.interpret(200, &[], "[]")
                .unwrap_err()
                .contains("X-Consul-Index")
        );
        let services = plan(r#"{"type": "services"}"#).unwrap();
        assert_eq!(
            services.interpret(404, &index_header("4"), "not found"),
            Err("Unexpected response code: 404 (not found)".into())
        );
        let checks = plan(r#"{"type": "checks", "state": "any", "tag": "v1"}"#).unwrap();
        let (_, doc) = checks
            .interpret(
                200,
                &index_header("3"),
                r#"[{"CheckID": "a", "ServiceTags": ["v1", "v2"]}, {"CheckID": "b", "ServiceTags": []},
                    {"CheckID": "serfHealth"}]"#,
            )
            .unwrap();
        assert_eq!(
            doc.to_go_json(),
            r#"[{"CheckID":"a","ServiceTags":["v1","v2"]}]"#
        );
    }

    fn doc(text: &str) -> Doc {
        Doc::parse(text).unwrap()
    }

    #[test]
    fn the_first_answer_and_then_only_changes_are_handed_over() {
        let mut t = Tracker::default();
        assert_eq!(t.index(), 0);
        assert_eq!(
            t.answer(5, Doc::Null),
            Some(&Doc::Null),
            "the first, even null"
        );
        assert_eq!(t.index(), 5);
        assert_eq!(t.answer(5, doc("1")), None, "same index: no change");
        assert_eq!(t.answer(6, Doc::Null), None, "new index, same data");
        assert_eq!(t.index(), 6);
        assert_eq!(t.answer(7, doc(r#"{"a": 1}"#)), Some(&doc(r#"{"a": 1}"#)));
        assert_eq!(t.answer(8, doc(r#"{"a": 1}"#)), None);
        assert_eq!(t.answer(9, doc(r#"{"a": 2}"#)), Some(&doc(r#"{"a": 2}"#)));
    }

    #[test]
    fn an_index_that_goes_backwards_starts_again_from_zero() {
        let mut t = Tracker::default();
        t.answer(100, doc("1"));
        assert_eq!(
            t.answer(40, doc("1")),
            None,
            "same data: nothing to hand over"
        );
        assert_eq!(t.index(), 0, "but the next request does not block on 40");
        assert_eq!(t.answer(41, doc("2")), Some(&doc("2")));
        assert_eq!(t.index(), 41);
        t.answer(30, doc("3"));
        assert_eq!(t.index(), 0);
    }

    #[test]
    fn failures_back_off_quadratically_and_restart_from_zero() {
        let mut t = Tracker::default();
        t.answer(10, doc("1"));
        assert_eq!(t.failed(), Duration::from_secs(5));
        assert_eq!(t.index(), 0);
        assert_eq!(t.failed(), Duration::from_secs(20));
        assert_eq!(t.failed(), Duration::from_secs(45));
        for _ in 0..10 {
            t.failed();
        }
        assert_eq!(t.failed(), MAX_BACKOFF);
        // After a failure the next answer is handed over even if unchanged (Consul's
        // rule), and the backoff starts again.
        assert_eq!(t.answer(10, doc("1")), Some(&doc("1")));
        assert_eq!(t.failed(), Duration::from_secs(5));
    }
}
