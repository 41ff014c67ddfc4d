//! The admin API: HTTP + JSON on its own listener, bearer-token auth.
//! `docs/admin-api.md` documents every endpoint.
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | `/healthz`, `/readyz` | health (no token needed) |
//! | GET | `/v1/artifacts` | list artifacts |
//! | POST | `/v1/artifacts` | upload a component (the body is the `.wasm`) |
//! | GET | `/v1/artifacts/{digest}` | one artifact |
//! | GET | `/v1/services` | list services |
//! | GET | `/v1/services/{name}` | one service |
//! | PUT | `/v1/services/{name}` | deploy a revision (creates the service) |
//! | DELETE | `/v1/services/{name}` | remove the service |
//! | GET | `/v1/services/{name}/revisions` | its revisions |
//! | POST | `/v1/services/{name}/rollback` | switch to an older revision |
//! | POST | `/v1/events/{topic}` | publish CloudEvents (binary, structured or batch mode) |
//! | GET | `/v1/events` | queue depth, in flight, retries, dead letters per subscription |
//! | GET | `/v1/events/dead` | the dead letters (`?topic=`) |
//! | POST | `/v1/events/dead/replay` | deliver dead letters again |
//! | DELETE | `/v1/events/dead` | purge dead letters (`?topic=`) |
//! | GET | `/v1/usage` | usage totals (`?service=&since=&until=&by=hour\|day`) |
//! | GET | `/v1/usage/records` | usage records (`?service=&since=&until=&limit=`) |
//! | GET | `/metrics` | Prometheus metrics |

use crate::api::{
    ArtifactView, CountView, DeadLetterView, DeployRequest, ErrorBody, ErrorDetail, EventsView,
    PublishedEvent, PublishedView, ReplayRequest, RevisionView, RollbackRequest, ServiceView,
};
use crate::control::{ControlError, ControlPlane};
use crate::events::Topic;
use crate::events::bus::{BusError, Replay};
use crate::http::body::ResponseBody;
use crate::http::handler::health;
use crate::metrics::{Gauge, label};
use crate::runtime::Service;
use crate::service::ServiceName;
use crate::units::{ByteSize, parse_time};
use crate::usage::{Ledger, Period, Query};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Largest JSON request body.
const MAX_JSON: usize = 1 << 20;

/// Who may use the admin API.
#[derive(Clone, Debug)]
pub struct Auth {
    token: Option<Arc<str>>,
}

impl Auth {
    /// Requests must carry `Authorization: Bearer <token>`.
    pub fn token(token: String) -> Self {
        Auth {
            token: Some(token.into()),
        }
    }

    /// No token: for a loopback-only listener.
    pub fn none() -> Self {
        Auth { token: None }
    }

    fn allows<B>(&self, req: &Request<B>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(given.as_bytes(), token.as_bytes())
    }
}

/// Compares without an early exit, so the time taken does not tell how
/// much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

/// An API error: a status, a stable code and a message.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = match &e {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::RouteConflict(_) => StatusCode::CONFLICT,
            ControlError::InvalidComponent(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ControlError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ControlError::MissingSecret(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ControlError::Storage(_) => StatusCode::INSUFFICIENT_STORAGE,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

type ApiResult = Result<Response<ResponseBody>, ApiError>;

/// The admin listener's handler.
pub fn handler(
    control: Arc<ControlPlane>,
    auth: Auth,
) -> impl Fn(
    Request<hyper::body::Incoming>,
) -> Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |req| {
        let control = control.clone();
        let auth = auth.clone();
        Box::pin(async move {
            if let Some(response) = health(req.uri().path()) {
                return response;
            }
            let method = req.method().clone();
            let path = req.uri().path().to_owned();
            let result = if auth.allows(&req) {
                route(&control, req).await
            } else {
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a valid bearer token is required (Authorization: Bearer <token>)",
                ))
            };
            match result {
                Ok(response) => response,
                Err(e) => {
                    tracing::info!(%method, %path, status = e.status.as_u16(), code = e.code, "{}", e.message);
                    error_response(e)
                }
            }
        })
    }
}

