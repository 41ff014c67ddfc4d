//! The egress firewall: where a guest's outgoing HTTP requests may go.
//!
//! A request goes out only to an origin of the service's
//! `allowed_outbound` list; to another service by name
//! (`http://NAME.svc/…`) it is handed to the host's [`ServiceCalls`],
//! in-process; plain-HTTP requests are resolved once and pinned to the
//! checked address, which may never be one of the host's own listeners.
//! Everything else fails inside the guest with `HTTP-request-denied`.

use super::{CallChain, Tag};
use crate::values::capabilities::{self, Destination, OutboundRule};
use crate::values::id::InvocationId;
use crate::values::limits::{BODY_CHUNK, MAX_OUTBOUND_IN_FLIGHT};
use crate::values::trace::{Attr, SpanKind, SpanRecord, Spans, TRACEPARENT, TraceContext};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

/// How long an outgoing request may take to connect, and to send its
/// first response byte (or the next one), unless the guest asks for less;
/// always bounded by what is left of the invocation's deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
const BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// The addresses the host listens on (public and admin): guests'
/// requests may never reach them. Shared: the host adds each listener as
/// it binds it.
#[derive(Clone, Debug, Default)]
pub struct Listeners(Arc<Mutex<Vec<SocketAddr>>>);

impl Listeners {
    /// Notes one more address the host listens on.
    pub fn add(&self, addr: SocketAddr) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(addr);
    }

    /// The addresses, now.
    pub fn get(&self) -> Vec<SocketAddr> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The response of a service call.
pub type CallFuture = Pin<
    Box<dyn Future<Output = Result<http::Response<WasiBody>, wasmtime_wasi_http::Error>> + Send>,
>;

/// Who makes a service call: the calling invocation, its deadline (the
/// call ends by it at the latest) and the services the call passed
/// through, the caller's own last.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The calling invocation.
    pub invocation: InvocationId,
    /// The calling invocation's deadline.
    pub deadline: tokio::time::Instant,
    /// The services on the way, outermost first, ending with the caller's.
    pub chain: CallChain,
}

/// Calls another service in-process: what a guest's request to
/// `http://NAME.svc/…` becomes. The host supplies it (the HTTP trigger
/// implements it), so an instance knows neither the runtime nor any
/// trigger. The request carries the caller's `traceparent`: the guest's
/// own if it set one, else the calling invocation's.
pub trait ServiceCalls: Send + Sync + 'static {
    /// Calls service `callee` with `request` for `caller`.
    fn call(&self, callee: String, request: http::Request<WasiBody>, caller: Caller) -> CallFuture;
}

/// `wasi:http` hooks: outgoing requests go where the service's
/// `allowed_outbound` allows, and nowhere else.
pub(super) struct Hooks {
    pub(super) tag: Tag,
    /// Present when the service may send requests at all.
    pub(super) outbound: Option<Outbound>,
}

/// What an instance needs to send requests.
pub(super) struct Outbound {
    pub(super) rules: Arc<[OutboundRule]>,
    pub(super) trace: TraceContext,
    pub(super) deadline: tokio::time::Instant,
    pub(super) chain: CallChain,
    pub(super) listeners: Listeners,
    pub(super) calls: Option<Arc<dyn ServiceCalls>>,
    pub(super) spans: Spans,
    /// Permits for requests in flight
    /// ([`MAX_OUTBOUND_IN_FLIGHT`]),
    /// each held until its connection ends.
    pub(super) in_flight: Arc<tokio::sync::Semaphore>,
}

/// What `send_request` returns: the response and the future that drives
/// the connection.
type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl Hooks {
    fn deny(&self, uri: &http::Uri, why: &str) -> SendFuture {
        tracing::warn!(
            service = %self.tag.service,
            invocation = %self.tag.invocation,
            uri = %uri,
            "outgoing HTTP request denied: {why}"
        );
        Box::new(std::future::ready(Err(
            wasmtime_wasi_http::Error::HttpRequestDenied,
        )))
    }
}

