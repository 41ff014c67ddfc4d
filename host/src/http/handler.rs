//! The HTTP trigger: one request → route → admission → a fresh instance →
//! the guest's `wasi:http/incoming-handler` → the response.
//!
//! Status codes the host chooses (the guest chooses all others):
//!
//! | case | status |
//! |---|---|
//! | no route matches | 404 |
//! | request body over `request_body` | 413 |
//! | concurrency limit and queue full, or queue timeout | 503 + `Retry-After` |
//! | guest trapped, ran out of fuel, or hit its memory limit | 500 |
//! | guest returned without a response, or answered with an error code | 502 |
//! | deadline passed before the response | 504 |
//!
//! Every routed request gets an invocation id, returned in the
//! `berth-invocation-id` header and attached to every log line about it,
//! and a place in a trace: a child of the request's `traceparent`, if it
//! has a valid one, else the root of a new trace (see [`crate::trace`]).
//!
//! Two paths belong to the host on every listener and are never routed to
//! a service: `/healthz` (the process is up) and `/readyz` (it serves its
//! services).

use crate::capabilities::MAX_CALL_DEPTH;
use crate::http::body::{BodyEnd, LimitedBody, ResponseBody};
use crate::instance::{self, CallChain};
use crate::invoke::{self, Draft, InvocationId, OnCpu, Outcome};
use crate::runtime::{Runtime, Service, Warmth};
use crate::service::ServiceName;
use crate::trace::{TRACEPARENT, TraceContext};
use crate::usage::Trigger;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Instrument;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HostOutgoingBody;
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

/// The response header carrying the invocation id.
pub const INVOCATION_HEADER: &str = "berth-invocation-id";

/// Seconds a rejected caller is told to wait.
const RETRY_AFTER_SECS: &str = "1";

/// Serves one request.
pub async fn handle(
    runtime: &Arc<Runtime>,
    req: Request<hyper::body::Incoming>,
    local: SocketAddr,
) -> Response<ResponseBody> {
    if let Some(response) = health(req.uri().path()) {
        return response;
    }
    let Some((route, service)) = runtime.route_match(req.uri().path()) else {
        return plain(StatusCode::NOT_FOUND, "no service is routed at this path\n");
    };
    let id = InvocationId::new();
    let trace =
        TraceContext::child_of(req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()));
    let span = invoke::span(&service, id, Trigger::Http, &trace);
    span.record("route", tracing::field::display(&route));
    span.record("method", tracing::field::display(req.method()));
    span.record("path", req.uri().path());
    let mut response = invoke_http(
        runtime,
        service,
        id,
        trace,
        req,
        Some(local),
        (CallChain::default(), None),
        span.clone(),
    )
    .instrument(span)
    .await;
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(INVOCATION_HEADER, value);
    }
    response
}

/// Calls service `name` for another service's invocation, in-process (a
/// guest's request to `http://NAME.svc/…`): the callee runs as an
/// invocation of its own, with its own limits, admission and usage record
/// (trigger `call`), in the caller's trace, its span naming the calling
/// invocation, and ending by the caller's deadline at the latest. `chain`
/// holds the callers; a
/// call nested deeper than [`MAX_CALL_DEPTH`] fails with `loop-detected`.
pub async fn call_service(
    runtime: Arc<Runtime>,
    name: String,
    req: Request<WasiBody>,
    caller: (InvocationId, TraceContext, tokio::time::Instant),
    chain: CallChain,
) -> Result<Response<WasiBody>, wasmtime_wasi_http::Error> {
    let (caller, caller_trace, caller_deadline) = caller;
    use http_body_util::BodyExt;
    let service = ServiceName::parse(&name)
        .ok()
        .and_then(|name| runtime.service(&name));
    let Some(service) = service else {
        tracing::warn!(callee = %name, chain = %chain.describe(&name), "service call to a service that does not exist");
        return Err(wasmtime_wasi_http::Error::DestinationNotFound);
    };
    if chain.0.len() > MAX_CALL_DEPTH {
        tracing::warn!(
            chain = %chain.describe(&name),
            "service call refused: calls nest deeper than {MAX_CALL_DEPTH} (a loop?)"
        );
        return Err(wasmtime_wasi_http::Error::LoopDetected);
    }
    let id = InvocationId::new();
    let trace = TraceContext::child_of(Some(&caller_trace.traceparent()));
    let span = invoke::span(&service, id, Trigger::Call, &trace);
    span.record("caller", tracing::field::display(caller));
    span.record("method", tracing::field::display(req.method()));
    span.record("path", req.uri().path());
    let response = invoke_http(
        &runtime,
        service,
        id,
        trace,
        req,
        None,
        (chain, Some(caller_deadline)),
        span.clone(),
    )
    .instrument(span)
    .await;
    Ok(response.map(|body| {
        body.map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))
            .boxed_unsync()
    }))
}

