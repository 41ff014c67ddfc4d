//! Who is calling: API keys (looked up by hash in the [`KeyTable`]) and
//! JSON Web Tokens (verified with `jsonwebtoken`: signature, `exp`, `nbf`,
//! `iss`, `aud`, with [`LEEWAY_SECS`] of clock skew).
//!
//! Credentials come in `Authorization: Bearer …` (a key or a token) or
//! `X-API-Key: …` (a key). A token's `alg` must be one the service's keys
//! are for: RS256 or ES256 with a JWKS, HS256 with a secret — so `none`,
//! and an HS256 token "signed" with an RSA public key, are refused.

use crate::values::capabilities::SecretName;
use crate::values::gateway::{AuthConfig, Jwks, JwtConfig};
use crate::values::key::{self, ApiKey, KeyState};
use crate::values::name::ServiceName;
use crate::wasm::secrets::Secrets;
use arc_swap::ArcSwap;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use jsonwebtoken::jwk::AlgorithmParameters;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use std::sync::Arc;

/// Seconds of clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// The shortest HS256 secret accepted, in bytes: the hash's size (RFC
/// 7518, 3.2).
pub const MIN_HS256_KEY: usize = 32;

/// The header a key may also come in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Who a request is from, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An API key, by name.
    Key(String),
    /// A JWT: its subject and the claims the service passes on (a JSON
    /// object).
    Jwt {
        /// `sub`.
        subject: String,
        /// The chosen claims.
        claims: serde_json::Map<String, serde_json::Value>,
    },
}

impl Principal {
    /// The name the guest is told.
    pub fn name(&self) -> &str {
        match self {
            Principal::Key(name) => name,
            Principal::Jwt { subject, .. } => subject,
        }
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credentials (401).
    Missing,
    /// Credentials that are not valid (401): why, for the log and the
    /// `WWW-Authenticate` description.
    Invalid(String),
    /// Valid credentials, not for this service or without the scopes it
    /// needs (403).
    Forbidden(String),
}

/// Every API key the host knows, by hash: what requests are checked
/// against. The control plane fills it from the key store (and, in a
/// cluster, from the other nodes' changes).
#[derive(Debug, Default)]
pub struct KeyTable {
    keys: ArcSwap<HashMap<String, Arc<ApiKey>>>,
}

impl KeyTable {
    /// Replaces every key.
    pub fn replace_all(&self, keys: Vec<ApiKey>) {
        let map = keys
            .into_iter()
            .map(|k| (k.hash.clone(), Arc::new(k)))
            .collect();
        self.keys.store(Arc::new(map));
    }

    /// Adds or changes one key.
    pub fn upsert(&self, key: ApiKey) {
        self.keys.rcu(|keys| {
            let mut keys = HashMap::clone(keys);
            keys.retain(|_, k| k.name != key.name);
            keys.insert(key.hash.clone(), Arc::new(key.clone()));
            keys
        });
    }

    /// Forgets the key named `name`.
    pub fn remove(&self, name: &str) {
        self.keys.rcu(|keys| {
            let mut keys = HashMap::clone(keys);
            keys.retain(|_, k| k.name.as_str() != name);
            keys
        });
    }

    /// The key whose hash is `hash`.
    fn get(&self, hash: &str) -> Option<Arc<ApiKey>> {
        self.keys.load().get(hash).cloned()
    }
}

/// A service's authentication, ready to check requests.
pub struct Authenticator {
    config: AuthConfig,
    jwt: Option<JwtVerifier>,
}

impl Authenticator {
    /// Builds the checks of `config`: its JWKS keys decoded once.
    pub fn new(config: &AuthConfig) -> Result<Authenticator, String> {
        let jwt = config.jwt.as_ref().map(JwtVerifier::new).transpose()?;
        Ok(Authenticator {
            config: config.clone(),
            jwt,
        })
    }

    /// An authenticator that lets nobody in.
    pub fn refuse_all() -> Authenticator {
        Authenticator {
            config: AuthConfig {
                api_keys: false,
                jwt: None,
                public_routes: Vec::new(),
            },
            jwt: None,
        }
    }

    /// Whether `path` is served without credentials.
    pub fn is_public(&self, path: &str) -> bool {
        self.config.is_public(path)
    }

