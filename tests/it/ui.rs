//! The web UI: its routes and `/v1/internal/ui/*` over plain HTTP, then the pages in a
//! real browser (headless Chromium over the DevTools protocol, `support::browser`)
//! against two federated datacenters. Browser tests print why and pass where no
//! Chromium is installed; CI installs one.

use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::browser::{Browser, screenshot_dir};
use crate::support::cluster::{Member, Spec, leader_of};
use crate::support::{TestAgent, eventually, secs};
use crate::wan::{federated_pair, wan_status};

/// How long a page may take to show what a test waits for: generous, as the suite runs
/// on small shared machines; no test measures time.
const PAGE_WAIT: Duration = Duration::from_secs(60);

/// One HTTP/1.1 request with extra headers, answered as (status, headers, body); for
/// what the test client does not send (`If-None-Match`).
async fn raw_get(addr: std::net::SocketAddr, path: &str, extra: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn header<'a>(r: &'a proconsul::client::Response, name: &str) -> &'a str {
    r.header(name).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_is_served_under_its_content_path_with_settings_and_files() {
    let agent = TestAgent::dev().await;
    let addr = agent.agent.http_addr().unwrap();

    // `GET /` sends browsers to the UI (-dev turns it on).
    let r = agent.get("/").await;
    assert_eq!(r.status, 301, "{}", r.body);
    assert_eq!(header(&r, "location"), "/ui/");

    // Every page path answers with the page and the agent's settings in it.
    for path in [
        "/ui/",
        "/ui/dc1/services",
        "/ui/dc1/services/web/instances",
        "/ui/dc9/kv/a/b/edit",
        "/ui/nope",
    ] {
        let r = agent.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(
            header(&r, "content-type").starts_with("text/html"),
            "{path}"
        );
        assert_eq!(header(&r, "cache-control"), "no-cache");
        assert!(header(&r, "content-security-policy").contains("default-src 'none'"));
        assert!(r.body.contains(r#""LocalDatacenter":"dc1""#), "{}", r.body);
        assert!(r.body.contains(r#""AclsEnabled":false"#));
        assert!(r.body.contains(r#""ContentPath":"/ui/""#));
    }
    let r = agent.get("/ui").await;
    assert_eq!((r.status, header(&r, "location")), (301, "/ui/"));

    // Files: their type, an ETag, and 304 when the browser has it already.
    let page = agent.get("/ui/dc1/services").await.body;
    for (file, kind) in [
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let r = agent.get(&format!("/ui/assets/{file}")).await;
        assert_eq!(r.status, 200, "{file}");
        assert!(header(&r, "content-type").starts_with(kind), "{file}");
        let etag = header(&r, "etag").trim_matches('"').to_owned();
        assert_eq!(etag.len(), 16, "{file}");
        assert!(
            page.contains(&format!("assets/{file}?v={etag}")),
            "the page links {file} by its tag"
        );
        let (status, _, body) = raw_get(
            addr,
            &format!("/ui/assets/{file}"),
            &format!("If-None-Match: \"{etag}\"\r\n"),
        )
        .await;
        assert_eq!((status, body.as_str()), (304, ""), "{file}");
    }
    let r = agent.get("/ui/assets/missing.js").await;
    assert_eq!(r.status, 404);

    // Outside the content path nothing changed: the API's 404, and only GET for pages.
    let r = agent.get("/elsewhere").await;
    assert_eq!(r.status, 404);
    assert!(r.body.starts_with("Invalid URL path"), "{}", r.body);
    let r = agent.put("/ui/dc1/services", "").await;
    assert_eq!(r.status, 405);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ui_off_the_root_says_how_to_turn_it_on() {
    let agent = TestAgent::with_config(r#"{"ui_config": {"enabled": false}}"#).await;
    let r = agent.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the agent configuration and restart."
    );
    let r = agent.get("/ui/dc1/services").await;
    assert_eq!(r.status, 404);
    assert!(r.body.starts_with("Invalid URL path"), "{}", r.body);
    agent.shutdown().await;

    // Another content path, with Consul's older spelling turning the UI on.
    let agent =
        TestAgent::with_config(r#"{"ui": true, "ui_config": {"content_path": "consul/ui"}}"#).await;
    let r = agent.get("/").await;
    assert_eq!((r.status, header(&r, "location")), (301, "/consul/ui/"));
    let r = agent.get("/consul/ui/dc1/nodes").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("/consul/ui/assets/app.js?v="), "{}", r.body);
    assert_eq!(agent.get("/ui/").await.status, 404);
    agent.shutdown().await;
}

/// Registers `id` of `service` on `node` through the catalog, with one check of
/// `(status, output)`.
async fn register(
    m: &Member,
    dc: &str,
    node: &str,
    service: &str,
    id: &str,
    tags: &[&str],
    (status, output): (&str, &str),
) {
    let body = json!({
        "Node": node, "Address": "10.0.0.1",
        "Service": {"Service": service, "ID": id, "Port": 8080, "Tags": tags},
        "Check": {"CheckID": format!("{id}-check"), "Name": format!("{id} answers"), "Status": status,
                  "ServiceID": id, "Output": output},
    });
    let r = m
        .call(
            Method::PUT,
            &format!("/v1/catalog/register?dc={dc}"),
            &body.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "register {id}: {}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_ui_endpoints_summarise_services_and_nodes_and_block() {
    let agent = Member::start(Spec {
        name: "n1".into(),
        server: true,
        ..Spec::default()
    })
    .await;
    leader_of(&[&agent], 1).await;
    register(
        &agent,
        "dc1",
        "web-1",
        "web",
        "web-a",
        &["v2", "blue"],
        ("passing", "ok"),
    )
    .await;
    register(
        &agent,
        "dc1",
        "web-1",
        "web",
        "web-b",
        &["v2"],
        ("critical", "refused"),
    )
    .await;
    register(
        &agent,
        "dc1",
        "web-2",
        "web",
        "web-c",
        &[],
        ("warning", "slow"),
    )
    .await;

    let list = agent.json("/v1/internal/ui/services").await;
    let web = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Name"] == "web")
        .unwrap();
    assert_eq!(web["InstanceCount"], 3, "{web}");
    assert_eq!(web["Nodes"], json!(["web-1", "web-2"]));
    assert_eq!(web["Tags"], json!(["blue", "v2"]));
    assert_eq!(
        (
            web["ChecksPassing"].clone(),
            web["ChecksWarning"].clone(),
            web["ChecksCritical"].clone()
        ),
        (json!(1), json!(1), json!(1))
    );
    assert_eq!(web["Datacenter"], "dc1");
    assert_eq!(web["ExternalSources"], Value::Null);

    let nodes = agent.json("/v1/internal/ui/nodes").await;
    let web1 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["Node"] == "web-1")
        .unwrap();
    assert_eq!(web1["Services"].as_array().unwrap().len(), 2, "{web1}");
    assert_eq!(web1["Checks"].as_array().unwrap().len(), 2);
    let one = agent.json("/v1/internal/ui/node/web-2").await;
    assert_eq!(one["Services"][0]["ID"], "web-c", "{one}");
    assert_eq!(one["Checks"][0]["Output"], "slow");
    let r = agent.get("/v1/internal/ui/node/nobody").await;
    assert_eq!((r.status, r.body.as_str()), (404, ""));

    // A blocking read returns when the catalog changes.
    let r = agent.get("/v1/internal/ui/services").await;
    let index: u64 = header(&r, "x-consul-index").parse().unwrap();
    let waiting = {
        let http = agent.http.clone();
        tokio::spawn(async move {
            http.call(
                Method::GET,
                &format!("/v1/internal/ui/services?index={index}&wait=30s"),
                None,
            )
            .await
            .unwrap()
        })
    };
    register(&agent, "dc1", "db-1", "db", "db", &[], ("passing", "")).await;
    let r = waiting.await.unwrap();
    assert!(r.body.contains(r#""Name":"db""#), "{}", r.body);
    assert!(header(&r, "x-consul-index").parse::<u64>().unwrap() > index);

    let dcs = agent.json("/v1/internal/ui/datacenters").await;
    assert_eq!(dcs[0]["Name"], "dc1", "{dcs}");
    assert_eq!(dcs[0]["Local"], true);
    assert_eq!(dcs[0]["Reachable"], true);
    agent.agent.stop(false).await;
}

/// A Member config with the web UI on.
/// `f` with the browser, off the async worker (DevTools calls block).
fn in_browser<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The row of service `name` in the page's services table, as "health" or "".
fn service_row(name: &str) -> String {
    format!(
        "(document.querySelector('tr.service[data-service=\"{name}\"]') || {{dataset: {{health: ''}}}}).dataset.health"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_datacenters_in_a_browser_services_health_switching_live_updates_and_a_dead_datacenter()
{
    let Some(chromium) = Browser::find() else {
        println!(
            "SKIPPED: no Chromium found (install Debian's chromium, or set CHROMIUM=/path/to/chrome); the web UI was not tested in a browser"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = wan::tls::create_ca("consul", 30).unwrap();
    let (a, b) = federated_pair(
        dir.path(),
        &ca,
        ("a0", "dc1"),
        ("b0", "dc2"),
        [json!({"ui_config": {"enabled": true}}), Value::Null],
    )
    .await;
    leader_of(&[&a], 1).await;
    leader_of(&[&b], 1).await;
    eventually(secs(30), "dc2 alive in dc1's WAN pool", || async {
        match wan_status(&a, "b0.dc2").await {
            Some(1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // dc1: web (healthy) and billing; dc2: api with one instance failing, and search.
    register(
        &a,
        "dc1",
        "web-1",
        "web",
        "web-1",
        &["v1", "http"],
        ("passing", "HTTP 200 OK"),
    )
    .await;
    register(
        &a,
        "dc1",
        "web-2",
        "web",
        "web-2",
        &["v1", "http"],
        ("passing", "HTTP 200 OK"),
    )
    .await;
    register(
        &a,
        "dc1",
        "bill-1",
        "billing",
        "billing-1",
        &["grpc"],
        ("warning", "slow: 900ms"),
    )
    .await;
    register(
        &a,
        "dc2",
        "api-1",
        "api",
        "api-1",
        &["v3"],
        ("passing", "HTTP 200 OK"),
    )
    .await;
    register(
        &a,
        "dc2",
        "api-2",
        "api",
        "api-2",
        &["v3"],
        ("critical", "dial tcp 10.0.0.1:8080: connection refused"),
    )
    .await;
    register(
        &a,
        "dc2",
        "search-1",
        "search",
        "search-1",
        &[],
        ("passing", ""),
    )
    .await;

    let base = format!("http://{}", a.agent.http_addr().unwrap());
    let shots = screenshot_dir();
    let mut browser = in_browser(|| Browser::start(&chromium, 1280, 720));

    // dc1's services, with their health; none of dc2's.
    in_browser(|| {
        browser.goto(&format!("{base}/ui/"));
        browser.wait(
            PAGE_WAIT,
            "the redirect to dc1's services",
            "location.pathname === '/ui/dc1/services'",
        );
        browser.wait(PAGE_WAIT, "web listed in dc1", &service_row("web"));
        assert_eq!(browser.eval(&service_row("web")), "passing");
        assert_eq!(browser.eval(&service_row("billing")), "warning");
        assert_eq!(
            browser.eval(&service_row("api")),
            "",
            "dc2's service shown in dc1"
        );
        // The switcher lists dc1 (local) first, then dc2, reachable with a round-trip time.
        let dcs = browser.wait(
            PAGE_WAIT,
            "both datacenters in the switcher",
            "(() => { const l = [...document.querySelectorAll('#dc-list a.dc')]; \
               return l.length === 2 ? l.map(a => [a.dataset.dc, a.className, a.querySelector('.rtt').textContent]) : null })()",
        );
        assert_eq!(dcs[0][0], "dc1", "{dcs}");
        assert_eq!(dcs[0][2], "local");
        assert_eq!(dcs[1][0], "dc2");
        assert!(dcs[1][1].as_str().unwrap().contains("reachable"), "{dcs}");
        assert!(
            !dcs[1][1].as_str().unwrap().contains("unreachable"),
            "{dcs}"
        );
        browser.screenshot(&shots.join("services.png"));
        browser.eval("document.getElementById('dcs').open = true");
        browser.screenshot(&shots.join("datacenters.png"));
        browser.eval("document.getElementById('dcs').open = false");
    });

    // Switching to dc2 in the menu shows dc2's services, the failing one as critical.
    in_browser(|| {
        browser.eval("window.stillTheSamePage = true");
        browser.eval("document.querySelector('#dc-list a[data-dc=\"dc2\"]').click()");
        browser.wait(PAGE_WAIT, "dc2's services", &service_row("api"));
        assert_eq!(browser.eval("location.pathname"), "/ui/dc2/services");
        assert_eq!(browser.eval(&service_row("api")), "critical");
        assert_eq!(browser.eval(&service_row("search")), "passing");
        assert_eq!(
            browser.eval(&service_row("web")),
            "",
            "dc1's service shown in dc2"
        );
        assert_eq!(
            browser.eval("window.stillTheSamePage === true"),
            true,
            "switching reloaded the page"
        );
    });

    // The page follows the catalog by itself: a new service in dc2 appears.
    register(
        &b,
        "dc2",
        "cache-1",
        "cache",
        "cache-1",
        &["redis"],
        ("passing", "PONG"),
    )
    .await;
    in_browser(|| {
        browser.wait(
            PAGE_WAIT,
            "cache to appear without a reload",
            &service_row("cache"),
        );
        assert_eq!(
            browser.eval("window.stillTheSamePage === true"),
            true,
            "the page was reloaded"
        );
    });

    // A service's instances with their checks and output.
    in_browser(|| {
        browser.goto(&format!("{base}/ui/dc2/services/api"));
        let health = browser.wait(
            PAGE_WAIT,
            "api's two instances",
            "(() => { const r = [...document.querySelectorAll('tr.instance')]; \
               return r.length === 2 ? Object.fromEntries(r.map(x => [x.dataset.instance, x.dataset.health])) : null })()",
        );
        assert_eq!(health, json!({"api-1": "passing", "api-2": "critical"}));
        let text = browser.eval("document.getElementById('instances').innerText");
        assert!(
            text.as_str().unwrap().contains("connection refused"),
            "{text}"
        );
        browser.screenshot(&shots.join("service-instances.png"));
    });

    // Nodes, the WAN pool, and a path the UI does not have.
    in_browser(|| {
        browser.goto(&format!("{base}/ui/dc1/nodes"));
        browser.wait(
            PAGE_WAIT,
            "dc1's nodes",
            "document.querySelector('tr.node[data-node=\"web-1\"]')",
        );
        browser.goto(&format!("{base}/ui/dc1/wan"));
        let servers = browser.wait(
            PAGE_WAIT,
            "both servers in the WAN pool",
            "(() => { const r = [...document.querySelectorAll('tr.member')]; \
               return r.length === 2 ? r.map(x => x.dataset.member + ' ' + x.dataset.status).sort() : null })()",
        );
        assert_eq!(servers, json!(["a0.dc1 alive", "b0.dc2 alive"]));
        browser.goto(&format!("{base}/ui/dc1/no/such/page"));
        browser.wait(
            PAGE_WAIT,
            "the UI's 404 page",
            "document.querySelector('[data-page=\"not-found\"]')",
        );
    });

    // dc2 dies: the UI says so and dc1 still works.
    let Member { agent: b_agent, .. } = b;
    b_agent.stop(false).await;
    eventually(secs(60), "dc2 failed in dc1's WAN pool", || async {
        match wan_status(&a, "b0.dc2").await {
            Some(4) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    in_browser(|| {
        browser.goto(&format!("{base}/ui/dc2/services"));
        browser.wait(
            PAGE_WAIT,
            "the page to say dc2 is down",
            "document.getElementById('dc-down') || document.querySelector('[data-error=\"dc-down\"]')",
        );
        browser.wait(
            PAGE_WAIT,
            "dc2 marked unreachable in the switcher",
            "document.querySelector('#dc-list a[data-dc=\"dc2\"].unreachable')",
        );
        browser.eval("document.querySelector('#dc-list a[data-dc=\"dc1\"]').click()");
        browser.wait(
            PAGE_WAIT,
            "dc1's services after dc2 died",
            &service_row("web"),
        );
    });
    drop(browser);
    a.agent.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_acls_on_the_ui_asks_for_a_token_and_edits_keys_with_it() {
    let Some(chromium) = Browser::find() else {
        println!(
            "SKIPPED: no Chromium found (install Debian's chromium, or set CHROMIUM=/path/to/chrome); the web UI was not tested in a browser"
        );
        return;
    };
    const MANAGEMENT: &str = "0d7f2c5e-8a41-4b6e-9c3d-2e1f0a9b8c7d";
    let config = json!({
        "ui_config": {"enabled": true},
        "acl": {"enabled": true, "default_policy": "deny",
                "tokens": {"initial_management": MANAGEMENT, "agent": MANAGEMENT}},
    });
    let a = Member::start(Spec {
        name: "n1".into(),
        server: true,
        config: Some(config.to_string()),
        ..Spec::default()
    })
    .await;
    eventually(secs(30), "the management token", || async {
        let r = a
            .get(&format!("/v1/acl/token/self?token={MANAGEMENT}"))
            .await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await;
    let r = a
        .call(
            Method::PUT,
            &format!("/v1/kv/app/config/port?token={MANAGEMENT}"),
            "8080",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        a.get("/ui/dc1/kv/")
            .await
            .body
            .contains(r#""AclsEnabled":true"#)
    );
    // The UI's summaries are filtered as the catalog's lists are.
    let r = a.get("/v1/internal/ui/services").await;
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    assert_eq!(header(&r, "x-consul-results-filtered-by-acls"), "true");
    let r = a
        .get(&format!("/v1/internal/ui/services?token={MANAGEMENT}"))
        .await;
    assert!(r.body.contains(r#""Name":"consul""#), "{}", r.body);
    let r = a.get("/v1/internal/ui/nodes").await;
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));

    let base = format!("http://{}", a.agent.http_addr().unwrap());
    let mut browser = in_browser(|| Browser::start(&chromium, 1280, 720));
    in_browser(|| {
        // No token: the page asks for one; a wrong one is refused; the right one works.
        browser.goto(&format!("{base}/ui/dc1/kv/"));
        browser.wait(
            PAGE_WAIT,
            "the login form",
            "document.getElementById('token')",
        );
        browser.eval("document.getElementById('token').value = 'not-a-token'; document.querySelector('#login button').click()");
        browser.wait(
            PAGE_WAIT,
            "the refusal",
            "(e => e && !e.hidden && e.textContent)(document.getElementById('login-error'))",
        );
        browser.eval(&format!("document.getElementById('token').value = '{MANAGEMENT}'; document.querySelector('#login button').click()"));
        browser.wait(
            PAGE_WAIT,
            "the app/ folder",
            "document.querySelector('tr.kv-key[data-key=\"app/\"]')",
        );
        // Edit the key in the editor and save it.
        browser.goto(&format!("{base}/ui/dc1/kv/app/config/port/edit"));
        browser.wait(
            PAGE_WAIT,
            "the key's value",
            "(e => e && e.value === '8080')(document.getElementById('kv-value'))",
        );
        browser.eval("document.getElementById('kv-value').value = '9090'; document.getElementById('kv-save').click()");
        browser.wait(
            PAGE_WAIT,
            "back in the folder",
            "location.pathname === '/ui/dc1/kv/app/config/'",
        );
    });
    let r = a
        .get(&format!("/v1/kv/app/config/port?raw&token={MANAGEMENT}"))
        .await;
    assert_eq!(r.body, "9090");
    in_browser(|| {
        // Create a key, then delete it.
        browser.goto(&format!("{base}/ui/dc1/kv/app/create"));
        browser.wait(
            PAGE_WAIT,
            "the create form",
            "document.getElementById('kv-name')",
        );
        browser.eval("document.getElementById('kv-name').value = 'mode'; document.getElementById('kv-value').value = 'blue'; document.getElementById('kv-save').click()");
        browser.wait(
            PAGE_WAIT,
            "the new key listed",
            "document.querySelector('tr.kv-key[data-key=\"app/mode\"]')",
        );
    });
    let r = a
        .get(&format!("/v1/kv/app/mode?raw&token={MANAGEMENT}"))
        .await;
    assert_eq!(r.body, "blue");
    in_browser(|| {
        browser.eval("window.confirm = () => true; document.querySelector('tr.kv-key[data-key=\"app/mode\"] button').click()");
        browser.wait(
            PAGE_WAIT,
            "the key gone from the list",
            "!document.querySelector('tr.kv-key[data-key=\"app/mode\"]')",
        );
    });
    let r = a.get(&format!("/v1/kv/app/mode?token={MANAGEMENT}")).await;
    assert_eq!(r.status, 404);
    drop(browser);
    a.agent.stop(false).await;
}
