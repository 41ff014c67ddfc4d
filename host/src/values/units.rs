//! Human-readable quantities used in manifests, the API and on the command
//! line: byte sizes (`"128MiB"`), durations (`"30s"`) and timestamps
//! (milliseconds since the Unix epoch, shown as RFC 3339).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A number of bytes, written as an integer or with a unit:
/// `B`, `KB`/`MB`/`GB` (powers of 1000) or `KiB`/`MiB`/`GiB` (powers of 1024).
///
/// ```toml
/// memory = "128MiB"
/// request_body = 1048576
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` KiB.
    pub const fn kib(n: u64) -> Self {
        ByteSize(n << 10)
    }

    /// `n` MiB.
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }

    /// `n` GiB.
    pub const fn gib(n: u64) -> Self {
        ByteSize(n << 30)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a string is not a byte size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSize {
    /// No number where one was expected.
    #[error("invalid size {0:?}: expected a number with a unit like \"128MiB\"")]
    NotANumber(String),
    /// A unit that is not one of the known ones.
    #[error("invalid size {text:?}: unknown unit {unit:?} (use B, KB, MB, GB, KiB, MiB or GiB)")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit found.
        unit: String,
    },
    /// More bytes than fit in 64 bits.
    #[error("invalid size {0:?}: too large")]
    TooLarge(String),
}

impl FromStr for ByteSize {
    type Err = InvalidSize;

    fn from_str(s: &str) -> Result<Self, InvalidSize> {
        let s = s.trim();
        let (n, unit) = split_number(s).ok_or_else(|| InvalidSize::NotANumber(s.to_owned()))?;
        let multiplier: u64 = match unit {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => {
                return Err(InvalidSize::UnknownUnit {
                    text: s.to_owned(),
                    unit: other.to_owned(),
                });
            }
        };
        n.checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| InvalidSize::TooLarge(s.to_owned()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if n >= 1 << shift && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDuration {
    /// No number where one was expected.
    #[error("invalid duration {0:?}: expected a number with a unit like \"30s\"")]
    NotANumber(String),
    /// A bare number: its unit would be a guess.
    #[error("invalid duration {0:?}: a unit is required (ms, s, m, h or d)")]
    NoUnit(String),
    /// A unit that is not one of the known ones.
    #[error("invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m, h or d)")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit found.
        unit: String,
    },
}

/// Parses a duration with a unit: `ms`, `s`, `m`, `h` or `d` (`"500ms"`,
/// `"30s"`, `"2m"`, `"7d"`). A bare number is refused, since its unit would
/// be a guess.
///
/// Kept rather than `humantime::parse_duration`: that one also reads `1M`
/// as a month and `1.5s`, so a mistyped limit would silently mean something
/// else; this one accepts exactly the five units `format_duration` writes.
pub fn parse_duration(s: &str) -> Result<Duration, InvalidDuration> {
    let s = s.trim();
    let (n, unit) = split_number(s).ok_or_else(|| InvalidDuration::NotANumber(s.to_owned()))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        "" => return Err(InvalidDuration::NoUnit(s.to_owned())),
        other => {
            return Err(InvalidDuration::UnknownUnit {
                text: s.to_owned(),
                unit: other.to_owned(),
            });
        }
    };
    Ok(d)
}

/// Splits `"128 MiB"` into `(128, "MiB")`; digits may be grouped with `_`.
fn split_number(s: &str) -> Option<(u64, &str)> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    Some((digits.parse().ok()?, unit.trim()))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// A string that is not a point in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid time {0:?}: expected RFC 3339 (2026-11-23T21:08:00Z), a date (2026-11-23) or a duration ago (1h, 7d)"
)]
pub struct InvalidTime(pub String);

/// Parses a point in time: RFC 3339 (`2026-11-23T21:08:00Z`, with an
/// optional fraction and offset), a date (`2026-11-23`, midnight UTC), or a
/// duration ago (`"1h"`, `"7d"`). Returns ms since the epoch.
pub fn parse_time(s: &str) -> Result<i64, InvalidTime> {
    let s = s.trim();
    let bad = || InvalidTime(s.to_owned());
    if let Ok(ago) = parse_duration(s) {
        // Longer ago than the epoch's range is no time.
        return i64::try_from(ago.as_millis())
            .ok()
            .and_then(|ago| now_ms().checked_sub(ago))
            .ok_or_else(bad);
    }
    if let Ok(timestamp) = s.parse::<jiff::Timestamp>() {
        return Ok(timestamp.as_millisecond());
    }
    // A date alone (jiff reads the date of a longer text too).
    if s.len() != 10 {
        return Err(bad());
    }
    let date: jiff::civil::Date = s.parse().map_err(|_| bad())?;
    let midnight = jiff::tz::Offset::UTC
        .to_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
        .map_err(|_| bad())?;
    Ok(midnight.as_millisecond())
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC, to the
/// millisecond: `2026-11-23T21:08:00.123Z`.
pub fn rfc3339(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(timestamp) => format!("{timestamp:.3}"),
        // Outside jiff's range (years -9999 to 9999): no date to show.
        Err(_) => format!("@{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("128MiB".parse::<ByteSize>().unwrap(), ByteSize::mib(128));
        assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize::kib(64));
        assert_eq!("1GB".parse::<ByteSize>().unwrap(), ByteSize(1_000_000_000));
        assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
        assert_eq!("1_024B".parse::<ByteSize>().unwrap(), ByteSize(1024));
        assert!(
            "12XB"
                .parse::<ByteSize>()
                .unwrap_err()
                .to_string()
                .contains("unknown unit")
        );
        assert!("MiB".parse::<ByteSize>().is_err());
        assert!(
            "99999999999GiB"
                .parse::<ByteSize>()
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
        assert_eq!(ByteSize::mib(128).to_string(), "128MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_time("2026-11-23T20:52:03.456Z"),
            Ok(1_795_467_123_456)
        );
        assert_eq!(
            parse_time("2026-11-23T21:52:03.456+01:00"),
            Ok(1_795_467_123_456)
        );
        assert_eq!(parse_time("2026-11-23"), Ok(1_795_392_000_000));
        let hour_ago = parse_time("1h").unwrap();
        assert!((now_ms() - 3_600_000 - hour_ago).abs() < 1000);
        for bad in [
            "yesterday",
            "2026-13-01",
            "2026-11-23T25:00:00Z",
            "2026-11-23T21:00:00",
            // Further ago than an i64 of milliseconds reaches (it
            // overflowed: a panic in debug builds, a time in the future in
            // release).
            "9223372036854775808ms",
            "18446744073709551615ms",
            "18446744073709551615d",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_467_123_456), "2026-11-23T20:52:03.456Z");
        assert!(now_ms() > 1_700_000_000_000);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(
            parse_duration("30")
                .unwrap_err()
                .to_string()
                .contains("unit is required")
        );
        assert!(
            parse_duration("3w")
                .unwrap_err()
                .to_string()
                .contains("unknown unit")
        );
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }
}
