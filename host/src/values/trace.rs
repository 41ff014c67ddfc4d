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
