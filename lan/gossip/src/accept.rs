//! The accept loop every listener of this crate shares: take a connection slot first
//! (so a flood of connections waits in the kernel's backlog instead of growing a set of
//! tasks), then the next connection, until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The next connection with its slot, or `None` once `shutdown` is cancelled. Failed
/// accepts (a connection reset before it was taken, say) are logged at debug level as
/// `what` and skipped.
pub(crate) async fn next(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    what: &'static str,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let slot = tokio::select! {
        _ = shutdown.cancelled() => return None,
        s = slots.clone().acquire_owned() => s.ok()?,
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => return Some((slot, stream, peer)),
                Err(e) => tracing::debug!(error = %e, "{what} accept failed"),
            },
        }
    }
}