async fn route(control: &ControlPlane, req: Request<hyper::body::Incoming>) -> ApiResult {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = req.method().clone();
    match (segments.as_slice(), &method) {
        (["v1", "artifacts"], &Method::GET) => {
            let all = control.artifacts().await?;
            json(
                StatusCode::OK,
                &all.iter().map(ArtifactView::from).collect::<Vec<_>>(),
            )
        }
        (["v1", "artifacts"], &Method::POST) => upload(control, req).await,
        (["v1", "artifacts", digest], &Method::GET) => {
            let digest = digest
                .parse()
                .map_err(|e: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e))?;
            let all = control.artifacts().await?;
            let found = all.iter().find(|a| a.digest == digest).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("artifact {digest} is not uploaded"),
                )
            })?;
            json(StatusCode::OK, &ArtifactView::from(found))
        }
        (["v1", "services"], &Method::GET) => {
            let all = control.services().await?;
            json(
                StatusCode::OK,
                &all.iter().map(ServiceView::from).collect::<Vec<_>>(),
            )
        }
        (["v1", "services", name], &Method::GET) => {
            let status = control.service(service_name(name)?).await?;
            json(StatusCode::OK, &ServiceView::from(&status))
        }
        (["v1", "services", name], &Method::PUT) => {
            let name = service_name(name)?;
            let request: DeployRequest = read_json(req).await?;
            let artifact = request.artifact.parse().map_err(|e: String| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("artifact: {e}"),
                )
            })?;
            let record = control
                .deploy(name, artifact, request.into_config())
                .await?;
            // Revision 1 is a new service.
            let status = if record.number == 1 {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json(status, &RevisionView::new(&record, true))
        }
        (["v1", "services", name], &Method::DELETE) => {
            control.remove(service_name(name)?).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (["v1", "services", name, "revisions"], &Method::GET) => {
            let (active, revisions) = control.revisions(service_name(name)?).await?;
            let views: Vec<_> = revisions
                .iter()
                .map(|r| RevisionView::new(r, r.number == active))
                .collect();
            json(StatusCode::OK, &views)
        }
        (["v1", "services", name, "rollback"], &Method::POST) => {
            let name = service_name(name)?;
            let request: RollbackRequest = read_json_or_default(req).await?;
            let record = control.rollback(name, request.to).await?;
            json(StatusCode::OK, &RevisionView::new(&record, true))
        }
        (["v1", "events"], &Method::GET) => {
            let bus = control.bus();
            let view = EventsView {
                subscriptions: bus.stats().await.map_err(bus_error)?,
                topics: bus.topics().await.map_err(bus_error)?,
            };
            json(StatusCode::OK, &view)
        }
        (["v1", "events", "dead"], &Method::GET) => {
            let topic = query_param(&req, "topic");
            let dead = control
                .bus()
                .dead_letters(topic.as_deref())
                .await
                .map_err(bus_error)?;
            json(
                StatusCode::OK,
                &dead.iter().map(DeadLetterView::from).collect::<Vec<_>>(),
            )
        }
        (["v1", "events", "dead"], &Method::DELETE) => {
            let topic = query_param(&req, "topic");
            let count = control
                .bus()
                .purge(topic.as_deref())
                .await
                .map_err(bus_error)?;
            json(StatusCode::OK, &CountView { count })
        }
        (["v1", "events", "dead", "replay"], &Method::POST) => {
            let request: ReplayRequest = read_json(req).await?;
            let which = match (request.id, request.all) {
                (Some(id), false) => Replay::Id(id),
                (None, true) => Replay::All,
                _ => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "give either an `id` or `\"all\": true`",
                    ));
                }
            };
            let by_id = matches!(which, Replay::Id(_));
            let count = control.bus().replay(which).await.map_err(bus_error)?;
            if by_id && count == 0 {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no dead letter has that event id",
                ));
            }
            json(StatusCode::OK, &CountView { count })
        }
        (["v1", "events", topic], &Method::POST) => publish(control, topic, req).await,
        (["v1", "usage"], &Method::GET) => {
            let (ledger, query) = usage_query(control, &req)?;
            let report = ledger.report(&query).map_err(storage_error)?;
            json(StatusCode::OK, &report)
        }
        (["v1", "usage", "records"], &Method::GET) => {
            let (ledger, query) = usage_query(control, &req)?;
            let limit = match query_param(&req, "limit") {
                None => DEFAULT_RECORDS,
                Some(n) => n
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_RECORDS).contains(n))
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            format!("invalid limit {n:?}: a number from 1 to {MAX_RECORDS}"),
                        )
                    })?,
            };
            let records = ledger.records(&query, limit).map_err(storage_error)?;
            json(StatusCode::OK, &records)
        }
        (["metrics"], &Method::GET) => {
            let text = scrape(control).await;
            let mut response = Response::new(ResponseBody::full(text));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(response)
        }
        (
            ["v1", "artifacts"]
            | ["v1", "artifacts", _]
            | ["v1", "services"]
            | ["v1", "services", _]
            | ["v1", "services", _, "revisions" | "rollback"]
            | ["v1", "events"]
            | ["v1", "events", _]
            | ["v1", "events", "dead", "replay"]
            | ["v1", "usage"]
            | ["v1", "usage", "records"]
            | ["metrics"],
            _,
        ) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such endpoint: {path}"),
        )),
    }
}

