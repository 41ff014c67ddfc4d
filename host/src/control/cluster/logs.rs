//! Logs across a cluster: `berth logs` on any node shows every node's
//! lines, each tagged with its node (the `node` of each line).
//!
//! Over NATS core messaging (lines are kept in each node's memory, not in
//! JetStream):
//!
//! - **History**: the asking node publishes an `Ask` (its filter and
//!   tail) on `berth.logs.query` with a reply inbox; every other node
//!   answers with its matching lines as NDJSON, in chunks, the last one
//!   marked `Berth-Last` and carrying its marks (per service, the last
//!   line its buffer held). The asker waits for every live node, or
//!   [`GATHER_TIMEOUT`], and merges by time.
//! - **Following**: a node publishes its new lines on
//!   `berth.logs.live.NODE` only while some node wants them: a node with
//!   followers says so on `berth.logs.want` every [`WANT_EVERY`], and a
//!   want lasts [`WANT_FOR`]. Without followers anywhere, no line leaves
//!   its node. An `Ask` that follows is a want too, taken before the
//!   answering node reads its buffer, so that no line falls between what
//!   it answered and what it then publishes (one in both is shown once,
//!   by its mark).

use crate::runtime::logs::{Level, LogBook, LogFilter, LogLine};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const QUERY: &str = "berth.logs.query";
const WANT: &str = "berth.logs.want";
const LIVE: &str = "berth.logs.live";

/// How often a node with followers says it wants the others' lines.
pub const WANT_EVERY: Duration = Duration::from_secs(5);

/// How long a want lasts.
pub const WANT_FOR: Duration = Duration::from_secs(15);

/// How long the asker waits for the other nodes' answers.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(3);

/// Most bytes of lines in one message (NATS' default limit is 1 MiB).
const CHUNK: usize = 256 << 10;

/// How long a node gathers its new lines before publishing them.
const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// Lines published to a follower queue (per node) before the oldest go.
const REMOTE_CAPACITY: usize = 4096;

/// A node's question to the others.
#[derive(Debug, Serialize, Deserialize)]
struct Ask {
    /// The asking node (which does not answer itself).
    from: String,
    filter: LogFilter,
    tail: usize,
    /// Whether the asker goes on following (a want as well).
    follow: bool,
}

/// A want: the node's name.
#[derive(Debug, Serialize, Deserialize)]
struct Want {
    from: String,
}

/// A line of another node's, as it came (JSON), with what filters read.
#[derive(Debug, Clone)]
pub struct RemoteLine {
    /// The node that logged it.
    pub node: Arc<str>,
    /// The service.
    pub service: Arc<str>,
    /// Its place among that node's lines.
    pub seq: u64,
    /// When it was logged (ms since the epoch).
    pub time_ms: u64,
    /// Its level.
    pub level: Level,
    /// The invocation it is about, if any.
    pub invocation: Option<String>,
    /// The line as JSON, without its newline.
    pub json: Bytes,
}

impl RemoteLine {
    /// Reads one NDJSON line; `None` for anything else.
    pub(super) fn parse(json: &[u8]) -> Option<RemoteLine> {
        #[derive(Deserialize)]
        struct Fields {
            node: Arc<str>,
            service: Arc<str>,
            seq: u64,
            time_ms: u64,
            level: Level,
            #[serde(default)]
            invocation: Option<String>,
        }
        let f: Fields = serde_json::from_slice(json).ok()?;
        Some(RemoteLine {
            node: f.node,
            service: f.service,
            seq: f.seq,
            time_ms: f.time_ms,
            level: f.level,
            invocation: f.invocation,
            json: Bytes::copy_from_slice(json),
        })
    }

    /// Whether `filter` wants it.
    pub fn wanted_by(&self, filter: &LogFilter) -> bool {
        filter.admits(
            &self.service,
            self.time_ms,
            self.invocation.as_deref(),
            self.level,
        )
    }
}

/// Per (node, service): the last line of that node's buffer when it
/// answered, and when it answered (ms); a live line up to the mark and
/// not later than that was in the answer (a node restarted since counts
/// its lines from 1 again, later).
pub type RemoteMarks = HashMap<(Arc<str>, Arc<str>), (u64, u64)>;

