//! The admin API's resources as JSON: what the server sends and the CLI
//! reads. `docs/admin-api.md` shows each with an example.

use crate::control::ServiceStatus;
use crate::control::catalog::{NodeReport, NodeService};
use crate::control::state::{ArtifactRecord, RevisionRecord};
use crate::triggers::events::bus::DeadLetter;
use crate::values::capabilities::{EnvValue, FileMount, OutboundRule};
use crate::values::event::Subscription;
use crate::values::gateway::{AuthConfig, CorsConfig, RateLimit};
use crate::values::key::ApiKey;
use crate::values::limits::Limits;
use crate::values::reuse::Reuse;
use crate::values::route::Route;
use crate::values::schedule::Schedule;
use crate::values::service::ServiceConfig;
use crate::values::topic::TopicPattern;
use crate::values::units::{now_ms, rfc3339};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An uploaded artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactView {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// RFC 3339.
    pub created_at: String,
}

impl From<&ArtifactRecord> for ArtifactView {
    fn from(r: &ArtifactRecord) -> Self {
        ArtifactView {
            digest: r.digest.to_string(),
            size: r.size,
            created_at: rfc3339(r.created_ms),
        }
    }
}

/// A service with its active revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    /// The service's name.
    pub name: String,
    /// The active revision.
    pub revision: u32,
    /// The newest revision (higher than `revision` after a rollback).
    pub latest_revision: u32,
    /// The active revision's artifact.
    pub artifact: String,
    /// Its configuration: routes, limits, triggers and what its guest
    /// is given (secrets by name only).
    #[serde(flatten)]
    pub config: ServiceConfig,
    /// `serving`, or `failed` when its revision could not be loaded.
    pub status: String,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Instances running now.
    pub in_flight: u32,
    /// Requests waiting for an instance now.
    pub queued: u32,
    /// Whether its compiled component is in memory now (false: scaled to
    /// zero; its next invocation is a cold start).
    #[serde(default)]
    pub loaded: bool,
    /// When the service was first deployed.
    pub created_at: String,
    /// When its active revision last changed.
    pub updated_at: String,
    /// In a cluster: what each live node serves of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<ServiceNodeView>,
}

/// A service on one node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNodeView {
    /// The node.
    pub node: String,
    /// The revision it serves, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    /// `serving` (the active revision), `failed` (it cannot: see `error`)
    /// or `converging` (not yet).
    pub status: String,
    /// Why it does not serve the active revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A node: of a cluster, or the standalone host itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Its name.
    pub name: String,
    /// Where it serves the services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<String>,
    /// Where its admin API listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Berth's version on it.
    pub version: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// Its last heartbeat (RFC 3339).
    pub last_heartbeat: String,
    /// Whether it is ready (converged with the cluster).
    pub ready: bool,
    /// Why it is not, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unready: Option<String>,
    /// Services it serves.
    pub services: u32,
    /// Of those, services whose code is in memory (the others are scaled
    /// to zero).
    pub services_loaded: u32,
    /// Services it cannot serve.
    pub services_failed: u32,
    /// Instances running on it now.
    pub in_flight: u32,
}

impl From<&NodeReport> for NodeView {
    fn from(n: &NodeReport) -> Self {
        let count =
            |f: &dyn Fn(&NodeService) -> bool| n.services.iter().filter(|s| f(s)).count() as u32;
        NodeView {
            name: n.name.clone(),
            public: n.public.clone(),
            admin: n.admin.clone(),
            version: n.version.clone(),
            started_at: rfc3339(n.started_ms),
            uptime_secs: ((n.heartbeat_ms - n.started_ms).max(0) / 1000) as u64,
            last_heartbeat: rfc3339(n.heartbeat_ms),
            ready: n.unready.is_none(),
            unready: n.unready.clone(),
            services: count(&|s| s.revision.is_some()),
            services_loaded: count(&|s| s.loaded),
            services_failed: count(&|s| s.error.is_some()),
            in_flight: n.in_flight,
        }
    }
}

impl From<&ServiceStatus> for ServiceView {
    fn from(s: &ServiceStatus) -> Self {
        let active = &s.record.active;
        ServiceView {
            name: active.service.to_string(),
            revision: active.number,
            latest_revision: s.record.latest,
            artifact: active.artifact.to_string(),
            config: active.config.clone(),
            status: if s.error.is_some() {
                "failed"
            } else {
                "serving"
            }
            .into(),
            error: s.error.clone(),
            in_flight: s.in_flight,
            queued: s.queued,
            loaded: s.loaded,
            created_at: rfc3339(s.record.created_ms),
            updated_at: rfc3339(s.record.updated_ms),
            nodes: s
                .nodes
                .iter()
                .map(|(node, here)| ServiceNodeView {
                    node: node.clone(),
                    revision: here.revision,
                    status: if here.error.is_some() {
                        "failed"
                    } else if here.revision == Some(active.number) {
                        "serving"
                    } else {
                        "converging"
                    }
                    .into(),
                    error: here.error.clone(),
                })
                .collect(),
        }
    }
}

/// One revision of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionView {
    /// The service.
    pub service: String,
    /// The revision number.
    pub revision: u32,
    /// Whether it is the one serving.
    pub active: bool,
    /// Its artifact.
    pub artifact: String,
    /// Its configuration: routes, limits, triggers and what its guest
    /// is given (secrets by name only).
    #[serde(flatten)]
    pub config: ServiceConfig,
    /// When it was deployed.
    pub created_at: String,
}

