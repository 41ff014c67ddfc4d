//! The control plane: what changes a host's services and keeps its
//! records — deploys, state, the scheduler, the embedded bus, the usage
//! ledger and the admin API. It builds on the triggers and the runtime
//! below it, and is driven by the [`host`](crate::host) and the CLI above.
//!
//! - [`deploy`] — deploys, upgrades, rollbacks, removals, restore.
//! - [`catalog`] — the store of record: local state or a cluster's.
//! - [`cluster`] — a cluster of nodes on NATS JetStream.
//! - [`state`] — the SQLite state: artifacts index, services, revisions,
//!   API keys.
//! - [`keys`] — API keys: made, listed, revoked.
//! - [`scheduler`] — fires schedules on time.
//! - [`sqlite_bus`] — the embedded, SQLite-backed event bus.
//! - [`ledger`] — the usage ledger: one record per invocation.
//! - [`traces`] — spans out over OTLP.
//! - [`admin`] — the admin API: HTTP + JSON, bearer-token auth.
//! - [`console`] — the operator console: pages on the admin listener.

pub mod admin;
pub mod catalog;
pub mod cluster;
pub mod console;
pub mod deploy;
pub mod keys;
pub mod ledger;
pub mod scheduler;
pub mod sqlite_bus;
pub mod state;
pub mod traces;

pub use deploy::{ControlError, ControlPlane, Events, Parts, ServiceStatus};
