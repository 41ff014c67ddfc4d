//! Request and response bodies.
//!
//! - [`TimedBody`] is every request body as a listener hands it on: it
//!   fails once the client sends it too slowly (see
//!   [`crate::triggers::http::limits::ListenerLimits::body_timeout`]).
//! - [`LimitedBody`] wraps a request body and fails it once it grows past
//!   the service's `request_body` limit.
//! - [`ResponseBody`] is every response Berth sends: a short host-made body,
//!   a guest's streamed body that is cut off (the stream fails, so the
//!   client sees an incomplete response) when the invocation ended before
//!   the guest finished it, or the admin API's.

use crate::runtime::record::Hold;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Boxed error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as a listener hands it to a handler.
pub type IncomingBody = TimedBody<hyper::body::Incoming>;

/// The error of a request body sent too slowly.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly (less than {min_rate} bytes/s after {grace:?})")]
pub struct TooSlow {
    /// The time every body is given.
    pub grace: Duration,
    /// The rate it must keep up beyond that.
    pub min_rate: u64,
}

/// A request body that fails once it is late: it must be complete within
/// `grace` plus one second per `min_rate` bytes received (Apache's
/// `mod_reqtimeout` rule), so a client trickling a byte a second cannot
/// hold a connection and a handler forever, while a big upload at a fair
/// rate always has time.
pub struct TimedBody<B> {
    inner: B,
    grace: Duration,
    min_rate: u64,
    /// From the first read: time the request spent waiting for admission
    /// or a cold start is not the client's.
    clock: Option<(tokio::time::Instant, Pin<Box<tokio::time::Sleep>>)>,
    received: u64,
    failed: bool,
}

impl<B> TimedBody<B> {
    /// Times `inner` from its first read.
    pub fn new(inner: B, grace: Duration, min_rate: u64) -> Self {
        TimedBody {
            inner,
            grace,
            min_rate: min_rate.max(1),
            clock: None,
            received: 0,
            failed: false,
        }
    }

