//! Traces out: the spans of sampled invocations, exported over OTLP (gRPC
//! or HTTP/protobuf) by the OpenTelemetry SDK's exporter to any collector
//! — Jaeger, Zipkin through a collector, Tempo, an OpenTelemetry
//! Collector.
//!
//! Off unless an endpoint is configured. Spans wait in a bounded queue
//! that one task empties in batches; an invocation only ever appends to
//! it, and never waits: when the queue is full (a collector down, slow or
//! refusing) its spans are dropped and counted
//! (`berth_trace_spans_dropped_total`), with a warning at most once a
//! minute. Berth keeps its own queue rather than the SDK's batch span
//! processor because that one does not say how many spans it dropped.
//!
//! Sampling follows `OTEL_TRACES_SAMPLER` (default `parentbased_always_on`)
//! and is decided when an invocation starts, so that what it calls and
//! publishes carries the decision in its `traceparent`.

use crate::runtime::Runtime;
use crate::runtime::metrics::SpanFate;
use crate::values::trace::{Attr, SpanKind, SpanRecord, SpanSink, TraceContext};
use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample, SpanData, SpanExporter};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How traces are exported.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// The collector: a base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` means
    /// it (HTTP/protobuf appends `/v1/traces`), unless `traces_endpoint`.
    pub endpoint: Option<String>,
    /// The full URL of the traces endpoint
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, taken as it is).
    pub traces_endpoint: Option<String>,
    /// The protocol.
    pub protocol: OtlpProtocol,
    /// The sampler (`OTEL_TRACES_SAMPLER`'s names) and its argument.
    pub sampler: String,
    /// The sampler's argument (a ratio).
    pub sampler_arg: Option<String>,
    /// The resource's `service.name` (default: `OTEL_RESOURCE_ATTRIBUTES`'
    /// if it says, else `berth`).
    pub service_name: Option<String>,
    /// This node's name: the resource's `service.instance.id`.
    pub node: String,
    /// Spans that may wait for export; more are dropped.
    pub queue: usize,
    /// Spans sent in one export at most.
    pub batch: usize,
    /// How long spans wait for a batch to fill.
    pub delay: Duration,
    /// How long one export may take.
    pub timeout: Duration,
}

impl TraceOptions {
    /// Whether an endpoint is configured: traces are exported.
    pub fn is_on(&self) -> bool {
        self.endpoint.is_some() || self.traces_endpoint.is_some()
    }
}

/// The OTLP protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318 by convention).
    HttpProtobuf,
}

/// Why traces could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceSetupError {
    /// The sampler is not one of OpenTelemetry's.
    #[error(
        "trace sampler `{0}` is not known (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"
    )]
    Sampler(String),
    /// The sampler's argument is not a ratio.
    #[error("trace sampler argument `{0}` is not a ratio between 0 and 1")]
    SamplerArg(String),
    /// The exporter refused its configuration (a malformed endpoint).
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// The sampler named `name`, as `OTEL_TRACES_SAMPLER` names them.
pub fn sampler(name: &str, arg: Option<&str>) -> Result<Sampler, TraceSetupError> {
    let ratio = || match arg {
        None => Ok(1.0),
        Some(arg) => arg
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| TraceSetupError::SamplerArg(arg.to_owned())),
    };
    let parent_based = |root| Sampler::ParentBased(Box::new(root));
    Ok(match name.trim() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => parent_based(Sampler::AlwaysOn),
        "parentbased_always_off" => parent_based(Sampler::AlwaysOff),
        "parentbased_traceidratio" => parent_based(Sampler::TraceIdRatioBased(ratio()?)),
        other => return Err(TraceSetupError::Sampler(other.to_owned())),
    })
}

/// Spans waiting for export.
struct Queue {
    spans: Mutex<VecDeque<SpanRecord>>,
    capacity: usize,
    batch: usize,
    /// Woken when a batch is full, or to stop.
    ready: Notify,
}

