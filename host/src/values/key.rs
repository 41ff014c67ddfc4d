//! API keys: what a host keeps of one (never the key itself: its SHA-256),
//! and how a presented key is told from a JWT.
//!
//! A key is `berth_` and 43 base64url characters (32 random bytes). It is
//! shown once, by `berth keys create`; the host stores its hash, the
//! services it opens, and when it expires or was revoked.

use crate::values::name::ServiceName;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What every API key starts with.
pub const KEY_PREFIX: &str = "berth_";

/// An API key's name: 1 to 63 letters, digits, `.`, `-` and `_`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyName(String);

/// Why a string is not a key name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key name {0:?}: 1 to 63 letters, digits, \".\", \"-\" and \"_\"")]
pub struct InvalidKeyName(pub String);

impl TryFrom<String> for KeyName {
    type Error = InvalidKeyName;

    fn try_from(s: String) -> Result<KeyName, InvalidKeyName> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if ok {
            Ok(KeyName(s))
        } else {
            Err(InvalidKeyName(s))
        }
    }
}

impl From<KeyName> for String {
    fn from(name: KeyName) -> String {
        name.0
    }
}

impl std::str::FromStr for KeyName {
    type Err = InvalidKeyName;

    fn from_str(s: &str) -> Result<KeyName, InvalidKeyName> {
        KeyName::try_from(s.to_owned())
    }
}

impl std::fmt::Display for KeyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl KeyName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a host keeps of an API key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Its name, shown to the guest as the caller.
    pub name: KeyName,
    /// The services it opens.
    pub services: Vec<ServiceName>,
    /// The SHA-256 of the key, in hex.
    pub hash: String,
    /// When it was made (ms since the epoch).
    pub created_ms: i64,
    /// When it stops working, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    /// When it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<i64>,
}

/// Whether a key works now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// It works.
    Active,
    /// Its time is up.
    Expired,
    /// It was revoked.
    Revoked,
}

impl KeyState {
    /// The state's name, as `berth keys ls` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Expired => "expired",
            KeyState::Revoked => "revoked",
        }
    }
}

impl ApiKey {
    /// Whether it works at `now_ms`.
    pub fn state(&self, now_ms: i64) -> KeyState {
        if self.revoked_ms.is_some() {
            KeyState::Revoked
        } else if self.expires_ms.is_some_and(|at| at <= now_ms) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }

    /// Whether it opens `service`.
    pub fn opens(&self, service: &ServiceName) -> bool {
        self.services.iter().any(|s| s == service)
    }
}

/// The hash a key is stored and looked up by.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Whether a presented credential is an API key (else it may be a JWT).
pub fn is_api_key(credential: &str) -> bool {
    credential.starts_with(KEY_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_states() {
        assert!("ci-deploy.2".parse::<KeyName>().is_ok());
        assert!("".parse::<KeyName>().is_err());
        assert!("a b".parse::<KeyName>().is_err());
        let mut key = ApiKey {
            name: "k".parse().unwrap(),
            services: vec!["api".parse().unwrap()],
            hash: hash("berth_x"),
            created_ms: 0,
            expires_ms: Some(1000),
            revoked_ms: None,
        };
        assert_eq!(key.state(999), KeyState::Active);
        assert_eq!(key.state(1000), KeyState::Expired);
        key.revoked_ms = Some(5);
        assert_eq!(key.state(0), KeyState::Revoked);
        assert!(key.opens(&"api".parse().unwrap()));
        assert!(!key.opens(&"other".parse().unwrap()));
        assert_eq!(hash("abc").len(), 64);
        assert!(is_api_key("berth_abc") && !is_api_key("eyJhbGciOi"));
    }
}
