//! What a service is, apart from its code: a validated name, the routes it
//! claims and the limits it runs under.

use crate::capabilities::{EnvValue, FileMount, OutboundRule};
use crate::events::schedule::Schedule;
use crate::events::{Subscription, TopicPattern};
use crate::limits::Limits;
use crate::route::Route;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A service name: 1–63 lowercase letters, digits and hyphens, starting and
/// ending with a letter or digit (a DNS label, so that a name can later
/// address the service as a host).
///
/// ```toml
/// [service.user-api]
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(Arc<str>);

/// Why a string is not a valid service name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service name {name:?}: {reason}")]
pub struct InvalidServiceName {
    /// The rejected text.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ServiceName {
    /// Parses and validates a service name.
    pub fn parse(s: &str) -> Result<Self, InvalidServiceName> {
        let fail = |reason| {
            Err(InvalidServiceName {
                name: s.to_owned(),
                reason,
            })
        };
        if s.is_empty() || s.len() > 63 {
            return fail("a name must be 1 to 63 characters long");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return fail("a name may only contain lowercase letters, digits and \"-\"");
        }
        if s.starts_with('-') || s.ends_with('-') {
            return fail("a name must start and end with a letter or digit");
        }
        Ok(ServiceName(s.into()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServiceName {
    type Error = InvalidServiceName;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        ServiceName::parse(&s)
    }
}

impl From<ServiceName> for String {
    fn from(n: ServiceName) -> String {
        n.0.to_string()
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a service runs, apart from its name and its component: what one
/// revision records besides the artifact.
///
/// ```json
/// {"routes": ["/hello/..."], "limits": {"memory": "64MiB", "timeout": "10s"},
///  "subscriptions": [{"topic": "users.*"}], "publish": ["emails.>"],
///  "schedules": [{"name": "nightly", "cron": "0 3 * * *"}]}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The HTTP routes it claims.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The limits every invocation runs under.
    #[serde(default)]
    pub limits: Limits,
    /// The topics it receives events from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<Subscription>,
    /// The topics it may publish on (patterns); none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<TopicPattern>,
    /// When it is invoked on its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<Schedule>,
    /// Host directories its guest sees.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileMount>,
    /// Its guest's environment variables (values, or secret names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, EnvValue>,
    /// The origins its guest may send HTTP requests to (other services:
    /// `http://NAME.svc`); none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound: Vec<OutboundRule>,
}

impl ServiceConfig {
    /// A configuration with only routes.
    pub fn http(routes: Vec<Route>, limits: Limits) -> Self {
        ServiceConfig {
            routes,
            limits,
            subscriptions: Vec::new(),
            publish: Vec::new(),
            schedules: Vec::new(),
            files: Vec::new(),
            env: BTreeMap::new(),
            allowed_outbound: Vec::new(),
        }
    }

    /// Checks what serde cannot: at least one trigger, nothing twice, sane
    /// retry policies and schedules.
    pub fn validate(&self) -> Result<(), String> {
        if self.routes.is_empty() && self.subscriptions.is_empty() && self.schedules.is_empty() {
            return Err(
                "a service needs at least one trigger: a route, a subscription or a schedule"
                    .into(),
            );
        }
        for (i, route) in self.routes.iter().enumerate() {
            if self.routes[..i].contains(route) {
                return Err(format!("route {route} is listed twice"));
            }
        }
        for (i, sub) in self.subscriptions.iter().enumerate() {
            sub.validate()?;
            if self.subscriptions[..i].iter().any(|s| s.topic == sub.topic) {
                return Err(format!("the subscription to {} is listed twice", sub.topic));
            }
            if sub.topic.as_str().starts_with(crate::events::SYSTEM_PREFIX) {
                return Err(format!(
                    "{} is reserved for the host's own events",
                    sub.topic
                ));
            }
        }
        for (i, schedule) in self.schedules.iter().enumerate() {
            schedule.validate()?;
            if self.schedules[..i].iter().any(|s| s.name == schedule.name) {
                return Err(format!("schedule {:?} is listed twice", schedule.name));
            }
        }
        crate::capabilities::validate_files(&self.files)?;
        crate::capabilities::validate_env(&self.env)?;
        Ok(())
    }

    /// Whether invoking the service needs the `berth:events/handler`
    /// export (it has subscriptions or schedules).
    pub fn needs_event_handler(&self) -> bool {
        !self.subscriptions.is_empty() || !self.schedules.is_empty()
    }
}

/// A service's name and configuration: everything but its component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The service's name.
    pub name: ServiceName,
    /// Its routes and limits.
    pub config: ServiceConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        let ok: ServiceConfig = serde_json::from_str(r#"{"routes": ["/a", "/b/..."]}"#).unwrap();
        assert!(ok.validate().is_ok());
        assert_eq!(ok.limits, Limits::default());
        let dup: ServiceConfig = serde_json::from_str(r#"{"routes": ["/a", "/a"]}"#).unwrap();
        assert!(dup.validate().unwrap_err().contains("twice"));
        let none: ServiceConfig = serde_json::from_str(r#"{"routes": []}"#).unwrap();
        assert!(
            none.validate()
                .unwrap_err()
                .contains("at least one trigger")
        );
        let events: ServiceConfig =
            serde_json::from_str(r#"{"subscriptions": [{"topic": "a.*"}], "publish": ["b.>"]}"#)
                .unwrap();
        assert!(events.validate().is_ok());
        assert!(events.needs_event_handler());
        let twice: ServiceConfig =
            serde_json::from_str(r#"{"subscriptions": [{"topic": "a"}, {"topic": "a"}]}"#).unwrap();
        assert!(twice.validate().unwrap_err().contains("twice"));
        let system: ServiceConfig =
            serde_json::from_str(r#"{"subscriptions": [{"topic": "berth.>"}]}"#).unwrap();
        assert!(system.validate().unwrap_err().contains("reserved"));
        assert!(serde_json::from_str::<ServiceConfig>(r#"{"routes": ["/a"], "x": 1}"#).is_err());
    }

    #[test]
    fn names() {
        for ok in ["a", "hello", "user-api", "v2", "a1-b2"] {
            assert!(ServiceName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Hello", "-x", "x-", "a_b", "a.b", &"x".repeat(64)] {
            assert!(ServiceName::parse(bad).is_err(), "{bad}");
        }
    }
}
