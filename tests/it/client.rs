//! The typed client of `proconsul::client`, as a Rust program uses it: pointed at an agent
//! of dc1, it writes to and reads from dc2 through that agent.

use std::time::{Duration, Instant};

use proconsul::client::{
    AgentClient, CacheHit, CatalogRegistration, ClientError, QueryOptions, ServiceRegistration,
};
use serde_json::{Value, json};
use wan::tls;

use crate::support::cluster::leader_of;
use crate::support::secs;
use crate::wan::federated_pair;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_client_reads_and_writes_another_datacenter_through_a_local_agent() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::create_ca("consul", 30).unwrap();
    let (a, b) = federated_pair(
        dir.path(),
        &ca,
        ("a0", "dc1"),
        ("b0", "dc2"),
        [Value::Null, Value::Null],
    )
    .await;
    leader_of(&[&b], 1).await;
    let agent = AgentClient::new(&a.agent.http_addr().unwrap().to_string()).unwrap();
    let dc2 = || QueryOptions::in_dc("dc2");

    // A write through dc1's agent lands in dc2.
    let registration = CatalogRegistration {
        node: "web-2".into(),
        address: "10.2.0.7".into(),
        service: Some(ServiceRegistration {
            id: "web".into(),
            service: "web".into(),
            tags: vec!["v2".into()],
            port: 80,
            ..ServiceRegistration::default()
        }),
        ..CatalogRegistration::default()
    };
    agent.register(&registration, Some("dc2")).await.unwrap();

    let health = agent.health_service("web", false, &dc2()).await.unwrap();
    assert_eq!(health.value.len(), 1, "{health:?}");
    let entry = &health.value[0];
    assert_eq!(entry.node.node, "web-2");
    assert_eq!(entry.node.datacenter, "dc2");
    assert_eq!(entry.address(), "10.2.0.7");
    assert_eq!(
        (entry.service.service.as_str(), entry.service.port),
        ("web", 80)
    );
    assert_eq!(entry.service.tags, ["v2"]);
    assert!(health.meta.index > 0, "{:?}", health.meta);
    assert!(health.meta.known_leader, "{:?}", health.meta);
    // Nothing of it in dc1.
    let local = agent
        .health_service("web", false, &QueryOptions::default())
        .await
        .unwrap();
    assert!(local.value.is_empty(), "{local:?}");

    let instances = agent
        .catalog_service("web", Some("v2"), &dc2())
        .await
        .unwrap();
    assert_eq!(instances.value.len(), 1, "{instances:?}");
    let instance = &instances.value[0];
    assert_eq!(
        (
            instance.node.as_str(),
            instance.datacenter.as_str(),
            instance.service_id.as_str(),
            instance.service_port
        ),
        ("web-2", "dc2", "web", 80)
    );
    let untagged = agent
        .catalog_service("web", Some("v9"), &dc2())
        .await
        .unwrap();
    assert!(untagged.value.is_empty(), "{untagged:?}");
    let services = agent.catalog_services(&dc2().stale()).await.unwrap();
    assert_eq!(services.value.get("web"), Some(&vec!["v2".to_owned()]));

    let nodes = agent.catalog_nodes(&dc2().stale()).await.unwrap();
    let mut names: Vec<&str> = nodes.value.iter().map(|n| n.node.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["b0", "web-2"], "dc2's nodes, not dc1's");

    let mut dcs = agent.datacenters().await.unwrap();
    dcs.sort();
    assert_eq!(dcs, ["dc1", "dc2"]);
    assert!(!agent.leader(Some("dc2")).await.unwrap().is_empty());

    // The agent's cache of remote answers: a miss, then a hit.
    let cached = dc2().cached(secs(600));
    let first = agent.catalog_service("web", None, &cached).await.unwrap();
    assert_eq!(first.meta.cache, Some(CacheHit::Miss));
    let second = agent.catalog_service("web", None, &cached).await.unwrap();
    assert!(
        matches!(second.meta.cache, Some(CacheHit::Hit { .. })),
        "{:?}",
        second.meta
    );
    assert_eq!(second.value, first.value);

    // A blocking query with nothing changing waits out its `wait`, same index.
    let started = Instant::now();
    let blocked = agent
        .health_service(
            "web",
            false,
            &dc2().blocking(health.meta.index, Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(blocked.meta.index, health.meta.index);
    assert!(
        waited >= Duration::from_secs(1) && waited < secs(10),
        "{waited:?}"
    );

    // An unknown datacenter is the agent's error, with Consul's text.
    assert_eq!(
        agent
            .catalog_nodes(&QueryOptions::in_dc("dc9"))
            .await
            .unwrap_err(),
        ClientError::Http {
            status: 500,
            message: "No path to datacenter".into()
        }
    );

    // A prepared query stored in dc2 (created with the raw client) runs there.
    let created = agent
        .http()
        .call(
            hyper::Method::POST,
            "/v1/query?dc=dc2",
            Some(json!({"Name": "web-q", "Service": {"Service": "web"}}).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(created.status, 200, "{}", created.body);
    let executed = agent.execute_query("web-q", &dc2()).await.unwrap();
    assert_eq!(executed.value.datacenter, "dc2");
    assert_eq!(executed.value.service, "web");
    assert_eq!(executed.value.nodes.len(), 1, "{executed:?}");
    assert_eq!(executed.value.nodes[0].node.node, "web-2");
    assert!(matches!(
        agent.execute_query("no-such-query", &dc2()).await,
        Err(ClientError::Http { status: 404, .. })
    ));

    // Autopilot's view of dc2's servers, asked of dc1's agent, comes from dc2.
    let autopilot_health = || async {
        let r = agent
            .http()
            .call(
                hyper::Method::GET,
                "/v1/operator/autopilot/health?dc=dc2",
                None,
            )
            .await
            .unwrap();
        (r.status, r.body)
    };
    crate::support::eventually(secs(30), "dc2's autopilot health", || async {
        let (status, body) = autopilot_health().await;
        let h: Value = serde_json::from_str(&body).map_err(|_| body.clone())?;
        if status == 200 && h["Servers"][0]["Name"] == "b0" && h["Healthy"] == true {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    let r = agent
        .http()
        .call(
            hyper::Method::GET,
            "/v1/operator/autopilot/health?dc=dc9",
            None,
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (500, "No path to datacenter"));

    // Deregistering through dc1 empties dc2's list again.
    agent
        .deregister("web-2", Some("web"), Some("dc2"))
        .await
        .unwrap();
    let gone = agent.health_service("web", false, &dc2()).await.unwrap();
    assert!(gone.value.is_empty(), "{gone:?}");
    assert!(gone.meta.index > health.meta.index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_client_reads_writes_and_deletes_keys() {
    let members = crate::support::cluster::servers(1).await;
    leader_of(&[&members[0]], 1).await;
    let agent = AgentClient::new(&members[0].agent.http_addr().unwrap().to_string()).unwrap();
    let here = QueryOptions::default;

    assert!(
        agent
            .kv_put("app/name", b"shop", 7, None, None)
            .await
            .unwrap()
    );
    let binary = [0u8, 255, b'\n', 1];
    assert!(
        agent
            .kv_put("app/bin ary", &binary, 0, None, None)
            .await
            .unwrap()
    );
    agent
        .kv_put("app/cfg/db", b"pg", 0, None, None)
        .await
        .unwrap();
    agent.kv_put("other", b"", 0, None, None).await.unwrap();

    let name = agent.kv_get("app/name", &here()).await.unwrap();
    let pair = name.value.unwrap();
    assert_eq!(
        (pair.key.as_str(), pair.value.as_slice(), pair.flags),
        ("app/name", &b"shop"[..], 7)
    );
    assert_eq!(pair.session, None);
    assert!(pair.modify_index > 0 && name.meta.index >= pair.modify_index);
    let odd = agent.kv_get("app/bin ary", &here()).await.unwrap().value;
    assert_eq!(
        odd.unwrap().value,
        binary,
        "bytes and a space in the key survive"
    );
    assert_eq!(
        agent
            .kv_get("other", &here())
            .await
            .unwrap()
            .value
            .unwrap()
            .value,
        b""
    );
    let missing = agent.kv_get("app/none", &here().stale()).await.unwrap();
    assert_eq!(missing.value, None);
    assert!(missing.meta.index > 0, "a missing key still has an index");

    let tree = agent.kv_list("app/", &here()).await.unwrap().value;
    let keys: Vec<&str> = tree.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["app/bin ary", "app/cfg/db", "app/name"]);
    assert!(
        agent
            .kv_list("none/", &here())
            .await
            .unwrap()
            .value
            .is_empty()
    );
    let folders = agent
        .kv_keys("app/", Some("/"), &here())
        .await
        .unwrap()
        .value;
    assert_eq!(folders, ["app/bin ary", "app/cfg/", "app/name"]);
    let all = agent.kv_keys("", None, &here()).await.unwrap().value;
    assert_eq!(all.len(), 4, "{all:?}");

    // Check-and-set: 0 creates only; the current index wins, a stale one loses.
    assert!(
        !agent
            .kv_put("app/name", b"x", 0, Some(0), None)
            .await
            .unwrap()
    );
    let stale = pair.modify_index;
    assert!(
        agent
            .kv_put("app/name", b"v2", 0, Some(stale), None)
            .await
            .unwrap()
    );
    assert!(
        !agent
            .kv_put("app/name", b"v3", 0, Some(stale), None)
            .await
            .unwrap()
    );
    let now = agent
        .kv_get("app/name", &here())
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!((now.value.as_slice(), now.flags), (&b"v2"[..], 0));
    assert!(
        !agent
            .kv_delete("app/name", Some(stale), None)
            .await
            .unwrap()
    );
    assert!(
        agent
            .kv_delete("app/name", Some(now.modify_index), None)
            .await
            .unwrap()
    );
    assert!(
        agent.kv_delete("app/name", None, None).await.unwrap(),
        "absent: no error"
    );

    agent.kv_delete_tree("app/", None).await.unwrap();
    assert_eq!(
        agent.kv_keys("", None, &here()).await.unwrap().value,
        ["other"]
    );
    match agent.kv_put("a/b", b"x", 0, None, Some("dc9")).await {
        Err(ClientError::Http {
            status: 500,
            message,
        }) => {
            assert!(message.contains("No path to datacenter"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}
