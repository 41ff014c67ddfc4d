//! What a service's guest is given beyond clocks and randomness, declared
//! in its configuration and nowhere else: directories (`files`),
//! environment variables and secrets (`env`), and the HTTP origins it may
//! call (`allowed_outbound`), other Berth services among them.
//!
//! ```toml
//! [service.api]
//! files = [{ host = "./static", guest = "/static" }]       # mode = "ro" by default
//! allowed_outbound = ["https://api.example.com", "http://127.0.0.1:*", "http://users.svc"]
//!
//! [service.api.env]
//! GREETING = "hello"
//! DB_PASSWORD = { secret = "db-password" }
//! ```
//!
//! A secret is stored as its name only: its value is read from the host's
//! secrets source (the `wasm::secrets` module) each time an instance is
//! made, so an updated secret takes effect at the next invocation, and the
//! value never reaches the state database, the admin API or the logs.

use crate::values::invalid::InvalidConfig;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The domain that names Berth services in outbound URLs:
/// `http://NAME.svc/path` calls service `NAME` in-process.
pub const SERVICE_DOMAIN: &str = "svc";

/// How deep service-to-service calls may nest (a calls b calls c …);
/// a call past it fails with `loop-detected`.
pub const MAX_CALL_DEPTH: usize = 8;

/// A capability value that does not parse: a guest path, a secret name
/// or an outbound origin (the message says which and why).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidCapability(pub String);

/// Why a mounted host directory cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    /// A relative path where only an absolute one can be resolved.
    #[error("host path {0} must be absolute")]
    Relative(PathBuf),
    /// The path does not resolve.
    #[error("host path {path} cannot be used: {error}")]
    Unusable {
        /// The path as given.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// The path is not a directory.
    #[error("host path {0} is not a directory")]
    NotADirectory(PathBuf),
    /// A symlink was put on the path since it was deployed.
    #[error("{path} now leads to {now} (a symlink was put on its path); refusing to mount it")]
    Moved {
        /// The deployed path.
        path: PathBuf,
        /// Where it leads now.
        now: PathBuf,
    },
    /// The deployed path no longer resolves.
    #[error("{path}: {error}")]
    Gone {
        /// The deployed path.
        path: PathBuf,
        /// Why.
        error: String,
    },
}

/// A host directory given to the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMount {
    /// The host directory. In a manifest, relative to the manifest's
    /// directory; once deployed, absolute and canonical.
    pub host: PathBuf,
    /// Where the guest sees it: an absolute path.
    pub guest: GuestPath,
    /// `ro` (the default) or `rw`.
    #[serde(default)]
    pub mode: Mode,
}

/// Whether a mount may be written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Read-only: files and directories can be read and listed.
    #[default]
    Ro,
    /// Read-write: files can also be created, written, renamed, removed.
    Rw,
}

impl FileMount {
    /// Resolves the host path against `base` (for a relative one), checks
    /// it is an existing directory, and makes it canonical (symlinks
    /// resolved), so what the guest gets is fixed at deploy time.
    pub fn resolve(&mut self, base: Option<&Path>) -> Result<(), MountError> {
        let path = match base {
            Some(base) if self.host.is_relative() => base.join(&self.host),
            _ if self.host.is_relative() => return Err(MountError::Relative(self.host.clone())),
            _ => self.host.clone(),
        };
        let canonical = std::fs::canonicalize(&path).map_err(|e| MountError::Unusable {
            path: self.host.clone(),
            error: e.to_string(),
        })?;
        if !canonical.is_dir() {
            return Err(MountError::NotADirectory(self.host.clone()));
        }
        self.host = canonical;
        Ok(())
    }
}

/// An absolute, normalized guest path: `/` followed by segments that are
/// not empty, `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestPath(String);

impl GuestPath {
    /// Parses a guest path.
    pub fn parse(s: &str) -> Result<GuestPath, InvalidCapability> {
        let bad = |why: &str| Err(InvalidCapability(format!("guest path {s:?} {why}")));
        if !s.starts_with('/') {
            return bad("must be absolute (start with \"/\")");
        }
        if s != "/" {
            for segment in s[1..].split('/') {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return bad("must not contain empty, \".\" or \"..\" segments");
                }
            }
        }
        if s.contains('\0') {
            return bad("must not contain NUL");
        }
        Ok(GuestPath(s.to_owned()))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GuestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for GuestPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for GuestPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        GuestPath::parse(&s).map_err(de::Error::custom)
    }
}

