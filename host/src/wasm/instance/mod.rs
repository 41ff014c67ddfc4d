//! Instances: the per-invocation `Store` and everything in it — the WASI
//! context (deny by default), the HTTP context, the memory limiter, fuel,
//! the epoch deadline and the guest's log streams.
//!
//! An instance is made for one invocation and dropped after it; nothing a
//! guest does survives it — unless its service opted in to reuse (see
//! [`pool`]): then the same store serves its next invocations, each
//! [renewed](renew) with its own tag, deadline, fuel budget and memory
//! peak. This module knows no runtime and no trigger:
//! what an instance reaches beyond itself (secrets, the event bus, other
//! services, the host's own addresses to stay away from) comes in through
//! [`Ports`], supplied by the host.
//!
//! - [`limiter`] — the memory cap and peak.
//! - [`turns`] — CPU turns, fairness between CPU-bound guests.
//! - [`output`] — the guest's stdout and stderr as log lines.
//! - [`egress`] — the outbound HTTP firewall and service calls.
//! - [`publish`] — `berth:events/publisher`.

pub mod egress;
pub mod limiter;
pub mod output;
pub mod pool;
pub mod publish;
pub mod shared;
pub mod turns;

use crate::values::capabilities::{EnvValue, Mode, OutboundRule};
use crate::values::capabilities::{FileMount, MountError};
use crate::values::id::InvocationId;
use crate::values::limits::{Limits, MAX_FIELDS_SIZE, MAX_OUTBOUND_IN_FLIGHT};
use crate::values::service::{ServiceName, ServiceSpec};
use crate::values::topic::TopicPattern;
use crate::values::trace::{Spans, TraceContext};
use crate::wasm::secrets::{SecretError, Secrets};
use egress::{Hooks, Listeners, Outbound, ServiceCalls};
use limiter::MemoryLimiter;
use output::{GuestOutput, Outputs};
use publish::{EventPort, Publisher};
use std::sync::Arc;
use turns::CpuTurn;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The data of every instance's `Store`.
pub struct InstanceState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: Hooks,
    limiter: MemoryLimiter,
    publisher: Option<Publisher>,
    turn: Arc<CpuTurn>,
    /// The guest's stdout and stderr, to tag a reused instance's lines.
    output: [GuestOutput; 2],
    /// The component instance, once made: kept with the store so that a
    /// reused store serves its next invocation without instantiating.
    instance: Option<wasmtime::component::Instance>,
    /// Permits for the instance's outbound requests in flight
    /// ([`MAX_OUTBOUND_IN_FLIGHT`]): the instance's, whichever invocation
    /// it serves, as what a guest keeps outlives the invocation.
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl InstanceState {
    /// The memory limiter, to read the peak and whether the cap was hit.
    pub fn limiter(&self) -> &MemoryLimiter {
        &self.limiter
    }

    /// The instance's resource table.
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// What the instance may publish, if the host has an event bus.
    pub fn publisher(&self) -> Option<&Publisher> {
        self.publisher.as_ref()
    }

    /// Gives back the CPU turn the instance holds, if any (a reused
    /// instance going back to its pool must not keep one).
    pub fn release_turn(&self) {
        self.turn.release();
    }

    /// A shared instance takes an invocation: what it calls and publishes
    /// from now on carries that invocation's trace, deadline and chain.
    /// Its output gets a new allowance (see [`output`]): in a shared
    /// instance, the allowance is the instance's, renewed as each
    /// invocation joins it.
    pub fn join(&mut self, mut joining: Joining) {
        if let Some(out) = &mut joining.hooks.outbound {
            out.in_flight = self.in_flight.clone();
        }
        self.hooks = joining.hooks;
        self.publisher = joining.publisher;
        for output in &self.output {
            output.renew();
        }
    }
}

/// What a shared instance (see [`shared`]) takes from each invocation it
/// is given.
pub struct Joining {
    hooks: Hooks,
    publisher: Option<Publisher>,
}

/// What `invocation` gives the shared instance it joins.
pub fn joining(sandbox: &Sandbox, ports: &Ports, invocation: &Invocation) -> Joining {
    Joining {
        hooks: Hooks {
            tag: Tag {
                service: sandbox.spec.name.clone(),
                invocation: invocation.id,
            },
            // The instance's own permits replace these in `join`.
            outbound: outbound(sandbox, ports, invocation, in_flight()),
        },
        publisher: publisher(sandbox, ports, invocation),
    }
}

