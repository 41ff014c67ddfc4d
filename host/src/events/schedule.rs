//! Schedules: a service asks to be invoked on a cron expression or at a
//! fixed interval. Each firing is an event on the service's own topic
//! `berth.schedule.<service>.<name>`, delivered through the bus like any
//! other (durable, retried, dead-lettered).
//!
//! ```toml
//! [[service.cleanup.schedules]]
//! name = "nightly"
//! cron = "30 2 * * *"      # minute hour day-of-month month day-of-week, UTC
//!
//! [[service.cleanup.schedules]]
//! name = "heartbeat"
//! every = "30s"
//! ```
//!
//! Cron expressions have five fields, or six with seconds first. A field is
//! `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a list of
//! those; months and weekdays also take names (`jan`, `mon`); Sunday is 0
//! or 7. As in classic cron, when both day-of-month and day-of-week are
//! restricted, a day matching either fires.
//!
//! A schedule that should have fired while the host was down fires once
//! when it comes back, not once per missed time.

use super::bus::Bus;
use super::{Attributes, Event, Subscription, Topic, TopicPattern};
use crate::invoke::InvocationId;
use crate::runtime::Runtime;
use crate::service::ServiceName;
use crate::state::State;
use crate::units::{days_from_civil, now_ms, rfc3339};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The prefix of every schedule's topic.
pub const TOPIC_PREFIX: &str = "berth.schedule.";
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// One schedule of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Names the schedule within its service (a token: letters, digits,
    /// `-`, `_`).
    pub name: String,
    /// A cron expression (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<Cron>,
    /// A fixed interval.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_every",
        serialize_with = "ser_every"
    )]
    pub every: Option<Duration>,
    /// Deliveries of one firing before it is dead-lettered.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_attempts() -> u32 {
    3
}

fn de_every<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    crate::limits::de_duration(d).map(Some)
}

fn ser_every<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&crate::units::format_duration(*d)),
        None => s.serialize_none(),
    }
}

impl Schedule {
    /// Checks the name and that exactly one of `cron` and `every` is set.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > 63
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "invalid schedule name {:?}: 1 to 63 letters, digits, \"-\" and \"_\"",
                self.name
            ));
        }
        match (&self.cron, &self.every) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err(format!(
                    "schedule {:?}: set exactly one of `cron` and `every`",
                    self.name
                ));
            }
        }
        if self.max_attempts == 0 || self.max_attempts > 1000 {
            return Err(format!(
                "schedule {:?}: max_attempts must be between 1 and 1000",
                self.name
            ));
        }
        Ok(())
    }

    /// The topic its firings are published on.
    pub fn topic(&self, service: &str) -> String {
        format!("{TOPIC_PREFIX}{service}.{}", self.name)
    }

    /// The subscription that delivers its firings to its service.
    pub fn subscription(&self, service: &str) -> Subscription {
        let mut s = Subscription::to(
            TopicPattern::parse(&self.topic(service))
                .expect("service and schedule names are tokens"),
        );
        s.max_attempts = self.max_attempts;
        s.concurrency = 1;
        s
    }

    /// The first firing strictly after `after_ms` (ms since the epoch), if
    /// there is one within five years.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match (&self.cron, self.every) {
            (Some(cron), _) => cron.next_after(after_ms),
            (None, Some(every)) => Some(after_ms + (every.as_millis() as i64).max(1)),
            (None, None) => None,
        }
    }
}

/// Fires the schedules of a runtime's services on time.
pub struct Scheduler {
    runtime: Arc<Runtime>,
    bus: Arc<dyn Bus>,
    state: Arc<Mutex<State>>,
    entries: Mutex<Vec<Entry>>,
    changed: Notify,
}

#[derive(Debug, Clone)]
struct Entry {
    service: ServiceName,
    schedule: Schedule,
    next_ms: i64,
}

impl Scheduler {
    /// A scheduler for `runtime`'s services, recording firings in `state`.
    pub fn new(
        runtime: Arc<Runtime>,
        bus: Arc<dyn Bus>,
        state: Arc<Mutex<State>>,
    ) -> Arc<Scheduler> {
        let scheduler = Arc::new(Scheduler {
            runtime,
            bus,
            state,
            entries: Mutex::new(Vec::new()),
            changed: Notify::new(),
        });
        tokio::spawn(scheduler.clone().run());
        scheduler
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the schedules of the runtime's services as they are now. A
    /// schedule that should have fired since it last did (the host was
    /// down) is due at once — once.
    pub fn sync(&self) {
        let now = now_ms();
        let mut entries = Vec::new();
        for service in self.runtime.services() {
            if service.spec.config.schedules.is_empty() {
                continue;
            }
            let fired: std::collections::HashMap<String, i64> = match self
                .state()
                .schedule_fired(service.name())
            {
                Ok(rows) => rows.into_iter().collect(),
                Err(e) => {
                    tracing::error!(service = %service.name(), error = %e, "cannot read the schedule state");
                    Default::default()
                }
            };
            for schedule in &service.spec.config.schedules {
                let last = match fired.get(&schedule.name) {
                    Some(last) => *last,
                    None => {
                        // A new schedule starts counting now.
                        if let Err(e) =
                            self.state()
                                .set_schedule_fired(service.name(), &schedule.name, now)
                        {
                            tracing::error!(service = %service.name(), error = %e, "cannot record the schedule state");
                        }
                        now
                    }
                };
                let Some(next) = schedule.next_after(last) else {
                    continue;
                };
                // A time already past (missed while the host was down)
                // fires once, at the next turn of the loop.
                entries.push(Entry {
                    service: service.name().clone(),
                    schedule: schedule.clone(),
                    next_ms: next,
                });
            }
        }
        *self.entries.lock().unwrap_or_else(|e| e.into_inner()) = entries;
        self.changed.notify_one();
    }

    async fn run(self: Arc<Self>) {
        loop {
            let next = self
                .entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|e| e.next_ms)
                .min();
            let wait = match next {
                Some(next) => Duration::from_millis((next - now_ms()).max(0) as u64),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                () = self.changed.notified() => continue,
                () = tokio::time::sleep(wait) => {}
            }
            let now = now_ms();
            let due: Vec<Entry> = {
                let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                let due = entries
                    .iter()
                    .filter(|e| e.next_ms <= now)
                    .cloned()
                    .collect();
                for entry in entries.iter_mut().filter(|e| e.next_ms <= now) {
                    entry.next_ms = entry.schedule.next_after(now).unwrap_or(i64::MAX);
                }
                due
            };
            for entry in due {
                self.fire(&entry, now).await;
            }
        }
    }