/// Checks a service's mounts: no guest path twice.
pub fn validate_files(files: &[FileMount]) -> Result<(), InvalidConfig> {
    for (i, mount) in files.iter().enumerate() {
        if files[..i].iter().any(|m| m.guest == mount.guest) {
            return Err(InvalidConfig::MountedTwice(mount.guest.to_string()));
        }
    }
    Ok(())
}

/// Checks that no mount lies inside a writable one (or contains one): a
/// guest could otherwise replace the inner directory with a symlink in
/// its writable mount and have the next instance preopen wherever it
/// points. Paths must be resolved (canonical) first.
pub fn validate_nesting(files: &[FileMount]) -> Result<(), InvalidConfig> {
    for rw in files.iter().filter(|m| m.mode == Mode::Rw) {
        for other in files {
            if std::ptr::eq(rw, other) {
                continue;
            }
            if other.host.starts_with(&rw.host) || rw.host.starts_with(&other.host) {
                return Err(InvalidConfig::Overlap {
                    writable: rw.host.clone(),
                    other: other.host.clone(),
                });
            }
        }
    }
    Ok(())
}

impl FileMount {
    /// Checks, when an instance is made, that the host path still names
    /// the directory it named at deploy time with no symlink on the way
    /// (a component replaced by a symlink would redirect the mount).
    pub fn check_unchanged(&self) -> Result<(), MountError> {
        match std::fs::canonicalize(&self.host) {
            Ok(path) if path == self.host => Ok(()),
            Ok(now) => Err(MountError::Moved {
                path: self.host.clone(),
                now,
            }),
            Err(e) => Err(MountError::Gone {
                path: self.host.clone(),
                error: e.to_string(),
            }),
        }
    }
}

/// The value of an environment variable: text, or a secret's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvValue {
    /// This text, as configured (visible in the service's configuration).
    Value(String),
    /// The value of this secret, read when an instance is made.
    Secret(SecretName),
}