/// The component instance in `store`: the one made for an earlier
/// invocation of a reused store, or one made now from `pre`.
pub async fn instance(
    store: &mut Store<InstanceState>,
    pre: &wasmtime::component::InstancePre<InstanceState>,
) -> wasmtime::Result<wasmtime::component::Instance> {
    if let Some(instance) = store.data().instance {
        return Ok(instance);
    }
    let instance = pre.instantiate_async(&mut *store).await?;
    store.data_mut().instance = Some(instance);
    Ok(instance)
}

/// Adds every interface Berth provides to guests: all of WASI 0.2
/// (`wasi:cli`, `wasi:clocks`, `wasi:filesystem`, `wasi:io`, `wasi:random`,
/// `wasi:sockets`) and `wasi:http` 0.2, on the `concurrent` engine the same
/// of WASI 0.3 (a component may import both, as componentize-py's do), and
/// `berth:events/publisher`. What a guest
/// may actually do through them is decided per instance by [`new_store`],
/// and by default it is nothing beyond clocks, randomness and its own
/// stdout/stderr.
pub fn add_to_linker(linker: &mut Linker<InstanceState>, concurrent: bool) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    if concurrent {
        wasmtime_wasi::p3::add_to_linker(linker)?;
        wasmtime_wasi_http::p3::add_to_linker(linker)?;
    }
    crate::wasm::bindings::EventsHost::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
        linker,
        |state| state,
    )?;
    Ok(())
}

/// Who an instance runs for: the service and the invocation.
#[derive(Clone, Debug)]
pub struct Tag {
    /// The service.
    pub service: ServiceName,
    /// The invocation.
    pub invocation: InvocationId,
}

/// Why an instance could not be made for an invocation (a preopened
/// directory gone, a secret missing). Never holds a secret's value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    /// A mounted directory cannot be used any more.
    #[error("{0}")]
    Mount(#[from] MountError),
    /// A mounted directory could not be opened.
    #[error("cannot open {host} (mounted at {guest}): {error}")]
    Open {
        /// The host directory.
        host: String,
        /// Where the guest would see it.
        guest: String,
        /// Why.
        error: String,
    },
    /// A secret an environment variable refers to could not be read.
    #[error("environment variable {var}: {error}")]
    Secret {
        /// The variable.
        var: String,
        /// Why.
        error: SecretError,
    },
    /// The engine refused the fuel budget (it is not configured for fuel).
    #[error("the fuel budget could not be set: {0}")]
    Fuel(String),
}

/// The services a call passed through to reach this invocation, outermost
/// first (empty for an invocation started by a client, an event or a
/// schedule).
#[derive(Debug, Clone, Default)]
pub struct CallChain(pub Arc<[ServiceName]>);

impl CallChain {
    /// How many calls deep this invocation is.
    pub fn depth(&self) -> usize {
        self.0.len()
    }

    /// The chain as `a → b → c`.
    pub fn describe(&self, then: &str) -> String {
        let mut text = String::new();
        for name in self.0.iter() {
            text.push_str(name.as_str());
            text.push_str(" → ");
        }
        text.push_str(then);
        text
    }
}

/// What a service's instances are given, fixed for one revision: its
/// name and configuration, and the shared parts built once from them.
#[derive(Debug)]
pub struct Sandbox {
    /// The service's name and configuration.
    pub spec: ServiceSpec,
    /// The origins it may send HTTP requests to.
    pub outbound: Arc<[OutboundRule]>,
    /// The topics it may publish on.
    pub publish: Arc<[TopicPattern]>,
    /// How many of its invocations may run guest code at once once they
    /// are CPU-bound (see [`turns`]).
    pub cpu_turns: Arc<tokio::sync::Semaphore>,
    /// The linear memory its instances may hold together: its share of
    /// the host's budget.
    pub memory: Arc<limiter::MemoryBudget>,
}

impl Sandbox {
    /// The sandbox of `spec`, with `cpu_turns` turns and its share of the
    /// host's memory budget `memory`.
    pub fn new(spec: ServiceSpec, cpu_turns: usize, memory: &limiter::MemoryBudget) -> Sandbox {
        Sandbox {
            outbound: spec.config.allowed_outbound.clone().into(),
            publish: spec.config.publish.clone().into(),
            cpu_turns: Arc::new(tokio::sync::Semaphore::new(cpu_turns.max(1))),
            memory: limiter::MemoryBudget::share_of(memory),
            spec,
        }
    }

    /// The limits its invocations run under.
    pub fn limits(&self) -> &Limits {
        &self.spec.config.limits
    }
}

