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
//! | GET | `/v1/nodes` | the cluster's live nodes (a standalone host: itself) |
//! | GET | `/v1/keys` | list API keys (never the keys themselves) |
//! | POST | `/v1/keys` | make an API key (the answer shows it, once) |
//! | DELETE | `/v1/keys/{name}` | revoke an API key |
//! | GET | `/v1/usage` | usage totals (`?service=&since=&until=&by=hour\|day`) |
//! | GET | `/v1/usage/records` | usage records (`?service=&since=&until=&limit=`) |
//! | GET | `/v1/logs` | recent log lines (`?service=&since=&invocation=&level=&tail=&follow=1`), streamed with `follow` |
//! | GET | `/metrics` | Prometheus metrics |
//!
//! Routing and extraction are axum's ([`router`]); the `routes` module holds the
//! endpoints and `scrape` the metrics' gauges.

pub mod api;
mod routes;
mod scrape;

use crate::control::{ControlError, ControlPlane};
use crate::triggers::http::body::{BoxError, IncomingBody, ResponseBody, TooSlow};
use crate::triggers::http::handler::health;
use crate::values::units::ByteSize;
use api::{ErrorBody, ErrorDetail};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tower::ServiceExt;
use tracing::Instrument;

/// Largest JSON request body.
const MAX_JSON: usize = 1 << 20;

/// Who may use the admin API: whoever sends its token. There is no
/// admin API without one, on loopback either.
#[derive(Clone, Debug)]
pub struct Auth {
    token: Arc<str>,
}

/// An admin listener without a token.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the admin API would listen on {addr}{where_}, without a token: set --admin-token, BERTH_TOKEN or --admin-token-file",
    addr = .0,
    where_ = if .0.ip().is_loopback() { "" } else { ", which is not loopback" }
)]
pub struct TokenRequired(pub std::net::SocketAddr);

impl Auth {
    /// Requests must carry `Authorization: Bearer <token>`.
    pub fn token(token: String) -> Self {
        Auth {
            token: token.into(),
        }
    }

    /// The one rule for every admin listener: requests must carry its
    /// token, and there is no listener without one (the CLI makes one for
    /// a loopback listener when none is given).
    pub fn for_listener(
        addr: std::net::SocketAddr,
        token: Option<String>,
    ) -> Result<Auth, TokenRequired> {
        match token.filter(|t| !t.is_empty()) {
            Some(token) => Ok(Auth::token(token)),
            None => Err(TokenRequired(addr)),
        }
    }

    pub(crate) fn allows<B>(&self, req: &http::Request<B>) -> bool {
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        self.matches(given)
    }

    /// Whether `given` is the token (compared in constant time).
    pub(crate) fn matches(&self, given: &str) -> bool {
        constant_time_eq(given.as_bytes(), self.token.as_bytes())
    }
}

/// Compares without an early exit, so the time taken does not tell how
/// much of a guess was right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

/// An API error: a status, a stable code and a message, sent as
/// `{"error": {"code", "message"}}` and logged.
#[derive(Debug)]
pub(crate) struct ApiError {
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

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = match &e {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::BadRequest(_) | ControlError::InvalidConfig(_) => StatusCode::BAD_REQUEST,
            ControlError::RouteConflict(_) => StatusCode::CONFLICT,
            ControlError::InvalidComponent(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ControlError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ControlError::MissingSecret(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ControlError::Storage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        tracing::info!(
            status = self.status.as_u16(),
            code = self.code,
            "{}",
            self.message
        );
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
            },
        };
        let mut response = json(self.status, &body)
            .unwrap_or_else(|_| empty(self.status))
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// What an endpoint answers.
type ApiResult = Result<Response<ResponseBody>, ApiError>;

/// The admin API's routes, behind the token check.
pub fn router(control: Arc<ControlPlane>, auth: Auth) -> axum::Router {
    use routes::*;
    axum::Router::new()
        .route("/v1/artifacts", get(list_artifacts).post(upload))
        .route("/v1/artifacts/{digest}", get(artifact))
        .route("/v1/services", get(list_services))
        .route(
            "/v1/services/{name}",
            get(service).put(deploy).delete(remove),
        )
        .route("/v1/services/{name}/revisions", get(revisions))
        .route("/v1/services/{name}/rollback", post(rollback))
        .route("/v1/events", get(events))
        // `dead` is also a topic one may publish on.
        .route(
            "/v1/events/dead",
            get(dead_letters).delete(purge).post(publish_on_dead),
        )
        .route("/v1/events/dead/replay", post(replay))
        .route("/v1/events/{topic}", post(publish))
        .route("/v1/nodes", get(nodes))
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{name}", axum::routing::delete(revoke_key))
        .route("/v1/usage", get(usage))
        .route("/v1/usage/records", get(usage_records))
        .route("/v1/logs", get(logs))
        .route("/metrics", get(metrics))
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(refuse_head))
        .layer(axum::middleware::from_fn_with_state(auth, require_token))
        .with_state(control)
}

/// Refuses every request without the token, before routing.
async fn require_token(
    State(auth): State<Auth>,
    req: Request,
    next: Next,
) -> axum::response::Response {
    if auth.allows(&req) {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer <token>)",
        )
        .into_response()
    }
}

