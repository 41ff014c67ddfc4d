//! Guest output: a guest's stdout and stderr become log lines tagged with
//! the service and the invocation.
//!
//! A guest that floods its output is cut twice over (see [`OutputLimits`]):
//! each invocation may write so much (stdout and stderr together), then
//! one `output truncated` line says the rest is dropped; and each service
//! may write so much per second, all its instances together (a token
//! bucket), past which lines are dropped and a line a second says how
//! many. A flood thus never fills the host's disk or memory, nor delays
//! other services' lines.

use super::Tag;
use crate::values::service::ServiceName;
use crate::values::units::ByteSize;
use bytes::Bytes;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Longest line kept before it is logged anyway.
const MAX_LINE: usize = 16 * 1024;

/// How much guests may write to stdout and stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// Per invocation, stdout and stderr together.
    pub per_invocation: ByteSize,
    /// Per service and second, all its instances together (also the
    /// burst it may write at once).
    pub per_second: ByteSize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            per_invocation: ByteSize::mib(1),
            per_second: ByteSize::mib(1),
        }
    }
}

/// Every service's output allowance, and what was dropped.
#[derive(Default)]
pub struct Outputs {
    limits: OutputLimits,
    services: RwLock<HashMap<ServiceName, Arc<ServiceOutput>>>,
}

