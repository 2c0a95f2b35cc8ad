//! A fixed catalog and a table of expressions with the answers Consul's documented
//! semantics give, worked out by hand.

use serde_json::{Value, json};

use super::schema::{AGENT_SERVICE, CHECK_SERVICE_NODE, HEALTH_CHECK, NODE, SERVICE_NODE};
use super::*;

/// Three instances of `web` as `/v1/health/service/web` renders them.
fn health_entries() -> Vec<Value> {
    let entry = |node: &str,
                 addr: &str,
                 os: &str,
                 id: &str,
                 tags: &[&str],
                 meta: Value,
                 port: u16,
                 statuses: &[&str]| {
        json!({
            "Node": {"ID": "", "Node": node, "Address": addr, "Datacenter": "dc1",
                     "TaggedAddresses": {"lan": addr}, "Meta": {"os": os},
                     "CreateIndex": 5, "ModifyIndex": 5},
            "Service": {"ID": id, "Service": "web", "Tags": tags, "Address": "",
                        "TaggedAddresses": {}, "Meta": meta, "Port": port,
                        "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
                        "CreateIndex": 6, "ModifyIndex": 6},
            "Checks": statuses.iter().enumerate().map(|(i, s)| json!({
                "Node": node, "CheckID": format!("c{i}"), "Name": "check", "Status": s,
                "Notes": "", "Output": "", "ServiceID": id, "ServiceName": "web",
                "ServiceTags": tags, "Type": "ttl", "Interval": "", "Timeout": "",
                "ExposedPort": 0, "Definition": {}, "CreateIndex": 7, "ModifyIndex": 7,
            })).collect::<Vec<_>>(),
        })
    };
    vec![
        entry(
            "n1",
            "10.0.0.1",
            "linux",
            "web1",
            &["v1", "primary"],
            json!({"version": "1.0", "env": "prod"}),
            8080,
            &["passing", "passing"],
        ),
        entry(
            "n2",
            "10.0.0.2",
            "linux",
            "web2",
            &["v2"],
            json!({"version": "2.0", "env": "qa"}),
            8081,
            &["passing", "critical"],
        ),
        entry(
            "n3",
            "10.0.1.3",
            "freebsd",
            "web3",
            &[],
            json!({}),
            9090,
            &[],
        ),
    ]
}

fn ids(
    filter: &str,
    schema: Schema,
    items: &[Value],
    id: impl Fn(&Value) -> String,
) -> Vec<String> {
    let filter = Filter::new(filter, schema).unwrap_or_else(|e| panic!("{filter}: {e}"));
    items.iter().filter(|v| filter.matches(v)).map(id).collect()
}

