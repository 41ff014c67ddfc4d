//! The HTTP trigger: one request → route → the pipeline → the guest's
//! HTTP handler → the response. A WASI 0.2 guest
//! (`wasi:http/incoming-handler`) sets its response through an
//! out-parameter; a WASI 0.3 guest (`wasi:http/handler`) returns it, and
//! its body and any tasks it spawned go on after that, in the same
//! invocation, until they finish or its deadline passes.
//!
//! Status codes the host chooses (the guest chooses all others):
//!
//! | case | status |
//! |---|---|
//! | no route matches | 404 |
//! | request body over `request_body` | 413 |
//! | concurrency limit and queue full, or queue timeout | 503 + `Retry-After` |
//! | the component cannot be loaded | 503 + `Retry-After` |
//! | guest trapped, ran out of fuel, or hit its memory limit | 500 |
//! | guest returned without a response, or answered with an error code | 502 |
//! | deadline passed before the response | 504 |
//!
//! Every routed request gets an invocation id, returned in the
//! `berth-invocation-id` header and attached to every log line about it,
//! and a place in a trace: a child of the request's `traceparent`, if it
//! has a valid one, else the root of a new trace (see
//! [`crate::values::trace`]).
//!
//! Two paths belong to the host on every listener and are never routed to
//! a service: `/healthz` (the process is up) and `/readyz` (it serves its
//! services).

use crate::runtime::Runtime;
use crate::runtime::pipeline::{
    self, GuestCall, Ran, Refusal, Running, SharedCall, Start, Started,
};
use crate::runtime::record::{self, RecordDraft};
use crate::runtime::registry::Service;
use crate::triggers::http::body::{
    BodyEnd, BodyWatch, IncomingBody, LimitedBody, ResponseBody, WatchedBody,
};
use crate::triggers::http::conn::Peer;
use crate::triggers::http::gateway::{self, Gateway, Policy, Refused};
use crate::values::id::InvocationId;
use crate::values::limits::Limits;
use crate::values::route::Route;
use crate::values::trace::{Attr, TRACEPARENT, TraceContext};
use crate::values::units::ByteSize;
use crate::values::usage::{OutcomeKind, Trigger};
use crate::wasm::component::{HTTP_HANDLERS, Handlers, HttpHandler};
use crate::wasm::instance::{self, CallChain, InstanceState, shared};
use crate::wasm::outcome::Outcome;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::oneshot;
use tracing::Instrument;
use wasmtime::Store;
use wasmtime::component::Resource;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{IncomingRequest, ResponseOutparam, Scheme};
use wasmtime_wasi_http::p2::body::{HostOutgoingBody, HyperOutgoingBody};
use wasmtime_wasi_http::p3::bindings::ServicePre;

/// The admin console's session cookie (kept from guests: see
/// [`strip_cookie`]).
pub const CONSOLE_COOKIE: &str = "berth_console";

/// Removes the cookie `name` from `headers`' `Cookie` headers (the others
/// are kept as they came).
pub fn strip_cookie(headers: &mut http::HeaderMap, name: &str) {
    let cookies: Vec<HeaderValue> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .cloned()
        .collect();
    if !cookies.iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(';')
                .any(|pair| pair.trim().split('=').next() == Some(name))
        })
    }) {
        return;
    }
    headers.remove(http::header::COOKIE);
    for value in cookies {
        let kept = match value.to_str() {
            Ok(text) => text
                .split(';')
                .map(str::trim)
                .filter(|pair| pair.split('=').next() != Some(name))
                .collect::<Vec<_>>()
                .join("; "),
            // Not text: not a cookie of ours either.
            Err(_) => {
                headers.append(http::header::COOKIE, value);
                continue;
            }
        };
        if let Ok(kept) = HeaderValue::from_str(&kept)
            && !kept.is_empty()
        {
            headers.append(http::header::COOKIE, kept);
        }
    }
}

/// The response header carrying the invocation id.
pub const INVOCATION_HEADER: &str = "berth-invocation-id";

/// Seconds a rejected caller is told to wait.
const RETRY_AFTER_SECS: &str = "1";

/// The status recorded for a request whose client went away before it was
/// answered (nginx's "client closed request").
const CLIENT_CLOSED: u16 = 499;

