//! The public HTTP listener: accepts connections, serves each request
//! through [`handler::handle`], and drains in-flight requests on shutdown.

pub mod body;
pub mod handler;

use crate::runtime::Runtime;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra time granted on shutdown beyond the longest service deadline.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Serves HTTP on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish (bounded by their deadlines)
/// and returns.
pub async fn serve(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
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
        let runtime = runtime.clone();
        let service = hyper::service::service_fn(move |req| {
            let runtime = runtime.clone();
            async move { Ok::<_, Infallible>(handler::handle(&runtime, req, local).await) }
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
    drop(listener);

    let limit = runtime.max_timeout() + DRAIN_GRACE;
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    let drained = tokio::time::timeout(limit, async {
        graceful.shutdown().await;
        runtime.tasks().close();
        runtime.tasks().wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("in-flight requests did not finish within {limit:?}; exiting anyway");
    }
    Ok(())
}
