//! How a datacenter's servers become one Raft cluster and stay one: bootstrap with
//! `bootstrap_expect`, and the leader's upkeep of the server set (Consul's autopilot).
//!
//! **Bootstrap.** A server started with `bootstrap_expect = N` and no Raft state waits
//! until gossip shows N live servers of its datacenter with the same expectation, and
//! that set has stayed the same for [`BOOTSTRAP_SETTLE`]. It then asks each of them
//! whether it already holds Raft state; if any does, a cluster exists and this server
//! will be added to it by its leader. Otherwise only the server with the lowest Raft ID
//! of the set initializes Raft, with the whole set as voters. One initializer and the
//! settle time are what keep two clusters from ever forming: a server arriving while the
//! set is chosen changes the set everyone sees, and by the time it has settled again the
//! initializer answers that it holds state.
//!
//! **Upkeep (leader only), under the replicated [`AutopilotConfig`].** For every server
//! that gossip shows: alive and not a voter → added as a learner, which returns once it
//! has caught up, then promoted once it has stayed so for `ServerStabilizationTime`;
//! left → removed; failed for longer than [`DEAD_SERVER_GRACE`] (or forgotten by gossip
//! altogether) → removed when `CleanupDeadServers` is on, but only when the servers still
//! alive keep a quorum of the smaller configuration (and at least `MinQuorum` voters
//! remain), so a network problem never shrinks the cluster below what it needs. A server
//! whose address changed (it came back on another port) gets its record updated.
//!
//! **Health** (`/v1/operator/autopilot/health`, on the leader): a server is healthy when
//! gossip holds it alive, it acknowledged the leader within `LastContactThreshold`, and
//! its log trails the leader's by at most `MaxTrailingLogs` entries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use catalog::{AutopilotConfig, RaftServer, ServerNode};

use crate::raft::{Consensus, NodeId};
use crate::server::{Request, Response, Server};
use gossip::{Member, MemberStatus};

/// How long the set of servers must stay the same before one of them bootstraps.
pub(crate) const BOOTSTRAP_SETTLE: Duration = Duration::from_secs(2);
/// How often an unbootstrapped server looks at the pool.
const BOOTSTRAP_POLL: Duration = Duration::from_millis(500);
/// Budget of each question to another server during bootstrap.
const BOOTSTRAP_ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a failed server stays in the configuration before it is removed.
pub const DEAD_SERVER_GRACE: Duration = Duration::from_secs(30);
/// Budget of one membership change (adding waits for the new server to catch up).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A server of this datacenter as gossip shows it.
struct SeenServer {
    id: NodeId,
    node: ServerNode,
    addr: SocketAddr,
    status: MemberStatus,
    expect: Option<u32>,
    /// Started with `-bootstrap` (or `bootstrap_expect = 1`): it elects itself.
    bootstrap: bool,
}

fn servers_in(members: &[Member], dc: &str) -> Vec<SeenServer> {
    members
        .iter()
        .filter(|m| m.is_server() && m.in_datacenter(dc))
        .filter_map(|m| {
            let node_id = m.tags.get("id")?.clone();
            let addr = m.rpc_addr()?;
            let id = crate::raft::member_raft_id(m)?;
            Some(SeenServer {
                id,
                node: ServerNode {
                    name: m.name.clone(),
                    rpc_addr: addr.to_string(),
                    node_id,
                },
                addr,
                status: m.status,
                expect: m.tags.get("expect").and_then(|e| e.parse().ok()),
                bootstrap: m.tags.get("bootstrap").map(String::as_str) == Some("1"),
            })
        })
        .collect()
}

