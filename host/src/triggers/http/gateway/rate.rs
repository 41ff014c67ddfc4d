//! Rate limits: a token bucket per caller, kept as GCRA (one "theoretical
//! arrival time" per caller), and the `RateLimit-*` headers that tell a
//! caller where it stands (the IETF draft's convention).
//!
//! Kept rather than `governor`'s keyed limiter: the edge must bound its
//! table without ever moving a known caller out of its own bucket, and
//! governor's store can neither tell a known caller from a new one nor
//! evict by age.
//!
//! The table is split in 16 shards of at most
//! [`MAX_BUCKETS`]` / 16` callers each. A shard that is full drops the
//! buckets that have filled up again (idle callers: they would start full
//! anyway) — at most once a second — and, if none has, the eighth closest
//! to full. A known caller is never moved into another's bucket; a flood
//! of new callers costs the busiest callers nothing, and the evicted ones
//! (nearly full already) a bucket that starts over.

use crate::values::gateway::RateLimit;
use http::HeaderValue;
use http::header::{HeaderMap, RETRY_AFTER};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most callers one service's limit tracks at once.
pub const MAX_BUCKETS: usize = 100_000;

/// Shards of the table (callers are spread over them by hash).
const SHARDS: usize = 16;

/// One service's rate limit.
pub struct Limiter {
    config: RateLimit,
    /// Time one request's token takes to come back.
    interval: Duration,
    /// How far ahead of now a caller's arrival time may run: a full
    /// bucket's worth minus one.
    tolerance: Duration,
    epoch: Instant,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Default)]
struct Shard {
    /// Caller → its theoretical arrival time (since `epoch`).
    tats: HashMap<String, Duration>,
    /// When idle buckets were last dropped.
    swept: Option<Instant>,
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
        let interval = config.rate.interval().max(Duration::from_nanos(1));
        Limiter {
            config: config.clone(),
            interval,
            tolerance: interval * (config.burst() - 1),
            epoch: Instant::now(),
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    /// The configuration it enforces.
    pub fn config(&self) -> &RateLimit {
        &self.config
    }

    /// Takes a token from `caller`'s bucket, if there is one.
    pub fn check(&self, caller: &str) -> Standing {
        self.check_at(caller, Instant::now())
    }

    fn check_at(&self, caller: &str, at: Instant) -> Standing {
        let now = at.saturating_duration_since(self.epoch);
        let limit = self.config.burst();
        let mut shard = self.shard(caller).lock().unwrap_or_else(|e| e.into_inner());
        let tat = match shard.tats.get(caller) {
            Some(tat) => (*tat).max(now),
            None => {
                self.make_room(&mut shard, now, at);
                now
            }
        };
        let ahead = tat - now;
        if ahead > self.tolerance {
            // Refused: the caller's bucket is empty until its arrival time
            // falls back within the tolerance.
            shard.tats.entry(caller.to_owned()).or_insert(tat);
            let wait = ceil_secs(ahead - self.tolerance).max(1);
            return Standing {
                limit,
                remaining: 0,
                reset: wait,
                retry_after: Some(wait),
            };
        }
        let new_tat = tat + self.interval;
        shard.tats.insert(caller.to_owned(), new_tat);
        let used = (new_tat - now)
            .as_nanos()
            .div_ceil(self.interval.as_nanos().max(1));
        Standing {
            limit,
            remaining: limit.saturating_sub(u32::try_from(used).unwrap_or(u32::MAX)),
            reset: ceil_secs(new_tat - now),
            retry_after: None,
        }
    }

    fn shard(&self, caller: &str) -> &Mutex<Shard> {
        &self.shards[self.hasher.hash_one(caller) as usize % SHARDS]
    }

    /// Makes room in a full shard for a new caller: drops the buckets that
    /// are full again (at most once a second), else the one closest to
    /// full.
    fn make_room(&self, shard: &mut Shard, now: Duration, at: Instant) {
        let capacity = MAX_BUCKETS / SHARDS;
        if shard.tats.len() < capacity {
            return;
        }
        if shard
            .swept
            .is_none_or(|last| at.saturating_duration_since(last) >= Duration::from_secs(1))
        {
            shard.swept = Some(at);
            shard.tats.retain(|_, tat| *tat > now);
            if shard.tats.len() < capacity {
                shard.tats.shrink_to(capacity);
                return;
            }
        }
        // Still full: drop the eighth of the buckets closest to full, so
        // the next newcomers find room at once (one scan per eighth of a
        // shard, not per newcomer).
        let mut tats: Vec<Duration> = shard.tats.values().copied().collect();
        let cut = tats.len() / 8;
        let (_, cutoff, _) = tats.select_nth_unstable(cut);
        let cutoff = *cutoff;
        let mut dropped = 0;
        shard.tats.retain(|_, tat| {
            let drop = *tat <= cutoff && dropped <= cut;
            dropped += usize::from(drop);
            !drop
        });
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).tats.len())
            .sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        assert!((59..=60).contains(&wait), "{wait}");
        // Another caller has a bucket of its own.
        assert_eq!(limiter.check("b").remaining, 2);
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn buckets_refill_at_the_rate() {
        let limiter = limit("10/s", 2);
        let t0 = Instant::now();
        assert!(limiter.check_at("a", t0).retry_after.is_none());
        assert!(limiter.check_at("a", t0).retry_after.is_none());
        assert!(limiter.check_at("a", t0).retry_after.is_some());
        // One token back after 100 ms.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(limiter.check_at("a", t1).retry_after, None);
        assert!(limiter.check_at("a", t1).retry_after.is_some());
        // Full again after 200 ms idle.
        let t2 = t1 + Duration::from_millis(300);
        assert_eq!(limiter.check_at("a", t2).remaining, 1);
    }

    #[test]
    fn a_flood_of_new_callers_never_moves_a_known_one() {
        let limiter = limit("1/h", 2);
        let t0 = Instant::now();
        assert_eq!(limiter.check_at("known", t0).remaining, 1);
        assert_eq!(limiter.check_at("known", t0).remaining, 0);
        // Each flooding caller spends one token: their buckets are closer
        // to full than the known caller's, which is never the one evicted.
        for i in 0..(MAX_BUCKETS * 2) {
            limiter.check_at(&format!("flood-{i}"), t0);
        }
        assert!(limiter.len() <= MAX_BUCKETS);
        // Still its own, empty bucket: refused (a fresh one would not be).
        assert!(limiter.check_at("known", t0).retry_after.is_some());
    }

    #[test]
    fn full_buckets_are_swept_when_room_is_needed() {
        let limiter = limit("1000/s", 1);
        let t0 = Instant::now();
        for i in 0..(MAX_BUCKETS * 2) {
            limiter.check_at(&format!("c{i}"), t0);
        }
        let full = limiter.len();
        assert!(full <= MAX_BUCKETS && full > MAX_BUCKETS * 3 / 4, "{full}");
        // Newcomers fill each shard again, and find it full of buckets that
        // are full again: each shard is swept.
        let later = t0 + Duration::from_secs(2);
        for i in 0..(MAX_BUCKETS / 4) {
            limiter.check_at(&format!("new{i}"), later);
        }
        let swept = limiter.len();
        assert!(swept < full / 2, "{full} → {swept}");
    }
}
