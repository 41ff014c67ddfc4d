//! The event bus of a cluster, on JetStream, behind the same [`Bus`] trait
//! as the embedded SQLite bus.
//!
//! - Events are messages of the stream `BERTH_EVENTS` on the subject
//!   `berth.ev.<topic>` (topics are NATS subjects already); the CloudEvents
//!   attributes travel in the header `Berth-Event`, the data as the
//!   payload. A publish returns once JetStream has stored the event on a
//!   majority of its replicas. `Nats-Msg-Id` is the event's topic, `source`
//!   and `id`: the same CloudEvent published twice on a topic within the
//!   stream's duplicate window (2 minutes) is stored once.
//! - Each subscription is one durable pull consumer shared by every node,
//!   filtering `berth.ev.<pattern>` and its own `berth.retry.<consumer>`
//!   (where replayed dead letters go): each delivery runs on one node at a
//!   time. The stream keeps a message while a consumer has yet to
//!   acknowledge it (interest retention).
//! - A success is acknowledged; a failure is handed back with a delay
//!   (`nak` with the subscription's backoff) and counted by JetStream; after
//!   `max_attempts` the event goes to the stream `BERTH_DEAD`
//!   (`berth.dead.<consumer>.<topic>`, with the last error) and is
//!   acknowledged. A node that dies mid-delivery never acknowledges: the
//!   event goes to another node when its ack deadline passes (the
//!   service's timeout, twice, plus [`ACK_MARGIN`]).
//! - A delivery a node hands back without trying it (the service is busy
//!   or not served there) is also handed back with a delay, and JetStream
//!   counts it as a delivery: on this bus, such hand-backs count toward
//!   `max_attempts`.
//! - Counters per topic are those of the events published through this
//!   node (the subscriptions' counters are the cluster's).

use super::Cluster;
use crate::triggers::events::bus::{
    Bus, BusError, DeadLetter, Delivery, Replay, Settle, SubscriptionSpec, SubscriptionStats,
    TopicStats,
};
use crate::values::event::{Attributes, Event};
use crate::values::topic::Topic;
use crate::values::units::now_ms;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The events stream.
pub const EVENTS_STREAM: &str = "BERTH_EVENTS";
/// The dead letters stream.
pub const DEAD_STREAM: &str = "BERTH_DEAD";

const EVENT_HEADER: &str = "Berth-Event";
const TOPIC_HEADER: &str = "Berth-Topic";
const ERROR_HEADER: &str = "Berth-Error";
const ATTEMPTS_HEADER: &str = "Berth-Attempts";
const SUBSCRIPTION_HEADER: &str = "Berth-Subscription";
const DEAD_MS_HEADER: &str = "Berth-Dead-Ms";

/// Added to a delivery's ack deadline beyond twice its service's timeout.
pub const ACK_MARGIN: Duration = Duration::from_secs(10);

/// How long making a consumer is tried again.
const CREATE_PATIENCE: Duration = Duration::from_secs(20);

/// The longest last error kept with a dead letter (a header).
const MAX_ERROR: usize = 4096;

/// How long a fetch waits for a delivery before it returns none.
const FETCH_WAIT: Duration = Duration::from_secs(2);

/// How long past its wait a fetch's answer may be late before the fetch
/// is given up (the client's own margin for a pull with an expiry).
const FETCH_ANSWER: Duration = Duration::from_secs(5);

/// A subscription this node knows, and its open message stream.
struct Sub {
    spec: SubscriptionSpec,
    consumer: String,
    /// Its consumer's configuration (to create it when it is missing).
    config: consumer::pull::Config,
    /// The consumer, once found or made.
    handle: tokio::sync::Mutex<Option<consumer::Consumer<consumer::pull::Config>>>,
    /// Whether this node has found or made it once.
    made: std::sync::atomic::AtomicBool,
}