/// Runs the bootstrap of a server started with `bootstrap_expect = expect` (> 1),
/// until Raft holds state or `shutdown`.
pub(crate) async fn bootstrap(
    server: Server,
    dc: String,
    expect: u32,
    shutdown: CancellationToken,
) {
    let consensus = server.consensus();
    let me = consensus.id();
    let mut last: BTreeSet<NodeId> = BTreeSet::new();
    let mut stable_since = Instant::now();
    let mut waiting_logged = false;
    let mut conflict_logged = false;
    loop {
        if consensus.is_initialized().await {
            return;
        }
        let members = server.members();
        let seen: Vec<SeenServer> = servers_in(&members, &dc)
            .into_iter()
            .filter(|s| s.status == MemberStatus::Alive)
            .collect();
        // A server that expects another count, or none, or that bootstraps itself means
        // this is not a fresh set of servers agreeing on one cluster: never bootstrap
        // then (Consul's rule); such a cluster adds this server when it has a leader.
        let conflicting: Vec<&str> = seen
            .iter()
            .filter(|s| s.id != me && (s.bootstrap || s.expect != Some(expect)))
            .map(|s| s.node.name.as_str())
            .collect();
        if !conflicting.is_empty() {
            if !conflict_logged {
                tracing::error!(servers = %conflicting.join(", "), expect, "not bootstrapping: these servers have a different bootstrap_expect or bootstrap themselves; all new servers should set the same bootstrap_expect");
                conflict_logged = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(BOOTSTRAP_POLL) => {}
            }
            continue;
        }
        let agreeing: Vec<&SeenServer> = seen.iter().collect();
        let ids: BTreeSet<NodeId> = agreeing.iter().map(|s| s.id).collect();
        if ids != last {
            last = ids.clone();
            stable_since = Instant::now();
        }
        let settled = stable_since.elapsed() >= BOOTSTRAP_SETTLE;
        if agreeing.len() < expect as usize {
            if !waiting_logged {
                tracing::info!(
                    seen = agreeing.len(),
                    expect,
                    "waiting for servers to bootstrap the cluster"
                );
                waiting_logged = true;
            }
        } else if settled && ids.first() == Some(&me) {
            if someone_holds_state(&server, &agreeing, me).await {
                tracing::info!("a server already holds raft state; waiting to be added");
            } else {
                let voters: BTreeMap<NodeId, ServerNode> =
                    agreeing.iter().map(|s| (s.id, s.node.clone())).collect();
                let names: Vec<&str> = agreeing.iter().map(|s| s.node.name.as_str()).collect();
                match consensus.initialize(voters).await {
                    Ok(()) => {
                        tracing::info!(servers = %names.join(", "), "bootstrapped the raft cluster");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "raft bootstrap failed; will retry"),
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(BOOTSTRAP_POLL) => {}
        }
    }
}

/// Whether any of `servers` (other than `me`) reports Raft state. A server that does
/// not answer counts as holding state: better to wait than to risk a second cluster.
async fn someone_holds_state(server: &Server, servers: &[&SeenServer], me: NodeId) -> bool {
    for s in servers.iter().filter(|s| s.id != me) {
        let deadline = Instant::now() + BOOTSTRAP_ASK_TIMEOUT;
        match server.call(s.addr, &Request::Status, deadline).await {
            Ok(Response::Status(status)) if status.servers.is_empty() && status.term == 0 => {}
            Ok(Response::Status(_)) => return true,
            Ok(_) | Err(_) => {
                tracing::debug!(node = %s.node.name, "server did not say whether it holds raft state");
                return true;
            }
        }
    }
    false
}

/// What the leader remembers between passes: when each failed server was first seen
/// failed (or missing), and since when each learner has been caught up, by Raft ID.
#[derive(Default)]
pub(crate) struct DeadServers {
    since: HashMap<NodeId, Instant>,
    caught_up: HashMap<NodeId, Instant>,
}

/// The leader's pass over the server set; returns whether everything was in step.
pub(crate) async fn reconcile(
    consensus: &Consensus,
    dc: &str,
    members: &[Member],
    dead: &mut DeadServers,
    settings: &AutopilotConfig,
) -> bool {
    let config = consensus.configuration();
    let seen = servers_in(members, dc);
    let mut ok = true;
    let by_id = |id: NodeId| config.iter().find(|s| s.raft_id == id);
    for s in &seen {
        match s.status {
            MemberStatus::Alive => {
                dead.since.remove(&s.id);
                match by_id(s.id) {
                    Some(RaftServer {
                        voter: true, node, ..
                    }) => {
                        if *node != s.node {
                            ok &= change(
                                "update the address of",
                                &s.node.name,
                                consensus.update_address(s.id, s.node.clone(), deadline()),
                            )
                            .await;
                        }
                    }
                    _ => {
                        // A server that came back with a new Raft ID (its log was wiped
                        // or damaged) left its old ID behind at the same name or address.
                        // That one is gone for good: removing it first keeps the voters
                        // at what the quorum was, instead of adding a fourth of three
                        // whose loss, in the window, would cost the quorum.
                        let stale: Vec<&RaftServer> = config
                            .iter()
                            .filter(|c| c.raft_id != s.id && c.raft_id != consensus.id())
                            .filter(|c| {
                                c.node.name == s.node.name || c.node.rpc_addr == s.node.rpc_addr
                            })
                            .collect();
                        let mut replaced = true;
                        for old in stale {
                            tracing::info!(node = %s.node.name, old_id = old.raft_id, new_id = s.id, "removing the old raft ID of a server that came back with a new one");
                            replaced &= change(
                                "remove the old raft ID of",
                                &s.node.name,
                                consensus.remove_server(old.raft_id, deadline()),
                            )
                            .await;
                        }
                        if !replaced {
                            ok = false;
                            continue;
                        }
                        ok &= promote(consensus, s, by_id(s.id).is_some(), dead, settings).await;
                    }
                }
            }
            MemberStatus::Left if by_id(s.id).is_some() && s.id != consensus.id() => {
                tracing::info!(node = %s.node.name, "removing server that left");
                ok &= change(
                    "remove",
                    &s.node.name,
                    consensus.remove_server(s.id, deadline()),
                )
                .await;
            }
            MemberStatus::Failed | MemberStatus::Leaving => {
                dead.since.entry(s.id).or_insert_with(Instant::now);
            }
            MemberStatus::Left => {}
        }
    }
    // Servers in the configuration that gossip has forgotten count as failed.
    let known: BTreeSet<NodeId> = seen.iter().map(|s| s.id).collect();
    for s in &config {
        if !known.contains(&s.raft_id) && s.raft_id != consensus.id() {
            dead.since.entry(s.raft_id).or_insert_with(Instant::now);
        }
    }
    let alive: BTreeSet<NodeId> = seen
        .iter()
        .filter(|s| s.status == MemberStatus::Alive)
        .map(|s| s.id)
        .chain(std::iter::once(consensus.id()))
        .collect();
    dead.caught_up.retain(|id, _| alive.contains(id));
    // Failed servers pending: the leader looks again within a second, so that a
    // removal follows its grace period (or a change of the settings) closely.
    ok &= dead.since.is_empty();
    if !settings.cleanup_dead_servers {
        return ok;
    }
    let expired: Vec<NodeId> = dead
        .since
        .iter()
        .filter(|(_, at)| at.elapsed() >= DEAD_SERVER_GRACE)
        .map(|(id, _)| *id)
        .collect();
    for id in expired {
        let Some(server) = by_id(id) else {
            dead.since.remove(&id);
            continue;
        };
        let voters: Vec<NodeId> = consensus
            .configuration()
            .iter()
            .filter(|s| s.voter)
            .map(|s| s.raft_id)
            .collect();
        let remaining = voters.iter().filter(|v| **v != id).count();
        let alive_remaining = voters
            .iter()
            .filter(|v| **v != id && alive.contains(v))
            .count();
        if server.voter && alive_remaining < remaining / 2 + 1 {
            tracing::warn!(node = %server.node.name, "not removing a failed server: the others would not keep a quorum");
            continue;
        }
        if server.voter && remaining < settings.min_quorum as usize {
            tracing::warn!(node = %server.node.name, min_quorum = settings.min_quorum, "not removing a failed server: fewer voters than autopilot's MinQuorum would remain");
            continue;
        }
        tracing::info!(node = %server.node.name, "removing failed server");
        if change(
            "remove",
            &server.node.name,
            consensus.remove_server(id, deadline()),
        )
        .await
        {
            dead.since.remove(&id);
        } else {
            ok = false;
        }
    }
    ok
}

/// Brings an alive server that is not a voter along: added as a learner (which returns
/// once it has caught up), then made a voter once it has stayed caught up for
/// `ServerStabilizationTime`. Whether it is a voter now.
async fn promote(
    consensus: &Consensus,
    s: &SeenServer,
    learner: bool,
    dead: &mut DeadServers,
    settings: &AutopilotConfig,
) -> bool {
    if !learner {
        tracing::info!(node = %s.node.name, "adding server to the raft cluster");
        if !change(
            "add",
            &s.node.name,
            consensus.add_learner(s.id, s.node.clone(), deadline()),
        )
        .await
        {
            return false;
        }
    }
    let since = *dead.caught_up.entry(s.id).or_insert_with(Instant::now);
    if since.elapsed() < Duration::from_millis(settings.server_stabilization_time_ms) {
        // Not yet: the leader's next pass (a second away) looks again.
        return false;
    }
    tracing::info!(node = %s.node.name, "promoting server to voter");
    let promoted = change("promote", &s.node.name, consensus.promote(s.id, deadline())).await;
    if promoted {
        dead.caught_up.remove(&s.id);
    }
    promoted
}

fn deadline() -> Instant {
    Instant::now() + CHANGE_TIMEOUT
}

async fn change(
    what: &str,
    node: &str,
    work: impl std::future::Future<Output = Result<(), crate::raft::MembershipError>>,
) -> bool {
    match work.await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(node = %node, error = %e, "failed to {what} server");
            false
        }
    }
}