#[test]
fn health_service_table() {
    let entries = health_entries();
    let service_id = |v: &Value| v["Service"]["ID"].as_str().unwrap().to_owned();
    let table: &[(&str, &[&str])] = &[
        ("Service.Service == web", &["web1", "web2", "web3"]),
        ("Service.Service == Web", &[]),
        ("Node.Node == n2", &["web2"]),
        ("Node.Node != n2", &["web1", "web3"]),
        ("Service.Tags contains v1", &["web1"]),
        ("v2 in Service.Tags", &["web2"]),
        ("\"v\" in Service.Tags", &[]),
        ("Service.Tags not contains v1", &["web2", "web3"]),
        ("Service.Tags is empty", &["web3"]),
        ("Service.Tags is not empty", &["web1", "web2"]),
        ("Service.Meta.version == \"2.0\"", &["web2"]),
        ("Service.Meta[\"version\"] == `1.0`", &["web1"]),
        // An absent key: nothing equals it, everything differs from it.
        ("Service.Meta.version != \"2.0\"", &["web1", "web3"]),
        ("Service.Meta.version matches \"^1\"", &["web1"]),
        ("Service.Meta.version not matches \"^1\"", &["web2", "web3"]),
        ("Service.Meta.version contains \".\"", &["web1", "web2"]),
        ("Service.Meta is empty", &["web3"]),
        ("env in Service.Meta", &["web1", "web2"]),
        (
            "Service.Meta contains version and Service.Meta.env == qa",
            &["web2"],
        ),
        ("Service.Port == 8081", &["web2"]),
        ("Service.Port == \"0x1f90\"", &["web1"]),
        ("Service.Port != 8081", &["web1", "web3"]),
        ("Service.Weights.Passing == 1", &["web1", "web2", "web3"]),
        (
            "Service.EnableTagOverride == false",
            &["web1", "web2", "web3"],
        ),
        ("Service.EnableTagOverride == T", &[]),
        ("Service.Kind == \"\"", &["web1", "web2", "web3"]),
        ("Node.Address matches `^10\\.0\\.0\\.`", &["web1", "web2"]),
        ("Node.Address contains \"0.1.\"", &["web3"]),
        // Any check: a list of structures matches when one element does.
        ("Checks.Status == critical", &["web2"]),
        ("Checks.Status == passing", &["web1", "web2"]),
        ("Checks.Status != passing", &["web2"]),
        ("not Checks.Status != passing", &["web1", "web3"]),
        ("Checks is empty", &["web3"]),
        ("Checks.ServiceTags contains primary", &["web1"]),
        ("Node.TaggedAddresses.lan == \"10.0.0.2\"", &["web2"]),
        // Precedence: and over or, not over and; parentheses override.
        (
            "Node.Node == n1 or Node.Node == n2 and Service.Port == 8080",
            &["web1"],
        ),
        (
            "(Node.Node == n1 or Node.Node == n2) and Service.Port == 8081",
            &["web2"],
        ),
        ("not Node.Node == n1 and not Node.Node == n2", &["web3"]),
        ("not not Node.Node == n1", &["web1"]),
        ("not (Node.Node == n1 or Node.Node == n3)", &["web2"]),
    ];
    for (expr, want) in table {
        assert_eq!(
            ids(expr, CHECK_SERVICE_NODE, &entries, service_id),
            *want,
            "{expr}"
        );
    }
}

