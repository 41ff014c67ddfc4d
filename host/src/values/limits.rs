//! Per-service resource limits. Every limit has a safe, finite default, so a
//! service that declares nothing is still bounded.

use crate::values::units::{ByteSize, format_duration, parse_duration};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// The largest linear memory a wasm32 instance can address.
pub const MAX_MEMORY: ByteSize = ByteSize::gib(4);

/// The most bytes one header map a guest makes may hold, as `wasi:http`
/// counts them (names, values and about 72 bytes per field): its own
/// default, so a guest can copy any request head the public listener
/// takes (64 KiB on the wire, at most 100 fields).
pub const MAX_FIELDS_SIZE: usize = 128 * 1024;

/// The most bytes one `wasi:http` body write may carry; with the one
/// write buffered besides, what an unsent body holds on the host is twice
/// this.
pub const BODY_CHUNK: usize = 32 * 1024;

/// The fewest handles (resources, streams, futures) an instance may hold
/// at once, whatever its memory cap.
pub const MIN_HANDLES: usize = 1024;

/// The most outbound HTTP requests and service calls one instance may
/// have in flight at once (each until its connection closes, or the
/// called service's response ends); the next fails inside the guest
/// (`connection-limit-reached`) until one ends.
pub const MAX_OUTBOUND_IN_FLIGHT: usize = 100;

/// Limits applied to every invocation of a service.
///
/// ```toml
/// [service.hello.limits]
/// memory = "128MiB"        # max linear memory per instance
/// fuel = 10_000_000_000    # fuel budget per invocation
/// timeout = "30s"          # wall-clock deadline per invocation
/// concurrency = 100        # instances in flight for this service
/// queue = 100              # requests waiting for a free instance
/// queue_timeout = "5s"     # how long a request may wait in the queue
/// request_body = "16MiB"   # largest request body accepted
/// idle_timeout = "5m"      # idle time before its compiled code is unloaded
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Maximum linear memory of one instance, summed over all its memories.
    /// Growing past it fails inside the guest (`memory.grow` returns -1).
    #[serde(deserialize_with = "de_memory", serialize_with = "ser_size")]
    pub memory: ByteSize,
    /// Fuel budget of one invocation (roughly one unit per wasm
    /// instruction). Running out traps.
    #[serde(deserialize_with = "de_fuel")]
    pub fuel: u64,
    /// Wall-clock deadline of one invocation, from instantiation to the last
    /// byte of the response body.
    #[serde(deserialize_with = "de_timeout", serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// Instances of this service running at once.
    #[serde(deserialize_with = "de_concurrency")]
    pub concurrency: u32,
    /// Requests that may wait for a free instance once `concurrency` are
    /// running; beyond that the caller gets 503.
    #[serde(deserialize_with = "de_queue")]
    pub queue: u32,
    /// How long a request may wait in the queue before it gets 503.
    #[serde(deserialize_with = "de_queue_timeout", serialize_with = "ser_duration")]
    pub queue_timeout: Duration,
    /// Largest request body accepted; larger ones get 413.
    #[serde(deserialize_with = "de_request_body", serialize_with = "ser_size")]
    pub request_body: ByteSize,
    /// How long the service may go without an invocation before its
    /// compiled code and pre-instantiated component are dropped from memory
    /// (the next invocation reloads them from the on-disk cache: a cold
    /// start).
    #[serde(deserialize_with = "de_idle_timeout", serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
}

impl Limits {
    /// The most handles (resources, streams, futures) one instance may
    /// hold at once: one per [`MAX_FIELDS_SIZE`] of its memory cap, at
    /// least [`MIN_HANDLES`]. What a guest can make the host hold outside
    /// its linear memory (header maps above all, each at most
    /// `MAX_FIELDS_SIZE`; unsent bodies, each at most twice
    /// [`BODY_CHUNK`]) is bounded by its memory cap (for caps from
    /// 128 MiB up; by 128 MiB below), not by the host's memory.
    pub fn max_handles(&self) -> usize {
        let per_memory =
            usize::try_from(self.memory.bytes() / MAX_FIELDS_SIZE as u64).unwrap_or(usize::MAX);
        per_memory.max(MIN_HANDLES)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: ByteSize::mib(128),
            fuel: 10_000_000_000,
            timeout: Duration::from_secs(30),
            concurrency: 100,
            queue: 100,
            queue_timeout: Duration::from_secs(5),
            request_body: ByteSize::mib(16),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

fn ser_size<S: Serializer>(v: &ByteSize, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

pub(crate) fn ser_duration<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*v))
}

