//! Keyring operations across every pool of a federation: one pool's answer, and the hook
//! through which a server runs the whole operation for a client agent (the WAN side is
//! not this crate's, so it is plugged in from above).

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use gossip::{KeyOperation, KeyringReport};

use crate::Lan;

/// A pool's answer: the WAN pool, or the LAN pool of a datacenter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolKeyring {
    /// The WAN pool (else a LAN pool).
    pub wan: bool,
    /// The datacenter of the LAN pool; for the WAN pool, this agent's.
    pub datacenter: String,
    /// What the pool's members said. A datacenter that could not be reached has an empty
    /// report with the reason in `error`.
    pub report: KeyringReport,
    /// Why the pool could not be asked at all.
    pub error: Option<String>,
}

impl PoolKeyring {
    /// A LAN pool's answer.
    pub fn lan(datacenter: &str, report: KeyringReport) -> PoolKeyring {
        PoolKeyring {
            wan: false,
            datacenter: datacenter.to_owned(),
            report,
            error: None,
        }
    }

    /// The WAN pool's answer.
    pub fn wan(datacenter: &str, report: KeyringReport) -> PoolKeyring {
        PoolKeyring {
            wan: true,
            ..PoolKeyring::lan(datacenter, report)
        }
    }

    /// A datacenter that could not be asked.
    pub fn failed(datacenter: &str, error: String) -> PoolKeyring {
        PoolKeyring {
            error: Some(error),
            ..PoolKeyring::lan(datacenter, KeyringReport::default())
        }
    }

    /// How Consul names the pool in errors: `dc1 (LAN)` or `WAN`.
    pub fn label(&self) -> String {
        if self.wan {
            "WAN".to_owned()
        } else {
            format!("{} (LAN)", self.datacenter)
        }
    }
}

/// The pools' answers of a keyring operation.
pub type KeyringRun<'a> = Pin<Box<dyn Future<Output = Vec<PoolKeyring>> + Send + 'a>>;

/// Runs a keyring operation on every pool this server reaches (set by the agent on a
/// server of a federation).
pub trait KeyringHook: Send + Sync + 'static {
    /// Runs `op` on the WAN pool and every datacenter's LAN pool (only `lan`'s pool with
    /// `local_only`), until `deadline`.
    fn run<'a>(
        &'a self,
        lan: &'a Lan,
        op: KeyOperation,
        local_only: bool,
        deadline: Instant,
    ) -> KeyringRun<'a>;
}

/// A read in another datacenter: the query and how it is read.
pub type RemoteRead<'a> =
    Pin<Box<dyn Future<Output = Result<catalog::QueryResult, catalog::ReadError>> + Send + 'a>>;
/// A write in another datacenter: the index it was applied at.
pub type RemoteWrite<'a> =
    Pin<Box<dyn Future<Output = Result<u64, catalog::WriteError>> + Send + 'a>>;

/// How a server of a federation reads and writes another datacenter's catalog, for the
/// client agents of its datacenter (set by the agent; the WAN side is not this crate's).
pub trait RemoteCatalog: Send + Sync + 'static {
    /// Reads `query` in `dc`.
    fn read<'a>(
        &'a self,
        dc: &'a str,
        query: catalog::Query,
        options: catalog::ReadOptions,
    ) -> RemoteRead<'a>;
    /// Applies `command` in `dc`.
    fn write<'a>(
        &'a self,
        dc: &'a str,
        command: catalog::Command,
        deadline: Instant,
    ) -> RemoteWrite<'a>;
    /// The datacenters of the federation, nearest first (this one first).
    fn datacenters(&self) -> RemoteDatacenters<'_>;
    /// The Raft state of `dc`.
    fn raft_status<'a>(&'a self, dc: &'a str, deadline: Instant) -> RemoteStatus<'a>;
}

/// Another datacenter's Raft state.
pub type RemoteStatus<'a> =
    Pin<Box<dyn Future<Output = Result<catalog::RaftStatus, catalog::ReadError>> + Send + 'a>>;

/// The datacenters a server knows, nearest first.
pub type RemoteDatacenters<'a> = Pin<Box<dyn Future<Output = Vec<String>> + Send + 'a>>;
