//! What a server does with catalog requests: answer them itself, or pass them to the
//! leader, and how it serves the server port.
//!
//! | request | on the leader | on a follower |
//! |---|---|---|
//! | write | Raft `client_write` | forwarded to the leader once |
//! | remove a Raft peer | membership change | forwarded to the leader once |
//! | read, default or `?consistent` | local read (after a quorum check for consistent) | forwarded to the leader once |
//! | read, `?stale` | local read | local read |
//!
//! A forwarded request is marked so that it is never forwarded again: if leadership
//! moved meanwhile, the second server answers `No cluster leader` rather than bouncing
//! the request around. A forwarded read whose leader goes silent or is replaced before it
//! answers is sent again to the next leader (within the hold); a forwarded write is not,
//! since it may still be applied, and waits for its answer until its deadline.
//!
//! The port's requests and answers are this module's ([`request`]); Raft's messages among
//! them are [`crate::raft`]'s, handed to [`crate::raft::Consensus::receive`] once the
//! caller is known to be allowed to send them. Framing and connections are
//! [`crate::rpc`]'s. Imports go one way: this module uses `raft` and `rpc`, neither
//! uses this one; nor does it use the crate root: what it needs of the agent around it
//! (serving relayed requests) comes through [`Relays`], which the root implements.

use std::net::SocketAddr;

use tokio::time::Instant;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use catalog::acl::{AclRead, AclWrite, Caller as AclCaller};
use catalog::{
    Applied, ApplyError, AutopilotHealth, Catalog, Command, Consistency, Datacenter, KvRefusal,
    KvReplication, KvWrite, Principal, Query, QueryResult, ReadError, ReadOptions, ServerHealth,
    TxnError, TxnOutcome, TxnVerb, WriteError, Written, deadline_in, remaining_ms,
};
use gossip::{KeyOperation, KeyringReport, Member, MemberStatus, Pool};

use crate::acl::{Acl, NotFound};
use crate::raft::{Consensus, NodeId, RPC_HOLD_TIMEOUT};
use crate::relay::Opaque;
use crate::rpc::{self, Caller, RpcError};

mod request;

pub use request::RaftPeer;
pub(crate) use request::{Request, Response, unexpected};

/// Pause before looking for a leader again after the last one could not be reached.
const LEADER_RETRY: Duration = Duration::from_millis(100);

/// Extra time a forwarded call waits beyond the caller's deadline, so that the answer a
/// server sends at the deadline (a blocking query that timed out) still arrives.
pub(crate) const FORWARD_MARGIN: Duration = Duration::from_secs(2);

/// What a server answers with: its Raft, its copy of the catalog, the LAN pool (where
/// the other servers are, the keyring) and a client of the other servers' ports. Cheap
/// to clone.
#[derive(Clone)]
pub(crate) struct Server {
    consensus: Consensus,
    catalog: Catalog,
    pool: Pool,
    rpc: rpc::Client,
    /// Keys copied from another datacenter, which only the replicator writes.
    replicated: Option<Arc<KvReplication>>,
    /// ACLs, when they are on.
    acl: Option<Acl>,
    /// This server's datacenter.
    datacenter: Datacenter,
    /// Whether each server was healthy at the last health check here, and since when
    /// (ns since the epoch): autopilot's `StableSince`.
    stability: Arc<std::sync::Mutex<HashMap<NodeId, (bool, u64)>>>,
}

impl Server {
    pub(crate) fn new(
        consensus: Consensus,
        catalog: Catalog,
        pool: Pool,
        rpc: rpc::Client,
        replicated: Option<Arc<KvReplication>>,
        acl: Option<Acl>,
        datacenter: Datacenter,
    ) -> Server {
        Server {
            consensus,
            catalog,
            pool,
            rpc,
            replicated,
            acl,
            datacenter,
            stability: Arc::default(),
        }
    }

