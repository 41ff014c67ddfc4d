//! The events trigger: durable, at-least-once invocations from events.
//!
//! - The [`bus`] stores events and hands out deliveries: its trait is what
//!   an embedded SQLite bus (the control plane's, the default) and a NATS
//!   JetStream bus implement alike.
//! - The [`dispatch`]er runs each delivery through the pipeline, like an
//!   HTTP request, and acknowledges, retries or dead-letters it.
//! - [`cloudevents`] reads and writes the CloudEvents HTTP binding.
//! - [`BusSink`] is where guests' events go: the bus, as instances see it.
//!
//! `docs/events.md` is the guide.

pub mod bus;
pub mod cloudevents;
pub mod dispatch;

use crate::values::event::Event;
use crate::wasm::instance::publish::{EventSink, SinkError};
use bus::Bus;
use std::sync::Arc;

/// The bus as the sink of guests' events.
pub struct BusSink(pub Arc<dyn Bus>);

#[async_trait::async_trait]
impl EventSink for BusSink {
    async fn publish(&self, events: Vec<Event>) -> Result<(), SinkError> {
        self.0
            .publish(events)
            .await
            .map(|_| ())
            .map_err(|e| SinkError(e.to_string()))
    }
}
