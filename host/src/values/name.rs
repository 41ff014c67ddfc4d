//! Service names.

use serde::{Deserialize, Serialize};
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

impl std::str::FromStr for ServiceName {
    type Err = InvalidServiceName;

    fn from_str(s: &str) -> Result<Self, InvalidServiceName> {
        ServiceName::parse(s)
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

#[cfg(test)]
mod tests {
    use super::*;

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
