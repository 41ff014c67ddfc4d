//! Events: CloudEvents 1.0 events on topics, and the subscriptions that
//! receive them with their retry policies.

use crate::values::invalid::InvalidConfig;
use crate::values::topic::{Topic, TopicPattern};
use crate::values::units::format_duration;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

pub use crate::values::topic::SYSTEM_PREFIX;

/// A CloudEvents 1.0 event, with the topic it travels on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Where it was published.
    pub topic: Topic,
    /// The CloudEvents attributes.
    pub attributes: Attributes,
    /// The payload.
    pub data: Option<Bytes>,
}

/// The CloudEvents context attributes of an event (`specversion` is always
/// `1.0`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    /// Unique for its source.
    pub id: String,
    /// Who published it.
    pub source: String,
    /// What happened.
    #[serde(rename = "type")]
    pub ty: String,
    /// What it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The payload's media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// Extension attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, String>,
}

impl Event {
    /// Bytes the event takes: attributes and payload. This is what the size
    /// limit measures.
    pub fn size(&self) -> usize {
        let a = &self.attributes;
        self.topic.as_str().len()
            + a.id.len()
            + a.source.len()
            + a.ty.len()
            + a.subject.as_ref().map_or(0, String::len)
            + a.time.as_ref().map_or(0, String::len)
            + a.datacontenttype.as_ref().map_or(0, String::len)
            + a.extensions
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.data.as_ref().map_or(0, Bytes::len)
    }
}

/// How a subscription retries a delivery that failed.
///
/// ```toml
/// [[service.mailer.subscriptions]]
/// topic = "users.*"          # exact, `*` for one token, `>` for the rest
/// max_attempts = 5           # then the event goes to the dead letters
/// backoff = "1s"             # before the first retry; doubles each time
/// max_backoff = "1m"         # ...up to this
/// concurrency = 10           # deliveries of this subscription at once
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// The topics it receives.
    pub topic: TopicPattern,
    /// Deliveries of one event before it is dead-lettered (at least 1).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry; each retry waits twice as long.
    #[serde(
        default = "default_backoff",
        deserialize_with = "crate::values::limits::de_duration",
        serialize_with = "ser_duration"
    )]
    pub backoff: Duration,
    /// The longest wait between two attempts.
    #[serde(
        default = "default_max_backoff",
        deserialize_with = "crate::values::limits::de_duration",
        serialize_with = "ser_duration"
    )]
    pub max_backoff: Duration,
    /// Deliveries of this subscription running at once.
    #[serde(default = "default_subscription_concurrency")]
    pub concurrency: u32,
}

fn default_max_attempts() -> u32 {
    5
}

fn default_backoff() -> Duration {
    Duration::from_secs(1)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(60)
}

fn default_subscription_concurrency() -> u32 {
    10
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

impl Subscription {
    /// A subscription to `topic` with the default policy.
    pub fn to(topic: TopicPattern) -> Self {
        Subscription {
            topic,
            max_attempts: default_max_attempts(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            concurrency: default_subscription_concurrency(),
        }
    }

    /// How long to wait before attempt `attempt + 1`, after `attempt`
    /// failed attempts.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// Checks the policy's numbers.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let problem = if self.max_attempts == 0 || self.max_attempts > 1000 {
            "max_attempts must be between 1 and 1000"
        } else if self.concurrency == 0 || self.concurrency > 10_000 {
            "concurrency must be between 1 and 10000"
        } else if self.max_backoff < self.backoff {
            "max_backoff must not be shorter than backoff"
        } else {
            return Ok(());
        };
        Err(InvalidConfig::Subscription {
            topic: self.topic.clone(),
            problem,
        })
    }
}

/// The stable name of one service's subscription: `service:pattern`.
pub fn subscription_id(service: &str, pattern: &TopicPattern) -> String {
    format!("{service}:{pattern}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut s = Subscription::to("a.b".parse().unwrap());
        s.backoff = Duration::from_millis(100);
        s.max_backoff = Duration::from_secs(1);
        assert_eq!(s.delay_after(1), Duration::from_millis(100));
        assert_eq!(s.delay_after(2), Duration::from_millis(200));
        assert_eq!(s.delay_after(4), Duration::from_millis(800));
        assert_eq!(s.delay_after(5), Duration::from_secs(1));
        assert_eq!(s.delay_after(60), Duration::from_secs(1));
    }

    #[test]
    fn subscriptions_parse_with_defaults() {
        let s: Subscription = toml::from_str("topic = \"users.>\"\nbackoff = \"250ms\"").unwrap();
        assert_eq!(s.topic.as_str(), "users.>");
        assert_eq!(s.backoff, Duration::from_millis(250));
        assert_eq!(s.max_attempts, 5);
        assert!(s.validate().is_ok());
        assert!(toml::from_str::<Subscription>("topic = \"a\"\nretries = 1").is_err());
    }
}