/// What instances reach beyond themselves, supplied by the host: one set
/// for the whole host.
#[derive(Clone, Default)]
pub struct Ports {
    /// Where secrets are read from.
    pub secrets: Secrets,
    /// The host's own addresses, which guests may never reach.
    pub listeners: Listeners,
    /// Where guests' events go; `None`: the host has no event bus.
    pub events: Option<EventPort>,
    /// Calls to other services; `None`: the host routes none.
    pub calls: Option<Arc<dyn ServiceCalls>>,
    /// Where finished spans go (nowhere unless the host exports traces).
    pub spans: Spans,
    /// How much guests may write to stdout and stderr.
    pub output: Arc<Outputs>,
    /// The linear memory all instances may hold together (the engine's).
    pub memory: Arc<limiter::MemoryBudget>,
}

/// One invocation, as its instance sees it.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Its id.
    pub id: InvocationId,
    /// Its place in a trace: passed on to what it calls and publishes.
    pub trace: TraceContext,
    /// When it must be done (enforced by the caller, which drops the
    /// call; the instance bounds outbound requests by it).
    pub deadline: tokio::time::Instant,
    /// The services a call passed through to reach it.
    pub chain: CallChain,
}

/// The instance's `wasi:http` context: header maps the guest makes hold
/// at most [`MAX_FIELDS_SIZE`] bytes each.
fn http_context() -> WasiHttpCtx {
    let mut http = WasiHttpCtx::new();
    http.set_field_size_limit(MAX_FIELDS_SIZE);
    http
}

/// Makes the `Store` for one invocation of the service of `sandbox`.
///
/// The WASI context is deny-by-default, and grants only what the
/// service's configuration lists (see [`crate::values::capabilities`]):
/// - stdin is closed; stdout and stderr become log lines tagged with the
///   service and invocation (see [`GuestOutput`]);
/// - environment variables: exactly the service's `env`, secrets read from
///   the host's secrets source now; no arguments;
/// - files: exactly the service's `files`, each a cap-std directory handle
///   (read-only unless `rw`) that no path can leave;
/// - no sockets: TCP, UDP and name lookups are refused;
/// - outgoing HTTP: only to the origins of `allowed_outbound` (see
///   [`egress`]), other services in-process;
/// - wall and monotonic clocks and random numbers come from the host;
/// - `berth:events/publisher` publishes only on the topics the service's
///   `publish` list allows, and the events carry the invocation's
///   `traceparent` (see [`crate::values::trace`]).
///
/// Limits: linear memory is capped by a [`MemoryLimiter`]; what the guest
/// makes the host hold by the number of handles it may have
/// ([`Limits::max_handles`]) and the size of each header map
/// ([`MAX_FIELDS_SIZE`]) and body write ([`BODY_CHUNK`](crate::values::limits::BODY_CHUNK)),
/// and outbound requests in flight by [`MAX_OUTBOUND_IN_FLIGHT`];
/// the fuel budget is set, and the epoch deadline yields to the async runtime on every
/// engine tick so a guest that never calls the host never holds a runtime
/// thread. (The wall-clock deadline itself is enforced by the caller, which
/// drops the invocation's future when it passes.) A guest still running
/// after a whole tick waits for a CPU turn (see [`turns`]).
pub fn new_store(
    engine: &wasmtime::Engine,
    sandbox: &Sandbox,
    ports: &Ports,
    invocation: Invocation,
) -> Result<Store<InstanceState>, StartError> {
    let tag = Tag {
        service: sandbox.spec.name.clone(),
        invocation: invocation.id,
    };
    let limits = sandbox.limits();
    let output = ports.output.instance(&tag);
    let wasi = wasi_context(sandbox, &ports.secrets, &output)?;
    let in_flight = in_flight();
    let outbound = outbound(sandbox, ports, &invocation, in_flight.clone());
    let publisher = publisher(sandbox, ports, &invocation);
    let state = InstanceState {
        table: ResourceTable::new(),
        wasi,
        http: http_context(),
        hooks: Hooks { tag, outbound },
        limiter: MemoryLimiter::new(
            limits.memory.bytes(),
            ports.memory.clone(),
            sandbox.memory.clone(),
        ),
        turn: CpuTurn::new(sandbox.cpu_turns.clone()),
        publisher,
        output,
        instance: None,
        in_flight,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    // What the guest can make the host hold outside its linear memory:
    // handles (each header map at most MAX_FIELDS_SIZE) bounded by its cap,
    // for each invocation a shared instance serves at once.
    let shared = sandbox.spec.config.reuse.map_or(1, |r| r.max_concurrent);
    store.set_max_component_handles(limits.max_handles().saturating_mul(shared as usize));
    budget(&mut store, limits)?;
    store.epoch_deadline_callback(|store| {
        let turn = store.data().turn.clone();
        Ok(UpdateDeadline::YieldCustom(1, Box::pin(turn.next_turn())))
    });
    store.call_hook(|store, hook| {
        if matches!(hook, wasmtime::CallHook::CallingHost) {
            store.data().turn.release();
        }
        Ok(())
    });
    Ok(store)
}

/// Gives a reused store to its next invocation: the invocation's tag,
/// trace, deadline and call chain for what it logs, calls and publishes; a
/// full fuel budget and a fresh epoch deadline; its memory peak counted
/// from what the instance holds now. What the guest keeps in its own
/// memory is not reset: that is what reuse is.
pub fn renew(
    store: &mut Store<InstanceState>,
    sandbox: &Sandbox,
    ports: &Ports,
    invocation: Invocation,
) -> Result<(), StartError> {
    let joining = joining(sandbox, ports, &invocation);
    let state = store.data_mut();
    for output in &state.output {
        output.retag(joining.hooks.tag.clone());
    }
    state.join(joining);
    state.limiter.renew();
    state.turn.release();
    budget(store, sandbox.limits())
}

/// An invocation's fuel budget and the first epoch check.
fn budget(store: &mut Store<InstanceState>, limits: &Limits) -> Result<(), StartError> {
    store
        .set_fuel(limits.fuel)
        .map_err(|e| StartError::Fuel(e.to_string()))?;
    // The first check comes after one to two ticks: a guest that answers
    // within a tick (most do) never yields or queues for a turn; one
    // still running after a whole tick is CPU-bound.
    store.set_epoch_deadline(2);
    Ok(())
}

/// What an invocation may send out, if the service may send anything.
fn outbound(
    sandbox: &Sandbox,
    ports: &Ports,
    invocation: &Invocation,
    in_flight: Arc<tokio::sync::Semaphore>,
) -> Option<Outbound> {
    (!sandbox.outbound.is_empty()).then(|| Outbound {
        rules: sandbox.outbound.clone(),
        trace: invocation.trace,
        deadline: invocation.deadline,
        chain: invocation.chain.clone(),
        listeners: ports.listeners.clone(),
        calls: ports.calls.clone(),
        spans: ports.spans.clone(),
        in_flight,
    })
}

/// Permits for [`MAX_OUTBOUND_IN_FLIGHT`] requests.
fn in_flight() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(MAX_OUTBOUND_IN_FLIGHT))
}

