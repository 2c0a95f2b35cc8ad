//! Service and check definitions as Consul users write them, in config files
//! (`{"service": {...}}`, snake_case keys) and in `/v1/agent/service/register` bodies
//! (PascalCase, or any case: Go decodes JSON keys case-insensitively, and Consul also
//! takes snake_case there).
//!
//! Keys are matched after folding case and dropping `_`, so `enable_tag_override`,
//! `EnableTagOverride` and `enabletagoverride` are the same key. In config files an
//! unknown key is an error naming it; API bodies ignore unknown keys, as Consul does.
//! Known keys for features proconsul does not have are errors in both, rather than being
//! silently dropped.

use std::collections::BTreeMap;
use std::time::Duration;

use catalog::{Health, Service, ServiceAddress, Weights};
use lan::{CheckDefinition, CheckKind};
use serde_json::{Map, Value};

/// Where a definition is read from, which decides how strict decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A config file: unknown keys are errors.
    Config,
    /// An HTTP request body: unknown keys are ignored.
    Api,
}

/// A problem with a definition, naming the field (`services[0].checks[1].interval`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DefinitionError {
    /// Path of the offending field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Folds a JSON key for comparison: lower case, no underscores.
pub fn fold_key(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The shortest interval a check runs at; shorter ones are raised to it (Consul: 1s).
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Timeout of a check run when none is given (Consul: 10s).
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Fields of a JSON object, looked up by folded key.
struct Fields<'a> {
    path: String,
    map: BTreeMap<String, (&'a str, &'a Value)>,
}

impl<'a> Fields<'a> {
    fn new(
        value: &'a Value,
        path: &str,
        style: Style,
        known: &[&str],
        unsupported: &[&str],
    ) -> Result<Fields<'a>, DefinitionError> {
        let obj: &Map<String, Value> = value
            .as_object()
            .ok_or_else(|| err(path, "must be a JSON object"))?;
        let mut map = BTreeMap::new();
        for (key, v) in obj {
            let folded = fold_key(key);
            let field = join(path, key);
            if unsupported.contains(&folded.as_str()) {
                if !v.is_null() && v != &Value::Bool(false) {
                    return Err(err(&field, "is not supported by proconsul"));
                }
                continue;
            }
            if !known.contains(&folded.as_str()) {
                match style {
                    Style::Config => return Err(err(&field, "unknown key")),
                    Style::Api => continue,
                }
            }
            if map.insert(folded, (key.as_str(), v)).is_some() {
                return Err(err(&field, "given twice (keys are case-insensitive)"));
            }
        }
        Ok(Fields {
            path: path.to_owned(),
            map,
        })
    }

    fn field(&self, key: &str) -> String {
        match self.map.get(key) {
            Some((original, _)) => join(&self.path, original),
            None => join(&self.path, key),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).map(|(_, v)| *v).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<String>, DefinitionError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(err(&self.field(key), "must be a string")),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, DefinitionError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(err(&self.field(key), "must be true or false")),
        }
    }

    fn port(&self, key: &str) -> Result<Option<u16>, DefinitionError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| err(&self.field(key), "must be a port number (0-65535)")),
        }
    }

    fn u32(&self, key: &str) -> Result<Option<u32>, DefinitionError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| err(&self.field(key), "must be a non-negative integer")),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, DefinitionError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| err(&self.field(key), "must be a list of strings"))
                })
                .collect(),
            Some(_) => Err(err(&self.field(key), "must be a list of strings")),
        }
    }

    fn string_map(&self, key: &str) -> Result<BTreeMap<String, String>, DefinitionError> {
        match self.get(key) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|s| (k.clone(), s.to_owned()))
                        .ok_or_else(|| err(&join(&self.field(key), k), "must be a string"))
                })
                .collect(),
            Some(_) => Err(err(&self.field(key), "must be an object of strings")),
        }
    }

    fn duration(&self, key: &str) -> Result<Option<Duration>, DefinitionError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => catalog::duration::parse(s)
                .map(Some)
                .map_err(|e| err(&self.field(key), e.to_string())),
            Some(_) => Err(err(
                &self.field(key),
                "must be a duration string such as \"10s\"",
            )),
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

