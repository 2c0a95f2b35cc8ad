//! The anti-entropy core driven against the real catalog state machine: each pass is
//! planned by [`Local`], its writes are applied to a [`State`] as the servers would apply
//! them, and full passes read that state back. What a pass costs is observed through
//! [`Plan::examined`] and its writes, never through time.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use catalog::State;

const NODE: &str = "agent-1";

fn node() -> Node {
    Node {
        id: "8d1c1b5e-0000-4000-8000-000000000001".into(),
        name: NODE.into(),
        address: "10.0.0.1".into(),
        datacenter: "dc1".into(),
        ..Node::default()
    }
}

/// Local state whose check runners stop as soon as they start: the tests report check
/// results themselves.
pub(super) fn local() -> Local {
    let stopped = CancellationToken::new();
    stopped.cancel();
    Local::new(node(), Runner::new(TaskTracker::new(), stopped, false))
}

pub(super) fn service(id: &str) -> Service {
    Service {
        id: id.into(),
        name: format!("svc-{id}"),
        port: 8080,
        ..Service::default()
    }
}

fn ttl_check(id: &str) -> CheckDefinition {
    CheckDefinition {
        id: id.into(),
        name: format!("check {id}"),
        notes: String::new(),
        service_id: String::new(),
        kind: CheckKind::Ttl {
            ttl: Duration::from_secs(3600),
        },
        status: Health::Critical,
        output_max_size: CHECK_OUTPUT_MAX,
    }
}

fn http_check(id: &str) -> CheckDefinition {
    CheckDefinition {
        kind: CheckKind::Http {
            url: "http://127.0.0.1:1/".into(),
            method: "GET".into(),
            header: BTreeMap::new(),
            body: String::new(),
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(1),
        },
        ..ttl_check(id)
    }
}

/// Registers `svc-N` with a TTL check `ttl-N`, through the API path.
fn add(local: &Local, n: usize) {
    local
        .register_service(
            service(&format!("s{n}")),
            vec![ttl_check(&format!("ttl-{n}"))],
            Source::Api,
            false,
        )
        .unwrap();
}

/// The servers' catalog: the real state machine, one Raft index per write.
struct Catalog {
    state: State,
    index: u64,
}

/// What one pass did.
#[derive(Debug)]
struct Pass {
    full: bool,
    examined: usize,
    commands: Vec<Command>,
}

impl Catalog {
    fn new() -> Catalog {
        Catalog {
            state: State::new(),
            index: 0,
        }
    }

    /// This node's entries, as a full pass reads them.
    fn read(&self) -> Remote {
        let node = NODE.to_owned();
        let (services, _) = self
            .state
            .query(&Query::NodeServices { node: node.clone() });
        let (checks, _) = self.state.query(&Query::NodeChecks { node });
        let Answer::NodeServices(services) = services else {
            panic!("{services:?}")
        };
        let Answer::Checks(checks) = checks else {
            panic!("{checks:?}")
        };
        let checks = checks.into_iter().map(Arc::unwrap_or_clone).collect();
        match services {
            Some(ns) => Remote {
                node: Some(Arc::unwrap_or_clone(ns.node)),
                services: ns.services.into_iter().map(Arc::unwrap_or_clone).collect(),
                checks,
            },
            None => Remote {
                checks,
                ..Remote::default()
            },
        }
    }

    /// Something other than the agent writes to the catalog (`/v1/catalog/...`).
    fn apply_foreign(&mut self, command: Command) {
        self.index += 1;
        self.state.apply(self.index, &command).unwrap();
    }

    /// Applies `plan` as the servers would, settling each write in `local`.
    fn apply(&mut self, local: &Local, plan: Plan) -> Pass {
        let mut commands = Vec::new();
        for write in plan.writes {
            self.index += 1;
            let refused = self.state.apply(self.index, &write.command).is_err();
            local.settle(&write.settles, refused);
            commands.push(write.command);
        }
        Pass {
            full: plan.full,
            examined: plan.examined,
            commands,
        }
    }

    /// One pass, as `run_sync` makes it: the pending changes, or a full one when due.
    fn sync(&mut self, local: &Local) -> Pass {
        let plan = match local.plan_changes() {
            Some(plan) => plan,
            None => local.plan_full(self.read()),
        };
        self.apply(local, plan)
    }

    /// A full pass, as the periodic timer asks for.
    fn full_sync(&mut self, local: &Local) -> Pass {
        local.request_full();
        self.sync(local)
    }

