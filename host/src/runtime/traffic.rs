//! Each service's traffic over the last hour, for the operator console:
//! invocations, errors and execution-time percentiles at a fixed
//! resolution, made from the same counters `/metrics` serves (sampled,
//! never counted twice).
//!
//! A service costs nothing here until it is invoked, then at most
//! [`SLOTS`] points of 16 bytes and a few snapshots of its counters; one
//! idle for an hour is forgotten.

use crate::runtime::metrics::{Counts, Metrics};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// The time one point covers.
pub const RESOLUTION: Duration = Duration::from_secs(10);

/// Points kept: an hour.
pub const SLOTS: usize = 360;

/// Snapshots of the counters kept, for the last minute's figures.
const RECENT: usize = 7;

/// What a service did in one [`RESOLUTION`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// The end of the period (ms since the epoch).
    pub at_ms: i64,
    /// Invocations.
    pub invocations: u32,
    /// Of which did not end `ok`.
    pub errors: u32,
    /// Median execution time, in seconds (0 without any).
    pub p50: f32,
    /// 99th percentile, in seconds.
    pub p99: f32,
}

/// A service's figures over a recent period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The period, in seconds.
    pub seconds: f64,
    /// Invocations per second.
    pub rate: f64,
    /// Share of them that did not end `ok` (0 to 1).
    pub error_ratio: f64,
    /// Share of them that were cold starts (0 to 1).
    pub cold_ratio: f64,
    /// Execution time percentiles, in seconds.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

#[derive(Debug, Default)]
struct History {
    points: VecDeque<Point>,
    /// The latest snapshots of the counters (ms, counts), newest last.
    recent: VecDeque<(i64, Counts)>,
}

/// Every service's history.
#[derive(Debug, Default)]
pub struct Traffic {
    services: Mutex<HashMap<String, History>>,
}

impl Traffic {
    /// Takes one sample of `metrics` at `now_ms`.
    pub fn sample(&self, metrics: &Metrics, now_ms: i64) {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        for (name, counts) in metrics.counts() {
            let history = match services.get_mut(&name) {
                Some(history) => history,
                // A service never invoked costs nothing.
                None if counts.invocations == 0 => continue,
                // First seen: what it did before is in no period.
                None => services.entry(name).or_default(),
            };
            let delta = match history.recent.back() {
                Some((_, last)) => counts.since(last),
                None => Counts::default(),
            };
            if history.recent.len() == RECENT {
                history.recent.pop_front();
            }
            history.recent.push_back((now_ms, counts));
            // Dormant (no points) until it is invoked again.
            if history.points.is_empty() && delta.invocations == 0 {
                continue;
            }
            if history.points.len() == SLOTS {
                history.points.pop_front();
            }
            history.points.push_back(Point {
                at_ms: now_ms,
                invocations: delta.invocations.min(u32::MAX as u64) as u32,
                errors: delta.errors.min(u32::MAX as u64) as u32,
                p50: delta.quantile(0.5).unwrap_or(0.0) as f32,
                p99: delta.quantile(0.99).unwrap_or(0.0) as f32,
            });
            // Idle for an hour: dormant again, its points freed.
            if history.points.len() == SLOTS && history.points.iter().all(|p| p.invocations == 0) {
                history.points = VecDeque::new();
            }
        }
    }

    /// A service's points, oldest first (empty for one not invoked in the
    /// last hour).
    pub fn points(&self, service: &str) -> Vec<Point> {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        services
            .get(service)
            .map(|h| h.points.iter().copied().collect())
            .unwrap_or_default()
    }

    /// A service's figures from its oldest kept snapshot (about a minute
    /// ago) to `now`, its counters as they are now.
    pub fn summary(&self, service: &str, now: &Counts, now_ms: i64) -> Option<Summary> {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let (then_ms, then) = services.get(service)?.recent.front()?;
        let seconds = (now_ms - then_ms) as f64 / 1000.0;
        if seconds <= 0.0 {
            return None;
        }
        let d = now.since(then);
        let share = |n: u64| {
            if d.invocations == 0 {
                0.0
            } else {
                n as f64 / d.invocations as f64
            }
        };
        Some(Summary {
            seconds,
            rate: d.invocations as f64 / seconds,
            error_ratio: share(d.errors),
            cold_ratio: share(d.cold_starts),
            p50: d.quantile(0.5),
            p99: d.quantile(0.99),
        })
    }

    /// Samples `metrics` every [`RESOLUTION`] until `stop`.
    pub async fn run(
        self: std::sync::Arc<Self>,
        runtime: std::sync::Weak<crate::runtime::Runtime>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(RESOLUTION);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let Some(runtime) = runtime.upgrade() else {
                return;
            };
            self.sample(runtime.metrics(), crate::values::units::now_ms());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::usage::{OutcomeKind, Trigger};

    #[test]
    fn points_are_what_happened_between_samples() {
        let metrics = Metrics::default();
        let traffic = Traffic::default();
        metrics.service("idle");
        let hello = metrics.service("hello");
        hello.invocation(Trigger::Http, OutcomeKind::Ok, 0.001, 1);
        traffic.sample(&metrics, 10_000);
        // Not invoked: nothing kept. Invoked before the first sample: in
        // no point.
        assert!(traffic.points("idle").is_empty());
        assert!(traffic.points("hello").is_empty());
        for _ in 0..20 {
            hello.invocation(Trigger::Http, OutcomeKind::Ok, 0.003, 1);
        }
        hello.invocation(Trigger::Http, OutcomeKind::Trap, 0.003, 1);
        hello.cold_start(0.01);
        traffic.sample(&metrics, 20_000);
        let points = traffic.points("hello");
        assert_eq!(points.len(), 1);
        assert_eq!((points[0].invocations, points[0].errors), (21, 1));
        assert!(points[0].p50 > 0.0025 && points[0].p50 <= 0.005);
        let summary = traffic
            .summary("hello", &hello.counts(), 20_000)
            .expect("a summary");
        assert_eq!(summary.seconds, 10.0);
        assert!((summary.rate - 2.1).abs() < 1e-9);
        assert!((summary.error_ratio - 1.0 / 21.0).abs() < 1e-9);
        assert!((summary.cold_ratio - 1.0 / 21.0).abs() < 1e-9);
        // Within the hour: a point per sample, zero when idle.
        traffic.sample(&metrics, 30_000);
        assert_eq!(traffic.points("hello").len(), 2);
        // An hour of samples: at most SLOTS points; idle for all of them,
        // it keeps none, until it is invoked again.
        for i in 0..(SLOTS as i64) {
            traffic.sample(&metrics, 40_000 + i * 10_000);
        }
        assert!(traffic.points("hello").is_empty());
        hello.invocation(Trigger::Http, OutcomeKind::Ok, 0.003, 1);
        traffic.sample(&metrics, 10_000_000);
        let points = traffic.points("hello");
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].invocations, 1);
    }
}
