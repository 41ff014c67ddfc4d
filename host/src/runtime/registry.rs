//! The registry: the services the runtime routes to, and the route table
//! that finds them.
//!
//! The set of services and its route table are one immutable snapshot,
//! swapped atomically: a request sees either the old set or the new one,
//! never a mix, and a request already running keeps the `Arc<Service>` it
//! started with, so it finishes on the revision it began on.

use crate::runtime::admission::Admission;
use crate::runtime::metrics::{Metrics, ServiceMetrics};
use crate::values::limits::Limits;
use crate::values::route::{Route, RouteTable};
use crate::values::service::{ServiceName, ServiceSpec};
use crate::values::units::now_ms;
use crate::wasm::component::{Handlers, LoadError, Source};
use crate::wasm::engine::BerthEngine;
use crate::wasm::instance::Sandbox;
use crate::wasm::instance::limiter::MemoryBudget;
use crate::wasm::instance::pool::InstancePool;
use arc_swap::{ArcSwap, ArcSwapOption};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A service revision the runtime routes to. Its compiled component is
/// held in memory while it is in use, and dropped after `idle_timeout`
/// without invocations; the next invocation loads it again from the
/// on-disk code cache (a cold start).
pub struct Service {
    /// What its instances are given: its name, configuration, and the
    /// shared parts built from them.
    pub sandbox: Sandbox,
    /// The revision number this is.
    pub revision: u32,
    /// Its admission control, shared by all its triggers.
    pub admission: Admission,
    /// Where its component is loaded from.
    pub source: Source,
    /// Its counters and histograms.
    pub metrics: Arc<ServiceMetrics>,
    /// Its warm instances, if it opted in to reuse.
    pub pool: Option<InstancePool>,
    handlers: ArcSwapOption<Handlers>,
    loading: tokio::sync::Mutex<()>,
    last_used_ms: AtomicI64,
    load_error: Mutex<Option<LoadError>>,
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
    /// A service from its configuration, its source and, when it was just
    /// loaded (a deploy), its handlers; `None` makes it start unloaded.
    /// Its invocations get `cpu_turns` CPU turns, half of the host's
    /// guest `memory` budget at most, and count into `metrics`.
    pub fn new(
        spec: ServiceSpec,
        revision: u32,
        source: Source,
        handlers: Option<Handlers>,
        cpu_turns: usize,
        memory: &MemoryBudget,
        metrics: Arc<ServiceMetrics>,
    ) -> Self {
        let limits = &spec.config.limits;
        let admission = Admission::new(limits.concurrency, limits.queue, limits.queue_timeout);
        let pool = spec.config.reuse.map(InstancePool::new);
        Service {
            pool,
            sandbox: Sandbox::new(spec, cpu_turns, memory),
            revision,
            admission,
            source,
            metrics,
            handlers: ArcSwapOption::new(handlers.map(Arc::new)),
            loading: tokio::sync::Mutex::new(()),
            last_used_ms: AtomicI64::new(now_ms()),
            load_error: Mutex::new(None),
        }
    }

    /// The service's name.
    pub fn name(&self) -> &ServiceName {
        &self.sandbox.spec.name
    }

    /// Its name and configuration.
    pub fn spec(&self) -> &ServiceSpec {
        &self.sandbox.spec
    }

    /// The limits its invocations run under.
    pub fn limits(&self) -> &Limits {
        self.sandbox.limits()
    }

    /// Whether its component is in memory now.
    pub fn is_loaded(&self) -> bool {
        self.handlers.load().is_some()
    }

