//! Values: the plain data every other layer speaks in — parsed, validated
//! and printable, with no behaviour beyond that. Nothing here knows
//! WebAssembly, the runtime, a trigger or the control plane.
//!
//! - [`units`] — byte sizes, durations, times.
//! - [`limits`] — per-service resource limits and their defaults.
//! - [`route`] — routes and the route table.
//! - [`name`] — service names.
//! - [`service`] — a service's configuration; [`invalid`] says why one is
//!   refused.
//! - [`topic`], [`event`] — topics, CloudEvents, subscriptions.
//! - [`schedule`], [`cron`] — schedules and cron expressions.
//! - [`capabilities`] — files, environment, secrets' names, outbound rules.
//! - [`gateway`] — what the edge asks of callers: auth, rate limits, CORS;
//!   [`key`] — API keys.
//! - [`id`], [`digest`], [`trace`] — invocation ids, artifact digests, W3C
//!   trace context.
//! - [`reuse`] — a service's opt-in to instance reuse.
//! - [`usage`] — usage records, triggers and outcomes.
//! - [`manifest`] — the `berth.toml` format and its diagnostics.

pub mod capabilities;
pub mod cron;
pub mod digest;
pub mod event;
pub mod gateway;
pub mod id;
pub mod invalid;
pub mod key;
pub mod limits;
pub mod manifest;
pub mod name;
pub mod reuse;
pub mod route;
pub mod schedule;
pub mod service;
pub mod topic;
pub mod trace;
pub mod units;
pub mod usage;