/// A response body that holds an outbound permit until it is done.
struct Held {
    body: WasiBody,
    _permit: Arc<tokio::sync::OwnedSemaphorePermit>,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl WasiHttpHooks for Hooks {
    /// A body write carries at most [`BODY_CHUNK`] (wasi-http's default is
    /// 1 MiB): an unsent body holds at most two on the host.
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        let Some(out) = &self.outbound else {
            return self.deny(
                request.uri(),
                "this service has no outbound allow-list (allowed_outbound)",
            );
        };
        let destination = capabilities::destination(&out.rules, request.uri());
        // Each request in flight holds a connection (a socket) or a
        // callee's instance: a guest gets a bounded number at once.
        let Ok(permit) = out.in_flight.clone().try_acquire_owned() else {
            tracing::warn!(
                service = %self.tag.service,
                invocation = %self.tag.invocation,
                uri = %request.uri(),
                "outgoing HTTP request refused: {MAX_OUTBOUND_IN_FLIGHT} are in flight already"
            );
            return Box::new(std::future::ready(Err(
                wasmtime_wasi_http::Error::ConnectionLimitReached,
            )));
        };
        // A traced invocation's request is a span of its own, under the
        // invocation's.
        let span = out
            .spans
            .records(&out.trace)
            .then(|| ClientSpan::start(&out.spans, out.trace.child(), &request, &destination));
        // What is called is a child of the request's span (or of the
        // invocation), unless the guest traces on its own and says so.
        let parent = span.as_ref().map_or(out.trace, |span| span.context);
        if !request.headers().contains_key(TRACEPARENT)
            && let Ok(value) = http::HeaderValue::from_str(&parent.traceparent())
        {
            request.headers_mut().insert(TRACEPARENT, value);
        }
        let sent = self.send(out, destination, request, options);
        Box::new(async move {
            let result = Box::into_pin(sent).await;
            if let Some(span) = span {
                span.end(match &result {
                    Ok((response, _)) => Ok(response.status().as_u16()),
                    Err(error) => Err(error.to_string()),
                });
            }
            // The permit goes with the connection's own future and with
            // the response's body: it is released when both are done (a
            // socket closed; a called service's response ended or
            // dropped).
            result.map(|(response, io)| {
                use http_body_util::BodyExt;
                let permit = Arc::new(permit);
                let held = permit.clone();
                let io = async move {
                    let _permit = held;
                    Box::into_pin(io).await
                };
                let response = response.map(|body| {
                    Held {
                        body,
                        _permit: permit,
                    }
                    .boxed_unsync()
                });
                (response, Box::new(io) as Box<dyn Future<Output = _> + Send>)
            })
        })
    }
}

