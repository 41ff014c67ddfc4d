//! `berth:events/publisher`: how guests publish. A service may publish only
//! on the topics its `publish` list allows; the call returns once the event
//! is durably stored (it counts toward the invocation's deadline). Where
//! events go is the host's [`EventSink`].

use super::InstanceState;
use crate::values::event::{Attributes, Event};
use crate::values::id::InvocationId;
use crate::values::service::ServiceName;
use crate::values::topic::{Topic, TopicPattern};
use crate::values::trace::{TRACEPARENT, TraceContext};
use crate::values::units::{now_ms, rfc3339};
use crate::wasm::bindings::berth::events::publisher::Host as PublisherHost;
use crate::wasm::bindings::berth::events::types::{Host as TypesHost, NewEvent, PublishError};
use bytes::Bytes;
use std::sync::Arc;

/// Where guests' events go: the host's event bus, supplied by the host so
/// that an instance knows no bus.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Stores `events` durably, or says why it could not.
    async fn publish(&self, events: Vec<Event>) -> Result<(), SinkError>;
}

/// Why an [`EventSink`] could not store events (the guest sees the text).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// The event sink an instance publishes to, and the largest event it takes.
#[derive(Clone)]
pub struct EventPort {
    /// Where events go.
    pub sink: Arc<dyn EventSink>,
    /// The largest event accepted, in bytes.
    pub max_event_size: usize,
}

/// What one instance may publish, and where.
#[derive(Clone)]
pub struct Publisher {
    /// The publishing service (the events' `source`).
    pub service: ServiceName,
    /// The invocation publishing.
    pub invocation: InvocationId,
    /// The topic patterns it may publish on.
    pub allowed: Arc<[TopicPattern]>,
    /// Where events go.
    pub sink: Arc<dyn EventSink>,
    /// The largest event accepted, in bytes.
    pub max_event_size: usize,
    /// The publishing invocation's trace: events carry it on as their
    /// `traceparent` extension unless the guest set one.
    pub trace: TraceContext,
}

impl Publisher {
    /// Checks a guest's event and makes it a full CloudEvent.
    pub fn event(&self, topic: &str, new: NewEvent) -> Result<Event, PublishError> {
        let topic = Topic::parse(topic).map_err(|e| PublishError::Invalid(e.to_string()))?;
        if topic.is_system() || !self.allowed.iter().any(|p| p.matches(&topic)) {
            return Err(PublishError::Denied(format!(
                "service `{}` may not publish on {topic}: its `publish` list does not allow it",
                self.service
            )));
        }
        if new.type_.is_empty() {
            return Err(PublishError::Invalid(
                "the event `type` must not be empty".into(),
            ));
        }
        let mut extensions = std::collections::BTreeMap::new();
        for (name, value) in new.extensions {
            if name.is_empty()
                || name.len() > 20
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Err(PublishError::Invalid(format!(
                    "extension name {name:?}: 1 to 20 lowercase letters and digits"
                )));
            }
            extensions.insert(name, value);
        }
        extensions
            .entry(TRACEPARENT.to_owned())
            .or_insert_with(|| self.trace.traceparent());
        let event = Event {
            topic,
            attributes: Attributes {
                id: new.id.unwrap_or_else(|| InvocationId::new().to_string()),
                source: format!("/services/{}", self.service),
                ty: new.type_,
                subject: new.subject,
                time: Some(rfc3339(now_ms())),
                datacontenttype: new.datacontenttype,
                extensions,
            },
            data: new.data.map(Bytes::from),
        };
        if event.size() > self.max_event_size {
            return Err(PublishError::TooLarge(self.max_event_size as u64));
        }
        Ok(event)
    }
}

impl TypesHost for InstanceState {}

impl PublisherHost for InstanceState {
    async fn publish(
        &mut self,
        topic: String,
        event: NewEvent,
    ) -> wasmtime::Result<Result<String, PublishError>> {
        let Some(publisher) = self.publisher().cloned() else {
            return Ok(Err(PublishError::Unavailable(
                "this host has no event bus".into(),
            )));
        };
        let event = match publisher.event(&topic, event) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(
                    service = %publisher.service,
                    invocation = %publisher.invocation,
                    %topic,
                    error = ?e,
                    "publish refused"
                );
                return Ok(Err(e));
            }
        };
        let id = event.attributes.id.clone();
        match publisher.sink.publish(vec![event]).await {
            Ok(()) => {
                tracing::debug!(service = %publisher.service, %topic, id, "published");
                Ok(Ok(id))
            }
            Err(e) => Ok(Err(PublishError::Unavailable(e.to_string()))),
        }
    }
}