/// The JetStream bus.
pub struct JetStreamBus {
    cluster: Cluster,
    events: stream::Stream,
    dead: stream::Stream,
    subs: Mutex<HashMap<String, Arc<Sub>>>,
    /// Deliveries handed out by this node and not settled yet.
    in_flight: Mutex<HashMap<(String, u64), jetstream::Message>>,
    /// Per topic: events published through this node, and of those, how
    /// many no subscription matched.
    topics: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl JetStreamBus {
    /// How long the oldest message a consumer has not yet been handed has
    /// waited, in ms: the first past its delivered sequence on each of
    /// its subjects (0 if none can be read within half a second).
    async fn lag_ms(&self, info: &consumer::Info) -> u64 {
        const BOUND: Duration = Duration::from_millis(500);
        let next = info.delivered.stream_sequence + 1;
        let found =
            futures_util::future::join_all(info.config.filter_subjects.iter().map(|subject| {
                let get = self
                    .events
                    .raw_message_builder()
                    .sequence(next)
                    .next_by_subject(subject.clone())
                    .send();
                tokio::time::timeout(BOUND, get)
            }))
            .await;
        found
            .into_iter()
            .filter_map(|m| m.ok()?.ok())
            .map(|m| m.time.unix_timestamp_nanos() / 1_000_000)
            .min()
            .map_or(0, |at| (now_ms() as i128 - at).max(0) as u64)
    }

    /// Opens (or creates) the streams.
    pub async fn open(cluster: Cluster) -> anyhow::Result<JetStreamBus> {
        let js = &cluster.js;
        let events = js
            .get_or_create_stream(stream::Config {
                name: EVENTS_STREAM.into(),
                description: Some("Berth: events".into()),
                subjects: vec!["berth.ev.>".into(), "berth.retry.>".into()],
                retention: stream::RetentionPolicy::Interest,
                storage: stream::StorageType::File,
                num_replicas: cluster.replicas(),
                duplicate_window: Duration::from_secs(120),
                max_age: Duration::from_secs(7 * 86_400),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("opening the events stream: {e}"))?;
        let dead = js
            .get_or_create_stream(stream::Config {
                name: DEAD_STREAM.into(),
                description: Some("Berth: dead letters".into()),
                subjects: vec!["berth.dead.>".into()],
                storage: stream::StorageType::File,
                num_replicas: cluster.replicas(),
                allow_direct: true,
                max_age: Duration::from_secs(30 * 86_400),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("opening the dead letters stream: {e}"))?;
        Ok(JetStreamBus {
            cluster,
            events,
            dead,
            subs: Mutex::default(),
            in_flight: Mutex::default(),
            topics: Mutex::default(),
        })
    }

    /// Publishes `messages` (subject, headers, payload) and waits for
    /// every acknowledgement.
    async fn publish_all(&self, messages: &[(String, HeaderMap, Bytes)]) -> Result<(), String> {
        let mut acks = Vec::with_capacity(messages.len());
        for (subject, headers, data) in messages {
            let ack = self
                .cluster
                .js
                .publish_with_headers(subject.clone(), headers.clone(), data.clone())
                .await
                .map_err(|e| e.to_string())?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Fails at once when NATS cannot be reached (rather than after a
    /// request's timeout).
    fn up(&self) -> Result<(), BusError> {
        if self.cluster.ensure_up().is_ok() {
            Ok(())
        } else {
            Err(self.unavailable("it cannot be reached"))
        }
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> BusError {
        BusError::Unavailable(format!("the cluster at {}: {e}", self.cluster.display))
    }

    fn sub(&self, id: &str) -> Option<Arc<Sub>> {
        self.subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Makes a subscription's consumer: a consumer must exist before the
    /// events it is to receive are published (the stream keeps an event
    /// only for the consumers there are), so a refusal or a timeout (a
    /// server just died, leaders are being elected) is tried again for a
    /// while.
    async fn create_consumer(&self, config: &consumer::pull::Config) -> Result<(), String> {
        let started = std::time::Instant::now();
        loop {
            match self.events.create_consumer(config.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let text = e.to_string();
                    let passing = text.contains("timed out")
                        || text.contains("no responders")
                        || text.contains("503");
                    if !passing || started.elapsed() > CREATE_PATIENCE || self.up().is_err() {
                        return Err(text);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// The consumers of the events stream that are Berth subscriptions:
    /// (consumer name, subscription id).
    async fn consumers(&self) -> Result<Vec<(String, String)>, BusError> {
        let mut list = self.events.consumers();
        let mut all = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| self.unavailable(e))?;
            if let Some(id) = info.config.description.clone() {
                all.push((info.name.clone(), id));
            }
        }
        Ok(all)
    }

    /// Every dead letter whose subject matches `filter`, with its sequence
    /// in the dead letters stream.
    async fn read_dead(&self, filter: &str) -> Result<Vec<(u64, DeadLetter)>, BusError> {
        self.up()?;
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let mut out = Vec::new();
        let mut next = 1;
        loop {
            let message = match self
                .dead
                .direct_get_next_for_subject(filter, Some(next))
                .await
            {
                Ok(message) => message,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(self.unavailable(e)),
            };
            next = message.sequence + 1;
            let header = |name: &str| {
                message
                    .headers
                    .get(name)
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default()
            };
            match decode(Some(&message.headers), &message.payload) {
                Ok(event) => out.push((
                    message.sequence,
                    DeadLetter {
                        subscription: header(SUBSCRIPTION_HEADER),
                        seq: message.sequence,
                        event,
                        attempts: header(ATTEMPTS_HEADER).parse().unwrap_or(0),
                        error: header(ERROR_HEADER),
                        dead_ms: header(DEAD_MS_HEADER).parse().unwrap_or(0),
                    },
                )),
                Err(e) => {
                    tracing::warn!(seq = message.sequence, error = %e, "skipping an unreadable dead letter")
                }
            }
        }
        Ok(out)
    }

    fn dead_filter(topic: Option<&str>) -> String {
        match topic {
            Some(topic) => format!("berth.dead.*.{topic}"),
            None => "berth.dead.>".into(),
        }
    }
}

/// A consumer name for a subscription id (`service:pattern`): readable,
/// and unique by a hash of the id.
pub fn consumer_name(id: &str) -> String {
    use sha2::Digest as _;
    let readable: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let hash = hex::encode(&sha2::Sha256::digest(id.as_bytes())[..6]);
    format!("{readable}_{hash}")
}

fn encode(event: &Event) -> Result<HeaderMap, BusError> {
    let mut headers = HeaderMap::new();
    let attributes = serde_json::to_string(&event.attributes)
        .map_err(|e| BusError::Storage(format!("encoding an event: {e}")))?;
    headers.insert(EVENT_HEADER, attributes.as_str());
    headers.insert(TOPIC_HEADER, event.topic.as_str());
    Ok(headers)
}

pub(super) fn decode(headers: Option<&HeaderMap>, payload: &Bytes) -> Result<Event, String> {
    let headers = headers.ok_or("no headers")?;
    let attributes: Attributes = serde_json::from_str(
        headers
            .get(EVENT_HEADER)
            .ok_or("no Berth-Event header")?
            .as_str(),
    )
    .map_err(|e| e.to_string())?;
    let topic = Topic::parse(
        headers
            .get(TOPIC_HEADER)
            .ok_or("no Berth-Topic header")?
            .as_str(),
    )
    .map_err(|e| e.to_string())?;
    Ok(Event {
        topic,
        attributes,
        data: (!payload.is_empty()).then(|| payload.clone()),
    })
}

/// The deduplication id of an event: its topic, source and id (CloudEvents
/// says source and id identify an event; the same one may go to two
/// topics).
fn message_id(event: &Event) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    hash.update(event.topic.as_str().as_bytes());
    hash.update([0]);
    hash.update(event.attributes.source.as_bytes());
    hash.update([0]);
    hash.update(event.attributes.id.as_bytes());
    hex::encode(hash.finalize())
}

#[async_trait]
impl Bus for JetStreamBus {
    async fn publish(&self, events: Vec<Event>) -> Result<Vec<usize>, BusError> {
        self.up()?;
        let patterns: Vec<_> = self
            .subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|s| s.spec.subscription.topic.clone())
            .collect();
        // A publish a connected cluster refuses (a server died; its
        // streams are electing new leaders) is tried again for a while:
        // each event's message id makes a second copy a duplicate
        // JetStream drops.
        let mut messages = Vec::with_capacity(events.len());
        for event in &events {
            let mut headers = encode(event)?;
            headers.insert("Nats-Msg-Id", message_id(event).as_str());
            let subject = format!("berth.ev.{}", event.topic);
            messages.push((subject, headers, event.data.clone().unwrap_or_default()));
        }
        let started = std::time::Instant::now();
        loop {
            match self.publish_all(&messages).await {
                Ok(()) => break,
                Err(e)
                    if super::catalog::refused(&e)
                        && started.elapsed() < super::catalog::TRANSIENT
                        && self.up().is_ok() =>
                {
                    tracing::debug!(error = %e, "the cluster refused a publish; trying again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(self.unavailable(e)),
            }
        }
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        Ok(events
            .iter()
            .map(|event| {
                let n = patterns.iter().filter(|p| p.matches(&event.topic)).count();
                let counts = topics.entry(event.topic.to_string()).or_default();
                counts.0 += 1;
                counts.1 += u64::from(n == 0);
                n
            })
            .collect())
    }

    async fn set_subscriptions(
        &self,
        subscriptions: Vec<SubscriptionSpec>,
    ) -> Result<(), BusError> {
        let mut fresh = HashMap::new();
        for spec in subscriptions {
            let name = consumer_name(&spec.id);
            if let Some(existing) = self.sub(&spec.id).filter(|s| s.spec == spec) {
                fresh.insert(spec.id.clone(), existing);
                continue;
            }
            let config = consumer::pull::Config {
                durable_name: Some(name.clone()),
                description: Some(spec.id.clone()),
                deliver_policy: consumer::DeliverPolicy::New,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: spec.ack_wait * 2 + ACK_MARGIN,
                max_deliver: -1,
                filter_subjects: vec![
                    format!("berth.ev.{}", spec.subscription.topic),
                    format!("berth.retry.{name}"),
                ],
                // Deliveries waiting for their retry count as pending: no
                // cap, or new events would wait behind them.
                max_ack_pending: -1,
                num_replicas: self.cluster.replicas(),
                ..Default::default()
            };
            // Created by the first node; the others find it (and an ack
            // deadline changed with the service's timeout is updated).
            // Cut off from NATS, or refused now, it is made on the first
            // fetch instead.
            if self.up().is_ok()
                && let Err(e) = self.create_consumer(&config).await
            {
                match self
                    .events
                    .get_consumer::<consumer::pull::Config>(&name)
                    .await
                {
                    Ok(existing) => {
                        let mut update = config.clone();
                        update.deliver_policy = existing.cached_info().config.deliver_policy;
                        if let Err(e) = self.events.update_consumer(update).await {
                            tracing::debug!(subscription = %spec.id, error = %e, "keeping the consumer as it is");
                        }
                    }
                    Err(_) => {
                        tracing::warn!(subscription = %spec.id, error = %e, "the consumer could not be made yet; the first fetch makes it");
                    }
                }
            }
            fresh.insert(
                spec.id.clone(),
                Arc::new(Sub {
                    spec,
                    consumer: name,
                    config,
                    handle: tokio::sync::Mutex::new(None),
                    made: Default::default(),
                }),
            );
        }
        *self.subs.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    async fn retain(&self, service: &str, keep: &[String]) -> Result<(), BusError> {
        self.up()?;
        let prefix = format!("{service}:");
        for (name, id) in self.consumers().await? {
            if id.starts_with(&prefix) && !keep.contains(&id) {
                tracing::info!(subscription = %id, "the service no longer holds the subscription; its consumer is deleted");
                self.events
                    .delete_consumer(&name)
                    .await
                    .map_err(|e| self.unavailable(e))?;
            }
        }
        Ok(())
    }

    async fn drop_service(&self, service: &str) -> Result<(), BusError> {
        self.up()?;
        let prefix = format!("{service}:");
        for (name, id) in self.consumers().await? {
            if id.starts_with(&prefix) {
                self.events
                    .delete_consumer(&name)
                    .await
                    .map_err(|e| self.unavailable(e))?;
                let _ = self
                    .dead
                    .purge()
                    .filter(format!("berth.dead.{name}.>"))
                    .await;
            }
        }
        Ok(())
    }

    async fn fetch(&self, subscription: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        let Some(sub) = self.sub(subscription) else {
            return Ok(Vec::new());
        };
        self.up()?;
        let consumer = {
            let mut handle = sub.handle.lock().await;
            if handle.is_none() {
                // Made by the first node that needs it (set_subscriptions
                // may not have managed to). One deleted later (the
                // subscription was dropped through another node) is not
                // made again: this node is about to drop it too.
                let made = if sub.made.load(std::sync::atomic::Ordering::Relaxed) {
                    self.events
                        .get_consumer::<consumer::pull::Config>(&sub.consumer)
                        .await
                        .map_err(|e| {
                            self.unavailable(format!("the consumer of {subscription}: {e}"))
                        })?
                } else {
                    self.events
                        .get_or_create_consumer(&sub.consumer, sub.config.clone())
                        .await
                        .map_err(|e| {
                            self.unavailable(format!("the consumer of {subscription}: {e}"))
                        })?
                };
                sub.made.store(true, std::sync::atomic::Ordering::Relaxed);
                *handle = Some(made);
            }
            handle.clone().expect("set above")
        };
        // Only what there are free slots for is pulled (a message pulled is
        // this node's until its ack deadline): first what is there now, else
        // wait for one.
        let mut taken = Vec::new();
        let mut now = consumer
            .fetch()
            .max_messages(max)
            .messages()
            .await
            .map_err(|e| self.unavailable(e))?;
        // The server ends a fetch with a status; the client waits for it
        // without a bound. A request lost with its server (killed, or
        // hung until the connection was given up) would hold this
        // subscription's deliveries on this node for ever: give up on it
        // after a while, keeping what came.
        let until = tokio::time::Instant::now() + FETCH_WAIT + FETCH_ANSWER;
        loop {
            match tokio::time::timeout_at(until, now.next()).await {
                Ok(Some(message)) => taken.push(message.map_err(|e| self.unavailable(e))?),
                Ok(None) => break,
                Err(_) if taken.is_empty() => {
                    return Err(self.unavailable("a fetch got no answer in time"));
                }
                Err(_) => break,
            }
        }
        if taken.is_empty() {
            let mut one = consumer
                .batch()
                .max_messages(1)
                .expires(FETCH_WAIT)
                .messages()
                .await
                .map_err(|e| self.unavailable(e))?;
            while let Some(message) = one.next().await {
                match message {
                    Ok(message) => taken.push(message),
                    Err(e) => {
                        // A consumer gone is made again on the next fetch.
                        *sub.handle.lock().await = None;
                        return Err(self.unavailable(e));
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(taken.len());
        for message in taken {
            let (seq, delivered) = match message.info() {
                Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
                Err(e) => {
                    tracing::warn!(error = %e, "a message without its JetStream metadata");
                    continue;
                }
            };
            let base: u32 = message
                .headers
                .as_ref()
                .and_then(|h| h.get(ATTEMPTS_HEADER))
                .and_then(|v| v.as_str().parse().ok())
                .unwrap_or(0);
            let event = match decode(message.headers.as_ref(), &message.payload) {
                Ok(event) => event,
                Err(e) => {
                    tracing::error!(subscription, seq, error = %e, "an unreadable event; it is dropped");
                    let _ = message.ack_with(jetstream::AckKind::Term).await;
                    continue;
                }
            };
            self.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((subscription.to_owned(), seq), message);
            out.push(Delivery {
                subscription: subscription.to_owned(),
                seq,
                attempt: base + delivered,
                event: Arc::new(event),
            });
        }
        Ok(out)
    }

    async fn settle(&self, delivery: &Delivery, how: Settle) -> Result<(), BusError> {
        let Some(message) = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(delivery.subscription.clone(), delivery.seq))
        else {
            return Ok(());
        };
        let delay = |at_ms: i64| Duration::from_millis((at_ms - now_ms()).max(0) as u64);
        let kind = match how {
            Settle::Ack => jetstream::AckKind::Ack,
            Settle::Retry { at_ms, .. } | Settle::Defer { at_ms } => {
                jetstream::AckKind::Nak(Some(delay(at_ms)))
            }
            Settle::Dead { error } => {
                let name = consumer_name(&delivery.subscription);
                let mut headers = encode(&delivery.event)?;
                headers.insert(SUBSCRIPTION_HEADER, delivery.subscription.as_str());
                headers.insert(ATTEMPTS_HEADER, delivery.attempt.to_string().as_str());
                let mut error = error.replace(['\r', '\n'], " ");
                if error.len() > MAX_ERROR {
                    let mut end = MAX_ERROR;
                    while !error.is_char_boundary(end) {
                        end -= 1;
                    }
                    error.truncate(end);
                    error.push_str(" [truncated]");
                }
                headers.insert(ERROR_HEADER, error.as_str());
                headers.insert(DEAD_MS_HEADER, now_ms().to_string().as_str());
                let subject = format!("berth.dead.{name}.{}", delivery.event.topic);
                self.cluster
                    .js
                    .publish_with_headers(
                        subject,
                        headers,
                        delivery.event.data.clone().unwrap_or_default(),
                    )
                    .await
                    .map_err(|e| self.unavailable(e))?
                    .await
                    .map_err(|e| self.unavailable(e))?;
                jetstream::AckKind::Ack
            }
        };
        message
            .ack_with(kind)
            .await
            .map_err(|e| self.unavailable(e))
    }

    async fn stats(&self) -> Result<Vec<SubscriptionStats>, BusError> {
        self.up()?;
        let active: HashMap<String, Arc<Sub>> =
            self.subs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let dead = self.read_dead(&Self::dead_filter(None)).await?;
        let mut infos = Vec::new();
        let mut list = self.events.consumers();
        while let Some(info) = list.next().await {
            infos.push(info.map_err(|e| self.unavailable(e))?);
        }
        // The lags are looked up at once, each bounded.
        let lags = futures_util::future::join_all(infos.iter().map(|info| async move {
            if info.num_pending > 0 {
                self.lag_ms(info).await
            } else {
                0
            }
        }))
        .await;
        let mut out = Vec::new();
        for (info, lag_ms) in infos.into_iter().zip(lags) {
            let Some(id) = info.config.description.clone() else {
                continue;
            };
            let (service, topic) = id.split_once(':').unwrap_or((id.as_str(), ""));
            out.push(SubscriptionStats {
                subscription: id.clone(),
                service: service.to_owned(),
                topic: topic.to_owned(),
                depth: info.num_pending,
                in_flight: info.num_ack_pending as u64,
                retrying: info.num_redelivered as u64,
                dead_letters: dead.iter().filter(|(_, d)| d.subscription == id).count() as u64,
                active: active.contains_key(&id),
                lag_ms,
            });
        }
        out.sort_by(|a, b| a.subscription.cmp(&b.subscription));
        Ok(out)
    }

    async fn topics(&self) -> Result<Vec<TopicStats>, BusError> {
        Ok(self
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(topic, (published, unrouted))| TopicStats {
                topic: topic.clone(),
                published: *published,
                unrouted: *unrouted,
            })
            .collect())
    }

    async fn dead_letters(&self, topic: Option<&str>) -> Result<Vec<DeadLetter>, BusError> {
        Ok(self
            .read_dead(&Self::dead_filter(topic))
            .await?
            .into_iter()
            .map(|(_, d)| d)
            .collect())
    }

    async fn replay(&self, which: Replay) -> Result<usize, BusError> {
        self.up()?;
        let mut replayed = 0;
        for (seq, dead) in self.read_dead(&Self::dead_filter(None)).await? {
            if let Replay::Id(id) = &which
                && &dead.event.attributes.id != id
            {
                continue;
            }
            // Back to its subscription alone, from the first attempt.
            let subject = format!("berth.retry.{}", consumer_name(&dead.subscription));
            let headers = encode(&dead.event)?;
            self.cluster
                .js
                .publish_with_headers(
                    subject,
                    headers,
                    dead.event.data.clone().unwrap_or_default(),
                )
                .await
                .map_err(|e| self.unavailable(e))?
                .await
                .map_err(|e| self.unavailable(e))?;
            self.dead
                .delete_message(seq)
                .await
                .map_err(|e| self.unavailable(e))?;
            replayed += 1;
        }
        Ok(replayed)
    }

    async fn purge(&self, topic: Option<&str>) -> Result<usize, BusError> {
        self.up()?;
        let purged = self
            .dead
            .purge()
            .filter(Self::dead_filter(topic))
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(purged.purged as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_valid_and_distinct() {
        let a = consumer_name("orders:orders.*");
        let b = consumer_name("orders:orders.>");
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{name}"
            );
        }
        assert!(a.starts_with("orders_orders__"), "{a}");
    }
}