impl RevisionView {
    /// The view of `record`, marked active or not.
    pub fn new(record: &RevisionRecord, active: bool) -> Self {
        RevisionView {
            service: record.service.to_string(),
            revision: record.number,
            active,
            artifact: record.artifact.to_string(),
            config: record.config.clone(),
            created_at: rfc3339(record.created_ms),
        }
    }
}

/// `PUT /v1/services/{name}`: the revision to deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The artifact, uploaded before (`sha256:<hex>`).
    pub artifact: String,
    /// The routes.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The limits; omitted ones take their defaults.
    #[serde(default)]
    pub limits: Limits,
    /// The topics it receives events from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<Subscription>,
    /// The topics it may publish on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<TopicPattern>,
    /// Its schedules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<Schedule>,
    /// Host directories its guest sees (absolute host paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileMount>,
    /// Its guest's environment: values, or `{"secret": "name"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, EnvValue>,
    /// The origins its guest may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound: Vec<OutboundRule>,
    /// Who may call its routes (`jwt.jwks` is the key set itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// How often each caller may call its routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Which web origins may call its routes from a browser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsConfig>,
    /// Whether its instances serve several invocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<Reuse>,
}

impl DeployRequest {
    /// A deploy of `artifact` configured as `config`.
    pub fn new(artifact: String, config: ServiceConfig) -> Self {
        DeployRequest {
            artifact,
            routes: config.routes,
            limits: config.limits,
            subscriptions: config.subscriptions,
            publish: config.publish,
            schedules: config.schedules,
            files: config.files,
            env: config.env,
            allowed_outbound: config.allowed_outbound,
            auth: config.auth,
            rate_limit: config.rate_limit,
            cors: config.cors,
            reuse: config.reuse,
        }
    }

    /// The configuration it asks for.
    pub fn into_config(self) -> ServiceConfig {
        ServiceConfig {
            routes: self.routes,
            limits: self.limits,
            subscriptions: self.subscriptions,
            publish: self.publish,
            schedules: self.schedules,
            files: self.files,
            env: self.env,
            allowed_outbound: self.allowed_outbound,
            auth: self.auth,
            rate_limit: self.rate_limit,
            cors: self.cors,
            reuse: self.reuse,
        }
    }
}

/// One API key, as listed (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    /// Its name.
    pub name: String,
    /// The services it opens.
    pub services: Vec<String>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
    /// When it was made (RFC 3339).
    pub created: String,
    /// When it expires (RFC 3339), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// When it was revoked (RFC 3339), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

impl From<&ApiKey> for KeyView {
    fn from(key: &ApiKey) -> Self {
        KeyView {
            name: key.name.to_string(),
            services: key.services.iter().map(ToString::to_string).collect(),
            state: key.state(now_ms()).as_str().into(),
            created: rfc3339(key.created_ms),
            expires: key.expires_ms.map(rfc3339),
            revoked: key.revoked_ms.map(rfc3339),
        }
    }
}

/// `POST /v1/keys`: a key to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Its name (unique).
    pub name: String,
    /// The services it opens.
    pub services: Vec<String>,
    /// How long it works (`30d`, `12h`); forever by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
}

/// The answer to `POST /v1/keys`: the key, shown this once, and its view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedKeyView {
    /// The key. Only its hash is kept: it cannot be shown again.
    pub key: String,
    /// What is kept of it.
    #[serde(flatten)]
    pub view: KeyView,
}

/// `POST /v1/services/{name}/rollback`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The revision to switch to; default: the one before the active one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u32>,
}

/// Every error response: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable and machine-readable (`route_conflict`, `not_found`, ...).
    pub code: String,
    /// For humans.
    pub message: String,
}

/// `POST /v1/events/{topic}`: what was published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedView {
    /// One entry per event, in order.
    pub published: Vec<PublishedEvent>,
}

/// One published event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedEvent {
    /// Its CloudEvents id.
    pub id: String,
    /// Deliveries made: one per matching subscription (0: no subscriber).
    pub deliveries: usize,
}

/// `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsView {
    /// Per subscription.
    pub subscriptions: Vec<crate::triggers::events::bus::SubscriptionStats>,
    /// Per topic.
    pub topics: Vec<crate::triggers::events::bus::TopicStats>,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterView {
    /// The subscription whose deliveries all failed.
    pub subscription: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// When it was given up.
    pub dead_at: String,
    /// The topic.
    pub topic: String,
    /// The event, in CloudEvents structured JSON.
    pub event: serde_json::Value,
}

impl From<&DeadLetter> for DeadLetterView {
    fn from(d: &DeadLetter) -> Self {
        DeadLetterView {
            subscription: d.subscription.clone(),
            attempts: d.attempts,
            error: d.error.clone(),
            dead_at: rfc3339(d.dead_ms),
            topic: d.event.topic.to_string(),
            event: crate::triggers::events::cloudevents::to_json(&d.event),
        }
    }
}

/// `POST /v1/events/dead/replay`: `{"id": ...}` or `{"all": true}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The CloudEvents id of the event to deliver again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Deliver every dead letter again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

/// How many dead letters a replay or purge touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountView {
    /// The number.
    pub count: usize,
}