/// What the other nodes send a follower.
#[derive(Debug, Clone)]
pub enum Remote {
    /// A line.
    Line(RemoteLine),
    /// Lines of `node`'s it could not publish in time.
    Skipped {
        /// The node.
        node: Arc<str>,
        /// How many.
        count: u64,
    },
}

impl RemoteLine {
    /// Whether this line was in an answer that carried `marks`.
    pub fn answered(&self, marks: &RemoteMarks) -> bool {
        marks
            .get(&(self.node.clone(), self.service.clone()))
            .is_some_and(|(mark, at)| self.seq <= *mark && self.time_ms <= *at)
    }
}

/// What the other nodes answered.
#[derive(Debug, Default)]
pub struct Gathered {
    /// Their lines, each node's in order.
    pub lines: Vec<RemoteLine>,
    /// Their marks.
    pub marks: RemoteMarks,
    /// Live nodes that did not answer in time.
    pub missing: Vec<String>,
}

/// This node's end of the cluster's logs.
pub struct ClusterLogs {
    node: String,
    client: async_nats::Client,
    /// None on a node that keeps no lines (it answers with none).
    book: Option<Arc<LogBook>>,
    /// The other nodes' live lines, for this node's followers.
    remote: broadcast::Sender<Arc<Remote>>,
    /// Whether the relay of the others' lines runs (guarded by the lock
    /// so that it never stops as a follower arrives).
    relay: tokio::sync::Mutex<bool>,
    /// Until when another node wants this node's lines, and whether they
    /// are being published.
    wanted: Arc<Mutex<Wanted>>,
    closed: AtomicBool,
}

impl ClusterLogs {
    /// The logs of `book`, node `node`'s, shared over `client` (the
    /// cluster's connection).
    pub fn new(
        node: &str,
        client: async_nats::Client,
        book: Option<Arc<LogBook>>,
    ) -> Arc<ClusterLogs> {
        Arc::new(ClusterLogs {
            node: node.to_owned(),
            client,
            book,
            remote: broadcast::channel(REMOTE_CAPACITY).0,
            relay: tokio::sync::Mutex::new(false),
            wanted: Arc::default(),
            closed: AtomicBool::new(false),
        })
    }

