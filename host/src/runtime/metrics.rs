//! Metrics in the Prometheus text format, served at `/metrics` on the admin
//! listener. Every name starts with `berth_`.
//!
//! Kept rather than the `prometheus-client` crate: there, a histogram's
//! `observe` takes a mutex (measured 25 ns alone, 65 ns with two threads,
//! against a few for these atomics, on every invocation) and a family's
//! lookup a lock and a hash; the text written here is the 0.0.4 format,
//! about a hundred lines.
//!
//! Per service, counters and histograms are plain atomics reached through
//! an `Arc` the service holds, so recording an invocation takes no lock;
//! gauges (instances in flight, queue depth, loaded, event queues) are read
//! when the metrics are scraped. A service's counters and histograms
//! appear once they count something, so that thousands of idle services
//! cost a few gauge lines each.

use crate::values::gateway::EdgeRefusal;
use crate::values::usage::{OutcomeKind, Trigger};
use crate::wasm::cache::CacheOutcome;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Histogram bucket bounds of durations, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Histogram bucket bounds of fuel.
const FUEL_BUCKETS: &[f64] = &[1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11];

/// Escapes a label value (backslash, double quote, newline).
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Observations past the last bound.
    over: AtomicU64,
    /// Sum of observations, in millionths.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            over: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        match self.bounds.iter().position(|b| value <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// One service's counters and histograms.
#[derive(Debug)]
pub struct ServiceMetrics {
    /// [trigger][outcome]
    invocations: Vec<Vec<AtomicU64>>,
    /// Per trigger.
    duration: Vec<Histogram>,
    fuel: Histogram,
    cold_starts: AtomicU64,
    cold_start_duration: Histogram,
    /// Time waiting for admission, of invocations admitted or refused
    /// there.
    queue: Histogram,
    /// Requests the edge refused, per [`EdgeRefusal`].
    edge: [AtomicU64; 3],
}

impl ServiceMetrics {
    fn new() -> Self {
        ServiceMetrics {
            invocations: Trigger::ALL
                .iter()
                .map(|_| OutcomeKind::ALL.iter().map(|_| AtomicU64::new(0)).collect())
                .collect(),
            duration: Trigger::ALL
                .iter()
                .map(|_| Histogram::new(DURATION_BUCKETS))
                .collect(),
            fuel: Histogram::new(FUEL_BUCKETS),
            cold_starts: AtomicU64::new(0),
            cold_start_duration: Histogram::new(DURATION_BUCKETS),
            queue: Histogram::new(DURATION_BUCKETS),
            edge: Default::default(),
        }
    }

    /// Records a request the edge refused.
    pub fn edge_refusal(&self, reason: EdgeRefusal) {
        self.edge[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Records an invocation: its outcome, and for one that ran, its
    /// execution time and fuel.
    pub fn invocation(&self, trigger: Trigger, outcome: OutcomeKind, seconds: f64, fuel: u64) {
        let t = trigger.index();
        self.invocations[t][outcome.index()].fetch_add(1, Ordering::Relaxed);
        if outcome.ran() {
            self.duration[t].observe(seconds);
            self.fuel.observe(fuel as f64);
        }
    }

    /// Records how long an invocation waited for admission.
    pub fn queued(&self, seconds: f64) {
        self.queue.observe(seconds);
    }

    /// Records a cold start.
    pub fn cold_start(&self, seconds: f64) {
        self.cold_starts.fetch_add(1, Ordering::Relaxed);
        self.cold_start_duration.observe(seconds);
    }

    /// Cold starts so far.
    pub fn cold_starts(&self) -> u64 {
        self.cold_starts.load(Ordering::Relaxed)
    }

    /// Its counters now, over every trigger: what the console's traffic
    /// history is made of.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for (t, outcomes) in self.invocations.iter().enumerate() {
            for (kind, n) in OutcomeKind::ALL.iter().zip(outcomes) {
                let n = n.load(Ordering::Relaxed);
                counts.invocations += n;
                if *kind != OutcomeKind::Ok {
                    counts.errors += n;
                }
            }
            let h = &self.duration[t];
            for (i, n) in h.counts.iter().enumerate() {
                counts.duration[i] += n.load(Ordering::Relaxed);
            }
            counts.duration[DURATION_BUCKETS.len()] += h.over.load(Ordering::Relaxed);
        }
        counts.cold_starts = self.cold_starts();
        counts
    }
}

