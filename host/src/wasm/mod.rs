//! The wasm layer: wasmtime and what Berth builds directly on it. It knows
//! the values below it and nothing above: no runtime, no trigger, no
//! control plane. What an instance needs from above (calling another
//! service, publishing, secrets) is injected through
//! [`instance::Ports`].
//!
//! - [`engine`] — the one wasmtime engine, its linker and epoch ticker.
//! - [`budget`] — the host's budget of guest linear memory.
//! - [`cache`] — compiled code on disk, keyed by digest and engine.
//! - [`artifact`] — `.wasm` components on disk, by digest.
//! - [`component`] — loading and checking a component into handlers.
//! - [`bindings`] — the `berth:events` WIT bindings.
//! - [`instance`] — the per-invocation `Store`: WASI context, limits,
//!   CPU turns, logs, the egress firewall, publishing.
//! - [`secrets`] — where secret values are read from.
//! - [`outcome`] — how a guest's run ended.

pub mod artifact;
pub mod bindings;
pub mod budget;
pub mod cache;
pub mod component;
pub mod engine;
pub mod instance;
pub mod outcome;
pub mod secrets;
