use std::path::Path;

use super::source::dev_layer;
use super::*;

fn layer(text: &str) -> Layer {
    parse_layer(Origin::File("t.json".into()), text).unwrap()
}

fn dev_sources() -> Sources {
    Sources {
        dev: true,
        ..Sources::default()
    }
}

#[test]
fn unknown_keys_name_the_file_and_key() {
    let e = parse_layer(Origin::File("a.json".into()), r#"{"ports": {"htpp": 1}}"#).unwrap_err();
    assert_eq!(e.key, "ports.htpp");
    assert!(e.message.contains("unknown field `htpp`"), "{}", e.message);
    assert!(e.to_string().starts_with("a.json: ports.htpp:"), "{e}");
    let e = parse_layer(Origin::File("a.json".into()), r#"{"datacentre": "x"}"#).unwrap_err();
    assert!(e.message.contains("datacentre"), "{e}");
}

#[test]
fn rpc_max_conns_per_client_defaults_to_consuls_and_zero_means_no_limit() {
    let with = |text: &str| {
        let mut layers = vec![Layer::new(Origin::Defaults, dev_layer())];
        if !text.is_empty() {
            layers.push(layer(text));
        }
        AgentConfig::from_layers(&layers, dev_sources())
            .unwrap()
            .rpc_max_conns_per_client
    };
    assert_eq!(with(""), 100);
    assert_eq!(with(r#"{"limits": {"rpc_max_conns_per_client": 7}}"#), 7);
    assert_eq!(
        with(r#"{"limits": {"rpc_max_conns_per_client": 0}}"#),
        usize::MAX
    );
}

#[test]
fn http_time_limits_and_blocking_query_allowance_are_read_and_checked() {
    let load = |text: &str| {
        let layers = vec![Layer::new(Origin::Defaults, dev_layer()), layer(text)];
        AgentConfig::from_layers(&layers, dev_sources())
    };
    let c = load(r#"{"limits": {}}"#).unwrap().http_limits;
    assert_eq!(c.body_timeout, Duration::from_secs(60));
    assert_eq!(c.write_timeout, Duration::from_secs(30));
    assert_eq!(c.max_blocking_queries, 4096);
    assert_eq!(c.max_blocking_queries_per_client, 200);
    let c = load(
        r#"{"limits": {"http_body_timeout": "5s", "http_write_timeout": "2m",
            "http_max_blocking_queries": 10, "http_max_blocking_queries_per_client": 0}}"#,
    )
    .unwrap()
    .http_limits;
    assert_eq!(c.body_timeout, Duration::from_secs(5));
    assert_eq!(c.write_timeout, Duration::from_secs(120));
    assert_eq!(c.max_blocking_queries, 10);
    assert_eq!(
        c.max_blocking_queries_per_client,
        usize::MAX,
        "0 = no limit"
    );
    let e = load(r#"{"limits": {"http_body_timeout": "10ms", "http_max_blocking_queries": 0}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("limits.http_body_timeout: must be at least 1s"),
        "{e}"
    );
    assert!(
        e.contains("limits.http_max_blocking_queries: must be between"),
        "{e}"
    );
}

#[test]
fn later_layers_win_and_lists_append() {
    let layers = vec![
        Layer::new(Origin::Defaults, dev_layer()),
        layer(r#"{"datacenter": "east", "service": {"name": "a"}, "recursors": ["1.1.1.1"]}"#),
        layer(
            r#"{"datacenter": "west", "services": [{"name": "b"}], "recursors": ["9.9.9.9:5353"]}"#,
        ),
    ];
    let c = AgentConfig::from_layers(&layers, dev_sources()).unwrap();
    assert_eq!(c.datacenter.as_str(), "west");
    assert_eq!(c.services.len(), 2);
    assert_eq!(c.dns.recursors.len(), 2);
    assert_eq!(c.dns.recursors[0].port(), 53);
}

#[test]
fn all_problems_are_reported_with_their_source() {
    let layers = vec![
        Layer::new(Origin::Defaults, dev_layer()),
        layer(
            r#"{"datacenter": "d c", "ports": {"http": 70000}, "service": {"name": "w", "port": "x"}}"#,
        ),
    ];
    let e = AgentConfig::from_layers(&layers, dev_sources()).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("t.json: datacenter:"), "{text}");
    assert!(text.contains("t.json: ports.http:"), "{text}");
    assert!(text.contains("t.json: service.port:"), "{text}");
}

#[test]
fn unsupported_features_are_named() {
    let layers = vec![
        Layer::new(Origin::Defaults, dev_layer()),
        layer(r#"{"connect": {"enabled": true}}"#),
    ];
    let e = AgentConfig::from_layers(&layers, dev_sources()).unwrap_err();
    assert!(e.to_string().contains("connect: not supported"), "{e}");
}

#[test]
fn the_ui_is_on_with_dev_or_its_keys_and_its_path_is_checked() {
    let load = |dev: bool, texts: &[&str]| {
        let mut layers = vec![Layer::new(Origin::Defaults, dev_layer())];
        if !dev {
            layers.push(layer(r#"{"data_dir": "/var/lib/proconsul"}"#));
        }
        layers.extend(texts.iter().map(|t| layer(t)));
        let sources = Sources {
            dev,
            ..Sources::default()
        };
        AgentConfig::from_layers(&layers, sources)
    };
    let ui = |dev, texts: &[&str]| load(dev, texts).unwrap().ui;
    assert!(ui(true, &[]).enabled, "-dev turns the UI on");
    assert!(!ui(false, &[]).enabled);
    assert_eq!(ui(false, &[]).content_path, "/ui/");
    assert!(!ui(true, &[r#"{"ui_config": {"enabled": false}}"#]).enabled);
    assert!(ui(false, &[r#"{"ui": true}"#]).enabled, "the pre-1.9 key");
    let later = ui(
        false,
        &[
            r#"{"ui_config": {"enabled": true, "content_path": "/a/"}}"#,
            r#"{"ui_config": {"content_path": "consul"}}"#,
        ],
    );
    assert!(later.enabled, "a later block keeps what it does not set");
    assert_eq!(later.content_path, "/consul/");
    for bad in [
        r#"{"ui_config": {"content_path": "/v1/ui"}}"#,
        r#"{"ui_config": {"content_path": "/"}}"#,
        r#"{"ui_config": {"dir": "/srv/ui"}}"#,
    ] {
        let e = load(true, &[bad]).unwrap_err().to_string();
        assert!(e.contains("ui_config."), "{bad}: {e}");
    }
}

#[test]
fn acl_settings_are_read_merged_and_checked() {
    let management = "0b2d7d2a-5c4f-4a53-9a3e-6a0f3b7f2f10";
    let layers = vec![
        Layer::new(Origin::Defaults, dev_layer()),
        layer(&format!(
            r#"{{"acl": {{"enabled": true, "default_policy": "allow", "tokens": {{"master": "{management}", "agent": "a"}}}}}}"#
        )),
        layer(
            r#"{"acl": {"default_policy": "deny", "down_policy": "deny", "token_ttl": "10s", "tokens": {"default": "d"}}}"#,
        ),
    ];
    let c = AgentConfig::from_layers(&layers, dev_sources()).unwrap();
    let acl = c.acl.expect("on");
    assert!(!acl.default_allow, "the later layer wins");
    assert_eq!(acl.down_policy, lan::DownPolicy::Deny);
    assert_eq!(acl.token_ttl, Duration::from_secs(10));
    assert_eq!(
        acl.initial_management.as_deref(),
        Some(management),
        "master is the old name"
    );
    assert_eq!(
        acl.agent_token.as_deref(),
        Some("a"),
        "tokens merge key by key"
    );
    assert_eq!(acl.default_token.as_deref(), Some("d"));
    assert_eq!(acl.token_min_expiration_ttl, Duration::from_secs(60));
    assert_eq!(acl.token_max_expiration_ttl, Duration::from_secs(24 * 3600));
    let persisting = r#"{"acl": {"enabled": true, "enable_token_persistence": true, "token_min_expiration_ttl": "1s"}, "data_dir": "/var/lib/proconsul"}"#;
    let dev = vec![Layer::new(Origin::Defaults, dev_layer()), layer(persisting)];
    let acl = AgentConfig::from_layers(&dev, dev_sources())
        .unwrap()
        .acl
        .unwrap();
    assert_eq!(acl.token_persistence, None, "-dev keeps nothing on disk");
    assert_eq!(acl.token_min_expiration_ttl, Duration::from_secs(1));
    let acl = AgentConfig::from_layers(&[layer(persisting)], Sources::default())
        .unwrap()
        .acl
        .unwrap();
    assert_eq!(
        acl.token_persistence.as_deref(),
        Some(std::path::Path::new("/var/lib/proconsul/acl-tokens.json"))
    );
    let off = vec![
        Layer::new(Origin::Defaults, dev_layer()),
        layer(r#"{"acl": {"default_policy": "deny"}}"#),
    ];
    assert!(
        AgentConfig::from_layers(&off, dev_sources())
            .unwrap()
            .acl
            .is_none()
    );
    for bad in [
        r#"{"acl": {"enabled": true, "default_policy": "maybe"}}"#,
        r#"{"acl": {"enabled": true, "down_policy": "later"}}"#,
        r#"{"acl": {"enabled": true, "tokens": {"initial_management": "root"}}}"#,
        r#"{"acl": {"enabled": true, "tokenz": {}}}"#,
        r#"{"acl": {"enabled": true, "token_max_expiration_ttl": "soon"}}"#,
        r#"{"acl": {"enabled": true, "token_min_expiration_ttl": "2h", "token_max_expiration_ttl": "1h"}}"#,
    ] {
        let text = match parse_layer(Origin::File("t.json".into()), bad) {
            Err(e) => format!("{e:?}"),
            Ok(l) => {
                let layers = vec![Layer::new(Origin::Defaults, dev_layer()), l];
                AgentConfig::from_layers(&layers, dev_sources())
                    .unwrap_err()
                    .to_string()
            }
        };
        assert!(text.contains("acl."), "{bad}: {text}");
    }
}

#[test]
fn gossip_settings_are_read_and_checked() {
    let key = Key::generate().to_base64();
    let text = format!(
        r#"{{"encrypt": "{key}", "encrypt_verify_incoming": false, "retry_join": ["10.0.0.1"], "start_join": ["10.0.0.2:8301"], "retry_interval": "5s", "retry_max": 3}}"#
    );
    let layers = vec![Layer::new(Origin::Defaults, dev_layer()), layer(&text)];
    let c = AgentConfig::from_layers(&layers, dev_sources()).unwrap();
    assert_eq!(c.encrypt.as_ref().map(Key::to_base64), Some(key));
    assert!(!c.encrypt_verify_incoming);
    assert!(c.encrypt_verify_outgoing);
    assert_eq!(c.retry_join, ["10.0.0.1"]);
    assert_eq!(c.start_join, ["10.0.0.2:8301"]);
    assert_eq!(c.retry_interval, Duration::from_secs(5));
    assert_eq!(c.retry_max, 3);
    let layers = vec![
        Layer::new(Origin::Defaults, dev_layer()),
        layer(r#"{"encrypt": "AAAA", "reconnect_timeout": "1h"}"#),
    ];
    let e = AgentConfig::from_layers(&layers, dev_sources()).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("encrypt: Failed to configure keyring: key size must be 16, 24 or 32 bytes"),
        "{text}"
    );
    assert!(
        text.contains("reconnect_timeout: must be at least 8h"),
        "{text}"
    );
}

#[test]
fn tls_keys_merge_from_the_old_and_the_new_form() {
    let layers = vec![
        Layer::new(Origin::Defaults, dev_layer()),
        layer(r#"{"ca_file": "/old/ca.pem", "verify_outgoing": true}"#),
        layer(
            r#"{"tls": {"defaults": {"ca_file": "/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem", "verify_incoming": true},
                        "internal_rpc": {"verify_server_hostname": true}}}"#,
        ),
    ];
    let c = AgentConfig::from_layers(&layers, dev_sources()).unwrap();
    let tls = c.tls.unwrap();
    assert_eq!(tls.files.ca_file, PathBuf::from("/ca.pem"));
    assert_eq!(tls.files.cert_file, Some(PathBuf::from("/c.pem")));
    assert!(tls.verify_incoming && tls.verify_outgoing && tls.verify_server_hostname);
    let bad = |text: &str| {
        let layers = vec![Layer::new(Origin::Defaults, dev_layer()), layer(text)];
        AgentConfig::from_layers(&layers, dev_sources())
            .unwrap_err()
            .to_string()
    };
    assert!(bad(r#"{"verify_incoming": true}"#).contains("need a ca_file"));
    assert!(bad(r#"{"ca_file": "/ca.pem", "cert_file": "/c.pem"}"#).contains("together"));
    assert!(
        bad(r#"{"ca_file": "/ca.pem", "verify_incoming": true}"#)
            .contains("a server with verify_incoming needs")
    );
    let e = parse_layer(Origin::File("t.json".into()), r#"{"tls": {"grpc": {}}}"#).unwrap_err();
    assert_eq!(e.key, "tls.grpc");
}

#[test]
fn a_client_agent_needs_a_data_dir_but_no_bootstrap() {
    let c = AgentConfig::from_layers(&[layer(r#"{"data_dir": "/tmp/x"}"#)], Sources::default())
        .unwrap();
    assert!(!c.server);
    let e = AgentConfig::from_layers(
        &[layer(r#"{"data_dir": "/tmp/x", "bootstrap_expect": 1}"#)],
        Sources::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("only for servers"), "{e}");
}

#[test]
fn a_server_needs_a_data_dir_and_may_wait_for_others() {
    let layers = vec![layer(r#"{"server": true}"#)];
    let e = AgentConfig::from_layers(&layers, Sources::default()).unwrap_err();
    assert!(e.to_string().contains("data_dir"), "{e}");
    let layers = vec![layer(
        r#"{"server": true, "bootstrap_expect": 1, "data_dir": "/tmp/x"}"#,
    )];
    let c = AgentConfig::from_layers(&layers, Sources::default()).unwrap();
    assert!(c.bootstrap);
    // Three servers find each other; a server with neither waits to be added.
    let layers = vec![layer(
        r#"{"server": true, "bootstrap_expect": 3, "data_dir": "/tmp/x"}"#,
    )];
    let c = AgentConfig::from_layers(&layers, Sources::default()).unwrap();
    assert!(!c.bootstrap);
    assert_eq!(c.bootstrap_expect, 3);
    assert_eq!(c.warnings, ["bootstrap_expect > 0: expecting 3 servers"]);
    let two = AgentConfig::from_layers(
        &[layer(
            r#"{"server": true, "bootstrap_expect": 2, "data_dir": "/tmp/x"}"#,
        )],
        Sources::default(),
    )
    .unwrap();
    assert!(
        two.warnings[1].starts_with(
            "bootstrap_expect = 2: A cluster with 2 servers will provide no failure tolerance."
        ),
        "{:?}",
        two.warnings
    );
    let four = AgentConfig::from_layers(
        &[layer(
            r#"{"server": true, "bootstrap_expect": 4, "data_dir": "/tmp/x"}"#,
        )],
        Sources::default(),
    )
    .unwrap();
    assert!(four.warnings[1].starts_with("bootstrap_expect is even number"));
    let layers = vec![layer(r#"{"server": true, "data_dir": "/tmp/x"}"#)];
    assert!(AgentConfig::from_layers(&layers, Sources::default()).is_ok());
    let layers = vec![layer(
        r#"{"server": true, "bootstrap": true, "bootstrap_expect": 3, "data_dir": "/tmp/x"}"#,
    )];
    assert!(AgentConfig::from_layers(&layers, Sources::default()).is_err());
}

#[test]
fn script_checks_need_to_be_enabled() {
    let with = |extra: &str| {
        let layers = vec![
            Layer::new(Origin::Defaults, dev_layer()),
            layer(r#"{"service": {"name": "w", "check": {"args": ["true"], "interval": "5s"}}}"#),
            layer(extra),
        ];
        AgentConfig::from_layers(&layers, dev_sources())
    };
    let e = with("{}").unwrap_err().to_string();
    assert_eq!(
        e,
        "enable_script_checks: Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or 'enable_local_script_checks' to true"
    );
    // Either switch allows them in config files; both are off by default.
    let local = with(r#"{"enable_local_script_checks": true}"#).unwrap();
    assert!(local.enable_local_script_checks && !local.enable_script_checks);
    assert!(with(r#"{"enable_script_checks": true}"#).is_ok());
}

fn https_config(text: &str) -> Result<AgentConfig, Problems> {
    let layers = vec![Layer::new(Origin::Defaults, dev_layer()), layer(text)];
    AgentConfig::from_layers(&layers, dev_sources())
}

#[test]
fn https_is_off_by_default_and_takes_its_files_from_every_tls_form() {
    let c = https_config("{}").unwrap();
    assert_eq!((c.ports.https, c.https), (None, None));
    assert_eq!(c.ports.http, Some(8500));
    // tls.https over tls.defaults over the top-level keys.
    let c = https_config(
        r#"{"ports": {"https": 8501, "http": -1}, "cert_file": "/old.pem", "key_file": "/old-key.pem",
            "tls": {"defaults": {"ca_file": "/ca.pem", "cert_file": "/d.pem", "key_file": "/d-key.pem",
                                 "tls_min_version": "TLSv1_2"},
                    "https": {"cert_file": "/h.pem", "key_file": "/h-key.pem", "verify_incoming": true,
                              "tls_min_version": "TLSv1_3"}}}"#,
    )
    .unwrap();
    assert_eq!((c.ports.http, c.ports.https), (None, Some(8501)));
    let https = c.https.unwrap();
    assert_eq!(https.cert_file, PathBuf::from("/h.pem"));
    assert_eq!(https.key_file, PathBuf::from("/h-key.pem"));
    assert_eq!(https.ca_file, Some(PathBuf::from("/ca.pem")));
    assert!(https.verify_incoming && https.tls13_only);
    // The legacy keys alone; verify_incoming covers HTTPS, verify_incoming_https too.
    let legacy = |extra: &str| {
        https_config(&format!(
            r#"{{"ports": {{"https": 0}}, "ca_file": "/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem"{extra}}}"#
        ))
        .unwrap()
        .https
        .unwrap()
    };
    assert!(!legacy("").verify_incoming);
    assert!(legacy(r#", "verify_incoming": true"#).verify_incoming);
    assert!(legacy(r#", "verify_incoming_https": true"#).verify_incoming);
    assert!(
        !legacy(r#", "verify_incoming": true, "verify_incoming_https": false"#).verify_incoming
    );
    // verify_incoming_rpc is the server port's alone.
    let c = https_config(
        r#"{"ports": {"https": 0}, "ca_file": "/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem",
            "verify_incoming_rpc": true}"#,
    )
    .unwrap();
    assert!(c.tls.unwrap().verify_incoming && !c.https.unwrap().verify_incoming);
    // ca_path when there is no ca_file.
    let c = https_config(
        r#"{"ports": {"https": 0}, "ca_path": "/cas", "tls": {"https": {"cert_file": "/c.pem", "key_file": "/k.pem", "verify_incoming": true}}}"#,
    )
    .unwrap();
    assert_eq!(c.https.unwrap().ca_file, Some(PathBuf::from("/cas")));
    // A certificate without a CA is fine for HTTPS alone.
    let c = https_config(r#"{"ports": {"https": 0}, "tls": {"https": {"cert_file": "/c.pem", "key_file": "/k.pem"}}}"#)
        .unwrap();
    assert_eq!(c.https.unwrap().ca_file, None);
    assert_eq!(c.tls, None);
}

#[test]
fn https_without_a_certificate_or_with_bad_keys_is_refused() {
    let e = https_config(
        r#"{"ports": {"https": 8501}, "verify_incoming": true, "ca_file": "/ca.pem"}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tls.https.cert_file: VerifyIncoming set but neither a Cert/Key pair was provided nor was auto_encrypt/auto_config enabled"),
        "{e}"
    );
    let e = https_config(r#"{"ports": {"https": 8501}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tls.https.cert_file: HTTPS needs a certificate"),
        "{e}"
    );
    let e = https_config(
        r#"{"ports": {"https": 8501}, "tls": {"https": {"cert_file": "/c.pem", "key_file": "/k.pem", "verify_incoming": true}}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tls.https.ca_file: VerifyIncoming set but no CA certificates were provided"),
        "{e}"
    );
    let e = https_config(
        r#"{"ports": {"https": 8501}, "tls": {"https": {"cert_file": "/c.pem", "key_file": "/k.pem", "tls_min_version": "tls9"}}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tls.https.tls_min_version: value tls9 not supported"),
        "{e}"
    );
    let e = https_config(
        r#"{"ports": {"https": 70000}, "addresses": {"https": "x", "grpc": "127.0.0.1"}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("t.json: ports.https: must be a port number"),
        "{e}"
    );
    assert!(
        e.contains("t.json: addresses.https: \"x\" is not an IP address"),
        "{e}"
    );
    assert!(e.contains("t.json: addresses.grpc: not supported"), "{e}");
    // With HTTPS off, its keys are not looked at.
    assert!(https_config(r#"{"ports": {"https": -1}, "verify_incoming_https": true}"#).is_ok());
}

#[test]
fn each_client_interface_listens_on_its_address_or_the_client_addr() {
    let c = https_config(
        r#"{"client_addr": "127.0.0.2 127.0.0.3", "addresses": {"https": "127.0.0.4"},
            "ports": {"https": 0}, "tls": {"https": {"cert_file": "/c.pem", "key_file": "/k.pem"}}}"#,
    )
    .unwrap();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert_eq!(c.addresses.http, [ip("127.0.0.2"), ip("127.0.0.3")]);
    assert_eq!(c.addresses.dns, c.addresses.http);
    assert_eq!(c.addresses.https, [ip("127.0.0.4")]);
}

#[test]
fn check_references_and_duplicate_ids_are_checked() {
    let layers = vec![
        Layer::new(Origin::Defaults, dev_layer()),
        layer(r#"{"check": {"name": "c", "ttl": "10s", "service_id": "nope"}}"#),
    ];
    let e = AgentConfig::from_layers(&layers, dev_sources()).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let layers = vec![
        Layer::new(Origin::Defaults, dev_layer()),
        layer(r#"{"services": [{"name": "Web"}, {"name": "web"}]}"#),
    ];
    assert!(AgentConfig::from_layers(&layers, dev_sources()).is_err());
    let layers = vec![
        Layer::new(Origin::Defaults, dev_layer()),
        layer(
            r#"{"service": {"name": "web", "check": {"id": "c", "ttl": "1s"}}, "check": {"id": "C", "name": "x", "ttl": "1s"}}"#,
        ),
    ];
    assert!(AgentConfig::from_layers(&layers, dev_sources()).is_err());
}

#[test]
fn dns_settings_are_read() {
    let layers = vec![
        Layer::new(Origin::Defaults, dev_layer()),
        layer(
            r#"{"domain": "Example", "dns_config": {"node_ttl": "10s", "service_ttl": {"*": "5s"}, "udp_answer_limit": 20}}"#,
        ),
    ];
    let c = AgentConfig::from_layers(&layers, dev_sources()).unwrap();
    assert_eq!(c.dns.domain.to_string(), "example.");
    assert_eq!(c.dns.node_ttl, Duration::from_secs(10));
    assert_eq!(c.dns.service_ttl["*"], Duration::from_secs(5));
    assert_eq!(c.dns.udp_answer_limit, 8);
}

/// One configuration in every shape HCL has (scalars, blocks, repeated blocks, lists
/// of objects, maps, heredocs, negative numbers), and the same in JSON.
const EVERY_SHAPE_HCL: &str = r#"
datacenter = "east"
node_name  = "n1"
server     = true
enable_local_script_checks = true
retry_join = ["10.0.0.1", "10.0.0.2:8301"]
encrypt    = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="

ports {
  http  = 8501
  https = -1
}
node_meta = {
  rack = "r1"
  "zone-a" = "z"
}
dns_config {
  node_ttl    = "10s"
  service_ttl = { "*" = "5s", web = "1s" }
  soa { min_ttl = 3 }
}
tls {
  defaults {
ca_file = "/ca.pem"
  }
}

service {
  name = "web"
  port = 80
  tags = ["rails", "v1"]
  meta { version = "2" }
  weights = { passing = 10, warning = 1 }
  tagged_addresses {
wan = { address = "203.0.113.5", port = 8080 }
  }
  check {
http     = "http://localhost:80/health"
header   = { X-Probe = ["1"] }
interval = "10s"
  }
}
services {
  id   = "db-1"
  name = "db"
  port = 5432
  checks {
ttl = "30s"
  }
  checks {
tcp      = "localhost:5432"
interval = "5s"
  }
}
services = [
  { name = "cache", port = 6379, checks = [{ ttl = "5s" }] },
]
checks {
  id    = "disk"
  name  = "disk"
  args  = ["/bin/sh", "-c", "df ${HOME}"]
  interval = "1m"
  notes = <<-EOT
free space
on /
EOT
}
"#;

const EVERY_SHAPE_JSON: &str = r#"{
  "datacenter": "east", "node_name": "n1", "server": true, "enable_local_script_checks": true,
  "retry_join": ["10.0.0.1", "10.0.0.2:8301"],
  "encrypt": "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=",
  "ports": {"http": 8501, "https": -1},
  "node_meta": {"rack": "r1", "zone-a": "z"},
  "dns_config": {"node_ttl": "10s", "service_ttl": {"*": "5s", "web": "1s"}, "soa": {"min_ttl": 3}},
  "tls": {"defaults": {"ca_file": "/ca.pem"}},
  "service": {
"name": "web", "port": 80, "tags": ["rails", "v1"], "meta": {"version": "2"},
"weights": {"passing": 10, "warning": 1},
"tagged_addresses": {"wan": {"address": "203.0.113.5", "port": 8080}},
"check": {"http": "http://localhost:80/health", "header": {"X-Probe": ["1"]}, "interval": "10s"}
  },
  "services": [
{"id": "db-1", "name": "db", "port": 5432,
 "checks": [{"ttl": "30s"}, {"tcp": "localhost:5432", "interval": "5s"}]},
{"name": "cache", "port": 6379, "checks": [{"ttl": "5s"}]}
  ],
  "checks": [{"id": "disk", "name": "disk", "args": ["/bin/sh", "-c", "df ${HOME}"],
          "interval": "1m", "notes": "free space\non /\n"}]
}"#;

fn hcl(name: &str, text: &str) -> Result<Layer, Problem> {
    parse(Origin::File(name.into()), text, Format::Hcl)
}

#[test]
fn hcl_reads_as_the_same_raw_config_as_the_equivalent_json() {
    let from_hcl = hcl("t.hcl", EVERY_SHAPE_HCL).unwrap();
    let from_json = layer(EVERY_SHAPE_JSON);
    assert_eq!(from_hcl.raw, from_json.raw);
    // And both check into the same agent configuration.
    let load = |l: Layer| {
        AgentConfig::from_layers(
            &[Layer::new(Origin::Defaults, dev_layer()), l],
            dev_sources(),
        )
        .unwrap()
    };
    let (a, b) = (load(from_hcl), load(from_json));
    assert_eq!(a.services, b.services);
    assert_eq!(a.checks, b.checks);
    assert_eq!(a.services.len(), 3);
    assert_eq!(a.services[1].1.len(), 2, "db's two checks blocks");
    assert_eq!(
        a.encrypt.map(|k| k.to_base64()),
        b.encrypt.map(|k| k.to_base64())
    );
    assert_eq!(a.node_meta["zone-a"], "z");
    assert_eq!(a.ports.http, Some(8501));
}

#[test]
fn watches_are_read_from_json_and_hcl_and_checked() {
    use crate::watch::Kind;
    use crate::watch::agent::Handler;
    let json = layer(
        r#"{"watches": [
            {"type": "key", "key": "app/x", "handler_type": "script", "args": ["/h.sh"]},
            {"type": "services", "handler": "echo changed"},
            {"type": "service", "service": "web", "tag": ["v1"], "passingonly": true,
             "handler_type": "http",
             "http_handler_config": {"path": "http://127.0.0.1:9000/", "header": {"X-A": ["1"]}}}
        ]}"#,
    );
    let from_hcl = hcl(
        "w.hcl",
        r#"
watches {
  type = "key"
  key = "app/x"
  handler_type = "script"
  args = ["/h.sh"]
}
watches = [{ type = "services", handler = "echo changed" }]
watches {
  type = "service"
  service = "web"
  tag = ["v1"]
  passingonly = true
  handler_type = "http"
  http_handler_config {
path = "http://127.0.0.1:9000/"
header {
  X-A = ["1"]
}
  }
}
"#,
    )
    .unwrap();
    let load = |l: Layer| {
        AgentConfig::from_layers(
            &[Layer::new(Origin::Defaults, dev_layer()), l],
            dev_sources(),
        )
    };
    let (a, b) = (load(json).unwrap(), load(from_hcl).unwrap());
    assert_eq!(a.watches, b.watches);
    assert_eq!(a.watches.len(), 3);
    assert_eq!(a.watches[0].plan.kind, Kind::Key("app/x".into()));
    assert_eq!(a.watches[0].handler, Handler::Script(vec!["/h.sh".into()]));
    assert_eq!(a.watches[1].handler, Handler::Shell("echo changed".into()));
    assert!(matches!(a.watches[2].handler, Handler::Http(_)));
    assert!(
        a.warnings
            .iter()
            .any(|w| w.starts_with("The 'handler' field in watches has been deprecated")),
        "{:?}",
        a.warnings
    );
    // Watches of several files add up.
    let two = AgentConfig::from_layers(
        &[
            Layer::new(Origin::Defaults, dev_layer()),
            layer(r#"{"watches": [{"type": "nodes", "args": ["/a"]}]}"#),
            layer(r#"{"watches": [{"type": "nodes", "args": ["/b"]}]}"#),
        ],
        dev_sources(),
    )
    .unwrap();
    assert_eq!(two.watches.len(), 2);

    let e = load(
        hcl(
            "w.hcl",
            "watches {\n  type = \"nope\"\n  args = [\"/h\"]\n}\n",
        )
        .unwrap(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "w.hcl:1: watches[0]: Unsupported watch type: nope"
    );
    let e = load(layer(
        r#"{"watches": [{"type": "key", "key": "k"}, {"type": "key", "key": "k", "args": ["/h"], "colour": 1}]}"#,
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "t.json: watches[0]: Must define a watch handler\n\
         t.json: watches[1]: Invalid parameters: [colour]"
    );
    let e = load(layer(
        r#"{"ports": {"http": -1}, "watches": [{"type": "nodes", "args": ["/h"]}]}"#,
    ))
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("watches: watch plans require an HTTP or HTTPS endpoint"),
        "{e}"
    );
    assert!(
        parse_layer(
            Origin::File("t.json".into()),
            r#"{"watches": {"type": "key"}}"#
        )
        .is_err()
    );
}

#[test]
fn hcl_problems_name_the_file_the_key_and_the_line() {
    let e = hcl("web.hcl", "datacenter = \"a\"\nports {\n  htpp = 1\n}\n").unwrap_err();
    assert_eq!(
        e.to_string().split(" unknown").next(),
        Some("web.hcl:3: ports.htpp:")
    );
    let e = hcl("web.hcl", "ports {\n  http = \n}\n").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("web.hcl:2: HCL syntax error at column"),
        "{e}"
    );
    let e = hcl(
        "web.hcl",
        "service { name = \"a\" }\nservice { name = \"b\" }\n",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("web.hcl:2: service: given a second time"),
        "{e}"
    );
    // Problems found when the layers are checked carry the line too.
    let layers = vec![
        Layer::new(Origin::Defaults, dev_layer()),
        hcl(
            "svc.hcl",
            "services {\n  name = \"w\"\n  port = 80\n}\nservices {\n  name = \"v\"\n  port = \"x\"\n}\n",
        )
        .unwrap(),
    ];
    let e = AgentConfig::from_layers(&layers, dev_sources()).unwrap_err();
    assert!(
        e.to_string().contains("svc.hcl:7: services[1].port:"),
        "{e}"
    );
}

#[test]
fn a_config_dir_mixes_json_and_hcl_in_lexical_order_and_warns_about_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "10-base.json",
        r#"{"datacenter": "one", "retry_join": ["a"]}"#,
    );
    write(
        "20-web.hcl",
        "datacenter = \"two\"\nretry_join = [\"b\"]\nservice { name = \"web\" }",
    );
    write(
        "30-db.json",
        r#"{"retry_join": ["c"], "service": {"name": "db"}}"#,
    );
    write("README.md", "not config");
    write("40-later.hcl.bak", "datacenter = \"never\"");
    std::fs::create_dir(dir.path().join("sub.hcl")).unwrap();
    let sources = Sources {
        dev: true,
        dirs: vec![dir.path().to_owned()],
        ..Sources::default()
    };
    let config = AgentConfig::load(sources.clone()).unwrap();
    assert_eq!(config.datacenter.as_str(), "two");
    let names: Vec<&str> = config
        .services
        .iter()
        .map(|(s, _)| s.name.as_str())
        .collect();
    assert_eq!(names, ["web", "db"]);
    assert_eq!(config.retry_join, ["a", "b", "c"]);
    let skipped: Vec<String> = ["40-later.hcl.bak", "README.md"]
        .iter()
        .map(|f| skipped_warning(&dir.path().join(f)))
        .collect();
    assert_eq!(config.warnings, skipped);
    assert!(
        skipped[1]
            .ends_with("README.md, extension must be .hcl or .json, or config format must be set"),
        "{}",
        skipped[1]
    );
    // A file named on its own is skipped in the same way.
    let file = Sources {
        dev: true,
        files: vec![dir.path().join("README.md")],
        ..Sources::default()
    };
    assert_eq!(AgentConfig::load(file).unwrap().warnings, skipped[1..]);
    // -config-format reads every file, whatever its extension.
    let forced = Sources {
        format: Some(Format::Hcl),
        dirs: Vec::new(),
        files: vec![dir.path().join("40-later.hcl.bak")],
        ..sources
    };
    let config = AgentConfig::load(forced).unwrap();
    assert!(config.warnings.is_empty());
    assert_eq!(config.datacenter.as_str(), "never");
}

#[test]
fn a_malformed_hcl_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.json"), r#"{"datacenter": "one"}"#).unwrap();
    std::fs::write(dir.path().join("b.hcl"), "datacenter = \"two\"\nports {\n").unwrap();
    let e = AgentConfig::load(Sources {
        dev: true,
        dirs: vec![dir.path().to_owned()],
        ..Sources::default()
    })
    .unwrap_err();
    let text = e.to_string();
    let name = dir.path().join("b.hcl").display().to_string();
    assert!(text.starts_with(&format!("{name}:")), "{text}");
    assert!(text.contains("HCL syntax error"), "{text}");
    // A JSON file is not read as HCL, nor the other way round.
    std::fs::write(dir.path().join("b.hcl"), r#"{"datacenter": "two"}"#).unwrap();
    assert!(
        AgentConfig::load(Sources {
            dev: true,
            dirs: vec![dir.path().to_owned()],
            ..Sources::default()
        })
        .is_err()
    );
}

#[test]
fn hcl_fragments_come_after_the_flags() {
    let sources = Sources {
        dev: true,
        flags: RawConfig {
            datacenter: Some("flags".into()),
            ..RawConfig::default()
        },
        hcl: vec![
            "datacenter = \"fragment\"".into(),
            "node_meta { a = \"b\" }".into(),
        ],
        ..Sources::default()
    };
    let config = AgentConfig::load(sources.clone()).unwrap();
    assert_eq!(config.datacenter.as_str(), "fragment");
    assert_eq!(config.node_meta["a"], "b");
    let bad = Sources {
        hcl: vec!["ports { dns = \"x\" }".into()],
        ..sources
    };
    let e = AgentConfig::load(bad).unwrap_err().to_string();
    assert!(e.starts_with("-hcl flag 1:1: ports.dns:"), "{e}");
}

#[test]
fn config_format_names_consuls_choices() {
    assert_eq!(Format::parse("hcl"), Ok(Format::Hcl));
    assert_eq!(Format::parse("json"), Ok(Format::Json));
    assert_eq!(
        Format::parse("yaml"),
        Err("-config-format must be either 'hcl' or 'json'".into())
    );
    assert_eq!(Format::of(Path::new("a/b.HCL"), None), None);
    assert_eq!(Format::of(Path::new("a/b.hcl"), None), Some(Format::Hcl));
    assert_eq!(
        Format::of(Path::new("a/b"), Some(Format::Json)),
        Some(Format::Json)
    );
}

proptest::proptest! {
    #[test]
    fn parsing_arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse_layer(Origin::Flags, &text);
        let _ = parse(Origin::Flags, &text, Format::Hcl);
    }

    #[test]
    fn parsing_hcl_shaped_text_never_panics(
        items in proptest::collection::vec(
            (
                proptest::sample::select(&["services", "service", "checks", "ports", "node_meta", "datacenter", "x"][..]),
                proptest::prop_oneof![
                    proptest::strategy::Just(" { name = \"w\" }".to_string()),
                    proptest::strategy::Just(" = { port = -1 }".to_string()),
                    proptest::strategy::Just(" = [{ ttl = \"1s\" }]".to_string()),
                    proptest::strategy::Just(" = \"${a}\"".to_string()),
                    proptest::strategy::Just(" = 1e400".to_string()),
                    proptest::strategy::Just(" \"label\" { a = b }".to_string()),
                    proptest::strategy::Just(" = null".to_string()),
                ],
            ),
            0..6,
        )
    ) {
        let text: String = items.iter().map(|(k, v)| format!("{k}{v}\n")).collect();
        if let Ok(layer) = parse(Origin::Flags, &text, Format::Hcl) {
            let _ = AgentConfig::from_layers(&[layer], dev_sources());
        }
    }

    #[test]
    fn parsing_json_shaped_text_never_panics(
        key in "[a-z_]{1,20}",
        value in proptest::prop_oneof![
            proptest::strategy::Just("1".to_string()),
            proptest::strategy::Just("\"x\"".to_string()),
            proptest::strategy::Just("{}".to_string()),
            proptest::strategy::Just("[]".to_string()),
            proptest::strategy::Just("null".to_string()),
            proptest::strategy::Just("{\"name\": 1}".to_string()),
        ]
    ) {
        let text = format!("{{\"{key}\": {value}}}");
        if let Ok(layer) = parse_layer(Origin::Flags, &text) {
            let _ = AgentConfig::from_layers(&[layer], dev_sources());
        }
    }
}
