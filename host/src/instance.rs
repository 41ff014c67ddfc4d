//! Instances: the per-invocation `Store` and everything in it — the WASI
//! context (deny by default), the HTTP context, the memory limiter, fuel,
//! the epoch deadline and the guest's log streams.
//!
//! An instance is made for one invocation and dropped after it; nothing a
//! guest does survives it.

use crate::capabilities::{self, Destination, EnvValue, Mode, OutboundRule};
use crate::events::publisher::Publisher;
use crate::invoke::InvocationId;
use crate::runtime::{Runtime, Service};
use crate::service::ServiceName;
use crate::trace::TraceContext;
use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWrite;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// The data of every instance's `Store`.
pub struct InstanceState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: Hooks,
    limiter: MemoryLimiter,
    publisher: Option<Publisher>,
    turn: Arc<CpuTurn>,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl InstanceState {
    /// The memory limiter, to read the peak and whether the cap was hit.
    pub fn limiter(&self) -> &MemoryLimiter {
        &self.limiter
    }

    /// The instance's resource table.
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// What the instance may publish, if the host has an event bus.
    pub fn publisher(&self) -> Option<&Publisher> {
        self.publisher.as_ref()
    }
}

/// Adds every interface Berth provides to guests: all of WASI 0.2
/// (`wasi:cli`, `wasi:clocks`, `wasi:filesystem`, `wasi:io`, `wasi:random`,
/// `wasi:sockets`), `wasi:http`, and `berth:events/publisher`. What a guest
/// may actually do through them is decided per instance by [`new_store`],
/// and by default it is nothing beyond clocks, randomness and its own
/// stdout/stderr.
pub fn add_to_linker(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    crate::events::bindings::EventsHost::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
        linker,
        |state| state,
    )?;
    Ok(())
}

/// Who an instance runs for: the service and the invocation.
#[derive(Clone, Debug)]
pub struct Tag {
    /// The service.
    pub service: ServiceName,
    /// The invocation.
    pub invocation: InvocationId,
}

/// Why an instance could not be made for an invocation (a preopened
/// directory gone, a secret missing). Never holds a secret's value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// The services a call passed through to reach this invocation, outermost
/// first (empty for an invocation started by a client, an event or a
/// schedule).
#[derive(Debug, Clone, Default)]
pub struct CallChain(pub Arc<[ServiceName]>);

impl CallChain {
    /// The chain as `a → b → c`.
    pub fn describe(&self, then: &str) -> String {
        let mut text = String::new();
        for name in self.0.iter() {
            text.push_str(name.as_str());
            text.push_str(" → ");
        }
        text.push_str(then);
        text
    }
}

