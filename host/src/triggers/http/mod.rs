//! The HTTP trigger and its listeners: accepting connections, serving each
//! request with a handler, and draining in-flight requests on shutdown.
//! The public listener serves [`handler::handle`]; the admin API reuses
//! the same loop. [`call`] runs service-to-service calls through the same
//! trigger.

pub mod body;
pub mod call;
pub mod handler;

use crate::runtime::Runtime;
use crate::triggers::http::body::ResponseBody;
use http::{Request, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra time granted on shutdown beyond the longest service deadline.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Accepts connections on `listener` and serves their requests with
/// `handler` until `stop` is cancelled. Returns the connections still open,
/// to be drained.
pub async fn accept<H, F>(
    listener: TcpListener,
    handler: H,
    stop: CancellationToken,
) -> GracefulShutdown
where
    H: Fn(Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off a
                    // little instead of spinning on the error.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let response = handler(req);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
        });
    }
    graceful
}

/// The public listener's handler: requests to `runtime`'s services.
pub fn public_handler(
    runtime: Arc<Runtime>,
    local: std::net::SocketAddr,
) -> impl Fn(
    Request<hyper::body::Incoming>,
) -> std::pin::Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |req| {
        let runtime = runtime.clone();
        Box::pin(async move { handler::handle(&runtime, req, local).await })
    }
}

/// Waits for the connections of every listener to finish and for every
/// invocation to end, bounded by the longest service deadline.
pub async fn drain(listeners: Vec<GracefulShutdown>, runtime: &Runtime) {
    let limit = runtime.registry().max_timeout() + DRAIN_GRACE;
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    let drained = tokio::time::timeout(limit, async {
        for graceful in listeners {
            graceful.shutdown().await;
        }
        runtime.drain().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("in-flight requests did not finish within {limit:?}; exiting anyway");
    }
}
