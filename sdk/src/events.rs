//! Events: handling them, and publishing them.
//!
//! A handler receives each event at least once, and returns `Ok(())` when
//! it is done with it. An error — or a panic, or running out of fuel or
//! time — makes the host deliver it again after a backoff, up to the
//! subscription's `max_attempts`, then keep it as a dead letter.
//! [`Error::reject`] skips the retries.
//!
//! ```no_run
//! use berth_sdk::events::{Error, Event};
//!
//! fn handle(event: Event) -> Result<(), Error> {
//!     let order: serde_json::Value = event.json()?;
//!     if order["total"].is_null() {
//!         return Err(Error::reject("an order without a total"));
//!     }
//!     println!("order {} on attempt {}", event.id(), event.attempt());
//!     Ok(())
//! }
//! berth_sdk::event_handler!(handle);
//! ```

use crate::wit::consumer::berth::events::types::{
    Event as WitEvent, HandleError, NewEvent as WitNewEvent, PublishError as WitPublishError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;

/// A CloudEvents 1.0 event, as delivered.
#[derive(Debug, Clone)]
pub struct Event {
    inner: WitEvent,
}

impl Event {
    /// The topic it was published on.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// Its id (unique for its source).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Who published it.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Its type.
    pub fn event_type(&self) -> &str {
        &self.inner.type_
    }

    /// What it is about.
    pub fn subject(&self) -> Option<&str> {
        self.inner.subject.as_deref()
    }

    /// When it happened (RFC 3339).
    pub fn time(&self) -> Option<&str> {
        self.inner.time.as_deref()
    }

    /// Its data's media type.
    pub fn content_type(&self) -> Option<&str> {
        self.inner.datacontenttype.as_deref()
    }

    /// Its data (empty if it has none).
    pub fn data(&self) -> &[u8] {
        self.inner.data.as_deref().unwrap_or_default()
    }

    /// Its data as text.
    pub fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(self.data())
    }

    /// Its data parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.data())
    }

    /// An extension attribute.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.inner
            .extensions
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// 1 for the first delivery, 2 for the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }
}

/// Why a handler did not handle an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Deliver it again later.
    Retry(String),
    /// Never deliver it again: dead-letter it now.
    Reject(String),
}

impl Error {
    /// Retry later (what `?` on any error does).
    pub fn retry(why: impl Into<String>) -> Error {
        Error::Retry(why.into())
    }

    /// Dead-letter the event now.
    pub fn reject(why: impl Into<String>) -> Error {
        Error::Reject(why.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Retry(why) => write!(f, "retry: {why}"),
            Error::Reject(why) => write!(f, "reject: {why}"),
        }
    }
}

macro_rules! retry_on {
    ($($ty:ty),*) => {$(
        impl From<$ty> for Error {
            fn from(e: $ty) -> Error {
                Error::Retry(e.to_string())
            }
        }
    )*};
}

retry_on!(
    serde_json::Error,
    std::str::Utf8Error,
    PublishError,
    String,
    &str
);

/// An event to publish; the host fills in `source` (this service) and
/// `time`, and `id` unless set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    event_type: String,
    id: Option<String>,
    subject: Option<String>,
    content_type: Option<String>,
    data: Option<Vec<u8>>,
    extensions: Vec<(String, String)>,
}

impl NewEvent {
    /// An event of `event_type` without data.
    pub fn new(event_type: impl Into<String>) -> NewEvent {
        NewEvent {
            event_type: event_type.into(),
            id: None,
            subject: None,
            content_type: None,
            data: None,
            extensions: Vec::new(),
        }
    }

    /// An event of `event_type` carrying `value` as JSON.
    pub fn json<T: Serialize>(
        event_type: impl Into<String>,
        value: &T,
    ) -> Result<NewEvent, serde_json::Error> {
        Ok(NewEvent::new(event_type).with_data("application/json", serde_json::to_vec(value)?))
    }

    /// Sets the data and its media type.
    pub fn with_data(mut self, content_type: &str, data: impl Into<Vec<u8>>) -> NewEvent {
        self.content_type = Some(content_type.to_owned());
        self.data = Some(data.into());
        self
    }

    /// Sets the subject.
    pub fn with_subject(mut self, subject: impl Into<String>) -> NewEvent {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the id (for publishers that deduplicate).
    pub fn with_id(mut self, id: impl Into<String>) -> NewEvent {
        self.id = Some(id.into());
        self
    }

    /// Adds an extension attribute (a lowercase alphanumeric name).
    pub fn with_extension(mut self, name: &str, value: &str) -> NewEvent {
        self.extensions.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// Why an event was not published. Nothing was published in any case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// This service may not publish on that topic (see `publish` in its
    /// configuration).
    Denied(String),
    /// The event is larger than the host accepts (the limit, in bytes).
    TooLarge(u64),
    /// The topic or an attribute is malformed.
    Invalid(String),
    /// The host could not store it.
    Unavailable(String),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Denied(why) => write!(f, "publish denied: {why}"),
            PublishError::TooLarge(limit) => {
                write!(f, "the event is over the host's limit of {limit} bytes")
            }
            PublishError::Invalid(why) => write!(f, "invalid event: {why}"),
            PublishError::Unavailable(why) => write!(f, "the event could not be stored: {why}"),
        }
    }
}

impl std::error::Error for PublishError {}

/// Publishes `event` on `topic`; returns its id once it is durably stored.
pub fn publish(topic: &str, event: NewEvent) -> Result<String, PublishError> {
    let event = WitNewEvent {
        type_: event.event_type,
        id: event.id,
        subject: event.subject,
        datacontenttype: event.content_type,
        data: event.data,
        extensions: event.extensions,
    };
    crate::wit::producer::berth::events::publisher::publish(topic, &event).map_err(|e| match e {
        WitPublishError::Denied(why) => PublishError::Denied(why),
        WitPublishError::TooLarge(limit) => PublishError::TooLarge(limit),
        WitPublishError::Invalid(why) => PublishError::Invalid(why),
        WitPublishError::Unavailable(why) => PublishError::Unavailable(why),
    })
}

/// Publishes `value` as JSON in an event of `event_type` on `topic`.
pub fn publish_json<T: Serialize>(
    topic: &str,
    event_type: &str,
    value: &T,
) -> Result<String, PublishError> {
    let event =
        NewEvent::json(event_type, value).map_err(|e| PublishError::Invalid(e.to_string()))?;
    publish(topic, event)
}

/// Runs `handler` on a delivered event. Used by
/// [`event_handler!`](crate::event_handler).
#[doc(hidden)]
pub fn __handle(
    event: WitEvent,
    handler: impl Fn(Event) -> Result<(), Error>,
) -> Result<(), HandleError> {
    handler(Event { inner: event }).map_err(|e| match e {
        Error::Retry(why) => HandleError::Retry(why),
        Error::Reject(why) => HandleError::Reject(why),
    })
}
