//! Triggers: what starts invocations. Each receives its work its own way
//! and hands it to the one pipeline ([`crate::runtime::pipeline`]) as a
//! [`GuestCall`](crate::runtime::pipeline::GuestCall): how to call the
//! guest, and how to map the outcome to its own result.
//!
//! - [`http`] — the public listener (and service-to-service calls).
//! - [`events`] — event subscriptions and schedules, from the bus.

pub mod events;
pub mod http;