/// Serves one request: health, the route, the edge (CORS, credentials,
/// rate limit), then the pipeline.
pub async fn handle(
    runtime: &Arc<Runtime>,
    gateway: &Arc<Gateway>,
    mut req: Request<IncomingBody>,
    local: SocketAddr,
) -> Response<ResponseBody> {
    if let Some(response) = health(runtime, req.uri().path()) {
        return response;
    }
    // Two Host lines: a proxy in front and the guest could each take
    // another for the request's host (RFC 9112, 3.2: a 400).
    if req.headers().get_all(HOST).iter().nth(1).is_some() {
        return plain(StatusCode::BAD_REQUEST, "more than one Host header\n");
    }
    gateway::strip_principal(req.headers_mut());
    let Some((route, service)) = runtime.registry().route_match(req.uri().path()) else {
        return plain(StatusCode::NOT_FOUND, "no service is routed at this path\n");
    };
    let policy = gateway.policy(&service);
    // tower-http takes every OPTIONS for a preflight: one without the
    // preflight's headers is the guest's (and passes the edge's checks).
    let preflight_like = req.method() == http::Method::OPTIONS
        && !(req.headers().contains_key(http::header::ORIGIN)
            && req
                .headers()
                .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD));
    let cors = policy.cors().filter(|_| !preflight_like).cloned();
    let Some(cors) = cors else {
        return routed(runtime, gateway, &policy, route, service, req, local).await;
    };
    // CORS wraps the rest: tower-http answers preflights itself and adds
    // its headers to every answer, refusals at the edge included.
    let (runtime, gateway) = (runtime.clone(), gateway.clone());
    let inner = tower::service_fn(move |req: Request<IncomingBody>| {
        let (runtime, gateway, policy) = (runtime.clone(), gateway.clone(), policy.clone());
        let (route, service) = (route.clone(), service.clone());
        async move {
            Ok::<_, Infallible>(
                routed(&runtime, &gateway, &policy, route, service, req, local).await,
            )
        }
    });
    match tower::ServiceExt::oneshot(tower::Layer::layer(&cors, inner), req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Serves a routed request: the edge's checks, then the pipeline.
async fn routed(
    runtime: &Arc<Runtime>,
    gateway: &Gateway,
    policy: &Policy,
    route: Route,
    service: Arc<Service>,
    mut req: Request<IncomingBody>,
    local: SocketAddr,
) -> Response<ResponseBody> {
    let id = InvocationId::new();
    let trace =
        TraceContext::child_of(req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()));
    let span = record::span(&service, id, Trigger::Http, &trace);
    span.record("route", tracing::field::display(&route));
    span.record("method", tracing::field::display(req.method()));
    span.record("path", req.uri().path());
    let client = req
        .extensions()
        .get::<Peer>()
        .map_or(local.ip(), |peer| peer.addr.ip());
    let path = req.uri().path().to_owned();
    let edge = gateway.admit(policy, service.name(), &path, req.headers_mut(), client);
    let (denied, standing) = match edge {
        Ok(admitted) => (None, admitted.standing),
        Err(refused) => {
            service.metrics.edge_refusal(refused.reason);
            (Some(refused), None)
        }
    };
    let start = Start {
        trigger: Trigger::Http,
        id,
        trace,
        span: span.clone(),
        chain: CallChain::default(),
        caller_deadline: None,
        default_status: Some(CLIENT_CLOSED),
        bytes_in: 0,
        // Made only for a host that exports spans: this is every
        // request's path.
        attributes: if runtime.ports().spans.is_on() {
            vec![
                ("http.route", Attr::str(route.to_string())),
                ("http.request.method", Attr::method(req.method().as_str())),
                ("url.path", Attr::str(path.clone())),
            ]
        } else {
            Vec::new()
        },
    };
    let mut response = invoke_http(runtime, service, start, req, Some(local), denied).await;
    if let Some((standing, config)) = standing {
        standing.write(response.headers_mut(), &config);
    }
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(INVOCATION_HEADER, value);
    }
    response
}

