//! What the leader does besides replicating: turn pool membership into catalog state.
//!
//! For each member: alive → its node is registered with a passing `serfHealth` check
//! (and, for a server, the `consul` service on its RPC port); failed → `serfHealth`
//! critical, so its services leave DNS and `?passing`; left → its node is deregistered.
//! A node that has a `serfHealth` check but is no longer a member at all (reaped after
//! `reconnect_timeout`, or pruned with `force-leave -prune`) is deregistered too; nodes
//! registered through `/v1/catalog/register`, which have no `serfHealth`, are left
//! alone. Consul's leader does the same ("reconcile", "reconcileReaped").
//!
//! With ACLs on, the leader also makes sure the built-in management policy, the
//! anonymous token and the configured initial management token exist.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::acl::AclConfig;
use crate::local::CONSUL_SERVICE;
use crate::raft::Consensus;
use catalog::acl::{
    ANONYMOUS_ACCESSOR, ANONYMOUS_SECRET, AclWrite, Link, MANAGEMENT_POLICY_ID,
    MANAGEMENT_POLICY_NAME, Policy, Token,
};
use catalog::{
    Answer, AutopilotConfig, Catalog, Check, Command, Deregistration, Health, Node, Query,
    Registration, SERF_HEALTH_CHECK, Service,
};
use gossip::{Member, MemberStatus};

