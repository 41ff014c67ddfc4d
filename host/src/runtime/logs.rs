//! Logs on demand: the recent log lines of each service — its guests'
//! stdout and stderr and the host's lines about its invocations — kept in
//! memory for `berth logs` and `GET /v1/logs`, and handed to followers as
//! they come.
//!
//! Each service's lines are a bounded buffer (a size in bytes, the same
//! for every service): the oldest lines go first, and are counted. A
//! follower that falls behind skips lines (and is told how many) rather
//! than hold any back: nothing a follower does slows a service down or
//! grows memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Lines waiting for the slowest follower, all services together.
const FOLLOW_CAPACITY: usize = 4096;

/// How much a line says.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Detail.
    Debug,
    /// What happened.
    Info,
    /// Something went wrong for one invocation, or nearly.
    Warn,
    /// Something went wrong.
    Error,
}

impl Level {
    /// The level named `name` (`debug`, `info`, `warn`, `error`).
    pub fn parse(name: &str) -> Option<Level> {
        match name.trim().to_ascii_lowercase().as_str() {
            "debug" | "trace" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warn" | "warning" => Some(Level::Warn),
            "error" => Some(Level::Error),
            _ => None,
        }
    }
}

/// One line of a service's log.
#[derive(Debug, serde::Serialize)]
pub struct LogLine {
    /// Its place among every line this node kept, from 1.
    pub seq: u64,
    /// When it was logged, in ms since the Unix epoch.
    pub time_ms: u64,
    /// The node that logged it.
    pub node: Arc<str>,
    /// The service.
    pub service: Arc<str>,
    /// The invocation it is about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invocation: Option<String>,
    /// `stdout` or `stderr` (the guest's), or `host` (Berth's).
    pub stream: &'static str,
    /// Its level.
    pub level: Level,
    /// What it says.
    pub text: String,
}

impl LogLine {
    /// What it takes in memory, roughly: its text, its invocation and the
    /// line itself in its `Arc`.
    fn size(&self) -> usize {
        self.text.len() + self.invocation.as_ref().map_or(0, String::len) + 192
    }
}

/// Which lines a reader wants.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LogFilter {
    /// Lines of this service only.
    pub service: Option<String>,
    /// Lines logged at or after this time (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Lines about this invocation only.
    pub invocation: Option<String>,
    /// Lines at this level or above.
    pub level: Option<Level>,
}

impl LogFilter {
    /// Whether `line` is wanted.
    pub fn matches(&self, line: &LogLine) -> bool {
        self.admits(
            &line.service,
            line.time_ms,
            line.invocation.as_deref(),
            line.level,
        )
    }

    /// Whether a line of these fields is wanted.
    pub fn admits(
        &self,
        service: &str,
        time_ms: u64,
        invocation: Option<&str>,
        level: Level,
    ) -> bool {
        self.service.as_deref().is_none_or(|s| service == s)
            && self.since_ms.is_none_or(|t| time_ms >= t)
            && self
                .invocation
                .as_deref()
                .is_none_or(|i| invocation == Some(i))
            && self.level.is_none_or(|l| level >= l)
    }
}

/// One service's buffer.
#[derive(Default)]
struct Lines {
    lines: VecDeque<Arc<LogLine>>,
    bytes: usize,
    /// Lines pushed out to make room.
    dropped: u64,
}

/// Every service's recent lines, and the lines as they come.
pub struct LogBook {
    node: Arc<str>,
    /// Bytes of lines kept per service.
    capacity: usize,
    services: RwLock<HashMap<Arc<str>, Arc<Mutex<Lines>>>>,
    live: broadcast::Sender<Arc<LogLine>>,
    seq: AtomicU64,
    /// Cancelled when the host shuts down: followers stop.
    closed: CancellationToken,
}

impl LogBook {
    /// A book of `node`'s lines, keeping `capacity` bytes of each service's.
    pub fn new(node: &str, capacity: usize) -> LogBook {
        LogBook {
            node: node.into(),
            capacity,
            services: RwLock::new(HashMap::new()),
            live: broadcast::channel(FOLLOW_CAPACITY).0,
            seq: AtomicU64::new(0),
            closed: CancellationToken::new(),
        }
    }