    fn check(&self, id: &str) -> Option<Check> {
        self.read().checks.into_iter().find(|c| c.check_id == id)
    }

    fn service_ids(&self) -> Vec<String> {
        self.read().services.into_iter().map(|s| s.id).collect()
    }
}

/// The check a registration command carries, if that is all it carries.
fn lone_check(command: &Command) -> Option<&Check> {
    match command {
        Command::Register(Registration {
            service: None,
            checks,
            skip_node_update: true,
            ..
        }) if checks.len() == 1 => checks.first(),
        _ => None,
    }
}

#[tokio::test]
async fn a_ttl_update_among_ten_thousand_services_writes_that_check_alone() {
    const SERVICES: usize = 10_000;
    let local = local();
    for n in 0..SERVICES {
        add(&local, n);
    }
    let mut catalog = Catalog::new();

    let first = catalog.sync(&local);
    assert!(first.full, "the first pass compares everything");
    assert_eq!(
        first.commands.len(),
        1 + 2 * SERVICES,
        "node, services, checks"
    );
    assert_eq!(catalog.service_ids().len(), SERVICES);
    let idle = catalog.sync(&local);
    assert_eq!(
        (idle.full, idle.examined, idle.commands.len()),
        (false, 0, 0)
    );

    local
        .update_ttl("ttl-5000", Health::Passing, "all good".into())
        .unwrap();
    let pass = catalog.sync(&local);
    assert!(!pass.full);
    assert_eq!(pass.examined, 1, "only the changed check is looked at");
    assert_eq!(pass.commands.len(), 1, "{:?}", pass.commands);
    let sent = lone_check(&pass.commands[0]).expect("a registration of one check");
    assert_eq!(
        (sent.check_id.as_str(), sent.status, sent.output.as_str()),
        ("ttl-5000", Health::Passing, "all good")
    );
    let stored = catalog.check("ttl-5000").unwrap();
    assert_eq!(
        (stored.status, stored.output.as_str()),
        (Health::Passing, "all good")
    );
    assert_eq!(stored.service_name, "svc-s5000");

    // Settled: nothing left to send, and the same update again changes nothing.
    assert_eq!(catalog.sync(&local).examined, 0);
    local
        .update_ttl("ttl-5000", Health::Passing, "all good".into())
        .unwrap();
    assert_eq!(catalog.sync(&local).examined, 0);

    // A full pass agrees that the catalog is in step.
    let full = catalog.full_sync(&local);
    assert!(full.full);
    assert_eq!(
        full.examined,
        1 + 4 * SERVICES,
        "node, then each entry on both sides"
    );
    assert!(full.commands.is_empty(), "{:?}", full.commands);
}

#[tokio::test]
async fn the_full_sync_repairs_what_was_changed_in_the_catalog_behind_the_agent() {
    let local = local();
    for n in 0..3 {
        add(&local, n);
    }
    let mut catalog = Catalog::new();
    catalog.sync(&local);

    // `/v1/catalog/deregister` of one service, a foreign service on the agent's node, a
    // check's status overwritten and the node's meta changed.
    catalog.apply_foreign(deregister(&node(), Some("s1".into()), None));
    let intruder = Service {
        id: "intruder".into(),
        name: "intruder".into(),
        ..Service::default()
    };
    catalog.apply_foreign(register_service(&node(), intruder));
    let mut passing = local
        .checks()
        .into_iter()
        .find(|c| c.check_id == "ttl-2")
        .unwrap();
    passing.status = Health::Passing;
    catalog.apply_foreign(register_check(&node(), passing));
    let mut moved = node();
    moved.meta.insert("rack".into(), "b".into());
    catalog.apply_foreign(Command::Register(Registration {
        node: moved,
        skip_node_update: false,
        service: None,
        checks: Vec::new(),
    }));

    // Nothing changed locally: a changes pass neither sees nor touches the drift.
    let pass = catalog.sync(&local);
    assert_eq!((pass.examined, pass.commands.len()), (0, 0));

    let full = catalog.full_sync(&local);
    assert!(full.full);
    assert_eq!(full.commands.len(), 5, "{:#?}", full.commands);
    assert_eq!(catalog.service_ids(), ["s0", "s1", "s2"]);
    assert_eq!(catalog.check("ttl-1").unwrap().status, Health::Critical);
    assert_eq!(catalog.check("ttl-2").unwrap().status, Health::Critical);
    assert!(catalog.read().node.unwrap().meta.is_empty());
    assert!(catalog.full_sync(&local).commands.is_empty());
}