/// What an invocation may publish, if the host has an event bus.
fn publisher(sandbox: &Sandbox, ports: &Ports, invocation: &Invocation) -> Option<Publisher> {
    ports.events.as_ref().map(|events| Publisher {
        service: sandbox.spec.name.clone(),
        invocation: invocation.id,
        allowed: sandbox.publish.clone(),
        sink: events.sink.clone(),
        max_event_size: events.max_event_size,
        trace: invocation.trace,
    })
}

/// The WASI context of one instance: output streams, sockets refused,
/// the service's directories and environment.
fn wasi_context(
    sandbox: &Sandbox,
    secrets: &Secrets,
    output: &[GuestOutput; 2],
) -> Result<WasiCtx, StartError> {
    let config = &sandbox.spec.config;
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(output[0].clone())
        .stderr(output[1].clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for mount in &config.files {
        preopen(&mut wasi, mount)?;
    }
    for (name, value) in &config.env {
        match value {
            EnvValue::Value(value) => wasi.env(name, value),
            EnvValue::Secret(secret) => {
                let value = secrets.read(secret).map_err(|error| StartError::Secret {
                    var: name.clone(),
                    error,
                })?;
                wasi.env(name, value)
            }
        };
    }
    Ok(wasi.build())
}

/// Preopens one mounted directory, after checking it is still the one the
/// service was deployed with.
fn preopen(wasi: &mut WasiCtxBuilder, mount: &FileMount) -> Result<(), StartError> {
    mount.check_unchanged()?;
    let perms = match mount.mode {
        Mode::Ro => FsPerms::ReadOnly,
        Mode::Rw => FsPerms::ReadWrite,
    };
    wasi.preopened_dir(&mount.host, mount.guest.as_str(), perms)
        .map_err(|e| StartError::Open {
            host: mount.host.display().to_string(),
            guest: mount.guest.to_string(),
            error: e.to_string(),
        })?;
    Ok(())
}
