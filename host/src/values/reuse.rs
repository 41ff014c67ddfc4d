//! Instance reuse: a service's explicit choice to let one instance serve
//! several invocations, trading isolation between them for the cost of a
//! fresh instance. Off unless the service asks for it.
//!
//! ```toml
//! [service.api]
//! reuse = { max_requests = 1000, max_concurrent = 8, idle = "1s" }
//! ```

use crate::values::limits::{de_duration_in, in_range, ser_duration};
use serde::{Deserialize, Deserializer, Serialize};
use std::time::Duration;

/// How a service's instances are reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reuse {
    /// Invocations one instance serves before it is replaced by a fresh
    /// one.
    #[serde(deserialize_with = "de_max_requests")]
    pub max_requests: u32,
    /// Invocations one WASI 0.3 instance may serve at once (see
    /// [`crate::wasm::instance::shared`]); a WASI 0.2 instance serves one
    /// at a time whatever this says.
    #[serde(deserialize_with = "de_max_concurrent")]
    pub max_concurrent: u32,
    /// How long an instance may wait without an invocation before it is
    /// dropped.
    #[serde(deserialize_with = "de_idle", serialize_with = "ser_duration")]
    pub idle: Duration,
}

impl Default for Reuse {
    fn default() -> Self {
        Reuse {
            max_requests: 1000,
            max_concurrent: 1,
            idle: Duration::from_secs(1),
        }
    }
}

fn de_max_requests<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    in_range(v, 1, 1_000_000, ToString::to_string)
}

fn de_max_concurrent<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    in_range(v, 1, 1000, ToString::to_string)
}

fn de_idle<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_duration_in(d, Duration::from_millis(1), Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_round_trips() {
        let r: Reuse = toml::from_str("max_requests = 50\n").unwrap();
        assert_eq!(r.max_requests, 50);
        assert_eq!(r.max_concurrent, 1);
        assert_eq!(r.idle, Duration::from_secs(1));
        let r: Reuse =
            toml::from_str("max_requests = 10\nmax_concurrent = 4\nidle = \"250ms\"\n").unwrap();
        assert_eq!(
            (r.max_requests, r.max_concurrent, r.idle),
            (10, 4, Duration::from_millis(250))
        );
        let back: Reuse = toml::from_str(&toml::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn rejects_out_of_range_and_unknown() {
        let err = |s: &str| toml::from_str::<Reuse>(s).unwrap_err().message().to_owned();
        assert!(err("max_requests = 0").contains("out of range"));
        assert!(err("max_concurrent = 0").contains("out of range"));
        assert!(err("max_concurrent = 5000").contains("out of range"));
        assert!(err("idle = 1").contains("with a unit"));
        assert!(err("max_request = 1").contains("unknown field"));
    }
}