    /// This server's Raft.
    pub(crate) fn consensus(&self) -> &Consensus {
        &self.consensus
    }

    /// This server's copy of the catalog.
    pub(crate) fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The members of the LAN pool.
    pub(crate) fn members(&self) -> Arc<Vec<Member>> {
        self.pool.members()
    }

    /// Calls another server's port.
    pub(crate) async fn call(
        &self,
        addr: SocketAddr,
        request: &Request,
        deadline: Instant,
    ) -> Result<Response, RpcError> {
        self.rpc.call(addr, request, deadline).await
    }

    /// Runs a keyring operation across the LAN pool from this server.
    pub(crate) async fn keyring(&self, op: KeyOperation, deadline: Instant) -> KeyringReport {
        self.pool.keyring(op, deadline).await
    }

    /// Where the server `id` (recorded as `node`) answers now.
    fn address_of(&self, id: u64, node: &catalog::ServerNode) -> Option<SocketAddr> {
        crate::raft::network::resolve(&self.members(), id, node)
    }

    /// Reads on this server, or on the leader when the mode needs the leader. The
    /// first server to get a read-only transaction times it (`txn.read`).
    pub(crate) async fn read(
        &self,
        query: &Query,
        options: ReadOptions,
        forwarded: bool,
    ) -> Result<QueryResult, ReadError> {
        let start = std::time::Instant::now();
        let result = self.read_here_or_on_leader(query, options, forwarded).await;
        if !forwarded && matches!(query, Query::Txn(_)) {
            metrics::histogram!("txn.read").record(millis_since(start));
        }
        result
    }

    async fn read_here_or_on_leader(
        &self,
        query: &Query,
        options: ReadOptions,
        forwarded: bool,
    ) -> Result<QueryResult, ReadError> {
        // A prepared query stored here runs as its own token, if it has one.
        let stored = self.run_stored(query);
        let principal = match &stored {
            Some((_, Some(token))) => token.clone(),
            _ => options.principal.clone(),
        };
        self.prepare(&principal).await;
        let (consensus, catalog) = (&self.consensus, &self.catalog);
        // A stale read on a follower that lost touch with the leader for longer than
        // `max_stale` is read on the leader instead (Consul's rule).
        let too_stale = options.consistency == Consistency::Stale
            && options
                .max_stale
                .is_some_and(|max| consensus.last_contact().is_none_or(|c| c > max));
        let options = if too_stale {
            ReadOptions {
                consistency: Consistency::Default,
                ..options
            }
        } else {
            options
        };
        let hold = options.deadline.min(Instant::now() + RPC_HOLD_TIMEOUT);
        // Reads that need the leader: here if it is this server, else on it.
        if options.consistency != Consistency::Stale {
            loop {
                let leader = consensus.wait_for_leader(hold).await;
                match leader {
                    None => return Err(ReadError::NoLeader),
                    Some((id, _)) if id == consensus.id() => break,
                    Some(_) if forwarded => return Err(ReadError::NoLeader),
                    Some((leader, node)) => {
                        let addr = self.address_of(leader, &node).ok_or(ReadError::NoLeader)?;
                        // The leader reads with the caller's consistency mode; `max_stale`
                        // only ever sends a read to the leader, so it goes no further.
                        let request = Request::Read {
                            query: query.clone(),
                            options: ReadOptions {
                                max_stale: None,
                                ..options.clone()
                            }
                            .to_sent(self.agent_token().as_deref()),
                            forwarded: true,
                        };
                        let call = self.call(addr, &request, options.deadline + FORWARD_MARGIN);
                        // A leader that goes silent (or is replaced) while it holds the read
                        // would keep it until the deadline; a read has no effect, so it is
                        // asked again of the next leader instead.
                        let answer = tokio::select! {
                            answer = call => answer,
                            () = consensus.leader_gone(leader) => {
                                tracing::debug!(peer = %addr, "the leader went silent during a read; asking the next one");
                                continue;
                            }
                        };
                        match answer {
                            Ok(Response::Read(r)) => return r,
                            Ok(other) => {
                                return Err(ReadError::Rpc(request::unexpected(other)));
                            }
                            Err(RpcError::Timeout) => return Err(ReadError::Timeout),
                            // The leader we knew is gone: look for the next one until the hold
                            // runs out (then "No cluster leader", as Consul says).
                            Err(e) if Instant::now() < hold => {
                                tracing::debug!(peer = %addr, error = %e, "leader unreachable, waiting for another");
                                tokio::time::sleep(LEADER_RETRY).await;
                            }
                            Err(_) => return Err(ReadError::NoLeader),
                        }
                    }
                }
            }
        }
        let query = stored.as_ref().map_or(query, |(run, _)| run);
        let caller = self.read_caller(query, &principal)?;
        // One's own token is shown whole, secret included (`/v1/acl/token/self`).
        let own = is_own_token(query, &options.principal);
        let start = std::time::Instant::now();
        let meta = consensus
            .read_barrier(options.consistency, options.deadline)
            .await?;
        if options.consistency == Consistency::Consistent {
            metrics::histogram!("rpc.consistentRead").record(millis_since(start));
        }
        let (mut answer, index) = catalog
            .query_blocking(query, options.min_index, options.deadline)
            .await;

        let filtered = caller.is_some_and(|c| !own && c.filter(&mut answer));
        Ok(QueryResult {
            answer,
            index,
            meta,
            filtered,
        })
    }