#[test]
fn catalog_agent_and_check_shapes_filter_on_their_own_fields() {
    let service_nodes = vec![
        json!({"ID": "", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1",
               "TaggedAddresses": {}, "NodeMeta": {"os": "linux"}, "ServiceKind": "",
               "ServiceID": "api1", "ServiceName": "api", "ServiceTags": ["tag"],
               "ServiceAddress": "", "ServiceTaggedAddresses": {"lan": {"Address": "10.1.0.1", "Port": 80}},
               "ServiceWeights": {"Passing": 1, "Warning": 1}, "ServiceMeta": {"environment": "qa"},
               "ServicePort": 9090, "ServiceEnableTagOverride": false}),
        json!({"ID": "", "Node": "n2", "Address": "10.0.0.2", "Datacenter": "dc1",
               "TaggedAddresses": {}, "NodeMeta": {"os": "darwin"}, "ServiceKind": "",
               "ServiceID": "api2", "ServiceName": "api", "ServiceTags": ["test", "tag"],
               "ServiceAddress": "", "ServiceTaggedAddresses": {},
               "ServiceWeights": {"Passing": 3, "Warning": 1}, "ServiceMeta": {"environment": "production"},
               "ServicePort": 9090, "ServiceEnableTagOverride": true}),
    ];
    let node = |v: &Value| v["Node"].as_str().unwrap().to_owned();
    let table: &[(&str, &[&str])] = &[
        ("NodeMeta.os == linux", &["n1"]),
        ("ServiceMeta.environment == qa", &["n1"]),
        ("ServiceTags contains test", &["n2"]),
        ("ServiceTaggedAddresses.lan.Port == 80", &["n1"]),
        (
            "ServiceTaggedAddresses.lan.Address != \"10.1.0.1\"",
            &["n2"],
        ),
        ("ServiceTaggedAddresses is empty", &["n2"]),
        ("ServiceWeights.Passing == 3", &["n2"]),
        ("ServiceEnableTagOverride == true", &["n2"]),
        ("ServiceName == api and ServicePort == 9090", &["n1", "n2"]),
    ];
    for (expr, want) in table {
        assert_eq!(
            ids(expr, SERVICE_NODE, &service_nodes, node),
            *want,
            "{expr}"
        );
    }

    let nodes = vec![
        json!({"ID": "a", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1",
               "TaggedAddresses": {"lan": "10.0.0.1"}, "Meta": {"rack": "r1"}}),
        json!({"ID": "b", "Node": "n2", "Address": "10.0.0.2", "Datacenter": "dc1",
               "TaggedAddresses": {}, "Meta": {}}),
    ];
    let table: &[(&str, &[&str])] = &[
        ("Meta.rack == r1", &["n1"]),
        ("Meta is empty", &["n2"]),
        ("lan in TaggedAddresses", &["n1"]),
        ("Datacenter == dc1 and ID != a", &["n2"]),
    ];
    for (expr, want) in table {
        assert_eq!(ids(expr, NODE, &nodes, node), *want, "{expr}");
    }

    let services = vec![
        json!({"ID": "redis1", "Service": "redis", "Tags": ["primary", "production"],
               "Meta": {"env": "production", "foo": "bar"}, "Port": 1234, "Address": "",
               "TaggedAddresses": {}, "Weights": {"Passing": 1, "Warning": 1},
               "EnableTagOverride": false, "Datacenter": "dc1"}),
        json!({"ID": "redis3", "Service": "redis", "Tags": ["primary", "qa"],
               "Meta": {"env": "qa"}, "Port": 1234, "Address": "",
               "TaggedAddresses": {}, "Weights": {"Passing": 1, "Warning": 1},
               "EnableTagOverride": false, "Datacenter": "dc1"}),
    ];
    let id = |v: &Value| v["ID"].as_str().unwrap().to_owned();
    // The agent example of Consul's filtering page.
    assert_eq!(
        ids("Meta.env == \"qa\"", AGENT_SERVICE, &services, id),
        ["redis3"]
    );
    assert_eq!(
        ids("Meta.foo != bar", AGENT_SERVICE, &services, id),
        ["redis3"]
    );

    // The health example of Consul's filtering page.
    let checks = vec![
        json!({"Node": "node-1", "CheckID": "node-health", "Name": "Node level check",
               "Status": "critical", "ServiceID": "", "ServiceName": "", "ServiceTags": []}),
        json!({"Node": "node-1", "CheckID": "svc-web-health", "Name": "Service level check - web",
               "Status": "warning", "ServiceID": "", "ServiceName": "web", "ServiceTags": []}),
    ];
    let check_id = |v: &Value| v["CheckID"].as_str().unwrap().to_owned();
    assert_eq!(
        ids("ServiceName != \"\"", HEALTH_CHECK, &checks, check_id),
        ["svc-web-health"]
    );
    assert_eq!(
        ids(
            "Name matches \"(?i)^NODE\"",
            HEALTH_CHECK,
            &checks,
            check_id
        ),
        ["node-health"]
    );
}

