//! `?filter=` on a running agent: the listing endpoints keep what the expression
//! passes, blocking-query indexes are the catalog's, and bad expressions get Consul's
//! 400 texts.

use serde_json::{Value, json};

use crate::support::{TestAgent, eventually, secs};

/// `?filter=` with the expression percent-encoded.
fn filtered(path: &str, expr: &str) -> String {
    let encoded: String = expr
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}filter={encoded}")
}

fn sorted(values: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = values.collect();
    v.sort();
    v
}

fn field(list: &Value, pointer: &str) -> Vec<String> {
    sorted(
        list.as_array()
            .unwrap()
            .iter()
            .map(|e| e.pointer(pointer).unwrap().as_str().unwrap().to_owned()),
    )
}

#[tokio::test]
async fn filter_expressions_select_catalog_health_and_agent_entries() {
    let a = TestAgent::dev().await;
    let services = [
        json!({"Name": "web", "ID": "web1", "Tags": ["v1", "primary"], "Port": 8080,
               "Meta": {"version": "1.0"}, "Check": {"CheckID": "web1-ttl", "TTL": "30s"}}),
        json!({"Name": "web", "ID": "web2", "Tags": ["v2"], "Port": 8081,
               "Meta": {"version": "2.0"}, "Check": {"CheckID": "web2-ttl", "TTL": "30s"}}),
        json!({"Name": "db", "ID": "db1", "Port": 5432}),
    ];
    for body in &services {
        let r = a.put("/v1/agent/service/register", &body.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = a.put("/v1/agent/check/pass/web1-ttl", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let external = json!({"Node": "ext", "Address": "10.9.9.9", "NodeMeta": {"rack": "r9"}});
    let r = a.put("/v1/catalog/register", &external.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(secs(10), "web1 passing in the catalog", || async {
        let v = a.json("/v1/health/service/web?passing").await;
        if v.as_array().unwrap().len() == 1 {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })
    .await;

    // /v1/catalog/service/:name
    let path = "/v1/catalog/service/web";
    for (expr, want) in [
        ("ServiceTags contains v2", vec!["web2"]),
        ("ServiceMeta.version == \"1.0\"", vec!["web1"]),
        ("ServicePort != 8080 and Node == \"node-1\"", vec!["web2"]),
        ("ServiceMeta.missing == x", vec![]),
        ("ServiceMeta.missing != x", vec!["web1", "web2"]),
    ] {
        let list = a.json(&filtered(path, expr)).await;
        assert_eq!(field(&list, "/ServiceID"), want, "{expr}");
    }
    // The index stays the catalog's, filter or not.
    let plain = a.get(path).await;
    let narrowed = a.get(&filtered(path, "ServiceID == nothing")).await;
    assert_eq!(narrowed.body, "[]");
    assert_eq!(
        plain.header("x-consul-index"),
        narrowed.header("x-consul-index")
    );

    // /v1/health/service/:name: any check of the entry.
    let path = "/v1/health/service/web";
    for (expr, want) in [
        ("Checks.Status == critical", vec!["web2"]),
        ("not Checks.Status != passing", vec!["web1"]),
        (
            "Service.Tags contains primary or Service.Port == 8081",
            vec!["web1", "web2"],
        ),
        (
            "Node.Node matches \"^node-\" and Service.Meta.version matches `^2`",
            vec!["web2"],
        ),
    ] {
        let list = a.json(&filtered(path, expr)).await;
        assert_eq!(field(&list, "/Service/ID"), want, "{expr}");
    }

    // /v1/agent/services: a map, filtered by value.
    let map = a
        .json(&filtered(
            "/v1/agent/services",
            "Service == web and v1 in Tags",
        ))
        .await;
    assert_eq!(sorted(map.as_object().unwrap().keys().cloned()), ["web1"]);
    let map = a
        .json(&filtered("/v1/agent/checks", "Status == critical"))
        .await;
    assert_eq!(
        sorted(map.as_object().unwrap().keys().cloned()),
        ["web2-ttl"]
    );

    // /v1/catalog/nodes
    let nodes = a
        .json(&filtered(
            "/v1/catalog/nodes",
            "Meta.rack == r9 or Node == \"node-1\"",
        ))
        .await;
    assert_eq!(field(&nodes, "/Node"), ["ext", "node-1"]);
    let nodes = a
        .json(&filtered("/v1/catalog/nodes", "Meta is empty"))
        .await;
    assert!(!field(&nodes, "/Node").contains(&"ext".to_owned()));

    // /v1/catalog/services: the expression selects instances (`ServiceNode` fields);
    // the names and tags of those it keeps are listed.
    let map = a
        .json(&filtered("/v1/catalog/services", "ServiceTags contains v2"))
        .await;
    assert_eq!(map, json!({"web": ["v2"]}));
    let map = a
        .json(&filtered(
            "/v1/catalog/services",
            "ServicePort == 5432 or Node == ext or ServiceMeta.version == \"1.0\"",
        ))
        .await;
    assert_eq!(map, json!({"db": [], "web": ["primary", "v1"]}));
    let plain = a.get("/v1/catalog/services").await;
    let narrowed = a
        .get(&filtered("/v1/catalog/services", "ServiceName == nothing"))
        .await;
    assert_eq!(narrowed.body, "{}");
    assert_eq!(
        plain.header("x-consul-index"),
        narrowed.header("x-consul-index")
    );

    // /v1/agent/members: `serf.Member`'s fields.
    let members = a
        .json(&filtered(
            "/v1/agent/members",
            "Name == \"node-1\" and Status == 1 and Tags.role == consul",
        ))
        .await;
    assert_eq!(field(&members, "/Name"), ["node-1"]);
    let members = a
        .json(&filtered("/v1/agent/members", "Tags.role != consul"))
        .await;
    assert_eq!(members, json!([]));

    // /v1/catalog/node/:node filters the node's services.
    let node = a
        .json(&filtered("/v1/catalog/node/node-1", "Service == db"))
        .await;
    assert_eq!(
        sorted(node["Services"].as_object().unwrap().keys().cloned()),
        ["db1"]
    );

    // Bad expressions: 400 with Consul's texts, the position where it does not parse.
    for (path, expr, text) in [
        (
            "/v1/catalog/service/web",
            "ServiceName == \"web",
            "Failed to create boolean expression evaluator: 1:20 (19): rule \"string\": Unterminated string literal",
        ),
        (
            "/v1/health/service/web",
            "Service.Nope == 1",
            "Failed to create boolean expression evaluator: Selector \"Service.Nope\" is not valid",
        ),
        (
            "/v1/agent/services",
            "Tags == v1",
            "Failed to create boolean expression evaluator: Invalid match operator \"Equal\" for selector \"Tags\"",
        ),
        (
            "/v1/agent/members",
            "Addr == \"127.0.0.1\"",
            "Failed to create boolean expression evaluator: Selector \"Addr\" is not valid",
        ),
        (
            "/v1/catalog/services",
            "Nope == 1",
            "Failed to create boolean expression evaluator: Selector \"Nope\" is not valid",
        ),
        (
            "/v1/catalog/nodes",
            "Node == x or",
            "Failed to create boolean expression evaluator: 1:11 (10): no match found, expected: \"and\", \"or\", [ \\t\\r\\n] or EOF",
        ),
    ] {
        let r = a.get(&filtered(path, expr)).await;
        assert_eq!((r.status, r.body.as_str()), (400, text), "{path} {expr}");
    }
    // An empty filter is no filter, as in Consul.
    let all = a.json("/v1/catalog/service/web?filter=").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    a.shutdown().await;
}
