//! The bus: what stores events and hands out their deliveries. Triggers and
//! dispatch only see this trait, so the embedded SQLite bus and a NATS
//! JetStream bus are interchangeable.
//!
//! The contract:
//!
//! - [`Bus::publish`] returns only once the events are durable; each event
//!   gets one delivery per subscription whose pattern matches its topic at
//!   that moment (an event no subscription matches is counted and dropped).
//! - [`Bus::fetch`] hands out due deliveries of one subscription; a
//!   delivery stays pending until it is [settled](Bus::settle). One that is
//!   never settled (the host crashed) is delivered again after a restart:
//!   delivery is at least once.
//! - A settled failure is retried at the time given, or moved to the dead
//!   letters, with its last error.

use crate::values::event::{Event, Subscription};
use crate::values::service::ServiceName;
use async_trait::async_trait;

/// Why the bus could not do something.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// Storage failed (disk full, I/O error, ...). Nothing was published.
    #[error("the event bus could not store the change: {0}")]
    Storage(String),
    /// The bus is shut down.
    #[error("the event bus is shut down")]
    Closed,
    /// The bus's servers cannot be reached now (a cluster cut off from
    /// NATS). Nothing was published.
    #[error("{0}")]
    Unavailable(String),
}

/// A subscription as the bus knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// `service:pattern`, stable across revisions.
    pub id: String,
    /// The service that receives the deliveries.
    pub service: ServiceName,
    /// Its topic pattern and retry policy.
    pub subscription: Subscription,
    /// How long one delivery may run: its service's timeout.
    pub ack_wait: std::time::Duration,
}

/// One delivery of one event to one subscription.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The subscription.
    pub subscription: String,
    /// The bus's handle on the event (its sequence number).
    pub seq: u64,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: u32,
    /// The event.
    pub event: std::sync::Arc<Event>,
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Handled: forget it.
    Ack,
    /// Failed: try again at `at_ms` (ms since the epoch).
    Retry {
        /// When.
        at_ms: i64,
        /// What went wrong this time.
        error: String,
    },
    /// Failed for good: keep it as a dead letter.
    Dead {
        /// What went wrong the last time.
        error: String,
    },
    /// Not attempted (the service is busy or not loaded): hand it out again
    /// at `at_ms`, without counting an attempt.
    Defer {
        /// When.
        at_ms: i64,
    },
}

/// What a subscription has waiting.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubscriptionStats {
    /// `service:pattern`.
    pub subscription: String,
    /// The service.
    pub service: String,
    /// The pattern.
    pub topic: String,
    /// Deliveries waiting (not in flight), retries included.
    pub depth: u64,
    /// Deliveries being handled now.
    pub in_flight: u64,
    /// Of `depth`, deliveries waiting for a retry.
    pub retrying: u64,
    /// Dead letters kept.
    pub dead_letters: u64,
    /// Whether a service currently holds this subscription (its backlog is
    /// kept, undelivered, while none does).
    pub active: bool,
    /// How long the most overdue waiting delivery has been due, in ms (0
    /// when none is): the bus's lag behind its publishers.
    #[serde(default)]
    pub lag_ms: u64,
}

/// A topic's counters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicStats {
    /// The topic.
    pub topic: String,
    /// Events published on it.
    pub published: u64,
    /// Of those, events no subscription matched (accepted and dropped).
    pub unrouted: u64,
}

/// A dead letter: an event that failed every attempt for a subscription.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The subscription.
    pub subscription: String,
    /// The bus's handle on the event.
    pub seq: u64,
    /// The event.
    pub event: Event,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// When it was given up (ms since the epoch).
    pub dead_ms: i64,
}

/// Which dead letters to deliver again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// Those of the event with this CloudEvents id.
    Id(String),
    /// All of them.
    All,
}

/// An event bus.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Stores `events` durably and fans them out; returns, per event, the
    /// number of deliveries made.
    async fn publish(&self, events: Vec<Event>) -> Result<Vec<usize>, BusError>;

    /// The subscriptions that exist now. Deliveries of a subscription that
    /// disappears are kept until it comes back or is dropped.
    async fn set_subscriptions(&self, subscriptions: Vec<SubscriptionSpec>)
    -> Result<(), BusError>;

    /// Forgets everything pending for the subscriptions of `service`
    /// (the service was removed).
    async fn drop_service(&self, service: &str) -> Result<(), BusError>;

    /// `service` now holds only the subscriptions `keep` (a new revision,
    /// or a rollback, changed them). A bus that keeps the backlog of a
    /// subscription that disappears (the embedded one: until it comes
    /// back) does nothing; one whose subscriptions would go on collecting
    /// events forever (JetStream's consumers) forgets the others.
    async fn retain(&self, _service: &str, _keep: &[String]) -> Result<(), BusError> {
        Ok(())
    }

    /// Waits until deliveries of `subscription` are due, and returns up to
    /// `max` of them (empty if the subscription no longer exists).
    async fn fetch(&self, subscription: &str, max: usize) -> Result<Vec<Delivery>, BusError>;

    /// Ends a delivery.
    async fn settle(&self, delivery: &Delivery, how: Settle) -> Result<(), BusError>;

    /// Counters per subscription.
    async fn stats(&self) -> Result<Vec<SubscriptionStats>, BusError>;

    /// Counters per topic.
    async fn topics(&self) -> Result<Vec<TopicStats>, BusError>;

    /// The dead letters, optionally of one topic.
    async fn dead_letters(&self, topic: Option<&str>) -> Result<Vec<DeadLetter>, BusError>;

    /// Delivers dead letters again, from the first attempt; returns how many.
    async fn replay(&self, which: Replay) -> Result<usize, BusError>;

    /// Deletes dead letters, optionally of one topic; returns how many.
    async fn purge(&self, topic: Option<&str>) -> Result<usize, BusError>;
}
