//! The edge: what a request must pass before its service's guest runs —
//! CORS preflights answered here, [`auth`] (API keys, JWTs) and [`rate`]
//! limits — configured per service (`auth`, `rate_limit`, `cors`; see
//! [`crate::values::gateway`] and `docs/gateway.md`).
//!
//! A request refused here never starts an instance; it still goes through
//! the pipeline's record and metrics (the HTTP trigger's `check` step), so
//! it leaves a `rejected` usage record with its status.
//!
//! Every request's `berth-principal`, `berth-principal-kind` and
//! `berth-claims` headers are Berth's: whatever a client sent in them is
//! removed, and an authenticated request gets Berth's values.

pub mod auth;
pub mod rate;

use crate::runtime::registry::Service;
use crate::values::gateway::{CorsConfig, EdgeRefusal, RateKey};
use crate::values::name::ServiceName;
use crate::wasm::secrets::Secrets;
use auth::{Authenticator, Denied, KeyTable, Principal};
use http::header::{HeaderValue, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, StatusCode};
use rate::{Limiter, Standing};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock, Weak};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer, ExposeHeaders};

/// The caller's name: an API key's name or a JWT's subject.
pub const PRINCIPAL_HEADER: &str = "berth-principal";
/// How the caller authenticated: `key` or `jwt`.
pub const PRINCIPAL_KIND_HEADER: &str = "berth-principal-kind";
/// A JWT's chosen claims, as a JSON object.
pub const CLAIMS_HEADER: &str = "berth-claims";

/// The edge of one host: the API keys it knows and each service's policy.
pub struct Gateway {
    keys: KeyTable,
    secrets: Secrets,
    /// Read on every request; written on a revision's first.
    policies: RwLock<HashMap<ServiceName, Arc<Policy>>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// One service revision's edge policy, built from its configuration.
pub struct Policy {
    /// The revision it was built for (kept weakly: a new revision is a new
    /// `Service`).
    service: Weak<Service>,
    auth: Option<Authenticator>,
    limiter: Option<Arc<Limiter>>,
    cors: Option<CorsLayer>,
}

/// What the edge let through: who the caller is, and where it stands with
/// the rate limit.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The caller, if it authenticated.
    pub principal: Option<Principal>,
    /// The rate limit's standing, for the response's headers.
    pub standing: Option<(Standing, crate::values::gateway::RateLimit)>,
}

/// A refusal at the edge: why, and the answer to send.
#[derive(Debug)]
pub struct Refused {
    /// Why, for metrics.
    pub reason: EdgeRefusal,
    /// Why, in words, for the log.
    pub detail: String,
    /// The status.
    pub status: StatusCode,
    /// Headers the answer carries (`WWW-Authenticate`, `RateLimit-*`).
    pub headers: HeaderMap,
}

impl Gateway {
    /// A gateway reading HS256 secrets from `secrets`.
    pub fn new(secrets: Secrets) -> Gateway {
        Gateway {
            keys: KeyTable::default(),
            secrets,
            policies: RwLock::new(HashMap::new()),
        }
    }

    /// The API keys requests are checked against.
    pub fn keys(&self) -> &KeyTable {
        &self.keys
    }

    /// The policy of `service`'s revision: built on its first request
    /// (its configuration was checked at deploy, so this does not fail),
    /// keeping the rate limit's buckets across revisions whose limit is
    /// the same.
    pub fn policy(&self, service: &Arc<Service>) -> Arc<Policy> {
        let name = service.name();
        let current = |policies: &HashMap<ServiceName, Arc<Policy>>| {
            policies
                .get(name)
                .filter(|p| std::ptr::eq(p.service.as_ptr(), Arc::as_ptr(service)))
                .cloned()
        };
        if let Some(policy) = current(&self.policies.read().unwrap_or_else(|e| e.into_inner())) {
            return policy;
        }
        let mut policies = self.policies.write().unwrap_or_else(|e| e.into_inner());
        if let Some(policy) = current(&policies) {
            return policy;
        }
        let config = &service.spec().config;
        let limiter = config.rate_limit.as_ref().map(|limit| {
            match policies.get(name).and_then(|p| p.limiter.clone()) {
                Some(kept) if kept.config() == limit => kept,
                _ => Arc::new(Limiter::new(limit)),
            }
        });
        let auth = config.auth.as_ref().map(|auth| match Authenticator::new(auth) {
            Ok(auth) => auth,
            Err(e) => {
                // Checked at deploy; a failure here would let requests in
                // unchecked, so refuse them all instead.
                tracing::error!(service = %name, error = %e, "the service's auth cannot be built; refusing its requests");
                Authenticator::refuse_all()
            }
        });
        let policy = Arc::new(Policy {
            service: Arc::downgrade(service),
            auth,
            limiter,
            cors: config.cors.as_ref().map(cors_layer),
        });
        policies.retain(|_, p| p.service.strong_count() > 0);
        policies.insert(name.clone(), policy.clone());
        policy
    }