impl Serialize for EnvValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EnvValue::Value(v) => s.serialize_str(v),
            EnvValue::Secret(name) => {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("secret", name.as_str())?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, or a table { secret = \"name\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                if v.contains('\0') {
                    return Err(E::custom("an environment value must not contain NUL"));
                }
                Ok(EnvValue::Value(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EnvValue, A::Error> {
                let mut secret = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "secret" if secret.is_none() => secret = Some(map.next_value()?),
                        "secret" => return Err(de::Error::duplicate_field("secret")),
                        other => return Err(de::Error::unknown_field(other, &["secret"])),
                    }
                }
                secret
                    .map(EnvValue::Secret)
                    .ok_or_else(|| de::Error::missing_field("secret"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Checks environment variable names: letters, digits and `_`, not
/// starting with a digit.
pub fn validate_env(env: &BTreeMap<String, EnvValue>) -> Result<(), InvalidConfig> {
    for name in env.keys() {
        let ok = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(InvalidConfig::EnvName(name.clone()));
        }
    }
    Ok(())
}

/// The secrets `env` refers to.
pub fn secret_names(env: &BTreeMap<String, EnvValue>) -> impl Iterator<Item = &SecretName> {
    env.values().filter_map(|v| match v {
        EnvValue::Secret(name) => Some(name),
        EnvValue::Value(_) => None,
    })
}

/// A secret's name: 1–63 lowercase letters, digits, `-` and `_`, starting
/// with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretName(String);

impl SecretName {
    /// Parses a secret name.
    pub fn parse(s: &str) -> Result<SecretName, InvalidCapability> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(SecretName(s.to_owned()))
        } else {
            Err(InvalidCapability(format!(
                "invalid secret name {s:?}: 1 to 63 lowercase letters, digits, \"-\" and \"_\", starting with a letter or digit"
            )))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host environment variable that may hold it: the prefix, then
    /// the name in upper case with `-` as `_` (`db-password` →
    /// `BERTH_SECRET_DB_PASSWORD`).
    pub fn env_var(&self, prefix: &str) -> String {
        let mut var = String::with_capacity(prefix.len() + self.0.len());
        var.push_str(prefix);
        var.extend(self.0.chars().map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        }));
        var
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SecretName::parse(&s).map_err(de::Error::custom)
    }
}

/// An origin a service may send HTTP requests to: a scheme, a host (or
/// `*.suffix`), and a port (or `*`; absent: the scheme's default port).
///
/// `http://NAME.svc` origins name Berth services (see [`SERVICE_DOMAIN`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundRule {
    https: bool,
    host: HostPattern,
    port: Option<u16>,
    any_port: bool,
    text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com`.
    Suffix(String),
}

impl OutboundRule {
    /// Parses `scheme://host[:port]`, where the host may be `*.domain` and
    /// the port `*`.
    pub fn parse(s: &str) -> Result<OutboundRule, InvalidCapability> {
        let bad = |why: &str| InvalidCapability(format!("invalid outbound origin {s:?}: {why}"));
        let (https, rest) = if let Some(rest) = s.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad("it must start with http:// or https://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "give an origin (scheme://host[:port]), without a path, query or user",
            ));
        }
        let (host, port) = if rest.starts_with('[') {
            // An IPv6 literal: `[::1]` or `[::1]:port`.
            let end = rest.find(']').ok_or_else(|| bad("unclosed ["))? + 1;
            match &rest[end..] {
                "" => (&rest[..end], None),
                p => (
                    &rest[..end],
                    Some(p.strip_prefix(':').ok_or_else(|| bad("invalid port"))?),
                ),
            }
        } else {
            match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        let (port, any_port) = match port {
            None => (None, false),
            Some("*") => (None, true),
            Some(p) => (
                Some(
                    p.parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| bad("the port must be a number from 1 to 65535 or *"))?,
                ),
                false,
            ),
        };
        let host = host.to_ascii_lowercase();
        let valid_host = |h: &str| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
        };
        let host = if let Some(suffix) = host.strip_prefix("*.") {
            if !valid_host(suffix) {
                return Err(bad("invalid host"));
            }
            HostPattern::Suffix(format!(".{suffix}"))
        } else {
            if !valid_host(&host) {
                return Err(bad("invalid host (a wildcard must be a leading \"*.\")"));
            }
            HostPattern::Exact(host)
        };
        Ok(OutboundRule {
            https,
            host,
            port,
            any_port,
            text: s.to_owned(),
        })
    }

    /// Whether a request to `scheme://host:port` is allowed by this rule
    /// (`host` in lower case).
    pub fn allows(&self, https: bool, host: &str, port: u16) -> bool {
        if self.https != https {
            return false;
        }
        let default_port = if https { 443 } else { 80 };
        let port_ok = self.any_port || self.port.unwrap_or(default_port) == port;
        let host_ok = match &self.host {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(suffix) => host.ends_with(suffix.as_str()),
        };
        port_ok && host_ok
    }

    /// The rule as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this rule names the address `ip` itself: its host is an IP
    /// literal (`169.254.169.254`, `[fd00:ec2::254]`), not a name, a
    /// wildcard or another spelling of a number (`2852039166`).
    pub fn names_address(&self, ip: std::net::IpAddr) -> bool {
        let HostPattern::Exact(host) = &self.host else {
            return false;
        };
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|named| named.to_canonical() == ip.to_canonical())
    }
}