impl Hooks {
    /// Sends `request` where its destination says, if it may go.
    fn send(
        &self,
        out: &Outbound,
        destination: Destination,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> SendFuture {
        match destination {
            Destination::Denied => {
                let uri = request.uri().clone();
                self.deny(&uri, "not in the service's allowed_outbound")
            }
            Destination::Service(name) => match &out.calls {
                Some(calls) => {
                    let mut chain = out.chain.0.to_vec();
                    chain.push(self.tag.service.clone());
                    let caller = Caller {
                        invocation: self.tag.invocation,
                        deadline: out.deadline,
                        chain: CallChain(chain.into()),
                    };
                    let call = calls.call(name, request, caller);
                    Box::new(async move {
                        let response = call.await?;
                        Ok((
                            response,
                            Box::new(std::future::ready(Ok(())))
                                as Box<dyn Future<Output = _> + Send>,
                        ))
                    })
                }
                None => {
                    let uri = request.uri().clone();
                    self.deny(&uri, "this host does not route service calls")
                }
            },
            Destination::Remote => send_remote(out, self.tag.clone(), request, options),
        }
    }
}

/// Sends a request to the network, its timeouts bounded by what is left
/// of the invocation's deadline.
fn send_remote(
    out: &Outbound,
    tag: Tag,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> SendFuture {
    let left = out
        .deadline
        .saturating_duration_since(tokio::time::Instant::now());
    let bound = |asked: Option<Duration>, default: Duration| {
        Some(asked.unwrap_or(default).min(default).min(left))
    };
    let options = options.unwrap_or_default();
    let options = RequestOptions {
        connect_timeout: bound(options.connect_timeout, CONNECT_TIMEOUT),
        first_byte_timeout: bound(options.first_byte_timeout, FIRST_BYTE_TIMEOUT),
        between_bytes_timeout: bound(options.between_bytes_timeout, BETWEEN_BYTES_TIMEOUT),
    };
    tracing::debug!(uri = %request.uri(), "outgoing HTTP request");
    let listeners = out.listeners.get();
    let rules = out.rules.clone();
    Box::new(async move {
        use http_body_util::BodyExt;
        if request.uri().scheme() == Some(&http::uri::Scheme::HTTP) {
            pin_address(&mut request, &listeners, &rules, left, &tag).await?;
        }
        let (response, io) =
            wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
        Ok((
            response.map(BodyExt::boxed_unsync),
            Box::new(io) as Box<dyn Future<Output = _> + Send>,
        ))
    })
}

/// Resolves a plain-HTTP request's host now, refuses addresses of this
/// host's own listeners (the admin API takes no token on loopback, and
/// the public listener would be a way around the call-depth bound) and
/// metadata addresses the allow-list does not name itself
/// ([`capabilities::is_metadata_address`]), and points the request at the
/// address it checked, so nothing resolves the name differently
/// afterwards. The `Host` header keeps the name. (HTTPS needs the name for
/// TLS; Berth's listeners and the clouds' metadata services speak plain
/// HTTP, so an HTTPS request to one fails its handshake.)
async fn pin_address(
    request: &mut http::Request<WasiBody>,
    listeners: &[SocketAddr],
    rules: &[OutboundRule],
    within: Duration,
    tag: &Tag,
) -> Result<(), wasmtime_wasi_http::Error> {
    let uri = request.uri().clone();
    let written = uri
        .host()
        .ok_or(wasmtime_wasi_http::Error::HttpRequestUriInvalid)?
        .to_ascii_lowercase();
    let host = written.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(within, tokio::net::lookup_host((host, port))).await {
            Err(_) => return Err(wasmtime_wasi_http::Error::DnsTimeout),
            Ok(Err(_)) => return Err(wasmtime_wasi_http::Error::DestinationNotFound),
            Ok(Ok(addrs)) => addrs.collect(),
        };
    let local = local_addresses();
    let refused = |a: &SocketAddr| {
        if is_own_listener(*a, listeners, &local) {
            Some("it would reach this host's own listener")
        } else if capabilities::is_metadata_address(a.ip())
            // The request is to the address, as written in a rule that
            // names it (not a name, and not a wildcard covering the
            // literal), on that rule's port.
            && !rules
                .iter()
                .any(|r| r.names_address(a.ip()) && r.allows(false, &written, a.port()))
        {
            Some(
                "it would reach a link-local or cloud metadata address, which allowed_outbound does not name itself",
            )
        } else {
            None
        }
    };
    let Some(addr) = addrs.iter().copied().find(|a| refused(a).is_none()) else {
        let why = addrs
            .first()
            .and_then(refused)
            .unwrap_or("its name resolves to no address");
        tracing::warn!(
            service = %tag.service,
            invocation = %tag.invocation,
            uri = %uri,
            "outgoing HTTP request denied: {why}"
        );
        return Err(if addrs.is_empty() {
            wasmtime_wasi_http::Error::DestinationNotFound
        } else {
            wasmtime_wasi_http::Error::HttpRequestDenied
        });
    };
    let mut parts = uri.into_parts();
    parts.authority = Some(
        addr.to_string()
            .parse()
            .map_err(|_| wasmtime_wasi_http::Error::HttpRequestUriInvalid)?,
    );
    *request.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|_| wasmtime_wasi_http::Error::HttpRequestUriInvalid)?;
    Ok(())
}

/// Whether a connection to `addr` would reach one of this host's own
/// listeners (`listeners`, public and admin): same port, and an address
/// of this machine (loopback, unspecified, or one of `local`). A guest
/// must never reach the admin API, nor loop back into the public listener
/// around the call-depth bound.
pub fn is_own_listener(
    addr: std::net::SocketAddr,
    listeners: &[std::net::SocketAddr],
    local: &[std::net::IpAddr],
) -> bool {
    let ip = addr.ip().to_canonical();
    listeners.iter().any(|l| l.port() == addr.port())
        && (ip.is_loopback() || ip.is_unspecified() || local.contains(&ip))
}

/// The addresses of this machine's network interfaces.
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    #[cfg(unix)]
    {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `list` with a linked list we only read
        // and then free with freeifaddrs.
        if unsafe { libc::getifaddrs(&mut list) } != 0 {
            return out;
        }
        let mut cursor = list;
        while !cursor.is_null() {
            // SAFETY: `cursor` is a node of the list getifaddrs returned.
            let entry = unsafe { &*cursor };
            if !entry.ifa_addr.is_null() {
                // SAFETY: `ifa_addr` points to a sockaddr whose family says
                // which sockaddr_* it is.
                unsafe {
                    match i32::from((*entry.ifa_addr).sa_family) {
                        libc::AF_INET => {
                            let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                            out.push(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                                u32::from_be(sin.sin_addr.s_addr),
                            )));
                        }
                        libc::AF_INET6 => {
                            let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                            out.push(std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                                sin6.sin6_addr.s6_addr,
                            )));
                        }
                        _ => {}
                    }
                }
            }
            cursor = entry.ifa_next;
        }
        // SAFETY: `list` came from getifaddrs and is freed once.
        unsafe { libc::freeifaddrs(list) };
    }
    out
}

