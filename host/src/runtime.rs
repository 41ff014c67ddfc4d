//! The runtime: the engine, the services it runs and the route table that
//! finds them.
//!
//! The set of services and its route table are one immutable snapshot,
//! swapped atomically: a request sees either the old set or the new one,
//! never a mix, and a request already running keeps the `Arc<Service>` it
//! started with, so it finishes on the revision it began on.

use crate::admission::Admission;
use crate::component::{Handlers, Source};
use crate::engine::BerthEngine;
use crate::events::TopicPattern;
use crate::events::bus::Bus;
use crate::limits::Limits;
use crate::route::{Route, RouteTable};
use crate::service::{ServiceName, ServiceSpec};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// A service revision the runtime routes to. Its compiled component is
/// held in memory while it is in use, and dropped after `idle_timeout`
/// without invocations; the next invocation loads it again from the
/// on-disk code cache (a cold start).
pub struct Service {
    /// Its name and configuration.
    pub spec: ServiceSpec,
    /// The revision number this is.
    pub revision: u32,
    /// Its admission control, shared by all its triggers.
    pub admission: Admission,
    /// The topics it may publish on.
    pub publish: Arc<[TopicPattern]>,
    /// The origins it may send HTTP requests to.
    pub outbound: Arc<[crate::capabilities::OutboundRule]>,
    /// Where its component is loaded from.
    pub source: Source,
    /// How many of its invocations may run guest code at once once they
    /// are CPU-bound (see [`instance::new_store`](crate::instance::new_store)).
    pub cpu_turns: Arc<tokio::sync::Semaphore>,
    /// Its counters and histograms.
    pub metrics: Arc<crate::metrics::ServiceMetrics>,
    handlers: arc_swap::ArcSwapOption<Handlers>,
    loading: tokio::sync::Mutex<()>,
    last_used_ms: std::sync::atomic::AtomicI64,
    load_error: Mutex<Option<String>>,
}

/// What [`Service::handlers`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warmth {
    /// The component was in memory.
    Warm,
    /// It had to be loaded: a cold start, which took this long.
    Cold(Duration),
}

impl Service {
    /// A service of `runtime` from its configuration, its source and, when
    /// it was just loaded (a deploy), its handlers; `None` makes it start
    /// unloaded.
    pub fn new(
        runtime: &Runtime,
        spec: ServiceSpec,
        revision: u32,
        source: Source,
        handlers: Option<Handlers>,
    ) -> Self {
        let cpu_turns = runtime.cpu_turns();
        let metrics = runtime.metrics().service(spec.name.as_str());
        let limits = &spec.config.limits;
        let admission = Admission::new(limits.concurrency, limits.queue, limits.queue_timeout);
        let publish = spec.config.publish.clone().into();
        let outbound = spec.config.allowed_outbound.clone().into();
        Service {
            spec,
            revision,
            admission,
            publish,
            outbound,
            source,
            cpu_turns: Arc::new(tokio::sync::Semaphore::new(cpu_turns.max(1))),
            metrics,
            handlers: arc_swap::ArcSwapOption::new(handlers.map(Arc::new)),
            loading: tokio::sync::Mutex::new(()),
            last_used_ms: std::sync::atomic::AtomicI64::new(crate::units::now_ms()),
            load_error: Mutex::new(None),
        }
    }

    /// Whether its component is in memory now.
    pub fn is_loaded(&self) -> bool {
        self.handlers.load().is_some()
    }