    /// Asks the primary about `principal`'s token when this server of a secondary does
    /// not hold it (see [`Acl::prepare`]); a check that follows finds the answer.
    pub(crate) async fn prepare(&self, principal: &Principal) {
        if let Some(acl) = &self.acl {
            acl.prepare(&self.catalog, principal).await;
        }
    }

    /// Lets this server ask the primary about tokens it does not hold.
    pub(crate) fn set_remote_tokens(&self, resolver: Arc<dyn crate::acl::RemoteTokens>) {
        if let Some(acl) = &self.acl {
            acl.set_remote(resolver);
        }
    }

    /// What `secret` may do by this server's tables, as told to another datacenter;
    /// `None` when ACLs are off here.
    pub(crate) fn grant_for(&self, secret: &str) -> Option<Option<crate::acl::Grant>> {
        let acl = self.acl.as_ref()?;
        Some(acl.grant(&self.catalog, &Principal::Token(secret.into())))
    }

    /// The servers' health as the leader sees it: here when this server leads, else
    /// asked of the leader.
    pub(crate) async fn autopilot_health(
        &self,
        deadline: Instant,
        forwarded: bool,
    ) -> Result<AutopilotHealth, ReadError> {
        if self.consensus.is_leader() {
            return Ok(self.health_here());
        }
        if forwarded {
            return Err(ReadError::NoLeader);
        }
        let hold = deadline.min(Instant::now() + RPC_HOLD_TIMEOUT);
        let Some((id, node)) = self.consensus.wait_for_leader(hold).await else {
            return Err(ReadError::NoLeader);
        };
        if id == self.consensus.id() {
            return Ok(self.health_here());
        }
        let addr = self.address_of(id, &node).ok_or(ReadError::NoLeader)?;
        let request = Request::AutopilotHealth {
            timeout_ms: remaining_ms(deadline),
            forwarded: true,
        };
        match self.rpc.call(addr, &request, deadline).await {
            Ok(Response::AutopilotHealth(r)) => r,
            Ok(other) => Err(ReadError::Rpc(unexpected(other))),
            Err(e) => Err(ReadError::Rpc(e.to_string())),
        }
    }