#[tokio::test]
async fn a_failed_write_is_sent_again_and_a_change_made_during_a_write_is_not_lost() {
    let local = local();
    add(&local, 0);
    let mut catalog = Catalog::new();
    catalog.sync(&local);

    local
        .update_ttl("ttl-0", Health::Passing, "up".into())
        .unwrap();
    // The write failed (no server answered): nothing is settled, so it is planned again.
    let lost = local.plan_changes().unwrap();
    assert_eq!(lost.writes.len(), 1);
    let retried = local.plan_changes().unwrap();
    assert_eq!(retried.writes.len(), 1);
    assert_eq!(retried.writes[0].command, lost.writes[0].command);

    // The check changes again while that write is on the way.
    local
        .update_ttl("ttl-0", Health::Warning, "slow".into())
        .unwrap();
    let pass = catalog.apply(&local, retried);
    assert_eq!(
        lone_check(&pass.commands[0]).unwrap().status,
        Health::Passing
    );
    let next = catalog.sync(&local);
    assert_eq!(next.commands.len(), 1, "the newer status is still pending");
    assert_eq!(catalog.check("ttl-0").unwrap().status, Health::Warning);
    assert!(catalog.sync(&local).commands.is_empty());
}

#[tokio::test]
async fn output_only_changes_of_a_check_run_wait_for_the_full_sync() {
    let local = local();
    local
        .register_service(service("web"), vec![http_check("http")], Source::Api, false)
        .unwrap();
    let mut catalog = Catalog::new();
    catalog.sync(&local);

    local.record("http", Health::Passing, "200 at 10:00".into());
    let pass = catalog.sync(&local);
    assert_eq!(pass.commands.len(), 1, "a new status is sent at once");
    local.record("http", Health::Passing, "200 at 10:01".into());
    assert!(
        catalog.sync(&local).commands.is_empty(),
        "new output alone waits"
    );
    assert_eq!(catalog.check("http").unwrap().output, "200 at 10:00");

    let full = catalog.full_sync(&local);
    assert_eq!(full.commands.len(), 1);
    assert_eq!(catalog.check("http").unwrap().output, "200 at 10:01");
}

#[tokio::test]
async fn a_removed_service_takes_its_checks_with_it() {
    let local = local();
    local
        .register_service(
            service("web"),
            vec![ttl_check("a"), ttl_check("b")],
            Source::Api,
            false,
        )
        .unwrap();
    local
        .register_check(ttl_check("node-check"), Source::Api)
        .unwrap();
    let mut catalog = Catalog::new();
    catalog.sync(&local);

    local.deregister_check("node-check");
    local.deregister_service("web");
    let pass = catalog.sync(&local);
    assert_eq!(
        pass.commands,
        [
            deregister(&node(), Some("web".into()), None),
            deregister(&node(), None, Some("node-check".into())),
        ],
        "the service's checks go with it"
    );
    assert!(catalog.read().checks.is_empty());
    assert!(catalog.service_ids().is_empty());

    // Removed and registered again without one of its checks before a pass: the
    // dropped check is deregistered on its own.
    local
        .register_service(
            service("web"),
            vec![ttl_check("a"), ttl_check("b")],
            Source::Api,
            false,
        )
        .unwrap();
    catalog.sync(&local);
    local.deregister_service("web");
    local
        .register_service(service("web"), vec![ttl_check("a")], Source::Api, false)
        .unwrap();
    catalog.sync(&local);
    let ids: Vec<String> = catalog
        .read()
        .checks
        .into_iter()
        .map(|c| c.check_id)
        .collect();
    assert_eq!(ids, ["a"]);
    assert!(catalog.full_sync(&local).commands.is_empty());
}

#[tokio::test]
async fn a_change_the_catalog_refuses_asks_for_a_full_sync() {
    let local = local();
    add(&local, 0);
    let mut catalog = Catalog::new();
    catalog.sync(&local);

    // The service is deregistered through the catalog; the next TTL update for its check
    // is refused (no such service), and the full pass that follows repairs both.
    catalog.apply_foreign(deregister(&node(), Some("s0".into()), None));
    local
        .update_ttl("ttl-0", Health::Passing, String::new())
        .unwrap();
    let refused = catalog.sync(&local);
    assert!(!refused.full);
    assert_eq!(refused.commands.len(), 1);
    assert!(local.full_due());
    let full = catalog.sync(&local);
    assert!(full.full);
    assert_eq!(catalog.service_ids(), ["s0"]);
    assert_eq!(catalog.check("ttl-0").unwrap().status, Health::Passing);
    assert!(!local.full_due());
}

