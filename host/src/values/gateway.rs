//! What the edge asks of a service's callers before its guest runs: who
//! may call it ([`AuthConfig`]), how often ([`RateLimit`]), and from which
//! web origins ([`CorsConfig`]). `docs/gateway.md` documents every field.
//!
//! ```toml
//! [service.api.auth]
//! api_keys = true                       # keys made by `berth keys create`
//! jwt = { issuer = "https://id.example.com", audience = "api", jwks = "./jwks.json" }
//! public_routes = ["/api/health"]       # no credentials needed here
//!
//! [service.api.rate_limit]
//! rate = "100/s"                        # or "6000/m", "10/h"
//! burst = 200
//! by = "key"                            # key | subject | ip
//!
//! [service.api.cors]
//! origins = ["https://app.example.com"]
//! ```

use crate::values::route::Route;
use crate::values::units::{format_duration, parse_duration};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Who may call a service over HTTP. With an `auth` table, every request
/// needs valid credentials (an API key or a JWT, whichever are enabled),
/// except on its public routes.
///
/// ```toml
/// [service.api.auth]
/// api_keys = true
/// jwt = { issuer = "https://id.example.com", audience = "api", jwks = "./jwks.json" }
/// public_routes = ["/api/health"]
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether API keys made by `berth keys create … --service NAME` are
    /// accepted.
    #[serde(default)]
    pub api_keys: bool,
    /// Whether, and which, JSON Web Tokens are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// Routes (as in `routes`) served without credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_routes: Vec<Route>,
}

/// The JSON Web Tokens a service accepts: signed by its issuer's keys (RS256
/// or ES256 from a JWKS) or with a shared secret (HS256), for its audience.
///
/// ```toml
/// jwt = { issuer = "https://id.example.com", audience = "api", jwks = "./jwks.json" }
/// jwt = { issuer = "me", audience = "api", secret = "jwt-key", claims = ["email"] }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry (one of its values).
    pub audience: String,
    /// The issuer's public keys (RS256, ES256): in a manifest, a JWKS file
    /// (relative to the manifest), read when the manifest is loaded; in the
    /// API, the key set itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Jwks>,
    /// The name of the secret holding the HS256 key (from the host's
    /// secrets, like `env` secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Claims passed to the guest (as JSON in `berth-claims`), besides
    /// `sub`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<String>,
    /// Scopes a token must have (in `scope`, space-separated, or `scp`);
    /// a valid token without them gets 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// A JWKS: the key set, or (in a manifest, until it is loaded) its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Jwks {
    /// A file to read the key set from.
    File(PathBuf),
    /// The key set.
    Keys(JwkSet),
}

impl Serialize for Jwks {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Jwks::File(path) => path.serialize(s),
            Jwks::Keys(set) => set.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Jwks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Jwks, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(path) => Ok(Jwks::File(PathBuf::from(path))),
            value @ serde_json::Value::Object(_) => {
                read_jwks(value).map_err(serde::de::Error::custom)
            }
            _ => Err(serde::de::Error::custom(
                "expected a JWKS file name, or a JSON Web Key Set ({\"keys\": [...]})",
            )),
        }
    }
}

/// Reads a JSON Web Key Set, keeping only what Berth can check: every key
/// must be RSA or EC P-256.
fn read_jwks(value: serde_json::Value) -> Result<Jwks, String> {
    let set: JwkSet =
        serde_json::from_value(value).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    if set.keys.is_empty() {
        return Err("the JSON Web Key Set has no keys".into());
    }
    for (i, key) in set.keys.iter().enumerate() {
        match &key.algorithm {
            AlgorithmParameters::RSA(_) => {}
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {}
            _ => {
                return Err(format!(
                    "key {i} of the JSON Web Key Set is neither RSA (RS256) nor EC P-256 (ES256)"
                ));
            }
        }
    }
    Ok(Jwks::Keys(set))
}

impl Jwks {
    /// Reads a `File` (relative to `dir`) into `Keys`.
    pub fn load(&mut self, dir: &Path) -> Result<(), String> {
        let Jwks::File(path) = self else {
            return Ok(());
        };
        let path = dir.join(&*path);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        *self = read_jwks(value).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(())
    }
}