const SERVICE_KEYS: &[&str] = &[
    "id",
    "name",
    "tags",
    "address",
    "taggedaddresses",
    "meta",
    "port",
    "enabletagoverride",
    "weights",
    "check",
    "checks",
    "kind",
    "token",
];
const SERVICE_UNSUPPORTED: &[&str] = &[
    "connect",
    "proxy",
    "socketpath",
    "namespace",
    "partition",
    "locality",
];
const CHECK_KEYS: &[&str] = &[
    "id",
    "checkid",
    "name",
    "notes",
    "serviceid",
    "status",
    "ttl",
    "http",
    "method",
    "header",
    "body",
    "tcp",
    "args",
    "scriptargs",
    "script",
    "interval",
    "timeout",
    "outputmaxsize",
    "token",
];
const CHECK_UNSUPPORTED: &[&str] = &[
    // Only meaningful for https:// checks, which proconsul does not run.
    "tlsskipverify",
    "deregistercriticalserviceafter",
    "successbeforepassing",
    "failuresbeforecritical",
    "failuresbeforewarning",
    "grpc",
    "grpcusetls",
    "h2ping",
    "h2pingusetls",
    "udp",
    "dockercontainerid",
    "shell",
    "aliasnode",
    "aliasservice",
    "tlsservername",
    "osservice",
    "disableredirects",
];

/// Decodes one service definition with its checks.
pub fn service(
    value: &Value,
    style: Style,
    path: &str,
) -> Result<(Service, Vec<CheckDefinition>), DefinitionError> {
    let f = Fields::new(value, path, style, SERVICE_KEYS, SERVICE_UNSUPPORTED)?;
    let name = f
        .string("name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err(&f.field("name"), "Missing service name"))?;
    if let Some(kind) = f.string("kind")?
        && !kind.is_empty()
    {
        return Err(err(
            &f.field("kind"),
            format!("service kind {kind:?} is not supported by proconsul"),
        ));
    }
    let id = f
        .string("id")?
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| name.clone());
    let mut tagged_addresses = BTreeMap::new();
    if let Some(v) = f.get("taggedaddresses") {
        let field = f.field("taggedaddresses");
        let obj = v
            .as_object()
            .ok_or_else(|| err(&field, "must be an object"))?;
        for (purpose, addr) in obj {
            let af = Fields::new(
                addr,
                &join(&field, purpose),
                style,
                &["address", "port"],
                &[],
            )?;
            tagged_addresses.insert(
                purpose.clone(),
                ServiceAddress {
                    address: af.string("address")?.unwrap_or_default(),
                    port: af.port("port")?.unwrap_or(0),
                },
            );
        }
    }
    let weights = match f.get("weights") {
        None => Weights::default(),
        Some(v) => {
            let wf = Fields::new(v, &f.field("weights"), style, &["passing", "warning"], &[])?;
            Weights {
                passing: wf.u32("passing")?.unwrap_or(1),
                warning: wf.u32("warning")?.unwrap_or(1),
            }
        }
    };
    let meta = f.string_map("meta")?;
    catalog::validate_meta(&meta).map_err(|e| err(&f.field("meta"), e))?;
    if weights.passing == 0 {
        return Err(err(
            &f.field("weights"),
            "passing weight must be greater than 0",
        ));
    }
    let service = Service {
        id: id.clone(),
        name: name.clone(),
        tags: f.strings("tags")?,
        address: f.string("address")?.unwrap_or_default(),
        tagged_addresses,
        meta,
        port: f.port("port")?.unwrap_or(0),
        weights,
        enable_tag_override: f.bool("enabletagoverride")?.unwrap_or(false),
        create_index: 0,
        modify_index: 0,
    };
    let mut raw_checks: Vec<(String, &Value)> = Vec::new();
    if let Some(c) = f.get("check") {
        raw_checks.push((f.field("check"), c));
    }
    if let Some(cs) = f.get("checks") {
        let field = f.field("checks");
        let list = cs
            .as_array()
            .ok_or_else(|| err(&field, "must be a list of checks"))?;
        for (i, c) in list.iter().enumerate() {
            raw_checks.push((format!("{field}[{i}]"), c));
        }
    }
    let many = raw_checks.len() > 1;
    let mut checks = Vec::new();
    for (i, (path, raw)) in raw_checks.into_iter().enumerate() {
        let default_id = if many {
            format!("service:{id}:{}", i + 1)
        } else {
            format!("service:{id}")
        };
        let default_name = format!("Service '{name}' check");
        let mut check = check_with_defaults(raw, style, &path, &default_id, &default_name)?;
        check.service_id = id.clone();
        checks.push(check);
    }
    Ok((service, checks))
}

