//! Rate-limited logging of bad input: at most one line per peer per interval, with the
//! number of events suppressed since the last one, so that a peer sending garbage (or
//! the wrong key) cannot fill the disk.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// At most one log line per peer per interval for bad input (the rest are counted).
pub const PEER_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Peers whose bad input is being counted; when full, the oldest entries are forgotten.
pub const PEER_LOG_ENTRIES: usize = 1024;

/// Counts bad input per peer and logs at most once per [`PEER_LOG_INTERVAL`] each.
#[derive(Debug, Default)]
pub struct PeerLog {
    peers: HashMap<IpAddr, (Instant, u64)>,
}

impl PeerLog {
    /// Returns how many earlier events were suppressed when this one should be logged.
    pub fn should_log(&mut self, peer: IpAddr, now: Instant) -> Option<u64> {
        if self.peers.len() >= PEER_LOG_ENTRIES && !self.peers.contains_key(&peer) {
            self.peers
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < PEER_LOG_INTERVAL);
            if self.peers.len() >= PEER_LOG_ENTRIES {
                self.peers.clear();
            }
        }
        match self.peers.get_mut(&peer) {
            Some((at, suppressed)) if now.saturating_duration_since(*at) < PEER_LOG_INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.peers.insert(peer, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_from_one_peer_is_logged_once_per_interval() {
        let mut log = PeerLog::default();
        let now = Instant::now();
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(log.should_log(peer, now), Some(0));
        assert_eq!(log.should_log(peer, now + Duration::from_secs(1)), None);
        assert_eq!(log.should_log(peer, now + Duration::from_secs(2)), None);
        assert_eq!(
            log.should_log(peer, now + PEER_LOG_INTERVAL + Duration::from_secs(1)),
            Some(2)
        );
        for i in 0..(PEER_LOG_ENTRIES * 2) {
            let ip = IpAddr::from([10, 1, (i / 256) as u8, (i % 256) as u8]);
            log.should_log(ip, now);
        }
        assert!(log.peers.len() <= PEER_LOG_ENTRIES);
    }
}