    fn deadline(&self, start: tokio::time::Instant) -> tokio::time::Instant {
        let earned = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        start + self.grace + earned
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The connection failed.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The client sent it too slowly.
    #[error("{0}")]
    TooSlow(#[from] TooSlow),
}

impl From<RequestBodyError> for wasmtime_wasi_http::Error {
    fn from(e: RequestBodyError) -> Self {
        match e {
            RequestBodyError::Hyper(e) => wasmtime_wasi_http::Error::Hyper(e),
            RequestBodyError::TooSlow(_) => wasmtime_wasi_http::Error::ConnectionReadTimeout,
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let start = match &this.clock {
                    Some((start, _)) => *start,
                    None => tokio::time::Instant::now(),
                };
                let deadline = this.deadline(start);
                let (_, timer) = this
                    .clock
                    .get_or_insert_with(|| (start, Box::pin(tokio::time::sleep_until(deadline))));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.failed = true;
                        tracing::info!(
                            received = this.received,
                            "a request body arrived too slowly; cut off"
                        );
                        Poll::Ready(Some(Err(TooSlow {
                            grace: this.grace,
                            min_rate: this.min_rate,
                        }
                        .into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that errors once more than `limit` bytes arrive, and
/// counts the bytes it passes on.
pub struct LimitedBody<B = IncomingBody> {
    inner: B,
    remaining: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`; `exceeded` is set when the limit is crossed, `read`
    /// counts the bytes read.
    pub fn new(inner: B, limit: u64, exceeded: Arc<AtomicBool>, read: Arc<AtomicU64>) -> Self {
        LimitedBody {
            inner,
            remaining: limit,
            limit,
            exceeded,
            read,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.remaining {
                self.exceeded.store(true, Ordering::Release);
                self.remaining = 0;
                return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(
                    Some(self.limit),
                ))));
            }
            self.remaining -= len;
            self.read.fetch_add(len, Ordering::Relaxed);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether the guest finished its response body, as told by the invocation
/// when its instance is about to be dropped.
#[derive(Debug, Default)]
pub struct BodyEnd {
    /// 0 while the invocation runs.
    state: AtomicU8,
    /// The body's poller, woken when the end is set (a body waiting on a
    /// guest that no longer writes is cut off at once).
    waker: futures_util::task::AtomicWaker,
}

const COMPLETE: u8 = 1;
const INCOMPLETE: u8 = 2;

impl BodyEnd {
    /// Records how the invocation left the body. Must be called before the
    /// instance (which owns the body's sending side) is dropped.
    pub fn set(&self, complete: bool) {
        self.state.store(
            if complete { COMPLETE } else { INCOMPLETE },
            Ordering::Release,
        );
        self.waker.wake();
    }

    fn is_incomplete(&self) -> bool {
        self.state.load(Ordering::Acquire) == INCOMPLETE
    }
}

/// How a WASI 0.3 guest's response body went, as the client's side saw
/// it: whether it reached its natural end while the invocation was alive.
/// (A 0.3 body may be the guest's stream, or a host body it passes on —
/// its request's or an upstream response's; either way the invocation
/// lasts until the body is done.)
#[derive(Debug, Default)]
pub struct BodyWatch {
    state: AtomicU8,
    settled: tokio::sync::Notify,
}

const STREAMING: u8 = 0;
const ENDED: u8 = 1;
const STOPPED: u8 = 2;

impl BodyWatch {
    fn settle(&self, to: u8) {
        if self
            .state
            .compare_exchange(STREAMING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // One waiter, the invocation: the permit is kept if it is not
            // waiting yet.
            self.settled.notify_one();
        }
    }

    /// Waits until the body ended, failed or was dropped.
    pub async fn settled(&self) {
        while self.state.load(Ordering::Acquire) == STREAMING {
            self.settled.notified().await;
        }
    }

    /// Whether the body reached its natural end.
    pub fn ended(&self) -> bool {
        self.state.load(Ordering::Acquire) == ENDED
    }
}

/// A WASI 0.3 response body that tells its [`BodyWatch`] how it went.
pub struct WatchedBody {
    inner: HyperOutgoingBody,
    watch: Arc<BodyWatch>,
}

impl WatchedBody {
    /// Watches `inner` through `watch`.
    pub fn new(inner: HyperOutgoingBody, watch: Arc<BodyWatch>) -> Self {
        WatchedBody { inner, watch }
    }
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.watch.settle(ENDED),
            Poll::Ready(Some(Err(_))) => self.watch.settle(STOPPED),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.watch.settle(STOPPED);
    }
}

/// The error a cut-off response body ends with.
#[derive(Debug, thiserror::Error)]
#[error("response body cut off: the invocation ended before the guest finished it")]
pub struct CutOff;

/// A response body, host-made or streamed by a guest.
pub enum ResponseBody {
    /// A complete body made by the host.
    Full(Option<Bytes>),
    /// A guest's body and how the invocation left it.
    Guest {
        /// The guest's stream.
        inner: HyperOutgoingBody,
        /// Set by the invocation before its instance is dropped.
        end: Arc<BodyEnd>,
        /// A hold on the invocation's usage record: bytes sent are counted
        /// into it, and dropping the body lets go of it.
        hold: Option<Hold>,
    },
    /// Any other body (the admin API's responses).
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl Default for ResponseBody {
    fn default() -> Self {
        ResponseBody::Full(None)
    }
}

impl ResponseBody {
    /// A host-made body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(bytes.into()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Boxed(inner) => Pin::new(inner).poll_frame(cx),
            // Once the invocation has ended without finishing the body,
            // nothing more of it goes out: not what is buffered, nor what a
            // host body passed on by a 0.3 guest would still stream.
            ResponseBody::Guest { end, .. } if end.is_incomplete() => {
                Poll::Ready(Some(Err(CutOff.into())))
            }
            ResponseBody::Guest { inner, end, hold } => {
                // Woken when the invocation ends, whatever the guest's
                // stream does.
                end.waker.register(cx.waker());
                match Pin::new(inner).poll_frame(cx) {
                    // The guest's stream also ends "cleanly" when its
                    // instance is dropped mid-body; only the invocation
                    // knows which it was.
                    Poll::Ready(None) if end.is_incomplete() => {
                        Poll::Ready(Some(Err(CutOff.into())))
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(data), Some(hold)) = (frame.data_ref(), hold.as_ref()) {
                            hold.record()
                                .bytes_out
                                .fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Guest { .. } => false,
            ResponseBody::Boxed(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Guest { inner, .. } => inner.size_hint(),
            ResponseBody::Boxed(inner) => inner.size_hint(),
        }
    }
}
