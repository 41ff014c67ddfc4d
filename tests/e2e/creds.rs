//! NATS credentials as an operator would issue them (what `nsc` makes): an
//! operator, an account with JetStream, a user, each an nkey; the account
//! and user as JWTs signed by the key above them; the user's JWT and seed
//! in a `.creds` file; the server in operator mode with the account
//! preloaded.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::json;
use std::path::{Path, PathBuf};

/// A JWT of NATS's `ed25519-nkey` kind: `claims` with `sub`, signed by
/// `issuer`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "jti": format!("JTI{now}{}", &subject[..8]),
        "iat": now,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{claims}");
    let signature = URL_SAFE_NO_PAD.encode(issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{signature}")
}

/// An operator-mode server configuration and a user's `.creds` file, in
/// `dir`: (config, creds).
pub fn issue(dir: &Path) -> (PathBuf, PathBuf) {
    let operator = KeyPair::new_operator();
    let account = KeyPair::new_account();
    let system = KeyPair::new_account();
    let user = KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "berth-test",
        json!({"type": "operator", "version": 2, "system_account": system.public_key()}),
    );
    let unlimited = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "berth",
        json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        json!({"type": "account", "version": 2, "limits": {"subs": -1, "data": -1, "payload": -1, "conn": -1}}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "berth-node",
        json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
    );
    let config = dir.join("operator.conf");
    std::fs::write(
        &config,
        format!(
            "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {acc}: {account_jwt}\n  {sys}: {system_jwt}\n}}\n",
            sys = system.public_key(),
            acc = account.public_key(),
        ),
    )
    .unwrap();
    let creds = dir.join("node.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    (config, creds)
}
