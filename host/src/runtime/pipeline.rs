//! The pipeline: the one way to run a guest, whatever triggered it.
//!
//! [`invoke`] takes an invocation through every step in order:
//!
//! 1. **record** — its usage record starts (arrival time);
//! 2. **check** — the trigger may refuse its input as it is (an HTTP body
//!    declared over the limit);
//! 3. **admission** — a slot of the service and of the host, waiting in
//!    the service's queue at most `queue_timeout` (`queue_us`);
//! 4. **load** — the component, from memory or, on a cold start, from the
//!    code cache (`load_us`, `cold`);
//! 5. **limits and deadline** — the deadline is `timeout` from here, or
//!    the caller's deadline if that comes first; execution (`wall_us`)
//!    starts here;
//! 6. **instance** — a fresh store under the memory cap and fuel budget
//!    (or, for a service that opted in to reuse, a warm one from its pool,
//!    renewed for this invocation); the trigger hands its input to it;
//! 7. **run** — the guest's export, until it returns or the deadline
//!    passes, on the runtime's task tracker (so a drain waits for it);
//! 8. **outcome** — what happened, named from the store (trap, fuel,
//!    memory, deadline);
//! 9. **metering** — fuel, peak memory, execution time, CPU time; the
//!    record is complete once the trigger lets go of it. A reused store
//!    whose run ended well goes back to its pool.
//!
//! A trigger supplies only a [`GuestCall`]: how to call the guest and how
//! to map the outcome (or a refusal before the guest ran) to its own
//! result — an HTTP response, an acknowledgement or a retry. Admission,
//! limits, the instance, classification and metering exist here once.

use crate::runtime::Runtime;
use crate::runtime::admission::{Permit, Rejection};
use crate::runtime::record::{Hold, Phase, RecordDraft};
use crate::runtime::registry::{Service, Warmth};
use crate::values::id::InvocationId;
use crate::values::limits::Limits;
use crate::values::trace::{Attr, SpanKind, TraceContext};
use crate::values::units::ByteSize;
use crate::values::usage::{OutcomeKind, Trigger};
use crate::wasm::component::{Handlers, LoadError};
use crate::wasm::instance::pool::{History, InstancePool, Warm};
use crate::wasm::instance::shared::{Job, Making, Meter, Seat, Task};
use crate::wasm::instance::{self, CallChain, InstanceState, StartError};
use crate::wasm::outcome::{self, Deadline, Outcome};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::Instrument;
use wasmtime::Store;

/// Why an invocation ended before its guest ran. It leaves a `rejected`
/// record (unless the trigger says it was no attempt at all).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The trigger's input is over the service's limit.
    #[error("the input is over the service's limit of {limit}")]
    TooLarge {
        /// The limit.
        limit: ByteSize,
    },
    /// Admission turned it away: the service is at its limits.
    #[error("{0}")]
    Busy(Rejection),
    /// The service's component could not be loaded.
    #[error("the service cannot be loaded: {0}")]
    Unloadable(LoadError),
    /// The component does not export what the trigger calls.
    #[error("the component does not export `{export}`")]
    NoHandler {
        /// The export the trigger needs.
        export: &'static str,
    },
    /// The instance could not be made (a directory gone, a secret missing).
    #[error("the instance could not be made: {0}")]
    Instance(StartError),
    /// The trigger's input could not be handed to the guest.
    #[error("the input could not be handed to the guest: {0}")]
    Input(String),
    /// Whoever started the invocation went away before it ran.
    #[error("the caller went away before the guest ran")]
    Abandoned,
    /// The edge refused it: no valid credentials, not allowed, or over a
    /// rate limit.
    #[error("refused at the edge: {0}")]
    Denied(String),
}

/// How a guest's run ended, for [`GuestCall::finish`].
pub struct Ran<T> {
    /// What the guest's export returned, if it returned.
    pub returned: Option<T>,
    /// How the run ended.
    pub outcome: Outcome,
}

