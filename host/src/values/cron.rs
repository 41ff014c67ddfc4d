//! Cron expressions: five fields (minute hour day-of-month month
//! day-of-week), or six with seconds first, evaluated in UTC.
//!
//! A field is `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a
//! list of those; months and weekdays also take names (`jan`, `mon`);
//! Sunday is 0 or 7. As in classic cron, when both day-of-month and
//! day-of-week are restricted, a day matching either fires.

//!
//! Kept rather than the `croner` crate: croner's errors do not name the
//! field or the value (`Component error: Number out of bounds.` for
//! `0 25 * * *`, where this says `hour: 25 is outside 0-23`, as the
//! manifest's golden errors show), it searches to the year 5000 before
//! saying an expression never fires, and it brings three proc-macro crates
//! for a parser of this size. Calendar arithmetic is jiff's.

use jiff::civil::{Date, Time};
use jiff::tz::Offset;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A parsed cron expression.
#[derive(Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({:?})", self.text)
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Cron {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Cron {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Why a string is not a cron expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCron {
    /// Not five or six fields.
    #[error(
        "invalid cron expression {text:?}: expected 5 fields (minute hour day month weekday) or 6 (with seconds first), found {found}"
    )]
    Fields {
        /// The expression.
        text: String,
        /// How many fields it has.
        found: usize,
    },
    /// A field is malformed or out of range.
    #[error("invalid cron expression {text:?}: {reason}")]
    Field {
        /// The expression.
        text: String,
        /// Which field, and what is wrong with it.
        reason: String,
    },
    /// No time matches within five years.
    #[error("cron expression {0:?} never fires")]
    NeverFires(String),
}