    /// The servers' health from this leader's Raft state and gossip, under autopilot's
    /// settings.
    fn health_here(&self) -> AutopilotHealth {
        let settings = crate::leader::autopilot_settings(&self.catalog, &Default::default());
        let status = self.consensus.status();
        let matched = self.consensus.matched();
        let acks = self.consensus.acks();
        let members = self.pool.members();
        let me = self.consensus.id();
        let now_ns = crate::acl::now_ns();
        let mut stability = self.stability.lock().unwrap_or_else(|p| p.into_inner());
        let mut servers = Vec::new();
        for s in self.consensus.configuration() {
            let serf_status = members
                .iter()
                .find(|m| m.is_server() && m.name == s.node.name)
                .map_or("none", |m| match m.status {
                    MemberStatus::Alive => "alive",
                    MemberStatus::Leaving => "leaving",
                    MemberStatus::Left => "left",
                    MemberStatus::Failed => "failed",
                });
            let leader = s.raft_id == me;
            let last_contact_ms = if leader {
                Some(0)
            } else {
                acks.get(&s.raft_id)
                    .map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
            };
            let last_index = if leader {
                status.last_log_index
            } else {
                matched.get(&s.raft_id).copied().unwrap_or(0)
            };
            let healthy = serf_status == "alive"
                && last_contact_ms.is_some_and(|ms| ms <= settings.last_contact_threshold_ms)
                && status.last_log_index.saturating_sub(last_index) <= settings.max_trailing_logs;
            let since = match stability.get(&s.raft_id) {
                Some((was, since)) if *was == healthy => *since,
                _ => now_ns,
            };
            stability.insert(s.raft_id, (healthy, since));
            servers.push(ServerHealth {
                id: s.node.node_id.clone(),
                name: s.node.name.clone(),
                address: s.node.rpc_addr.clone(),
                serf_status: serf_status.to_owned(),
                leader,
                last_contact_ms,
                last_term: status.term,
                last_index,
                healthy,
                voter: s.voter,
                stable_since_ns: since,
            });
        }
        let ids: std::collections::HashSet<NodeId> = self
            .consensus
            .configuration()
            .iter()
            .map(|s| s.raft_id)
            .collect();
        stability.retain(|id, _| ids.contains(id));
        let voters = servers.iter().filter(|s| s.voter).count();
        let healthy_voters = servers.iter().filter(|s| s.voter && s.healthy).count();
        let quorum = voters / 2 + 1;
        AutopilotHealth {
            healthy: servers.iter().all(|s| s.healthy),
            failure_tolerance: u32::try_from(healthy_voters.saturating_sub(quorum))
                .unwrap_or(u32::MAX),
            servers,
        }
    }

    /// A [`Query::RunServiceQuery`] of a prepared query of this datacenter as it runs
    /// here (see [`catalog::State::run_stored`]), with the stored token it reads as.
    pub(crate) fn run_stored(&self, query: &Query) -> Option<(Query, Option<Principal>)> {
        // Every read asks; only this one needs the catalog's lock.
        if !matches!(
            query,
            Query::RunServiceQuery {
                stored: Some(_),
                ..
            }
        ) {
            return None;
        }
        self.catalog
            .read(|s| s.run_stored(query, self.datacenter.as_str()))
    }

    /// Who `principal` is on this server; `Ok(None)` when ACLs are off or it is the
    /// agent itself.
    pub(crate) fn caller(&self, principal: &Principal) -> Result<Option<AclCaller>, NotFound> {
        match &self.acl {
            Some(acl) => acl.caller(&self.catalog, principal),
            None => Ok(None),
        }
    }

    /// Who reads, when ACLs are on, after checking what the read needs; `None` when
    /// nothing is checked.
    fn read_caller(
        &self,
        query: &Query,
        principal: &Principal,
    ) -> Result<Option<AclCaller>, ReadError> {
        let Some(acl) = &self.acl else {
            return Ok(None);
        };
        // Finding a prepared query to execute asks nothing of the caller, whose token
        // is not even resolved when the query has one of its own (Consul's rule).
        if matches!(query, Query::QueryToRun { .. }) {
            return Ok(None);
        }
        let caller = acl
            .caller(&self.catalog, principal)
            .map_err(|NotFound| ReadError::AclNotFound)?;
        // Reading one's own token (`/v1/acl/token/self`) needs no permission.
        if let Some(c) = &caller
            && !is_own_token(query, principal)
        {
            c.check_read(query)?;
        }
        Ok(caller)
    }

