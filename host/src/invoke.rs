//! Invocations: one call into one fresh instance, whatever triggered it.
//!
//! This module holds what every trigger shares: invocation ids, running a
//! guest call under the service's wall-clock deadline, and turning what
//! happened into an [`Outcome`] that names the cause (trap, fuel, memory,
//! deadline) for logs, status codes and, later, usage records.

use crate::instance::InstanceState;
use crate::limits::Limits;
use crate::runtime::{Runtime, Service};
use crate::trace::TraceContext;
use crate::units::{ByteSize, format_duration, now_ms};
use crate::usage::{Record, Trigger};
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use wasmtime::{Store, Trap, WasmBacktrace};

/// A unique, time-ordered invocation id, shown as a 26-character ULID
/// (48 bits of milliseconds since the epoch, 80 random bits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InvocationId(u128);

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(now_nanos());
    h.finish() | 1
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// A random number from a per-thread splitmix64 generator: fast, and
/// plenty for ids (they need to be unique, not secret).
pub fn random_u64() -> u64 {
    RNG.with(|state| {
        let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

impl InvocationId {
    /// A new id.
    pub fn new() -> InvocationId {
        let millis = (now_nanos() / 1_000_000) & ((1 << 48) - 1);
        let random =
            ((random_u64() as u128) << 16 | (random_u64() as u128 & 0xffff)) & ((1 << 80) - 1);
        InvocationId(millis << 80 | random)
    }
}

impl Default for InvocationId {
    fn default() -> Self {
        Self::new()
    }
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

impl fmt::Display for InvocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 26];
        for (i, c) in out.iter_mut().enumerate() {
            let shift = 125 - 5 * i as u32;
            *c = CROCKFORD[((self.0 >> shift) & 0x1f) as usize];
        }
        f.write_str(std::str::from_utf8(&out).expect("ascii"))
    }
}

impl fmt::Debug for InvocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest did its job.
    Ok,
    /// The guest trapped (panic, `unreachable`, stack overflow, out-of-bounds
    /// access, ...) or a host call it made failed fatally.
    Trap {
        /// What happened, on one line.
        trap: String,
        /// Where in the guest, when known.
        backtrace: Option<String>,
    },
    /// The fuel budget ran out.
    OutOfFuel {
        /// The budget that was exhausted.
        budget: u64,
    },
    /// The guest trapped after the memory cap refused to grow its memory.
    MemoryLimit {
        /// The cap.
        cap: ByteSize,
        /// What the guest asked for in total.
        requested: ByteSize,
        /// The trap that followed.
        trap: String,
        /// Where in the guest, when known.
        backtrace: Option<String>,
    },
    /// The wall-clock deadline passed; the instance was stopped.
    Deadline {
        /// The deadline that passed.
        timeout: std::time::Duration,
    },
}

impl Outcome {
    /// A short, stable name: `ok`, `trap`, `fuel`, `memory`, `deadline`
    /// (the outcomes of [`crate::usage::Record`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Trap { .. } => "trap",
            Outcome::OutOfFuel { .. } => "fuel",
            Outcome::MemoryLimit { .. } => "memory",
            Outcome::Deadline { .. } => "deadline",
        }
    }

    /// True for [`Outcome::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// The guest's stack when it trapped, if the outcome is a trap.
    pub fn backtrace(&self) -> Option<&str> {
        match self {
            Outcome::Trap { backtrace, .. } | Outcome::MemoryLimit { backtrace, .. } => {
                backtrace.as_deref()
            }
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Trap { trap, .. } => write!(f, "guest trapped: {trap}"),
            Outcome::OutOfFuel { budget } => {
                write!(f, "fuel exhausted: the budget of {budget} fuel ran out")
            }
            Outcome::MemoryLimit {
                cap,
                requested,
                trap,
                ..
            } => write!(
                f,
                "memory limit: the guest asked for {requested} of linear memory, over its limit of {cap}, then trapped: {trap}"
            ),
            Outcome::Deadline { timeout } => write!(
                f,
                "deadline passed: the invocation ran past its timeout of {}; the instance was stopped",
                format_duration(*timeout)
            ),
        }
    }
}

/// Runs `call` (a guest call on an instance) until it returns or the
/// invocation's deadline passes. Past the deadline the call's future is
/// dropped, which stops the guest wherever it is. Turn the result into an
/// [`Outcome`] with [`outcome`].
pub async fn run_until_deadline<T>(
    deadline: tokio::time::Instant,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> Result<T, Stopped> {
    match tokio::time::timeout_at(deadline, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Stopped::Error(error)),
        Err(_elapsed) => Err(Stopped::Deadline),
    }
}

