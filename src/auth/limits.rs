//! Keyed rate limits (GCRA, from `governor`) for logins and refreshes.
//!
//! Keys (IP addresses, usernames) come from unauthenticated requests, so the limiter must not grow with
//! them: each key is hashed (SipHash with a per-process random key, so buckets cannot be aimed at) into
//! one of [`BUCKETS`] buckets. Two keys sharing a bucket share a limit, which only makes limits stricter.

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// How many distinct limits a [`KeyedLimit`] holds at most (a few MiB of state).
pub const BUCKETS: u32 = 1 << 16;

/// A burst, then a steady rate per minute, per key.
pub struct KeyedLimit {
    limiter: DefaultKeyedRateLimiter<u32>,
    clock: DefaultClock,
    hasher: RandomState,
}

impl KeyedLimit {
    /// `burst` and `per_minute` are clamped to at least 1.
    #[must_use]
    pub fn new(burst: u32, per_minute: u32) -> Self {
        let one = NonZeroU32::MIN;
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(one))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(one));
        Self {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            hasher: RandomState::new(),
        }
    }

    /// Takes one cell for `key`; `Err(wait)` when the key is over its limit.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let bucket = (self.hasher.hash_one(key) % u64::from(BUCKETS)) as u32;
        self.limiter
            .check_key(&bucket)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets keys back at full burst (call now and then so the map stays small).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// `Retry-After` seconds for a wait: rounded up, at least 1.
#[must_use]
pub fn retry_after_s(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_waits_and_keys_are_independent() {
        let limit = KeyedLimit::new(3, 6);
        for _ in 0..3 {
            assert!(limit.check("a").is_ok());
        }
        let wait = limit.check("a").unwrap_err();
        assert!(
            wait > Duration::from_secs(8) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        assert_eq!(retry_after_s(wait), 10);
        assert!(limit.check("b").is_ok());
    }

    #[test]
    fn the_key_space_is_bounded_whatever_the_keys() {
        let limit = KeyedLimit::new(1, 1);
        for i in 0..200_000 {
            let _ = limit.check(&format!("user-{i}"));
        }
        assert!(
            limit.limiter.len() <= BUCKETS as usize,
            "{}",
            limit.limiter.len()
        );
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_s(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_s(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_s(Duration::ZERO), 1);
    }
}
