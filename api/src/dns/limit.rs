//! Per-source rate limiting of DNS queries (`limits.dns_rate_per_source`): a token
//! bucket per client address, refilled at the configured rate with a burst of one
//! second's worth. A query over the limit gets no answer at all, so a spoofed source
//! cannot turn the agent into an amplifier.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Client addresses tracked at most; when full, idle ones are forgotten.
pub(crate) const MAX_SOURCES: usize = 65_536;

/// The buckets of every client address.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter allowing `per_second` queries per second from each address (at least 1).
    pub(crate) fn new(per_second: u32) -> RateLimiter {
        RateLimiter {
            per_second: f64::from(per_second.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a query from `ip` at `now` is within its limit (and counts it).
    pub(crate) fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&ip) {
            // A bucket idle for a second is full again: forgetting it loses nothing.
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs_f64() < 1.0);
            if buckets.len() >= MAX_SOURCES {
                buckets.clear();
            }
        }
        let burst = self.per_second;
        let (tokens, at) = buckets.entry(ip).or_insert((burst, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * self.per_second;
        *tokens = (*tokens + refill).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_source_gets_its_rate_and_a_burst_of_one_second() {
        let limiter = RateLimiter::new(10);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        let allowed = (0..25).filter(|_| limiter.allow(a, t0)).count();
        assert_eq!(allowed, 10, "the burst");
        assert!(limiter.allow(b, t0), "another source has its own bucket");
        assert!(!limiter.allow(a, t0 + Duration::from_millis(50)));
        assert!(
            limiter.allow(a, t0 + Duration::from_millis(150)),
            "refilled"
        );
        let later = t0 + Duration::from_secs(5);
        assert_eq!(
            (0..25).filter(|_| limiter.allow(a, later)).count(),
            10,
            "capped at the burst"
        );
    }

    #[test]
    fn the_table_of_sources_stays_bounded() {
        let limiter = RateLimiter::new(1);
        let now = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            limiter.allow(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_SOURCES);
    }
}
