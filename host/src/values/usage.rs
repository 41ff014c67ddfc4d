//! Usage records: one per invocation, whatever its trigger — the unit of
//! pay-per-invoke — and the closed sets they are made of, [`Trigger`] and
//! [`OutcomeKind`]. Metrics labels, log fields and the ledger's SQL values
//! all come from these enums, so a new variant cannot be forgotten in one
//! of them.
//!
//! What each field means is the same for every trigger (see
//! `docs/observability.md`): `wall_us` is the guest's execution — from the
//! moment its instance is made to the end of its run — and excludes the
//! wait for admission (`queue_us`) and loading its component on a cold
//! start (`load_us`), which are kept apart. GB-seconds are peak memory ×
//! `wall_us`: a bill covers execution, not queueing.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Defines a closed set of names: the enum, its `ALL` list, `as_str`,
/// `index` (position in `ALL`), `Display`, `FromStr` (refusing any other
/// name) and serde as the name.
macro_rules! names {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($unknown:ident) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in a fixed order ([`Self::index`] is a
            /// position in it).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Its name, as records, metrics and logs show it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// Its position in [`Self::ALL`].
            pub const fn index(self) -> usize {
                self as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// A name that is not one of the set.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $unknown(pub String);

        impl fmt::Display for $unknown {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "unknown {} {:?}", stringify!($name), self.0)
            }
        }

        impl std::error::Error for $unknown {}

        impl FromStr for $name {
            type Err = $unknown;

            fn from_str(s: &str) -> Result<Self, $unknown> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err($unknown(other.to_owned())),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

names! {
    /// What started an invocation.
    pub enum Trigger (UnknownTrigger) {
        /// An HTTP request.
        Http = "http",
        /// An event delivery.
        Event = "event",
        /// A schedule's firing.
        Schedule = "schedule",
        /// A call from another service (`http://NAME.svc/…`).
        Call = "call",
    }
}

names! {
    /// How an invocation ended, as metered.
    pub enum OutcomeKind (UnknownOutcome) {
        /// The guest did its job.
        Ok = "ok",
        /// The guest trapped.
        Trap = "trap",
        /// The guest ran out of fuel.
        Fuel = "fuel",
        /// The guest hit its memory limit.
        Memory = "memory",
        /// The guest ran past its deadline and was stopped.
        Deadline = "deadline",
        /// The guest returned, but with an error instead of a result (an
        /// HTTP error code or no response; an event handler's error).
        Error = "error",
        /// Refused or failed before the guest ran: busy, body too large,
        /// component not loadable, instance not makeable.
        Rejected = "rejected",
    }
}

impl OutcomeKind {
    /// Whether the guest ran and failed (trap, fuel, memory, deadline,
    /// error): the `failed` column of a report.
    pub const fn is_failure(self) -> bool {
        !matches!(self, OutcomeKind::Ok | OutcomeKind::Rejected)
    }

    /// Whether the guest ran at all (everything but `rejected`).
    pub const fn ran(self) -> bool {
        !matches!(self, OutcomeKind::Rejected)
    }
}

/// One invocation, as metered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The invocation id.
    pub invocation: String,
    /// The service.
    pub service: String,
    /// Its revision.
    pub revision: u32,
    /// What started it.
    pub trigger: Trigger,
    /// When it arrived (ms since the epoch).
    pub started_ms: i64,
    /// Execution time, in µs: from the moment its instance was made to the
    /// end of the guest's run (0 if it never ran).
    pub wall_us: u64,
    /// Time spent waiting for admission (a free slot), in µs.
    #[serde(default)]
    pub queue_us: u64,
    /// Time spent loading the component on a cold start, in µs (0 when it
    /// was in memory).
    #[serde(default)]
    pub load_us: u64,
    /// Time it spent running on a thread (guest code and the host calls it
    /// made), in µs.
    pub cpu_us: u64,
    /// Fuel consumed.
    pub fuel: u64,
    /// Peak linear memory, in bytes.
    pub peak_memory: u64,
    /// Request body or event bytes in.
    pub bytes_in: u64,
    /// Response body bytes out.
    pub bytes_out: u64,
    /// How it ended.
    pub outcome: OutcomeKind,
    /// The HTTP status sent, for HTTP and service calls.
    pub status: Option<u16>,
    /// Whether the invocation had to load the component first.
    pub cold: bool,
    /// For a service that reuses instances: the instance it ran in, named
    /// by the invocation it was made for. Invocations that shared an
    /// instance have the same; none for a fresh instance per invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// A query of the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Only this service.
    pub service: Option<String>,
    /// From (ms since the epoch, inclusive).
    pub since_ms: Option<i64>,
    /// Until (ms since the epoch, exclusive).
    pub until_ms: Option<i64>,
    /// Group by period: `hour` or `day`; none: one row per service.
    pub by: Option<Period>,
}

/// A grouping period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// Per hour.
    Hour,
    /// Per day (UTC).
    Day,
}

