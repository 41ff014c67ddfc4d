//! The embedded bus: the event queue lives in the state database, so a host
//! needs no external server.
//!
//! Storage (see `state.rs` for the schema): `events` holds each event once;
//! `deliveries` one row per (subscription, event) still to be handled, with
//! its failed attempts and when it is due; `dead_letters` the deliveries
//! that failed for good; `topics` counters per topic.
//!
//! One writer thread owns the writing connection. It takes every change
//! waiting in its queue and commits them in one transaction (group commit),
//! so many concurrent publishes share one `fsync`: a publish is answered
//! after the commit that holds it. Acknowledgements and retries are written
//! the same way but nobody waits for them: if the host dies first, the
//! delivery is simply made again (at least once).
//!
//! In memory, each subscription keeps its pending deliveries ordered by
//! (due time, sequence): first deliveries go out in publish order, and a
//! delivery waiting for a retry lets the ones behind it pass. Recently
//! published events are cached so that handing them out does not read the
//! database.

use crate::triggers::events::bus::{
    Bus, BusError, DeadLetter, Delivery, Replay, Settle, SubscriptionSpec, SubscriptionStats,
    TopicStats,
};
use crate::values::event::{Attributes, Event};
use crate::values::topic::Topic;
use crate::values::units::now_ms;
use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, oneshot};

/// Changes committed together at most.
const MAX_BATCH: usize = 4096;

/// Bytes of event payload kept in the in-memory cache at most.
const CACHE_BYTES: usize = 64 << 20;

/// The embedded, SQLite-backed bus.
pub struct SqliteBus {
    writer: std::sync::mpsc::Sender<Op>,
    reader: Arc<Mutex<Connection>>,
    queues: Arc<Mutex<Queues>>,
}

impl std::fmt::Debug for SqliteBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBus").finish_non_exhaustive()
    }
}

/// A change for the writer thread.
enum Op {
    Publish {
        events: Vec<Event>,
        reply: oneshot::Sender<Result<Vec<usize>, BusError>>,
    },
    Ack {
        subscription: String,
        seq: u64,
    },
    Retry {
        subscription: String,
        seq: u64,
        attempts: u32,
        due_ms: i64,
        error: String,
    },
    Dead {
        subscription: String,
        seq: u64,
        attempts: u32,
        error: String,
    },
    Replay {
        which: Replay,
        reply: oneshot::Sender<Result<usize, BusError>>,
    },
    Purge {
        topic: Option<String>,
        reply: oneshot::Sender<Result<usize, BusError>>,
    },
    DropService {
        service: String,
        reply: oneshot::Sender<Result<(), BusError>>,
    },
}

/// A delivery waiting in memory.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Failed attempts so far.
    attempts: u32,
    due_ms: i64,
}

#[derive(Default)]
struct SubQueue {
    /// `None` while no service holds the subscription: its backlog waits.
    spec: Option<SubscriptionSpec>,
    pending: HashMap<u64, Pending>,
    /// (due, seq); entries whose `pending` changed are skipped.
    order: BinaryHeap<Reverse<(i64, u64)>>,
    in_flight: HashMap<u64, u32>,
    dead: u64,
    notify: Arc<Notify>,
}