/// Makes the `Store` for one invocation of `service`, due by `deadline`.
///
/// The WASI context is deny-by-default, and grants only what the
/// service's configuration lists (see [`crate::capabilities`]):
/// - stdin is closed; stdout and stderr become log lines tagged with the
///   service and invocation (see [`GuestOutput`]);
/// - environment variables: exactly the service's `env`, secrets read from
///   the host's secrets source now; no arguments;
/// - files: exactly the service's `files`, each a cap-std directory handle
///   (read-only unless `rw`) that no path can leave;
/// - no sockets: TCP, UDP and name lookups are refused;
/// - outgoing HTTP: only to the origins of `allowed_outbound` (see
///   the hooks below), other services in-process;
/// - wall and monotonic clocks and random numbers come from the host;
/// - `berth:events/publisher` publishes only on the topics the service's
///   `publish` list allows, and the events carry the invocation's
///   `traceparent` (see [`crate::trace`]).
///
/// Limits: linear memory is capped by a [`MemoryLimiter`], the fuel budget
/// is set, and the epoch deadline yields to the async runtime on every
/// engine tick so a guest that never calls the host never holds a runtime
/// thread. (The wall-clock deadline itself is enforced by the caller, which
/// drops the invocation's future when it passes.)
///
/// Fairness: a guest that is still running after a whole epoch tick is
/// CPU-bound. From then on, at each tick it gives back its CPU turn and waits for one of
/// its service's turns (as many as the machine has cores) before it goes
/// on, and it gives the turn back whenever it calls the host. So however
/// many invocations of one service burn CPU, at most that many of them
/// compete with the rest of the host for the runtime's threads, and a
/// guest waiting on I/O never holds a turn.
pub fn new_store(
    runtime: &Arc<Runtime>,
    service: &Service,
    invocation: InvocationId,
    trace: TraceContext,
    deadline: tokio::time::Instant,
    chain: CallChain,
) -> Result<Store<InstanceState>, StartError> {
    let tag = &Tag {
        service: service.name().clone(),
        invocation,
    };
    let limits = service.limits();
    let config = &service.spec.config;
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(GuestOutput::new(tag.clone(), "stdout"))
        .stderr(GuestOutput::new(tag.clone(), "stderr"))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for mount in &config.files {
        mount.check_unchanged().map_err(StartError)?;
        let perms = match mount.mode {
            Mode::Ro => FsPerms::ReadOnly,
            Mode::Rw => FsPerms::ReadWrite,
        };
        wasi.preopened_dir(&mount.host, mount.guest.as_str(), perms)
            .map_err(|e| {
                StartError(format!(
                    "cannot open {} (mounted at {}): {e}",
                    mount.host.display(),
                    mount.guest
                ))
            })?;
    }
    for (name, value) in &config.env {
        match value {
            EnvValue::Value(value) => wasi.env(name, value),
            EnvValue::Secret(secret) => {
                let value = runtime
                    .secrets()
                    .read(secret)
                    .map_err(|e| StartError(format!("environment variable {name}: {e}")))?;
                wasi.env(name, value)
            }
        };
    }
    let outbound = (!config.allowed_outbound.is_empty()).then(|| Outbound {
        runtime: runtime.clone(),
        rules: service.outbound.clone(),
        trace,
        deadline,
        chain,
    });
    let state = InstanceState {
        table: ResourceTable::new(),
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        hooks: Hooks {
            tag: tag.clone(),
            outbound,
        },
        limiter: MemoryLimiter::new(limits.memory.bytes()),
        turn: CpuTurn::new(service.cpu_turns.clone()),
        publisher: runtime.events().map(|events| Publisher {
            service: service.name().clone(),
            invocation,
            allowed: service.publish.clone(),
            bus: events.bus.clone(),
            max_event_size: events.max_event_size,
            trace,
        }),
    };
    let mut store = Store::new(runtime.engine().engine(), state);
    store.limiter(|s| &mut s.limiter);
    store
        .set_fuel(limits.fuel)
        .expect("the engine is configured with fuel");
    // The first check comes after one to two ticks: a guest that answers
    // within a tick (most do) never yields or queues for a turn; one
    // still running after a whole tick is CPU-bound.
    store.set_epoch_deadline(2);
    store.epoch_deadline_callback(|store| {
        let turn = store.data().turn.clone();
        Ok(UpdateDeadline::YieldCustom(1, Box::pin(turn.next_turn())))
    });
    store.call_hook(|store, hook| {
        if matches!(hook, wasmtime::CallHook::CallingHost) {
            store.data().turn.release();
        }
        Ok(())
    });
    Ok(store)
}

/// An invocation's share of its service's CPU turns (see [`CpuTurn`]).
pub struct CpuTurn {
    turns: Arc<tokio::sync::Semaphore>,
    held: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
    holding: std::sync::atomic::AtomicBool,
}

