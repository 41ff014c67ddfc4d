//! The HTTP trigger and its listeners: accepting connections, serving each
//! request with a handler, and draining in-flight requests on shutdown.
//! The public listener serves [`handler::handle`]; the admin API reuses
//! the same loop. [`call`] runs service-to-service calls through the same
//! trigger.
//!
//! A listener ([`Listener`]) speaks HTTP/1.1 and HTTP/2 (h2c with prior
//! knowledge on plain sockets, ALPN on TLS); [`conn`] serves one
//! connection, [`tls`] terminates TLS, [`limits`] bounds what clients may
//! do.

pub mod body;
pub mod call;
pub mod conn;
pub mod gateway;
pub mod handler;
pub mod limits;
pub mod tls;

use crate::runtime::Runtime;
use crate::triggers::http::body::{IncomingBody, ResponseBody};
use http::{Request, Response};
use hyper_util::server::graceful::GracefulShutdown;
use limits::ListenerLimits;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tls::Tls;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Extra time granted on shutdown beyond the longest service deadline.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// A bound socket and how it serves: TLS or not, and its limits.
pub struct Listener {
    /// The bound socket.
    pub socket: TcpListener,
    /// Its TLS, if it terminates TLS.
    pub tls: Option<Tls>,
    /// What it allows its clients.
    pub limits: ListenerLimits,
}

impl Listener {
    /// A plain (no TLS) listener on `socket` with the default limits.
    pub fn plain(socket: TcpListener) -> Listener {
        Listener {
            socket,
            tls: None,
            limits: ListenerLimits::default(),
        }
    }

    /// `http` or `https`, for the address it is announced at.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// Accepts connections on `listener` and serves their requests with
/// `handler` until `stop` is cancelled. Returns the connections still open,
/// to be drained.
pub async fn accept<H, F>(
    listener: Listener,
    handler: H,
    stop: CancellationToken,
) -> GracefulShutdown
where
    H: Fn(Request<IncomingBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let Listener {
        socket,
        tls,
        limits,
    } = listener;
    let server = Arc::new(conn::server(&limits));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let limits = Arc::new(limits);
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch(stop.clone()));
    }
    loop {
        // At the connection limit, stop accepting: new clients wait in the
        // kernel's queue rather than costing descriptors.
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = socket.accept() => match accepted {
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
        tokio::spawn(conn::serve(
            stream,
            peer,
            tls.clone(),
            server.clone(),
            limits.clone(),
            handler.clone(),
            graceful.watcher(),
            permit,
        ));
    }
    graceful
}

/// The public listener's handler: requests to `runtime`'s services.
pub fn public_handler(
    runtime: Arc<Runtime>,
    gateway: Arc<gateway::Gateway>,
    local: std::net::SocketAddr,
) -> impl Fn(
    Request<IncomingBody>,
) -> std::pin::Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |req| {
        let (runtime, gateway) = (runtime.clone(), gateway.clone());
        Box::pin(async move { handler::handle(&runtime, &gateway, req, local).await })
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
