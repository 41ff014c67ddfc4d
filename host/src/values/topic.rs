//! Topics (`users.signed-up`) and the patterns subscriptions select them
//! with (`users.*`, `users.>`), in NATS subject syntax so that the same
//! names work on a NATS JetStream bus.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The topic prefix reserved for events the host makes itself.
pub const SYSTEM_PREFIX: &str = "berth.";

/// Longest topic or pattern, in bytes.
const MAX_LEN: usize = 255;

/// A topic: dot-separated tokens of letters, digits, `-` and `_`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Topic(String);

/// A subscription's topic pattern: tokens, `*` for any one token, and `>`
/// as the last token for one or more tokens.
///
/// | pattern | matches |
/// |---|---|
/// | `users.signed-up` | exactly that topic |
/// | `users.*` | `users.signed-up`, `users.deleted`, not `users.a.b` |
/// | `users.>` | every topic below `users.` |
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicPattern(String);

/// Why a string is not a valid topic or pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic {topic:?}: {reason}")]
pub struct InvalidTopic {
    /// The rejected text.
    pub topic: String,
    /// What is wrong.
    pub reason: &'static str,
}

fn check(s: &str, pattern: bool) -> Result<(), InvalidTopic> {
    let fail = |reason| {
        Err(InvalidTopic {
            topic: s.to_owned(),
            reason,
        })
    };
    if s.is_empty() || s.len() > MAX_LEN {
        return fail("a topic must be 1 to 255 characters long");
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return fail("a topic is tokens separated by single dots (no empty token)");
        }
        if pattern && *token == "*" {
            continue;
        }
        if pattern && *token == ">" {
            if i + 1 != tokens.len() {
                return fail("\">\" may only be the last token");
            }
            continue;
        }
        if !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return fail(if pattern {
                "a token is letters, digits, \"-\" and \"_\", or a \"*\" or final \">\" wildcard"
            } else {
                "a token is letters, digits, \"-\" and \"_\" (no wildcards in a topic)"
            });
        }
    }
    Ok(())
}

impl Topic {
    /// Parses and validates a topic.
    pub fn parse(s: &str) -> Result<Topic, InvalidTopic> {
        check(s, false).map(|()| Topic(s.to_owned()))
    }

    /// The topic as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the host reserves this topic (`berth.…`).
    pub fn is_system(&self) -> bool {
        self.0.starts_with(SYSTEM_PREFIX)
    }
}

impl TopicPattern {
    /// Parses and validates a pattern.
    pub fn parse(s: &str) -> Result<TopicPattern, InvalidTopic> {
        check(s, true).map(|()| TopicPattern(s.to_owned()))
    }

    /// The pattern as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pattern that matches exactly `topic` (a topic has no
    /// wildcards, so it is a valid pattern as it is).
    pub fn exact(topic: &Topic) -> TopicPattern {
        TopicPattern(topic.0.clone())
    }

    /// Whether `topic` is selected by this pattern.
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut pattern = self.0.split('.');
        let mut tokens = topic.0.split('.');
        loop {
            match (pattern.next(), tokens.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(t)) if p == t => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

macro_rules! string_type {
    ($ty:ident) => {
        impl FromStr for $ty {
            type Err = InvalidTopic;
            fn from_str(s: &str) -> Result<Self, InvalidTopic> {
                $ty::parse(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = InvalidTopic;
            fn try_from(s: String) -> Result<Self, InvalidTopic> {
                $ty::parse(&s)
            }
        }

        impl From<$ty> for String {
            fn from(t: $ty) -> String {
                t.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_type!(Topic);
string_type!(TopicPattern);

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::parse(s).unwrap()
    }

    fn p(s: &str) -> TopicPattern {
        TopicPattern::parse(s).unwrap()
    }

    #[test]
    fn topics() {
        for ok in ["a", "users.signed-up", "a.b_c.d-e.9"] {
            assert!(Topic::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "a b",
            "a.*",
            "a.>",
            "ä",
            &"x".repeat(256),
        ] {
            assert!(Topic::parse(bad).is_err(), "{bad}");
        }
        assert!(t("berth.schedule.x").is_system());
        assert!(!t("berthx").is_system());
    }

    #[test]
    fn patterns() {
        assert!(p("users.*").matches(&t("users.signed-up")));
        assert!(!p("users.*").matches(&t("users.a.b")));
        assert!(!p("users.*").matches(&t("users")));
        assert!(p("users.>").matches(&t("users.a.b")));
        assert!(!p("users.>").matches(&t("users")));
        assert!(p("*.created").matches(&t("orders.created")));
        assert!(p("a.b").matches(&t("a.b")));
        assert!(!p("a.b").matches(&t("a.b.c")));
        assert!(p(">").matches(&t("anything.at.all")));
        assert!(TopicPattern::parse("a.>.b").is_err());
        assert!(TopicPattern::parse("a.b*").is_err());
    }
}
