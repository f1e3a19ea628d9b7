//! A per-client rate limit: a token bucket per client address.
//!
//! Each address earns `rate` tokens a second up to `burst`, and each request spends one; a
//! request with no token left gets 429 with `Retry-After` (the seconds until a token is back).
//! The edge is the first place a flood meets, so this is where it is cut, before it costs the
//! origin anything.

use std::{collections::HashMap, net::IpAddr, time::Instant};

use parking_lot::Mutex;

/// Addresses tracked at once. Past this, buckets that are full again (clients quiet for a
/// while) are forgotten; a flood from more addresses than this still meets the limit, as
/// forgotten addresses start from a full bucket, never an empty one.
pub const MAX_TRACKED: usize = 65_536;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by client address.
pub struct RateLimit {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimit {
    /// `rate` requests a second per address, bursts up to `burst`.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// `Ok` if `client` may make a request at `now`, else the seconds to wait.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&client) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let earned = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + earned).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let limit = RateLimit::new(10, 20);
        let (a, b) = (
            "127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}")),
            "127.0.0.2".parse().unwrap_or_else(|e| panic!("{e}")),
        );
        let t0 = Instant::now();
        for _ in 0..20 {
            assert_eq!(limit.check(a, t0), Ok(()));
        }
        assert_eq!(
            limit.check(a, t0),
            Err(1),
            "burst spent: wait about a tenth of a second, said as 1 s"
        );
        assert_eq!(
            limit.check(b, t0),
            Ok(()),
            "another client has its own bucket"
        );
        // a second later, ten more
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..10 {
            assert_eq!(limit.check(a, t1), Ok(()));
        }
        assert!(limit.check(a, t1).is_err());
    }
}