/// The span of one request or service call a traced invocation makes:
/// exported when its response (or its failure) comes, or when the guest
/// gives up on it.
struct ClientSpan {
    spans: Spans,
    context: TraceContext,
    name: String,
    start: SystemTime,
    attributes: Vec<(&'static str, Attr)>,
    ended: bool,
}

impl ClientSpan {
    fn start(
        spans: &Spans,
        context: TraceContext,
        request: &http::Request<WasiBody>,
        destination: &Destination,
    ) -> ClientSpan {
        let uri = request.uri();
        let method = request.method().as_str();
        let mut attributes = vec![
            ("http.request.method", Attr::method(method)),
            (
                "server.address",
                Attr::str(uri.host().unwrap_or("").to_owned()),
            ),
            // The path, not the query: a query may carry credentials.
            ("url.path", Attr::str(uri.path().to_owned())),
        ];
        let name = match destination {
            Destination::Service(callee) => {
                attributes.push(("berth.callee", Attr::str(callee.clone())));
                format!("call {callee}")
            }
            _ => method.to_owned(),
        };
        ClientSpan {
            spans: spans.clone(),
            context,
            name,
            start: SystemTime::now(),
            attributes,
            ended: false,
        }
    }

    /// Exports the span: the response's status, or why there was none.
    fn end(mut self, result: Result<u16, String>) {
        let error = match result {
            Ok(status) => {
                self.attributes
                    .push(("http.response.status_code", Attr::Int(status as i64)));
                (status >= 500).then(|| format!("status {status}"))
            }
            Err(error) => Some(error),
        };
        self.export(error);
    }

    fn export(&mut self, error: Option<String>) {
        self.ended = true;
        self.spans.export(vec![SpanRecord {
            context: self.context,
            remote_parent: false,
            name: std::mem::take(&mut self.name),
            kind: SpanKind::Client,
            start: self.start,
            end: SystemTime::now(),
            attributes: std::mem::take(&mut self.attributes),
            error,
        }]);
    }
}

impl Drop for ClientSpan {
    fn drop(&mut self) {
        if !self.ended {
            self.export(Some("cancelled".to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_listeners() {
        let listeners: Vec<std::net::SocketAddr> = vec![
            "127.0.0.1:3001".parse().unwrap(),
            "0.0.0.0:3000".parse().unwrap(),
        ];
        let local: Vec<std::net::IpAddr> = vec!["10.1.2.3".parse().unwrap()];
        let own = |a: &str| is_own_listener(a.parse().unwrap(), &listeners, &local);
        assert!(own("127.0.0.1:3001"));
        assert!(own("127.0.0.2:3001"));
        assert!(own("[::1]:3001"));
        assert!(own("[::ffff:127.0.0.1]:3000"));
        assert!(own("0.0.0.0:3000"));
        assert!(own("10.1.2.3:3000"));
        assert!(!own("127.0.0.1:8080"));
        assert!(!own("93.184.216.34:3000"));
        assert!(local_addresses().iter().any(|ip| ip.is_loopback()));
    }
}