impl AuthConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        let Some(jwt) = &self.jwt else {
            if !self.api_keys {
                return Err(
                    "no credentials are accepted: set `api_keys = true`, `jwt`, or both".into(),
                );
            }
            return Ok(());
        };
        if jwt.issuer.trim().is_empty() || jwt.audience.trim().is_empty() {
            return Err("`jwt` needs an `issuer` and an `audience`".into());
        }
        match (&jwt.jwks, &jwt.secret) {
            (None, None) => Err("`jwt` needs `jwks` (RS256, ES256) or `secret` (HS256)".into()),
            (Some(_), Some(_)) => Err("`jwt` takes `jwks` or `secret`, not both".into()),
            (Some(Jwks::File(path)), None) => Err(format!(
                "`jwt.jwks` must be the JSON Web Key Set itself, not a file name ({}): files are read from manifests",
                path.display()
            )),
            (None, Some(secret)) => crate::values::capabilities::SecretName::parse(secret)
                .map(|_| ())
                .map_err(|e| format!("`jwt.secret`: {e}")),
            _ => Ok(()),
        }
    }

    /// Whether requests to `path` need no credentials.
    pub fn is_public(&self, path: &str) -> bool {
        self.public_routes.iter().any(|route| route.matches(path))
    }
}

/// Why the edge refused a request: the label of
/// `berth_edge_rejections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EdgeRefusal {
    /// No valid credentials (401).
    Unauthenticated,
    /// Valid credentials, not allowed here (403).
    Forbidden,
    /// Over the rate limit (429).
    RateLimited,
}

impl EdgeRefusal {
    /// Every reason, in metric order.
    pub const ALL: [EdgeRefusal; 3] = [
        EdgeRefusal::Unauthenticated,
        EdgeRefusal::Forbidden,
        EdgeRefusal::RateLimited,
    ];

    /// Its position in [`EdgeRefusal::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its label.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeRefusal::Unauthenticated => "unauthenticated",
            EdgeRefusal::Forbidden => "forbidden",
            EdgeRefusal::RateLimited => "rate_limited",
        }
    }
}

/// A rate: so many requests per second, minute or hour (`"100/s"`,
/// `"6000/m"`, `"10/h"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests…
    pub count: u32,
    /// …per this long.
    pub per: Duration,
}

impl Rate {
    /// The time one request's token takes to come back.
    pub fn interval(&self) -> Duration {
        self.per / self.count.max(1)
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        let bad = || {
            format!(
                "invalid rate {s:?}: write requests per unit, like \"100/s\", \"6000/m\" or \"10/h\""
            )
        };
        let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 || count > 1_000_000 {
            return Err(format!(
                "invalid rate {s:?}: the count must be 1 to 1000000"
            ));
        }
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a rate limit's buckets are kept per.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateKey {
    /// The API key's name (a request without a key: its client address).
    Key,
    /// The JWT's subject, or the API key's name (without either: the
    /// client address).
    Subject,
    /// The client address (the TCP peer).
    #[default]
    Ip,
}

/// A service's rate limit: a token bucket per caller, filled at `rate` and
/// holding at most `burst`; beyond it, 429.
///
/// ```toml
/// [service.api.rate_limit]
/// rate = "100/s"
/// burst = 200          # default: the rate's count
/// by = "key"           # key | subject | ip (default)
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// How fast a bucket refills.
    pub rate: Rate,
    /// How many requests a full bucket allows at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What a bucket is kept per.
    #[serde(default)]
    pub by: RateKey,
}

impl RateLimit {
    /// The bucket's size.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.rate.count).max(1)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        match self.burst {
            Some(0) => Err("`burst` must be at least 1".into()),
            Some(b) if b > 1_000_000 => Err("`burst` must be at most 1000000".into()),
            _ => Ok(()),
        }
    }
}

/// Which web origins may call a service from a browser (CORS): Berth
/// answers their preflight requests and adds the headers to responses.
///
/// ```toml
/// [service.api.cors]
/// origins = ["https://app.example.com"]    # or ["*"]
/// methods = ["GET", "POST"]                # default: GET, HEAD, POST, PUT, PATCH, DELETE
/// headers = ["authorization", "content-type"]
/// max_age = "10m"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed (`scheme://host[:port]`), or `"*"` for any.
    pub origins: Vec<String>,
    /// Methods allowed.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Request headers allowed (besides the CORS-safelisted ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Response headers a page may read (besides the safelisted ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight's answer.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_max_age",
        serialize_with = "ser_max_age"
    )]
    pub max_age: Option<Duration>,
    /// Whether requests with credentials (cookies) are allowed; not with
    /// `"*"`.
    #[serde(default)]
    pub credentials: bool,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}

fn de_max_age<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    let age = parse_duration(&text).map_err(serde::de::Error::custom)?;
    if age > Duration::from_secs(86_400) {
        return Err(serde::de::Error::custom(format!(
            "max_age {text:?} is over a day, which browsers cap anyway"
        )));
    }
    Ok(Some(age))
}

fn ser_max_age<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