/// HEAD is no method of this API (axum would answer it as a GET, running
/// the whole query).
async fn refuse_head(req: Request, next: Next) -> axum::response::Response {
    if req.method() == Method::HEAD {
        return method_not_allowed(Method::HEAD, req.uri().clone())
            .await
            .into_response();
    }
    next.run(req).await
}

/// A path parameter, percent-decoded; one that does not decode is a `400
/// bad_request` like every other error of this API.
pub(crate) struct Param(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Param {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(p)| Param(p))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

async fn no_such_endpoint(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// The admin listener's handler: health (no token), then the [`router`],
/// with a trailing `/` ignored.
pub fn handler(
    control: Arc<ControlPlane>,
    auth: Auth,
) -> impl Fn(http::Request<IncomingBody>) -> Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    let runtime = control.runtime().clone();
    let console = crate::control::console::router(control.clone(), auth.clone());
    let router = router(control, auth);
    move |mut req| {
        let router = router.clone();
        let console = console.clone();
        let runtime = runtime.clone();
        Box::pin(async move {
            if let Some(response) = health(&runtime, req.uri().path()) {
                return response;
            }
            trim_trailing_slash(&mut req);
            let span =
                tracing::info_span!("admin", method = %req.method(), path = %req.uri().path());
            // The console has its own sign-in; the API takes the token.
            let path = req.uri().path();
            let router = if path == "/console" || path.starts_with("/console/") {
                console
            } else {
                router
            };
            let response = match router.oneshot(req).instrument(span).await {
                Ok(response) => response,
                Err(infallible) => match infallible {},
            };
            response.map(|body| {
                ResponseBody::Boxed(body.map_err(|e| -> BoxError { e.into() }).boxed_unsync())
            })
        })
    }
}

/// `/v1/services/` is `/v1/services`.
fn trim_trailing_slash<B>(req: &mut http::Request<B>) {
    let path = req.uri().path();
    if path.len() <= 1 || !path.ends_with('/') {
        return;
    }
    let trimmed = path.trim_end_matches('/');
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{trimmed}?{query}"),
        None => trimmed.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// One query parameter, decoded (`%XX`, and `+` for a space); an empty
/// value counts as absent.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// Reads a body of at most `limit` bytes. Past it: `413` naming
/// `too_large` when given, else `400` like any failed read of `what`.
async fn read_limited(
    body: axum::body::Body,
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
            _ if too_slow(&*e) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("{what} arrived too slowly: {e}"),
            ),
            _ => ApiError::bad_request(format!("reading {what} failed: {e}")),
        })?
        .to_bytes())
}

/// Whether a body failed because the client sent it too slowly.
fn too_slow(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.is::<TooSlow>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Reads a JSON body (at most [`MAX_JSON`]).
async fn read_json<T: DeserializeOwned>(body: axum::body::Body) -> Result<T, ApiError> {
    parse_json(&read_limited(body, MAX_JSON, None, "the request body").await?)
}

/// Reads a JSON body, or `T::default()` for an empty one.
async fn read_json_or_default<T: DeserializeOwned + Default>(
    body: axum::body::Body,
) -> Result<T, ApiError> {
    let body = read_limited(body, MAX_JSON, None, "the request body").await?;
    match body.iter().all(u8::is_ascii_whitespace) {
        true => Ok(T::default()),
        false => parse_json(&body),
    }
}

/// Parses JSON, naming the offending field in the error. (serde's own
/// errors with `serde_path_to_error`'s path: axum's `Json` extractor says
/// neither which field nor, for a missing one, where.)
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = if path == "." {
            format!("invalid JSON body: {}", e.inner())
        } else {
            format!("invalid JSON body at `{path}`: {}", e.inner())
        };
        ApiError::bad_request(message)
    })
}

/// A pretty JSON response with a final newline.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let q = Some("since=2026-11-23T10%3A00%3A00%2B01%3A00&a=a+b%2&e=&b=%zz%41");
        assert_eq!(
            query_param(q, "since").as_deref(),
            Some("2026-11-23T10:00:00+01:00")
        );
        assert_eq!(query_param(q, "a").as_deref(), Some("a b%2"));
        assert_eq!(query_param(q, "b").as_deref(), Some("%zzA"));
        assert_eq!(query_param(q, "e"), None);
        assert_eq!(query_param(None, "a"), None);
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn one_token_rule_for_every_admin_listener() {
        let loopback = "127.0.0.1:3001".parse().unwrap();
        let public = "0.0.0.0:3001".parse().unwrap();
        // Since the edge issue: no admin API without a token, loopback
        // included (the CLI makes one for loopback when none is given).
        assert!(Auth::for_listener(loopback, None).is_err());
        assert!(Auth::for_listener(loopback, Some(String::new())).is_err());
        assert_eq!(
            &*Auth::for_listener(public, Some("t".into())).unwrap().token,
            "t"
        );
        let refused = Auth::for_listener(public, None).unwrap_err().to_string();
        assert!(refused.contains("not loopback") && refused.contains("--admin-token"));
    }
}
