//! Why a service's configuration is refused: one error type for every
//! check of [`crate::values::service::ServiceConfig`] and its parts, with
//! the messages manifests and the admin API show.

use crate::values::route::Route;
use crate::values::topic::TopicPattern;
use std::path::PathBuf;

/// Why a service's configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidConfig {
    /// Nothing would ever invoke it.
    #[error("a service needs at least one trigger: a route, a subscription or a schedule")]
    NoTrigger,
    /// A route appears twice.
    #[error("route {0} is listed twice")]
    RouteTwice(Route),
    /// A topic pattern is subscribed to twice.
    #[error("the subscription to {0} is listed twice")]
    SubscriptionTwice(TopicPattern),
    /// A subscription to the host's own topics.
    #[error("{0} is reserved for the host's own events")]
    Reserved(TopicPattern),
    /// A subscription's policy is out of range.
    #[error("subscription to {topic}: {problem}")]
    Subscription {
        /// The subscription's pattern.
        topic: TopicPattern,
        /// What is wrong.
        problem: &'static str,
    },
    /// A schedule's name is not a token.
    #[error("invalid schedule name {0:?}: 1 to 63 letters, digits, \"-\" and \"_\"")]
    ScheduleName(String),
    /// A schedule's settings are wrong.
    #[error("schedule {name:?}: {problem}")]
    Schedule {
        /// The schedule.
        name: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// Two schedules share a name.
    #[error("schedule {0:?} is listed twice")]
    ScheduleTwice(String),
    /// Two directories are mounted at one guest path.
    #[error("guest path {0} is mounted twice")]
    MountedTwice(String),
    /// A writable mount contains another one, or lies inside one.
    #[error(
        "host paths {} and {} overlap, and {} is writable: mount directories that do not contain each other",
        writable.display(), other.display(), writable.display()
    )]
    Overlap {
        /// The writable mount's host path.
        writable: PathBuf,
        /// The other one.
        other: PathBuf,
    },
    /// An environment variable's name is not one.
    #[error(
        "invalid environment variable name {0:?}: use letters, digits and \"_\", not starting with a digit"
    )]
    EnvName(String),
    /// An edge setting (`auth`, `rate_limit`, `cors`) is wrong.
    #[error("{part}: {problem}")]
    Edge {
        /// Which setting.
        part: &'static str,
        /// What is wrong.
        problem: String,
    },
}