/// Runs one HTTP invocation (a client's request, or another service's
/// call) through the pipeline and answers it.
pub(super) async fn invoke_http<B>(
    runtime: &Arc<Runtime>,
    service: Arc<Service>,
    start: Start,
    req: Request<B>,
    local: Option<SocketAddr>,
    denied: Option<Box<Refused>>,
) -> Response<ResponseBody>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let (mut call, answer) = HttpCall::new(req, local, service.limits().request_body);
    call.denied = denied;
    // The pipeline runs in the invocation's span; so does the answer.
    let span = start.span.clone();
    match pipeline::invoke(runtime, service.clone(), start, call).await {
        Started::Refused(HttpEnd::Refused(response)) => response,
        Started::Refused(HttpEnd::Ran(_)) => {
            plain(StatusCode::INTERNAL_SERVER_ERROR, "the service failed\n")
        }
        Started::Running(running) => {
            answer
                .respond(running, service.limits())
                .instrument(span)
                .await
        }
    }
}

/// How an HTTP invocation ended, for its handler.
pub(super) enum HttpEnd {
    /// The guest ran; this is how it ended.
    Ran(Outcome),
    /// It was refused before the guest ran; this is the answer.
    Refused(Response<ResponseBody>),
}

/// The guest's response, or the error code it answered with instead.
type GuestResponse = Result<Response<HyperOutgoingBody>, String>;

/// The guest's answer, as the handler waits for it.
struct Answer {
    response: oneshot::Receiver<GuestResponse>,
    /// Set when the request body grew past the service's limit.
    exceeded: Arc<AtomicBool>,
    /// Set when the run ends: whether the guest finished its body.
    end: Arc<BodyEnd>,
}

impl Answer {
    /// Answers with the guest's response as soon as it sets one; else,
    /// once the run ends, with a status the host chooses.
    async fn respond<B>(
        self,
        mut running: Running<HttpCall<B>>,
        limits: &Limits,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let record = running.record().clone();
        let exceeded = || self.exceeded.load(Ordering::Acquire);
        let mut waiting = self.response;
        // The response, or the run's end without one (an instance of its
        // own drops the response's sender as it ends; a shared instance
        // may still hold it when the invocation passes its deadline).
        let (guest, ended) = tokio::select! {
            biased;
            guest = &mut waiting => (guest.map_err(|_| ()), None),
            ended = running.finished_holding() => (waiting.try_recv().map_err(|_| ()), Some(ended)),
        };
        let response = match guest {
            Ok(Ok(response)) if !exceeded() => {
                record.status(response.status().as_u16());
                // The record stays open until the body is sent.
                let hold = running.into_hold();
                return response.map(|inner| ResponseBody::Guest {
                    inner,
                    end: self.end,
                    hold: Some(hold),
                });
            }
            Ok(_) if exceeded() => too_large(limits.request_body),
            Ok(Err(code)) => {
                tracing::warn!(error_code = %code, "the guest answered with an error instead of a response");
                record.refine(OutcomeKind::Error);
                plain(
                    StatusCode::BAD_GATEWAY,
                    "the service failed to produce a response\n",
                )
            }
            // The flag only ever goes up: seen down above, up here.
            Ok(Ok(_)) => too_large(limits.request_body),
            Err(()) => {
                let ended = match ended {
                    Some(ended) => ended,
                    None => running.finished_holding().await,
                };
                if exceeded() {
                    too_large(limits.request_body)
                } else {
                    no_response(ended, &record)
                }
            }
        };
        record.status(response.status().as_u16());
        drop(running);
        response
    }
}

/// The answer when the guest's run ended without a response.
fn no_response(ended: Option<HttpEnd>, record: &RecordDraft) -> Response<ResponseBody> {
    match ended {
        Some(HttpEnd::Ran(Outcome::Ok)) => {
            tracing::warn!("the guest returned without setting a response");
            record.refine(OutcomeKind::Error);
            plain(
                StatusCode::BAD_GATEWAY,
                "the service returned no response\n",
            )
        }
        Some(HttpEnd::Ran(Outcome::Deadline(_))) => plain(
            StatusCode::GATEWAY_TIMEOUT,
            "the service did not answer in time\n",
        ),
        Some(HttpEnd::Ran(_)) | Some(HttpEnd::Refused(_)) | None => {
            plain(StatusCode::INTERNAL_SERVER_ERROR, "the service failed\n")
        }
    }
}

