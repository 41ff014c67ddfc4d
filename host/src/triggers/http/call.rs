//! Service calls: a guest's request to `http://NAME.svc/…` runs service
//! `NAME` in-process, as an invocation of its own — its own admission,
//! limits and usage record (trigger `call`) — in the caller's trace, its
//! span naming the calling invocation, and ending by the caller's deadline
//! at the latest. Calls nest at most [`MAX_CALL_DEPTH`] deep; deeper, the
//! call fails with `loop-detected`.

use crate::runtime::Runtime;
use crate::runtime::pipeline::Start;
use crate::runtime::record;
use crate::triggers::http::handler::invoke_http;
use crate::values::capabilities::MAX_CALL_DEPTH;
use crate::values::id::InvocationId;
use crate::values::service::ServiceName;
use crate::values::trace::{Attr, TRACEPARENT, TraceContext};
use crate::values::usage::Trigger;
use crate::wasm::instance::egress::{CallFuture, Caller, ServiceCalls};
use http::{Request, Response};
use std::sync::{Arc, Weak};
use wasmtime_wasi_http::WasiBody;

/// The HTTP trigger's service calls, for the instances of a runtime.
pub struct Calls {
    runtime: Weak<Runtime>,
}

impl Calls {
    /// Service calls between the services of `runtime` (held weakly: the
    /// runtime holds its instances' ports).
    pub fn new(runtime: &Arc<Runtime>) -> Arc<Calls> {
        Arc::new(Calls {
            runtime: Arc::downgrade(runtime),
        })
    }
}

impl ServiceCalls for Calls {
    fn call(&self, callee: String, request: Request<WasiBody>, caller: Caller) -> CallFuture {
        let runtime = self.runtime.upgrade();
        Box::pin(async move {
            let runtime = runtime.ok_or(wasmtime_wasi_http::Error::DestinationNotFound)?;
            call_service(&runtime, callee, request, caller).await
        })
    }
}

/// Calls service `name` for another service's invocation.
async fn call_service(
    runtime: &Arc<Runtime>,
    name: String,
    mut req: Request<WasiBody>,
    caller: Caller,
) -> Result<Response<WasiBody>, wasmtime_wasi_http::Error> {
    use http_body_util::BodyExt;
    let service = ServiceName::parse(&name)
        .ok()
        .and_then(|name| runtime.registry().service(&name));
    let Some(service) = service else {
        tracing::warn!(callee = %name, chain = %caller.chain.describe(&name), "service call to a service that does not exist");
        return Err(wasmtime_wasi_http::Error::DestinationNotFound);
    };
    if caller.chain.depth() > MAX_CALL_DEPTH {
        tracing::warn!(
            chain = %caller.chain.describe(&name),
            "service call refused: calls nest deeper than {MAX_CALL_DEPTH} (a loop?)"
        );
        return Err(wasmtime_wasi_http::Error::LoopDetected);
    }
    // A calling guest is no client of the edge: it cannot claim to be
    // anyone (the principal headers are Berth's, on every path).
    crate::triggers::http::gateway::strip_principal(req.headers_mut());
    let id = InvocationId::new();
    // The request carries the caller's `traceparent`: the guest's own if
    // it set one, else the calling invocation's (see the egress hooks).
    let trace =
        TraceContext::child_of(req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()));
    let span = record::span(&service, id, Trigger::Call, &trace);
    span.record("caller", tracing::field::display(caller.invocation));
    span.record("method", tracing::field::display(req.method()));
    span.record("path", req.uri().path());
    let start = Start {
        trigger: Trigger::Call,
        id,
        trace,
        span: span.clone(),
        chain: caller.chain,
        caller_deadline: Some(caller.deadline),
        default_status: Some(499),
        bytes_in: 0,
        attributes: if runtime.ports().spans.is_on() {
            vec![
                ("berth.caller", Attr::str(caller.invocation.to_string())),
                ("http.request.method", Attr::method(req.method().as_str())),
                ("url.path", Attr::str(req.uri().path().to_owned())),
            ]
        } else {
            Vec::new()
        },
    };
    let response = invoke_http(runtime, service, start, req, None, None).await;
    Ok(response.map(|body| {
        body.map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))
            .boxed_unsync()
    }))
}