    /// Why the write may not be made by `principal`, when ACLs are on and it may not.
    fn write_refusal(&self, command: &Command, principal: &Principal) -> Option<WriteError> {
        let acl = self.acl.as_ref()?;
        let caller = match acl.caller(&self.catalog, principal) {
            Ok(caller) => caller?,
            Err(NotFound) => return Some(WriteError::AclNotFound),
        };
        // A bootstrap is open to anyone: the state machine refuses the second one.
        if matches!(command, Command::Acl(AclWrite::Bootstrap { .. })) {
            return None;
        }
        let checked = self.catalog.read(|s| caller.check_write(s, command));
        checked.err().map(WriteError::Denied)
    }

    /// Leaves out of a transaction's results the keys `principal` may not read (its
    /// `get`s are not refused, as Consul's are not).
    fn filter_txn(&self, outcome: &mut TxnOutcome, principal: &Principal) {
        if let Some(acl) = &self.acl
            && let Ok(Some(caller)) = acl.caller(&self.catalog, principal)
        {
            caller.filter_txn(outcome);
        }
    }

    /// The token this server sends for its own requests to other servers.
    fn agent_token(&self) -> Option<String> {
        self.acl.as_ref()?.agent_token()
    }

    /// Writes through Raft on the leader: here, or forwarded to it. The first server
    /// to get a write times it under Consul's name for its kind (`catalog.register`, …).
    pub(crate) async fn write(
        &self,
        command: Command,
        deadline: Instant,
        principal: &Principal,
        forwarded: bool,
    ) -> Result<Written, WriteError> {
        let timer = (!forwarded).then(|| write_metric(&command)).flatten();
        let txn = matches!(command, Command::Txn(_));
        let start = std::time::Instant::now();
        self.prepare(principal).await;
        let mut written = self
            .write_on_leader(command, deadline, principal, forwarded)
            .await;
        if txn
            && let Ok(Written {
                applied: Applied::Txn(outcome),
                ..
            }) = &mut written
        {
            self.filter_txn(outcome, principal);
        }
        if let Some(name) = timer {
            metrics::histogram!(name).record(millis_since(start));
        }
        written
    }

    async fn write_on_leader(
        &self,
        command: Command,
        deadline: Instant,
        principal: &Principal,
        forwarded: bool,
    ) -> Result<Written, WriteError> {
        let token = principal.to_wire(self.agent_token().as_deref());
        self.on_leader(
            command,
            deadline,
            forwarded,
            |consensus, command| {
                let replicated = self.replicated.as_ref().and_then(|r| r.refusal(&command));
                let delayed = match (self.write_refusal(&command, principal), replicated) {
                    (Some(refused), _) => Some(Err(refused)),
                    (None, Some(why)) => Some(Err(WriteError::Rejected(ApplyError::Kv(why)))),
                    (None, None) => lock_delayed(&self.catalog, &command),
                };
                async move {
                    match delayed {
                        Some(refused) => refused,
                        None => consensus.write(command, deadline).await,
                    }
                }
            },
            |command, timeout_ms| Request::Write {
                command: command.clone(),
                timeout_ms,
                forwarded: true,
                token: token.clone(),
            },
            |answer| match answer {
                Response::Write(r) => r,
                other => Err(unexpected_write(other)),
            },
        )
        .await
    }

