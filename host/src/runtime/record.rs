//! Metering: the usage record of one invocation while it runs, and where
//! it goes when it is complete — the service's metrics, the ledger (a
//! [`UsageSink`] the host plugs in) and the invocation's log span.
//!
//! A record is complete once nobody holds it: the pipeline holds it until
//! the guest's run has ended; whoever started the invocation may hold it
//! longer (an HTTP response's body, until it is sent or dropped).

use crate::runtime::logs::{Level, LogBook};
use crate::runtime::metrics::ServiceMetrics;
use crate::runtime::registry::Service;
use crate::values::id::InvocationId;
use crate::values::trace::{Attr, SpanKind, SpanRecord, Spans, TraceContext};
use crate::values::units::now_ms;
use crate::values::usage::{OutcomeKind, Record, Trigger};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Where complete usage records go: the usage ledger.
pub trait UsageSink: Send + Sync + 'static {
    /// Takes one record (queued; the sink says when it is durable).
    fn record(&self, record: Record);
}

/// The host's usage sink, plugged in once (a host may keep no ledger).
#[derive(Default)]
pub struct Meter {
    sink: OnceLock<Arc<dyn UsageSink>>,
    /// Where each invocation's closing line is kept, if anywhere.
    logs: OnceLock<Arc<LogBook>>,
}

impl Meter {
    /// Plugs in the sink (once; later calls change nothing).
    pub fn set_sink(&self, sink: Arc<dyn UsageSink>) {
        let _ = self.sink.set(sink);
    }

    /// Keeps each invocation's closing line in `logs` (once).
    pub fn set_logs(&self, logs: Arc<LogBook>) {
        let _ = self.logs.set(logs);
    }

    fn record(&self, record: Record) {
        if let Some(sink) = self.sink.get() {
            sink.record(record);
        }
    }
}

/// The log span of one invocation. Its fields are known from the start
/// (`service`, `revision`, `invocation`, `trigger`, `trace_id`), set by
/// the trigger (`route`, `method`, `path`; `topic`, `event`, `attempt`;
/// `caller`, the calling invocation, for a service call; `instance`, the
/// invocation a reused instance was made for, and `reused`, how many it
/// served before this one) or recorded when
/// the invocation is metered (`status`, `outcome`, `fuel`, `duration_ms`,
/// `queue_ms`, `load_ms`, `cpu_ms`, `memory`, `cold`); then one event,
/// target `berth::invocation`, says it finished.
pub fn span(
    service: &Service,
    id: InvocationId,
    trigger: Trigger,
    trace: &TraceContext,
) -> tracing::Span {
    use tracing::field::Empty;
    tracing::info_span!(
        "invocation",
        service = %service.name(),
        revision = service.revision,
        invocation = %id,
        trigger = trigger.as_str(),
        trace_id = %trace.trace_id(),
        route = Empty,
        method = Empty,
        path = Empty,
        topic = Empty,
        event = Empty,
        attempt = Empty,
        caller = Empty,
        instance = Empty,
        reused = Empty,
        status = Empty,
        outcome = Empty,
        fuel = Empty,
        duration_ms = Empty,
        queue_ms = Empty,
        load_ms = Empty,
        cpu_ms = Empty,
        memory = Empty,
        cold = Empty,
    )
}

/// A step of an invocation whose time the record keeps apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for admission: `queue_us`.
    Queue,
    /// Getting the component ready: `load_us`.
    Load,
    /// Executing: from the instance being made to the end of the guest's
    /// run, `wall_us` (counted only if the guest ran).
    Run,
}

/// A record being filled in, and the step being timed.
struct State {
    record: Record,
    /// An outcome the trigger gave a run that ended well (`error`: the
    /// guest returned an error instead of a result).
    refined: Option<OutcomeKind>,
    /// The step being timed now, and since when.
    phase: Option<(Phase, Instant)>,
    /// For a traced invocation: each step timed, start and end.
    steps: Option<Vec<(Phase, Instant, Instant)>>,
    /// Whether admission made it wait (or refused it).
    waited: bool,
    /// Whether it went through admission: its wait, even one too short to
    /// count in microseconds, is observed in the queue histogram.
    admitted: bool,
}

impl State {
    /// Ends the step being timed, adding its time to its field. A run is
    /// counted by [`RecordDraft::ran`] only: an invocation that ended
    /// before its guest ran has no execution time.
    fn leave(&mut self) -> Option<(Phase, Instant)> {
        let (phase, since) = self.phase.take()?;
        let now = Instant::now();
        let us = now.saturating_duration_since(since).as_micros() as u64;
        if let Some(steps) = &mut self.steps {
            steps.push((phase, since, now));
        }
        match phase {
            Phase::Queue => {
                self.record.queue_us += us;
                self.admitted = true;
            }
            Phase::Load => self.record.load_us += us,
            Phase::Run => {}
        }
        Some((phase, since))
    }
}

