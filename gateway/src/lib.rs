//! # proconsul-gateway: where a query is answered
//!
//! Every catalog read and write names a datacenter (or none, meaning the agent's own).
//! The gateway decides who answers it:
//!
//! ```text
//!   api (HTTP, DNS) ──(dc, Query)──▶ Gateway::read ──local dc──▶ lan::Lan::read
//!                                                 └─other dc──▶ RouteError::NoPath
//! ```
//!
//! A datacenter the agent does not know is Consul's `No path to datacenter`. This
//! version knows only its own datacenter: federation between datacenters (WAN) is not
//! built yet, so every other name has no path, exactly as in a Consul datacenter that
//! was never joined to another.
//!
//! Invariants: the gateway never parses DNS or HTTP and knows nothing of Consul's JSON.

#![warn(missing_docs)]

use lan::catalog::{Command, Query};
use lan::{Datacenter, Lan, QueryResult, RaftStatus, ReadError, ReadOptions, WriteError};
use tokio::time::Instant;

/// Why a routed request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No known server of this datacenter: the name is wrong or the datacenter was never
    /// joined. Report to the user; retrying will not help (Consul's text).
    #[error("No path to datacenter")]
    NoPath {
        /// The datacenter asked for.
        dc: String,
    },
    /// The datacenter answered, but could not serve the read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The datacenter could not apply the write.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Routes queries to the datacenter that answers them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Gateway {
    lan: Lan,
}

impl Gateway {
    /// A gateway for an agent whose own datacenter is served by `lan`.
    pub fn new(lan: Lan) -> Gateway {
        Gateway { lan }
    }

    /// The agent's own datacenter.
    pub fn local_datacenter(&self) -> &Datacenter {
        self.lan.datacenter()
    }

    /// Known datacenters, nearest first (the local one leads).
    pub fn datacenters(&self) -> Vec<Datacenter> {
        vec![self.lan.datacenter().clone()]
    }

    /// Checks that `dc` (None = local) can be reached from here.
    fn route(&self, dc: Option<&str>) -> Result<(), RouteError> {
        match dc {
            None => Ok(()),
            Some(name) if name.is_empty() || name == self.lan.datacenter().as_str() => Ok(()),
            Some(name) => Err(RouteError::NoPath {
                dc: name.to_owned(),
            }),
        }
    }

    /// Whether `dc` (None = local) is the agent's own datacenter.
    pub fn is_local(&self, dc: Option<&str>) -> bool {
        self.route(dc).is_ok()
    }

    /// Reads from the catalog of `dc`.
    pub async fn read(
        &self,
        dc: Option<&str>,
        query: &Query,
        options: ReadOptions,
    ) -> Result<QueryResult, RouteError> {
        self.route(dc)?;
        Ok(self.lan.read(query, options).await?)
    }

    /// Reads the local copy of `dc`'s catalog at once, with no leader check (DNS's
    /// default `allow_stale`). `Ok(None)` when no copy is held here (a client agent):
    /// then [`Gateway::read`] with [`lan::Consistency::Stale`] asks a server.
    pub fn read_stale(
        &self,
        dc: Option<&str>,
        query: &Query,
    ) -> Result<Option<(lan::catalog::Answer, u64)>, RouteError> {
        self.route(dc)?;
        Ok(self.lan.read_stale(query))
    }

    /// The newest index of `dc`'s local catalog copy, for callers that cache what they
    /// derive from it; `None` for a datacenter whose data is not held here.
    pub fn stale_index(&self, dc: Option<&str>) -> Option<u64> {
        self.route(dc).ok().and_then(|()| self.lan.catalog_index())
    }

    /// Applies a write in `dc`'s catalog; returns the index it was applied at.
    pub async fn write(
        &self,
        dc: Option<&str>,
        command: Command,
        deadline: Instant,
    ) -> Result<u64, RouteError> {
        self.route(dc)?;
        Ok(self.lan.write(command, deadline).await?)
    }

    /// Raft status of `dc` (leader and peers).
    pub async fn raft_status(
        &self,
        dc: Option<&str>,
        deadline: Instant,
    ) -> Result<RaftStatus, RouteError> {
        self.route(dc)?;
        Ok(self.lan.raft_status(deadline).await?)
    }
}