/// A service's counters at one moment, summed over its triggers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Invocations.
    pub invocations: u64,
    /// Of which did not end `ok` (failed or rejected).
    pub errors: u64,
    /// Of which cold starts.
    pub cold_starts: u64,
    /// Execution times of those that ran, per bucket of the duration
    /// histogram (not cumulative), the last past its last bound.
    pub duration: [u64; DURATION_BUCKETS.len() + 1],
}

impl Counts {
    /// What was counted since `earlier`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut d = Counts {
            invocations: self.invocations.saturating_sub(earlier.invocations),
            errors: self.errors.saturating_sub(earlier.errors),
            cold_starts: self.cold_starts.saturating_sub(earlier.cold_starts),
            duration: [0; DURATION_BUCKETS.len() + 1],
        };
        for (i, n) in d.duration.iter_mut().enumerate() {
            *n = self.duration[i].saturating_sub(earlier.duration[i]);
        }
        d
    }

    /// The `q` quantile (0 to 1) of the execution times, in seconds,
    /// interpolated within its bucket as Prometheus' `histogram_quantile`
    /// does; `None` without any.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.duration.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0.0;
        for (i, n) in self.duration.iter().enumerate() {
            let n = *n as f64;
            if n > 0.0 && seen + n >= rank {
                let low = if i == 0 { 0.0 } else { DURATION_BUCKETS[i - 1] };
                let Some(high) = DURATION_BUCKETS.get(i) else {
                    // Past the last bound: the bound is all that is known.
                    return Some(low);
                };
                return Some(low + (high - low) * ((rank - seen) / n));
            }
            seen += n;
        }
        DURATION_BUCKETS.last().copied()
    }
}

/// The host's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    services: RwLock<HashMap<String, Arc<ServiceMetrics>>>,
    /// hit, miss, rebuilt, uncached
    code_cache: [AtomicU64; 4],
    /// Spans exported, dropped for a full queue, dropped for a failed
    /// export.
    trace_spans: [AtomicU64; 3],
}

/// What became of spans handed to the trace exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanFate {
    /// The collector took them.
    Exported,
    /// The exporter's queue was full.
    QueueFull,
    /// The collector refused them, failed or took too long.
    ExportFailed,
}

/// A gauge value read at scrape time: (name, help, labels, value).
pub type Gauge = (&'static str, &'static str, String, f64);

impl Metrics {
    /// The metrics of `service` (created on first use, kept across
    /// revisions).
    pub fn service(&self, service: &str) -> Arc<ServiceMetrics> {
        if let Some(m) = self
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
        {
            return m.clone();
        }
        self.services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(service.to_owned())
            .or_insert_with(|| Arc::new(ServiceMetrics::new()))
            .clone()
    }