impl CpuTurn {
    /// A share of `turns`, holding none yet.
    pub fn new(turns: Arc<tokio::sync::Semaphore>) -> Arc<CpuTurn> {
        Arc::new(CpuTurn {
            turns,
            held: Mutex::new(None),
            holding: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Gives the turn back, if held.
    ///
    /// The turn is handed to a thread of its own to be released: the
    /// invocation it wakes is then queued behind the work already waiting
    /// for the runtime's threads. Released here, on a runtime thread, it
    /// would run next (tokio's LIFO slot), and a service's CPU-bound
    /// invocations would pass their turns among themselves while requests
    /// to other services wait.
    fn release(&self) {
        if self
            .holding
            .swap(false, std::sync::atomic::Ordering::AcqRel)
            && let Some(permit) = self.held.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            release_elsewhere(permit);
        }
    }

    /// Gives the turn back, lets everything else run, then waits for a
    /// turn (first come, first served among the service's invocations) and
    /// holds it.
    async fn next_turn(self: Arc<Self>) {
        self.release();
        tokio::task::yield_now().await;
        let permit = self.turns.clone().acquire_owned().await.ok();
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = permit;
        self.holding
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Drops CPU turns on a thread outside the runtime (see [`CpuTurn::release`]).
fn release_elsewhere(permit: tokio::sync::OwnedSemaphorePermit) {
    static RELEASER: std::sync::OnceLock<
        std::sync::mpsc::Sender<tokio::sync::OwnedSemaphorePermit>,
    > = std::sync::OnceLock::new();
    let sender = RELEASER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<tokio::sync::OwnedSemaphorePermit>();
        std::thread::Builder::new()
            .name("berth-turns".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .expect("spawning the turn releaser");
        tx
    });
    if let Err(returned) = sender.send(permit) {
        drop(returned.0);
    }
}

/// How long an outgoing request may take to connect, and to send its
/// first response byte (or the next one), unless the guest asks for less;
/// always bounded by what is left of the invocation's deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
const BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// The response future `send_request` returns.
type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

/// `wasi:http` hooks: outgoing requests go where the service's
/// `allowed_outbound` allows, and nowhere else.
struct Hooks {
    tag: Tag,
    /// Present when the service may send requests at all.
    outbound: Option<Outbound>,
}

/// What an instance needs to send requests.
struct Outbound {
    runtime: Arc<Runtime>,
    rules: Arc<[OutboundRule]>,
    trace: TraceContext,
    deadline: tokio::time::Instant,
    chain: CallChain,
}

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

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        mut request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        let Some(out) = &self.outbound else {
            return self.deny(
                request.uri(),
                "this service has no outbound allow-list (allowed_outbound)",
            );
        };
        let destination = capabilities::destination(&out.rules, request.uri());
        // The invocation is the parent of what it calls, unless the guest
        // traces on its own and says so.
        if !request.headers().contains_key(crate::trace::TRACEPARENT)
            && let Ok(value) = http::HeaderValue::from_str(&out.trace.traceparent())
        {
            request
                .headers_mut()
                .insert(crate::trace::TRACEPARENT, value);
        }
        match destination {
            Destination::Denied => {
                let uri = request.uri().clone();
                self.deny(&uri, "not in the service's allowed_outbound")
            }
            Destination::Service(name) => {
                let mut chain: Vec<ServiceName> = out.chain.0.to_vec();
                chain.push(self.tag.service.clone());
                let call = crate::http::handler::call_service(
                    out.runtime.clone(),
                    name,
                    request,
                    (self.tag.invocation, out.trace, out.deadline),
                    CallChain(chain.into()),
                );
                Box::new(async move {
                    let response = call.await?;
                    Ok((
                        response,
                        Box::new(std::future::ready(Ok(()))) as Box<dyn Future<Output = _> + Send>,
                    ))
                })
            }
            Destination::Remote => {
                let left = out
                    .deadline
                    .saturating_duration_since(tokio::time::Instant::now());
                let bound = |asked: Option<Duration>, default: Duration| {
                    Some(asked.unwrap_or(default).min(default).min(left))
                };
                let options = options.unwrap_or_default();
                let options = wasmtime_wasi_http::RequestOptions {
                    connect_timeout: bound(options.connect_timeout, CONNECT_TIMEOUT),
                    first_byte_timeout: bound(options.first_byte_timeout, FIRST_BYTE_TIMEOUT),
                    between_bytes_timeout: bound(
                        options.between_bytes_timeout,
                        BETWEEN_BYTES_TIMEOUT,
                    ),
                };
                tracing::debug!(uri = %request.uri(), "outgoing HTTP request");
                let listeners = out.runtime.listeners();
                let tag = self.tag.clone();
                Box::new(async move {
                    use http_body_util::BodyExt;
                    if request.uri().scheme() == Some(&http::uri::Scheme::HTTP) {
                        pin_address(&mut request, &listeners, left, &tag).await?;
                    }
                    let (response, io) =
                        wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
                    Ok((
                        response.map(BodyExt::boxed_unsync),
                        Box::new(io) as Box<dyn Future<Output = _> + Send>,
                    ))
                })
            }
        }
    }
}

/// Resolves a plain-HTTP request's host now, refuses addresses of this
/// host's own listeners (the admin API takes no token on loopback, and
/// the public listener would be a way around the call-depth bound), and
/// points the request at the address it checked, so nothing resolves the
/// name differently afterwards. The `Host` header keeps the name.
/// (HTTPS needs the name for TLS; Berth's listeners speak plain HTTP, so
/// an HTTPS request to one fails its handshake.)
async fn pin_address(
    request: &mut http::Request<wasmtime_wasi_http::WasiBody>,
    listeners: &[std::net::SocketAddr],
    within: Duration,
    tag: &Tag,
) -> Result<(), wasmtime_wasi_http::Error> {
    let uri = request.uri().clone();
    let host = uri
        .host()
        .ok_or(wasmtime_wasi_http::Error::HttpRequestUriInvalid)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::time::timeout(within, tokio::net::lookup_host((host, port))).await {
            Err(_) => return Err(wasmtime_wasi_http::Error::DnsTimeout),
            Ok(Err(_)) => return Err(wasmtime_wasi_http::Error::DestinationNotFound),
            Ok(Ok(addrs)) => addrs.collect(),
        };
    let local = capabilities::local_addresses();
    let Some(addr) = addrs
        .iter()
        .copied()
        .find(|a| !capabilities::is_own_listener(*a, listeners, &local))
    else {
        tracing::warn!(
            service = %tag.service,
            invocation = %tag.invocation,
            uri = %uri,
            "outgoing HTTP request denied: it would reach this host's own listener"
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

/// Caps an instance's linear memory (the sum over all its memories) and
/// records its peak and whether the cap was hit.
#[derive(Debug)]
pub struct MemoryLimiter {
    cap: usize,
    total: usize,
    peak: usize,
    last_growth: usize,
    denied: Option<usize>,
}

/// Largest table an instance may grow, in elements.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl MemoryLimiter {
    fn new(cap: u64) -> Self {
        MemoryLimiter {
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            total: 0,
            peak: 0,
            last_growth: 0,
            denied: None,
        }
    }

    /// The most linear memory the instance held at once, in bytes.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// The cap, in bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// If a growth was refused, the total the guest asked for.
    pub fn denied(&self) -> Option<usize> {
        self.denied
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let total = self.total.saturating_add(growth);
        if total > self.cap {
            self.denied = Some(total);
            return Ok(false);
        }
        self.total = total;
        self.last_growth = growth;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.total -= self.last_growth;
        self.last_growth = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Longest line kept before it is logged anyway.
const MAX_LINE: usize = 16 * 1024;

/// A guest's stdout or stderr: every line becomes a `tracing` event (target
/// `guest`) tagged with the service, the invocation and the stream. A last
/// line without a newline is logged when the instance is dropped.
#[derive(Clone)]
pub struct GuestOutput {
    inner: Arc<GuestOutputInner>,
}

struct GuestOutputInner {
    tag: Tag,
    stream: &'static str,
    pending: Mutex<Vec<u8>>,
}

impl GuestOutput {
    fn new(tag: Tag, stream: &'static str) -> Self {
        GuestOutput {
            inner: Arc::new(GuestOutputInner {
                tag,
                stream,
                pending: Mutex::new(Vec::new()),
            }),
        }
    }

    fn write_bytes(&self, mut bytes: &[u8]) {
        let inner = &self.inner;
        let mut pending = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(pos) = bytes.iter().position(|b| *b == b'\n') {
            pending.extend_from_slice(&bytes[..pos]);
            inner.emit(&pending);
            pending.clear();
            bytes = &bytes[pos + 1..];
        }
        pending.extend_from_slice(bytes);
        if pending.len() >= MAX_LINE {
            inner.emit(&pending);
            pending.clear();
        }
    }
}

impl GuestOutputInner {
    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        tracing::info!(
            target: "guest",
            service = %self.tag.service,
            invocation = %self.tag.invocation,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_the_sum_and_records_the_peak() {
        let mut l = MemoryLimiter::new(4 << 16);
        assert!(l.memory_growing(0, 2 << 16, None).unwrap());
        assert!(l.memory_growing(0, 1 << 16, None).unwrap());
        assert_eq!(l.peak(), 3 << 16);
        assert!(!l.memory_growing(2 << 16, 4 << 16, None).unwrap());
        assert_eq!(l.denied(), Some(5 << 16));
        assert!(l.memory_growing(1 << 16, 2 << 16, None).unwrap());
        assert_eq!(l.peak(), 4 << 16);
        l.memory_grow_failed(wasmtime::format_err!("os said no"))
            .unwrap();
        assert!(l.memory_growing(1 << 16, 2 << 16, None).unwrap());
    }
}