#[allow(clippy::too_many_arguments)]
async fn invoke_http<B>(
    runtime: &Arc<Runtime>,
    service: Arc<Service>,
    id: InvocationId,
    trace: TraceContext,
    mut req: Request<B>,
    local: Option<SocketAddr>,
    (chain, caller_deadline): (CallChain, Option<tokio::time::Instant>),
    span: tracing::Span,
) -> Response<ResponseBody>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let trigger = if chain.0.is_empty() {
        Trigger::Http
    } else {
        Trigger::Call
    };
    // Submitted once the guest has run and the response is sent.
    let draft = Draft::new(runtime, &service, trigger, id, span, 2);
    // If this future is dropped (the client went away, or a calling
    // invocation gave up), the record is still completed.
    let mut abandoned = Abandoned {
        draft: Some(draft.clone()),
        running: false,
    };
    let limits = service.limits();
    let body_limit = limits.request_body.bytes();
    if declared_length(&req).is_some_and(|len| len > body_limit) {
        tracing::info!(limit = %limits.request_body, "request body over the limit");
        draft.reject(413);
        return too_large(&service);
    }

    let permit = match service.admission.admit(runtime.host_slots()).await {
        Ok(permit) => permit,
        Err(rejection) => {
            tracing::warn!(%rejection, "request rejected");
            draft.reject(503);
            return unavailable("the service is busy; retry later\n");
        }
    };

    let pre = match service.handlers(runtime).await {
        Ok((handlers, warmth)) => {
            if matches!(warmth, Warmth::Cold(_)) {
                draft.cold();
            }
            match handlers.http.clone() {
                Some(pre) => pre,
                // Routes are only accepted for components that export the handler.
                None => {
                    draft.reject(500);
                    return plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the service cannot serve HTTP\n",
                    );
                }
            }
        }
        Err(_) => {
            draft.reject(503);
            return unavailable("the service cannot be loaded\n");
        }
    };

    // A request without a Host header (HTTP/1.0) still has an authority.
    if !req.headers().contains_key(HOST)
        && let Some(local) = local
        && let Ok(host) = HeaderValue::from_str(&local.to_string())
    {
        req.headers_mut().insert(HOST, host);
    }
    let exceeded = Arc::new(AtomicBool::new(false));
    let bytes_in = draft.bytes_in.clone();
    let req = req.map(|body| LimitedBody::new(body, body_limit, exceeded.clone(), bytes_in));

    // A call ends by its caller's deadline at the latest.
    let mut deadline = tokio::time::Instant::now() + limits.timeout;
    if let Some(cap) = caller_deadline {
        deadline = deadline.min(cap);
    }
    let mut store = match instance::new_store(runtime, &service, id, trace, deadline, chain) {
        Ok(store) => store,
        Err(e) => {
            tracing::error!(error = %e, "the instance could not be made");
            draft.reject(500);
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the service could not be started\n",
            );
        }
    };
    let (response_tx, response_rx) = tokio::sync::oneshot::channel();
    let (outcome_tx, outcome_rx) = tokio::sync::oneshot::channel();
    let resources = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)
        .and_then(|req| {
            Ok((
                req,
                store.data_mut().http().new_response_outparam(response_tx)?,
            ))
        });
    let (wasi_req, out) = match resources {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %e, "the request could not be handed to the guest");
            draft.reject(400);
            return plain(StatusCode::BAD_REQUEST, "malformed request\n");
        }
    };
    let end = Arc::new(BodyEnd::default());

    let task_service = service.clone();
    let task_end = end.clone();
    let task_draft = draft.clone();
    abandoned.running = true;
    runtime.tasks().spawn(
        async move {
            let _permit = permit;
            let service = task_service;
            let limits = service.limits();
            let call = OnCpu::new(
                async {
                    let proxy = pre.instantiate_async(&mut store).await?;
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, wasi_req, out)
                        .await
                },
                task_draft.cpu_ns.clone(),
            );
            let result = invoke::run_until_deadline(deadline, call).await;
            let outcome = invoke::outcome(&result, &store, limits);
            // Say whether the response body was finished before dropping
            // the instance, which ends the body's stream either way.
            task_end.set(!has_unfinished_body(&mut store));
            invoke::log_outcome(&outcome, &store, limits);
            task_draft.ran(&outcome, &store, limits);
            let _ = outcome_tx.send(outcome);
            drop(store);
            task_draft.done();
        }
        .in_current_span(),
    );

    let response = match response_rx.await {
        Ok(Ok(response)) => {
            if exceeded.load(Ordering::Acquire) {
                too_large(&service)
            } else {
                draft.status(response.status().as_u16());
                // The response part is done when the body is.
                abandoned.draft = None;
                return response.map(|inner| ResponseBody::Guest {
                    inner,
                    end,
                    draft: Some(draft),
                });
            }
        }
        Ok(Err(code)) => {
            if exceeded.load(Ordering::Acquire) {
                too_large(&service)
            } else {
                tracing::warn!(error_code = ?code, "the guest answered with an error instead of a response");
                draft.outcome("error");
                plain(
                    StatusCode::BAD_GATEWAY,
                    "the service failed to produce a response\n",
                )
            }
        }
        Err(_) => {
            let outcome = outcome_rx.await.unwrap_or_else(|_| Outcome::Trap {
                trap: "the invocation ended abnormally".into(),
                backtrace: None,
            });
            if exceeded.load(Ordering::Acquire) {
                too_large(&service)
            } else {
                match outcome {
                    Outcome::Ok => {
                        tracing::warn!("the guest returned without setting a response");
                        draft.outcome("error");
                        plain(
                            StatusCode::BAD_GATEWAY,
                            "the service returned no response\n",
                        )
                    }
                    Outcome::Deadline { .. } => plain(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the service did not answer in time\n",
                    ),
                    Outcome::Trap { .. }
                    | Outcome::OutOfFuel { .. }
                    | Outcome::MemoryLimit { .. } => {
                        plain(StatusCode::INTERNAL_SERVER_ERROR, "the service failed\n")
                    }
                }
            }
        }
    };
    draft.status(response.status().as_u16());
    abandoned.draft = None;
    draft.done();
    response
}

