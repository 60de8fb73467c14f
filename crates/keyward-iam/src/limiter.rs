//! Per-principal rate limiting: a token bucket per identity, refilled continuously.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by principal name, sharded to keep contention off the hot path.
pub struct Limiter {
    rate: f64,
    burst: f64,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
}

impl Limiter {
    /// `rate` requests per second with bursts of `burst`; a rate of 0 disables limiting.
    pub fn new(rate: u32, burst: u32) -> Self {
        Limiter {
            rate: rate as f64,
            burst: burst.max(1) as f64,
            shards: (0..16).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes one token; false when the principal is over its rate.
    pub fn allow(&self, principal: &str) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let shard = principal
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
            % 16;
        let now = Instant::now();
        let mut map = self.shards[shard].lock();
        let bucket = match map.get_mut(principal) {
            Some(b) => b,
            None => map.entry(principal.to_string()).or_insert(Bucket {
                tokens: self.burst,
                last: now,
            }),
        };
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_throttles_per_principal() {
        let l = Limiter::new(1, 3);
        assert!(l.allow("a") && l.allow("a") && l.allow("a"));
        assert!(!l.allow("a"));
        assert!(l.allow("b"));
        assert!(Limiter::new(0, 0).allow("anyone"));
    }
}