async fn upload(control: &ControlPlane, req: Request<hyper::body::Incoming>) -> ApiResult {
    let limit = control.max_upload();
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit.bytes()) {
        return Err(ControlError::TooLarge(limit).into());
    }
    let body = read_limited(
        req.into_body(),
        limit.bytes() as usize,
        Some(limit),
        "the upload",
    )
    .await?;
    let (record, created) = control.upload(body.to_vec()).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json(status, &ArtifactView::from(&record))
}

async fn publish(
    control: &ControlPlane,
    topic: &str,
    req: Request<hyper::body::Incoming>,
) -> ApiResult {
    let topic = Topic::parse(topic)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    let batch = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/cloudevents-batch+json")
        });
    let max_event = control.max_event_size();
    // A batch may hold many events, each within the limit.
    let limit = if batch {
        (max_event.bytes() * 64).min(32 << 20)
    } else {
        // Binary mode: the body is the data; headers are bounded by hyper.
        max_event.bytes() + 4096
    };
    let headers = req.headers().clone();
    let body = read_limited(
        req.into_body(),
        limit as usize,
        Some(max_event),
        "the events",
    )
    .await?;
    let events = crate::events::cloudevents::from_request(&topic, &headers, body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    let ids: Vec<String> = events.iter().map(|e| e.attributes.id.clone()).collect();
    let counts = control.publish(events).await?;
    let view = PublishedView {
        published: ids
            .into_iter()
            .zip(counts)
            .map(|(id, deliveries)| PublishedEvent { id, deliveries })
            .collect(),
    };
    json(StatusCode::ACCEPTED, &view)
}

/// Records listed when no `limit` is given, and the most one page holds.
const DEFAULT_RECORDS: usize = 1000;
const MAX_RECORDS: usize = 100_000;

/// The ledger and the query of a `/v1/usage` request.
fn usage_query<B>(
    control: &ControlPlane,
    req: &Request<B>,
) -> Result<(Arc<Ledger>, Query), ApiError> {
    let ledger = control.runtime().ledger().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this host keeps no usage ledger",
        )
    })?;
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message);
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        query_param(req, name)
            .map(|t| parse_time(&t).map_err(|e| bad(format!("`{name}`: {e}"))))
            .transpose()
    };
    let query = Query {
        service: query_param(req, "service"),
        since_ms: time("since")?,
        until_ms: time("until")?,
        by: query_param(req, "by")
            .map(|b| b.parse::<Period>().map_err(|e| bad(format!("`by`: {e}"))))
            .transpose()?,
    };
    Ok((ledger, query))
}