/// Whether `ip` is link-local or a cloud's metadata service: the
/// addresses where a cloud machine's instance credentials are served
/// (169.254.169.254 on most clouds; AWS's `fd00:ec2::/32`, its IPv6
/// metadata service and EKS's pod identity agent; Google's IPv6
/// `fd20:ce::/32`; Alibaba's `100.100.100.200`; Azure's WireServer
/// `168.63.129.16`) and the link-local networks around them, also when
/// carried inside an IPv6 address (IPv4-mapped or -compatible, NAT64's
/// `64:ff9b::/96`, 6to4's `2002::/16`). A guest reaches one only by a
/// request to the address itself that its allow-list names (see
/// [`OutboundRule::names_address`]); a name that resolves to it, or any
/// other spelling of it, is refused.
pub fn is_metadata_address(ip: std::net::IpAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr};
    let v4 = |v4: Ipv4Addr| {
        v4.is_link_local() || matches!(v4.octets(), [100, 100, 100, 200] | [168, 63, 129, 16])
    };
    match ip.to_canonical() {
        IpAddr::V4(ip) => v4(ip),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let o = v6.octets();
            let embedded = |at: usize| Ipv4Addr::new(o[at], o[at + 1], o[at + 2], o[at + 3]);
            v6.is_unicast_link_local()
                || (s[0] == 0xfd00 && s[1] == 0x0ec2)
                || (s[0] == 0xfd20 && s[1] == 0x00ce)
                // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d).
                || (s[..6] == [0; 6] && v4(embedded(12)))
                || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && v4(embedded(12)))
                // 6to4: 2002:aabb:ccdd::/48.
                || (s[0] == 0x2002 && v4(embedded(2)))
        }
    }
}

impl fmt::Display for OutboundRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for OutboundRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for OutboundRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        OutboundRule::parse(&s).map_err(de::Error::custom)
    }
}

/// Where an outgoing request goes, by the service's allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Not on the allow-list.
    Denied,
    /// Another Berth service, called in-process.
    Service(String),
    /// The network.
    Remote,
}

