//! What a server does with catalog requests: answer them itself, or pass them to the
//! leader, and how it serves the server port.
//!
//! | request | on the leader | on a follower |
//! |---|---|---|
//! | write | Raft `client_write` | forwarded to the leader once |
//! | read, default or `?consistent` | local read (after a quorum check for consistent) | forwarded to the leader once |
//! | read, `?stale` | local read | local read |
//!
//! A forwarded request is marked so that it is never forwarded again: if leadership
//! moved meanwhile, the second server answers `No cluster leader` rather than bouncing
//! the request around.

use std::net::SocketAddr;

use tokio::time::Instant;

use crate::catalog::{Command, Query};
use crate::raft::{Consistency, ReadError, WriteError};
use crate::rpc::{self, Request, Response, RpcError};
use crate::{FORWARD_MARGIN, Lan, QueryResult, ReadOptions};

fn parse_addr(addr: &str) -> Option<SocketAddr> {
    addr.parse().ok()
}

/// Reads on this server, or on the leader when the mode needs the leader.
pub(crate) async fn read(
    lan: &Lan,
    query: &Query,
    options: ReadOptions,
    forwarded: bool,
) -> Result<QueryResult, ReadError> {
    let (Some(consensus), Some(catalog)) = (lan.consensus(), lan.catalog()) else {
        return Err(ReadError::Rpc("not a server".into()));
    };
    if options.consistency != Consistency::Stale {
        match consensus.wait_for_leader(options.deadline).await {
            None => return Err(ReadError::NoLeader),
            Some((id, _)) if id == consensus.id() => {}
            Some(_) if forwarded => return Err(ReadError::NoLeader),
            Some((_, addr)) => {
                let addr = parse_addr(&addr).ok_or(ReadError::NoLeader)?;
                let request = Request::Read {
                    query: query.clone(),
                    consistency: options.consistency,
                    min_index: options.min_index,
                    timeout_ms: rpc::remaining_ms(options.deadline),
                    forwarded: true,
                };
                return match lan
                    .inner
                    .rpc
                    .call(addr, &request, options.deadline + FORWARD_MARGIN)
                    .await
                {
                    Ok(Response::Read(r)) => r,
                    Ok(other) => Err(ReadError::Rpc(format!("unexpected answer {other:?}"))),
                    Err(RpcError::Timeout) => Err(ReadError::Timeout),
                    Err(e) => Err(ReadError::Rpc(e.to_string())),
                };
            }
        }
    }
    let meta = consensus
        .read_barrier(options.consistency, options.deadline)
        .await?;
    let (answer, index) = catalog
        .query_blocking(query, options.min_index, options.deadline)
        .await;
    Ok(QueryResult {
        answer,
        index,
        meta,
    })
}

/// Writes through Raft on the leader: here, or forwarded to it.
pub(crate) async fn write(
    lan: &Lan,
    command: Command,
    deadline: Instant,
    forwarded: bool,
) -> Result<u64, WriteError> {
    let Some(consensus) = lan.consensus() else {
        return Err(WriteError::Rpc("not a server".into()));
    };
    match consensus.wait_for_leader(deadline).await {
        None => Err(WriteError::NoLeader),
        Some((id, _)) if id == consensus.id() => consensus.write(command, deadline).await,
        Some(_) if forwarded => Err(WriteError::NoLeader),
        Some((_, addr)) => {
            let addr = parse_addr(&addr).ok_or(WriteError::NoLeader)?;
            let request = Request::Write {
                command,
                timeout_ms: rpc::remaining_ms(deadline),
                forwarded: true,
            };
            match lan
                .inner
                .rpc
                .call(addr, &request, deadline + FORWARD_MARGIN)
                .await
            {
                Ok(Response::Write(r)) => r,
                Ok(other) => Err(WriteError::Rpc(format!("unexpected answer {other:?}"))),
                Err(RpcError::Timeout) => Err(WriteError::Timeout),
                Err(e) => Err(WriteError::Rpc(e.to_string())),
            }
        }
    }
}

/// Serves the server port of this server.
pub(crate) struct Handler {
    lan: Lan,
}

impl Handler {
    pub(crate) fn new(lan: Lan) -> Handler {
        Handler { lan }
    }
}

impl rpc::Handler for Handler {
    async fn handle(&self, request: Request, _peer: SocketAddr) -> Response {
        let lan = &self.lan;
        let Some(consensus) = lan.consensus() else {
            return Response::Unsupported("this agent is not a server".into());
        };
        match request {
            Request::Read {
                query,
                consistency,
                min_index,
                timeout_ms,
                forwarded,
            } => {
                let options = ReadOptions {
                    consistency,
                    min_index,
                    deadline: rpc::deadline_in(timeout_ms),
                };
                Response::Read(read(lan, &query, options, forwarded).await)
            }
            Request::Write {
                command,
                timeout_ms,
                forwarded,
            } => {
                Response::Write(write(lan, command, rpc::deadline_in(timeout_ms), forwarded).await)
            }
            Request::Keyring { op, timeout_ms } => {
                Response::Keyring(lan.keyring_here(op, rpc::deadline_in(timeout_ms)).await)
            }
            Request::Status => Response::Status(consensus.status()),
            Request::AppendEntries(r) => {
                Response::AppendEntries(consensus.raft().append_entries(r).await)
            }
            Request::Vote(r) => Response::Vote(consensus.raft().vote(r).await),
            Request::InstallSnapshot(r) => {
                Response::InstallSnapshot(consensus.raft().install_snapshot(r).await)
            }
        }
    }
}