    /// Why its component could not be loaded the last time it was tried.
    pub fn load_error(&self) -> Option<String> {
        self.load_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The service's handlers, loading them first if the service was
    /// unloaded (a cold start: counted, timed and logged).
    pub async fn handlers(
        &self,
        runtime: &Arc<Runtime>,
    ) -> Result<(Arc<Handlers>, Warmth), String> {
        self.last_used_ms
            .store(crate::units::now_ms(), std::sync::atomic::Ordering::Relaxed);
        if let Some(handlers) = self.handlers.load_full() {
            return Ok((handlers, Warmth::Warm));
        }
        let _loading = self.loading.lock().await;
        if let Some(handlers) = self.handlers.load_full() {
            return Ok((handlers, Warmth::Warm));
        }
        let started = std::time::Instant::now();
        let (source, config, rt) = (
            self.source.clone(),
            self.spec.config.clone(),
            runtime.clone(),
        );
        let loaded = tokio::task::spawn_blocking(move || source.load(rt.engine(), &config))
            .await
            .map_err(|e| format!("loading task failed: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        let mut error = self.load_error.lock().unwrap_or_else(|e| e.into_inner());
        match loaded {
            Ok((handlers, report)) => {
                *error = None;
                let handlers = Arc::new(handlers);
                self.handlers.store(Some(handlers.clone()));
                let elapsed = started.elapsed();
                self.metrics.cold_start(elapsed.as_secs_f64());
                runtime.metrics().code_cache(&report.cache);
                tracing::info!(
                    service = %self.name(),
                    revision = self.revision,
                    code = %report.cache,
                    elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                    "cold start"
                );
                Ok((handlers, Warmth::Cold(elapsed)))
            }
            Err(e) => {
                tracing::error!(service = %self.name(), revision = self.revision, error = %e, "the service cannot be loaded");
                *error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Drops the component from memory if the service has been idle (no
    /// invocation running or waiting) for its `idle_timeout`.
    pub fn unload_if_idle(&self, now_ms: i64) -> bool {
        let limits = self.limits();
        let idle_since = self.last_used_ms.load(std::sync::atomic::Ordering::Relaxed);
        if !self.is_loaded()
            || now_ms - idle_since < limits.idle_timeout.as_millis() as i64
            || self.admission.in_flight(limits.concurrency) > 0
            || self.admission.queued() > 0
        {
            return false;
        }
        self.handlers.store(None);
        tracing::debug!(service = %self.name(), revision = self.revision, "idle: unloaded");
        true
    }

    /// The service's name.
    pub fn name(&self) -> &ServiceName {
        &self.spec.name
    }

    /// The limits its invocations run under.
    pub fn limits(&self) -> &Limits {
        &self.spec.config.limits
    }
}

/// The default CPU turns per service: all the machine's cores but one, so
/// that one service burning CPU always leaves a core to the others.
pub fn default_cpu_turns() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// Gives the memory the allocator holds but no longer uses back to the
/// system, so that unloading services lowers the host's resident memory
/// rather than only its heap's occupancy.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` is glibc's, thread-safe, and only releases
    // memory no allocation uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A route is claimed by another service.
#[derive(Debug, Clone, thiserror::Error)]
#[error("route {route} is already claimed by service `{owner}`")]
pub struct RouteConflict {
    /// The route.
    pub route: Route,
    /// The service that holds it.
    pub owner: ServiceName,
}

/// One consistent view of the services and their routes.
#[derive(Default)]
struct Snapshot {
    services: HashMap<ServiceName, Arc<Service>>,
    routes: RouteTable<Arc<Service>>,
}

impl Snapshot {
    fn build(services: HashMap<ServiceName, Arc<Service>>) -> Result<Snapshot, RouteConflict> {
        let mut routes = RouteTable::new();
        // Name order, so that which of two conflicting services is blamed
        // does not depend on hashing.
        let mut ordered: Vec<_> = services.values().collect();
        ordered.sort_by(|a, b| a.name().cmp(b.name()));
        for service in ordered {
            for route in &service.spec.config.routes {
                if let Err(owner) = routes.insert(route.clone(), service.clone()) {
                    return Err(RouteConflict {
                        route: route.clone(),
                        owner: owner.name().clone(),
                    });
                }
            }
        }
        Ok(Snapshot { services, routes })
    }
}

/// The event bus guests publish on, and its size limit.
#[derive(Clone)]
pub struct EventsContext {
    /// The bus.
    pub bus: Arc<dyn Bus>,
    /// The largest event accepted, in bytes.
    pub max_event_size: usize,
}

/// The engine and the services it serves.
pub struct Runtime {
    engine: BerthEngine,
    cpu_turns: usize,
    metrics: crate::metrics::Metrics,
    ledger: std::sync::OnceLock<Arc<crate::usage::Ledger>>,
    events: std::sync::OnceLock<EventsContext>,
    secrets: std::sync::OnceLock<crate::capabilities::Secrets>,
    listeners: Mutex<Vec<std::net::SocketAddr>>,
    snapshot: ArcSwap<Snapshot>,
    /// Serializes writers: each builds the next snapshot from the current.
    writer: Mutex<()>,
    host_slots: Arc<Semaphore>,
    tasks: TaskTracker,
}

impl Runtime {
    /// A runtime with no services yet, giving each service `cpu_turns`
    /// (see [`default_cpu_turns`]).
    pub fn new(engine: BerthEngine, cpu_turns: usize) -> Arc<Runtime> {
        let host_slots = Arc::new(Semaphore::new(engine.max_instances() as usize));
        Arc::new(Runtime {
            engine,
            cpu_turns,
            metrics: crate::metrics::Metrics::default(),
            ledger: std::sync::OnceLock::new(),
            events: std::sync::OnceLock::new(),
            secrets: std::sync::OnceLock::new(),
            listeners: Mutex::new(Vec::new()),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            writer: Mutex::new(()),
            host_slots,
            tasks: TaskTracker::new(),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &BerthEngine {
        &self.engine
    }

    /// How many CPU-bound invocations of one service may run at once.
    pub fn cpu_turns(&self) -> usize {
        self.cpu_turns
    }

    /// The host's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Connects the usage ledger (once).
    pub fn set_ledger(&self, ledger: Arc<crate::usage::Ledger>) {
        let _ = self.ledger.set(ledger);
    }

    /// The usage ledger, if the host keeps one.
    pub fn ledger(&self) -> Option<&Arc<crate::usage::Ledger>> {
        self.ledger.get()
    }

    /// Meters one invocation: its usage record and its metrics.
    pub fn meter(&self, record: crate::usage::Record) {
        self.metrics.service(&record.service).invocation(
            record.trigger,
            &record.outcome,
            record.wall_us as f64 / 1e6,
            record.fuel,
        );
        if let Some(ledger) = self.ledger.get() {
            ledger.record(record);
        }
    }

    /// Sets where secrets are read from (once; by default, only from
    /// `BERTH_SECRET_*` environment variables).
    pub fn set_secrets(&self, secrets: crate::capabilities::Secrets) {
        let _ = self.secrets.set(secrets);
    }

    /// Where secrets are read from.
    pub fn secrets(&self) -> &crate::capabilities::Secrets {
        self.secrets.get_or_init(|| {
            crate::capabilities::Secrets::new(None, crate::capabilities::DEFAULT_SECRET_PREFIX)
        })
    }

    /// Notes an address this host listens on (public or admin): guests'
    /// outgoing requests may never reach it.
    pub fn add_listener(&self, addr: std::net::SocketAddr) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(addr);
    }

    /// The addresses this host listens on.
    pub fn listeners(&self) -> Vec<std::net::SocketAddr> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Connects the event bus (once).
    pub fn set_events(&self, events: EventsContext) {
        let _ = self.events.set(events);
    }

    /// The event bus, if the host has one.
    pub fn events(&self) -> Option<&EventsContext> {
        self.events.get()
    }

    /// The host-wide instance gate.
    pub fn host_slots(&self) -> &Arc<Semaphore> {
        &self.host_slots
    }

    /// Tracks invocations, which may outlive the request that started them
    /// while they stream a body.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Replaces the whole set of services at once.
    pub fn replace_all(&self, services: Vec<Arc<Service>>) -> Result<(), RouteConflict> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let services = services
            .into_iter()
            .map(|s| (s.name().clone(), s))
            .collect();
        self.snapshot.store(Arc::new(Snapshot::build(services)?));
        Ok(())
    }

    /// Routes `service` in place of any service of the same name, in one
    /// atomic switch. Fails, changing nothing, if another service holds one
    /// of its routes. Returns the revision it replaced.
    pub fn upsert(&self, service: Arc<Service>) -> Result<Option<Arc<Service>>, RouteConflict> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut services = self.snapshot.load().services.clone();
        let old = services.insert(service.name().clone(), service);
        self.snapshot.store(Arc::new(Snapshot::build(services)?));
        Ok(old)
    }

    /// Routes every one of `services` in one switch (a restore): each in
    /// place of any service of the same name, unless another service holds
    /// one of its routes — those are left out and returned with the
    /// conflict. Costs one snapshot build, however many services there are.
    pub fn upsert_many(&self, services: Vec<Arc<Service>>) -> Vec<(Arc<Service>, RouteConflict)> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = self.snapshot.load().services.clone();
        for service in &services {
            all.remove(service.name());
        }
        let mut snapshot =
            Snapshot::build(all).expect("the routed services' routes do not conflict");
        let mut refused = Vec::new();
        for service in services {
            let conflict = service.spec.config.routes.iter().find_map(|route| {
                snapshot.routes.owner(route).map(|owner| RouteConflict {
                    route: route.clone(),
                    owner: owner.name().clone(),
                })
            });
            if let Some(conflict) = conflict {
                refused.push((service, conflict));
                continue;
            }
            for route in &service.spec.config.routes {
                // Checked free above; a service's own routes are distinct.
                let _ = snapshot.routes.insert(route.clone(), service.clone());
            }
            snapshot
                .services
                .insert(service.name().clone(), service.clone());
        }
        self.snapshot.store(Arc::new(snapshot));
        refused
    }

    /// Whether `routes` are free for service `name` (held by nobody, or by
    /// `name` itself).
    pub fn check_routes(&self, name: &ServiceName, routes: &[Route]) -> Result<(), RouteConflict> {
        let snapshot = self.snapshot.load();
        for route in routes {
            if let Some(owner) = snapshot.routes.owner(route)
                && owner.name() != name
            {
                return Err(RouteConflict {
                    route: route.clone(),
                    owner: owner.name().clone(),
                });
            }
        }
        Ok(())
    }

    /// Stops routing to service `name`; requests already running finish.
    pub fn remove(&self, name: &ServiceName) -> Option<Arc<Service>> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut services = self.snapshot.load().services.clone();
        let old = services.remove(name)?;
        let snapshot = Snapshot::build(services).expect("removing a service frees routes");
        self.snapshot.store(Arc::new(snapshot));
        Some(old)
    }

    /// The service routed under `name`.
    pub fn service(&self, name: &ServiceName) -> Option<Arc<Service>> {
        self.snapshot.load().services.get(name).cloned()
    }

    /// Every routed service, in name order.
    pub fn services(&self) -> Vec<Arc<Service>> {
        let mut all: Vec<_> = self.snapshot.load().services.values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// The service whose route matches `path` best.
    pub fn route(&self, path: &str) -> Option<Arc<Service>> {
        self.route_match(path).map(|(_, s)| s)
    }

    /// The route that matches `path` best, and its service.
    pub fn route_match(&self, path: &str) -> Option<(Route, Arc<Service>)> {
        self.snapshot
            .load()
            .routes
            .lookup(path)
            .map(|(r, s)| (r.clone(), s.clone()))
    }

    /// Unloads, every `period`, the services idle for their `idle_timeout`.
    pub fn start_reaper(self: &Arc<Self>, period: Duration) {
        let runtime = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(runtime) = runtime.upgrade() else {
                    return;
                };
                let now = crate::units::now_ms();
                let mut unloaded = 0;
                for service in runtime.snapshot.load().services.values() {
                    unloaded += usize::from(service.unload_if_idle(now));
                }
                if unloaded > 0 {
                    release_freed_memory();
                }
            }
        });
    }

    /// The longest deadline of any service: how long draining may take.
    pub fn max_timeout(&self) -> Duration {
        self.snapshot
            .load()
            .services
            .values()
            .map(|s| s.limits().timeout)
            .max()
            .unwrap_or_default()
    }
}