impl Period {
    /// Its length in ms.
    pub fn ms(self) -> i64 {
        match self {
            Period::Hour => 3_600_000,
            Period::Day => 86_400_000,
        }
    }
}

/// A string that is not a period.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid period {0:?}: use hour or day")]
pub struct InvalidPeriod(pub String);

impl FromStr for Period {
    type Err = InvalidPeriod;
    fn from_str(s: &str) -> Result<Period, InvalidPeriod> {
        match s {
            "hour" => Ok(Period::Hour),
            "day" => Ok(Period::Day),
            _ => Err(InvalidPeriod(s.to_owned())),
        }
    }
}

/// Totals of a group of records: what a bill is made of.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// The service (absent in the grand total).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The period's start (RFC 3339), when grouped by period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Invocations, rejected ones included.
    pub invocations: u64,
    /// Of which ok.
    pub ok: u64,
    /// Of which failed (trap, fuel, memory, deadline, error).
    pub failed: u64,
    /// Of which rejected before they ran.
    pub rejected: u64,
    /// Of which cold starts.
    pub cold_starts: u64,
    /// Fuel consumed.
    pub fuel: u64,
    /// Peak memory × execution time, in GB-seconds (1 GB = 2^30 bytes).
    pub gb_seconds: f64,
    /// On-thread time, in ms.
    pub cpu_ms: f64,
    /// Execution time, in ms.
    pub wall_ms: f64,
    /// Bytes in.
    pub bytes_in: u64,
    /// Bytes out.
    pub bytes_out: u64,
}

impl Totals {
    /// Adds `other`'s counts and sums to these.
    pub fn add(&mut self, other: &Totals) {
        self.invocations += other.invocations;
        self.ok += other.ok;
        self.failed += other.failed;
        self.rejected += other.rejected;
        self.cold_starts += other.cold_starts;
        self.fuel += other.fuel;
        self.gb_seconds += other.gb_seconds;
        self.cpu_ms += other.cpu_ms;
        self.wall_ms += other.wall_ms;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
    }
}

/// The answer to a query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// One row per service (and period).
    pub rows: Vec<Totals>,
    /// Everything the query covered.
    pub total: Totals,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for (i, kind) in OutcomeKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
            assert_eq!(kind.as_str().parse::<OutcomeKind>(), Ok(*kind));
            let json = serde_json::to_string(kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
        }
        for (i, trigger) in Trigger::ALL.iter().enumerate() {
            assert_eq!(trigger.index(), i);
            assert_eq!(trigger.as_str().parse::<Trigger>(), Ok(*trigger));
        }
        assert!("http2".parse::<Trigger>().is_err());
        assert!("Ok".parse::<OutcomeKind>().is_err());
        assert!(serde_json::from_str::<Trigger>("\"nope\"").is_err());
        assert_eq!(
            OutcomeKind::ALL
                .iter()
                .filter(|k| k.is_failure())
                .map(|k| k.as_str())
                .collect::<Vec<_>>(),
            ["trap", "fuel", "memory", "deadline", "error"]
        );
    }
}