fn parse_field(field: &str, min: u32, max: u32, names: &[&str], what: &str) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + min);
        }
        let v: u32 = s
            .parse()
            .map_err(|_| format!("{what}: {s:?} is not a number"))?;
        if v < min || v > max {
            return Err(format!("{what}: {v} is outside {min}-{max}"));
        }
        Ok(v)
    };
    let weekdays = what == "day of week";
    let mut bits = 0u64;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("{what}: step {s:?} is not a number"))?;
                if step == 0 {
                    return Err(format!("{what}: a step must be at least 1"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (lo, hi) = (value(a)?, value(b)?);
            // Sunday ends a weekday range as 7: `fri-sun` is 5-7.
            let hi = if weekdays && hi == 0 && lo > 0 { 7 } else { hi };
            (lo, hi)
        } else {
            let v = value(range)?;
            (v, if step > 1 { max } else { v })
        };
        if lo > hi {
            return Err(format!("{what}: range {range} goes backwards"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            match v.checked_add(step) {
                Some(next) => v = next,
                None => break,
            }
        }
    }
    // Sunday may be written 7.
    if weekdays && bits & (1 << 7) != 0 {
        bits = (bits & !(1 << 7)) | 1;
    }
    Ok(bits)
}

impl FromStr for Cron {
    type Err = InvalidCron;

    fn from_str(text: &str) -> Result<Cron, InvalidCron> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let fields: Vec<&str> = match fields.len() {
            5 => std::iter::once("0").chain(fields).collect(),
            6 => fields,
            found => {
                return Err(InvalidCron::Fields {
                    text: text.to_owned(),
                    found,
                });
            }
        };
        let err = |reason: String| InvalidCron::Field {
            text: text.to_owned(),
            reason,
        };
        let cron = Cron {
            text: text.trim().to_owned(),
            seconds: parse_field(fields[0], 0, 59, &[], "second").map_err(err)?,
            minutes: parse_field(fields[1], 0, 59, &[], "minute").map_err(err)?,
            hours: parse_field(fields[2], 0, 23, &[], "hour").map_err(err)?,
            days: parse_field(fields[3], 1, 31, &[], "day of month").map_err(err)?,
            months: parse_field(fields[4], 1, 12, &MONTHS, "month").map_err(err)?,
            weekdays: parse_field(fields[5], 0, 7, &WEEKDAYS, "day of week").map_err(err)?,
            days_restricted: fields[3] != "*",
            weekdays_restricted: fields[5] != "*",
        };
        if cron.next_after(0).is_none() {
            return Err(InvalidCron::NeverFires(text.to_owned()));
        }
        Ok(cron)
    }
}

/// The date `days` days after 1970-01-01.
fn date_of(days: i64) -> Option<Date> {
    let midnight = Timestamp::from_second(days.checked_mul(86_400)?).ok()?;
    Some(Offset::UTC.to_datetime(midnight).date())
}

/// Days from 1970-01-01 to `date`.
fn days_of(date: Date) -> Option<i64> {
    let midnight = Offset::UTC
        .to_timestamp(date.to_datetime(Time::midnight()))
        .ok()?;
    Some(midnight.as_second().div_euclid(86_400))
}

impl Cron {
    fn day_matches(&self, date: Date) -> bool {
        let weekday = date.weekday().to_sunday_zero_offset();
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << weekday) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            _ => dom && dow,
        }
    }

    /// The first matching second strictly after `after_ms`, in ms; `None`
    /// if none comes within five years.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let mut t = after_ms.div_euclid(1000) + 1;
        let limit = t + 5 * 366 * 86_400;
        while t < limit {
            let days = t.div_euclid(86_400);
            let secs = t.rem_euclid(86_400);
            let date = date_of(days)?;
            if self.months & (1 << date.month()) == 0 {
                // First second of next month.
                let next = date.first_of_month().checked_add(1.month()).ok()?;
                t = days_of(next)? * 86_400;
                continue;
            }
            if !self.day_matches(date) {
                t = (days + 1) * 86_400;
                continue;
            }
            let (h, min, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
            if self.hours & (1 << h) == 0 {
                t = days * 86_400 + (h + 1) * 3600;
                continue;
            }
            if self.minutes & (1 << min) == 0 {
                t = days * 86_400 + h * 3600 + (min + 1) * 60;
                continue;
            }
            if self.seconds & (1 << s) == 0 {
                t += 1;
                continue;
            }
            return Some(t * 1000);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::units::rfc3339;

    fn next(expr: &str, after: &str) -> String {
        let cron: Cron = expr.parse().unwrap();
        let after = parse_time(after);
        rfc3339(cron.next_after(after).unwrap())
    }

    /// "2026-11-23T21:08:00" (UTC) → ms.
    fn parse_time(s: &str) -> i64 {
        crate::values::units::parse_time(&format!("{s}Z")).unwrap()
    }

    #[test]
    fn next_times() {
        assert_eq!(
            next("* * * * *", "2026-11-23T21:08:30"),
            "2026-11-23T21:09:00.000Z"
        );
        assert_eq!(
            next("30 2 * * *", "2026-11-23T21:08:00"),
            "2026-11-24T02:30:00.000Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-11-23T21:08:00"),
            "2026-11-23T21:15:00.000Z"
        );
        assert_eq!(
            next("0 0 1 * *", "2026-12-15T00:00:00"),
            "2027-01-01T00:00:00.000Z"
        );
        assert_eq!(
            next("0 12 29 2 *", "2026-03-01T00:00:00"),
            "2028-02-29T12:00:00.000Z"
        );
        // 2026-11-23 is a Monday.
        assert_eq!(
            next("0 9 * * mon-fri", "2026-11-27T10:00:00"),
            "2026-11-30T09:00:00.000Z"
        );
        assert_eq!(
            next("0 9 * * 0", "2026-11-23T10:00:00"),
            "2026-11-29T09:00:00.000Z"
        );
        assert_eq!(
            next("0 9 * * 7", "2026-11-23T10:00:00"),
            "2026-11-29T09:00:00.000Z"
        );
        // Day of month OR day of week when both are restricted.
        assert_eq!(
            next("0 0 1 * fri", "2026-11-23T00:00:00"),
            "2026-11-27T00:00:00.000Z"
        );
        assert_eq!(
            next("*/10 * * * * *", "2026-11-23T21:08:01"),
            "2026-11-23T21:08:10.000Z"
        );
        assert_eq!(
            next("0 0 0 1 jan *", "2026-06-01T00:00:00"),
            "2027-01-01T00:00:00.000Z"
        );
        // Sunday ends a weekday range as 7 (or `sun`): Saturday
        // 2026-11-28, then Sunday 2026-11-29.
        for expr in ["0 9 * * 6-7", "0 9 * * sat-sun", "0 9 * * fri-7"] {
            assert_eq!(
                next(expr, "2026-11-28T10:00:00"),
                "2026-11-29T09:00:00.000Z",
                "{expr}"
            );
        }
        assert_eq!(
            next("0 9 * * 6-7", "2026-11-23T10:00:00"),
            "2026-11-28T09:00:00.000Z"
        );
    }

    #[test]
    fn a_step_past_the_end_of_its_range_fires_once() {
        // A step near u32::MAX overflowed the walk (a panic in debug
        // builds, a wrapped walk that also fired at 0 in release).
        for (expr, minutes) in [
            ("1/4294967295 * * * *", 1 << 1),
            ("*/4294967295 * * * *", 1),
        ] {
            let cron: Cron = expr.parse().unwrap();
            assert_eq!(cron.minutes, minutes, "{expr}");
        }
    }

    #[test]
    fn bad_expressions() {
        for (expr, why) in [
            ("* * * *", "expected 5 fields"),
            ("60 * * * *", "outside 0-59"),
            ("* 24 * * *", "outside 0-23"),
            ("*/0 * * * *", "at least 1"),
            ("5-1 * * * *", "backwards"),
            ("x * * * *", "not a number"),
            ("0 0 30 2 *", "never fires"),
        ] {
            let err = expr.parse::<Cron>().unwrap_err().to_string();
            assert!(err.contains(why), "{expr}: {err}");
        }
    }
}