    /// Records how a component's compiled code was obtained.
    pub fn code_cache(&self, outcome: &CacheOutcome) {
        let i = match outcome {
            CacheOutcome::Hit => 0,
            CacheOutcome::Miss => 1,
            CacheOutcome::Rebuilt(_) => 2,
            CacheOutcome::Uncached(_) => 3,
        };
        self.code_cache[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Every service's [`Counts`] now.
    pub fn counts(&self) -> Vec<(String, Counts)> {
        let services = self.services.read().unwrap_or_else(|e| e.into_inner());
        services
            .iter()
            .map(|(name, m)| (name.clone(), m.counts()))
            .collect()
    }

    /// Counts `n` spans that met `fate`.
    pub fn trace_spans(&self, fate: SpanFate, n: u64) {
        self.trace_spans[fate as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Spans that met `fate` so far.
    pub fn trace_spans_total(&self, fate: SpanFate) -> u64 {
        self.trace_spans[fate as usize].load(Ordering::Relaxed)
    }

    /// Renders everything, with the `gauges` read now.
    pub fn render(&self, gauges: &[Gauge]) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let services = self.services.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&String> = services.keys().collect();
        names.sort();
        let services: Vec<(&String, &ServiceMetrics)> = names
            .into_iter()
            .map(|name| (name, &*services[name]))
            .collect();
        render_invocations(&mut out, &services);
        render_histograms(&mut out, &services);
        render_cold_starts(&mut out, &services);
        render_edge(&mut out, &services);
        out.push_str("# HELP berth_code_cache_total Compiled components obtained, by how.\n# TYPE berth_code_cache_total counter\n");
        for (i, result) in ["hit", "miss", "rebuilt", "uncached"].iter().enumerate() {
            let _ = writeln!(
                out,
                "berth_code_cache_total{{result=\"{result}\"}} {}",
                self.code_cache[i].load(Ordering::Relaxed)
            );
        }
        let spans = |fate| self.trace_spans_total(fate);
        let _ = write!(
            out,
            "# HELP berth_trace_spans_exported_total Spans the OTLP collector took.\n\
             # TYPE berth_trace_spans_exported_total counter\n\
             berth_trace_spans_exported_total {}\n\
             # HELP berth_trace_spans_dropped_total Spans dropped, by why: the exporter's queue was full, or the collector failed or was too slow.\n\
             # TYPE berth_trace_spans_dropped_total counter\n\
             berth_trace_spans_dropped_total{{reason=\"queue_full\"}} {}\n\
             berth_trace_spans_dropped_total{{reason=\"export_failed\"}} {}\n",
            spans(SpanFate::Exported),
            spans(SpanFate::QueueFull),
            spans(SpanFate::ExportFailed),
        );
        render_gauges(&mut out, gauges);
        out
    }
}

/// `berth_invocations_total`, by service, trigger and outcome.
fn render_invocations(out: &mut String, services: &[(&String, &ServiceMetrics)]) {
    out.push_str("# HELP berth_invocations_total Invocations, by service, trigger and outcome.\n# TYPE berth_invocations_total counter\n");
    for (name, m) in services {
        for trigger in Trigger::ALL {
            for outcome in OutcomeKind::ALL {
                let n = m.invocations[trigger.index()][outcome.index()].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "berth_invocations_total{{service=\"{name}\",trigger=\"{trigger}\",outcome=\"{outcome}\"}} {n}",
                    );
                }
            }
        }
    }
}

/// The duration (per trigger) and fuel histograms of the invocations that
/// ran.
fn render_histograms(out: &mut String, services: &[(&String, &ServiceMetrics)]) {
    out.push_str("# HELP berth_invocation_duration_seconds Execution time of invocations that ran.\n# TYPE berth_invocation_duration_seconds histogram\n");
    for (name, m) in services {
        for trigger in Trigger::ALL {
            let h = &m.duration[trigger.index()];
            if h.count.load(Ordering::Relaxed) > 0 {
                let labels = format!("service=\"{name}\",trigger=\"{trigger}\"");
                h.render(out, "berth_invocation_duration_seconds", &labels);
            }
        }
    }
    out.push_str("# HELP berth_invocation_queue_seconds Time invocations waited for admission (a slot of the service and of the host).\n# TYPE berth_invocation_queue_seconds histogram\n");
    for (name, m) in services {
        if m.queue.count.load(Ordering::Relaxed) > 0 {
            let labels = format!("service=\"{name}\"");
            m.queue
                .render(out, "berth_invocation_queue_seconds", &labels);
        }
    }
    out.push_str("# HELP berth_invocation_fuel Fuel consumed by invocations that ran.\n# TYPE berth_invocation_fuel histogram\n");
    for (name, m) in services {
        if m.fuel.count.load(Ordering::Relaxed) > 0 {
            let labels = format!("service=\"{name}\"");
            m.fuel.render(out, "berth_invocation_fuel", &labels);
        }
    }
}

/// Cold starts: how many, and how long they took.
fn render_cold_starts(out: &mut String, services: &[(&String, &ServiceMetrics)]) {
    out.push_str("# HELP berth_cold_starts_total Invocations that had to load their service's component first.\n# TYPE berth_cold_starts_total counter\n");
    for (name, m) in services {
        let n = m.cold_starts();
        if n > 0 {
            let _ = writeln!(out, "berth_cold_starts_total{{service=\"{name}\"}} {n}");
        }
    }
    out.push_str("# HELP berth_cold_start_duration_seconds Time to load a component on a cold start.\n# TYPE berth_cold_start_duration_seconds histogram\n");
    for (name, m) in services {
        let h = &m.cold_start_duration;
        if h.count.load(Ordering::Relaxed) > 0 {
            let labels = format!("service=\"{name}\"");
            h.render(out, "berth_cold_start_duration_seconds", &labels);
        }
    }
}

/// Requests refused at the edge, by service and reason.
fn render_edge(out: &mut String, services: &[(&String, &ServiceMetrics)]) {
    out.push_str("# HELP berth_edge_rejections_total Requests refused at the edge (authentication, rate limits) before an instance started.\n# TYPE berth_edge_rejections_total counter\n");
    for (name, m) in services {
        for reason in EdgeRefusal::ALL {
            let n = m.edge[reason.index()].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "berth_edge_rejections_total{{service=\"{name}\",reason=\"{}\"}} {n}",
                    reason.as_str()
                );
            }
        }
    }
}

