//! Shared instances: a WASI 0.3 instance of a service that opted in to
//! `reuse = { max_concurrent = N }` (N > 1) serves up to N invocations at
//! once, each a task of the component model in the same store — the
//! concurrency the 0.3 standard allows (what `wasmtime serve` does with a
//! 0.3 component by default).
//!
//! Each invocation still goes through the whole pipeline (admission,
//! load, its own record and deadline); only its instance is shared. A
//! worker task owns the store and runs its event loop; invocations come
//! to it as [`Job`]s. What becomes per instance, and what stays per
//! invocation:
//!
//! - **Deadline**: each invocation's own. One that passes ends that
//!   invocation (504, or its body cut off) and retires the instance: it
//!   takes no more invocations, lets the others finish, and is stopped for
//!   good at the latest deadline of the invocations it took (also what
//!   bounds tasks a guest left running).
//! - **Fuel**: the store's. Each invocation adds its budget to the store's
//!   fuel (up to `max_concurrent` budgets); what is burnt is billed to the
//!   invocations in flight, split evenly (burnt while none was, to the
//!   next). A guest that runs the store dry traps the instance.
//! - **Memory**: the instance's cap, shared by its invocations; the peak
//!   recorded is the instance's.
//! - **Failure**: a trap, a fuel or memory exhaustion ends every
//!   invocation in flight in that instance with the same outcome.
//! - **Context**: outbound requests and published events carry the trace
//!   and deadline of the invocation the instance took most recently;
//!   invocations only share an instance if they came through the same
//!   chain of service calls. The guest's output lines carry the instance's
//!   tag (the id of the invocation it was made for).

use super::pool::InstanceTag;
use super::{InstanceState, Joining};
use crate::values::digest::Digest;
use crate::values::reuse::Reuse;
use crate::wasm::instance::CallChain;
use crate::wasm::outcome::{self, Deadline, Outcome};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;
use wasmtime::component::{Accessor, Instance, InstancePre};
use wasmtime::{AsContextMut, Store};

/// A guest call as a task of a shared instance: given the instance, it
/// runs until the invocation is done (its response sent, its body
/// finished).
pub type Task = Box<
    dyn for<'a> FnOnce(
            &'a Accessor<InstanceState>,
            Instance,
        ) -> Pin<Box<dyn Future<Output = wasmtime::Result<()>> + Send + 'a>>
        + Send,
>;

/// Makes a [`Task`] of `f` (it names the closure's lifetimes).
pub fn task<F>(f: F) -> Task
where
    F: for<'a> FnOnce(
            &'a Accessor<InstanceState>,
            Instance,
        ) -> Pin<Box<dyn Future<Output = wasmtime::Result<()>> + Send + 'a>>
        + Send
        + 'static,
{
    Box::new(f)
}

/// What an invocation used of a shared instance, filled in as it runs.
#[derive(Debug)]
pub struct Meter {
    /// Its share of the fuel burnt.
    pub fuel: AtomicU64,
    /// The instance's peak memory while it ran.
    pub peak: AtomicU64,
    /// Its share of the time the instance spent on a thread (the record's
    /// counter).
    pub cpu_ns: Arc<AtomicU64>,
}

impl Meter {
    /// A meter adding CPU time to `cpu_ns`.
    pub fn new(cpu_ns: Arc<AtomicU64>) -> Arc<Self> {
        Arc::new(Meter {
            fuel: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            cpu_ns,
        })
    }
}

/// One invocation given to a shared instance.
pub struct Job {
    /// The call.
    pub task: Task,
    /// Its trace, deadline and chain, for what the instance calls and
    /// publishes from now on.
    pub joining: Joining,
    /// Its fuel budget.
    pub budget: u64,
    /// Its deadline.
    pub deadline: Instant,
    /// What it used.
    pub meter: Arc<Meter>,
    /// How it ended.
    pub done: oneshot::Sender<Outcome>,
    /// Resolves when the invocation stops waiting (its deadline passed):
    /// its task is dropped then.
    pub gone: oneshot::Receiver<()>,
}