/// An HTTP request as the pipeline runs it.
pub(super) struct HttpCall<B> {
    request: Option<Request<B>>,
    /// The edge's refusal, decided before the pipeline: its check step
    /// refuses with it.
    denied: Option<Box<Refused>>,
    local: Option<SocketAddr>,
    body_limit: ByteSize,
    response: Option<oneshot::Sender<GuestResponse>>,
    exceeded: Arc<AtomicBool>,
    end: Arc<BodyEnd>,
    pre: Option<HttpHandler>,
    guest: Option<Prepared>,
    /// WASI 0.3: how the response body went.
    watch: Option<Arc<BodyWatch>>,
    /// Whether the guest finished its response body (see `after`).
    complete: bool,
}

/// The request handed to the fresh instance, ready for the call.
enum Prepared {
    /// WASI 0.2: the request and the response out-parameter, in the
    /// instance's table.
    P2 {
        pre: ProxyPre<InstanceState>,
        request: Resource<IncomingRequest>,
        out: Resource<ResponseOutparam>,
    },
    /// WASI 0.3: the request, the future reporting errors reading its body
    /// to the guest, where its response goes, and how its body went.
    P3 {
        pre: ServicePre<InstanceState>,
        request: wasmtime_wasi_http::p3::Request,
        io: P3Io,
        response: oneshot::Sender<GuestResponse>,
        watch: Arc<BodyWatch>,
    },
}

impl<B> HttpCall<B> {
    fn new(request: Request<B>, local: Option<SocketAddr>, body_limit: ByteSize) -> (Self, Answer) {
        let (tx, rx) = oneshot::channel();
        let exceeded = Arc::new(AtomicBool::new(false));
        let end = Arc::new(BodyEnd::default());
        let call = HttpCall {
            request: Some(request),
            denied: None,
            local,
            body_limit,
            response: Some(tx),
            exceeded: exceeded.clone(),
            end: end.clone(),
            pre: None,
            guest: None,
            watch: None,
            complete: false,
        };
        let answer = Answer {
            response: rx,
            exceeded,
            end,
        };
        (call, answer)
    }
}

impl<B> HttpCall<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    /// Takes the request, the handler and the response's way back out of
    /// the call, the request as the guest will see it: its Host header,
    /// its scheme, and its body counted and limited.
    fn incoming(
        &mut self,
        record: &RecordDraft,
    ) -> Result<(HttpHandler, Incoming<B>, oneshot::Sender<GuestResponse>), Refusal> {
        let (Some(pre), Some(mut req), Some(response)) =
            (self.pre.take(), self.request.take(), self.response.take())
        else {
            return Err(Refusal::Input("the request was already handed over".into()));
        };
        // A guest sees the same request over HTTP/1.1 and HTTP/2: the
        // authority in a Host header (HTTP/2 sends `:authority`, HTTP/1.0
        // none: then the listener's address).
        if !req.headers().contains_key(HOST) {
            let authority = match req.uri().authority() {
                Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
                None => self
                    .local
                    .and_then(|local| HeaderValue::from_str(&local.to_string()).ok()),
            };
            if let Some(host) = authority {
                req.headers_mut().insert(HOST, host);
            }
        }
        // Browsers send cookies by host, whatever the port: the admin
        // console's session never reaches a guest on the same host.
        strip_cookie(req.headers_mut(), CONSOLE_COOKIE);
        let scheme = match req.extensions().get::<Peer>() {
            Some(peer) if peer.tls => Scheme::Https,
            _ => Scheme::Http,
        };
        let limit = self.body_limit.bytes();
        let (exceeded, read) = (self.exceeded.clone(), record.bytes_in.clone());
        let request = req.map(|body| LimitedBody::new(body, limit, exceeded, read));
        Ok((pre, Incoming { request, scheme }, response))
    }
}

/// Marks a shared instance's response body cut off if its task goes
/// (its invocation's deadline passed, or the instance stopped) before the
/// body reached its end: the stream closing as the instance goes must not
/// pass for the body's end.
struct CutIfUnfinished {
    watch: Arc<BodyWatch>,
    end: Arc<BodyEnd>,
}