    /// Removes a server from the Raft configuration on the leader: here, or forwarded to it.
    /// `Ok(Err(why))` when the leader refused (no such server, a failed change).
    pub(crate) async fn remove_peer(
        &self,
        peer: RaftPeer,
        deadline: Instant,
        forwarded: bool,
    ) -> Result<Result<(), String>, WriteError> {
        self.on_leader(
        peer,
        deadline,
        forwarded,
        |consensus, peer| async move {
            let found = consensus.configuration().into_iter().find(|s| match &peer {
                RaftPeer::Id(id) => s.node.node_id == *id,
                RaftPeer::Address(addr) => s.node.rpc_addr == *addr,
            });
            let Some(server) = found else {
                return Ok(Err(peer.not_found()));
            };
            tracing::info!(node = %server.node.name, "removing server from the raft cluster on request");
            Ok(consensus
                .remove_server(server.raft_id, deadline)
                .await
                .map_err(|e| e.to_string()))
        },
        |peer, timeout_ms| Request::RemovePeer {
            peer: peer.clone(),
            timeout_ms,
            forwarded: true,
        },
        |answer| match answer {
            Response::RemovePeer(r) => r,
            other => Err(unexpected_write(other)),
        },
    )
    .await
    }

    /// Runs `here` with `payload` on the leader of this datacenter. When this server leads,
    /// `here` runs on its consensus; otherwise the leader is sent `request(payload, time left
    /// in ms)` once, and its answer is read with `answer`. A request that was not sent (the
    /// leader could not be reached) waits for the next leader, within the hold; one that was
    /// sent is never sent again, since it may have taken effect.
    async fn on_leader<P, T, F>(
        &self,
        payload: P,
        deadline: Instant,
        forwarded: bool,
        here: impl FnOnce(Consensus, P) -> F,
        request: impl Fn(&P, u64) -> Request,
        answer: impl Fn(Response) -> Result<T, WriteError>,
    ) -> Result<T, WriteError>
    where
        F: Future<Output = Result<T, WriteError>>,
    {
        let consensus = &self.consensus;
        let hold = deadline.min(Instant::now() + RPC_HOLD_TIMEOUT);
        loop {
            let (leader, node) = match consensus.wait_for_leader(hold).await {
                None => return Err(WriteError::NoLeader),
                Some((id, _)) if id == consensus.id() => {
                    return here(consensus.clone(), payload).await;
                }
                Some(_) if forwarded => return Err(WriteError::NoLeader),
                Some(leader) => leader,
            };
            let addr = self.address_of(leader, &node).ok_or(WriteError::NoLeader)?;
            let sent = request(&payload, remaining_ms(deadline));
            match self.call(addr, &sent, deadline + FORWARD_MARGIN).await {
                Ok(response) => return answer(response),
                Err(RpcError::Timeout) => return Err(WriteError::Timeout),
                // Not connected: the request never left, so trying the next leader is safe.
                Err(e @ RpcError::Connect { .. }) if Instant::now() < hold => {
                    tracing::debug!(peer = %addr, error = %e, "leader unreachable, waiting for another");
                    tokio::time::sleep(LEADER_RETRY).await;
                }
                Err(RpcError::Connect { .. }) => return Err(WriteError::NoLeader),
                Err(e) => return Err(WriteError::Rpc(e.to_string())),
            }
        }
    }
}

/// Whether `query` reads the token `principal` presents.
fn is_own_token(query: &Query, principal: &Principal) -> bool {
    matches!(
        (query, principal),
        (Query::Acl(AclRead::TokenBySecret(asked)), Principal::Token(held)) if **asked == **held
    )
}

