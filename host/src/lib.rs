//! # Berth
//!
//! A host for microservices and functions packaged as WebAssembly
//! components: each service runs as a sandboxed `wasi:http/proxy` (or
//! `berth:events`) component, with a fresh instance per invocation under a
//! memory cap, a fuel budget and a wall-clock deadline.
//!
//! How an invocation is served, whatever triggered it:
//!
//! 1. A trigger receives work: an HTTP request on the public listener
//!    ([`triggers::http`]), a service call, or an event delivery
//!    ([`triggers::events`]).
//! 2. It hands it to the one pipeline, [`runtime::pipeline::invoke`]:
//!    admission, the component (loaded from the code cache on a cold
//!    start), a fresh instance under its limits and deadline, the guest's
//!    run, its outcome, and its usage record.
//! 3. The trigger maps what happened to its own result: an HTTP status; an
//!    acknowledgement, a retry or a dead letter.
//!
//! The [`control`] plane changes what the runtime serves (deploys,
//! rollbacks, restores), keeps the state, the event bus and the usage
//! ledger, and serves the admin API. A [`host::Host`] puts it all
//! together; the [`cli`] is flag parsing around it.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! use berth::host::{Host, HostOptions, Listeners};
//! use berth::triggers::http::Listener;
//!
//! let state = tempfile::tempdir()?;
//! // State, artifacts, code cache, ledger, bus and runtime, restored.
//! let host = Host::open(HostOptions::new(state.path())).await?;
//! // (Deploy services here: `host.control().upload(…)`, `.deploy(…)`.)
//! // Plain HTTP/1.1 and h2c under the default limits (see `Listener` for
//! // TLS).
//! let public = Listener::plain(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
//! let listeners = Listeners { public, admin: None };
//! // Serves until the shutdown future resolves (here at once), then
//! // drains in-flight invocations and closes the ledger.
//! host.serve(listeners, async {}).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! The modules are layers. Data flows down: no module imports from a layer
//! above its own (a test, `layering`, checks every `use`).
//!
//! 1. [`values`] — plain data: units, limits, routes, names, service
//!    configuration, topics, events, schedules, cron, capabilities, ids,
//!    digests, trace context, usage records, the manifest.
//! 2. [`wasm`] — wasmtime: the engine, the code cache, artifacts, loading
//!    components, the per-invocation instance (limits, CPU turns, guest
//!    logs, the egress firewall, publishing), secrets, outcomes. What an
//!    instance needs from above is injected ([`wasm::instance::Ports`]).
//! 3. [`runtime`] — the core: admission, the registry of services, the
//!    one invocation pipeline, usage records and metrics.
//! 4. [`triggers`] — HTTP (and service calls) and events: how each
//!    receives work and maps outcomes.
//! 5. [`control`] — deploys, state, the scheduler, the embedded bus, the
//!    usage ledger, the admin API.
//! 6. [`host`] — a host: the control plane over a state directory, served
//!    until shutdown.
//! 7. [`cli`] — the `berth` command line.

#![deny(missing_docs)]

pub mod cli;
pub mod control;
pub mod host;
pub mod runtime;
pub mod triggers;
pub mod values;
pub mod wasm;

#[cfg(test)]
mod layering;
