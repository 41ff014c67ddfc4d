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

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (n, unit) = split_number(s).ok_or_else(|| {
            format!("invalid size {s:?}: expected a number with a unit like \"128MiB\"")
        })?;
        let multiplier: u64 = match unit {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "invalid size {s:?}: unknown unit {other:?} (use B, KB, MB, GB, KiB, MiB or GiB)"
                ));
            }
        };
        n.checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size {s:?}: too large"))
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

/// Parses a duration with a unit: `ms`, `s`, `m`, `h` or `d` (`"500ms"`,
/// `"30s"`, `"2m"`, `"7d"`). A bare number is refused, since its unit would
/// be a guess.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = split_number(s).ok_or_else(|| {
        format!("invalid duration {s:?}: expected a number with a unit like \"30s\"")
    })?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        "" => {
            return Err(format!(
                "invalid duration {s:?}: a unit is required (ms, s, m, h or d)"
            ));
        }
        other => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ));
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

/// Parses a point in time: RFC 3339 (`2026-11-23T21:08:00Z`, with an
/// optional fraction and offset), a date (`2026-11-23`, midnight UTC), or a
/// duration ago (`"1h"`, `"7d"`). Returns ms since the epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(ago) = parse_duration(s) {
        return Ok(now_ms() - ago.as_millis() as i64);
    }
    let bad = || {
        format!(
            "invalid time {s:?}: expected RFC 3339 (2026-11-23T21:08:00Z), a date (2026-11-23) or a duration ago (1h, 7d)"
        )
    };
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(range)
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let mut ms = days_from_civil(y, m as u32, d as u32) * 86_400_000;
    if b.len() == 10 {
        return Ok(ms);
    }
    if b.len() < 20 || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || sec > 60 {
        return Err(bad());
    }
    ms += (h * 3600 + mi * 60 + sec) * 1000;
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let millis: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        ms += millis.parse::<i64>().map_err(|_| bad())?;
        rest = &frac[digits..];
    }
    match rest {
        "Z" | "z" => Ok(ms),
        offset
            if offset.len() == 6
                && (offset.starts_with('+') || offset.starts_with('-'))
                && &offset[3..4] == ":" =>
        {
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let oh: i64 = offset[1..3].parse().map_err(|_| bad())?;
            let om: i64 = offset[4..6].parse().map_err(|_| bad())?;
            Ok(ms - sign * (oh * 3600 + om * 60) * 1000)
        }
        _ => Err(bad()),
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's
/// `days_from_civil`).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC, to the
/// millisecond: `2026-11-23T21:08:00.123Z`.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
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
                .contains("unknown unit")
        );
        assert!("MiB".parse::<ByteSize>().is_err());
        assert!(
            "99999999999GiB"
                .parse::<ByteSize>()
                .unwrap_err()
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
                .contains("unit is required")
        );
        assert!(parse_duration("3w").unwrap_err().contains("unknown unit"));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }
}