/// How often the leader re-applies the whole member list even without changes.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(60);
/// Retry delay after a failed reconcile.
const RECONCILE_RETRY: Duration = Duration::from_secs(1);
/// Budget of one reconcile write.
const RECONCILE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until `shutdown`, reconciling while this server leads.
pub(crate) async fn run(
    consensus: Consensus,
    catalog: Catalog,
    datacenter: String,
    acl: Option<Arc<AclConfig>>,
    initial: AutopilotConfig,
    mut members: watch::Receiver<Arc<Vec<Member>>>,
    shutdown: CancellationToken,
) {
    let mut dead = crate::autopilot::DeadServers::default();
    loop {
        if !consensus.is_leader() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = consensus.leadership_changed(false) => continue,
            }
        }
        let list = members.borrow_and_update().clone();
        let settings_ok = init_autopilot(&consensus, &catalog, &initial).await;
        let settings = autopilot_settings(&catalog, &initial);
        let servers_ok =
            crate::autopilot::reconcile(&consensus, &datacenter, &list, &mut dead, &settings).await;
        let members_ok = reconcile(&consensus, &catalog, &datacenter, &list).await;
        let reaped_ok = reap(&consensus, &catalog, &list).await;
        let acl_ok = match &acl {
            Some(acl) => init_acl(&consensus, &catalog, acl).await,
            None => true,
        };
        let ok = members_ok && reaped_ok && servers_ok && acl_ok && settings_ok;
        let wait = if ok {
            RECONCILE_INTERVAL
        } else {
            RECONCILE_RETRY
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = consensus.leadership_changed(true) => {}
            _ = members.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn reconcile(
    consensus: &Consensus,
    catalog: &Catalog,
    datacenter: &str,
    members: &[Member],
) -> bool {
    let mut ok = true;
    for member in members {
        if in_step(catalog, member) {
            continue;
        }
        let command = command_for(datacenter, member);
        let deadline = Instant::now() + RECONCILE_WRITE_TIMEOUT;
        if let Err(e) = consensus.write(command, deadline).await {
            tracing::warn!(node = %member.name, error = %e, "failed to reconcile member");
            ok = false;
        }
    }
    ok
}

/// Whether the catalog already shows `member` as its state says: only what differs is
/// written, so a pool of hundreds does not rewrite every node on every change.
fn in_step(catalog: &Catalog, member: &Member) -> bool {
    let name = member.name.clone();
    let (Answer::NodeServices(node), _) =
        catalog.query(&Query::NodeServices { node: name.clone() })
    else {
        return false;
    };
    let Some(node) = node else {
        // A left member's node is gone: in step. Anyone else's must be registered.
        return member.status == MemberStatus::Left;
    };
    if member.status == MemberStatus::Left || node.node.address != member.addr.to_string() {
        return false;
    }
    let (Answer::Checks(checks), _) = catalog.query(&Query::NodeChecks { node: name }) else {
        return false;
    };
    let want = match member.status {
        MemberStatus::Alive => Health::Passing,
        _ => Health::Critical,
    };
    let serf_ok = checks
        .iter()
        .any(|c| c.check_id == SERF_HEALTH_CHECK && c.status == want);
    let wants_service = member.is_server() && member.status == MemberStatus::Alive;
    let has_service = node.services.iter().any(|s| s.id == CONSUL_SERVICE);
    serf_ok && (wants_service == has_service || !wants_service)
}

/// The ACL writes a leader makes when ACLs are on and they are missing: the built-in
/// management policy, the anonymous token, the initial management token.
fn acl_writes(catalog: &Catalog, acl: &AclConfig) -> Vec<AclWrite> {
    let now = crate::acl::now_ns();
    let token = |accessor: String, secret: &str, description: &str, policies: Vec<Link>| Token {
        accessor_id: accessor,
        secret_id: secret.to_owned(),
        description: description.to_owned(),
        policies,
        roles: Vec::new(),
        service_identities: Vec::new(),
        node_identities: Vec::new(),
        local: false,
        create_time: now,
        expiration_time: None,
        create_index: 0,
        modify_index: 0,
    };
    catalog.read(|s| {
        let t = s.acl();
        let mut writes = Vec::new();
        if t.policy(MANAGEMENT_POLICY_ID).is_none() {
            writes.push(AclWrite::PolicySet(Policy {
                id: MANAGEMENT_POLICY_ID.into(),
                name: MANAGEMENT_POLICY_NAME.into(),
                description: "Builtin Policy that grants unlimited access".into(),
                rules: String::new(),
                datacenters: Vec::new(),
                create_index: 0,
                modify_index: 0,
            }));
        }
        if t.token(ANONYMOUS_ACCESSOR).is_none() {
            writes.push(AclWrite::TokenSet(token(
                ANONYMOUS_ACCESSOR.into(),
                ANONYMOUS_SECRET,
                "Anonymous Token",
                Vec::new(),
            )));
        }
        // Only the primary makes it; a secondary gets it by replication.
        if let Some(secret) = &acl.initial_management
            && acl.primary_datacenter.is_none()
            && !t.has_secret(secret)
        {
            let management = Link {
                id: MANAGEMENT_POLICY_ID.into(),
                name: MANAGEMENT_POLICY_NAME.into(),
            };
            writes.push(AclWrite::TokenSet(token(
                catalog::uuid::new_uuid(),
                secret,
                "Initial Management Token",
                vec![management],
            )));
        }
        writes
    })
}

/// Autopilot's settings as the catalog holds them, else `initial` (the agent's
/// `autopilot` block).
pub(crate) fn autopilot_settings(catalog: &Catalog, initial: &AutopilotConfig) -> AutopilotConfig {
    match catalog.query(&Query::Autopilot).0 {
        Answer::Autopilot(c) if c.modify_index > 0 => c,
        _ => initial.clone(),
    }
}

/// Writes the agent's `autopilot` block as the datacenter's settings when none were
/// written yet (Consul's leader does the same on its first term).
async fn init_autopilot(
    consensus: &Consensus,
    catalog: &Catalog,
    initial: &AutopilotConfig,
) -> bool {
    if matches!(catalog.query(&Query::Autopilot).0, Answer::Autopilot(c) if c.modify_index > 0) {
        return true;
    }
    let command = Command::Autopilot {
        config: initial.clone(),
        cas: Some(0),
    };
    let deadline = Instant::now() + RECONCILE_WRITE_TIMEOUT;
    match consensus.write(command, deadline).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "failed to write autopilot's settings");
            false
        }
    }
}

async fn init_acl(consensus: &Consensus, catalog: &Catalog, acl: &AclConfig) -> bool {
    let mut ok = true;
    for write in acl_writes(catalog, acl) {
        let deadline = Instant::now() + RECONCILE_WRITE_TIMEOUT;
        if let Err(e) = consensus.write(Command::Acl(write), deadline).await {
            tracing::warn!(error = %e, "failed to set up the built-in ACL policy and tokens");
            ok = false;
        }
    }
    ok
}