/// The answer to a write that takes a KV lock within an invalidated session's lock
/// delay, as this leader's clock says; `None` when the write may go to Raft. The delay
/// is not in the log (it is a time), so only the leader consults it, as in Consul.
fn lock_delayed(catalog: &Catalog, command: &Command) -> Option<Result<Written, WriteError>> {
    let now = Instant::now();
    match command {
        Command::Kv(KvWrite::Acquire { key, .. }) => {
            catalog.read(|s| s.lock_delayed(key, now)).then(|| {
                Err(WriteError::Rejected(
                    KvRefusal::LockDelay(key.clone()).into(),
                ))
            })
        }
        Command::Txn(ops) => {
            let errors: Vec<TxnError> = catalog.read(|s| {
                ops.iter()
                    .enumerate()
                    .filter(|(_, op)| op.verb == TxnVerb::Lock && s.lock_delayed(&op.key, now))
                    .map(|(op_index, op)| TxnError {
                        op_index,
                        what: KvRefusal::LockDelay(op.key.clone()).to_string(),
                    })
                    .collect()
            });
            (!errors.is_empty()).then(|| {
                Ok(Written {
                    index: catalog.index(),
                    applied: Applied::Txn(TxnOutcome::Failed(errors)),
                })
            })
        }
        _ => None,
    }
}

/// A forwarded request answered with a response of another kind.
fn unexpected_write(other: Response) -> WriteError {
    WriteError::Rpc(unexpected(other))
}

/// Who serves the requests client agents relay through this server (see
/// [`crate::relay`]); implemented by the crate root, which holds the relay the agent set.
pub(crate) trait Relays: Send + Sync + 'static {
    /// Serves `request` by `deadline`; `None` when nothing relays here.
    fn serve_relayed(
        &self,
        request: Opaque,
        proven: bool,
        deadline: Instant,
    ) -> impl Future<Output = Option<Opaque>> + Send;
}

/// Serves the server port of this server.
pub(crate) struct Handler<R> {
    server: Server,
    relays: R,
    /// Refused requests, logged once per peer per interval.
    log: std::sync::Mutex<gossip::PeerLog>,
}

impl<R: Relays> Handler<R> {
    pub(crate) fn new(server: Server, relays: R) -> Handler<R> {
        Handler {
            server,
            relays,
            log: Default::default(),
        }
    }

    /// Logs a refused request (once per peer per interval) and answers with why.
    fn refuse(&self, caller: &Caller, what: &str, why: &dyn std::fmt::Display) -> Response {
        let suppressed = self
            .log
            .lock()
            .expect("peer log lock")
            .should_log(caller.addr.ip(), Instant::now());
        if let Some(suppressed) = suppressed {
            tracing::warn!(peer = %caller.addr, error = %why, suppressed, "refused {what}");
        }
        Response::Refused(why.to_string())
    }

    /// Hands Raft's `message` to this server's Raft, which checks it first; a refusal is
    /// logged and answered.
    async fn receive(
        &self,
        consensus: &Consensus,
        caller: &Caller,
        message: crate::raft::Message,
    ) -> Response {
        let what = message.what();
        match consensus.receive(message).await {
            Ok(answer) => answer.into(),
            Err(e) => self.refuse(caller, what, &e),
        }
    }

    /// Whether `caller` may ask `request` (see `rpc::secure`); the refusal if not.
    fn refusal(&self, request: &Request, caller: &Caller) -> Option<Response> {
        match request {
            Request::Keyring { .. } if !caller.may_use_keyring() => {
                Some(self.refuse(caller, "a keyring request", &KEYRING_NEEDS_PROOF))
            }
            Request::AppendEntries(_)
            | Request::Vote(_)
            | Request::InstallSnapshot(_)
            | Request::RemovePeer { .. }
                if !caller.may_change_raft() =>
            {
                Some(self.refuse(caller, "a raft request", &RAFT_NEEDS_PROOF))
            }
            _ => None,
        }
    }
}

/// Why a keyring request from an unproven caller is refused.
pub const KEYRING_NEEDS_PROOF: &str = "Permission denied: keyring operations over the server port need a caller that proved it belongs to the datacenter (the gossip key, or a TLS client certificate from the CA)";
/// Why a Raft request from an unproven caller is refused.
const RAFT_NEEDS_PROOF: &str = "Permission denied: Raft over the server port needs a server that proved it belongs to the datacenter (the gossip key, or a TLS client certificate from the CA)";