/// What a trigger supplies to run an invocation: how to hand its input to
/// the guest, how to call it, and how to map what happened to its own
/// result.
pub trait GuestCall: Send + 'static {
    /// What the guest's export returns.
    type Returned: Send + 'static;
    /// What the trigger makes of the invocation.
    type Output: Send + 'static;

    /// Refuses the input before admission, if it is unacceptable as it is
    /// (over a limit, or refused at the edge).
    fn check(&mut self, _limits: &Limits) -> Result<(), Refusal> {
        Ok(())
    }

    /// Whether a refusal was an attempt to invoke, which leaves a
    /// `rejected` record (by default, every refusal is).
    fn is_attempt(&self, _refusal: &Refusal) -> bool {
        true
    }

    /// Picks the export this trigger calls from the component's
    /// `handlers` (before an instance is made).
    fn select(&mut self, handlers: &Handlers) -> Result<(), Refusal>;

    /// Hands the trigger's input to the fresh instance in `store`.
    fn prepare(
        &mut self,
        store: &mut Store<InstanceState>,
        record: &Arc<RecordDraft>,
    ) -> Result<(), Refusal>;

    /// Calls the guest.
    fn call<'a>(
        &'a mut self,
        store: &'a mut Store<InstanceState>,
    ) -> impl Future<Output = wasmtime::Result<Self::Returned>> + Send + 'a;

    /// For a service whose instances serve several invocations at once:
    /// the call as a task of a shared instance, and what to make one
    /// from (`None`: the call needs an instance of its own, as a WASI 0.2
    /// handler does). Called instead of [`prepare`](Self::prepare).
    fn task(&mut self, _record: &Arc<RecordDraft>) -> Result<Option<SharedCall>, Refusal> {
        Ok(None)
    }

    /// Runs after the call, before the instance is dropped (`None`: the
    /// call ran in a shared instance, which goes on).
    fn after(&mut self, _store: Option<&mut Store<InstanceState>>) {}

    /// Whether the instance, after a run that ended well, may serve
    /// another invocation (an HTTP response body left unfinished says no).
    /// Asked only of a service that reuses instances.
    fn reusable(&mut self, _store: &mut Store<InstanceState>) -> bool {
        true
    }

    /// What to do if the run is lost half-way (its task panicked): the
    /// trigger's last word, such as marking a response body cut off.
    fn on_abort(&self) -> Option<Box<dyn FnOnce() + Send>> {
        None
    }

    /// Maps how the run ended to the trigger's result; may
    /// [refine](RecordDraft::refine) the record's outcome.
    fn finish(self, ran: Ran<Self::Returned>, record: &RecordDraft) -> Self::Output;

    /// Maps a refusal to the trigger's result.
    fn refused(self, refusal: &Refusal, record: &RecordDraft) -> Self::Output;
}

/// A call as a task of a shared instance (see [`GuestCall::task`]).
pub struct SharedCall {
    /// What a new shared instance is made from.
    pub pre: wasmtime::component::InstancePre<InstanceState>,
    /// The call.
    pub task: Task,
}

/// How a trigger starts an invocation.
pub struct Start {
    /// The kind of trigger.
    pub trigger: Trigger,
    /// The invocation's id.
    pub id: InvocationId,
    /// Its place in a trace.
    pub trace: TraceContext,
    /// Its log span (see [`crate::runtime::record::span`]).
    pub span: tracing::Span,
    /// The services a call passed through to reach it.
    pub chain: CallChain,
    /// The caller's deadline, for a call: it ends by it at the latest.
    pub caller_deadline: Option<tokio::time::Instant>,
    /// The HTTP status recorded if the invocation ends without one.
    pub default_status: Option<u16>,
    /// Input bytes known up front (an event's payload); a request body is
    /// counted as it is read.
    pub bytes_in: u64,
    /// What the trigger says of it in its exported span (route, method,
    /// topic, …), beside what its record says.
    pub attributes: Vec<(&'static str, Attr)>,
}

/// What [`invoke`] gives back.
pub enum Started<C: GuestCall> {
    /// It was refused before the guest ran; the trigger's result.
    Refused(C::Output),
    /// The guest is running.
    Running(Running<C>),
}

/// A running invocation. It holds the usage record open until it is
/// dropped or [finished](Running::finished).
pub struct Running<C: GuestCall> {
    hold: Hold,
    done: tokio::sync::oneshot::Receiver<C::Output>,
}

impl<C: GuestCall> Running<C> {
    /// The usage record.
    pub fn record(&self) -> &Arc<RecordDraft> {
        self.hold.record()
    }

    /// Waits for the run to end: the trigger's result, or `None` if the
    /// run was lost (its task panicked).
    pub async fn finished(self) -> Option<C::Output> {
        let Running { hold, done } = self;
        let output = done.await.ok();
        drop(hold);
        output
    }

