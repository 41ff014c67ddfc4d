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
//! secrets source (see [`Secrets`]) each time an instance is made, so an
//! updated secret takes effect at the next invocation, and the value never
//! reaches the state database, the admin API or the logs.

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
    pub fn resolve(&mut self, base: Option<&Path>) -> Result<(), String> {
        let path = match base {
            Some(base) if self.host.is_relative() => base.join(&self.host),
            _ if self.host.is_relative() => {
                return Err(format!(
                    "host path {} must be absolute",
                    self.host.display()
                ));
            }
            _ => self.host.clone(),
        };
        let canonical = std::fs::canonicalize(&path)
            .map_err(|e| format!("host path {} cannot be used: {e}", self.host.display()))?;
        if !canonical.is_dir() {
            return Err(format!(
                "host path {} is not a directory",
                self.host.display()
            ));
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
    pub fn parse(s: &str) -> Result<GuestPath, String> {
        if !s.starts_with('/') {
            return Err(format!(
                "guest path {s:?} must be absolute (start with \"/\")"
            ));
        }
        if s != "/" {
            for segment in s[1..].split('/') {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return Err(format!(
                        "guest path {s:?} must not contain empty, \".\" or \"..\" segments"
                    ));
                }
            }
        }
        if s.contains('\0') {
            return Err(format!("guest path {s:?} must not contain NUL"));
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
pub fn validate_files(files: &[FileMount]) -> Result<(), String> {
    for (i, mount) in files.iter().enumerate() {
        if files[..i].iter().any(|m| m.guest == mount.guest) {
            return Err(format!("guest path {} is mounted twice", mount.guest));
        }
    }
    Ok(())
}

/// Checks that no mount lies inside a writable one (or contains one): a
/// guest could otherwise replace the inner directory with a symlink in
/// its writable mount and have the next instance preopen wherever it
/// points. Paths must be resolved (canonical) first.
pub fn validate_nesting(files: &[FileMount]) -> Result<(), String> {
    for rw in files.iter().filter(|m| m.mode == Mode::Rw) {
        for other in files {
            if std::ptr::eq(rw, other) {
                continue;
            }
            if other.host.starts_with(&rw.host) || rw.host.starts_with(&other.host) {
                return Err(format!(
                    "host paths {} and {} overlap, and {} is writable: mount directories that do not contain each other",
                    rw.host.display(),
                    other.host.display(),
                    rw.host.display()
                ));
            }
        }
    }
    Ok(())
}

impl FileMount {
    /// Checks, when an instance is made, that the host path still names
    /// the directory it named at deploy time with no symlink on the way
    /// (a component replaced by a symlink would redirect the mount).
    pub fn check_unchanged(&self) -> Result<(), String> {
        match std::fs::canonicalize(&self.host) {
            Ok(path) if path == self.host => Ok(()),
            Ok(path) => Err(format!(
                "{} now leads to {} (a symlink was put on its path); refusing to mount it",
                self.host.display(),
                path.display()
            )),
            Err(e) => Err(format!("{}: {e}", self.host.display())),
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
pub fn validate_env(env: &BTreeMap<String, EnvValue>) -> Result<(), String> {
    for name in env.keys() {
        let ok = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(format!(
                "invalid environment variable name {name:?}: use letters, digits and \"_\", not starting with a digit"
            ));
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
    pub fn parse(s: &str) -> Result<SecretName, String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(SecretName(s.to_owned()))
        } else {
            Err(format!(
                "invalid secret name {s:?}: 1 to 63 lowercase letters, digits, \"-\" and \"_\", starting with a letter or digit"
            ))
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

/// Where the host reads secrets: a file per secret in a directory (the
/// file must not be readable by group or others), else an environment
/// variable of the host process with a prefix.
#[derive(Clone, Debug)]
pub struct Secrets {
    dir: Option<PathBuf>,
    env_prefix: String,
}

/// The default prefix of secret environment variables.
pub const DEFAULT_SECRET_PREFIX: &str = "BERTH_SECRET_";

/// Why a secret could not be read. Never holds the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Neither a file nor an environment variable holds it.
    #[error("secret {name:?} is not set (no file {file} and no environment variable {var})")]
    Missing {
        /// The secret.
        name: String,
        /// The file looked for.
        file: String,
        /// The variable looked for.
        var: String,
    },
    /// Its file is readable by others.
    #[error("secret file {file} is readable by group or others (mode {mode:03o}); make it 0600")]
    Exposed {
        /// The file.
        file: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Its file could not be read, or is not text.
    #[error("secret file {file} cannot be read: {error}")]
    Unreadable {
        /// The file.
        file: String,
        /// Why.
        error: String,
    },
}

impl Secrets {
    /// Secrets from files in `dir` (if any), else from environment
    /// variables starting with `env_prefix`.
    pub fn new(dir: Option<PathBuf>, env_prefix: impl Into<String>) -> Secrets {
        Secrets {
            dir,
            env_prefix: env_prefix.into(),
        }
    }

    /// The directory, if there is one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Reads a secret now. A trailing newline of a file is dropped (files
    /// written by `echo` have one).
    pub fn read(&self, name: &SecretName) -> Result<String, SecretError> {
        let var = name.env_var(&self.env_prefix);
        let file = self.dir.as_ref().map(|d| d.join(name.as_str()));
        if let Some(file) = &file {
            match read_secret_file(file) {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(value) = std::env::var_os(&var) {
            return value.into_string().map_err(|_| SecretError::Unreadable {
                file: format!("${var}"),
                error: "not valid UTF-8".into(),
            });
        }
        Err(SecretError::Missing {
            name: name.to_string(),
            file: file.map_or_else(
                || "(no secrets directory)".into(),
                |f| f.display().to_string(),
            ),
            var,
        })
    }
}

/// The largest secret read, in bytes.
const MAX_SECRET: u64 = 64 * 1024;

/// A secret's file: `None` when it does not exist.
fn read_secret_file(file: &Path) -> Result<Option<String>, SecretError> {
    use std::io::Read;
    let unreadable = |e: &dyn fmt::Display| SecretError::Unreadable {
        file: file.display().to_string(),
        error: e.to_string(),
    };
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(&e)),
    };
    let meta = f.metadata().map_err(|e| unreadable(&e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Exposed {
                file: file.display().to_string(),
                mode,
            });
        }
    }
    if !meta.is_file() {
        return Err(unreadable(&"not a regular file"));
    }
    if meta.len() > MAX_SECRET {
        return Err(unreadable(&format!("larger than {MAX_SECRET} bytes")));
    }
    let mut value = String::new();
    f.take(MAX_SECRET + 1)
        .read_to_string(&mut value)
        .map_err(|e| unreadable(&e))?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.contains('\0') {
        return Err(unreadable(&"contains NUL"));
    }
    Ok(Some(value))
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
    pub fn parse(s: &str) -> Result<OutboundRule, String> {
        let bad = |why: &str| format!("invalid outbound origin {s:?}: {why}");
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

/// Whether a connection to `addr` would reach one of this host's own
/// listeners (`listeners`, public and admin): same port, and an address
/// of this machine (loopback, unspecified, or one of `local`). A guest
/// must never reach the admin API, nor loop back into the public listener
/// around the call-depth bound.
pub fn is_own_listener(
    addr: std::net::SocketAddr,
    listeners: &[std::net::SocketAddr],
    local: &[std::net::IpAddr],
) -> bool {
    let ip = addr.ip().to_canonical();
    listeners.iter().any(|l| l.port() == addr.port())
        && (ip.is_loopback() || ip.is_unspecified() || local.contains(&ip))
}

/// The addresses of this machine's network interfaces.
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    #[cfg(unix)]
    {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `list` with a linked list we only read
        // and then free with freeifaddrs.
        if unsafe { libc::getifaddrs(&mut list) } != 0 {
            return out;
        }
        let mut cursor = list;
        while !cursor.is_null() {
            // SAFETY: `cursor` is a node of the list getifaddrs returned.
            let entry = unsafe { &*cursor };
            if !entry.ifa_addr.is_null() {
                // SAFETY: `ifa_addr` points to a sockaddr whose family says
                // which sockaddr_* it is.
                unsafe {
                    match i32::from((*entry.ifa_addr).sa_family) {
                        libc::AF_INET => {
                            let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                            out.push(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                                u32::from_be(sin.sin_addr.s_addr),
                            )));
                        }
                        libc::AF_INET6 => {
                            let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                            out.push(std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                                sin6.sin6_addr.s6_addr,
                            )));
                        }
                        _ => {}
                    }
                }
            }
            cursor = entry.ifa_next;
        }
        // SAFETY: `list` came from getifaddrs and is freed once.
        unsafe { libc::freeifaddrs(list) };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
                .env_var(DEFAULT_SECRET_PREFIX),
            "BERTH_SECRET_DB_PASSWORD"
        );
    }

    #[test]
    fn own_listeners() {
        let listeners: Vec<std::net::SocketAddr> = vec![
            "127.0.0.1:3001".parse().unwrap(),
            "0.0.0.0:3000".parse().unwrap(),
        ];
        let local: Vec<std::net::IpAddr> = vec!["10.1.2.3".parse().unwrap()];
        let own = |a: &str| is_own_listener(a.parse().unwrap(), &listeners, &local);
        assert!(own("127.0.0.1:3001"));
        assert!(own("127.0.0.2:3001"));
        assert!(own("[::1]:3001"));
        assert!(own("[::ffff:127.0.0.1]:3000"));
        assert!(own("0.0.0.0:3000"));
        assert!(own("10.1.2.3:3000"));
        assert!(!own("127.0.0.1:8080"));
        assert!(!own("93.184.216.34:3000"));
        assert!(local_addresses().iter().any(|ip| ip.is_loopback()));
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

    #[test]
    fn secrets_come_from_private_files_then_the_environment() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::new(Some(dir.path().to_owned()), "BERTH_TEST_SECRET_");
        let name = SecretName::parse("db-password").unwrap();
        assert!(matches!(
            secrets.read(&name),
            Err(SecretError::Missing { .. })
        ));
        let file = dir.path().join("db-password");
        std::fs::write(&file, "hunter2\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let exposed = secrets.read(&name).unwrap_err();
        assert!(matches!(exposed, SecretError::Exposed { mode: 0o644, .. }));
        assert!(!exposed.to_string().contains("hunter2"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(secrets.read(&name).unwrap(), "hunter2");
        std::fs::write(&file, "changed").unwrap();
        assert_eq!(secrets.read(&name).unwrap(), "changed");
        let other = SecretName::parse("api-key").unwrap();
        // SAFETY: this test's variable is used by no other test.
        unsafe { std::env::set_var("BERTH_TEST_SECRET_API_KEY", "k3y") };
        assert_eq!(secrets.read(&other).unwrap(), "k3y");
    }
}