    /// Answers the other nodes' questions and wants until `stop`.
    pub async fn serve(self: Arc<Self>, stop: CancellationToken) {
        let (mut queries, mut wants) =
            match tokio::try_join!(self.client.subscribe(QUERY), self.client.subscribe(WANT)) {
                Ok(subs) => subs,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot share this node's logs with the cluster");
                    return;
                }
            };
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(msg) = queries.next() => {
                    let this = self.clone();
                    tokio::spawn(async move { this.answer(msg).await });
                }
                Some(msg) = wants.next() => {
                    if let Ok(want) = serde_json::from_slice::<Want>(&msg.payload)
                        && want.from != self.node
                    {
                        self.wanted();
                    }
                }
                else => break,
            }
        }
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Answers one [`Ask`] with this node's lines.
    async fn answer(&self, msg: async_nats::Message) {
        let Some(reply) = msg.reply else { return };
        let Ok(ask) = serde_json::from_slice::<Ask>(&msg.payload) else {
            return;
        };
        if ask.from == self.node {
            return;
        }
        // Listening before reading: see the module's docs.
        if ask.follow {
            self.wanted();
        }
        let at_ms = crate::values::units::now_ms().max(0) as u64;
        let (lines, marks) = match &self.book {
            Some(book) => book.snapshot(&ask.filter, Some(ask.tail)),
            None => Default::default(),
        };
        let mut chunk = Vec::with_capacity(lines.len().min(2048) * 160);
        for line in &lines {
            if serde_json::to_writer(&mut chunk, &**line).is_ok() {
                chunk.push(b'\n');
            }
            if chunk.len() >= CHUNK {
                let body = Bytes::from(std::mem::take(&mut chunk));
                if let Err(e) = self
                    .client
                    .publish_with_headers(reply.clone(), self.headers(None), body)
                    .await
                {
                    tracing::debug!(error = %e, "answering a logs query failed");
                    return;
                }
            }
        }
        let marks: HashMap<&str, u64> = marks.iter().map(|(s, m)| (&**s, *m)).collect();
        let marks = serde_json::to_string(&marks).unwrap_or_default();
        let _ = self
            .client
            .publish_with_headers(
                reply,
                self.headers(Some((&marks, at_ms))),
                Bytes::from(chunk),
            )
            .await;
    }

    fn headers(&self, last: Option<(&str, u64)>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("Berth-Node", self.node.as_str());
        if let Some((marks, at_ms)) = last {
            headers.insert("Berth-Last", "1");
            headers.insert("Berth-Marks", marks);
            headers.insert("Berth-At", at_ms.to_string().as_str());
        }
        headers
    }

    /// Another node wants this node's lines: publish them for
    /// [`WANT_FOR`] more (subscribed to the book at once).
    fn wanted(&self) {
        let Some(book) = &self.book else { return };
        let mut wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        wanted.until = Some(Instant::now() + WANT_FOR);
        if wanted.publishing.is_some() || self.closed.load(Ordering::Relaxed) {
            return;
        }
        wanted.generation += 1;
        wanted.publishing = Some(wanted.generation);
        let (live, closed) = book.follow();
        tokio::spawn(publish(
            self.client.clone(),
            self.node.clone(),
            live,
            closed,
            (self.wanted.clone(), wanted.generation),
        ));
    }

    /// The other nodes' lines from now on, for a follower of this node's
    /// (the relay starts with the first follower, and the others are told
    /// at once that they are wanted).
    pub async fn follow(self: &Arc<Self>) -> broadcast::Receiver<Arc<Remote>> {
        let mut running = self.relay.lock().await;
        let receiver = self.remote.subscribe();
        if !*running {
            match self.client.subscribe(format!("{LIVE}.*")).await {
                Ok(sub) => {
                    *running = true;
                    tokio::spawn(self.clone().relay(sub));
                }
                Err(e) => tracing::warn!(error = %e, "cannot follow the other nodes' logs"),
            }
        }
        drop(running);
        self.want().await;
        receiver
    }

    async fn want(&self) {
        let want = serde_json::to_vec(&Want {
            from: self.node.clone(),
        })
        .unwrap_or_default();
        let _ = self.client.publish(WANT, want.into()).await;
    }

    /// Hands the other nodes' live lines to this node's followers, and
    /// keeps saying they are wanted, while there are followers.
    async fn relay(self: Arc<Self>, mut sub: async_nats::Subscriber) {
        let mut tick = tokio::time::interval(WANT_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                msg = sub.next() => {
                    let Some(msg) = msg else { break };
                    for json in msg.payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                        let remote = match RemoteLine::parse(json) {
                            Some(line) if *line.node != *self.node => Remote::Line(line),
                            Some(_) => continue,
                            None => match serde_json::from_slice::<SkippedLine>(json) {
                                Ok(s) => Remote::Skipped { node: s.node, count: s.skipped },
                                Err(_) => continue,
                            },
                        };
                        let _ = self.remote.send(Arc::new(remote));
                    }
                }
                _ = tick.tick() => {
                    let running = self.relay.lock().await;
                    if self.remote.receiver_count() == 0 || self.closed.load(Ordering::Relaxed) {
                        break;
                    }
                    drop(running);
                    self.want().await;
                }
            }
        }
        // Whichever way it ends, the next follower starts it again.
        *self.relay.lock().await = false;
        let _ = sub.unsubscribe().await;
    }

    /// The other live nodes' lines that `filter` wants (the last `tail` of
    /// each node's), and their marks; `others` are the nodes to wait for.
    pub async fn gather(
        &self,
        filter: &LogFilter,
        tail: usize,
        follow: bool,
        others: Vec<String>,
    ) -> Gathered {
        let mut gathered = Gathered::default();
        if others.is_empty() {
            return gathered;
        }
        let ask = Ask {
            from: self.node.clone(),
            filter: filter.clone(),
            tail,
            follow,
        };
        let inbox = self.client.new_inbox();
        let sent = async {
            let sub = self.client.subscribe(inbox.clone()).await?;
            let body = serde_json::to_vec(&ask).unwrap_or_default();
            self.client
                .publish_with_reply(QUERY, inbox, body.into())
                .await?;
            Ok::<_, async_nats::Error>(sub)
        };
        let mut sub = match sent.await {
            Ok(sub) => sub,
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the other nodes for their logs");
                gathered.missing = others;
                return gathered;
            }
        };
        let mut waiting: HashSet<String> = others.into_iter().collect();
        let deadline = Instant::now() + GATHER_TIMEOUT;
        while !waiting.is_empty() {
            let msg = match tokio::time::timeout_at(deadline, sub.next()).await {
                Ok(Some(msg)) => msg,
                Ok(None) | Err(_) => break,
            };
            let header = |name: &str| {
                msg.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
            };
            let Some(node) = header("Berth-Node") else {
                continue;
            };
            for json in msg.payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if let Some(line) = RemoteLine::parse(json) {
                    gathered.lines.push(line);
                }
            }
            if let Some(marks) = header("Berth-Marks") {
                let node: Arc<str> = node.as_str().into();
                let at: u64 = header("Berth-At").and_then(|t| t.parse().ok()).unwrap_or(0);
                let marks: HashMap<String, u64> = serde_json::from_str(&marks).unwrap_or_default();
                for (service, mark) in marks {
                    gathered
                        .marks
                        .insert((node.clone(), service.as_str().into()), (mark, at));
                }
                waiting.remove(&*node);
            }
        }
        let _ = sub.unsubscribe().await;
        gathered.missing = waiting.into_iter().collect();
        gathered.missing.sort();
        gathered
    }
}