    /// Waits for the run to end, keeping the hold on the record.
    pub async fn finished_holding(&mut self) -> Option<C::Output> {
        (&mut self.done).await.ok()
    }

    /// Keeps only the hold on the record (the run goes on without
    /// anybody waiting for it).
    pub fn into_hold(self) -> Hold {
        self.hold
    }
}

/// Completes a record as `rejected` if the invocation is dropped before
/// its guest runs (its caller went away while it waited): its hold is
/// released then, and the record was `rejected` from the start.
struct BeforeRun {
    record: Arc<RecordDraft>,
    hold: Option<Hold>,
}

impl Drop for BeforeRun {
    fn drop(&mut self) {
        if self.hold.take().is_some() {
            tracing::info!(reason = %Refusal::Abandoned, "invocation refused before it ran");
        }
    }
}

impl BeforeRun {
    /// Ends the invocation before its guest ran.
    fn refuse<C: GuestCall>(mut self, call: C, refusal: Refusal) -> Started<C> {
        if matches!(refusal, Refusal::Denied(_)) {
            // Refusals at the edge come in floods (a client without a
            // key, one over its rate): counted in metrics, not warned of.
            tracing::info!(reason = %refusal, "invocation refused before it ran");
        } else if call.is_attempt(&refusal) {
            tracing::warn!(reason = %refusal, "invocation refused before it ran");
        } else {
            tracing::debug!(reason = %refusal, "invocation deferred before it ran");
            self.record.discard();
        }
        let output = call.refused(&refusal, &self.record);
        // Released quietly: the refusal is logged above.
        drop(self.hold.take());
        Started::Refused(output)
    }