    /// The bytes of lines kept per service.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lines_of(&self, service: &str) -> (Arc<str>, Arc<Mutex<Lines>>) {
        if let Some((name, lines)) = self
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get_key_value(service)
        {
            return (name.clone(), lines.clone());
        }
        let mut services = self.services.write().unwrap_or_else(|e| e.into_inner());
        let name: Arc<str> = service.into();
        let lines = services.entry(name.clone()).or_default().clone();
        (name, lines)
    }

    /// Keeps a line of `service`'s, and hands it to the followers.
    pub fn push(
        &self,
        service: &str,
        invocation: Option<String>,
        stream: &'static str,
        level: Level,
        text: String,
    ) {
        let (service, lines) = self.lines_of(service);
        let line = {
            let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
            // The sequence is taken under the service's lock, so that a
            // service's lines are in order in its buffer.
            let line = Arc::new(LogLine {
                seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
                time_ms: crate::values::units::now_ms().max(0) as u64,
                node: self.node.clone(),
                service,
                invocation,
                stream,
                level,
                text,
            });
            lines.bytes += line.size();
            lines.lines.push_back(line.clone());
            while lines.bytes > self.capacity
                && let Some(old) = lines.lines.pop_front()
            {
                lines.bytes -= old.size();
                lines.dropped += 1;
            }
            line
        };
        // No follower: nothing to do (not even the channel's lock).
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(line);
        }
    }

    /// Whether any line of `service` is kept.
    pub fn knows(&self, service: &str) -> bool {
        self.services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(service)
    }

    /// Forgets `service`'s lines (it was removed).
    pub fn forget(&self, service: &str) {
        self.services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(service);
    }

    /// The kept lines `filter` wants, oldest first, the last `tail` of
    /// them if given.
    pub fn query(&self, filter: &LogFilter, tail: Option<usize>) -> Vec<Arc<LogLine>> {
        self.snapshot(filter, tail).0
    }

    /// What [`query`](Self::query) answers, and per service the last line
    /// its buffer held when it was read: a follower that listened before
    /// takes the lines past those marks from its channel.
    pub fn snapshot(
        &self,
        filter: &LogFilter,
        tail: Option<usize>,
    ) -> (Vec<Arc<LogLine>>, HashMap<Arc<str>, u64>) {
        let buffers: Vec<(Arc<str>, Arc<Mutex<Lines>>)> = {
            let services = self.services.read().unwrap_or_else(|e| e.into_inner());
            match &filter.service {
                Some(service) => services
                    .get_key_value(service.as_str())
                    .map(|(name, lines)| (name.clone(), lines.clone()))
                    .into_iter()
                    .collect(),
                None => services
                    .iter()
                    .map(|(name, lines)| (name.clone(), lines.clone()))
                    .collect(),
            }
        };
        let mut found: Vec<Arc<LogLine>> = Vec::new();
        let mut marks = HashMap::with_capacity(buffers.len());
        for (name, lines) in buffers {
            let lines = lines.lock().unwrap_or_else(|e| e.into_inner());
            marks.insert(name, lines.lines.back().map_or(0, |l| l.seq));
            found.extend(lines.lines.iter().filter(|l| filter.matches(l)).cloned());
        }
        found.sort_by_key(|l| l.seq);
        if let Some(tail) = tail
            && found.len() > tail
        {
            found.drain(..found.len() - tail);
        }
        (found, marks)
    }

    /// Lines as they come, from now on, and what says the book is
    /// closed (the host is shutting down: followers stop).
    pub fn follow(&self) -> (broadcast::Receiver<Arc<LogLine>>, CancellationToken) {
        (self.live.subscribe(), self.closed.clone())
    }

    /// Stops every follower (the host is shutting down).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Followers now.
    pub fn followers(&self) -> usize {
        self.live.receiver_count()
    }

    /// Per service: lines pushed out of its buffer so far.
    pub fn dropped(&self) -> Vec<(Arc<str>, u64)> {
        let services = self.services.read().unwrap_or_else(|e| e.into_inner());
        let mut dropped: Vec<_> = services
            .iter()
            .map(|(name, lines)| {
                let lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                (name.clone(), lines.dropped)
            })
            .collect();
        dropped.sort();
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(book: &LogBook, service: &str, text: &str) {
        book.push(
            service,
            Some("inv".into()),
            "stdout",
            Level::Info,
            text.into(),
        );
    }

    #[test]
    fn a_full_buffer_drops_its_oldest_lines_and_counts_them() {
        let book = LogBook::new("n1", 4000);
        for i in 0..100 {
            push(&book, "a", &format!("line {i}"));
        }
        push(&book, "b", "other");
        let a = book.query(
            &LogFilter {
                service: Some("a".into()),
                ..LogFilter::default()
            },
            None,
        );
        assert!(a.len() < 100 && a.len() > 5, "{}", a.len());
        assert_eq!(a.last().unwrap().text, "line 99");
        let dropped: u64 = book
            .dropped()
            .iter()
            .filter(|(s, _)| &**s == "a")
            .map(|d| d.1)
            .sum();
        assert_eq!(dropped as usize + a.len(), 100);
        // Another service's lines are its own.
        let all = book.query(&LogFilter::default(), Some(2));
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].text, "other");
        assert_eq!(&*all[1].node, "n1");
    }

    #[test]
    fn filters_pick_by_invocation_and_level() {
        let book = LogBook::new("n1", 1 << 20);
        push(&book, "a", "one");
        book.push("a", Some("x".into()), "host", Level::Warn, "trap".into());
        let warn = book.query(
            &LogFilter {
                level: Some(Level::Warn),
                ..LogFilter::default()
            },
            None,
        );
        assert_eq!(warn.len(), 1);
        assert_eq!(warn[0].text, "trap");
        let of_x = book.query(
            &LogFilter {
                invocation: Some("x".into()),
                ..LogFilter::default()
            },
            None,
        );
        assert_eq!(of_x.len(), 1);
        assert_eq!(Level::parse("WARNING"), Some(Level::Warn));
        assert_eq!(Level::parse("loud"), None);
    }
}
