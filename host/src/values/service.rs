//! What a service is, apart from its code: its configuration — the routes
//! it claims, the events it takes and publishes, its schedules, limits and
//! capabilities.

use crate::values::capabilities::{EnvValue, FileMount, OutboundRule};
use crate::values::event::{SYSTEM_PREFIX, Subscription};
use crate::values::gateway::{AuthConfig, CorsConfig, RateLimit};
pub use crate::values::invalid::InvalidConfig;
use crate::values::limits::Limits;
pub use crate::values::name::ServiceName;
use crate::values::reuse::Reuse;
use crate::values::route::Route;
use crate::values::schedule::Schedule;
use crate::values::topic::TopicPattern;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// Who may call its routes; anyone, by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// How often each caller may call its routes; unlimited by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Which web origins may call its routes from a browser; none by
    /// default (no CORS headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsConfig>,
    /// Whether its instances serve several invocations (see
    /// [`crate::values::reuse`]); by default each gets a fresh one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<Reuse>,
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
            auth: None,
            rate_limit: None,
            cors: None,
            reuse: None,
        }
    }

    /// Checks what serde cannot: at least one trigger, nothing twice, sane
    /// retry policies and schedules.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.routes.is_empty() && self.subscriptions.is_empty() && self.schedules.is_empty() {
            return Err(InvalidConfig::NoTrigger);
        }
        for (i, route) in self.routes.iter().enumerate() {
            if self.routes[..i].contains(route) {
                return Err(InvalidConfig::RouteTwice(route.clone()));
            }
        }
        for (i, sub) in self.subscriptions.iter().enumerate() {
            check_subscription(sub, &self.subscriptions[..i])?;
        }
        for (i, schedule) in self.schedules.iter().enumerate() {
            check_schedule(schedule, &self.schedules[..i])?;
        }
        crate::values::capabilities::validate_files(&self.files)?;
        crate::values::capabilities::validate_env(&self.env)?;
        self.validate_edge()
    }

    /// Checks the edge settings: each on its own, and that there are
    /// routes for them to apply to.
    pub fn validate_edge(&self) -> Result<(), InvalidConfig> {
        let edge =
            |part: &'static str| move |problem: String| InvalidConfig::Edge { part, problem };
        let parts: [(&'static str, bool); 3] = [
            ("auth", self.auth.is_some()),
            ("rate_limit", self.rate_limit.is_some()),
            ("cors", self.cors.is_some()),
        ];
        for (part, set) in parts {
            if set && self.routes.is_empty() {
                return Err(edge(part)(
                    "it applies to HTTP routes, and the service has none".into(),
                ));
            }
        }
        if let Some(auth) = &self.auth {
            auth.validate().map_err(edge("auth"))?;
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate().map_err(edge("rate_limit"))?;
        }
        if let Some(cors) = &self.cors {
            cors.validate().map_err(edge("cors"))?;
        }
        Ok(())
    }

    /// Whether invoking the service needs the `berth:events/handler`
    /// export (it has subscriptions or schedules).
    pub fn needs_event_handler(&self) -> bool {
        !self.subscriptions.is_empty() || !self.schedules.is_empty()
    }
}

/// Checks one subscription of a service, after the ones `before` it.
pub fn check_subscription(
    sub: &Subscription,
    before: &[Subscription],
) -> Result<(), InvalidConfig> {
    sub.validate()?;
    if before.iter().any(|s| s.topic == sub.topic) {
        return Err(InvalidConfig::SubscriptionTwice(sub.topic.clone()));
    }
    if sub.topic.as_str().starts_with(SYSTEM_PREFIX) {
        return Err(InvalidConfig::Reserved(sub.topic.clone()));
    }
    Ok(())
}

/// Checks one schedule of a service, after the ones `before` it.
pub fn check_schedule(schedule: &Schedule, before: &[Schedule]) -> Result<(), InvalidConfig> {
    schedule.validate()?;
    if before.iter().any(|s| s.name == schedule.name) {
        return Err(InvalidConfig::ScheduleTwice(schedule.name.clone()));
    }
    Ok(())
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
        assert!(dup.validate().unwrap_err().to_string().contains("twice"));
        let none: ServiceConfig = serde_json::from_str(r#"{"routes": []}"#).unwrap();
        assert!(
            none.validate()
                .unwrap_err()
                .to_string()
                .contains("at least one trigger")
        );
        let events: ServiceConfig =
            serde_json::from_str(r#"{"subscriptions": [{"topic": "a.*"}], "publish": ["b.>"]}"#)
                .unwrap();
        assert!(events.validate().is_ok());
        assert!(events.needs_event_handler());
        let twice: ServiceConfig =
            serde_json::from_str(r#"{"subscriptions": [{"topic": "a"}, {"topic": "a"}]}"#).unwrap();
        assert!(twice.validate().unwrap_err().to_string().contains("twice"));
        let system: ServiceConfig =
            serde_json::from_str(r#"{"subscriptions": [{"topic": "berth.>"}]}"#).unwrap();
        assert!(
            system
                .validate()
                .unwrap_err()
                .to_string()
                .contains("reserved")
        );
        assert!(serde_json::from_str::<ServiceConfig>(r#"{"routes": ["/a"], "x": 1}"#).is_err());
    }
}
