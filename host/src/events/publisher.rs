//! `berth:events/publisher`: how guests publish. A service may publish only
//! on the topics its `publish` list allows; the call returns once the event
//! is durably stored (it counts toward the invocation's deadline).

use super::bindings::berth::events::publisher::Host as PublisherHost;
use super::bindings::berth::events::types::{Host as TypesHost, NewEvent, PublishError};
use super::bus::Bus;
use super::{Attributes, Event, Topic, TopicPattern};
use crate::instance::InstanceState;
use crate::invoke::InvocationId;
use crate::service::ServiceName;
use crate::trace::{TRACEPARENT, TraceContext};
use crate::units::{now_ms, rfc3339};
use bytes::Bytes;
use std::sync::Arc;

/// What one instance may publish, and where.
#[derive(Clone)]
pub struct Publisher {
    /// The publishing service (the events' `source`).
    pub service: ServiceName,
    /// The invocation publishing.
    pub invocation: InvocationId,
    /// The topic patterns it may publish on.
    pub allowed: Arc<[TopicPattern]>,
    /// The bus.
    pub bus: Arc<dyn Bus>,
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
        match publisher.bus.publish(vec![event]).await {
            Ok(_) => {
                tracing::debug!(service = %publisher.service, %topic, id, "published");
                Ok(Ok(id))
            }
            Err(e) => Ok(Err(PublishError::Unavailable(e.to_string()))),
        }
    }
}
