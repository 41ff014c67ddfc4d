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

use crate::api::{
    ArtifactView, CountView, DeadLetterView, DeployRequest, ErrorBody, ErrorDetail, EventsView,
    PublishedEvent, PublishedView, ReplayRequest, RevisionView, RollbackRequest, ServiceView,
};
use crate::control::{ControlError, ControlPlane};
use crate::events::Topic;
use crate::events::bus::{BusError, Replay};
use crate::http::body::ResponseBody;
use crate::http::handler::health;
use crate::service::{ServiceConfig, ServiceName};
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
            let config = ServiceConfig {
                routes: request.routes,
                limits: request.limits,
                subscriptions: request.subscriptions,
                publish: request.publish,
                schedules: request.schedules,
            };
            let record = control.deploy(name, artifact, config).await?;
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
        (
            ["v1", "artifacts"]
            | ["v1", "artifacts", _]
            | ["v1", "services"]
            | ["v1", "services", _]
            | ["v1", "services", _, "revisions" | "rollback"]
            | ["v1", "events"]
            | ["v1", "events", _]
            | ["v1", "events", "dead", "replay"],
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
    let body = Limited::new(req.into_body(), limit.bytes() as usize)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::from(ControlError::TooLarge(limit))
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("reading the upload failed: {e}"),
                )
            }
        })?
        .to_bytes();
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
    let body = Limited::new(req.into_body(), limit as usize)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::from(ControlError::TooLarge(max_event))
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("reading the events failed: {e}"),
                )
            }
        })?
        .to_bytes();
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

fn bus_error(e: BusError) -> ApiError {
    ApiError::from(ControlError::Storage(e.to_string()))
}

/// One query parameter (no percent-decoding needed for topics).
fn query_param<B>(req: &Request<B>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_owned())
    })
}

fn service_name(s: &str) -> Result<ServiceName, ApiError> {
    ServiceName::parse(s)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))
}

async fn read_body(req: Request<hyper::body::Incoming>) -> Result<Bytes, ApiError> {
    Ok(Limited::new(req.into_body(), MAX_JSON)
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("reading the request body failed: {e}"),
            )
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
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(constant_time_eq(b"", b""));
    }
}
