//! A token bucket per client for the public tracking page (`TRACKING_PAGE_RATE_PER_MINUTE`,
//! `TRACKING_PAGE_BURST`): each client ([`crate::serve::client_of`] its TCP peer) may ask for `burst` pages at
//! once, then one each `60 / rate_per_minute` seconds; beyond that it is answered 429 with `Retry-After`.
//!
//! The map of clients is bounded ([`MAX_CLIENTS`]): a new client finding it full first drops every client whose
//! bucket is full again (it has nothing to remember), then, if none is, the one seen longest ago.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The most clients remembered at once (about 40 bytes each).
pub const MAX_CLIENTS: usize = 10_000;

pub struct RateLimit {
    /// Tokens per second.
    rate: f64,
    burst: f64,
    max_clients: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

impl RateLimit {
    pub fn new(rate_per_minute: usize, burst: usize) -> Self {
        Self::bounded(rate_per_minute, burst, MAX_CLIENTS)
    }

    fn bounded(rate_per_minute: usize, burst: usize, max_clients: usize) -> Self {
        Self {
            rate: rate_per_minute.max(1) as f64 / 60.0,
            burst: burst.max(1) as f64,
            max_clients: max_clients.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `client`: `Ok` when it had one, else `Err` with how long until it has.
    pub fn take(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !buckets.contains_key(&client) && buckets.len() >= self.max_clients {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.refilled(now, rate, burst) < burst);
            if buckets.len() >= self.max_clients
                && let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k)
            {
                buckets.remove(&oldest);
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let tokens = bucket.refilled(now, self.rate, self.burst);
        bucket.at = now;
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            Ok(())
        } else {
            bucket.tokens = tokens;
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn a_client_gets_its_burst_then_one_per_interval_and_others_are_not_affected() {
        let limit = RateLimit::new(60, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limit.take(ip(1), t0).is_ok());
        }
        let wait = limit.take(ip(1), t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limit.take(ip(2), t0).is_ok(), "another client");
        assert!(limit.take(ip(1), t0 + Duration::from_millis(500)).is_err());
        assert!(limit.take(ip(1), t0 + Duration::from_millis(1100)).is_ok());
        assert!(limit.take(ip(1), t0 + Duration::from_millis(1200)).is_err());
        // Refills up to the burst, no further.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(limit.take(ip(1), later).is_ok());
        }
        assert!(limit.take(ip(1), later).is_err());
    }

    #[test]
    fn the_map_stays_within_its_bound_and_forgets_refilled_clients_first() {
        let limit = RateLimit::bounded(60, 2, 3);
        let t0 = Instant::now();
        // Clients 1 and 3 are drained, 2 took one token.
        let t3 = t0 + Duration::from_millis(10);
        assert!(limit.take(ip(1), t0).is_ok());
        assert!(limit.take(ip(1), t0).is_ok());
        assert!(limit.take(ip(2), t0).is_ok());
        assert!(limit.take(ip(3), t3).is_ok());
        assert!(limit.take(ip(3), t3).is_ok());
        // 1.5 s later 2 is full again (1 token + 1.5): forgotten first; 1 and 3 (0 + about 1.5) still owe: kept.
        let t1 = t0 + Duration::from_millis(1500);
        assert!(limit.take(ip(4), t1).is_ok());
        assert_eq!(limit.clients(), 3);
        assert!(limit.take(ip(1), t1).is_ok());
        assert!(
            limit.take(ip(1), t1).is_err(),
            "client 1 was remembered as drained"
        );
        // Nobody refilled: the one seen longest ago (3) goes.
        assert!(limit.take(ip(5), t1).is_ok());
        assert_eq!(limit.clients(), 3);
        for n in 10..1000 {
            let _ = limit.take(ip(n), t1);
            assert!(limit.clients() <= 3);
        }
    }
}