/// Completes an HTTP invocation's record when its handling is dropped
/// half-way: before the guest ran, as `rejected`; while it runs, its
/// response part (the guest's run completes the rest). The status is 499
/// (client closed request) unless one was set.
struct Abandoned {
    draft: Option<Arc<Draft>>,
    running: bool,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(draft) = self.draft.take() {
            if self.running {
                draft.status_if_unset(499);
                draft.done();
            } else {
                draft.reject(499);
            }
        }
    }
}

fn unavailable(text: &str) -> Response<ResponseBody> {
    let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, text);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
    response
}

/// Whether the guest still holds a response body it never finished (the
/// `outgoing-body` resource is deleted when it is finished or dropped).
fn has_unfinished_body(store: &mut Store<instance::InstanceState>) -> bool {
    store
        .data_mut()
        .table()
        .iter_mut()
        .any(|entry| entry.is::<HostOutgoingBody>())
}

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large(service: &Service) -> Response<ResponseBody> {
    plain(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!(
            "the request body is over this service's limit of {}\n",
            service.limits().request_body
        ),
    )
}

/// The host's own health endpoints, the same on every listener: a listener
/// only accepts once its services are loaded, so answering at all means
/// ready.
pub fn health(path: &str) -> Option<Response<ResponseBody>> {
    match path {
        "/healthz" => Some(plain(StatusCode::OK, "ok\n")),
        "/readyz" => Some(plain(StatusCode::OK, "ready\n")),
        _ => None,
    }
}

/// A short plain-text response made by the host.
pub fn plain(status: StatusCode, text: &str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(text.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
