//! The runtime: the engine, the services it runs and the route table that
//! finds them. The table is swapped atomically as a whole, so a request sees
//! either the old set of services or the new one, never a mix.

use crate::admission::Admission;
use crate::component::HttpHandler;
use crate::engine::BerthEngine;
use crate::route::{Route, RouteTable};
use crate::service::{ServiceName, ServiceSpec};
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// A service that is loaded and ready to serve.
pub struct Service {
    /// Its name, routes and limits.
    pub spec: ServiceSpec,
    /// Its pre-instantiated component.
    pub handler: HttpHandler,
    /// Its admission control.
    pub admission: Admission,
}

impl Service {
    /// A service from its configuration and its loaded component.
    pub fn new(spec: ServiceSpec, handler: HttpHandler) -> Self {
        let limits = &spec.limits;
        let admission = Admission::new(limits.concurrency, limits.queue, limits.queue_timeout);
        Service {
            spec,
            handler,
            admission,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &ServiceName {
        &self.spec.name
    }
}

/// Two services claim the same route.
#[derive(Debug, thiserror::Error)]
#[error("route {route} is claimed by both `{first}` and `{second}`")]
pub struct RouteConflict {
    /// The route.
    pub route: Route,
    /// The service that claimed it first.
    pub first: ServiceName,
    /// The one that claimed it too.
    pub second: ServiceName,
}

/// The engine and the services it serves.
pub struct Runtime {
    engine: BerthEngine,
    routes: ArcSwap<RouteTable<Arc<Service>>>,
    host_slots: Arc<Semaphore>,
    tasks: TaskTracker,
}

impl Runtime {
    /// A runtime with no services yet.
    pub fn new(engine: BerthEngine) -> Arc<Runtime> {
        let host_slots = Arc::new(Semaphore::new(engine.max_instances() as usize));
        Arc::new(Runtime {
            engine,
            routes: ArcSwap::from_pointee(RouteTable::new()),
            host_slots,
            tasks: TaskTracker::new(),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &BerthEngine {
        &self.engine
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
    pub fn set_services(&self, services: Vec<Arc<Service>>) -> Result<(), RouteConflict> {
        let mut table = RouteTable::new();
        for service in services {
            for route in &service.spec.routes {
                if let Err(first) = table.insert(route.clone(), service.clone()) {
                    return Err(RouteConflict {
                        route: route.clone(),
                        first: first.name().clone(),
                        second: service.name().clone(),
                    });
                }
            }
        }
        self.routes.store(Arc::new(table));
        Ok(())
    }

    /// The service whose route matches `path` best.
    pub fn route(&self, path: &str) -> Option<Arc<Service>> {
        self.routes.load().lookup(path).map(|(_, s)| s.clone())
    }

    /// The longest deadline of any service: how long draining may take.
    pub fn max_timeout(&self) -> Duration {
        self.routes
            .load()
            .iter()
            .map(|(_, s)| s.spec.limits.timeout)
            .max()
            .unwrap_or_default()
    }
}