impl Drop for CutIfUnfinished {
    fn drop(&mut self) {
        if !self.watch.ended() {
            self.end.set(false);
        }
    }
}

/// A request as the guest will see it.
struct Incoming<B> {
    request: Request<LimitedBody<B>>,
    scheme: Scheme,
}

impl<B> Incoming<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    /// The request as a WASI 0.3 request, and the future reporting errors
    /// reading its body to the guest. A 0.3 request carries its scheme
    /// and authority: the connection's, and the URI's or else the Host
    /// header's (none if it is not a valid authority: 0.2 would pass any
    /// Host header on, and no request is refused for it).
    fn into_p3(self, hooks: &mut dyn wasmtime_wasi_http::WasiHttpHooks) -> (P3Request, P3Io) {
        let (parts, body) = self.request.into_parts();
        let authority = parts.uri.authority().cloned().or_else(|| {
            let host = parts.headers.get(HOST)?.to_str().ok()?;
            host.parse().ok()
        });
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let scheme = match self.scheme {
            Scheme::Https => http::uri::Scheme::HTTPS,
            _ => http::uri::Scheme::HTTP,
        };
        let headers = wasmtime_wasi_http::FieldMap::new_immutable(hooks, parts.headers);
        let (request, io) = wasmtime_wasi_http::p3::Request::new(
            parts.method,
            Some(scheme),
            authority,
            Some(path),
            headers,
            None,
            body,
        );
        (request, Box::pin(io))
    }
}

type P3Request = wasmtime_wasi_http::p3::Request;

/// The future reporting errors reading a 0.3 request's body.
type P3Io = Pin<Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>>;

/// Calls a WASI 0.3 guest's handler and sees its answer through: the
/// response goes to the client as soon as the guest returns it; its body
/// — the guest's stream, or a host body it passed on — is sent within the
/// invocation, its deadline and its slot.
async fn serve_p3(
    accessor: &wasmtime::component::Accessor<InstanceState>,
    service: &wasmtime_wasi_http::p3::bindings::Service,
    request: P3Request,
    io: P3Io,
    response: oneshot::Sender<GuestResponse>,
    watch: Arc<BodyWatch>,
) -> wasmtime::Result<()> {
    match service.handle(accessor, request).await? {
        Ok(answer) => {
            let answer = accessor
                .with(|mut access| answer.into_http(&mut access, io))?
                .map(|body| WatchedBody::new(body, watch.clone()).boxed_unsync());
            // A client gone drops the body with the answer, which settles
            // the watch.
            let _ = response.send(Ok(answer));
            watch.settled().await;
        }
        Err(code) => {
            let _ = response.send(Err(format!("{code:?}")));
        }
    }
    Ok(())
}