/// A usage record being filled in while its invocation runs.
pub struct RecordDraft {
    meter: Arc<Meter>,
    metrics: Arc<ServiceMetrics>,
    span: tracing::Span,
    /// The record and what is being timed, under one lock.
    state: Mutex<State>,
    /// The HTTP status recorded if none is set (a client gone: 499).
    default_status: Option<u16>,
    holds: AtomicUsize,
    /// No record: the attempt did not count (see
    /// [`GuestCall::is_attempt`](crate::runtime::pipeline::GuestCall::is_attempt)).
    discarded: AtomicBool,
    /// Request body or event bytes read.
    pub bytes_in: Arc<AtomicU64>,
    /// Response body bytes sent.
    pub bytes_out: AtomicU64,
    /// Time on a thread, in ns.
    pub cpu_ns: Arc<AtomicU64>,
    /// Set when the invocation's spans are exported.
    traced: OnceLock<Traced>,
}

/// What a traced invocation's spans are made of, besides its record.
struct Traced {
    spans: Spans,
    trace: TraceContext,
    kind: SpanKind,
    attributes: Vec<(&'static str, Attr)>,
    /// When the record was started, on both clocks: steps are timed on
    /// the monotonic one and exported on the wall clock.
    opened: (Instant, SystemTime),
}

/// The record of invocation `id` of `service`'s `revision`, started now,
/// before anything happened to it.
fn blank(id: InvocationId, service: &str, revision: u32, trigger: Trigger) -> Record {
    Record {
        invocation: id.to_string(),
        service: service.to_string(),
        revision,
        trigger,
        started_ms: now_ms(),
        wall_us: 0,
        queue_us: 0,
        load_us: 0,
        cpu_us: 0,
        fuel: 0,
        peak_memory: 0,
        bytes_in: 0,
        bytes_out: 0,
        // Until the guest has run.
        outcome: OutcomeKind::Rejected,
        status: None,
        cold: false,
        instance: None,
    }
}

/// A hold on a record: the record is complete, and goes to the meter, once
/// every hold is dropped.
pub struct Hold(Arc<RecordDraft>);

impl Hold {
    /// The record held.
    pub fn record(&self) -> &Arc<RecordDraft> {
        &self.0
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.0.holds.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.submit();
        }
    }
}

impl RecordDraft {
    /// A record of invocation `id` of `service`, logged in `span`,
    /// started now; the hold returned is the first one.
    pub fn start(
        meter: &Arc<Meter>,
        service: &Service,
        trigger: Trigger,
        id: InvocationId,
        span: tracing::Span,
        default_status: Option<u16>,
    ) -> Hold {
        let record = blank(id, service.name().as_str(), service.revision, trigger);
        Self::with_record(meter, service.metrics.clone(), record, span, default_status)
    }

    /// A record starting as `record`, counted into `metrics` and `meter`
    /// and logged in `span` when it is complete; the hold returned is the
    /// first one.
    pub fn with_record(
        meter: &Arc<Meter>,
        metrics: Arc<ServiceMetrics>,
        record: Record,
        span: tracing::Span,
        default_status: Option<u16>,
    ) -> Hold {
        Hold(Arc::new(RecordDraft {
            meter: meter.clone(),
            metrics,
            span,
            state: Mutex::new(State {
                record,
                refined: None,
                phase: None,
                steps: None,
                waited: false,
                admitted: false,
            }),
            default_status,
            holds: AtomicUsize::new(1),
            discarded: AtomicBool::new(false),
            bytes_in: Arc::new(AtomicU64::new(0)),
            bytes_out: AtomicU64::new(0),
            cpu_ns: Arc::new(AtomicU64::new(0)),
            traced: OnceLock::new(),
        }))
    }

