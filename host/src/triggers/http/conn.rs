//! One accepted connection: the TLS handshake (if the listener has TLS),
//! HTTP/1.1 or HTTP/2 (by ALPN, or by the client's first bytes: h2c with
//! prior knowledge), the listener's limits, and a watchdog that closes it
//! once it sits idle.

use crate::triggers::http::body::{IncomingBody, ResponseBody, TimedBody};
use crate::triggers::http::handler::plain;
use crate::triggers::http::limits::ListenerLimits;
use crate::triggers::http::tls::Tls;
use http::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::time::Instant;

/// Who sent a request, as its listener saw it: in every request's
/// extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The client's address (the TCP peer).
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// The HTTP server settings of one listener, made once from its limits.
pub fn server(limits: &ListenerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    {
        let mut h1 = builder.http1();
        h1.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // The head must fit in the read buffer: this bounds it.
            .max_buf_size(limits.max_header_size.max(8 * 1024));
        // hyper keeps 100 header slots on the stack; a different count
        // costs an allocation per request.
        if limits.max_headers != 100 {
            h1.max_headers(limits.max_headers);
        }
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024));
    builder
}

/// Serves one accepted connection until it ends, is closed for idling, or
/// the listener drains (through `watcher`).
#[expect(clippy::too_many_arguments, reason = "one connection's whole context")]
pub async fn serve<H, F>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<Tls>,
    server: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<ListenerLimits>,
    handler: H,
    watcher: Watcher,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    H: Fn(Request<IncomingBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let _permit = permit;
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    match tls {
        None => {
            let io = TokioIo::new(stream);
            let info = Peer {
                addr: peer,
                tls: false,
            };
            run(io, info, &server, &limits, handler, watcher, &activity).await;
        }
        Some(tls) => {
            let handshake = tls.acceptor().accept(stream);
            let stream = match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let io = TokioIo::new(stream);
            let info = Peer {
                addr: peer,
                tls: true,
            };
            run(io, info, &server, &limits, handler, watcher, &activity).await;
        }
    }
}

async fn run<I, H, F>(
    io: I,
    peer: Peer,
    server: &auto::Builder<TokioExecutor>,
    limits: &Arc<ListenerLimits>,
    handler: H,
    watcher: Watcher,
    activity: &Arc<Activity>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Fn(Request<IncomingBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let service = {
        let limits = limits.clone();
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let busy = activity.begin();
            let response = admit(req, peer, &limits, &handler);
            async move {
                let response = match response {
                    Ok(future) => future.await,
                    Err(refused) => *refused,
                };
                // The request is in flight until its body is sent (or
                // dropped): a quiet stream is not an idle connection.
                Ok::<_, Infallible>(response.map(|body| Held { body, _busy: busy }))
            }
        })
    };
    let connection = watcher.watch(server.serve_connection(io, service));
    tokio::select! {
        ended = connection => {
            if let Err(e) = ended {
                tracing::debug!(peer = %peer.addr, error = %e, "connection closed with an error");
            }
        }
        () = activity.idle(limits) => {
            tracing::debug!(peer = %peer.addr, "idle connection closed");
        }
    }
}

/// Checks a request against the listener's limits and hands it, its body
/// timed, to `handler`; or answers it at once.
fn admit<H, F>(
    req: Request<hyper::body::Incoming>,
    peer: Peer,
    limits: &ListenerLimits,
    handler: &H,
) -> Result<F, Box<Response<ResponseBody>>>
where
    H: Fn(Request<IncomingBody>) -> F,
{
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > limits.max_uri_length {
        return Err(Box::new(plain(
            StatusCode::URI_TOO_LONG,
            "the request target is too long\n",
        )));
    }
    if req.headers().len() > limits.max_headers {
        return Err(Box::new(plain(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many header fields\n",
        )));
    }
    let mut req = req.map(|body| TimedBody::new(body, limits.body_timeout, limits.body_min_rate));
    req.extensions_mut().insert(peer);
    Ok(handler(req))
}

/// What a connection is doing: when a request last began or ended, and
/// how many are being answered.
struct Activity {
    born: Instant,
    /// Milliseconds from `born` to the last request's start or end.
    last: AtomicU64,
    in_flight: AtomicUsize,
    /// Requests it has begun (the first one ends the header-timeout phase).
    begun: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            born: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.touch();
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.begun.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Resolves once the connection has been idle too long: before its
    /// first request, `header_read_timeout` from its start (a client that
    /// never sends a byte, or never finishes a TLS or HTTP/2 preface);
    /// after it, `idle_timeout` with no request in flight since the last
    /// one ended. Only requests count: HTTP/2 pings or window updates
    /// alone do not keep a connection.
    async fn idle(&self, limits: &ListenerLimits) {
        loop {
            let first = self.begun.load(Ordering::Relaxed) == 0;
            let allowed = if first {
                limits.header_read_timeout
            } else {
                limits.idle_timeout
            };
            let last =
                self.born + std::time::Duration::from_millis(self.last.load(Ordering::Relaxed));
            let since = if first { self.born } else { last };
            let deadline = since + allowed;
            if Instant::now() >= deadline && self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            let wake = deadline.max(Instant::now() + std::time::Duration::from_millis(100));
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// A request being answered, until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it is sent or
/// dropped.
struct Held<B> {
    body: B,
    _busy: Busy,
}

impl<B: http_body::Body + Unpin> http_body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