impl<B> GuestCall for HttpCall<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Returned = ();
    type Output = HttpEnd;

    fn check(&mut self, limits: &Limits) -> Result<(), Refusal> {
        if let Some(refused) = &self.denied {
            return Err(Refusal::Denied(refused.detail.clone()));
        }
        let declared = self.request.as_ref().and_then(declared_length);
        if declared.is_some_and(|len| len > limits.request_body.bytes()) {
            return Err(Refusal::TooLarge {
                limit: limits.request_body,
            });
        }
        Ok(())
    }

    fn select(&mut self, handlers: &Handlers) -> Result<(), Refusal> {
        // Routes are only accepted for components that export the handler.
        self.pre = Some(handlers.http.clone().ok_or(Refusal::NoHandler {
            export: HTTP_HANDLERS,
        })?);
        Ok(())
    }

    fn prepare(
        &mut self,
        store: &mut Store<InstanceState>,
        record: &Arc<RecordDraft>,
    ) -> Result<(), Refusal> {
        let (pre, incoming, response) = self.incoming(record)?;
        let mut http = store.data_mut().http();
        let prepared = match pre {
            HttpHandler::P2(pre) => {
                let request = http
                    .new_incoming_request(incoming.scheme, incoming.request)
                    .map_err(|e| Refusal::Input(e.to_string()))?;
                let out = http
                    .new_response_outparam_from_callback(move |result| {
                        let _ = response.send(result.map_err(|code| format!("{code:?}")));
                    })
                    .map_err(|e| Refusal::Input(e.to_string()))?;
                Prepared::P2 { pre, request, out }
            }
            HttpHandler::P3(pre) => {
                let (request, io) = incoming.into_p3(http.hooks);
                let watch = Arc::new(BodyWatch::default());
                self.watch = Some(watch.clone());
                Prepared::P3 {
                    pre,
                    request,
                    io,
                    response,
                    watch,
                }
            }
        };
        self.guest = Some(prepared);
        Ok(())
    }

    fn task(&mut self, record: &Arc<RecordDraft>) -> Result<Option<SharedCall>, Refusal> {
        if !matches!(self.pre, Some(HttpHandler::P3(_))) {
            return Ok(None);
        }
        let (HttpHandler::P3(pre), incoming, response) = self.incoming(record)? else {
            return Ok(None);
        };
        let watch = Arc::new(BodyWatch::default());
        self.watch = Some(watch.clone());
        let unfinished = CutIfUnfinished {
            watch: watch.clone(),
            end: self.end.clone(),
        };
        let task = shared::task(move |accessor, instance| {
            Box::pin(async move {
                // Dropped with the task, however it ends: before the
                // instance (and the body's stream) goes.
                let _unfinished = unfinished;
                let (service, request, io) = accessor.with(|mut access| {
                    let service =
                        wasmtime_wasi_http::p3::bindings::Service::new(&mut access, &instance)?;
                    let (request, io) = incoming.into_p3(access.get().http().hooks);
                    Ok::<_, wasmtime::Error>((service, request, io))
                })?;
                serve_p3(accessor, &service, request, io, response, watch).await
            })
        });
        Ok(Some(SharedCall {
            pre: pre.instance_pre().clone(),
            task,
        }))
    }

    fn call<'a>(
        &'a mut self,
        store: &'a mut Store<InstanceState>,
    ) -> impl Future<Output = wasmtime::Result<()>> + Send + 'a {
        let guest = self.guest.take();
        async move {
            match guest.ok_or_else(|| wasmtime::format_err!("the request was not prepared"))? {
                Prepared::P2 { pre, request, out } => {
                    let instance = instance::instance(store, pre.instance_pre()).await?;
                    let proxy =
                        wasmtime_wasi_http::p2::bindings::Proxy::new(&mut *store, &instance)?;
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut *store, request, out)
                        .await
                }
                Prepared::P3 {
                    pre,
                    request,
                    io,
                    response,
                    watch,
                } => {
                    let instance = instance::instance(store, pre.instance_pre()).await?;
                    let service =
                        wasmtime_wasi_http::p3::bindings::Service::new(&mut *store, &instance)?;
                    store
                        .run_concurrent(async move |accessor| {
                            serve_p3(accessor, &service, request, io, response, watch).await?;
                            // Whatever else the guest spawned goes on in this
                            // instance until it is done.
                            std::future::poll_fn(|cx| accessor.poll_no_interesting_tasks(cx)).await;
                            Ok::<(), wasmtime::Error>(())
                        })
                        .await?
                }
            }
        }
    }

    fn after(&mut self, store: Option<&mut Store<InstanceState>>) {
        // Say whether the response body was finished before the instance
        // is dropped, which ends the body's stream either way: a 0.2 guest
        // finishes its `outgoing-body`; a 0.3 guest's body is done once
        // the client's side has seen its end.
        let complete = match (&self.watch, store) {
            (Some(watch), _) => watch.ended(),
            (None, Some(store)) => !has_unfinished_body(store),
            (None, None) => false,
        };
        self.end.set(complete);
        self.complete = complete;
    }

    fn reusable(&mut self, store: &mut Store<InstanceState>) -> bool {
        // A reused instance starts its next invocation with nothing of
        // this one's HTTP exchange still going: no response out-parameter
        // kept (its client would wait on it), no body or outgoing request
        // left unfinished (one would go on between invocations).
        self.complete && !holds_http_resources(store)
    }

    fn on_abort(&self) -> Option<Box<dyn FnOnce() + Send>> {
        // A body being streamed is cut off, never ended as if complete.
        let end = self.end.clone();
        Some(Box::new(move || end.set(false)))
    }

    fn finish(self, ran: Ran<()>, _record: &RecordDraft) -> HttpEnd {
        HttpEnd::Ran(ran.outcome)
    }

    fn refused(mut self, refusal: &Refusal, record: &RecordDraft) -> HttpEnd {
        let response = match refusal {
            Refusal::Denied(_) => match self.denied.take() {
                Some(refused) => edge_refusal(*refused),
                None => plain(StatusCode::FORBIDDEN, "refused\n"),
            },
            Refusal::TooLarge { limit } => {
                tracing::info!(limit = %limit, "request body over the limit");
                too_large(*limit)
            }
            Refusal::Busy(_) => unavailable("the service is busy; retry later\n"),
            Refusal::Unloadable(_) | Refusal::Abandoned => {
                unavailable("the service cannot be loaded\n")
            }
            Refusal::NoHandler { .. } => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the service cannot serve HTTP\n",
            ),
            Refusal::Instance(_) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the service could not be started\n",
            ),
            Refusal::Input(_) => plain(StatusCode::BAD_REQUEST, "malformed request\n"),
        };
        record.status(response.status().as_u16());
        HttpEnd::Refused(response)
    }
}