    /// The guest is about to run: the run holds the record from now on.
    fn disarm(mut self) -> Hold {
        let hold = self.record.hold();
        drop(self.hold.take());
        hold
    }
}

/// Runs one invocation of `service` through the pipeline (see the module
/// docs). Returns once the guest is running (or the invocation was
/// refused); the run itself goes on in a task of its own.
pub async fn invoke<C: GuestCall>(
    runtime: &Arc<Runtime>,
    service: Arc<Service>,
    start: Start,
    mut call: C,
) -> Started<C> {
    let mut start = start;
    let spans = &runtime.ports().spans;
    start.trace = spans.sample(start.trace);
    let span = start.span.clone();
    let hold = RecordDraft::start(
        runtime.meter(),
        &service,
        start.trigger,
        start.id,
        span.clone(),
        start.default_status,
    );
    hold.record()
        .bytes_in
        .store(start.bytes_in, Ordering::Relaxed);
    let kind = match start.trigger {
        Trigger::Http | Trigger::Call => SpanKind::Server,
        Trigger::Event | Trigger::Schedule => SpanKind::Consumer,
    };
    hold.record().trace(
        spans,
        start.trace,
        kind,
        std::mem::take(&mut start.attributes),
    );
    let guard = BeforeRun {
        record: hold.record().clone(),
        hold: Some(hold),
    };
    async move {
        let record = guard.record.clone();
        let (run, permit) = match prepare(runtime, &service, start, &mut call, &record).await {
            Ok(ready) => ready,
            Err(refusal) => return guard.refuse(call, refusal),
        };
        let pipeline_hold = guard.disarm();
        let starter_hold = record.hold();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        runtime.tasks().spawn(
            async move {
                let output = run.run(call, &record, service.pool.as_ref(), permit).await;
                drop(pipeline_hold);
                let _ = done_tx.send(output);
            }
            .in_current_span(),
        );
        Started::Running(Running {
            hold: starter_hold,
            done,
        })
    }
    .instrument(span)
    .await
}

/// Everything before the guest runs: the trigger's check, admission, the
/// component, the deadline and the instance, with the trigger's input
/// handed to it.
async fn prepare<C: GuestCall>(
    runtime: &Arc<Runtime>,
    service: &Service,
    start: Start,
    call: &mut C,
    record: &Arc<RecordDraft>,
) -> Result<(Run, Permit), Refusal> {
    let limits = service.limits();
    call.check(limits)?;
    record.enter(Phase::Queue);
    let admitted = service.admission.admit(runtime.host_slots()).await;
    record.leave();
    if admitted.as_ref().map_or(true, |permit| permit.waited) {
        record.waited();
    }
    let permit = admitted.map_err(Refusal::Busy)?;
    record.enter(Phase::Load);
    let loaded = service.handlers(runtime.engine(), runtime.metrics()).await;
    record.leave();
    let (handlers, warmth) = loaded.map_err(Refusal::Unloadable)?;
    if matches!(warmth, Warmth::Cold(_)) {
        record.cold();
    }
    call.select(&handlers)?;

    // Execution starts here: the deadline and `wall_us` count from now.
    record.enter(Phase::Run);
    let (deadline, which) = deadline(limits, start.caller_deadline);
    let invocation = instance::Invocation {
        id: start.id,
        trace: start.trace,
        deadline,
        chain: start.chain,
    };
    let id = invocation.id;
    let shared = service.pool.as_ref().and_then(|pool| pool.shared());
    if let Some(shared) = shared
        && let Some(SharedCall { pre, task }) = call.task(record)?
    {
        let mut permit = permit;
        let joining = instance::joining(&service.sandbox, runtime.ports(), &invocation);
        let seat = match shared.seat(&handlers.digest, &invocation.chain, id) {
            Ok(seat) => {
                // One slot of the host's pool for the whole instance.
                drop(permit.take_host_slot());
                seat
            }
            Err(reserved) => {
                let store = instance::new_store(
                    &handlers.engine,
                    &service.sandbox,
                    runtime.ports(),
                    invocation.clone(),
                )
                .map_err(Refusal::Instance)?;
                reserved.start(Making {
                    store,
                    pre,
                    slot: permit.take_host_slot(),
                    budget: limits.fuel,
                    timeout: limits.timeout,
                    deadline,
                })
            }
        };
        record.instance(seat.tag, seat.served);
        let run = Run {
            place: Place::Shared {
                seat,
                task,
                joining: Box::new(joining),
            },
            fuel: limits.fuel,
            deadline,
            which,
        };
        return Ok((run, permit));
    }
    let warm = service
        .pool
        .as_ref()
        .and_then(|pool| pool.take(&handlers.digest));
    let (mut store, kept) = match warm {
        Some(mut warm) => {
            instance::renew(
                &mut warm.store,
                &service.sandbox,
                runtime.ports(),
                invocation,
            )
            .map_err(Refusal::Instance)?;
            (warm.store, Some(warm.history))
        }
        None => {
            let store = instance::new_store(
                &handlers.engine,
                &service.sandbox,
                runtime.ports(),
                invocation,
            )
            .map_err(Refusal::Instance)?;
            let kept = service.pool.as_ref().map(|_| History {
                served: 0,
                digest: handlers.digest,
                made: id,
            });
            (store, kept)
        }
    };
    if let Some(kept) = &kept {
        record.instance(kept.made, kept.served);
    }
    call.prepare(&mut store, record)?;
    let run = Run {
        place: Place::Own { store, kept },
        fuel: limits.fuel,
        deadline,
        which,
    };
    Ok((run, permit))
}

/// The deadline of an invocation starting now, and which one it is.
fn deadline(
    limits: &Limits,
    caller: Option<tokio::time::Instant>,
) -> (tokio::time::Instant, Deadline) {
    let now = tokio::time::Instant::now();
    let own = now + limits.timeout;
    match caller {
        Some(caller) if caller < own => (
            caller,
            Deadline::Caller(caller.saturating_duration_since(now)),
        ),
        _ => (own, Deadline::Own(limits.timeout)),
    }
}

/// A guest's run in its instance.
struct Run {
    place: Place,
    fuel: u64,
    deadline: tokio::time::Instant,
    which: Deadline,
}

/// Where a guest runs.
enum Place {
    /// In an instance of its own (fresh, or warm from its pool).
    Own {
        store: Store<InstanceState>,
        /// For a service that reuses instances: what goes back to its
        /// pool with the store.
        kept: Option<History>,
    },
    /// As a task of a shared instance.
    Shared {
        seat: Seat,
        task: Task,
        joining: Box<instance::Joining>,
    },
}

impl Run {
    /// Calls the guest until it returns or the deadline passes, names the
    /// outcome, meters it, drops the instance, and maps it to the
    /// trigger's result.
    async fn run<C: GuestCall>(
        self,
        mut call: C,
        record: &RecordDraft,
        pool: Option<&InstancePool>,
        permit: Permit,
    ) -> C::Output {
        let mut lost = Lost {
            record,
            on_abort: call.on_abort(),
            armed: true,
        };
        let Run {
            place,
            fuel: budget,
            deadline,
            which,
        } = self;
        let (returned, outcome, fuel, peak) = match place {
            Place::Own { mut store, kept } => {
                let result = {
                    let guest = OnCpu::new(call.call(&mut store), record.cpu_ns.clone());
                    outcome::run_until_deadline(deadline, guest).await
                };
                let outcome = outcome::outcome(&result, &store, budget, which);
                call.after(Some(&mut store));
                let fuel = outcome::fuel_used(&store, budget);
                let peak = store.data().limiter().peak() as u64;
                match (pool, kept) {
                    (Some(pool), Some(kept))
                        if outcome.is_ok() && call.reusable(&mut store) && healthy(&mut store) =>
                    {
                        // It keeps its slot of the host's instance pool
                        // while it waits, but neither its service's slot
                        // nor a CPU turn.
                        store.data().release_turn();
                        let history = History {
                            served: kept.served + 1,
                            ..kept
                        };
                        pool.put(Warm::new(store, history, permit.into_host_slot()));
                    }
                    _ => {
                        drop(store);
                        drop(permit);
                    }
                }
                (result.ok(), outcome, fuel, peak)
            }
            Place::Shared {
                seat,
                task,
                joining,
            } => {
                let meter = Meter::new(record.cpu_ns.clone());
                let (done, answer) = tokio::sync::oneshot::channel();
                let (_waiting, gone) = tokio::sync::oneshot::channel();
                let job = Job {
                    task,
                    joining: *joining,
                    budget,
                    deadline,
                    meter: meter.clone(),
                    done,
                    gone,
                };
                let outcome = match seat.jobs.send(job) {
                    Ok(()) => match tokio::time::timeout_at(deadline, answer).await {
                        Ok(Ok(outcome)) => outcome,
                        Ok(Err(_)) => shared_lost(),
                        // `_waiting` goes with this: the instance drops
                        // the task and takes nothing more.
                        Err(_elapsed) => Outcome::Deadline(which),
                    },
                    Err(_) => shared_lost(),
                };
                call.after(None);
                drop(permit);
                let fuel = meter.fuel.load(Ordering::Relaxed);
                let peak = meter.peak.load(Ordering::Relaxed);
                (None, outcome, fuel, peak)
            }
        };
        log_outcome(&outcome, fuel, peak);
        record.ran(outcome.kind(), fuel, peak);
        lost.armed = false;
        call.finish(Ran { returned, outcome }, record)
    }
}

/// The outcome of an invocation whose shared instance went away without
/// a word (its worker was lost).
fn shared_lost() -> Outcome {
    Outcome::Trap {
        trap: "the shared instance running the invocation was lost".into(),
        backtrace: None,
    }
}

/// Whether a store whose run ended well may serve again: its memory was
/// never refused a growth (the next invocation would start short), and
/// the guest left no pile of resources behind.
fn healthy(store: &mut Store<InstanceState>) -> bool {
    /// Resources a reused instance may hold between invocations (its
    /// output streams and the like), beyond which it is not reused.
    const MAX_RESOURCES: usize = 256;
    store.data().limiter().denied().is_none()
        && store.data_mut().table().iter_mut().count() <= MAX_RESOURCES
}

/// Completes the record of a run whose task panicked before it was
/// metered (as a trap), and gives the trigger its last word.
struct Lost<'a> {
    record: &'a RecordDraft,
    on_abort: Option<Box<dyn FnOnce() + Send>>,
    /// Until the run is metered.
    armed: bool,
}

impl Drop for Lost<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        tracing::error!("the invocation's run was lost half-way (its task panicked)");
        if let Some(on_abort) = self.on_abort.take() {
            on_abort();
        }
        self.record.ran(OutcomeKind::Trap, 0, 0);
    }
}

/// Logs why a run failed, naming the cause (and the guest's backtrace, if
/// any); nothing when it went well (the record logs every invocation's
/// summary).
fn log_outcome(outcome: &Outcome, fuel: u64, peak: u64) {
    match (outcome.is_ok(), outcome.backtrace()) {
        (true, _) => {}
        (false, None) => tracing::warn!(
            outcome = outcome.kind().as_str(),
            fuel,
            peak_memory = peak,
            "{outcome}"
        ),
        (false, Some(backtrace)) => tracing::warn!(
            outcome = outcome.kind().as_str(),
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
struct OnCpu<F> {
    inner: Pin<Box<F>>,
    total_ns: Arc<AtomicU64>,
}

impl<F: Future> OnCpu<F> {
    fn new(inner: F, total_ns: Arc<AtomicU64>) -> Self {
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
