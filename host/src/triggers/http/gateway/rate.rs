//! Rate limits: a token bucket per caller (GCRA, `governor`'s keyed
//! limiter), and the `RateLimit-*` headers that tell a caller where it
//! stands (the IETF draft's convention).
//!
//! The bucket table is bounded: every so often, and whenever it holds
//! [`MAX_BUCKETS`], buckets that have filled up again (idle callers) are
//! dropped; if it is still full, new callers share one overflow bucket
//! until room is made.

use crate::values::gateway::RateLimit;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::HeaderValue;
use http::header::{HeaderMap, RETRY_AFTER};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The most callers one service's limit tracks at once.
pub const MAX_BUCKETS: usize = 100_000;

/// Checks between two sweeps of idle buckets.
const SWEEP_EVERY: u64 = 4096;

/// The key shared by callers beyond [`MAX_BUCKETS`].
const OVERFLOW: &str = "\u{0}overflow";

/// One service's rate limit.
pub struct Limiter {
    config: RateLimit,
    buckets:
        RateLimiter<String, DashMapStateStore<String>, DefaultClock, StateInformationMiddleware>,
    clock: DefaultClock,
    checks: AtomicU64,
}

/// Where a caller stands, for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The bucket's size.
    pub limit: u32,
    /// Requests left in it now.
    pub remaining: u32,
    /// Seconds until it is full again (or, refused, until the next request
    /// is allowed).
    pub reset: u64,
    /// Refused: seconds to wait.
    pub retry_after: Option<u64>,
}

impl Limiter {
    /// A limiter for `config`.
    pub fn new(config: &RateLimit) -> Limiter {
        let burst = NonZeroU32::new(config.burst()).unwrap_or(NonZeroU32::MIN);
        let period = config.rate.interval().max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let clock = DefaultClock::default();
        Limiter {
            config: config.clone(),
            buckets: RateLimiter::dashmap_with_clock(quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            clock,
            checks: AtomicU64::new(0),
        }
    }

    /// The configuration it enforces.
    pub fn config(&self) -> &RateLimit {
        &self.config
    }

    /// Takes a token from `caller`'s bucket, if there is one.
    pub fn check(&self, caller: &str) -> Standing {
        let caller = self.bucket_for(caller);
        let limit = self.config.burst();
        let interval = self.config.rate.interval();
        match self.buckets.check_key(&caller) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let empty = limit.saturating_sub(remaining);
                Standing {
                    limit,
                    remaining,
                    reset: ceil_secs(interval * empty),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let wait = ceil_secs(not_until.wait_time_from(self.clock.now())).max(1);
                Standing {
                    limit,
                    remaining: 0,
                    reset: wait,
                    retry_after: Some(wait),
                }
            }
        }
    }

    /// The bucket `caller` uses: its own, unless the table is full.
    fn bucket_for(&self, caller: &str) -> String {
        let n = self.checks.fetch_add(1, Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        if self.buckets.len() >= MAX_BUCKETS {
            self.sweep();
            if self.buckets.len() >= MAX_BUCKETS {
                return OVERFLOW.to_owned();
            }
        }
        caller.to_owned()
    }

    /// Drops the buckets that are full again.
    fn sweep(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Standing {
    /// Adds the `RateLimit-*` headers (and, refused, `Retry-After`).
    pub fn write(&self, headers: &mut HeaderMap, config: &RateLimit) {
        headers.insert("ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(self.reset));
        if let Ok(policy) = HeaderValue::from_str(&format!(
            "{};w={};burst={}",
            config.rate.count,
            config.rate.per.as_secs(),
            config.burst()
        )) {
            headers.insert("ratelimit-policy", policy);
        }
        if let Some(wait) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(wait));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: &str, burst: u32) -> Limiter {
        Limiter::new(&RateLimit {
            rate: rate.parse().unwrap(),
            burst: Some(burst),
            by: Default::default(),
        })
    }

    #[test]
    fn a_burst_then_refusals_per_caller() {
        let limiter = limit("1/m", 3);
        for left in [2, 1, 0] {
            let s = limiter.check("a");
            assert_eq!((s.limit, s.remaining, s.retry_after), (3, left, None));
        }
        let refused = limiter.check("a");
        assert_eq!(refused.remaining, 0);
        let wait = refused.retry_after.unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        // Another caller has a bucket of its own.
        assert_eq!(limiter.check("b").remaining, 2);
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn full_buckets_are_swept() {
        let limiter = limit("1000/s", 1);
        limiter.check("a");
        std::thread::sleep(Duration::from_millis(20));
        limiter.sweep();
        assert!(limiter.is_empty());
    }
}