impl Outputs {
    /// Allowances under `limits`.
    pub fn new(limits: OutputLimits) -> Outputs {
        Outputs {
            limits,
            services: RwLock::default(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> OutputLimits {
        self.limits
    }

    /// `service`'s allowance (made on first use, kept across revisions).
    fn of(&self, service: &ServiceName) -> Arc<ServiceOutput> {
        if let Some(output) = self
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
        {
            return output.clone();
        }
        self.services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(service.clone())
            .or_insert_with(|| {
                let rate = self.limits.per_second.bytes() as f64;
                Arc::new(ServiceOutput {
                    rate,
                    bucket: Mutex::new((rate, Instant::now())),
                    notice: Mutex::new(Notice::default()),
                    dropped_cut: AtomicU64::new(0),
                    dropped_rate: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Forgets `service`'s allowance and counts (it was removed).
    pub fn forget(&self, service: &ServiceName) {
        self.services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(service);
    }

    /// Per service: bytes of output dropped past an invocation's limit,
    /// and past the service's rate.
    pub fn dropped(&self) -> Vec<(ServiceName, u64, u64)> {
        let services = self.services.read().unwrap_or_else(|e| e.into_inner());
        let mut dropped: Vec<_> = services
            .iter()
            .map(|(name, o)| {
                (
                    name.clone(),
                    o.dropped_cut.load(Ordering::Relaxed),
                    o.dropped_rate.load(Ordering::Relaxed),
                )
            })
            .collect();
        dropped.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        dropped
    }

    /// The output of one instance: its stdout and its stderr, sharing an
    /// invocation's allowance.
    pub(super) fn instance(&self, tag: &Tag) -> [GuestOutput; 2] {
        let budget = Arc::new(Budget {
            left: AtomicUsize::new(self.limits.per_invocation.bytes() as usize),
            cut: AtomicBool::new(false),
        });
        let service = self.of(&tag.service);
        ["stdout", "stderr"].map(|stream| GuestOutput {
            inner: Arc::new(GuestOutputInner {
                tag: Mutex::new(tag.clone()),
                stream,
                pending: Mutex::new(Vec::new()),
                budget: budget.clone(),
                limit: self.limits.per_invocation,
                service: service.clone(),
            }),
        })
    }
}

/// One service's allowance: a token bucket of bytes.
struct ServiceOutput {
    /// Bytes per second, and the bucket's size.
    rate: f64,
    /// Bytes that may be written now, as of when.
    bucket: Mutex<(f64, Instant)>,
    notice: Mutex<Notice>,
    dropped_cut: AtomicU64,
    dropped_rate: AtomicU64,
}

/// Lines dropped for the rate since it was last said.
#[derive(Default)]
struct Notice {
    said: Option<Instant>,
    lines: u64,
    bytes: u64,
}

impl ServiceOutput {
    /// Takes `n` bytes from the bucket, if they are there.
    fn take(&self, n: usize) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, since) = *bucket;
        let tokens = (tokens + now.duration_since(since).as_secs_f64() * self.rate).min(self.rate);
        if tokens >= n as f64 {
            *bucket = (tokens - n as f64, now);
            true
        } else {
            *bucket = (tokens, now);
            false
        }
    }

    /// Notes a line of `n` bytes dropped for the rate; says how many were,
    /// at most once a second: `Some((lines, bytes))` when it is time.
    fn dropped(&self, n: usize) -> Option<(u64, u64)> {
        self.dropped_rate.fetch_add(n as u64, Ordering::Relaxed);
        let mut notice = self.notice.lock().unwrap_or_else(|e| e.into_inner());
        notice.lines += 1;
        notice.bytes += n as u64;
        let due = notice.said.is_none_or(|at| at.elapsed().as_secs() >= 1);
        due.then(|| {
            notice.said = Some(Instant::now());
            let said = (notice.lines, notice.bytes);
            notice.lines = 0;
            notice.bytes = 0;
            said
        })
    }
}

/// What is left of one invocation's allowance.
struct Budget {
    left: AtomicUsize,
    /// Past it: the rest is dropped.
    cut: AtomicBool,
}

/// A guest's stdout or stderr: every line becomes a `tracing` event (target
/// `guest`) tagged with the service, the invocation and the stream. A last
/// line without a newline is logged when the instance is dropped.
#[derive(Clone)]
pub struct GuestOutput {
    inner: Arc<GuestOutputInner>,
}

struct GuestOutputInner {
    tag: Mutex<Tag>,
    stream: &'static str,
    pending: Mutex<Vec<u8>>,
    /// The invocation's allowance, shared with the other stream.
    budget: Arc<Budget>,
    limit: ByteSize,
    service: Arc<ServiceOutput>,
}

impl GuestOutput {
    /// Tags what follows with `tag` (a reused instance's next
    /// invocation), after logging a last line the previous one left
    /// without a newline.
    pub(super) fn retag(&self, tag: Tag) {
        let inner = &self.inner;
        let mut pending = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !pending.is_empty() {
            inner.emit(&pending);
            pending.clear();
        }
        *inner.tag.lock().unwrap_or_else(|e| e.into_inner()) = tag;
        self.renew();
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let inner = &self.inner;
        // A cut invocation's output goes nowhere: it is not even copied.
        if inner.budget.cut.load(Ordering::Relaxed) {
            inner
                .service
                .dropped_cut
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            return;
        }
        let mut pending = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            let (mut text, ends) = match chunk.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (chunk, false),
            };
            // A line longer than MAX_LINE is logged in pieces.
            while pending.len() + text.len() > MAX_LINE {
                let take = MAX_LINE - pending.len();
                pending.extend_from_slice(&text[..take]);
                inner.emit(&pending);
                pending.clear();
                text = &text[take..];
            }
            pending.extend_from_slice(text);
            if ends {
                inner.emit(&pending);
                pending.clear();
            }
        }
        if pending.capacity() > MAX_LINE {
            pending.shrink_to(MAX_LINE);
        }
    }

    /// A new allowance for what follows (a reused or shared instance's
    /// next invocation), shared with the other stream.
    pub(super) fn renew(&self) {
        let inner = &self.inner;
        inner
            .budget
            .left
            .store(inner.limit.bytes() as usize, Ordering::Relaxed);
        inner.budget.cut.store(false, Ordering::Relaxed);
    }
}

impl GuestOutputInner {
    fn emit(&self, line: &[u8]) {
        let size = line.len() + 1;
        let tag = self.tag.lock().unwrap_or_else(|e| e.into_inner());
        let budget = &self.budget;
        if budget.cut.load(Ordering::Relaxed) {
            self.service
                .dropped_cut
                .fetch_add(size as u64, Ordering::Relaxed);
            return;
        }
        let within = budget
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(size)
            })
            .is_ok();
        if !within {
            budget.cut.store(true, Ordering::Relaxed);
            self.service
                .dropped_cut
                .fetch_add(size as u64, Ordering::Relaxed);
            tracing::warn!(
                target: "guest",
                service = %tag.service,
                invocation = %tag.invocation,
                stream = self.stream,
                "output truncated: the invocation wrote more than {} to stdout and stderr; the rest of its output is dropped",
                self.limit
            );
            return;
        }
        if !self.service.take(size) {
            if let Some((lines, bytes)) = self.service.dropped(size) {
                tracing::warn!(
                    target: "guest",
                    service = %tag.service,
                    invocation = %tag.invocation,
                    stream = self.stream,
                    "output dropped: {lines} lines ({bytes} bytes) since the last such line; the service writes more than {}/s",
                    ByteSize(self.service.rate as u64)
                );
            }
            return;
        }
        let line = String::from_utf8_lossy(line);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        tracing::info!(
            target: "guest",
            service = %tag.service,
            invocation = %tag.invocation,
            stream = self.stream,
            "{line}"
        );
    }
}

impl Drop for GuestOutputInner {
    fn drop(&mut self) {
        let pending = self.pending.get_mut().unwrap_or_else(|e| e.into_inner());
        if !pending.is_empty() {
            let line = std::mem::take(pending);
            self.emit(&line);
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