#[test]
fn bad_selectors_operators_and_values_get_go_bexprs_texts() {
    let cases = [
        ("Nope == 1", "Selector \"Nope\" is not valid"),
        (
            "Service.Nope == 1",
            "Selector \"Service.Nope\" is not valid",
        ),
        (
            "service.Service == web",
            "Selector \"service\" is not valid",
        ),
        (
            "Service.Port.X == 1",
            "Selector \"Service.Port.X\" is not valid",
        ),
        (
            "Node.CreateIndex == 5",
            "Selector \"Node.CreateIndex\" is not valid",
        ),
        (
            "Service.Tags == v1",
            "Invalid match operator \"Equal\" for selector \"Service.Tags\"",
        ),
        (
            "Service is empty",
            "Invalid match operator \"Is Empty\" for selector \"Service\"",
        ),
        (
            "Service.Port contains 1",
            "Invalid match operator \"In\" for selector \"Service.Port\"",
        ),
        (
            "Node.Node is empty",
            "Invalid match operator \"Is Empty\" for selector \"Node.Node\"",
        ),
        (
            "Checks.Status is not empty",
            "Invalid match operator \"Is Not Empty\" for selector \"Checks.Status\"",
        ),
        (
            "Service.Port == abc",
            "Failed to coerce value \"abc\" for selector \"Service.Port\": strconv.ParseInt: parsing \"abc\": invalid syntax",
        ),
        (
            "Service.Port == 99999999999999999999",
            "Failed to coerce value \"99999999999999999999\" for selector \"Service.Port\": strconv.ParseInt: parsing \"99999999999999999999\": value out of range",
        ),
        (
            "Service.EnableTagOverride == yes",
            "Failed to coerce value \"yes\" for selector \"Service.EnableTagOverride\": strconv.ParseBool: parsing \"yes\": invalid syntax",
        ),
        (
            "Node.Node matches \"(\"",
            "Failed to compile regular expression \"(\"",
        ),
        ("Node.Node ==", "1:13 (12): no match found"),
        ("Service.Port > 1", "1:14 (13): no match found"),
    ];
    for (expr, want) in cases {
        let err = Filter::new(expr, CHECK_SERVICE_NODE)
            .unwrap_err()
            .to_string();
        let want = format!("Failed to create boolean expression evaluator: {want}");
        assert!(err.starts_with(&want), "{expr}: {err}");
    }
}

#[test]
fn go_integers_take_prefixes_and_signs() {
    assert_eq!(go_parse_int("8080"), Ok(8080));
    assert_eq!(go_parse_int("-0x10"), Ok(-16));
    assert_eq!(go_parse_int("0o17"), Ok(15));
    assert_eq!(go_parse_int("017"), Ok(15));
    assert_eq!(go_parse_int("0b101"), Ok(5));
    assert_eq!(go_parse_int("-9223372036854775808"), Ok(i64::MIN));
    assert_eq!(
        go_parse_int("9223372036854775808"),
        Err("value out of range")
    );
    assert_eq!(go_parse_int("1.5"), Err("invalid syntax"));
    assert_eq!(go_parse_int("0x"), Err("invalid syntax"));
}

#[test]
fn retain_keeps_all_without_a_filter() {
    let items = health_entries();
    assert_eq!(retain(items.clone(), None).len(), 3);
    let f = Filter::new("Node.Node == n3", CHECK_SERVICE_NODE).unwrap();
    assert_eq!(retain(items, Some(&f)).len(), 1);
}

proptest::proptest! {
    /// Sequences of the grammar's own tokens (and stray bytes) never panic: they parse
    /// and evaluate, or are refused with Consul's prefix.
    #[test]
    fn token_soup_is_parsed_or_refused_never_panics(
        tokens in proptest::collection::vec(
            proptest::sample::select(vec![
                "Service", ".", "Tags", "Meta", "[", "]", "\"v1\"", "`x`", "\"", "`",
                "==", "!=", " ", "in", "not", "contains", "matches", "is", "empty",
                "and", "or", "(", ")", "Checks", "Status", "Port", "8080", "-1.5",
                "\\", "\n", "é", "Node", "Node.Meta.os", "0x1f",
            ]),
            0..40,
        )
    ) {
        let text = tokens.concat();
        match Filter::new(&text, CHECK_SERVICE_NODE) {
            Ok(f) => {
                for entry in health_entries() {
                    let _ = f.matches(&entry);
                }
            }
            Err(e) => proptest::prop_assert!(
                e.to_string().starts_with("Failed to create boolean expression evaluator: ")
            ),
        }
    }
}