/// Decodes one check definition (node-level unless it names a `service_id`).
pub fn check(value: &Value, style: Style, path: &str) -> Result<CheckDefinition, DefinitionError> {
    let f = Fields::new(value, path, style, CHECK_KEYS, CHECK_UNSUPPORTED)?;
    let name = f
        .string("name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err(&f.field("name"), "Missing check name"))?;
    check_with_defaults(value, style, path, &name, &name)
}

fn check_with_defaults(
    value: &Value,
    style: Style,
    path: &str,
    default_id: &str,
    default_name: &str,
) -> Result<CheckDefinition, DefinitionError> {
    let f = Fields::new(value, path, style, CHECK_KEYS, CHECK_UNSUPPORTED)?;
    let id = match (f.string("checkid")?, f.string("id")?) {
        (Some(a), _) if !a.is_empty() => a,
        (_, Some(b)) if !b.is_empty() => b,
        _ => default_id.to_owned(),
    };
    let name = f
        .string("name")?
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| default_name.to_owned());
    let status = match f.string("status")? {
        None => Health::Critical,
        Some(s) if s.is_empty() => Health::Critical,
        Some(s) => Health::parse(&s).ok_or_else(|| err(&f.field("status"), "Bad check status"))?,
    };
    let interval = f.duration("interval")?;
    // Consul uses the default for a missing or zero timeout.
    let timeout = f
        .duration("timeout")?
        .filter(|t| !t.is_zero())
        .unwrap_or(DEFAULT_CHECK_TIMEOUT);
    let needs_interval = |kind: &str| {
        interval.map(|i| i.max(MIN_CHECK_INTERVAL)).ok_or_else(|| {
            err(
                &f.field("interval"),
                format!("a {kind} check needs an interval"),
            )
        })
    };
    let mut args = f.strings("args")?;
    if args.is_empty() {
        args = f.strings("scriptargs")?;
    }
    if args.is_empty()
        && let Some(script) = f.string("script")?
    {
        args = vec!["/bin/sh".into(), "-c".into(), script];
    }
    let ttl = f.duration("ttl")?;
    let http = f.string("http")?;
    let tcp = f.string("tcp")?;
    let given = [
        ttl.is_some(),
        http.is_some(),
        tcp.is_some(),
        !args.is_empty(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given > 1 {
        return Err(err(path, "give only one of ttl, http, tcp or args"));
    }
    let kind = if let Some(ttl) = ttl {
        CheckKind::Ttl { ttl }
    } else if let Some(url) = http {
        if !url.starts_with("http://") {
            return Err(err(
                &f.field("http"),
                "only http:// URLs are supported by proconsul's HTTP checks",
            ));
        }
        let mut header = BTreeMap::new();
        if let Some(h) = f.get("header") {
            let field = f.field("header");
            let obj = h
                .as_object()
                .ok_or_else(|| err(&field, "must be an object of string lists"))?;
            for (k, v) in obj {
                let values = v
                    .as_array()
                    .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_owned)).collect())
                    .ok_or_else(|| err(&join(&field, k), "must be a list of strings"))?;
                header.insert(k.clone(), values);
            }
        }
        CheckKind::Http {
            url,
            method: f
                .string("method")?
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "GET".into()),
            header,
            body: f.string("body")?.unwrap_or_default(),
            interval: needs_interval("http")?,
            timeout,
        }
    } else if let Some(address) = tcp {
        CheckKind::Tcp {
            address,
            interval: needs_interval("tcp")?,
            timeout,
        }
    } else if !args.is_empty() {
        CheckKind::Script {
            args,
            interval: needs_interval("script")?,
            timeout,
        }
    } else {
        return Err(err(path, "a check needs one of ttl, http, tcp or args"));
    };
    let output_max_size = match f.get("outputmaxsize") {
        None => lan::CHECK_OUTPUT_MAX,
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=lan::CHECK_OUTPUT_LIMIT).contains(n))
            .ok_or_else(|| {
                err(
                    &f.field("outputmaxsize"),
                    format!("must be between 1 and {} bytes", lan::CHECK_OUTPUT_LIMIT),
                )
            })?,
    };
    Ok(CheckDefinition {
        id,
        name,
        output_max_size,
        notes: f.string("notes")?.unwrap_or_default(),
        service_id: f.string("serviceid")?.unwrap_or_default(),
        kind,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_style_service_with_checks() {
        let v = json!({
            "name": "web", "tags": ["rails"], "port": 80,
            "enable_tag_override": true,
            "checks": [
                {"http": "http://localhost:80/health", "interval": "10s"},
                {"ttl": "30s", "id": "web-ttl"}
            ]
        });
        let (svc, checks) = service(&v, Style::Config, "service").unwrap();
        assert_eq!(svc.id, "web");
        assert!(svc.enable_tag_override);
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].id, "service:web:1");
        assert_eq!(checks[0].name, "Service 'web' check");
        assert_eq!(checks[1].id, "web-ttl");
        assert_eq!(checks[1].service_id, "web");
        assert_eq!(checks[1].status, Health::Critical);
    }

    #[test]
    fn api_style_accepts_any_case_and_ignores_unknown_keys() {
        let v = json!({"Name": "web", "ID": "web1", "enabletagoverride": true, "Whatever": 1,
                       "Check": {"TTL": "15s"}});
        let (svc, checks) = service(&v, Style::Api, "").unwrap();
        assert_eq!(svc.id, "web1");
        assert!(svc.enable_tag_override);
        assert_eq!(checks[0].id, "service:web1");
    }

    #[test]
    fn config_style_names_the_unknown_key() {
        let v = json!({"name": "web", "prot": 80});
        let e = service(&v, Style::Config, "services[0]").unwrap_err();
        assert_eq!(e.field, "services[0].prot");
        assert_eq!(e.message, "unknown key");
    }

    #[test]
    fn bad_values_name_their_field() {
        let v = json!({"name": "web", "port": "eighty"});
        assert_eq!(
            service(&v, Style::Config, "service").unwrap_err().field,
            "service.port"
        );
        let v = json!({"name": "web", "check": {"http": "http://x/", "interval": "soon"}});
        assert_eq!(
            service(&v, Style::Config, "service").unwrap_err().field,
            "service.check.interval"
        );
        let v = json!({"name": "web", "check": {"tcp": "x:1"}});
        assert!(service(&v, Style::Config, "service").is_err());
        let v = json!({"port": 1});
        assert_eq!(
            service(&v, Style::Config, "service").unwrap_err().message,
            "Missing service name"
        );
    }

    #[test]
    fn unsupported_features_are_refused_not_dropped() {
        let v = json!({"name": "web", "check": {"ttl": "10s", "deregister_critical_service_after": "1m"}});
        let e = service(&v, Style::Api, "").unwrap_err();
        assert!(e.message.contains("not supported"), "{e}");
    }

    #[test]
    fn short_intervals_are_raised_to_the_minimum() {
        let v = json!({"name": "c", "tcp": "127.0.0.1:1", "interval": "10ms"});
        let c = check(&v, Style::Api, "").unwrap();
        assert!(
            matches!(c.kind, CheckKind::Tcp { interval, .. } if interval == MIN_CHECK_INTERVAL)
        );
    }

    #[test]
    fn legacy_script_runs_through_the_shell() {
        let v = json!({"name": "c", "script": "true", "interval": "5s"});
        let c = check(&v, Style::Config, "check").unwrap();
        assert!(matches!(c.kind, CheckKind::Script { ref args, .. } if args[0] == "/bin/sh"));
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just("name".to_string()),
            Just("Port".to_string()),
            Just("check".to_string()),
            Just("checks".to_string()),
            Just("ttl".to_string()),
            Just("http".to_string()),
            Just("interval".to_string()),
            Just("tagged_addresses".to_string()),
            Just("weights".to_string()),
            Just("header".to_string()),
            Just("args".to_string()),
            "[a-zA-Z_]{1,12}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|n| json!(n)),
            "\\PC{0,16}".prop_map(Value::String),
            Just(json!("10s")),
            Just(json!("http://127.0.0.1:1/")),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(key.clone(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_json_never_panics(v in json_value()) {
            let _ = service(&v, Style::Config, "service");
            let _ = service(&v, Style::Api, "");
            let _ = check(&v, Style::Api, "");
        }
    }
}
