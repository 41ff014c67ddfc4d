//! API keys: made, listed and revoked through the control plane, kept in
//! its catalog (the state database, or a cluster's `berth_keys` bucket),
//! and checked at the edge against the gateway's key table.
//!
//! A key is shown once, when it is made; only its SHA-256 is stored.

use crate::control::{ControlError, ControlPlane};
use crate::values::key::{self, ApiKey, KeyName};
use crate::values::name::ServiceName;
use crate::values::units::now_ms;
use base64::Engine;
use std::time::Duration;

/// The longest a key may be made valid for: 100 years (a longer expiry
/// is a mistake, or a key that should never expire).
pub const MAX_VALIDITY: Duration = Duration::from_secs(100 * 365 * 86_400);

impl ControlPlane {
    /// Loads every stored key into the gateway (at start).
    pub async fn load_keys(&self) -> Result<usize, ControlError> {
        let keys = self.catalog().keys().await?;
        let n = keys.len();
        self.parts.gateway.keys().replace_all(keys);
        Ok(n)
    }

    /// Every key, by name (revoked and expired ones too).
    pub async fn keys(&self) -> Result<Vec<ApiKey>, ControlError> {
        self.catalog().keys().await
    }

    /// Makes a key named `name` for `services`, valid for `valid_for` (or
    /// until revoked): returns what is kept of it, and the key itself —
    /// the only time it is seen.
    pub async fn create_key(
        &self,
        name: KeyName,
        services: Vec<ServiceName>,
        valid_for: Option<Duration>,
    ) -> Result<(ApiKey, String), ControlError> {
        if services.is_empty() {
            return Err(ControlError::BadRequest(
                "a key opens at least one service: name it with --service".into(),
            ));
        }
        if valid_for.is_some_and(|d| d > MAX_VALIDITY) {
            return Err(ControlError::BadRequest(format!(
                "a key is valid for at most {} days (leave out the expiry for a key that never expires)",
                MAX_VALIDITY.as_secs() / 86_400
            )));
        }
        self.catalog().writable()?;
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| ControlError::Storage(format!("no randomness for the key: {e}")))?;
        let secret = format!(
            "{}{}",
            key::KEY_PREFIX,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let created_ms = now_ms();
        let mut services = services;
        services.sort();
        services.dedup();
        let record = ApiKey {
            name,
            services,
            hash: key::hash(&secret),
            created_ms,
            // At most MAX_VALIDITY: the sum fits.
            expires_ms: valid_for.map(|d| created_ms + d.as_millis() as i64),
            revoked_ms: None,
        };
        self.catalog().add_key(&record).await?;
        self.parts.gateway.keys().upsert(record.clone());
        tracing::info!(key = %record.name, services = ?record.services, "API key created");
        Ok((record, secret))
    }

    /// Revokes the key named `name`: it stops working at once on this
    /// node, and on the others of a cluster as soon as they hear of it.
    pub async fn revoke_key(&self, name: &KeyName) -> Result<ApiKey, ControlError> {
        self.catalog().writable()?;
        let mut record = self
            .catalog()
            .keys()
            .await?
            .into_iter()
            .find(|k| &k.name == name)
            .ok_or_else(|| ControlError::NotFound(format!("no API key is named {name}")))?;
        if record.revoked_ms.is_none() {
            record.revoked_ms = Some(now_ms());
            self.catalog().put_key(&record).await?;
            tracing::info!(key = %record.name, "API key revoked");
        }
        self.parts.gateway.keys().upsert(record.clone());
        Ok(record)
    }
}