impl SubQueue {
    fn push(&mut self, seq: u64, pending: Pending) {
        self.order.push(Reverse((pending.due_ms, seq)));
        self.pending.insert(seq, pending);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

struct Cached {
    event: Arc<Event>,
    /// Deliveries (pending or in flight) that still need it.
    refs: usize,
}

#[derive(Default)]
struct Queues {
    subs: HashMap<String, SubQueue>,
    cache: HashMap<u64, Cached>,
    cache_bytes: usize,
}

impl Queues {
    fn active_matching(&self, topic: &Topic) -> Vec<String> {
        let mut ids: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, q)| {
                q.spec
                    .as_ref()
                    .is_some_and(|s| s.subscription.topic.matches(topic))
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn release(&mut self, seq: u64) {
        if let Some(cached) = self.cache.get_mut(&seq) {
            cached.refs -= 1;
            if cached.refs == 0 {
                let size = cached.event.size();
                self.cache.remove(&seq);
                self.cache_bytes -= size;
            }
        }
    }
}

fn storage(e: impl std::fmt::Display) -> BusError {
    BusError::Storage(e.to_string())
}

impl SqliteBus {
    /// Opens the bus on the state database at `path` (its tables are made
    /// by [`State::open`](crate::control::state::State::open)) and loads every
    /// pending delivery: those that were in flight when the host stopped
    /// are due again.
    pub fn open(path: &Path) -> Result<SqliteBus, BusError> {
        let open = |path: &PathBuf| -> Result<Connection, BusError> {
            let conn = Connection::open(path).map_err(storage)?;
            conn.busy_timeout(std::time::Duration::from_secs(10))
                .map_err(storage)?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(storage)?;
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(storage)?;
            conn.pragma_update(None, "foreign_keys", true)
                .map_err(storage)?;
            Ok(conn)
        };
        let path = path.to_path_buf();
        let writer_conn = open(&path)?;
        let writers = crate::control::state::writers(&path);
        let reader = open(&path)?;

        let mut queues = Queues::default();
        {
            let mut stmt = reader
                .prepare("SELECT subscription, seq, attempts, due_ms FROM deliveries")
                .map_err(storage)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, u32>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .map_err(storage)?;
            for row in rows {
                let (sub, seq, attempts, due_ms) = row.map_err(storage)?;
                queues
                    .subs
                    .entry(sub)
                    .or_default()
                    .push(seq as u64, Pending { attempts, due_ms });
            }
            let mut stmt = reader
                .prepare("SELECT subscription, COUNT(*) FROM dead_letters GROUP BY subscription")
                .map_err(storage)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(storage)?;
            for row in rows {
                let (sub, n) = row.map_err(storage)?;
                queues.subs.entry(sub).or_default().dead = n as u64;
            }
        }

        let queues = Arc::new(Mutex::new(queues));
        let (tx, rx) = std::sync::mpsc::channel();
        let writer_queues = queues.clone();
        std::thread::Builder::new()
            .name("berth-bus-writer".into())
            .spawn(move || {
                Writer {
                    conn: writer_conn,
                    queues: writer_queues,
                    writers,
                }
                .run(rx)
            })
            .map_err(storage)?;
        Ok(SqliteBus {
            writer: tx,
            reader: Arc::new(Mutex::new(reader)),
            queues,
        })
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, op: Op) -> Result<(), BusError> {
        self.writer.send(op).map_err(|_| BusError::Closed)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, BusError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&reader.lock().unwrap_or_else(|e| e.into_inner())))
            .await
            .map_err(storage)?
            .map_err(storage)
    }
}

#[async_trait]
impl Bus for SqliteBus {
    async fn publish(&self, events: Vec<Event>) -> Result<Vec<usize>, BusError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Publish { events, reply })?;
        rx.await.map_err(|_| BusError::Closed)?
    }

    async fn set_subscriptions(
        &self,
        subscriptions: Vec<SubscriptionSpec>,
    ) -> Result<(), BusError> {
        let mut queues = self.queues();
        let mut wanted: BTreeMap<String, SubscriptionSpec> = subscriptions
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        for (id, queue) in queues.subs.iter_mut() {
            queue.spec = wanted.remove(id);
            // Wake fetchers: their subscription may be gone, or back.
            queue.notify.notify_waiters();
        }
        for (id, spec) in wanted {
            queues.subs.entry(id).or_default().spec = Some(spec);
        }
        Ok(())
    }

    async fn drop_service(&self, service: &str) -> Result<(), BusError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::DropService {
            service: service.to_owned(),
            reply,
        })?;
        rx.await.map_err(|_| BusError::Closed)?
    }

    async fn fetch(&self, subscription: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        loop {
            let notify;
            let wait_ms;
            let mut out: Vec<(u64, u32, Option<Arc<Event>>)> = Vec::new();
            {
                let mut queues = self.queues();
                let Queues { subs, cache, .. } = &mut *queues;
                let Some(queue) = subs.get_mut(subscription) else {
                    return Ok(Vec::new());
                };
                if queue.spec.is_none() {
                    return Ok(Vec::new());
                }
                let now = now_ms();
                while out.len() < max {
                    let Some(Reverse((due, seq))) = queue.order.peek().copied() else {
                        break;
                    };
                    match queue.pending.get(&seq) {
                        Some(p) if p.due_ms == due => {}
                        // A stale entry (the delivery was settled or moved).
                        _ => {
                            queue.order.pop();
                            continue;
                        }
                    }
                    if due > now {
                        break;
                    }
                    queue.order.pop();
                    let Some(pending) = queue.pending.remove(&seq) else {
                        continue;
                    };
                    let attempt = pending.attempts + 1;
                    queue.in_flight.insert(seq, attempt);
                    out.push((seq, attempt, cache.get(&seq).map(|c| c.event.clone())));
                }
                notify = queue.notify.clone();
                wait_ms = queue
                    .order
                    .peek()
                    .map(|Reverse((due, _))| (*due - now).max(1) as u64);
            }
            if !out.is_empty() {
                return self.complete(subscription, out).await;
            }
            let notified = notify.notified();
            tokio::pin!(notified);
            // Register before re-checking, so a push in between is not lost.
            notified.as_mut().enable();
            if self.has_due(subscription) {
                continue;
            }
            match wait_ms {
                Some(ms) => {
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_millis(ms), notified).await;
                }
                None => notified.await,
            }
        }
    }

    async fn settle(&self, delivery: &Delivery, how: Settle) -> Result<(), BusError> {
        let seq = delivery.seq;
        let subscription = delivery.subscription.clone();
        let op = {
            let mut queues = self.queues();
            let queue = queues.subs.entry(subscription.clone()).or_default();
            queue.in_flight.remove(&seq);
            match how {
                Settle::Ack => {
                    queues.release(seq);
                    Op::Ack { subscription, seq }
                }
                Settle::Retry { at_ms, error } => {
                    queue.push(
                        seq,
                        Pending {
                            attempts: delivery.attempt,
                            due_ms: at_ms,
                        },
                    );
                    Op::Retry {
                        subscription,
                        seq,
                        attempts: delivery.attempt,
                        due_ms: at_ms,
                        error,
                    }
                }
                Settle::Dead { error } => {
                    queue.dead += 1;
                    queues.release(seq);
                    Op::Dead {
                        subscription,
                        seq,
                        attempts: delivery.attempt,
                        error,
                    }
                }
                Settle::Defer { at_ms } => {
                    queue.push(
                        seq,
                        Pending {
                            attempts: delivery.attempt - 1,
                            due_ms: at_ms,
                        },
                    );
                    // Nothing durable changes: the stored row is still due.
                    return Ok(());
                }
            }
        };
        self.send(op)
    }

    async fn stats(&self) -> Result<Vec<SubscriptionStats>, BusError> {
        let queues = self.queues();
        let now = now_ms();
        let mut out: Vec<SubscriptionStats> = queues
            .subs
            .iter()
            .filter(|(_, q)| {
                q.spec.is_some() || !q.pending.is_empty() || !q.in_flight.is_empty() || q.dead > 0
            })
            .map(|(id, q)| {
                let (service, topic) = id.split_once(':').unwrap_or((id.as_str(), ""));
                SubscriptionStats {
                    subscription: id.clone(),
                    service: service.to_owned(),
                    topic: topic.to_owned(),
                    depth: q.pending.len() as u64,
                    in_flight: q.in_flight.len() as u64,
                    retrying: q.pending.values().filter(|p| p.attempts > 0).count() as u64,
                    dead_letters: q.dead,
                    active: q.spec.is_some(),
                    lag_ms: q
                        .pending
                        .values()
                        .map(|p| p.due_ms)
                        .min()
                        .map_or(0, |due| (now - due).max(0) as u64),
                }
            })
            .collect();
        out.sort_by(|a, b| a.subscription.cmp(&b.subscription));
        Ok(out)
    }

    async fn topics(&self) -> Result<Vec<TopicStats>, BusError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare("SELECT topic, published, unrouted FROM topics ORDER BY topic")?;
            let rows = stmt.query_map([], |r| {
                Ok(TopicStats {
                    topic: r.get(0)?,
                    published: r.get::<_, i64>(1)? as u64,
                    unrouted: r.get::<_, i64>(2)? as u64,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn dead_letters(&self, topic: Option<&str>) -> Result<Vec<DeadLetter>, BusError> {
        let topic = topic.map(str::to_owned);
        self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT d.subscription, d.seq, d.attempts, d.error, d.dead_ms, e.topic, e.attrs, e.data
                 FROM dead_letters d JOIN events e ON e.seq = d.seq
                 WHERE ?1 IS NULL OR e.topic = ?1
                 ORDER BY d.dead_ms, d.seq",
            )?;
            let rows = stmt.query_map([topic], |r| {
                let event = event_from_row(r.get(5)?, r.get(6)?, r.get(7)?)?;
                Ok(DeadLetter {
                    subscription: r.get(0)?,
                    seq: r.get::<_, i64>(1)? as u64,
                    attempts: r.get(2)?,
                    error: r.get(3)?,
                    dead_ms: r.get(4)?,
                    event,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn replay(&self, which: Replay) -> Result<usize, BusError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Replay { which, reply })?;
        rx.await.map_err(|_| BusError::Closed)?
    }

    async fn purge(&self, topic: Option<&str>) -> Result<usize, BusError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Purge {
            topic: topic.map(str::to_owned),
            reply,
        })?;
        rx.await.map_err(|_| BusError::Closed)?
    }
}

impl SqliteBus {
    /// Whether a delivery of `subscription` is due now (dropping stale
    /// entries from the top of its order on the way).
    fn has_due(&self, subscription: &str) -> bool {
        let mut queues = self.queues();
        let now = now_ms();
        let Some(q) = queues.subs.get_mut(subscription) else {
            return false;
        };
        while let Some(Reverse((due, seq))) = q.order.peek().copied() {
            if q.pending.get(&seq).is_some_and(|p| p.due_ms == due) {
                return q.spec.is_some() && due <= now;
            }
            q.order.pop();
        }
        false
    }

    /// Fills in the events that were not in the cache, from the database.
    async fn complete(
        &self,
        subscription: &str,
        out: Vec<(u64, u32, Option<Arc<Event>>)>,
    ) -> Result<Vec<Delivery>, BusError> {
        let missing: Vec<i64> = out
            .iter()
            .filter(|(_, _, e)| e.is_none())
            .map(|(seq, _, _)| *seq as i64)
            .collect();
        let mut loaded: HashMap<u64, Arc<Event>> = HashMap::new();
        if !missing.is_empty() {
            let rows = self
                .read(move |conn| {
                    let mut stmt =
                        conn.prepare("SELECT seq, topic, attrs, data FROM events WHERE seq = ?1")?;
                    let mut rows = Vec::with_capacity(missing.len());
                    for seq in missing {
                        if let Some(row) = stmt
                            .query_row([seq], |r| {
                                Ok((
                                    r.get::<_, i64>(0)?,
                                    event_from_row(r.get(1)?, r.get(2)?, r.get(3)?)?,
                                ))
                            })
                            .optional()?
                        {
                            rows.push(row);
                        }
                    }
                    Ok(rows)
                })
                .await?;
            loaded.extend(rows.into_iter().map(|(seq, e)| (seq as u64, Arc::new(e))));
        }
        let mut deliveries = Vec::with_capacity(out.len());
        for (seq, attempt, event) in out {
            let Some(event) = event.or_else(|| loaded.get(&seq).cloned()) else {
                // The event is gone (purged meanwhile): nothing to deliver.
                let mut queues = self.queues();
                if let Some(q) = queues.subs.get_mut(subscription) {
                    q.in_flight.remove(&seq);
                }
                continue;
            };
            deliveries.push(Delivery {
                subscription: subscription.to_owned(),
                seq,
                attempt,
                event,
            });
        }
        Ok(deliveries)
    }
}

fn event_from_row(topic: String, attrs: String, data: Option<Vec<u8>>) -> rusqlite::Result<Event> {
    let attributes: Attributes = serde_json::from_str(&attrs).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let topic = Topic::parse(&topic).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Event {
        topic,
        attributes,
        data: data.map(Bytes::from),
    })
}

/// The writer thread.
struct Writer {
    conn: Connection,
    queues: Arc<Mutex<Queues>>,
    /// The lock of the file's writers in this process, taken around each
    /// commit (see [`crate::control::state::writers`]).
    writers: Arc<Mutex<()>>,
}

/// What a committed change does to memory, applied after the commit.
enum Effect {
    Published {
        reply: oneshot::Sender<Result<Vec<usize>, BusError>>,
        counts: Vec<usize>,
        new: Vec<(u64, Arc<Event>, Vec<String>)>,
    },
    Replayed {
        reply: oneshot::Sender<Result<usize, BusError>>,
        rows: Vec<(String, u64)>,
    },
    Purged {
        reply: oneshot::Sender<Result<usize, BusError>>,
        rows: Vec<String>,
    },
    Dropped {
        reply: oneshot::Sender<Result<(), BusError>>,
        service: String,
    },
    None,
}

impl Writer {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            match self.commit(batch) {
                Ok(effects) => effects.into_iter().for_each(|e| self.apply(e)),
                Err((batch, _)) => {
                    // The batch failed as a whole (disk full, say): apply
                    // its changes one by one, so that only those that
                    // cannot be stored fail.
                    for op in batch {
                        match self.commit(vec![op]) {
                            Ok(effects) => effects.into_iter().for_each(|e| self.apply(e)),
                            Err((mut failed, error)) => {
                                if let Some(op) = failed.pop() {
                                    fail(op, error);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Runs `batch` in one transaction; on failure, rolls back and returns
    /// the batch untouched, with the error.
    #[allow(
        clippy::result_large_err,
        reason = "the batch goes back to be retried op by op"
    )]
    fn commit(&mut self, batch: Vec<Op>) -> Result<Vec<Effect>, (Vec<Op>, rusqlite::Error)> {
        // Immediate (the write lock at once): staging reads before it
        // writes, and a deferred transaction whose snapshot another
        // connection to the file (the state's) wrote past fails at once
        // instead of waiting its turn.
        let _write = crate::control::state::lock(&self.writers);
        let tx = match self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => return Err((batch, e)),
        };
        let mut staged = Vec::with_capacity(batch.len());
        for op in &batch {
            match stage(&tx, op, &self.queues) {
                Ok(s) => staged.push(s),
                Err(e) => return Err((batch, e)),
            }
        }
        if let Err(e) = tx.commit() {
            return Err((batch, e));
        }
        Ok(batch
            .into_iter()
            .zip(staged)
            .map(|(op, staged)| staged.into_effect(op))
            .collect())
    }

    fn apply(&self, effect: Effect) {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        match effect {
            Effect::Published { reply, counts, new } => {
                for (seq, event, subs) in new {
                    let size = event.size();
                    if !subs.is_empty() && queues.cache_bytes + size <= CACHE_BYTES {
                        queues.cache_bytes += size;
                        queues.cache.insert(
                            seq,
                            Cached {
                                event: event.clone(),
                                refs: subs.len(),
                            },
                        );
                    }
                    let due_ms = now_ms();
                    for sub in subs {
                        queues.subs.entry(sub).or_default().push(
                            seq,
                            Pending {
                                attempts: 0,
                                due_ms,
                            },
                        );
                    }
                }
                let _ = reply.send(Ok(counts));
            }
            Effect::Replayed { reply, rows } => {
                let n = rows.len();
                let due_ms = now_ms();
                for (sub, seq) in rows {
                    let queue = queues.subs.entry(sub).or_default();
                    queue.dead = queue.dead.saturating_sub(1);
                    queue.push(
                        seq,
                        Pending {
                            attempts: 0,
                            due_ms,
                        },
                    );
                }
                let _ = reply.send(Ok(n));
            }
            Effect::Purged { reply, rows } => {
                let n = rows.len();
                for sub in rows {
                    let queue = queues.subs.entry(sub).or_default();
                    queue.dead = queue.dead.saturating_sub(1);
                }
                let _ = reply.send(Ok(n));
            }
            Effect::Dropped { reply, service } => {
                let prefix = format!("{service}:");
                let gone: Vec<String> = queues
                    .subs
                    .keys()
                    .filter(|k| k.starts_with(&prefix))
                    .cloned()
                    .collect();
                for id in gone {
                    if let Some(queue) = queues.subs.remove(&id) {
                        for seq in queue.pending.keys().chain(queue.in_flight.keys()) {
                            queues.release(*seq);
                        }
                        queue.notify.notify_waiters();
                    }
                }
                let _ = reply.send(Ok(()));
            }
            Effect::None => {}
        }
    }
}

/// Answers the waiter of an op that could not be stored.
fn fail(op: Op, error: rusqlite::Error) {
    let error = || BusError::Storage(error.to_string());
    match op {
        Op::Publish { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Op::Replay { reply, .. } | Op::Purge { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Op::DropService { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Op::Ack { subscription, seq }
        | Op::Retry {
            subscription, seq, ..
        }
        | Op::Dead {
            subscription, seq, ..
        } => {
            tracing::error!(%subscription, seq, "could not record the end of a delivery; it will be delivered again after a restart");
        }
    }
}

/// What staging an op inside the transaction produced, before commit.
enum Staged {
    Published(Vec<usize>, Vec<(u64, Vec<String>)>),
    Replayed(Vec<(String, u64)>),
    Purged(Vec<String>),
    Plain,
}

impl Staged {
    fn into_effect(self, op: Op) -> Effect {
        match (self, op) {
            (Staged::Published(counts, seqs), Op::Publish { events, reply }) => Effect::Published {
                reply,
                counts,
                new: seqs
                    .into_iter()
                    .zip(events)
                    .map(|((seq, subs), event)| (seq, Arc::new(event), subs))
                    .collect(),
            },
            (Staged::Replayed(rows), Op::Replay { reply, .. }) => Effect::Replayed { reply, rows },
            (Staged::Purged(rows), Op::Purge { reply, .. }) => Effect::Purged { reply, rows },
            (_, Op::DropService { reply, service }) => Effect::Dropped { reply, service },
            _ => Effect::None,
        }
    }
}

fn delete_unreferenced(tx: &rusqlite::Transaction<'_>, seq: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "DELETE FROM events WHERE seq = ?1
           AND NOT EXISTS (SELECT 1 FROM deliveries WHERE seq = ?1)
           AND NOT EXISTS (SELECT 1 FROM dead_letters WHERE seq = ?1)",
    )?
    .execute([seq])?;
    Ok(())
}

fn stage(
    tx: &rusqlite::Transaction<'_>,
    op: &Op,
    queues: &Arc<Mutex<Queues>>,
) -> rusqlite::Result<Staged> {
    let now = now_ms();
    match op {
        Op::Publish { events, .. } => stage_publish(tx, events, queues, now),
        Op::Ack { subscription, seq } => {
            tx.prepare_cached("DELETE FROM deliveries WHERE subscription = ?1 AND seq = ?2")?
                .execute(params![subscription, *seq as i64])?;
            delete_unreferenced(tx, *seq as i64)?;
            Ok(Staged::Plain)
        }
        Op::Retry {
            subscription,
            seq,
            attempts,
            due_ms,
            error,
        } => {
            tx.prepare_cached(
                "UPDATE deliveries SET attempts = ?3, due_ms = ?4, last_error = ?5 WHERE subscription = ?1 AND seq = ?2",
            )?
            .execute(params![subscription, *seq as i64, attempts, due_ms, error])?;
            Ok(Staged::Plain)
        }
        Op::Dead {
            subscription,
            seq,
            attempts,
            error,
        } => {
            let removed = tx
                .prepare_cached("DELETE FROM deliveries WHERE subscription = ?1 AND seq = ?2")?
                .execute(params![subscription, *seq as i64])?;
            if removed == 1 {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO dead_letters (subscription, seq, attempts, error, dead_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![subscription, *seq as i64, attempts, error, now])?;
            }
            Ok(Staged::Plain)
        }
        Op::Replay { which, .. } => stage_replay(tx, which, now),
        Op::Purge { topic, .. } => stage_purge(tx, topic.as_deref()),
        Op::DropService { service, .. } => stage_drop_service(tx, service),
    }
}

/// Stores published events and one delivery per matching subscription.
fn stage_publish(
    tx: &rusqlite::Transaction<'_>,
    events: &[Event],
    queues: &Arc<Mutex<Queues>>,
    now: i64,
) -> rusqlite::Result<Staged> {
    let mut counts = Vec::with_capacity(events.len());
    let mut seqs = Vec::with_capacity(events.len());
    for event in events {
        let subs = queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .active_matching(&event.topic);
        let routed = !subs.is_empty();
        tx.prepare_cached(
            "INSERT INTO topics (topic, published, unrouted) VALUES (?1, 1, ?2)
             ON CONFLICT (topic) DO UPDATE SET published = published + 1, unrouted = unrouted + ?2",
        )?
        .execute(params![event.topic.as_str(), i64::from(!routed)])?;
        if !routed {
            counts.push(0);
            seqs.push((0, subs));
            continue;
        }
        let attrs = serde_json::to_string(&event.attributes)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        tx.prepare_cached(
            "INSERT INTO events (topic, attrs, data, published_ms) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            event.topic.as_str(),
            attrs,
            event.data.as_deref(),
            now
        ])?;
        let seq = tx.last_insert_rowid();
        let mut insert = tx.prepare_cached(
            "INSERT INTO deliveries (subscription, seq, attempts, due_ms) VALUES (?1, ?2, 0, ?3)",
        )?;
        for sub in &subs {
            insert.execute(params![sub, seq, now])?;
        }
        counts.push(subs.len());
        seqs.push((seq as u64, subs));
    }
    Ok(Staged::Published(counts, seqs))
}

/// Moves dead letters (all, or those of one event id) back to the queue.
fn stage_replay(
    tx: &rusqlite::Transaction<'_>,
    which: &Replay,
    now: i64,
) -> rusqlite::Result<Staged> {
    let mut rows = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT d.subscription, d.seq, e.attrs FROM dead_letters d JOIN events e ON e.seq = d.seq",
        )?;
        let all = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in all {
            let (sub, seq, attrs) = row?;
            let wanted = match which {
                Replay::All => true,
                Replay::Id(id) => {
                    serde_json::from_str::<Attributes>(&attrs).is_ok_and(|a| &a.id == id)
                }
            };
            if wanted {
                rows.push((sub, seq as u64));
            }
        }
    }
    for (sub, seq) in &rows {
        tx.prepare_cached("DELETE FROM dead_letters WHERE subscription = ?1 AND seq = ?2")?
            .execute(params![sub, *seq as i64])?;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO deliveries (subscription, seq, attempts, due_ms) VALUES (?1, ?2, 0, ?3)",
        )?
        .execute(params![sub, *seq as i64, now])?;
    }
    Ok(Staged::Replayed(rows))
}

/// Deletes dead letters, all or of one topic.
fn stage_purge(tx: &rusqlite::Transaction<'_>, topic: Option<&str>) -> rusqlite::Result<Staged> {
    let mut rows = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT d.subscription, d.seq FROM dead_letters d JOIN events e ON e.seq = d.seq
             WHERE ?1 IS NULL OR e.topic = ?1",
        )?;
        let all = stmt.query_map([topic], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in all {
            rows.push(row?);
        }
    }
    for (sub, seq) in &rows {
        tx.prepare_cached("DELETE FROM dead_letters WHERE subscription = ?1 AND seq = ?2")?
            .execute(params![sub, seq])?;
        delete_unreferenced(tx, *seq)?;
    }
    Ok(Staged::Purged(
        rows.into_iter().map(|(sub, _)| sub).collect(),
    ))
}

/// Forgets everything pending for a removed service's subscriptions.
fn stage_drop_service(tx: &rusqlite::Transaction<'_>, service: &str) -> rusqlite::Result<Staged> {
    let pattern = format!("{service}:%");
    let mut seqs = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT seq FROM deliveries WHERE subscription LIKE ?1 UNION SELECT seq FROM dead_letters WHERE subscription LIKE ?1",
        )?;
        let all = stmt.query_map([&pattern], |r| r.get::<_, i64>(0))?;
        for seq in all {
            seqs.push(seq?);
        }
    }
    tx.execute(
        "DELETE FROM deliveries WHERE subscription LIKE ?1",
        [&pattern],
    )?;
    tx.execute(
        "DELETE FROM dead_letters WHERE subscription LIKE ?1",
        [&pattern],
    )?;
    for seq in seqs {
        delete_unreferenced(tx, seq)?;
    }
    Ok(Staged::Plain)
}