/// The OTLP exporter: a [`SpanSink`] for the runtime.
pub struct OtlpTraces {
    queue: Arc<Queue>,
    sampler: Sampler,
    /// Weak: the runtime holds the exporter (through its ports).
    runtime: Weak<Runtime>,
    /// When a full queue was last warned of.
    warned: Mutex<Option<Instant>>,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl OtlpTraces {
    /// Starts exporting to the collector `options` name. Must be called
    /// within a Tokio runtime (the exporter's connections are its tasks).
    pub fn start(
        options: &TraceOptions,
        runtime: &Arc<Runtime>,
    ) -> Result<Arc<OtlpTraces>, TraceSetupError> {
        let sampler = sampler(&options.sampler, options.sampler_arg.as_deref())?;
        let mut exporter = exporter(options)?;
        let resource = resource(options);
        exporter.set_resource(&resource);
        let queue = Arc::new(Queue {
            spans: Mutex::new(VecDeque::with_capacity(options.queue.min(4096))),
            capacity: options.queue,
            batch: options.batch.max(1),
            ready: Notify::new(),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(export_loop(
            exporter,
            queue.clone(),
            Arc::downgrade(runtime),
            stop.clone(),
            options.delay,
            options.timeout,
        ));
        Ok(Arc::new(OtlpTraces {
            queue,
            sampler,
            runtime: Arc::downgrade(runtime),
            warned: Mutex::new(None),
            stop,
            task: Mutex::new(Some(task)),
        }))
    }

    /// Exports what is queued (waiting at most `within`) and stops.
    pub async fn shutdown(&self, within: Duration) {
        self.stop.cancel();
        self.queue.ready.notify_one();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut task) = task
            && tokio::time::timeout(within, &mut task).await.is_err()
        {
            task.abort();
            tracing::warn!(
                "the trace exporter did not finish within {within:?}; its last spans are lost"
            );
        }
    }
}

impl Drop for OtlpTraces {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl SpanSink for OtlpTraces {
    fn sample(&self, trace: &TraceContext) -> bool {
        sampled(&self.sampler, trace)
    }

    fn export(&self, spans: Vec<SpanRecord>) {
        let n = spans.len();
        let full = {
            let mut queue = self.queue.spans.lock().unwrap_or_else(|e| e.into_inner());
            if queue.len() + n > self.queue.capacity {
                None
            } else {
                queue.extend(spans);
                Some(queue.len() >= self.queue.batch)
            }
        };
        match full {
            None => {
                if let Some(runtime) = self.runtime.upgrade() {
                    runtime.metrics().trace_spans(SpanFate::QueueFull, n as u64);
                }
                let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
                if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    *warned = Some(Instant::now());
                    tracing::warn!(
                        capacity = self.queue.capacity,
                        "the trace export queue is full (the collector is slow or down); spans are dropped and counted in berth_trace_spans_dropped_total (said at most once a minute)"
                    );
                }
            }
            Some(true) => self.queue.ready.notify_one(),
            Some(false) => {}
        }
    }
}

/// The resource the spans are of: the host, named by `service.name`
/// (`OTEL_SERVICE_NAME`, else `OTEL_RESOURCE_ATTRIBUTES`, else `berth`),
/// with `OTEL_RESOURCE_ATTRIBUTES`' other attributes, and the node.
fn resource(options: &TraceOptions) -> Resource {
    let build = |name: Option<String>| {
        let builder = Resource::builder()
            .with_attribute(KeyValue::new("service.instance.id", options.node.clone()))
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        match name {
            Some(name) => builder.with_service_name(name),
            None => builder,
        }
        .build()
    };
    let resource = build(options.service_name.clone());
    let unnamed = resource
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_none_or(|name| name.as_str().starts_with("unknown_service"));
    if unnamed {
        build(Some("berth".to_owned()))
    } else {
        resource
    }
}

/// Whether `sampler` samples a new span of `trace`, whose parent (if
/// any) came with `trace`'s flags.
fn sampled(sampler: &Sampler, trace: &TraceContext) -> bool {
    let parent = trace.parent_id.map(|parent| {
        let flags = if trace.sampled() {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(trace.trace_id),
            SpanId::from(parent),
            flags,
            true,
            TraceState::NONE,
        ))
    });
    let result = sampler.should_sample(
        parent.as_ref(),
        TraceId::from(trace.trace_id),
        "invocation",
        &opentelemetry::trace::SpanKind::Server,
        &[],
        &[],
    );
    !matches!(result.decision, SamplingDecision::Drop)
}

/// The SDK's exporter for `options`' protocol and endpoint (the SDK reads
/// `OTEL_EXPORTER_OTLP_HEADERS` and the other variables it knows itself).
fn exporter(options: &TraceOptions) -> Result<opentelemetry_otlp::SpanExporter, TraceSetupError> {
    let endpoint = match (&options.traces_endpoint, &options.endpoint) {
        (Some(full), _) => full.clone(),
        (None, Some(base)) => match options.protocol {
            OtlpProtocol::Grpc => base.clone(),
            OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        },
        (None, None) => return Err(TraceSetupError::Exporter("no endpoint".into())),
    };
    let tls = endpoint.trim().to_ascii_lowercase().starts_with("https://");
    let built = match options.protocol {
        OtlpProtocol::Grpc if tls => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_tls_config(
                opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                    .with_native_roots(),
            )
            .with_endpoint(endpoint)
            .with_timeout(options.timeout)
            .build(),
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(options.timeout)
            .build(),
        OtlpProtocol::HttpProtobuf if tls => {
            return Err(TraceSetupError::Exporter(format!(
                "{endpoint}: the HTTP/protobuf exporter speaks plain HTTP only; use --otlp-protocol grpc for an https:// collector, or a collector beside the host"
            )));
        }
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(options.timeout)
            .build(),
    };
    built.map_err(|e| TraceSetupError::Exporter(e.to_string()))
}

/// Empties the queue in batches: when a batch is full, else every
/// `delay`; one export at a time, each bounded by `timeout`. On stop,
/// exports what is left.
async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    queue: Arc<Queue>,
    runtime: Weak<Runtime>,
    stop: CancellationToken,
    delay: Duration,
    timeout: Duration,
) {
    let scope = InstrumentationScope::builder("berth")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut warned: Option<Instant> = None;
    loop {
        let stopping = tokio::select! {
            () = queue.ready.notified() => stop.is_cancelled(),
            () = tokio::time::sleep(delay) => false,
            () = stop.cancelled() => true,
        };
        loop {
            let batch: Vec<SpanRecord> = {
                let mut spans = queue.spans.lock().unwrap_or_else(|e| e.into_inner());
                let n = spans.len().min(queue.batch);
                spans.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            let n = batch.len();
            let data = batch.into_iter().map(|s| span_data(s, &scope)).collect();
            let failure = match tokio::time::timeout(timeout, exporter.export(data)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {timeout:?}")),
            };
            let Some(runtime) = runtime.upgrade() else {
                return;
            };
            match failure {
                None => runtime.metrics().trace_spans(SpanFate::Exported, n as u64),
                Some(error) => {
                    runtime
                        .metrics()
                        .trace_spans(SpanFate::ExportFailed, n as u64);
                    if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                        warned = Some(Instant::now());
                        tracing::warn!(
                            %error,
                            "exporting traces failed; spans are dropped and counted in berth_trace_spans_dropped_total (said at most once a minute)"
                        );
                    }
                }
            }
            if n < queue.batch {
                break;
            }
        }
        if stopping {
            let _ = exporter.shutdown();
            return;
        }
    }
}

