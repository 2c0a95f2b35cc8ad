//! The leader's timers for session TTLs.
//!
//! A session with a TTL ends when it is not renewed within twice its TTL (Consul's
//! grace). The timers live on the leader only: when a server becomes leader it starts
//! every timer afresh at twice the TTL, and a renewal (a log entry that moves the
//! session's renewal count) restarts that session's timer. When a timer runs out the
//! leader writes the session's destruction, which releases or deletes its locks on every
//! server alike.

use std::collections::HashMap;
use std::time::Duration;

use catalog::{Catalog, Command, SessionWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::raft::Consensus;

/// How often the leader looks at the timers.
const TICK: Duration = Duration::from_secs(1);
/// Budget of one destroy write; a failed one is tried again at the next tick.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(10);

/// `session_ttl.active`: TTL timers running on this server (the leader; 0 elsewhere).
static ACTIVE: std::sync::LazyLock<metrics::Gauge> =
    std::sync::LazyLock::new(|| metrics::gauge!("session_ttl.active"));

/// Deadlines of the sessions with a TTL, by ID: the renewal count they were set at.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    deadlines: HashMap<String, (u64, Instant)>,
}

impl Timers {
    /// Brings the timers in line with `sessions` (`(id, renewals, ttl)`) at `now` and
    /// returns the IDs whose time ran out.
    pub(crate) fn expired(
        &mut self,
        sessions: &[(String, u64, Duration)],
        now: Instant,
    ) -> Vec<String> {
        let mut live = HashMap::with_capacity(sessions.len());
        let mut out = Vec::new();
        for (id, renewals, ttl) in sessions {
            let deadline = match self.deadlines.get(id) {
                Some((seen, deadline)) if seen == renewals => *deadline,
                _ => now + *ttl * 2,
            };
            if deadline <= now {
                out.push(id.clone());
            }
            live.insert(id.clone(), (*renewals, deadline));
        }
        self.deadlines = live;
        out
    }

    /// Forgets every timer (leadership lost).
    pub(crate) fn clear(&mut self) {
        self.deadlines.clear();
    }
}

/// Runs until `shutdown`, ending sessions whose TTL ran out while this server leads.
pub(crate) async fn run(consensus: Consensus, catalog: Catalog, shutdown: CancellationToken) {
    let mut timers = Timers::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        if !consensus.is_leader() {
            timers.clear();
            ACTIVE.set(0.0);
            continue;
        }
        let sessions: Vec<(String, u64, Duration)> = catalog.read(|s| {
            s.sessions()
                .filter_map(|x| Some((x.id.clone(), x.renewals, x.ttl()?)))
                .collect()
        });
        let expired = timers.expired(&sessions, Instant::now());
        ACTIVE.set(timers.deadlines.len() as f64);
        for id in expired {
            let command = Command::Session(SessionWrite::Destroy { id: id.clone() });
            match consensus
                .write(command, Instant::now() + DESTROY_TIMEOUT)
                .await
            {
                Ok(_) => tracing::info!(session = %id, "session TTL expired; destroyed it"),
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "could not destroy an expired session; will retry");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_expires_after_twice_its_ttl_unless_renewed() {
        let mut timers = Timers::default();
        let start = Instant::now();
        let ttl = Duration::from_secs(10);
        let s = |renewals| vec![("a".to_owned(), renewals, ttl)];
        assert!(timers.expired(&s(0), start).is_empty());
        assert!(
            timers
                .expired(&s(0), start + Duration::from_secs(19))
                .is_empty()
        );
        // Renewed at 19 s: the timer starts again.
        assert!(
            timers
                .expired(&s(1), start + Duration::from_secs(19))
                .is_empty()
        );
        assert!(
            timers
                .expired(&s(1), start + Duration::from_secs(38))
                .is_empty()
        );
        assert_eq!(
            timers.expired(&s(1), start + Duration::from_secs(39)),
            ["a"]
        );
        // A new leader starts every timer afresh.
        timers.clear();
        assert!(
            timers
                .expired(&s(1), start + Duration::from_secs(100))
                .is_empty()
        );
        // A session that is gone is forgotten.
        assert!(
            timers
                .expired(&[], start + Duration::from_secs(1000))
                .is_empty()
        );
        assert!(timers.deadlines.is_empty());
    }
}