/// A shared instance taking jobs.
pub struct Seat {
    /// Where its jobs go.
    pub jobs: mpsc::UnboundedSender<Job>,
    /// Which instance it is.
    pub tag: InstanceTag,
    /// Invocations it took before this one.
    pub served: u32,
}

/// A shared instance not made yet: others may join it (their jobs wait
/// for it). Dropped without being started, it is forgotten, and the
/// jobs given to it fail.
pub struct Reserved {
    shared: Arc<SharedInstances>,
    seat: Option<Seat>,
    rx: Option<mpsc::UnboundedReceiver<Job>>,
}

impl Reserved {
    /// Makes the instance with `making`: its worker runs on the runtime
    /// until it is retired or idle. The first seat is the caller's.
    pub fn start(mut self, making: Making) -> Seat {
        let seat = self.seat.take().expect("a reservation has its seat");
        let rx = self.rx.take().expect("a reservation has its jobs");
        let worker = Worker {
            shared: self.shared.clone(),
            tag: seat.tag,
            idle: self.shared.reuse.idle,
        };
        tokio::spawn(worker.run(making, rx));
        seat
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(seat) = &self.seat {
            self.shared.remove(seat.tag);
        }
    }
}

/// One shared instance, as its service's pool knows it.
struct Open {
    tag: InstanceTag,
    digest: Digest,
    chain: CallChain,
    jobs: mpsc::UnboundedSender<Job>,
    /// Invocations given to it and not done yet.
    load: u32,
    /// Invocations given to it in all.
    served: u32,
    /// Whether it takes more.
    open: bool,
}

/// A service's shared instances.
pub struct SharedInstances {
    reuse: Reuse,
    open: Mutex<Vec<Open>>,
    /// Set when its revision is gone: its instances take no more
    /// invocations and go once they are done.
    shut: tokio::sync::watch::Sender<bool>,
}

/// Resources a shared instance may hold while idle (its output streams
/// and the like), beyond which it takes no more invocations.
const MAX_RESOURCES: usize = 256;

impl std::fmt::Debug for SharedInstances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedInstances")
            .field("reuse", &self.reuse)
            .finish_non_exhaustive()
    }
}

/// What a shared instance is made with.
pub struct Making {
    /// Its store, new.
    pub store: Store<InstanceState>,
    /// What to instantiate in it.
    pub pre: InstancePre<InstanceState>,
    /// Its slot of the host's instance pool, held while it lives.
    pub slot: Option<OwnedSemaphorePermit>,
    /// The fuel budget and timeout of its service's invocations.
    pub budget: u64,
    /// Its service's timeout.
    pub timeout: Duration,
    /// The deadline of the invocation it is made for, which bounds its
    /// instantiation.
    pub deadline: Instant,
}