/// The answer to a request refused at the edge.
fn edge_refusal(refused: Refused) -> Response<ResponseBody> {
    let text = match refused.status {
        StatusCode::UNAUTHORIZED => "authentication required\n",
        StatusCode::TOO_MANY_REQUESTS => "too many requests; retry later\n",
        _ => "not allowed\n",
    };
    let mut response = plain(refused.status, text);
    response.headers_mut().extend(refused.headers);
    response
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
fn has_unfinished_body(store: &mut Store<InstanceState>) -> bool {
    store
        .data_mut()
        .table()
        .iter_mut()
        .any(|entry| entry.is::<HostOutgoingBody>())
}

/// Whether the guest kept a resource of a WASI 0.2 HTTP exchange that
/// would outlive its invocation in a reused instance: a response
/// out-parameter (its client would wait on it), a response or outgoing
/// body it never finished, an outgoing request or one in flight. Handles
/// of requests it was given and did not drop (a garbage-collected
/// language drops them late) do not count: they are the service's own
/// past requests, which reuse already lets it keep.
fn holds_http_resources(store: &mut Store<InstanceState>) -> bool {
    use wasmtime_wasi_http::p2::types::{
        HostFutureIncomingResponse, HostOutgoingRequest, HostOutgoingResponse, HostResponseOutparam,
    };
    store.data_mut().table().iter_mut().any(|entry| {
        entry.is::<HostResponseOutparam>()
            || entry.is::<HostOutgoingResponse>()
            || entry.is::<HostOutgoingBody>()
            || entry.is::<HostOutgoingRequest>()
            || entry.is::<HostFutureIncomingResponse>()
    })
}

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large(limit: ByteSize) -> Response<ResponseBody> {
    plain(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the request body is over this service's limit of {limit}\n"),
    )
}

/// The host's own health endpoints, the same on every listener:
/// `/healthz` (the process answers) and `/readyz` (it serves what it
/// should: a standalone host only accepts once its services are restored;
/// a cluster node once it has converged with the cluster — 503 and why,
/// until then).
pub fn health(runtime: &Runtime, path: &str) -> Option<Response<ResponseBody>> {
    match path {
        "/healthz" => Some(plain(StatusCode::OK, "ok\n")),
        "/readyz" => Some(match runtime.unready() {
            None => plain(StatusCode::OK, "ready\n"),
            Some(why) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}\n"),
            ),
        }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_cookie_never_reaches_a_guest() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; berth_console=secret; b=2"),
        );
        headers.append(
            http::header::COOKIE,
            HeaderValue::from_static("berth_console=again"),
        );
        headers.append(http::header::COOKIE, HeaderValue::from_static("c=3"));
        strip_cookie(&mut headers, CONSOLE_COOKIE);
        let left: Vec<&str> = headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, ["a=1; b=2", "c=3"]);
        // Without it, untouched.
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::COOKIE,
            HeaderValue::from_static("berth_console_x=1;a=2"),
        );
        strip_cookie(&mut headers, CONSOLE_COOKIE);
        assert_eq!(headers[http::header::COOKIE], "berth_console_x=1;a=2");
    }
}
