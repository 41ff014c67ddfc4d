//! JWT and API-key checks at the gateway: whatever a request carries in
//! `Authorization` or `X-API-Key`, it is let in only with the key or a
//! token whose signed part (header and claims) is one this target minted.
//! A changed claim, a changed `alg` (`none`, HS256 over the RSA key) or a
//! forged signature is refused.
#![no_main]
use berth::triggers::http::gateway::auth::{Authenticator, KeyTable, Principal};
use berth::values::gateway::AuthConfig;
use berth::values::key::{self, ApiKey};
use berth::values::name::ServiceName;
use berth::wasm::secrets::Secrets;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use std::sync::OnceLock;

struct Fixture {
    data: Value,
    hs256: Authenticator,
    rs256: Authenticator,
    keys: KeyTable,
    secrets: Secrets,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let data: Value = serde_json::from_str(include_str!("../data/auth.json")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwt-key"), data["secret"].as_str().unwrap()).unwrap();
        let config = |jwt: Value| -> AuthConfig {
            serde_json::from_value(json!({ "api_keys": true, "jwt": jwt })).unwrap()
        };
        let common =
            json!({ "issuer": "fuzz", "audience": "api", "claims": ["email"], "scopes": ["read"] });
        let mut hs = common.clone();
        hs["secret"] = json!("jwt-key");
        let mut rs = common;
        rs["jwks"] = data["jwks"].clone();
        let keys = KeyTable::default();
        keys.replace_all(vec![ApiKey {
            name: "fuzz".parse().unwrap(),
            services: vec![ServiceName::parse("hello").unwrap()],
            hash: key::hash(data["api_key"].as_str().unwrap()),
            created_ms: 0,
            expires_ms: None,
            revoked_ms: None,
        }]);
        Fixture {
            hs256: Authenticator::new(&config(hs)).unwrap(),
            rs256: Authenticator::new(&config(rs)).unwrap(),
            keys,
            secrets: Secrets::new(Some(dir.path().to_owned()), "BERTH_FUZZ_SECRET_"),
            data,
            _dir: dir,
        }
    })
}

/// The signed part of a token: everything before its last `.`.
fn signed_part(token: &str) -> &str {
    token.rsplit_once('.').map_or(token, |(signed, _)| signed)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&which, value)) = data.split_first() else {
        return;
    };
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    let name = if which & 1 == 0 {
        "authorization"
    } else {
        "x-api-key"
    };
    headers.insert(name, value.clone());
    let auth = if which & 2 == 0 { &f.hs256 } else { &f.rs256 };
    let service = ServiceName::parse(if which & 4 == 0 { "hello" } else { "other" }).unwrap();
    let presented = value.to_str().unwrap_or("");
    match auth.check(&headers, &service, &f.keys, &f.secrets) {
        Ok(Principal::Key(name)) => {
            assert_eq!(name, "fuzz");
            assert_eq!(service.as_str(), "hello");
            assert!(presented.contains(f.data["api_key"].as_str().unwrap()));
        }
        Ok(Principal::Jwt { subject, .. }) => {
            let minted = if which & 2 == 0 { "hs256" } else { "rs256" };
            let minted = signed_part(f.data[minted].as_str().unwrap());
            let credential = presented.trim();
            let credential = credential
                .split_once(' ')
                .map_or(credential, |(_, c)| c.trim());
            assert_eq!(
                signed_part(credential),
                minted,
                "a token that was not minted was let in"
            );
            assert_eq!(subject, "alice");
        }
        Err(_) => {}
    }
});