/// The metrics, with the gauges read now.
async fn scrape(control: &ControlPlane) -> String {
    let runtime = control.runtime();
    let mut gauges: Vec<Gauge> = Vec::new();
    let services = runtime.services();
    let service_label = |s: &Service| format!("service=\"{}\"", label(s.name().as_str()));
    for s in &services {
        let in_flight = s.admission.in_flight(s.limits().concurrency);
        gauges.push((
            "berth_instances_in_flight",
            "Instances of the service running now.",
            service_label(s),
            in_flight as f64,
        ));
    }
    for s in &services {
        gauges.push((
            "berth_queue_depth",
            "Invocations of the service waiting for a slot.",
            service_label(s),
            s.admission.queued() as f64,
        ));
    }
    for s in &services {
        gauges.push((
            "berth_service_loaded",
            "Whether the service's component is in memory (1) or unloaded while idle (0).",
            service_label(s),
            if s.is_loaded() { 1.0 } else { 0.0 },
        ));
    }
    for s in &services {
        gauges.push((
            "berth_service_revision",
            "The revision the service runs.",
            service_label(s),
            s.revision as f64,
        ));
    }
    let max = runtime.engine().max_instances() as f64;
    gauges.push((
        "berth_host_instances_in_flight",
        "Instances running now, all services.",
        String::new(),
        max - runtime.host_slots().available_permits() as f64,
    ));
    gauges.push((
        "berth_host_instances_max",
        "Instances that may run at once, all services (the pooling allocator's slots).",
        String::new(),
        max,
    ));
    gauges.push((
        "berth_services",
        "Services deployed.",
        String::new(),
        services.len() as f64,
    ));
    if let Some(rss) = resident_memory() {
        gauges.push((
            "berth_resident_memory_bytes",
            "The host process's resident memory.",
            String::new(),
            rss as f64,
        ));
    }
    match control.bus().stats().await {
        Ok(stats) => {
            let sub = |s: &crate::events::bus::SubscriptionStats| {
                format!(
                    "service=\"{}\",subscription=\"{}\"",
                    label(&s.service),
                    label(&s.subscription)
                )
            };
            let families: [StatFamily; 4] = [
                (
                    "berth_event_queue_depth",
                    "Deliveries waiting, retries included.",
                    |s| s.depth,
                ),
                (
                    "berth_event_in_flight",
                    "Deliveries being handled now.",
                    |s| s.in_flight,
                ),
                (
                    "berth_event_retrying",
                    "Deliveries waiting for a retry.",
                    |s| s.retrying,
                ),
                ("berth_event_dead_letters", "Dead letters kept.", |s| {
                    s.dead_letters
                }),
            ];
            for (name, help, value) in families {
                for s in &stats {
                    gauges.push((name, help, sub(s), value(s) as f64));
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "reading the event queues for /metrics failed"),
    }
    runtime.metrics().render(&gauges)
}

/// A gauge family read from subscription stats: name, help, value.
type StatFamily = (
    &'static str,
    &'static str,
    fn(&crate::events::bus::SubscriptionStats) -> u64,
);

/// This process's resident set size, from `/proc/self/statm`.
fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn storage_error(e: rusqlite::Error) -> ApiError {
    ApiError::from(ControlError::Storage(e.to_string()))
}

fn bus_error(e: BusError) -> ApiError {
    ApiError::from(ControlError::Storage(e.to_string()))
}

/// One query parameter, percent-decoded.
fn query_param<B>(req: &Request<B>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name && !v.is_empty()).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes (and `+`, a space in a query); an invalid escape
/// is kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(digit),
            bytes.get(i + 2).copied().and_then(digit),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn service_name(s: &str) -> Result<ServiceName, ApiError> {
    ServiceName::parse(s)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))
}

async fn read_body(req: Request<hyper::body::Incoming>) -> Result<Bytes, ApiError> {
    read_limited(req.into_body(), MAX_JSON, None, "the request body").await
}

/// Reads a body of at most `limit` bytes. Past it: `413` naming
/// `too_large` when given, else `400` like any failed read of `what`.
async fn read_limited(
    body: hyper::body::Incoming,
    limit: usize,
    too_large: Option<ByteSize>,
    what: &str,
) -> Result<Bytes, ApiError> {
    Ok(Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| match too_large {
            Some(shown) if e.is::<http_body_util::LengthLimitError>() => {
                ApiError::from(ControlError::TooLarge(shown))
            }
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("reading {what} failed: {e}"),
            ),
        })?
        .to_bytes())
}

async fn read_json<T: DeserializeOwned>(
    req: Request<hyper::body::Incoming>,
) -> Result<T, ApiError> {
    let body = read_body(req).await?;
    parse_json(&body)
}

async fn read_json_or_default<T: DeserializeOwned + Default>(
    req: Request<hyper::body::Incoming>,
) -> Result<T, ApiError> {
    let body = read_body(req).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(&body)
}

/// Parses JSON, naming the offending field in the error.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = if path == "." {
            format!("invalid JSON body: {}", e.inner())
        } else {
            format!("invalid JSON body at `{path}`: {}", e.inner())
        };
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    })
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> ApiResult {
    let mut body = serde_json::to_vec_pretty(value)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    body.push(b'\n');
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Full(None));
    *response.status_mut() = status;
    response
}

fn error_response(e: ApiError) -> Response<ResponseBody> {
    let body = ErrorBody {
        error: ErrorDetail {
            code: e.code.into(),
            message: e.message,
        },
    };
    let mut response = json(e.status, &body).unwrap_or_else(|_| empty(e.status));
    if e.status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(
            percent_decode("2026-11-23T10%3A00%3A00%2B01%3A00"),
            "2026-11-23T10:00:00+01:00"
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(constant_time_eq(b"", b""));
    }
}