    /// Checks the credentials in `headers` for `service`.
    pub fn check(
        &self,
        headers: &HeaderMap,
        service: &ServiceName,
        keys: &KeyTable,
        secrets: &Secrets,
    ) -> Result<Principal, Denied> {
        let credential = credential(headers).ok_or(Denied::Missing)?;
        if key::is_api_key(credential) {
            if !self.config.api_keys {
                return Err(Denied::Invalid(
                    "this service does not take API keys".into(),
                ));
            }
            return check_key(credential, service, keys);
        }
        match &self.jwt {
            Some(jwt) => jwt.verify(credential, secrets),
            None => Err(Denied::Invalid(
                "not an API key (this service takes no tokens)".into(),
            )),
        }
    }
}

/// The credential a request presents, if any.
fn credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, rest) = value.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim())
            .filter(|c| !c.is_empty());
    }
    headers
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|c| !c.is_empty())
}

fn check_key(presented: &str, service: &ServiceName, keys: &KeyTable) -> Result<Principal, Denied> {
    let Some(key) = keys.get(&key::hash(presented)) else {
        return Err(Denied::Invalid("unknown API key".into()));
    };
    match key.state(crate::values::units::now_ms()) {
        KeyState::Active => {}
        state => {
            return Err(Denied::Invalid(format!(
                "the API key {} is {}",
                key.name,
                state.as_str()
            )));
        }
    }
    if !key.opens(service) {
        return Err(Denied::Forbidden(format!(
            "the API key {} is not for service {service}",
            key.name
        )));
    }
    Ok(Principal::Key(key.name.to_string()))
}

/// A service's JWT checks.
struct JwtVerifier {
    config: JwtConfig,
    /// With a JWKS: each key, its `kid` and algorithm.
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    /// With a secret: its name.
    secret: Option<SecretName>,
}

