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

use crate::values::cron::Cron;
use crate::values::event::Subscription;
use crate::values::invalid::InvalidConfig;
use crate::values::service::ServiceName;
use crate::values::topic::{InvalidTopic, Topic, TopicPattern};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The prefix of every schedule's topic.
pub const TOPIC_PREFIX: &str = "berth.schedule.";

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
    crate::values::limits::de_duration(d).map(Some)
}

fn ser_every<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&crate::values::units::format_duration(*d)),
        None => s.serialize_none(),
    }
}

impl Schedule {
    /// Checks the name and that exactly one of `cron` and `every` is set.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.name.is_empty()
            || self.name.len() > 63
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(InvalidConfig::ScheduleName(self.name.clone()));
        }
        let problem = match (&self.cron, &self.every) {
            (Some(_), None) | (None, Some(_)) if (1..=1000).contains(&self.max_attempts) => {
                return Ok(());
            }
            (Some(_), None) | (None, Some(_)) => "max_attempts must be between 1 and 1000",
            _ => "set exactly one of `cron` and `every`",
        };
        Err(InvalidConfig::Schedule {
            name: self.name.clone(),
            problem,
        })
    }

    /// The topic its firings are published on (valid for a schedule that
    /// passed [`Schedule::validate`]: service names and schedule names are
    /// tokens).
    pub fn topic(&self, service: &ServiceName) -> Result<Topic, InvalidTopic> {
        Topic::parse(&format!("{TOPIC_PREFIX}{service}.{}", self.name))
    }

    /// The subscription that delivers its firings to its service.
    pub fn subscription(&self, service: &ServiceName) -> Result<Subscription, InvalidTopic> {
        let mut s = Subscription::to(TopicPattern::exact(&self.topic(service)?));
        s.max_attempts = self.max_attempts;
        s.concurrency = 1;
        Ok(s)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let s: Schedule = toml::from_str("name = \"tick\"\nevery = \"2s\"").unwrap();
        assert!(s.validate().is_ok());
        assert_eq!(s.next_after(1000), Some(3000));
        assert_eq!(
            s.topic(&ServiceName::parse("svc").unwrap())
                .unwrap()
                .as_str(),
            "berth.schedule.svc.tick"
        );
        let both: Schedule =
            toml::from_str("name = \"x\"\nevery = \"2s\"\ncron = \"* * * * *\"").unwrap();
        assert!(both.validate().is_err());
        let neither: Schedule = toml::from_str("name = \"x\"").unwrap();
        assert!(neither.validate().is_err());
        let bad: Schedule = toml::from_str("name = \"a.b\"\nevery = \"1s\"").unwrap();
        assert!(bad.validate().is_err());
    }
}