    /// Checks a request to `service` against `policy`: credentials, then
    /// the rate limit. Sets the principal headers on success.
    pub fn admit(
        &self,
        policy: &Policy,
        service: &ServiceName,
        path: &str,
        headers: &mut HeaderMap,
        client: IpAddr,
    ) -> Result<Admitted, Box<Refused>> {
        let principal = match &policy.auth {
            Some(_) if !plain_path(path) => {
                // A public route must not open a way around the check
                // through `..` or encoded separators a guest may decode.
                return Err(Box::new(Refused {
                    reason: EdgeRefusal::Unauthenticated,
                    detail: format!("ambiguous path {path:?}"),
                    status: StatusCode::BAD_REQUEST,
                    headers: HeaderMap::new(),
                }));
            }
            Some(auth) if !auth.is_public(path) => {
                match auth.check(headers, service, &self.keys, &self.secrets) {
                    Ok(principal) => Some(principal),
                    Err(denied) => {
                        // Bad credentials count against the client's
                        // address: a flood of them is limited too.
                        if let Some(limiter) = &policy.limiter {
                            rate_check(limiter, &format!("ip:{client}"))?;
                        }
                        return Err(Box::new(refused_auth(denied)));
                    }
                }
            }
            _ => None,
        };
        let standing = match &policy.limiter {
            Some(limiter) => {
                let caller = bucket_key(limiter.config().by, principal.as_ref(), client);
                Some((rate_check(limiter, &caller)?, limiter.config().clone()))
            }
            None => None,
        };
        if let Some(principal) = &principal {
            set_principal(headers, principal);
        }
        Ok(Admitted {
            principal,
            standing,
        })
    }
}

impl Policy {
    /// The service's CORS layer, if it has one.
    pub fn cors(&self) -> Option<&CorsLayer> {
        self.cors.as_ref()
    }
}

/// Takes a token from `caller`'s bucket, or refuses with 429.
fn rate_check(limiter: &Limiter, caller: &str) -> Result<Standing, Box<Refused>> {
    let standing = limiter.check(caller);
    if standing.retry_after.is_none() {
        return Ok(standing);
    }
    let config = limiter.config();
    let mut headers = HeaderMap::new();
    standing.write(&mut headers, config);
    Err(Box::new(Refused {
        reason: EdgeRefusal::RateLimited,
        detail: format!("over the rate limit of {} for {caller}", config.rate),
        status: StatusCode::TOO_MANY_REQUESTS,
        headers,
    }))
}

/// Whether a path means what it says: no `.` or `..` segment, no empty
/// segment, no percent-encoded dot, slash or backslash, no backslash.
fn plain_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    !(lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
        || path.contains('\\'))
        && path.split('/').skip(1).enumerate().all(|(i, segment)| {
            segment != "."
                && segment != ".."
                && (!segment.is_empty() || i == 0 || path.ends_with('/'))
        })
        && !path.contains("//")
}

/// Removes what a client sent in the principal headers — under any
/// spelling a guest's framework might read as theirs (`_` for `-`): only
/// Berth sets them.
pub fn strip_principal(headers: &mut HeaderMap) {
    let ours = [PRINCIPAL_HEADER, PRINCIPAL_KIND_HEADER, CLAIMS_HEADER];
    let forged: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| {
            ours.iter()
                .any(|ours| same_but_underscores(name.as_str(), ours))
        })
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