impl<R: Relays> rpc::Handler for Handler<R> {
    type Request = Request;
    type Response = Response;

    fn unsendable(why: String) -> Response {
        Response::Error(why)
    }

    async fn handle(&self, request: Request, caller: Caller) -> Response {
        let server = &self.server;
        let consensus = &server.consensus;
        if let Some(refusal) = self.refusal(&request, &caller) {
            return refusal;
        }
        match &request {
            Request::AppendEntries(_) | Request::Vote(_) | Request::InstallSnapshot(_) => {}
            Request::Read { .. } => {
                metrics::counter!("rpc.request").increment(1);
                metrics::counter!("rpc.query").increment(1);
            }
            _ => metrics::counter!("rpc.request").increment(1),
        }
        match request {
            Request::Read {
                query,
                options,
                forwarded,
            } => Response::Read(server.read(&query, options.to_options(), forwarded).await),
            Request::Write {
                command,
                timeout_ms,
                forwarded,
                token,
            } => Response::Write(
                server
                    .write(
                        command,
                        deadline_in(timeout_ms),
                        &Principal::from_wire(token),
                        forwarded,
                    )
                    .await,
            ),
            Request::Keyring { op, timeout_ms } => {
                Response::Keyring(server.keyring(op, deadline_in(timeout_ms)).await)
            }
            Request::Relay {
                request,
                timeout_ms,
                ..
            } => {
                let proven = caller.may_use_keyring();
                match self
                    .relays
                    .serve_relayed(request, proven, deadline_in(timeout_ms))
                    .await
                {
                    Some(answer) => Response::Relay(answer),
                    None => Response::Unsupported("this server relays nothing yet".into()),
                }
            }
            Request::Status => Response::Status(consensus.status()),
            Request::AutopilotHealth {
                timeout_ms,
                forwarded,
            } => Response::AutopilotHealth(
                server
                    .autopilot_health(deadline_in(timeout_ms), forwarded)
                    .await,
            ),
            Request::ResolveToken { token } => match &server.acl {
                None => Response::Unsupported("ACLs are off in this datacenter".into()),
                Some(acl) => {
                    let principal = Principal::from_wire(token);
                    acl.prepare(&server.catalog, &principal).await;
                    Response::ResolveToken(acl.grant(&server.catalog, &principal))
                }
            },
            Request::AppendEntries(m) => self.receive(consensus, &caller, m.into()).await,
            Request::Vote(m) => self.receive(consensus, &caller, m.into()).await,
            Request::InstallSnapshot(m) => self.receive(consensus, &caller, m.into()).await,
            Request::RemovePeer {
                peer,
                timeout_ms,
                forwarded,
            } => Response::RemovePeer(
                server
                    .remove_peer(peer, deadline_in(timeout_ms), forwarded)
                    .await,
            ),
        }
    }
}

/// Milliseconds since `start`, as timers record them.
fn millis_since(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Consul's metric for a write of this kind, if it has one.
fn write_metric(command: &Command) -> Option<&'static str> {
    match command {
        Command::Register(_) => Some("catalog.register"),
        Command::Deregister(_) => Some("catalog.deregister"),
        Command::Kv(_) => Some("kvs.apply"),
        Command::Txn(_) => Some("txn.apply"),
        Command::Session(catalog::SessionWrite::Renew { .. }) => Some("session.renew"),
        Command::Session(_) => Some("session.apply"),
        Command::SetQuery { .. } | Command::DeleteQuery { .. } => Some("prepared-query.apply"),
        Command::Acl(_) => Some("acl.apply"),
        Command::Autopilot { .. } => Some("autopilot.apply"),
        Command::Restore(_) | Command::RestorePart(_) | Command::KvReplicate(_) => None,
    }
}