/// A Berth span as the SDK exports it.
fn span_data(span: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let context = span.context;
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(context.trace_id),
            SpanId::from(context.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: SpanId::from(context.parent_id.unwrap_or(0)),
        parent_span_is_remote: span.remote_parent && context.parent_id.is_some(),
        span_kind: match span.kind {
            SpanKind::Internal => opentelemetry::trace::SpanKind::Internal,
            SpanKind::Server => opentelemetry::trace::SpanKind::Server,
            SpanKind::Client => opentelemetry::trace::SpanKind::Client,
            SpanKind::Consumer => opentelemetry::trace::SpanKind::Consumer,
        },
        name: span.name.into(),
        start_time: span.start,
        end_time: span.end,
        attributes: span
            .attributes
            .into_iter()
            .map(|(key, value)| match value {
                Attr::Str(s) => KeyValue::new(key, s),
                Attr::Int(i) => KeyValue::new(key, i),
                Attr::F64(f) => KeyValue::new(key, f),
                Attr::Bool(b) => KeyValue::new(key, b),
            })
            .collect(),
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status: match span.error {
            Some(error) => Status::error(error),
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(parent: Option<u8>) -> TraceContext {
        TraceContext {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 1,
            parent_id: parent.map(|_| 2),
            flags: parent.unwrap_or(1),
        }
    }

    #[test]
    fn sampling_follows_the_parent_or_the_ratio() {
        let on = sampler("parentbased_always_on", None).unwrap();
        assert!(sampled(&on, &trace(None)));
        assert!(sampled(&on, &trace(Some(1))));
        assert!(!sampled(&on, &trace(Some(0))), "an unsampled parent");
        let none = sampler("parentbased_traceidratio", Some("0")).unwrap();
        assert!(!sampled(&none, &trace(None)));
        assert!(sampled(&none, &trace(Some(1))), "a sampled parent");
        let all = sampler("traceidratio", Some("1")).unwrap();
        assert!(sampled(&all, &trace(Some(0))), "the ratio, not the parent");
        assert!(!sampled(
            &sampler("always_off", None).unwrap(),
            &trace(Some(1))
        ));
    }

    #[test]
    fn samplers_are_named_as_opentelemetry_names_them() {
        for name in [
            "always_on",
            "always_off",
            "traceidratio",
            "parentbased_always_on",
            "parentbased_always_off",
            "parentbased_traceidratio",
        ] {
            assert!(sampler(name, Some("0.5")).is_ok(), "{name}");
        }
        assert!(matches!(
            sampler("jaeger_remote", None),
            Err(TraceSetupError::Sampler(_))
        ));
        assert!(matches!(
            sampler("traceidratio", Some("1.5")),
            Err(TraceSetupError::SamplerArg(_))
        ));
        assert!(matches!(
            sampler("traceidratio", Some("half")),
            Err(TraceSetupError::SamplerArg(_))
        ));
    }
}
