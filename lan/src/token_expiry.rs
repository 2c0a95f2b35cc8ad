//! The leader's deletion of expired ACL tokens.
//!
//! A token given an `ExpirationTime` resolves to nothing from that moment on every
//! server (resolution compares it with the server's clock), and reads skip it. It still
//! takes space until the leader deletes it through a Raft entry, as Consul's leader
//! does. The leader looks every [`REAP_INTERVAL`], or when the next known expiry comes
//! if sooner, and deletes at most [`REAP_PER_ROUND`] tokens a round. A secondary's leader
//! deletes only its local tokens: global ones belong to the primary, and their deletion
//! reaches the secondary by replication.

use std::sync::Arc;
use std::time::Duration;

use catalog::acl::AclWrite;
use catalog::{Catalog, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::acl::{AclConfig, now_ns};
use crate::raft::Consensus;

/// The longest an expired token waits for deletion when no expiry was known at the last
/// look (a token created since).
pub(crate) const REAP_INTERVAL: Duration = Duration::from_secs(10);
/// Tokens deleted in one round at most; the rest wait for the next, [`RETRY`] later.
const REAP_PER_ROUND: usize = 128;
/// The wait after a round that failed or left tokens behind.
const RETRY: Duration = Duration::from_secs(1);
/// Budget of one deletion.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until `shutdown`, deleting expired tokens while this server leads.
pub(crate) async fn run(
    consensus: Consensus,
    catalog: Catalog,
    acl: Arc<AclConfig>,
    shutdown: CancellationToken,
) {
    let local_only = acl.primary_datacenter.is_some();
    loop {
        if !consensus.is_leader() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = consensus.leadership_changed(false) => continue,
            }
        }
        let now = now_ns();
        let (expired, next) =
            catalog.read(|s| s.acl().expired_tokens(now, local_only, REAP_PER_ROUND));
        let mut done = expired.len() < REAP_PER_ROUND;
        for accessor_id in expired {
            let write = Command::Acl(AclWrite::TokenDelete { accessor_id });
            if let Err(e) = consensus.write(write, Instant::now() + WRITE_TIMEOUT).await {
                tracing::warn!(error = %e, "failed to delete an expired ACL token");
                done = false;
            }
        }
        let wait = if done {
            next.map_or(REAP_INTERVAL, |at| {
                Duration::from_nanos(at.saturating_sub(now_ns())).min(REAP_INTERVAL)
            })
        } else {
            RETRY
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = consensus.leadership_changed(true) => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