#[tokio::test]
async fn too_many_pending_removals_become_a_full_sync() {
    let local = local();
    for n in 0..=PENDING_REMOVALS_MAX {
        local
            .register_service(service(&format!("s{n}")), vec![], Source::Api, false)
            .unwrap();
    }
    let mut catalog = Catalog::new();
    catalog.sync(&local);
    for n in 0..=PENDING_REMOVALS_MAX {
        local.deregister_service(&format!("s{n}"));
    }
    assert!(
        local.full_due(),
        "the removals were forgotten for a full pass"
    );
    let full = catalog.sync(&local);
    assert!(full.full);
    assert_eq!(full.commands.len(), PENDING_REMOVALS_MAX + 1);
    assert!(catalog.service_ids().is_empty());
}

#[tokio::test]
async fn a_service_with_enable_tag_override_keeps_the_catalog_tags() {
    let local = local();
    let over = Service {
        tags: vec!["a".into()],
        enable_tag_override: true,
        ..service("over")
    };
    local
        .register_service(over.clone(), vec![], Source::Api, false)
        .unwrap();
    let mut catalog = Catalog::new();
    catalog.sync(&local);
    let mut retagged = over.clone();
    retagged.tags = vec!["b".into()];
    catalog.apply_foreign(register_service(&node(), retagged));

    // Changing the service locally needs the catalog's tags, so a full pass writes it.
    let changed = Service { port: 9090, ..over };
    local
        .register_service(changed, vec![], Source::Api, false)
        .unwrap();
    let pass = catalog.sync(&local);
    assert!(pass.full);
    let stored = &catalog.read().services[0];
    assert_eq!(
        (stored.port, stored.tags.clone()),
        (9090, vec!["b".to_owned()])
    );
}

#[tokio::test]
async fn a_reload_sends_only_what_it_changed() {
    let local = local();
    let config = |port: u16| {
        (0..100)
            .map(|n| {
                let mut s = service(&format!("c{n}"));
                if n == 7 {
                    s.port = port;
                }
                (s, vec![ttl_check(&format!("ttl-c{n}"))])
            })
            .collect::<Vec<_>>()
    };
    local.replace_config(config(1), vec![]).unwrap();
    let mut catalog = Catalog::new();
    catalog.sync(&local);

    local.replace_config(config(1), vec![]).unwrap();
    let same = catalog.sync(&local);
    assert_eq!((same.examined, same.commands.len()), (0, 0));
    local.replace_config(config(2), vec![]).unwrap();
    let one = catalog.sync(&local);
    assert_eq!(one.examined, 1);
    assert_eq!(
        one.commands,
        [register_service(
            &node(),
            Service {
                port: 2,
                ..service("c7")
            }
        )]
    );
}

#[tokio::test]
async fn ids_that_differ_only_in_case_are_refused() {
    let local = local();
    local
        .register_service(service("Web"), vec![ttl_check("Check")], Source::Api, false)
        .unwrap();
    assert_eq!(
        local.register_service(service("web"), vec![], Source::Api, false),
        Err(LocalError::CaseClash("web".into(), "Web".into()))
    );
    assert_eq!(
        local.register_check(ttl_check("CHECK"), Source::Api),
        Err(LocalError::CaseClash("CHECK".into(), "Check".into()))
    );
    local.deregister_service("Web");
    local
        .register_service(service("web"), vec![ttl_check("check")], Source::Api, false)
        .unwrap();
}

#[test]
fn full_syncs_spread_out_as_the_pool_grows() {
    let scales: Vec<u32> = [1, 128, 129, 256, 257, 8192]
        .into_iter()
        .map(pool_scale)
        .collect();
    assert_eq!(scales, [1, 1, 2, 2, 3, 7]);
    let minute = Duration::from_secs(60);
    assert_eq!(full_sync_delay(minute, 3, 0.0), minute);
    assert_eq!(full_sync_delay(minute, 3, 0.5), Duration::from_secs(90));
    assert_eq!(full_sync_delay(minute, 300, 0.5), Duration::from_secs(150));
}