/// Decides where a request to `uri` goes for a service allowed `rules`.
pub fn destination(rules: &[OutboundRule], uri: &http::Uri) -> Destination {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Destination::Denied,
    };
    // `user@host` authorities are refused outright: what is checked here
    // and what a connection would be made to must be the same text.
    let Some(host) = uri.host() else {
        return Destination::Denied;
    };
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Destination::Denied;
    }
    let host = host.to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    if !rules.iter().any(|r| r.allows(https, &host, port)) {
        return Destination::Denied;
    }
    match host
        .strip_suffix(SERVICE_DOMAIN)
        .and_then(|h| h.strip_suffix('.'))
    {
        Some(name) if !https && !name.contains('.') => Destination::Service(name.to_owned()),
        _ => Destination::Remote,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_addresses_are_allowed_only_by_rules_naming_them() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        for metadata in [
            "169.254.169.254",
            "169.254.0.1",
            "100.100.100.200",
            "168.63.129.16",
            "fd00:ec2::254",
            "fd00:ec2::23",
            "fd20:ce::254",
            "fe80::1",
            "::ffff:169.254.169.254",
            "::169.254.169.254",
            "64:ff9b::169.254.169.254",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(is_metadata_address(ip(metadata)), "{metadata}");
        }
        for other in [
            "10.0.0.1",
            "100.100.100.201",
            "127.0.0.1",
            "fd00::254",
            "::1",
            "::",
            "64:ff9b::10.0.0.1",
            "2002:a00:1::1",
            "2001:db8::a9fe:a9fe",
        ] {
            assert!(!is_metadata_address(ip(other)), "{other}");
        }
        let named =
            |rule: &str, addr: &str| OutboundRule::parse(rule).unwrap().names_address(ip(addr));
        assert!(named("http://169.254.169.254", "169.254.169.254"));
        assert!(named("http://169.254.169.254:*", "::ffff:169.254.169.254"));
        assert!(named("http://[fd00:ec2::254]", "fd00:ec2::254"));
        assert!(named("http://[::ffff:a9fe:a9fe]", "169.254.169.254"));
        // Names, wildcards and other spellings of the number do not.
        assert!(!named("http://metadata.google.internal", "169.254.169.254"));
        assert!(!named("http://*.254", "169.254.169.254"));
        assert!(!named("http://2852039166", "169.254.169.254"));
        assert!(!named("http://0xa9fea9fe", "169.254.169.254"));
        assert!(!named("http://0251.0376.0251.0376", "169.254.169.254"));
        assert!(!named("http://169.254.169.253", "169.254.169.254"));
    }

    #[test]
    fn outbound_rules_parse_and_match() {
        let api = OutboundRule::parse("https://api.example.com").unwrap();
        assert!(api.allows(true, "api.example.com", 443));
        assert!(!api.allows(false, "api.example.com", 80));
        assert!(!api.allows(true, "api.example.com", 8443));
        assert!(!api.allows(true, "evil.com", 443));
        let local = OutboundRule::parse("http://127.0.0.1:*").unwrap();
        assert!(local.allows(false, "127.0.0.1", 8080));
        assert!(!local.allows(false, "127.0.0.2", 8080));
        let wild = OutboundRule::parse("https://*.example.com:8443/").unwrap();
        assert!(wild.allows(true, "a.b.example.com", 8443));
        assert!(!wild.allows(true, "example.com", 8443));
        assert!(!wild.allows(true, "badexample.com", 8443));
        for bad in [
            "api.example.com",
            "ftp://x",
            "https://x/path",
            "https://user@x",
            "https://x:0",
            "https://x:99999",
            "https://a*.x",
            "https://",
        ] {
            assert!(OutboundRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn destinations() {
        let rules: Vec<OutboundRule> = ["http://users.svc", "http://127.0.0.1:*"]
            .iter()
            .map(|r| OutboundRule::parse(r).unwrap())
            .collect();
        let d = |u: &str| destination(&rules, &u.parse().unwrap());
        assert_eq!(
            d("http://users.svc/x"),
            Destination::Service("users".into())
        );
        assert_eq!(
            d("http://USERS.svc/x"),
            Destination::Service("users".into())
        );
        assert_eq!(d("http://orders.svc/x"), Destination::Denied);
        assert_eq!(d("http://127.0.0.1:9/x"), Destination::Remote);
        assert_eq!(d("http://localhost:9/x"), Destination::Denied);
        assert_eq!(d("https://users.svc/x"), Destination::Denied);
        assert_eq!(
            destination(&[], &"http://users.svc/".parse().unwrap()),
            Destination::Denied
        );
    }

    #[test]
    fn env_values_and_names() {
        let env: BTreeMap<String, EnvValue> =
            toml::from_str("A = \"1\"\nDB_PASSWORD = { secret = \"db-password\" }\n").unwrap();
        assert_eq!(env["A"], EnvValue::Value("1".into()));
        assert_eq!(
            env["DB_PASSWORD"],
            EnvValue::Secret(SecretName::parse("db-password").unwrap())
        );
        assert_eq!(
            serde_json::to_string(&env).unwrap(),
            r#"{"A":"1","DB_PASSWORD":{"secret":"db-password"}}"#
        );
        assert!(validate_env(&env).is_ok());
        let bad: BTreeMap<String, EnvValue> = toml::from_str("\"1A\" = \"x\"").unwrap();
        assert!(validate_env(&bad).is_err());
        assert!(toml::from_str::<BTreeMap<String, EnvValue>>("A = { secrte = \"x\" }").is_err());
        assert!(toml::from_str::<BTreeMap<String, EnvValue>>("A = { secret = \"../x\" }").is_err());
        assert_eq!(
            SecretName::parse("db-password")
                .unwrap()
                .env_var("BERTH_SECRET_"),
            "BERTH_SECRET_DB_PASSWORD"
        );
    }

    #[test]
    fn writable_mounts_contain_no_other_mount() {
        let mount = |host: &str, mode| FileMount {
            host: host.into(),
            guest: GuestPath::parse(&format!("/m{}", host.len())).unwrap(),
            mode,
        };
        assert!(validate_nesting(&[mount("/a", Mode::Ro), mount("/a/b", Mode::Ro)]).is_ok());
        assert!(validate_nesting(&[mount("/a", Mode::Rw), mount("/b", Mode::Ro)]).is_ok());
        assert!(validate_nesting(&[mount("/a", Mode::Rw), mount("/a/b", Mode::Ro)]).is_err());
        assert!(validate_nesting(&[mount("/a/b", Mode::Rw), mount("/a", Mode::Ro)]).is_err());
    }

    #[test]
    fn guest_paths() {
        assert!(GuestPath::parse("/static").is_ok());
        assert!(GuestPath::parse("/").is_ok());
        for bad in ["static", "/a/../b", "/a//b", "/a/./b", "/a/"] {
            assert!(GuestPath::parse(bad).is_err(), "{bad}");
        }
    }
}