/// Reads a size written as an integer (bytes) or a string with a unit.
struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as \"128MiB\" or a number of bytes")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map(ByteSize)
            .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        v.parse().map_err(E::custom)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"30s\" or \"250ms\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "invalid duration {v}: write it as a string with a unit, like \"{v}s\" or \"{v}ms\""
        )))
    }
}

pub(crate) fn in_range<T: PartialOrd, E: de::Error>(
    v: T,
    min: T,
    max: T,
    show: impl Fn(&T) -> String,
) -> Result<T, E> {
    if v < min || v > max {
        Err(E::custom(format!(
            "{} is out of range: must be between {} and {}",
            show(&v),
            show(&min),
            show(&max)
        )))
    } else {
        Ok(v)
    }
}

fn de_size_in<'de, D: Deserializer<'de>>(
    d: D,
    min: ByteSize,
    max: ByteSize,
) -> Result<ByteSize, D::Error> {
    let v = d.deserialize_any(SizeVisitor)?;
    in_range(v, min, max, ToString::to_string)
}

pub(crate) fn de_duration_in<'de, D: Deserializer<'de>>(
    d: D,
    min: Duration,
    max: Duration,
) -> Result<Duration, D::Error> {
    let v = d.deserialize_any(DurationVisitor)?;
    in_range(v, min, max, |d| format!("{:?}", d))
}

/// A duration between 1 ms and 24 h, written with a unit (`"250ms"`).
pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration_in(d, Duration::from_millis(1), Duration::from_secs(24 * 3600))
}

fn de_memory<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
    de_size_in(d, ByteSize::kib(64), MAX_MEMORY)
}

fn de_request_body<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
    de_size_in(d, ByteSize(0), ByteSize::gib(4))
}

fn de_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration_in(d, Duration::from_millis(1), Duration::from_secs(24 * 3600))
}

fn de_queue_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration_in(d, Duration::ZERO, Duration::from_secs(3600))
}

fn de_idle_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration_in(
        d,
        Duration::from_millis(100),
        Duration::from_secs(30 * 24 * 3600),
    )
}

fn de_fuel<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    in_range(v, 1, u64::MAX / 2, ToString::to_string)
}

fn de_concurrency<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    in_range(v, 1, 100_000, ToString::to_string)
}

fn de_queue<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    in_range(v, 0, 1_000_000, ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_grow_with_the_memory_cap_from_a_floor() {
        let with = |memory| Limits {
            memory,
            ..Limits::default()
        };
        assert_eq!(with(ByteSize::mib(1)).max_handles(), MIN_HANDLES);
        assert_eq!(with(ByteSize::mib(64)).max_handles(), 1024);
        assert_eq!(Limits::default().max_handles(), 1024);
        assert_eq!(with(ByteSize::mib(512)).max_handles(), 4096);
        assert_eq!(with(MAX_MEMORY).max_handles(), 32768);
        const { assert!(2 * BODY_CHUNK <= MAX_FIELDS_SIZE) };
        // Header maps at their largest, as many as there are handles, fit
        // in the memory cap.
        let l = with(ByteSize::mib(256));
        assert!((l.max_handles() * MAX_FIELDS_SIZE) as u64 <= l.memory.bytes());
    }

    #[test]
    fn defaults_are_finite() {
        let l = Limits::default();
        assert!(l.memory <= MAX_MEMORY);
        assert!(l.fuel > 0 && l.fuel < u64::MAX);
        assert!(l.timeout < Duration::from_secs(3600));
        assert!(l.concurrency > 0);
    }

    #[test]
    fn parses_and_round_trips() {
        let l: Limits = toml::from_str(
            "memory = \"64MiB\"\nfuel = 1_000\ntimeout = \"250ms\"\nconcurrency = 2\nrequest_body = 1024\n",
        )
        .unwrap();
        assert_eq!(l.memory, ByteSize::mib(64));
        assert_eq!(l.fuel, 1000);
        assert_eq!(l.timeout, Duration::from_millis(250));
        assert_eq!(l.concurrency, 2);
        assert_eq!(l.request_body, ByteSize(1024));
        assert_eq!(l.queue, Limits::default().queue);
        let back: Limits = toml::from_str(&toml::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn rejects_out_of_range_and_unknown() {
        let err = |s: &str| {
            toml::from_str::<Limits>(s)
                .unwrap_err()
                .message()
                .to_owned()
        };
        assert!(err("memory = \"8GiB\"").contains("out of range"));
        assert!(err("concurrency = 0").contains("out of range"));
        assert!(err("timeout = 30").contains("with a unit"));
        assert!(err("fuel = -1").contains("u64"));
        assert!(err("memroy = 1").contains("unknown field"));
    }
}