/// Whether `name` is `ours` with any `-` spelt `_` (no allocation: this
/// runs for every header of every request).
fn same_but_underscores(name: &str, ours: &str) -> bool {
    name.len() == ours.len()
        && name
            .bytes()
            .zip(ours.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

fn set_principal(headers: &mut HeaderMap, principal: &Principal) {
    let (kind, claims) = match principal {
        Principal::Key(_) => ("key", None),
        Principal::Jwt { claims, .. } => ("jwt", Some(claims)),
    };
    // UTF-8 as it is (a subject like "josé" is passed on, not dropped).
    if let Ok(name) = HeaderValue::from_bytes(principal.name().as_bytes()) {
        headers.insert(PRINCIPAL_HEADER, name);
    }
    headers.insert(PRINCIPAL_KIND_HEADER, HeaderValue::from_static(kind));
    if let Some(claims) = claims
        && let Ok(json) = serde_json::to_string(claims)
        && let Ok(value) = HeaderValue::from_bytes(json.as_bytes())
    {
        headers.insert(CLAIMS_HEADER, value);
    }
}

/// The bucket a request counts against.
fn bucket_key(by: RateKey, principal: Option<&Principal>, client: IpAddr) -> String {
    match (by, principal) {
        (RateKey::Key, Some(Principal::Key(name))) => format!("key:{name}"),
        (RateKey::Subject, Some(Principal::Key(name))) => format!("key:{name}"),
        (RateKey::Subject, Some(Principal::Jwt { subject, .. })) => format!("sub:{subject}"),
        _ => format!("ip:{client}"),
    }
}

fn refused_auth(denied: Denied) -> Refused {
    let (reason, status, challenge, detail) = match denied {
        Denied::Missing => (
            EdgeRefusal::Unauthenticated,
            StatusCode::UNAUTHORIZED,
            "Bearer realm=\"berth\"".to_owned(),
            "no credentials".to_owned(),
        ),
        Denied::Invalid(why) => (
            EdgeRefusal::Unauthenticated,
            StatusCode::UNAUTHORIZED,
            "Bearer realm=\"berth\", error=\"invalid_token\"".to_owned(),
            why,
        ),
        Denied::Forbidden(why) => (
            EdgeRefusal::Forbidden,
            StatusCode::FORBIDDEN,
            "Bearer realm=\"berth\", error=\"insufficient_scope\"".to_owned(),
            why,
        ),
    };
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        headers.insert(WWW_AUTHENTICATE, value);
    }
    Refused {
        reason,
        detail,
        status,
        headers,
    }
}

/// tower-http's CORS layer for `config` (checked at deploy).
fn cors_layer(config: &CorsConfig) -> CorsLayer {
    let origins = if config.origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    let methods: Vec<Method> = config
        .methods
        .iter()
        .filter_map(|m| m.parse().ok())
        .collect();
    let headers = if config.headers.iter().any(|h| h == "*") {
        AllowHeaders::mirror_request()
    } else {
        AllowHeaders::list(config.headers.iter().filter_map(|h| h.parse().ok()))
    };
    let mut layer = CorsLayer::new()
        .allow_origin(origins)
        .allow_methods(AllowMethods::list(methods))
        .allow_headers(headers)
        .expose_headers(ExposeHeaders::list(
            config.expose_headers.iter().filter_map(|h| h.parse().ok()),
        ))
        .allow_credentials(config.credentials);
    if let Some(age) = config.max_age {
        layer = layer.max_age(age);
    }
    layer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_pass_an_authenticated_service() {
        for ok in ["/", "/api/health", "/api/x/", "/a.b/c..d", "/api/%20x"] {
            assert!(plain_path(ok), "{ok}");
        }
        for bad in [
            "/api/health/../orders",
            "/api/./x",
            "/api/%2e%2e/x",
            "/api/%2E/x",
            "/api%2fx",
            "/api/%5cx",
            "/api\\x",
            "//api",
            "/api//x",
            "/..",
        ] {
            assert!(!plain_path(bad), "{bad}");
        }
    }

    #[test]
    fn forged_principal_headers_go_under_every_spelling() {
        let mut headers = HeaderMap::new();
        headers.insert("berth-principal", HeaderValue::from_static("root"));
        headers.insert("berth_principal", HeaderValue::from_static("root"));
        headers.insert("Berth-Claims", HeaderValue::from_static("{}"));
        headers.insert("berth-principal-kind", HeaderValue::from_static("key"));
        headers.insert("x-other", HeaderValue::from_static("kept"));
        strip_principal(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-other"));
    }
}