/// Gauges read at scrape time, one HELP/TYPE per family.
fn render_gauges(out: &mut String, gauges: &[Gauge]) {
    let mut last = "";
    for (name, help, labels, value) in gauges {
        if *name != last {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            last = name;
        }
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_quantiles() {
        let metrics = Metrics::default();
        let hello = metrics.service("hello");
        let before = hello.counts();
        assert_eq!(before.quantile(0.5), None);
        for _ in 0..90 {
            hello.invocation(Trigger::Http, OutcomeKind::Ok, 0.0007, 1);
        }
        for _ in 0..9 {
            hello.invocation(Trigger::Event, OutcomeKind::Trap, 0.2, 1);
        }
        hello.invocation(Trigger::Http, OutcomeKind::Ok, 100.0, 1);
        hello.invocation(Trigger::Http, OutcomeKind::Rejected, 0.0, 0);
        let d = hello.counts().since(&before);
        assert_eq!((d.invocations, d.errors), (101, 10));
        assert_eq!(d.duration.iter().sum::<u64>(), 100);
        // 90 in (0.0005, 0.001]: the median is interpolated in it.
        let p50 = d.quantile(0.5).unwrap();
        assert!(p50 > 0.0005 && p50 <= 0.001, "{p50}");
        // The 99th is in (0.1, 0.25]; the 100th past the last bound.
        let p99 = d.quantile(0.99).unwrap();
        assert!(p99 > 0.1 && p99 <= 0.25, "{p99}");
        assert_eq!(d.quantile(1.0), Some(30.0));
        assert_eq!(metrics.counts().len(), 1);
    }

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        let hello = metrics.service("hello");
        hello.invocation(Trigger::Http, OutcomeKind::Ok, 0.002, 50_000);
        hello.invocation(Trigger::Http, OutcomeKind::Trap, 0.02, 5_000_000);
        hello.invocation(Trigger::Http, OutcomeKind::Rejected, 0.0, 0);
        hello.cold_start(0.003);
        metrics.code_cache(&CacheOutcome::Hit);
        let text = metrics.render(&[(
            "berth_instances_in_flight",
            "Instances running now.",
            "service=\"hello\"".into(),
            2.0,
        )]);
        assert!(text.contains(
            "berth_invocations_total{service=\"hello\",trigger=\"http\",outcome=\"ok\"} 1"
        ));
        assert!(text.contains(
            "berth_invocations_total{service=\"hello\",trigger=\"http\",outcome=\"rejected\"} 1"
        ));
        assert!(text.contains("berth_invocation_duration_seconds_bucket{service=\"hello\",trigger=\"http\",le=\"0.0025\"} 1"));
        assert!(text.contains(
            "berth_invocation_duration_seconds_count{service=\"hello\",trigger=\"http\"} 2"
        ));
        assert!(text.contains("berth_cold_starts_total{service=\"hello\"} 1"));
        assert!(text.contains("berth_code_cache_total{result=\"hit\"} 1"));
        assert!(text.contains(
            "# TYPE berth_instances_in_flight gauge\nberth_instances_in_flight{service=\"hello\"} 2"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("berth_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
