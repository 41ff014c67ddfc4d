//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): every
//! invocation belongs to a trace and is one span of it.
//!
//! An HTTP request's `traceparent` header, or an event's `traceparent`
//! extension (the CloudEvents distributed-tracing extension), names the
//! parent span; without one (or with a malformed one, which is ignored as
//! the specification asks) the invocation starts a new trace. The trace id
//! is a field of the invocation's log span, and the invocation passes its
//! own `traceparent` on to what it causes: the events it publishes and the
//! outgoing HTTP requests it makes.

use std::fmt;

/// The header (and CloudEvents extension) name.
pub const TRACEPARENT: &str = "traceparent";

/// One invocation's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace, 128 bits, never zero.
    pub trace_id: u128,
    /// This invocation's span, 64 bits, never zero.
    pub span_id: u64,
    /// The caller's span, if there was a caller.
    pub parent_id: Option<u64>,
    /// Trace flags (bit 0: sampled), passed on as received.
    pub flags: u8,
}

/// A parsed `traceparent` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id.
    pub trace_id: u128,
    /// The parent's span id.
    pub parent_id: u64,
    /// Trace flags.
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value: `VERSION-TRACEID-PARENTID-FLAGS` in
    /// lowercase hex. Version `00` must be exactly that; a later version
    /// may append fields after another `-`; version `ff`, all-zero ids and
    /// anything malformed are refused.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        let bytes = value.as_bytes();
        if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let version = hex(&value[0..2])? as u8;
        if version == 0xff || (version == 0 && bytes.len() != 55) {
            return None;
        }
        if bytes.len() > 55 && bytes[55] != b'-' {
            return None;
        }
        let trace_id = hex(&value[3..35])?;
        let parent_id = hex(&value[36..52])? as u64;
        let flags = hex(&value[53..55])? as u8;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }
}

/// Lowercase hex only, as the specification requires.
fn hex(s: &str) -> Option<u128> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

impl TraceContext {
    /// A new span: a child of `parent` (a `traceparent` value) when it is
    /// valid, else the root of a new, sampled trace.
    pub fn child_of(parent: Option<&str>) -> TraceContext {
        let span_id = non_zero_u64();
        match parent.and_then(TraceParent::parse) {
            Some(p) => TraceContext {
                trace_id: p.trace_id,
                span_id,
                parent_id: Some(p.parent_id),
                flags: p.flags,
            },
            None => TraceContext {
                trace_id: (non_zero_u64() as u128) << 64 | crate::values::id::random_u64() as u128,
                span_id,
                parent_id: None,
                flags: 0x01,
            },
        }
    }

    /// The `traceparent` that makes this invocation the parent of what it
    /// causes.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The trace id, as 32 hex digits.
    pub fn trace_id(&self) -> TraceId {
        TraceId(self.trace_id)
    }
}

/// A trace id, shown as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy)]
pub struct TraceId(u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl TraceContext {
    /// Whether the trace is sampled (flag bit 0): only sampled spans are
    /// exported.
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }

    /// A span of this trace under this one: a call the invocation makes.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: non_zero_u64(),
            parent_id: Some(self.span_id),
            flags: self.flags,
        }
    }
}

/// What kind of work a span stands for (OpenTelemetry's span kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A step inside an invocation.
    Internal,
    /// An invocation answering a request or a call.
    Server,
    /// A request or call an invocation makes.
    Client,
    /// An invocation handling an event.
    Consumer,
}

/// A span attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// Text.
    Str(std::borrow::Cow<'static, str>),
    /// An integer.
    Int(i64),
    /// A number.
    F64(f64),
    /// A flag.
    Bool(bool),
}

impl Attr {
    /// Text, borrowed when it is static.
    pub fn str(text: impl Into<std::borrow::Cow<'static, str>>) -> Attr {
        Attr::Str(text.into())
    }

    /// An HTTP method: the standard ones without an allocation.
    pub fn method(method: &str) -> Attr {
        const STANDARD: [&str; 9] = [
            "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
        ];
        match STANDARD.iter().find(|m| **m == method) {
            Some(standard) => Attr::str(*standard),
            None => Attr::str(method.to_owned()),
        }
    }
}

/// A finished span, as Berth hands it to an exporter: an invocation, a
/// step of one (admission wait, cold load, guest run), or a request or
/// service call one made.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Its trace, span and parent.
    pub context: TraceContext,
    /// Whether the parent is another process's (or another invocation's)
    /// span rather than one of this invocation's.
    pub remote_parent: bool,
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: SpanKind,
    /// When it started and ended.
    pub start: std::time::SystemTime,
    /// When it ended.
    pub end: std::time::SystemTime,
    /// Its attributes.
    pub attributes: Vec<(&'static str, Attr)>,
    /// Set when it failed: why.
    pub error: Option<String>,
}

/// Where finished spans go: a trace exporter the host plugs in.
pub trait SpanSink: Send + Sync + 'static {
    /// Whether a new span of `trace` (its parent, if any, as the flags
    /// it came with) is sampled.
    fn sample(&self, trace: &TraceContext) -> bool;

    /// Takes the finished spans of one invocation, or one call. Never
    /// blocks: spans that do not fit the exporter's queue are dropped
    /// and counted.
    fn export(&self, spans: Vec<SpanRecord>);
}

/// The host's span sink, if it exports traces: cheap to clone, and off
/// (every call a no-op) by default.
#[derive(Clone, Default)]
pub struct Spans(Option<std::sync::Arc<dyn SpanSink>>);

impl Spans {
    /// Spans that go to `sink`.
    pub fn to(sink: std::sync::Arc<dyn SpanSink>) -> Spans {
        Spans(Some(sink))
    }

    /// Whether spans are exported at all.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// `trace` with its sampled flag set as the exporter's sampler says
    /// (unchanged when nothing is exported: the flags pass on as
    /// received).
    pub fn sample(&self, mut trace: TraceContext) -> TraceContext {
        if let Some(sink) = &self.0 {
            if sink.sample(&trace) {
                trace.flags |= 0x01;
            } else {
                trace.flags &= !0x01;
            }
        }
        trace
    }

    /// Whether spans of `trace` are recorded and exported.
    pub fn records(&self, trace: &TraceContext) -> bool {
        self.0.is_some() && trace.sampled()
    }

    /// Hands `spans` to the exporter.
    pub fn export(&self, spans: Vec<SpanRecord>) {
        if let Some(sink) = &self.0 {
            sink.export(spans);
        }
    }
}

fn non_zero_u64() -> u64 {
    loop {
        let n = crate::values::id::random_u64();
        if n != 0 {
            return n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specification_example() {
        let p = TraceParent::parse(VALID).unwrap();
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(p.flags, 1);
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-abc")
                .is_some()
        );
    }

    #[test]
    fn children_keep_the_trace_and_get_their_own_span() {
        let child = TraceContext::child_of(Some(VALID));
        assert_eq!(child.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(child.parent_id, Some(0x00f067aa0ba902b7));
        assert_ne!(child.span_id, 0x00f067aa0ba902b7);
        let out = child.traceparent();
        let again = TraceParent::parse(&out).unwrap();
        assert_eq!(again.trace_id, child.trace_id);
        assert_eq!(again.parent_id, child.span_id);
        assert_eq!(
            child.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );

        let root = TraceContext::child_of(Some("garbage"));
        assert_eq!(root.parent_id, None);
        assert_ne!(root.trace_id, 0);
        assert_ne!(root.trace_id, TraceContext::child_of(None).trace_id);
        assert!(TraceParent::parse(&root.traceparent()).is_some());
    }
}