impl SharedInstances {
    /// No shared instances yet; they serve as `reuse` says.
    pub fn new(reuse: Reuse) -> Arc<Self> {
        Arc::new(SharedInstances {
            reuse,
            open: Mutex::new(Vec::new()),
            shut: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Its instances take no more invocations and go once they are done
    /// (its service's revision is gone).
    pub fn shut(&self) {
        self.shut.send_replace(true);
        for open in self.lock().iter_mut() {
            open.open = false;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Open>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A seat in a shared instance of `digest` reached through `chain`
    /// with room for one more invocation; if there is none, a new shared
    /// instance, reserved (the first seat is taken) until it is
    /// [started](Reserved::start), for the invocation `tag`.
    pub fn seat(
        self: &Arc<Self>,
        digest: &Digest,
        chain: &CallChain,
        tag: InstanceTag,
    ) -> Result<Seat, Reserved> {
        let mut open = self.lock();
        let reuse = &self.reuse;
        let found = open.iter_mut().find(|o| {
            o.open
                && o.digest == *digest
                && o.chain.0[..] == chain.0[..]
                && o.load < reuse.max_concurrent
                && o.served < reuse.max_requests
        });
        if let Some(found) = found {
            let seat = Seat {
                jobs: found.jobs.clone(),
                tag: found.tag,
                served: found.served,
            };
            found.load += 1;
            found.served += 1;
            return Ok(seat);
        }
        let (jobs, rx) = mpsc::unbounded_channel();
        open.push(Open {
            tag,
            digest: *digest,
            chain: chain.clone(),
            jobs: jobs.clone(),
            load: 1,
            served: 1,
            open: true,
        });
        Err(Reserved {
            shared: self.clone(),
            seat: Some(Seat {
                jobs,
                tag,
                served: 0,
            }),
            rx: Some(rx),
        })
    }

    /// One of `tag`'s invocations is done.
    fn left(&self, tag: InstanceTag) {
        if let Some(o) = self.lock().iter_mut().find(|o| o.tag == tag) {
            o.load = o.load.saturating_sub(1);
        }
    }

    /// `tag` takes no more invocations.
    fn retire(&self, tag: InstanceTag) {
        if let Some(o) = self.lock().iter_mut().find(|o| o.tag == tag) {
            o.open = false;
        }
    }

    /// Whether `tag` takes no more invocations (retired, or it has served
    /// `max_requests`).
    fn closed(&self, tag: InstanceTag) -> bool {
        self.lock()
            .iter()
            .find(|o| o.tag == tag)
            .is_none_or(|o| !o.open || o.served >= self.reuse.max_requests)
    }

    /// Forgets `tag` if no invocation given to it is pending; whether it
    /// did (then nothing more can come to it).
    fn leave_if_unloaded(&self, tag: InstanceTag) -> bool {
        let mut open = self.lock();
        match open.iter().position(|o| o.tag == tag) {
            Some(at) if open[at].load == 0 => {
                open.swap_remove(at);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Forgets `tag`, whatever is pending.
    fn remove(&self, tag: InstanceTag) {
        self.lock().retain(|o| o.tag != tag);
    }
}

/// An invocation in flight in a shared instance.
struct InFlight {
    meter: Arc<Meter>,
    done: Option<oneshot::Sender<Outcome>>,
}

/// The invocations in flight, by key; what the worker bills and answers.
#[derive(Default)]
struct Flights {
    next: u64,
    flights: Vec<(u64, InFlight)>,
    /// Fuel burnt while none was in flight, billed to the next one.
    unbilled: u64,
    /// The store's fuel when it was last looked at.
    level: u64,
}

impl Flights {
    fn add(&mut self, meter: Arc<Meter>, done: oneshot::Sender<Outcome>) -> u64 {
        let key = self.next;
        self.next += 1;
        meter
            .fuel
            .fetch_add(std::mem::take(&mut self.unbilled), Ordering::Relaxed);
        self.flights.push((
            key,
            InFlight {
                meter,
                done: Some(done),
            },
        ));
        key
    }

    fn take(&mut self, key: u64) -> Option<InFlight> {
        let at = self.flights.iter().position(|(k, _)| *k == key)?;
        Some(self.flights.swap_remove(at).1)
    }

    /// Bills the fuel burnt since the store last had `level` (it has `now`)
    /// to the invocations in flight, and raises their peak to `peak`.
    fn burnt(&mut self, now: u64, peak: u64) {
        let fuel = self.level.saturating_sub(now);
        self.level = now;
        self.bill(fuel, 0, peak);
    }

    /// Bills `fuel` and `cpu_ns` to the invocations in flight, evenly, and
    /// raises their peak to `peak`.
    fn bill(&mut self, fuel: u64, cpu_ns: u64, peak: u64) {
        let n = self.flights.len() as u64;
        if n == 0 {
            self.unbilled = self.unbilled.saturating_add(fuel);
            return;
        }
        for (_, flight) in &self.flights {
            flight.meter.fuel.fetch_add(fuel / n, Ordering::Relaxed);
            flight.meter.cpu_ns.fetch_add(cpu_ns / n, Ordering::Relaxed);
            flight.meter.peak.fetch_max(peak, Ordering::Relaxed);
        }
        // What does not divide evenly goes to the first.
        if let Some((_, first)) = self.flights.first() {
            first.meter.fuel.fetch_add(fuel % n, Ordering::Relaxed);
        }
    }
}

/// How a job's task ended.
enum Ended {
    /// The invocation is done.
    Done,
    /// Its invocation stopped waiting (its deadline passed).
    Gone,
}

/// The task owning a shared instance's store.
struct Worker {
    shared: Arc<SharedInstances>,
    tag: InstanceTag,
    idle: Duration,
}

/// The latest deadline of the invocations a shared instance took: past
/// it, the store is dropped.
#[derive(Default)]
struct Stop {
    at: Mutex<Option<Instant>>,
    changed: Notify,
}

impl Stop {
    fn get(&self) -> Option<Instant> {
        *self.at.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn extend(&self, deadline: Instant) {
        let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        if at.is_none_or(|at| at < deadline) {
            *at = Some(deadline);
            self.changed.notify_one();
        }
    }

    fn clear(&self) {
        if self
            .at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
        {
            self.changed.notify_one();
        }
    }
}

/// Why a worker stopped.
enum Stopped {
    /// Idle or retired, nothing in flight.
    Done,
    /// The guest failed (trap, fuel, memory) or could not be instantiated.
    Failed(wasmtime::Error),
    /// The latest deadline passed with work still going.
    Deadline,
}

impl Worker {
    async fn run(self, making: Making, mut rx: mpsc::UnboundedReceiver<Job>) {
        let Making {
            mut store,
            pre,
            slot,
            budget,
            timeout,
            deadline,
        } = making;
        let flights = Mutex::new(Flights::default());
        let stop = Stop::default();
        let made = tokio::time::timeout_at(deadline, pre.instantiate_async(&mut store)).await;
        let stopped = match made {
            Ok(Ok(instance)) => {
                self.serve(&mut store, instance, &mut rx, &flights, &stop)
                    .await
            }
            Ok(Err(error)) => Stopped::Failed(error),
            Err(_elapsed) => Stopped::Deadline,
        };
        // Nothing more comes to it; whatever came and was not done ends
        // with the instance's outcome.
        self.shared.remove(self.tag);
        rx.close();
        let outcome = match &stopped {
            Stopped::Done => None,
            Stopped::Failed(error) => Some(outcome::classify(error, &store, budget)),
            Stopped::Deadline => Some(Outcome::Deadline(Deadline::Own(timeout))),
        };
        if let Some(outcome) = &outcome {
            tracing::warn!(instance = %self.tag, outcome = outcome.kind().as_str(), "a shared instance stopped: {outcome}");
        }
        let outcome = outcome.unwrap_or_else(|| Outcome::Trap {
            trap: "the shared instance stopped before it ran the invocation".into(),
            backtrace: None,
        });
        let pending = {
            let mut book = flights.lock().unwrap_or_else(|e| e.into_inner());
            let peak = store.data().limiter().peak() as u64;
            book.burnt(store.get_fuel().unwrap_or(0), peak);
            std::mem::take(&mut book.flights)
        };
        for (_, mut flight) in pending {
            if let Some(done) = flight.done.take() {
                let _ = done.send(outcome.clone());
            }
        }
        while let Ok(job) = rx.try_recv() {
            let _ = job.done.send(outcome.clone());
        }
        drop(store);
        drop(slot);
    }

    /// Runs the instance's event loop until it is done, fails or passes
    /// its last deadline. The time it spends on a thread is billed to the
    /// invocations in flight.
    async fn serve(
        &self,
        store: &mut Store<InstanceState>,
        instance: Instance,
        rx: &mut mpsc::UnboundedReceiver<Job>,
        flights: &Mutex<Flights>,
        stop: &Stop,
    ) -> Stopped {
        flights.lock().unwrap_or_else(|e| e.into_inner()).level = store.get_fuel().unwrap_or(0);
        let mut events = pin!(store.run_concurrent(async |accessor| {
            self.events(accessor, instance, rx, flights, stop).await
        }));
        loop {
            let until = stop.get();
            let changed = stop.changed.notified();
            let past = async {
                match until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let timed = std::future::poll_fn(|cx| {
                let started = std::time::Instant::now();
                let poll = events.as_mut().poll(cx);
                let spent = started.elapsed().as_nanos() as u64;
                flights
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .bill(0, spent, 0);
                poll
            });
            tokio::select! {
                biased;
                result = timed => {
                    return match result {
                        Ok(Ok(())) => Stopped::Done,
                        Ok(Err(error)) | Err(error) => Stopped::Failed(error),
                    };
                }
                () = past => {
                    if stop.get().is_some_and(|at| at <= Instant::now()) {
                        return Stopped::Deadline;
                    }
                }
                () = changed => {}
            }
        }
    }

    /// The event loop's side of the worker: takes jobs, runs their tasks,
    /// answers each as it ends, bills fuel, and ends once the instance is
    /// retired or idle with nothing left to do.
    async fn events(
        &self,
        accessor: &Accessor<InstanceState>,
        instance: Instance,
        rx: &mut mpsc::UnboundedReceiver<Job>,
        flights: &Mutex<Flights>,
        stop: &Stop,
    ) -> wasmtime::Result<()> {
        type Running<'a> =
            Pin<Box<dyn Future<Output = (u64, wasmtime::Result<Ended>)> + Send + 'a>>;
        let mut tasks: FuturesUnordered<Running<'_>> = FuturesUnordered::new();
        let mut idle = pin!(tokio::time::sleep(self.idle));
        let mut shut = self.shared.shut.subscribe();
        let mut shut = pin!(async move {
            let _ = shut.wait_for(|shut| *shut).await;
        });
        let mut idle_armed = false;
        // Bills the fuel burnt since the last look.
        let account = |flights: &mut Flights| {
            let (now, peak) = accessor.with(|mut access| {
                let now = access.as_context_mut().get_fuel().unwrap_or(0);
                (now, access.get().limiter().peak() as u64)
            });
            flights.burnt(now, peak);
        };
        std::future::poll_fn(|cx| {
            loop {
                // Tasks first: an invocation that ended (or expired) frees
                // its seat before another is taken.
                if let Poll::Ready(Some((key, ended))) = tasks.poll_next_unpin(cx) {
                    let mut book = flights.lock().unwrap_or_else(|e| e.into_inner());
                    account(&mut book);
                    let flight = book.take(key);
                    drop(book);
                    self.shared.left(self.tag);
                    match ended {
                        Ok(Ended::Done) => {
                            if let Some(done) = flight.and_then(|mut f| f.done.take()) {
                                let _ = done.send(Outcome::Ok);
                            }
                            // A refused memory growth: the instance serves
                            // on short of memory, so it takes no more.
                            if accessor.with(|mut access| access.get().limiter().denied().is_some())
                            {
                                self.shared.retire(self.tag);
                            }
                        }
                        Ok(Ended::Gone) => {
                            // Its task is dropped; the instance may still
                            // be running it, so it takes nothing more.
                            self.shared.retire(self.tag);
                        }
                        Err(error) => {
                            if let Some(flight) = flight {
                                flights
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .flights
                                    .push((key, flight));
                            }
                            return Poll::Ready(Err(error));
                        }
                    }
                    continue;
                }
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(job)) => {
                        idle_armed = false;
                        let Job {
                            task,
                            joining,
                            budget,
                            deadline,
                            meter,
                            done,
                            gone,
                        } = job;
                        let mut book = flights.lock().unwrap_or_else(|e| e.into_inner());
                        account(&mut book);
                        let key = book.add(meter, done);
                        let cap =
                            budget.saturating_mul(u64::from(self.shared.reuse.max_concurrent));
                        let topped = accessor.with(|mut access| {
                            access.get().join(joining);
                            let mut store = access.as_context_mut();
                            // Its first epoch check after one to two ticks,
                            // as for an instance of its own.
                            store.set_epoch_deadline(2);
                            let fuel = store
                                .get_fuel()
                                .unwrap_or(0)
                                .saturating_add(budget)
                                .min(cap);
                            store.set_fuel(fuel).map(|()| fuel)
                        });
                        book.level = topped?;
                        drop(book);
                        stop.extend(deadline);
                        let call = task(accessor, instance);
                        tasks.push(Box::pin(async move {
                            let ended = match futures_util::future::select(call, gone).await {
                                futures_util::future::Either::Left((result, _)) => {
                                    result.map(|()| Ended::Done)
                                }
                                futures_util::future::Either::Right(_) => Ok(Ended::Gone),
                            };
                            (key, ended)
                        }));
                        continue;
                    }
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => {}
                }
                if !tasks.is_empty() || accessor.poll_no_interesting_tasks(cx).is_pending() {
                    return Poll::Pending;
                }
                // Nothing in flight and nothing left running: no deadline
                // to stop at, no CPU turn to hold, and it may go once
                // nothing more is coming. One that kept a pile of
                // resources takes no more invocations.
                if stop.get().is_some() {
                    let kept = accessor.with(|mut access| {
                        let state = access.get();
                        state.release_turn();
                        state.table().iter_mut().count()
                    });
                    if kept > MAX_RESOURCES {
                        self.shared.retire(self.tag);
                    }
                }
                stop.clear();
                // Woken when its revision goes: closed then.
                let _ = shut.as_mut().poll(cx);
                if self.shared.closed(self.tag) {
                    return if self.shared.leave_if_unloaded(self.tag) {
                        Poll::Ready(Ok(()))
                    } else {
                        Poll::Pending
                    };
                }
                if !idle_armed {
                    idle.as_mut().reset(Instant::now() + self.idle);
                    idle_armed = true;
                }
                if idle.as_mut().poll(cx).is_ready() {
                    if self.shared.leave_if_unloaded(self.tag) {
                        return Poll::Ready(Ok(()));
                    }
                    idle_armed = false;
                    continue;
                }
                return Poll::Pending;
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flight(book: &mut Flights) -> (u64, Arc<Meter>) {
        let meter = Meter::new(Arc::new(AtomicU64::new(0)));
        let (done, _) = oneshot::channel();
        (book.add(meter.clone(), done), meter)
    }

    #[test]
    fn fuel_is_split_between_the_invocations_in_flight_and_none_is_lost() {
        let mut book = Flights {
            level: 1000,
            ..Flights::default()
        };
        // Burnt while none was in flight: billed to the next one.
        book.burnt(900, 0);
        let (a, meter_a) = flight(&mut book);
        assert_eq!(meter_a.fuel.load(Ordering::Relaxed), 100);
        let (_, meter_b) = flight(&mut book);
        book.burnt(799, 4096);
        assert_eq!(meter_a.fuel.load(Ordering::Relaxed), 100 + 50 + 1);
        assert_eq!(meter_b.fuel.load(Ordering::Relaxed), 50);
        assert_eq!(meter_b.peak.load(Ordering::Relaxed), 4096);
        assert!(book.take(a).is_some());
        assert!(book.take(a).is_none());
        book.bill(0, 300, 0);
        assert_eq!(meter_b.cpu_ns.load(Ordering::Relaxed), 300);
        assert_eq!(meter_a.cpu_ns.load(Ordering::Relaxed), 0);
        let total = meter_a.fuel.load(Ordering::Relaxed) + meter_b.fuel.load(Ordering::Relaxed);
        assert_eq!(total, 1000 - 799);
    }
}
