//! # Berth
//!
//! A host for microservices and functions packaged as WebAssembly
//! components: each service runs as a sandboxed `wasi:http/proxy` component,
//! with a fresh instance per invocation under a memory cap, a fuel budget
//! and a wall-clock deadline.
//!
//! How a request is served:
//!
//! 1. [`manifest`] reads `berth.toml` into validated [`service`] specs.
//! 2. [`component`] turns each `.wasm` [`artifact`] into a pre-instantiated
//!    handler, compiling it at most once per engine thanks to the [`cache`].
//! 3. The [`runtime`] holds the services and their [`route`] table; the
//!    [`http`] listener routes each request there.
//! 4. [`admission`] bounds how many instances of a service run and wait.
//! 5. [`instance`] makes a fresh `Store` (deny-by-default WASI, limits) and
//!    [`invoke`] runs the guest under its deadline, names the outcome and
//!    meters it: a [`usage`] record and [`metrics`].
//!
//! `berth serve` adds the [`control`] plane: durable [`state`], the
//! [`admin`] API, and live deploys that swap the runtime's services
//! atomically. [`events`] add a second trigger: subscriptions and
//! schedules, delivered at least once through a durable bus.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use berth::{cache::CodeCache, component, engine, manifest::Manifest, runtime};
//! use std::sync::Arc;
//!
//! let manifest = Manifest::load("berth.toml".as_ref())?;
//! manifest.check_components()?;
//! let engine = engine::BerthEngine::new(&engine::EngineOptions::default())?;
//! let cache = CodeCache::new("/tmp/berth-code", engine.engine())?;
//! let artifacts = berth::artifact::ArtifactStore::open("/tmp/berth-artifacts")?;
//! let runtime = runtime::Runtime::new(engine, runtime::default_cpu_turns());
//! let mut services = Vec::new();
//! for entry in &manifest.services {
//!     let bytes = std::fs::read(&entry.component)?;
//!     let (handlers, _report) = component::load(runtime.engine(), &cache, &bytes)?;
//!     handlers.check(&entry.spec.config)?;
//!     artifacts.put(&handlers.digest, &bytes)?;
//!     let source = component::Source { digest: handlers.digest, artifacts: artifacts.clone(), cache: cache.clone() };
//!     services.push(Arc::new(runtime::Service::new(&runtime, entry.spec.clone(), 1, source, Some(handlers))));
//! }
//! runtime.replace_all(services)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! berth::http::serve(listener, runtime, berth::shutdown::signal()).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`admin`] — the admin API: HTTP + JSON, bearer-token auth.
//! - [`admission`] — per-service concurrency, wait queue, host-wide gate.
//! - [`api`] — the admin API's resources as JSON.
//! - [`artifact`] — artifacts (`.wasm` components) and their digests.
//! - [`cache`] — compiled code on disk, keyed by digest and engine.
//! - [`capabilities`] — files, env vars, secrets, outbound HTTP a guest is given.
//! - [`cli`] — the `berth` command line.
//! - [`client`] — the CLI's client of the admin API.
//! - [`component`] — loading and checking a component into a handler.
//! - [`control`] — deploys, upgrades, rollbacks, removals, restore.
//! - [`engine`] — the one wasmtime engine, its linker and epoch ticker.
//! - [`events`] — topics, CloudEvents, the bus, dispatch, schedules.
//! - [`http`] — the public listener, the HTTP trigger, bodies.
//! - [`instance`] — the per-invocation `Store`: WASI context, limits, logs.
//! - [`invoke`] — invocation ids, deadlines and outcomes.
//! - [`limits`] — per-service resource limits and their defaults.
//! - [`manifest`] — the `berth.toml` format and its diagnostics.
//! - [`metrics`] — Prometheus metrics, served at `/metrics`.
//! - [`route`] — routes and the route table.
//! - [`runtime`] — the loaded services and the route table that finds them.
//! - [`service`] — service names and configuration.
//! - [`shutdown`] — shutdown signals.
//! - [`state`] — the SQLite state: artifacts index, services, revisions.
//! - [`telemetry`] — logging, as text or JSON.
//! - [`trace`] — W3C trace context, in and out.
//! - [`units`] — byte sizes, durations and times.
//! - [`usage`] — the usage ledger: one record per invocation.

#![deny(missing_docs)]

pub mod admin;
pub mod admission;
pub mod api;
pub mod artifact;
pub mod cache;
pub mod capabilities;
pub mod cli;
pub mod client;
pub mod component;
pub mod control;
pub mod engine;
pub mod events;
pub mod http;
pub mod instance;
pub mod invoke;
pub mod limits;
pub mod manifest;
pub mod metrics;
pub mod route;
pub mod runtime;
pub mod service;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod trace;
pub mod units;
pub mod usage;