    /// Exports the invocation's spans to `spans` when it is complete, if
    /// its trace is sampled: the invocation's own (of `kind`, with
    /// `attributes` and what the record says) and one per step it took.
    pub fn trace(
        &self,
        spans: &Spans,
        trace: TraceContext,
        kind: SpanKind,
        attributes: Vec<(&'static str, Attr)>,
    ) {
        if !spans.records(&trace) {
            return;
        }
        let traced = Traced {
            spans: spans.clone(),
            trace,
            kind,
            attributes,
            opened: (Instant::now(), SystemTime::now()),
        };
        if self.traced.set(traced).is_ok() {
            self.state().steps = Some(Vec::with_capacity(3));
        }
    }

    /// One more hold on the record.
    pub fn hold(self: &Arc<Self>) -> Hold {
        self.holds.fetch_add(1, Ordering::AcqRel);
        Hold(self.clone())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts timing `phase` (ending the one before, if any).
    pub fn enter(&self, phase: Phase) {
        let mut state = self.state();
        state.leave();
        state.phase = Some((phase, Instant::now()));
    }

    /// Ends the phase being timed, counting its time.
    pub fn leave(&self) {
        self.state().leave();
    }

    /// Notes the reused instance the invocation runs in (named by the
    /// invocation it was made for), and how many it served before.
    pub fn instance(&self, made: InvocationId, served: u32) {
        self.state().record.instance = Some(made.to_string());
        let span = &self.span;
        span.record("instance", tracing::field::display(&made));
        span.record("reused", served);
    }

    /// Notes that the invocation had to wait for admission (or was refused
    /// it).
    pub fn waited(&self) {
        self.state().waited = true;
    }

    /// Notes that the invocation had to load its component (a cold start).
    pub fn cold(&self) {
        self.state().record.cold = true;
    }

    /// Notes how the guest's run ended — its outcome, fuel and peak memory
    /// — and ends its execution time.
    pub fn ran(&self, outcome: OutcomeKind, fuel: u64, peak_memory: u64) {
        let mut state = self.state();
        let wall = match state.leave() {
            Some((Phase::Run, since)) => since.elapsed(),
            _ => Duration::ZERO,
        };
        let record = &mut state.record;
        record.outcome = outcome;
        record.wall_us = wall.as_micros() as u64;
        record.fuel = fuel;
        record.peak_memory = peak_memory;
    }

    /// The guest returned, but not a result: its run ends as `error`.
    pub fn refine(&self, outcome: OutcomeKind) {
        self.state().refined = Some(outcome);
    }

    /// Notes the HTTP status sent.
    pub fn status(&self, status: u16) {
        self.state().record.status = Some(status);
    }

    /// Leaves no record: the attempt does not count.
    pub fn discard(&self) {
        self.discarded.store(true, Ordering::Release);
    }

    /// The record as it stands.
    pub fn snapshot(&self) -> Record {
        self.state().record.clone()
    }

    /// Completes the record: counts, logs and meters it.
    fn submit(&self) {
        if self.discarded.load(Ordering::Acquire) {
            return;
        }
        let (mut record, steps, admitted) = {
            let mut state = self.state();
            // An invocation that ended mid-step (its caller went away
            // while it waited) still counts the time it spent.
            state.leave();
            let mut record = state.record.clone();
            if let Some(refined) = state.refined
                && record.outcome == OutcomeKind::Ok
            {
                record.outcome = refined;
            }
            let steps = state.steps.take();
            (
                record,
                steps.map(|steps| (steps, state.waited)),
                state.admitted,
            )
        };
        if record.status.is_none() {
            record.status = self.default_status;
        }
        record.bytes_out = self.bytes_out.load(Ordering::Relaxed);
        record.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        record.cpu_us = self.cpu_ns.load(Ordering::Relaxed) / 1000;
        self.log(&record);
        if let (Some(traced), Some((steps, waited))) = (self.traced.get(), steps) {
            traced.export(&record, steps, waited);
        }
        if admitted {
            self.metrics.queued(record.queue_us as f64 / 1e6);
        }
        self.metrics.invocation(
            record.trigger,
            record.outcome,
            record.wall_us as f64 / 1e6,
            record.fuel,
        );
        self.meter.record(record);
    }

    /// Records the metered fields in the span and says the invocation
    /// finished.
    fn log(&self, record: &Record) {
        let span = &self.span;
        if let Some(status) = record.status {
            span.record("status", status);
        }
        span.record("outcome", record.outcome.as_str());
        span.record("fuel", record.fuel);
        span.record("duration_ms", record.wall_us as f64 / 1000.0);
        // Each field recorded is formatted into the span: only the ones
        // that say something.
        if record.queue_us > 0 {
            span.record("queue_ms", record.queue_us as f64 / 1000.0);
        }
        if record.load_us > 0 {
            span.record("load_ms", record.load_us as f64 / 1000.0);
        }
        span.record("cpu_ms", record.cpu_us as f64 / 1000.0);
        span.record("memory", record.peak_memory);
        span.record("cold", record.cold);
        span.in_scope(|| tracing::info!(target: "berth::invocation", "finished"));
        // The same line, for `berth logs`, made here rather than by the
        // log layer from the span's fields: it is on every invocation's
        // path.
        if let Some(logs) = self.meter.logs.get() {
            use std::fmt::Write;
            let mut text = String::with_capacity(160);
            let _ = write!(text, "finished trigger={}", record.trigger.as_str());
            if let Some(status) = record.status {
                let _ = write!(text, " status={status}");
            }
            let _ = write!(
                text,
                " outcome={} fuel={} duration_ms={} cpu_ms={} memory={} cold={}",
                record.outcome.as_str(),
                record.fuel,
                record.wall_us as f64 / 1000.0,
                record.cpu_us as f64 / 1000.0,
                record.peak_memory,
                record.cold
            );
            logs.push(
                &record.service,
                Some(record.invocation.clone()),
                "host",
                Level::Info,
                text,
            );
        }
    }
}

impl Traced {
    /// The invocation's span and its steps', to the exporter.
    fn export(&self, record: &Record, steps: Vec<(Phase, Instant, Instant)>, waited: bool) {
        let (opened_at, opened_wall) = self.opened;
        let wall = |at: Instant| match at.checked_duration_since(opened_at) {
            Some(after) => opened_wall + after,
            None => opened_wall - opened_at.duration_since(at),
        };
        let now = SystemTime::now();
        let mut attributes = self.attributes.clone();
        attributes.extend([
            ("berth.service", Attr::str(record.service.clone())),
            ("berth.revision", Attr::Int(record.revision as i64)),
            ("berth.trigger", Attr::str(record.trigger.as_str())),
            ("berth.invocation", Attr::str(record.invocation.clone())),
            ("berth.outcome", Attr::str(record.outcome.as_str())),
            ("berth.fuel", Attr::Int(record.fuel as i64)),
            ("berth.memory.peak", Attr::Int(record.peak_memory as i64)),
            ("berth.cpu_ms", Attr::F64(record.cpu_us as f64 / 1000.0)),
            ("berth.cold", Attr::Bool(record.cold)),
        ]);
        if let Some(status) = record.status {
            attributes.push(("http.response.status_code", Attr::Int(status as i64)));
        }
        if let Some(instance) = &record.instance {
            attributes.push(("berth.instance", Attr::str(instance.clone())));
        }
        let failed = record.outcome != OutcomeKind::Ok || record.status.is_some_and(|s| s >= 500);
        let mut spans = Vec::with_capacity(1 + steps.len());
        spans.push(SpanRecord {
            context: self.trace,
            remote_parent: true,
            name: format!("invoke {}", record.service),
            kind: self.kind,
            start: opened_wall,
            end: now.max(opened_wall),
            attributes,
            error: failed.then(|| match record.status {
                Some(status) => format!("{} (status {status})", record.outcome.as_str()),
                None => record.outcome.as_str().to_owned(),
            }),
        });
        for (phase, since, until) in steps {
            let name = match phase {
                // Admission is a step worth a span when it made the
                // invocation wait (or refused it).
                Phase::Queue if !waited => continue,
                Phase::Queue => "admission",
                // Every invocation looks its component up; only a cold
                // start's lookup is a load worth a span.
                Phase::Load if !record.cold => continue,
                Phase::Load => "cold load",
                Phase::Run => "run",
            };
            spans.push(SpanRecord {
                context: self.trace.child(),
                remote_parent: false,
                name: name.to_owned(),
                kind: SpanKind::Internal,
                start: wall(since),
                end: wall(until),
                attributes: Vec::new(),
                error: (phase == Phase::Run && record.outcome != OutcomeKind::Ok)
                    .then(|| record.outcome.as_str().to_owned()),
            });
        }
        self.spans.export(spans);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::metrics::Metrics;

    fn record() -> Record {
        blank(InvocationId::new(), "hello", 1, Trigger::Http)
    }

    fn queue_count(metrics: &Metrics) -> String {
        let text = metrics.render(&[]);
        text.lines()
            .find(|l| l.starts_with("berth_invocation_queue_seconds_count"))
            .unwrap_or("none")
            .to_string()
    }

    #[test]
    fn every_admitted_invocation_is_in_the_queue_histogram_even_without_a_wait() {
        let metrics = Metrics::default();
        let meter = Arc::new(Meter::default());
        for _ in 0..3 {
            let hold = RecordDraft::with_record(
                &meter,
                metrics.service("hello"),
                record(),
                tracing::Span::none(),
                None,
            );
            // Admitted at once: far less than a microsecond, as on a fast
            // machine with free slots.
            hold.record().enter(Phase::Queue);
            hold.record().enter(Phase::Load);
            drop(hold);
        }
        // One that never reached admission (refused at the edge) is not.
        drop(RecordDraft::with_record(
            &meter,
            metrics.service("hello"),
            record(),
            tracing::Span::none(),
            None,
        ));
        assert_eq!(
            queue_count(&metrics),
            "berth_invocation_queue_seconds_count{service=\"hello\"} 3"
        );
    }
}