impl CorsConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.origins.is_empty() {
            return Err("`origins` lists no origin (use [\"*\"] for any)".into());
        }
        for origin in &self.origins {
            if origin == "*" {
                if self.credentials {
                    return Err("`credentials = true` needs the origins listed, not \"*\"".into());
                }
                continue;
            }
            let valid = origin
                .parse::<http::Uri>()
                .ok()
                .filter(|uri| {
                    matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some()
                        && uri
                            .path_and_query()
                            .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
                })
                .is_some()
                && !origin.ends_with('/');
            if !valid {
                return Err(format!(
                    "invalid origin {origin:?}: write scheme://host[:port], like \"https://app.example.com\""
                ));
            }
        }
        let wildcard = self
            .methods
            .iter()
            .chain(&self.headers)
            .chain(&self.expose_headers)
            .any(|v| v == "*");
        if self.credentials && wildcard {
            return Err("`credentials = true` needs methods and headers listed, not \"*\"".into());
        }
        for method in &self.methods {
            method
                .parse::<http::Method>()
                .map_err(|_| format!("invalid method {method:?}"))?;
        }
        for header in self.headers.iter().chain(&self.expose_headers) {
            if header != "*" {
                header
                    .parse::<http::HeaderName>()
                    .map_err(|_| format!("invalid header name {header:?}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        let r: Rate = "100/s".parse().unwrap();
        assert_eq!((r.count, r.per), (100, Duration::from_secs(1)));
        assert_eq!(r.interval(), Duration::from_millis(10));
        assert_eq!("6000/m".parse::<Rate>().unwrap().to_string(), "6000/m");
        assert_eq!(
            "10/h".parse::<Rate>().unwrap().per,
            Duration::from_secs(3600)
        );
        for bad in ["100", "0/s", "x/s", "10/d", "/s", "5/ s s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn auth_needs_a_way_in_and_one_kind_of_key() {
        let parse = |s: &str| toml::from_str::<AuthConfig>(s).unwrap().validate();
        assert!(parse("api_keys = true").is_ok());
        assert!(
            parse("public_routes = [\"/x\"]")
                .unwrap_err()
                .contains("no credentials")
        );
        assert!(
            parse("jwt = { issuer = \"i\", audience = \"a\" }")
                .unwrap_err()
                .contains("`jwks`")
        );
        assert!(parse("jwt = { issuer = \"i\", audience = \"a\", secret = \"k\" }").is_ok());
        assert!(
            parse("jwt = { issuer = \"i\", audience = \"a\", jwks = \"k.json\" }")
                .unwrap_err()
                .contains("not a file name")
        );
        let hs: AuthConfig =
            toml::from_str("api_keys = true\npublic_routes = [\"/api/health\", \"/pub/...\"]")
                .unwrap();
        assert!(hs.is_public("/api/health") && hs.is_public("/pub/x") && !hs.is_public("/api"));
    }

    #[test]
    fn a_jwks_is_read_and_checked() {
        let rsa = serde_json::json!({"keys": [{"kty": "RSA", "kid": "1", "alg": "RS256", "n": "AQAB", "e": "AQAB"}]});
        let jwks: Jwks = serde_json::from_value(rsa).unwrap();
        assert!(matches!(jwks, Jwks::Keys(ref set) if set.keys.len() == 1));
        let oct = serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
        let err = serde_json::from_value::<Jwks>(oct).unwrap_err().to_string();
        assert!(err.contains("neither RSA"), "{err}");
        let empty = serde_json::json!({"keys": []});
        assert!(serde_json::from_value::<Jwks>(empty).is_err());
    }

    #[test]
    fn cors_origins_are_checked() {
        let parse = |s: &str| toml::from_str::<CorsConfig>(s).unwrap().validate();
        assert!(
            parse("origins = [\"https://app.example.com\", \"http://localhost:8080\"]").is_ok()
        );
        assert!(parse("origins = [\"*\"]").is_ok());
        assert!(parse("origins = [\"*\"]\ncredentials = true").is_err());
        assert!(parse("origins = [\"app.example.com\"]").is_err());
        assert!(parse("origins = [\"https://a.example/\"]").is_err());
        assert!(parse("origins = []").is_err());
        assert!(parse("origins = [\"*\"]\nmethods = [\"G T\"]").is_err());
        assert!(
            parse("origins = [\"https://a.test\"]\ncredentials = true\nmethods = [\"*\"]").is_err()
        );
        assert!(
            parse("origins = [\"https://a.test\"]\ncredentials = true\nexpose_headers = [\"*\"]")
                .is_err()
        );
        let cors: CorsConfig = toml::from_str("origins = [\"*\"]\nmax_age = \"10m\"").unwrap();
        assert_eq!(cors.max_age, Some(Duration::from_secs(600)));
        assert!(toml::from_str::<CorsConfig>("origins = [\"*\"]\nmax_age = \"2d\"").is_err());
    }
}
