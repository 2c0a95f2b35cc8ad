//! One pool's answer to a keyring operation run across the federation.

use lan::KeyringReport;

/// A pool's answer: the WAN pool, or the LAN pool of a datacenter.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub(crate) fn lan(datacenter: &str, report: KeyringReport) -> PoolKeyring {
        PoolKeyring {
            wan: false,
            datacenter: datacenter.to_owned(),
            report,
            error: None,
        }
    }

    pub(crate) fn wan(datacenter: &str, report: KeyringReport) -> PoolKeyring {
        PoolKeyring {
            wan: true,
            ..PoolKeyring::lan(datacenter, report)
        }
    }

    pub(crate) fn failed(datacenter: &str, error: String) -> PoolKeyring {
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