/// Why a guest call did not return normally.
#[derive(Debug)]
pub enum Stopped {
    /// It failed: a trap or a fatal host error.
    Error(wasmtime::Error),
    /// Its deadline passed.
    Deadline,
}

/// The outcome of a guest call's result, with the cause named from the
/// store's state (fuel, memory limiter).
pub fn outcome<T>(
    result: &Result<T, Stopped>,
    store: &Store<InstanceState>,
    limits: &Limits,
) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(Stopped::Deadline) => Outcome::Deadline {
            timeout: limits.timeout,
        },
        Err(Stopped::Error(error)) => classify(error, store, limits),
    }
}

/// Names the cause of a failed guest call.
pub fn classify(error: &wasmtime::Error, store: &Store<InstanceState>, limits: &Limits) -> Outcome {
    // One line for the cause; the guest's stack (attached to the error as
    // context) separately.
    let backtrace = error
        .downcast_ref::<WasmBacktrace>()
        .map(|bt| bt.to_string());
    let trap = error
        .chain()
        .map(|cause| cause.to_string())
        .filter(|cause| Some(cause) != backtrace.as_ref())
        .collect::<Vec<_>>()
        .join(": ");
    let backtrace = backtrace.map(|bt| bt.trim_end().to_owned());
    if error.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
        return Outcome::OutOfFuel {
            budget: limits.fuel,
        };
    }
    let limiter = store.data().limiter();
    if let Some(requested) = limiter.denied() {
        return Outcome::MemoryLimit {
            cap: ByteSize(limiter.cap() as u64),
            requested: ByteSize(requested as u64),
            trap,
            backtrace,
        };
    }
    Outcome::Trap { trap, backtrace }
}

/// Logs why an invocation failed, naming the cause (and the guest's
/// backtrace, if any); nothing when it went well (its [`Draft`] logs every
/// invocation's summary).
pub fn log_outcome(outcome: &Outcome, store: &Store<InstanceState>, limits: &Limits) {
    let fuel = fuel_used(store, limits);
    let peak = store.data().limiter().peak();
    match (outcome.is_ok(), outcome.backtrace()) {
        (true, _) => {}
        (false, None) => tracing::warn!(
            outcome = outcome.kind(),
            fuel,
            peak_memory = peak,
            "{outcome}"
        ),
        (false, Some(backtrace)) => tracing::warn!(
            outcome = outcome.kind(),
            fuel,
            peak_memory = peak,
            backtrace,
            "{outcome}"
        ),
    }
}

/// A future that adds up the time it spends being polled: the time an
/// invocation spends on a thread, running guest code or the host calls it
/// makes.
pub struct OnCpu<F> {
    inner: Pin<Box<F>>,
    total_ns: Arc<AtomicU64>,
}

impl<F: Future> OnCpu<F> {
    /// Measures `inner` into `total_ns`.
    pub fn new(inner: F, total_ns: Arc<AtomicU64>) -> Self {
        OnCpu {
            inner: Box::pin(inner),
            total_ns,
        }
    }
}

impl<F: Future> Future for OnCpu<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let started = Instant::now();
        let result = self.inner.as_mut().poll(cx);
        self.total_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        result
    }
}

/// The log span of one invocation. Its fields are known from the start
/// (`service`, `revision`, `invocation`, `trigger`, `trace_id`), set by
/// the trigger (`route`, `method`, `path`; `topic`, `event`, `attempt`;
/// `caller`, the calling invocation, for a service call) or
/// recorded when the invocation is metered (`status`, `outcome`, `fuel`,
/// `duration_ms`, `cpu_ms`, `memory`, `cold`); then one event, target
/// `berth::invocation`, says it finished.
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
        status = Empty,
        outcome = Empty,
        fuel = Empty,
        duration_ms = Empty,
        cpu_ms = Empty,
        memory = Empty,
        cold = Empty,
    )
}

/// A usage record being filled in while its invocation runs. It is
/// submitted (to the ledger and the metrics, and recorded in the
/// invocation's span) once each of its parts is done: for an HTTP
/// invocation, the guest's run and the response.
pub struct Draft {
    runtime: Arc<Runtime>,
    span: tracing::Span,
    started: Instant,
    record: Mutex<Record>,
    outcome_override: Mutex<Option<&'static str>>,
    parts: AtomicU8,
    /// Response body bytes sent.
    pub bytes_out: AtomicU64,
    /// Request body bytes read.
    pub bytes_in: Arc<AtomicU64>,
    /// Time on a thread, in ns.
    pub cpu_ns: Arc<AtomicU64>,
}