/// Whether another node wants this node's lines, and until when.
#[derive(Debug, Default)]
struct Wanted {
    until: Option<Instant>,
    /// The publisher running, by its generation.
    publishing: Option<u64>,
    generation: u64,
}

/// What a node publishes when lines passed its publisher by.
#[derive(Debug, Serialize, Deserialize)]
struct SkippedLine {
    skipped: u64,
    node: Arc<str>,
}

/// Publishes this node's new lines, in batches, until no node wants them
/// any more (or the host shuts down).
async fn publish(
    client: async_nats::Client,
    node: String,
    mut live: broadcast::Receiver<Arc<LogLine>>,
    closed: CancellationToken,
    (wanted, generation): (Arc<Mutex<Wanted>>, u64),
) {
    use tokio::sync::broadcast::error::RecvError;
    let subject = format!("{LIVE}.{node}");
    let node: Arc<str> = node.into();
    let mut batch: Vec<u8> = Vec::new();
    let mut flush_at: Option<Instant> = None;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        let flush = async {
            match flush_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = closed.cancelled() => break,
            () = flush => {
                flush_at = None;
                let body = Bytes::from(std::mem::take(&mut batch));
                let _ = client.publish(subject.clone(), body).await;
            }
            line = live.recv() => match line {
                Ok(line) => {
                    if serde_json::to_writer(&mut batch, &*line).is_ok() {
                        batch.push(b'\n');
                    }
                    if batch.len() >= CHUNK {
                        flush_at = None;
                        let body = Bytes::from(std::mem::take(&mut batch));
                        let _ = client.publish(subject.clone(), body).await;
                    } else if flush_at.is_none() {
                        flush_at = Some(Instant::now() + BATCH_WINDOW);
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    let skipped = SkippedLine { skipped: n, node: node.clone() };
                    if serde_json::to_writer(&mut batch, &skipped).is_ok() {
                        batch.push(b'\n');
                    }
                }
                Err(RecvError::Closed) => break,
            },
            _ = check.tick() => {
                // Checked and given up under one lock: a want that comes
                // meanwhile finds no publisher and starts one.
                let mut wanted = wanted.lock().unwrap_or_else(|e| e.into_inner());
                if wanted.until.is_none_or(|until| until < Instant::now()) {
                    if wanted.publishing == Some(generation) {
                        wanted.publishing = None;
                    }
                    break;
                }
            }
        }
    }
    {
        // Only this publisher's own mark is cleared: a want may have
        // started the next one already.
        let mut wanted = wanted.lock().unwrap_or_else(|e| e.into_inner());
        if wanted.publishing == Some(generation) {
            wanted.publishing = None;
        }
    }
    if !batch.is_empty() {
        let _ = client.publish(subject, Bytes::from(batch)).await;
    }
}