    async fn fire(&self, entry: &Entry, now: i64) {
        let name = &entry.schedule.name;
        let topic = Topic::parse(&entry.schedule.topic(entry.service.as_str())).expect("tokens");
        let data = serde_json::json!({
            "schedule": name,
            "due": rfc3339(entry.next_ms),
            "fired": rfc3339(now),
        });
        let event = Event {
            topic,
            attributes: Attributes {
                id: InvocationId::new().to_string(),
                source: format!("/berth/schedules/{}/{name}", entry.service),
                ty: "berth.schedule".into(),
                subject: Some(name.clone()),
                time: Some(rfc3339(now)),
                datacontenttype: Some("application/json".into()),
                extensions: Default::default(),
            },
            data: Some(data.to_string().into()),
        };
        // Published first, recorded second: a crash in between fires it
        // again after a restart (at least once, like every delivery).
        match self.bus.publish(vec![event]).await {
            Ok(_) => {
                tracing::info!(service = %entry.service, schedule = %name, "schedule fired");
                if let Err(e) = self.state().set_schedule_fired(&entry.service, name, now) {
                    tracing::error!(service = %entry.service, error = %e, "cannot record the schedule state");
                }
            }
            Err(e) => {
                tracing::error!(service = %entry.service, schedule = %name, error = %e, "a schedule could not fire")
            }
        }
    }
}

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

fn parse_field(field: &str, min: u32, max: u32, names: &[&str], what: &str) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + min);
        }
        let v: u32 = s
            .parse()
            .map_err(|_| format!("{what}: {s:?} is not a number"))?;
        // Sunday may be written 7.
        let v = if what == "day of week" && v == 7 {
            0
        } else {
            v
        };
        if v < min || v > max {
            return Err(format!("{what}: {v} is outside {min}-{max}"));
        }
        Ok(v)
    };
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
            (value(a)?, value(b)?)
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
            v += step;
        }
    }
    Ok(bits)
}

impl FromStr for Cron {
    type Err = String;

    fn from_str(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let fields: Vec<&str> = match fields.len() {
            5 => std::iter::once("0").chain(fields).collect(),
            6 => fields,
            n => {
                return Err(format!(
                    "invalid cron expression {text:?}: expected 5 fields (minute hour day month weekday) or 6 (with seconds first), found {n}"
                ));
            }
        };
        let err = |e: String| format!("invalid cron expression {text:?}: {e}");
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
            return Err(format!("cron expression {text:?} never fires"));
        }
        Ok(cron)
    }
}

fn days_in_month(y: i64, m: u32) -> u32 {
    days_from_civil(
        if m == 12 { y + 1 } else { y },
        if m == 12 { 1 } else { m + 1 },
        1,
    ) as u32
        - days_from_civil(y, m, 1) as u32
}

impl Cron {
    fn day_matches(&self, y: i64, m: u32, d: u32) -> bool {
        let weekday = (days_from_civil(y, m, d) + 4).rem_euclid(7) as u32;
        let dom = self.days & (1 << d) != 0;
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
            let (y, m, d) = crate::units::civil_from_days(days);
            if self.months & (1 << m) == 0 {
                // First second of next month.
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                t = days_from_civil(ny, nm, 1) * 86_400;
                continue;
            }
            if d > days_in_month(y, m) || !self.day_matches(y, m, d) {
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
    use crate::units::rfc3339;

    fn next(expr: &str, after: &str) -> String {
        let cron: Cron = expr.parse().unwrap();
        let after = parse_time(after);
        rfc3339(cron.next_after(after).unwrap())
    }

    /// "2026-11-23T21:08:00" → ms.
    fn parse_time(s: &str) -> i64 {
        let (date, time) = s.split_once('T').unwrap();
        let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
        let t: Vec<i64> = time.split(':').map(|x| x.parse().unwrap()).collect();
        (days_from_civil(d[0], d[1] as u32, d[2] as u32) * 86_400 + t[0] * 3600 + t[1] * 60 + t[2])
            * 1000
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
            let err = expr.parse::<Cron>().unwrap_err();
            assert!(err.contains(why), "{expr}: {err}");
        }
    }

    #[test]
    fn schedules() {
        let s: Schedule = toml::from_str("name = \"tick\"\nevery = \"2s\"").unwrap();
        assert!(s.validate().is_ok());
        assert_eq!(s.next_after(1000), Some(3000));
        assert_eq!(s.topic("svc"), "berth.schedule.svc.tick");
        let both: Schedule =
            toml::from_str("name = \"x\"\nevery = \"2s\"\ncron = \"* * * * *\"").unwrap();
        assert!(both.validate().is_err());
        let neither: Schedule = toml::from_str("name = \"x\"").unwrap();
        assert!(neither.validate().is_err());
        let bad: Schedule = toml::from_str("name = \"a.b\"\nevery = \"1s\"").unwrap();
        assert!(bad.validate().is_err());
    }
}