impl Draft {
    /// A draft for invocation `id` of `service`, logged in `span`, started
    /// now, submitted after `parts` calls to [`Draft::done`].
    pub fn new(
        runtime: &Arc<Runtime>,
        service: &Service,
        trigger: Trigger,
        id: InvocationId,
        span: tracing::Span,
        parts: u8,
    ) -> Arc<Draft> {
        Arc::new(Draft {
            runtime: runtime.clone(),
            span,
            started: Instant::now(),
            record: Mutex::new(Record {
                invocation: id.to_string(),
                service: service.name().to_string(),
                revision: service.revision,
                trigger,
                started_ms: now_ms(),
                wall_us: 0,
                cpu_us: 0,
                fuel: 0,
                peak_memory: 0,
                bytes_in: 0,
                bytes_out: 0,
                outcome: "ok".into(),
                status: None,
                cold: false,
            }),
            outcome_override: Mutex::new(None),
            parts: AtomicU8::new(parts),
            bytes_out: AtomicU64::new(0),
            bytes_in: Arc::new(AtomicU64::new(0)),
            cpu_ns: Arc::new(AtomicU64::new(0)),
        })
    }

    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that the invocation had to load its component.
    pub fn cold(&self) {
        self.record().cold = true;
    }

    /// Notes the HTTP status sent.
    pub fn status(&self, status: u16) {
        self.record().status = Some(status);
    }

    /// Overrides the outcome the guest's run gets (`error`, `rejected`).
    pub fn outcome(&self, outcome: &'static str) {
        *self
            .outcome_override
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    }

    /// Records the guest's run: its outcome, wall time, fuel and memory.
    pub fn ran(&self, outcome: &Outcome, store: &Store<InstanceState>, limits: &Limits) {
        let mut record = self.record();
        record.outcome = outcome.kind().into();
        record.wall_us = self.started.elapsed().as_micros() as u64;
        record.fuel = fuel_used(store, limits);
        record.peak_memory = store.data().limiter().peak() as u64;
    }

    /// Ends the invocation before it ran: `rejected`, with `status` (a
    /// record already submitted is left as it is).
    pub fn reject(&self, status: u16) {
        if self.parts.load(Ordering::Acquire) == 0 {
            return;
        }
        self.outcome("rejected");
        self.status(status);
        self.record().wall_us = self.started.elapsed().as_micros() as u64;
        while self.parts.load(Ordering::Acquire) > 0 {
            self.done();
        }
    }

    /// Notes the HTTP status unless one is set already.
    pub fn status_if_unset(&self, status: u16) {
        self.record().status.get_or_insert(status);
    }

    /// One part is done; the last one submits the record (once: further
    /// calls do nothing).
    pub fn done(&self) {
        let before = self
            .parts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1));
        if before != Ok(1) {
            return;
        }
        let mut record = self.record().clone();
        if let Some(outcome) = *self
            .outcome_override
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            record.outcome = outcome.into();
        }
        record.bytes_out = self.bytes_out.load(Ordering::Relaxed);
        record.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        record.cpu_us = self.cpu_ns.load(Ordering::Relaxed) / 1000;
        let span = &self.span;
        if let Some(status) = record.status {
            span.record("status", status);
        }
        span.record("outcome", record.outcome.as_str());
        span.record("fuel", record.fuel);
        span.record("duration_ms", record.wall_us as f64 / 1000.0);
        span.record("cpu_ms", record.cpu_us as f64 / 1000.0);
        span.record("memory", record.peak_memory);
        span.record("cold", record.cold);
        span.in_scope(|| tracing::info!(target: "berth::invocation", "finished"));
        self.runtime.meter(record);
    }
}

/// Fuel used so far by `store`'s invocation.
pub fn fuel_used(store: &Store<InstanceState>, limits: &Limits) -> u64 {
    limits.fuel - store.get_fuel().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_ordered_ulids() {
        let a = InvocationId::new();
        let b = InvocationId::new();
        assert_ne!(a, b);
        let s = a.to_string();
        assert_eq!(s.len(), 26);
        assert!(s.bytes().all(|c| CROCKFORD.contains(&c)));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let c = InvocationId::new();
        assert!(c > a && c.to_string() > s);
    }

    #[test]
    fn outcomes_explain_themselves() {
        let o = Outcome::OutOfFuel { budget: 1000 };
        assert_eq!(o.kind(), "fuel");
        assert!(o.to_string().contains("fuel exhausted"));
        assert!(o.to_string().contains("1000"));
        let o = Outcome::Deadline {
            timeout: std::time::Duration::from_millis(1500),
        };
        assert!(o.to_string().contains("1500ms"));
    }
}