impl JwtVerifier {
    fn new(config: &JwtConfig) -> Result<JwtVerifier, String> {
        let mut keys = Vec::new();
        if let Some(Jwks::Keys(set)) = &config.jwks {
            for jwk in &set.keys {
                let alg = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => continue,
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| format!("a key of the JWKS cannot be used: {e}"))?;
                keys.push((jwk.common.key_id.clone(), alg, key));
            }
        }
        let secret = config
            .secret
            .as_deref()
            .map(SecretName::parse)
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(JwtVerifier {
            config: config.clone(),
            keys,
            secret,
        })
    }

    fn verify(&self, token: &str, secrets: &Secrets) -> Result<Principal, Denied> {
        let invalid = |why: String| Denied::Invalid(why);
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| invalid(format!("not a JWT: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = match (&self.secret, header.alg) {
            (Some(name), Algorithm::HS256) => {
                let secret = secrets.read(name).map_err(|e| {
                    tracing::error!(error = %e, "the JWT secret cannot be read");
                    invalid("the service's token secret is missing".into())
                })?;
                if secret.len() < MIN_HS256_KEY {
                    tracing::error!(
                        secret = name.as_str(),
                        "the JWT secret is shorter than {MIN_HS256_KEY} bytes; refusing its tokens"
                    );
                    return Err(invalid("the service's token secret is too short".into()));
                }
                let key = DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| invalid(format!("the token secret cannot be used: {e}")))?;
                decode(token, &key, &validation)?
            }
            (None, Algorithm::RS256 | Algorithm::ES256) => {
                let candidates = self.keys.iter().filter(|(kid, alg, _)| {
                    *alg == header.alg
                        && match (&header.kid, kid) {
                            (Some(want), Some(have)) => want == have,
                            _ => true,
                        }
                });
                let mut last = Denied::Invalid(format!(
                    "no key of the JWKS is for this token ({:?}{})",
                    header.alg,
                    header
                        .kid
                        .as_deref()
                        .map(|k| format!(", kid {k}"))
                        .unwrap_or_default()
                ));
                let mut verified = None;
                for (_, _, key) in candidates {
                    match decode(token, key, &validation) {
                        Ok(claims) => {
                            verified = Some(claims);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                verified.ok_or(last)?
            }
            (_, alg) => {
                return Err(invalid(format!(
                    "the token's algorithm {alg:?} is not accepted here"
                )));
            }
        };
        self.principal(claims)
    }

    fn principal(
        &self,
        claims: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Principal, Denied> {
        let subject = match claims.get("sub") {
            Some(serde_json::Value::String(sub)) if !sub.is_empty() => sub.clone(),
            _ => return Err(Denied::Invalid("the token has no subject".into())),
        };
        if !self.config.scopes.is_empty() {
            let granted = scopes(&claims);
            if let Some(missing) = self
                .config
                .scopes
                .iter()
                .find(|s| !granted.contains(&s.as_str()))
            {
                return Err(Denied::Forbidden(format!(
                    "the token lacks the scope {missing}"
                )));
            }
        }
        let chosen = self
            .config
            .claims
            .iter()
            .filter_map(|name| claims.get(name).map(|v| (name.clone(), v.clone())))
            .collect();
        Ok(Principal::Jwt {
            subject,
            claims: chosen,
        })
    }
}

fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<serde_json::Map<String, serde_json::Value>, Denied> {
    jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| Denied::Invalid(format!("the token is not valid: {e}")))
}

/// A token's scopes: `scope` (space-separated) and `scp` (a list or a
/// string).
fn scopes(claims: &serde_json::Map<String, serde_json::Value>) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(serde_json::Value::String(s)) => out.extend(s.split_whitespace()),
            Some(serde_json::Value::Array(list)) => {
                out.extend(list.iter().filter_map(serde_json::Value::as_str));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn hs_config() -> AuthConfig {
        toml::from_str(
            "jwt = { issuer = \"iss\", audience = \"api\", secret = \"jwt-key\", claims = [\"email\"], scopes = [\"read\"] }",
        )
        .unwrap()
    }

    fn secrets() -> (tempfile::TempDir, Secrets) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt-key");
        std::fs::write(&path, "s3cret-s3cret-s3cret-s3cret-s3cret").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let secrets = Secrets::new(Some(dir.path().to_path_buf()), "BERTH_TEST_NONE_");
        (dir, secrets)
    }

    fn token(claims: serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        headers
    }

    #[test]
    fn hs256_tokens_are_checked_claim_by_claim() {
        let (_dir, secrets) = secrets();
        let auth = Authenticator::new(&hs_config()).unwrap();
        let service: ServiceName = "api".parse().unwrap();
        let keys = KeyTable::default();
        let now = jsonwebtoken::get_current_timestamp();
        let good = serde_json::json!({"sub": "ada", "iss": "iss", "aud": "api", "exp": now + 60, "email": "a@x", "scope": "read write"});
        let check = |t: &str| auth.check(&bearer(t), &service, &keys, &secrets);
        match check(&token(good.clone(), b"s3cret-s3cret-s3cret-s3cret-s3cret")).unwrap() {
            Principal::Jwt { subject, claims } => {
                assert_eq!(subject, "ada");
                assert_eq!(claims.get("email").unwrap(), "a@x");
                assert!(!claims.contains_key("scope"));
            }
            other => panic!("{other:?}"),
        }
        let with = |k: &str, v: serde_json::Value| {
            let mut c = good.clone();
            c[k] = v;
            token(c, b"s3cret-s3cret-s3cret-s3cret-s3cret")
        };
        for bad in [
            token(good.clone(), b"wrong"),
            with("exp", (now - 120).into()),
            with("nbf", (now + 120).into()),
            with("iss", "other".into()),
            with("aud", "other".into()),
        ] {
            assert!(matches!(check(&bad), Err(Denied::Invalid(_))), "{bad}");
        }
        // Within the skew.
        assert!(check(&with("exp", (now - 5).into())).is_ok());
        assert!(matches!(
            check(&with("scope", "write".into())),
            Err(Denied::Forbidden(_))
        ));
        assert_eq!(
            auth.check(&HeaderMap::new(), &service, &keys, &secrets),
            Err(Denied::Missing)
        );
        // `alg: none`.
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(good.to_string())
        });
        assert!(matches!(check(&none), Err(Denied::Invalid(_))));
    }

    #[test]
    fn keys_are_checked_by_hash_state_and_service() {
        let auth = Authenticator::new(&toml::from_str("api_keys = true").unwrap()).unwrap();
        let keys = KeyTable::default();
        let secrets = Secrets::default();
        let api: ServiceName = "api".parse().unwrap();
        let other: ServiceName = "other".parse().unwrap();
        keys.replace_all(vec![ApiKey {
            name: "ci".parse().unwrap(),
            services: vec![api.clone()],
            hash: key::hash("berth_good"),
            created_ms: 0,
            expires_ms: None,
            revoked_ms: None,
        }]);
        let mut headers = HeaderMap::new();
        headers.insert(API_KEY_HEADER, "berth_good".parse().unwrap());
        assert_eq!(
            auth.check(&headers, &api, &keys, &secrets),
            Ok(Principal::Key("ci".into()))
        );
        assert!(matches!(
            auth.check(&headers, &other, &keys, &secrets),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            auth.check(&bearer("berth_bad"), &api, &keys, &secrets),
            Err(Denied::Invalid(_))
        ));
        keys.upsert(ApiKey {
            revoked_ms: Some(1),
            ..keys.get(&key::hash("berth_good")).unwrap().as_ref().clone()
        });
        assert!(matches!(
            auth.check(&headers, &api, &keys, &secrets),
            Err(Denied::Invalid(_))
        ));
    }
}
