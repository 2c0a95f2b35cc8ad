//! The leader's reaping of KV tombstones.
//!
//! A deleted key leaves a tombstone so that prefix reads keep their index (see the
//! catalog's KV table). The leader forgets tombstones once they are older than
//! [`catalog::TOMBSTONE_TTL`], through a Raft entry so that every server forgets the same
//! ones. Raft indexes carry no time, so the leader samples the KV table's index every
//! [`REAP_INTERVAL`] and, once a sample is older than the TTL, reaps every tombstone at or
//! below its index, as Consul's leader does with its tombstone hints. Samples live only
//! on the leader: a new leader starts afresh, which keeps tombstones a little longer,
//! never shorter.

use std::collections::VecDeque;
use std::time::Duration;

use catalog::{Catalog, Command, KvWrite, TOMBSTONE_TTL};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::raft::Consensus;

/// How often the leader samples the KV index and reaps (Consul's 30 s batching).
pub(crate) const REAP_INTERVAL: Duration = Duration::from_secs(30);
/// Budget of one reap write.
const REAP_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which KV indexes are old enough to reap below.
#[derive(Debug)]
pub(crate) struct Hints {
    ttl: Duration,
    /// `(when, KV index then)`, oldest first; at most `ttl / interval + 2` of them.
    samples: VecDeque<(Instant, u64)>,
    bound: usize,
}

impl Hints {
    pub(crate) fn new(ttl: Duration, interval: Duration) -> Hints {
        let bound = (ttl.as_secs_f64() / interval.as_secs_f64().max(0.001)).ceil() as usize + 2;
        Hints {
            ttl,
            samples: VecDeque::new(),
            bound,
        }
    }

    /// Records the KV index seen at `now`.
    pub(crate) fn sample(&mut self, now: Instant, index: u64) {
        if self.samples.back().is_none_or(|(_, last)| *last != index) {
            self.samples.push_back((now, index));
        }
        while self.samples.len() > self.bound {
            self.samples.pop_front();
        }
    }

    /// The newest index every tombstone at or below which is older than the TTL at
    /// `now`; the samples up to it are spent.
    pub(crate) fn expired(&mut self, now: Instant) -> Option<u64> {
        let mut up_to = None;
        while let Some((at, index)) = self.samples.front().copied() {
            if now.duration_since(at) < self.ttl {
                break;
            }
            up_to = Some(index);
            self.samples.pop_front();
        }
        up_to
    }

    /// Forgets every sample (leadership lost).
    pub(crate) fn clear(&mut self) {
        self.samples.clear();
    }
}

/// Runs until `shutdown`, reaping old tombstones while this server leads.
pub(crate) async fn run(consensus: Consensus, catalog: Catalog, shutdown: CancellationToken) {
    let mut hints = Hints::new(TOMBSTONE_TTL, REAP_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(REAP_INTERVAL) => {}
        }
        if !consensus.is_leader() {
            hints.clear();
            continue;
        }
        let now = Instant::now();
        let (kv_index, oldest) = catalog.read(|s| (s.indexes().kv, s.oldest_tombstone()));
        hints.sample(now, kv_index);
        let Some(up_to) = hints.expired(now) else {
            continue;
        };
        if oldest.is_none_or(|oldest| oldest > up_to) {
            continue;
        }
        let command = Command::Kv(KvWrite::Reap { up_to });
        match consensus
            .write(command, Instant::now() + REAP_WRITE_TIMEOUT)
            .await
        {
            Ok(_) => tracing::debug!(up_to, "reaped KV tombstones"),
            // The next sample past the TTL reaps these as well.
            Err(e) => tracing::warn!(error = %e, up_to, "could not reap KV tombstones"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_is_reaped_below_only_once_its_sample_is_older_than_the_ttl() {
        let ttl = Duration::from_secs(900);
        let mut hints = Hints::new(ttl, Duration::from_secs(30));
        let start = Instant::now();
        hints.sample(start, 10);
        hints.sample(start + Duration::from_secs(30), 10);
        hints.sample(start + Duration::from_secs(60), 25);
        assert_eq!(hints.expired(start + Duration::from_secs(899)), None);
        assert_eq!(hints.expired(start + Duration::from_secs(900)), Some(10));
        assert_eq!(hints.expired(start + Duration::from_secs(950)), None);
        assert_eq!(hints.expired(start + Duration::from_secs(960)), Some(25));
        assert_eq!(hints.expired(start + Duration::from_secs(5000)), None);
    }

    #[test]
    fn samples_are_bounded_and_a_new_leader_starts_afresh() {
        let mut hints = Hints::new(Duration::from_secs(900), Duration::from_secs(30));
        let start = Instant::now();
        for i in 0..1000u64 {
            hints.sample(start + Duration::from_secs(30 * i), i);
        }
        assert!(hints.samples.len() <= 32, "{}", hints.samples.len());
        hints.clear();
        assert_eq!(hints.expired(start + Duration::from_secs(100_000)), None);
    }
}
