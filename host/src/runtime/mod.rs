//! The core: the services a host runs and the one pipeline every
//! invocation goes through. It builds on the wasm layer and knows no
//! trigger and no control plane: triggers call [`pipeline::invoke`], the
//! control plane changes the [`registry`], and what the host plugs in (the
//! ledger, secrets, the event bus, service calls) comes in through
//! [`Runtime::set_ports`] and [`Runtime::meter`].
//!
//! - [`admission`] — per-service concurrency, wait queue, host-wide gate.
//! - [`registry`] — the loaded services and their route table.
//! - [`pipeline`] — the one way to run a guest.
//! - [`record`] — usage records while they are filled in, and the meter.
//! - [`metrics`] — Prometheus metrics.
//! - [`logs`] — each service's recent log lines, for `berth logs`.

pub mod admission;
pub mod logs;
pub mod metrics;
pub mod pipeline;
pub mod record;
pub mod registry;
pub mod traffic;

use crate::values::service::ServiceSpec;
use crate::wasm::component::{Handlers, Source};
use crate::wasm::engine::BerthEngine;
use crate::wasm::instance::Ports;
use crate::wasm::instance::egress::Listeners;
use metrics::Metrics;
use record::Meter;
use registry::{Registry, Service};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// The engine, the services it runs and what their invocations share.
pub struct Runtime {
    engine: Arc<BerthEngine>,
    cpu_turns: usize,
    registry: Registry,
    metrics: Metrics,
    meter: Arc<Meter>,
    ports: OnceLock<Ports>,
    /// Ports until the host sets its own: no bus, no calls.
    default_ports: Ports,
    host_slots: Arc<Semaphore>,
    tasks: TaskTracker,
    /// Why the host is not ready to take traffic, if it is not.
    unready: std::sync::Mutex<Option<String>>,
}

impl Runtime {
    /// A runtime with no services yet, giving each service `cpu_turns`
    /// (see [`default_cpu_turns`]).
    pub fn new(engine: BerthEngine, cpu_turns: usize) -> Arc<Runtime> {
        let host_slots = Arc::new(Semaphore::new(engine.max_instances() as usize));
        let default_ports = Ports {
            memory: engine.memory().clone(),
            ..Ports::default()
        };
        Arc::new(Runtime {
            engine: Arc::new(engine),
            cpu_turns,
            registry: Registry::default(),
            metrics: Metrics::default(),
            meter: Arc::default(),
            ports: OnceLock::new(),
            default_ports,
            host_slots,
            tasks: TaskTracker::new(),
            unready: std::sync::Mutex::new(None),
        })
    }

    /// Why the host is not ready (`/readyz` answers 503 with it), or
    /// `None` when it is: a cluster node is ready once it has converged.
    pub fn unready(&self) -> Option<String> {
        self.unready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Marks the host ready (`None`) or not, and why.
    pub fn set_unready(&self, why: Option<String>) {
        *self.unready.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<BerthEngine> {
        &self.engine
    }

    /// The services and their routes.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A service of this runtime from its configuration, its source and,
    /// when it was just loaded (a deploy), its handlers; `None` makes it
    /// start unloaded.
    pub fn service(
        &self,
        spec: ServiceSpec,
        revision: u32,
        source: Source,
        handlers: Option<Handlers>,
    ) -> Service {
        let metrics = self.metrics.service(spec.name.as_str());
        Service::new(
            spec,
            revision,
            source,
            handlers,
            self.cpu_turns,
            self.engine.memory(),
            metrics,
        )
    }

    /// The host's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Where usage records go (plug the ledger in with
    /// [`Meter::set_sink`]).
    pub fn meter(&self) -> &Arc<Meter> {
        &self.meter
    }

    /// Sets what instances reach beyond themselves (once; later calls
    /// change nothing). Its listeners and memory budget are replaced by
    /// the runtime's own.
    pub fn set_ports(&self, ports: Ports) {
        let _ = self.ports.set(Ports {
            listeners: self.default_ports.listeners.clone(),
            memory: self.default_ports.memory.clone(),
            ..ports
        });
    }

    /// What instances reach beyond themselves.
    pub fn ports(&self) -> &Ports {
        self.ports.get().unwrap_or(&self.default_ports)
    }

    /// The addresses this host listens on: guests' outgoing requests may
    /// never reach them.
    pub fn listeners(&self) -> &Listeners {
        &self.default_ports.listeners
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

    /// Unloads, every `period`, the services idle for their `idle_timeout`.
    pub fn start_reaper(self: &Arc<Self>, period: Duration) {
        let runtime = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(runtime) = runtime.upgrade() else {
                    return;
                };
                if runtime.registry.unload_idle(crate::values::units::now_ms()) > 0 {
                    release_freed_memory();
                }
            }
        });
    }

    /// Stops taking new invocations' runs and waits until every one that
    /// is running has ended.
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
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