    /// Why its component could not be loaded the last time it was tried.
    pub fn load_error(&self) -> Option<LoadError> {
        self.load_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The service's handlers, loading them first if the service was
    /// unloaded (a cold start: counted, timed and logged).
    pub async fn handlers(
        &self,
        engine: &Arc<BerthEngine>,
        metrics: &Metrics,
    ) -> Result<(Arc<Handlers>, Warmth), LoadError> {
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
        if let Some(handlers) = self.handlers.load_full() {
            return Ok((handlers, Warmth::Warm));
        }
        let _loading = self.loading.lock().await;
        if let Some(handlers) = self.handlers.load_full() {
            return Ok((handlers, Warmth::Warm));
        }
        let started = Instant::now();
        let (source, config, engine) = (
            self.source.clone(),
            self.spec().config.clone(),
            engine.clone(),
        );
        let loaded = tokio::task::spawn_blocking(move || source.load(&engine, &config))
            .await
            .unwrap_or_else(|e| Err(LoadError::Invalid(format!("loading task failed: {e}"))));
        let mut error = self.load_error.lock().unwrap_or_else(|e| e.into_inner());
        match loaded {
            Ok((handlers, report)) => {
                *error = None;
                let handlers = Arc::new(handlers);
                self.handlers.store(Some(handlers.clone()));
                let elapsed = started.elapsed();
                self.metrics.cold_start(elapsed.as_secs_f64());
                metrics.code_cache(&report.cache);
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
        if let Some(pool) = &self.pool {
            pool.sweep(std::time::Instant::now());
        }
        let limits = self.limits();
        let idle_since = self.last_used_ms.load(Ordering::Relaxed);
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
#[derive(Default, Clone)]
struct Snapshot {
    services: HashMap<ServiceName, Arc<Service>>,
    routes: RouteTable<Arc<Service>>,
}

impl Snapshot {
    /// Adds `service`, changing nothing if one of its routes is taken.
    fn add(&mut self, service: Arc<Service>) -> Result<(), RouteConflict> {
        let routes = &service.spec().config.routes;
        if let Some(conflict) = routes.iter().find_map(|route| {
            self.routes.owner(route).map(|owner| RouteConflict {
                route: route.clone(),
                owner: owner.name().clone(),
            })
        }) {
            return Err(conflict);
        }
        for route in routes {
            // Checked free above; a service's own routes are distinct.
            let _ = self.routes.insert(route.clone(), service.clone());
        }
        self.services.insert(service.name().clone(), service);
        Ok(())
    }

    /// This snapshot without the services named `names` (and their
    /// routes). Removing never conflicts.
    fn without<'a>(&self, names: impl IntoIterator<Item = &'a ServiceName>) -> Snapshot {
        let mut next = self.clone();
        for name in names {
            next.services.remove(name);
        }
        next.routes
            .retain(|_, owner| next.services.contains_key(owner.name()));
        next
    }
}

/// The services and their routes.
#[derive(Default)]
pub struct Registry {
    snapshot: ArcSwap<Snapshot>,
    /// Serializes writers: each builds the next snapshot from the current.
    writer: Mutex<()>,
}

impl Registry {
    fn write(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes `service` in place of any service of the same name, in one
    /// atomic switch. Fails, changing nothing, if another service holds one
    /// of its routes. Returns the revision it replaced.
    pub fn upsert(&self, service: Arc<Service>) -> Result<Option<Arc<Service>>, RouteConflict> {
        let _writer = self.write();
        let current = self.snapshot.load();
        let old = current.services.get(service.name()).cloned();
        let mut next = current.without([service.name()]);
        next.add(service)?;
        self.snapshot.store(Arc::new(next));
        Ok(old)
    }

    /// Routes every one of `services` in one switch (a restore): each in
    /// place of any service of the same name, unless another service holds
    /// one of its routes — those are left out and returned with the
    /// conflict. Costs one snapshot build, however many services there are.
    pub fn upsert_many(&self, services: Vec<Arc<Service>>) -> Vec<(Arc<Service>, RouteConflict)> {
        let _writer = self.write();
        let mut next = self
            .snapshot
            .load()
            .without(services.iter().map(|s| s.name()));
        let mut refused = Vec::new();
        for service in services {
            if let Err(conflict) = next.add(service.clone()) {
                refused.push((service, conflict));
            }
        }
        self.snapshot.store(Arc::new(next));
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
        let _writer = self.write();
        let current = self.snapshot.load();
        let old = current.services.get(name).cloned()?;
        self.snapshot.store(Arc::new(current.without([name])));
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

    /// The route that matches `path` best, and its service.
    pub fn route_match(&self, path: &str) -> Option<(Route, Arc<Service>)> {
        self.snapshot
            .load()
            .routes
            .lookup(path)
            .map(|(r, s)| (r.clone(), s.clone()))
    }

    /// Unloads the services idle for their `idle_timeout`; returns how
    /// many.
    pub fn unload_idle(&self, now_ms: i64) -> usize {
        self.snapshot
            .load()
            .services
            .values()
            .filter(|service| service.unload_if_idle(now_ms))
            .count()
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