/// Deregisters nodes that gossip no longer knows at all.
async fn reap(consensus: &Consensus, catalog: &Catalog, members: &[Member]) -> bool {
    let known: BTreeSet<String> = members
        .iter()
        .map(|m| m.name.to_ascii_lowercase())
        .collect();
    // Only the nodes with a gossip health check: copying every check of a big catalog
    // under the read lock would hold up the applies for nothing.
    let gone: BTreeSet<String> = catalog
        .read(|s| s.nodes_with_check(SERF_HEALTH_CHECK))
        .into_iter()
        .filter(|n| !known.contains(&n.to_ascii_lowercase()))
        .collect();
    let mut ok = true;
    for node in gone {
        tracing::info!(node = %node, "deregistering a node that left the pool");
        let command = Command::Deregister(Deregistration {
            node: node.clone(),
            service_id: None,
            check_id: None,
        });
        let deadline = Instant::now() + RECONCILE_WRITE_TIMEOUT;
        if let Err(e) = consensus.write(command, deadline).await {
            tracing::warn!(node = %node, error = %e, "failed to deregister a reaped node");
            ok = false;
        }
    }
    ok
}

/// The catalog change that reflects `member`'s state.
fn command_for(datacenter: &str, member: &Member) -> Command {
    let (status, output) = match member.status {
        MemberStatus::Alive => (Health::Passing, "Agent alive and reachable"),
        MemberStatus::Leaving | MemberStatus::Failed => {
            (Health::Critical, "Agent not live or unreachable")
        }
        MemberStatus::Left => {
            return Command::Deregister(Deregistration {
                node: member.name.clone(),
                service_id: None,
                check_id: None,
            });
        }
    };
    let serf_health = Check {
        check_id: SERF_HEALTH_CHECK.into(),
        name: "Serf Health Status".into(),
        status,
        output: output.into(),
        ..Check::default()
    };
    let rpc_port = member.tags.get("port").and_then(|p| p.parse::<u16>().ok());
    let service = match (member.is_server(), member.status, rpc_port) {
        (true, MemberStatus::Alive, Some(port)) => Some(Service {
            id: CONSUL_SERVICE.into(),
            name: CONSUL_SERVICE.into(),
            port,
            meta: BTreeMap::from([
                ("raft_version".to_string(), "3".to_string()),
                ("serf_protocol_current".into(), "2".into()),
                ("serf_protocol_min".into(), "1".into()),
                ("serf_protocol_max".into(), "5".into()),
                (
                    "version".into(),
                    member
                        .tags
                        .get("build")
                        .and_then(|b| b.split(':').next())
                        .unwrap_or_default()
                        .to_owned(),
                ),
            ]),
            ..Service::default()
        }),
        _ => None,
    };
    let address = member.addr.to_string();
    Command::Register(Registration {
        node: Node {
            id: member.tags.get("id").cloned().unwrap_or_default(),
            name: member.name.clone(),
            address,
            datacenter: datacenter.to_owned(),
            ..Node::default()
        },
        // The agent's own anti-entropy owns the node's details; the leader only makes
        // sure the node exists.
        skip_node_update: true,
        service,
        checks: vec![serf_health],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(status: MemberStatus, role: &str) -> Member {
        Member {
            name: "n1".into(),
            addr: "10.0.0.1".parse().unwrap(),
            port: 8301,
            tags: Arc::new(BTreeMap::from([
                ("role".to_string(), role.to_string()),
                ("port".into(), "8300".into()),
            ])),
            status,
        }
    }

    #[test]
    fn an_alive_server_gets_serf_health_and_the_consul_service() {
        let Command::Register(r) = command_for("dc1", &member(MemberStatus::Alive, "consul"))
        else {
            panic!()
        };
        assert_eq!(r.checks[0].check_id, "serfHealth");
        assert_eq!(r.checks[0].status, Health::Passing);
        assert_eq!(r.service.unwrap().port, 8300);
    }

    #[test]
    fn a_failed_client_goes_critical_without_a_service() {
        let Command::Register(r) = command_for("dc1", &member(MemberStatus::Failed, "node")) else {
            panic!()
        };
        assert_eq!(r.checks[0].status, Health::Critical);
        assert!(r.service.is_none());
    }

    #[test]
    fn a_left_member_is_deregistered() {
        assert!(matches!(
            command_for("dc1", &member(MemberStatus::Left, "node")),
            Command::Deregister(_)
        ));
    }
}
