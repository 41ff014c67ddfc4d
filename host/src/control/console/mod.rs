//! The operator console: server-rendered pages on the admin listener, at
//! `/console`. No JavaScript at all (the pages' Content-Security-Policy
//! forbids any); they refresh themselves with a `<meta>` refresh.
//!
//! | method | path | shows / does |
//! |---|---|---|
//! | GET, POST | `/console/login` | the token form; a right token opens a session |
//! | POST | `/console/logout` | ends the session |
//! | GET | `/console` | services: revision, status per node, traffic, limits, capabilities |
//! | GET | `/console/services/{name}` | one service: traffic charts, configuration, revisions, logs |
//! | GET | `/console/usage` | usage per service and day, as charts (`?days=`) |
//! | GET | `/console/events` | subscriptions' queues, topics, dead letters |
//! | POST | `/console/events/replay` | delivers dead letters again (`id`, or `all`) |
//! | POST | `/console/events/purge` | purges dead letters (`topic`, or all) |
//! | GET | `/console/nodes` | the nodes |
//! | GET | `/console/invocations` | the form that finds an invocation by id (`?id=`) |
//! | GET | `/console/invocations/{id}` | one invocation's record and log lines |
//!
//! **Sign-in** takes the admin token (the same one the API takes) and
//! opens a session: a random id in an `HttpOnly`, `SameSite=Strict`
//! cookie (`Secure` too over TLS), kept in memory for
//! [`SESSION_LIFETIME`]. A request with the token as `Authorization:
//! Bearer` is let in as well. Without either, a page is `401` with the
//! sign-in form. The public listener strips the cookie from what it
//! hands guests (browsers send a host's cookies to all its ports).
//!
//! **A change** (replay, purge, sign-out) is a POST that must come from
//! the console itself: the session's own random CSRF token in the form,
//! and no `Origin` or `Sec-Fetch-Site` saying another site sent it —
//! else `403`, and nothing changes.

mod charts;
mod pages;

use super::ControlPlane;
use super::admin::Auth;
use crate::triggers::events::bus::Replay;
use crate::triggers::http::conn::Peer;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, HOST, LOCATION, ORIGIN,
    REFERRER_POLICY, SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a session lasts after sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Most sessions kept at once (the oldest goes first).
const MAX_SESSIONS: usize = 1024;

/// The session cookie's name (the public listener strips it from what it
/// hands guests).
const COOKIE_NAME: &str = crate::triggers::http::handler::CONSOLE_COOKIE;

/// Largest form accepted.
const MAX_FORM: usize = 64 << 10;

/// The console's state: the control plane, the token and the sessions.
#[derive(Clone)]
pub struct Console {
    control: Arc<ControlPlane>,
    auth: Auth,
    sessions: Arc<Sessions>,
}

/// Open sessions, by id.
#[derive(Default)]
struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

/// A signed-in browser.
#[derive(Clone)]
pub(crate) struct Session {
    /// The token its forms must carry.
    csrf: String,
    /// When it ends.
    expires: Instant,
}

impl Sessions {
    /// A new session (none if the OS gives no randomness).
    fn open(&self) -> Option<(String, Session)> {
        let id = random_hex()?;
        let session = Session {
            csrf: random_hex()?,
            expires: Instant::now() + SESSION_LIFETIME,
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        open.retain(|_, s| s.expires > now);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(id, _)| id.clone())
        {
            open.remove(&oldest);
        }
        open.insert(id.clone(), session.clone());
        Some((id, session))
    }

    fn get(&self, id: &str) -> Option<Session> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    fn close(&self, id: &str) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// 32 random bytes, in hex.
fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}

/// Who is asking: a signed-in browser, or a client with the token.
#[derive(Clone)]
pub(crate) enum Visitor {
    Session { id: String, session: Session },
    Bearer,
}

impl Visitor {
    /// The CSRF token its forms carry (none needed with the bearer token).
    pub(crate) fn csrf(&self) -> &str {
        match self {
            Visitor::Session { session, .. } => &session.csrf,
            Visitor::Bearer => "",
        }
    }
}

/// The console's routes.
pub fn router(control: Arc<ControlPlane>, auth: Auth) -> axum::Router {
    let console = Console {
        control,
        auth,
        sessions: Arc::default(),
    };
    let pages = axum::Router::new()
        .route("/console", get(services))
        .route("/console/services/{name}", get(service))
        .route("/console/usage", get(usage))
        .route("/console/events", get(events))
        .route("/console/events/replay", post(replay))
        .route("/console/events/purge", post(purge))
        .route("/console/nodes", get(nodes))
        .route("/console/invocations", get(find_invocation))
        .route("/console/invocations/{id}", get(invocation))
        .route("/console/logout", post(logout))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            signed_in,
        ));
    axum::Router::new()
        .route("/console/login", get(login_page).post(login))
        .merge(pages)
        .layer(axum::middleware::from_fn(secure_headers))
        .with_state(console)
}

/// Every answer: no caching, no framing, no scripts, no referrer to other
/// sites.
async fn secure_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not `no-referrer`: a browser would then send `Origin: null` with
    // the console's own forms.
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Lets in a session or the bearer token; a POST must also pass
/// [`same_origin`] and carry the session's CSRF token (checked by the
/// extractor [`Change`], which reads the form).
async fn signed_in(State(console): State<Console>, mut req: Request, next: Next) -> Response {
    let visitor = match session_id(req.headers()).and_then(|id| {
        console
            .sessions
            .get(&id)
            .map(|session| Visitor::Session { id, session })
    }) {
        Some(visitor) => visitor,
        None if console.auth.allows(&req) => Visitor::Bearer,
        None if req.method() == http::Method::GET => {
            let next = req.uri().path_and_query().map(|p| p.as_str().to_owned());
            return html(
                StatusCode::UNAUTHORIZED,
                pages::login(None, next.as_deref().unwrap_or("/console")),
            );
        }
        None => return refused(StatusCode::UNAUTHORIZED, "sign in first"),
    };
    if req.method() != http::Method::GET
        && !same_origin(req.headers(), req.uri().authority().map(|a| a.as_str()))
    {
        return refused(
            StatusCode::FORBIDDEN,
            "this change was sent from another site",
        );
    }
    req.extensions_mut().insert(visitor);
    next.run(req).await
}

/// The session id a request's cookie names.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether a POST came from a page of this listener: a browser says where
/// it sent it from in `Sec-Fetch-Site` and `Origin`; a client that sends
/// neither is not a browser on another site.
fn same_origin(headers: &HeaderMap, authority: Option<&str>) -> bool {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = header(http::HeaderName::from_static("sec-fetch-site"))
        && site != "same-origin"
        && site != "none"
    {
        return false;
    }
    match header(ORIGIN) {
        None => true,
        Some(origin) => {
            // HTTP/2 names the authority in the URI, not in a Host header.
            let host = authority.or(header(HOST)).unwrap_or("");
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            !host.is_empty() && authority == Some(host)
        }
    }
}

/// A form's fields.
struct Form(HashMap<String, String>);

impl Form {
    async fn read(body: Body) -> Result<Form, Response> {
        let body = http_body_util::Limited::new(body, MAX_FORM)
            .collect()
            .await
            .map_err(|_| refused(StatusCode::BAD_REQUEST, "the form could not be read"))?
            .to_bytes();
        Ok(Form(
            form_urlencoded::parse(&body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Whether it carries `visitor`'s CSRF token.
    fn allowed_for(&self, visitor: &Visitor) -> bool {
        match visitor {
            Visitor::Bearer => true,
            Visitor::Session { session, .. } => super::admin::constant_time_eq(
                self.get("csrf").unwrap_or("").as_bytes(),
                session.csrf.as_bytes(),
            ),
        }
    }
}

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn refused(status: StatusCode, message: &str) -> Response {
    html(status, pages::message(status, message))
}

/// A redirect after a change (303: the browser then GETs `to`, or the
/// console's first page if `to` cannot be a header).
fn see_other(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let to = HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/console"));
    response.headers_mut().insert(LOCATION, to);
    response
}

/// Only paths of this console are followed after sign-in.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(p) if p.starts_with("/console") && !p.contains("//") && !p.contains('\\') => p,
        _ => "/console",
    }
}

async fn login_page(RawQuery(query): RawQuery) -> Response {
    let next = super::admin::query_param(query.as_deref(), "next");
    html(
        StatusCode::OK,
        pages::login(None, local_path(next.as_deref())),
    )
}

async fn login(
    State(console): State<Console>,
    peer: Option<axum::Extension<Peer>>,
    uri: http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Nobody signs a browser in from another site.
    if !same_origin(&headers, uri.authority().map(|a| a.as_str())) {
        return refused(
            StatusCode::FORBIDDEN,
            "this sign-in was sent from another site",
        );
    }
    let form = match Form::read(body).await {
        Ok(form) => form,
        Err(refusal) => return refusal,
    };
    let next = local_path(form.get("next")).to_owned();
    if !console.auth.matches(form.get("token").unwrap_or("")) {
        tracing::info!("console sign-in refused: wrong token");
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("That is not the admin token."), &next),
        );
    }
    let Some((id, _)) = console.sessions.open() else {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "no session can be made: the system gives no randomness",
        );
    };
    let mut response = see_other(&next);
    // Over TLS, never sent in the clear.
    let secure = if peer.is_some_and(|p| p.tls) {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE_NAME}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_LIFETIME.as_secs()
    );
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

async fn logout(State(console): State<Console>, change: Change) -> Response {
    if let Visitor::Session { id, .. } = &change.visitor {
        console.sessions.close(id);
    }
    let mut response = see_other("/console/login");
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static(
            "berth_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

/// A page's request: the control plane, and who asks (let in by
/// [`signed_in`]).
struct Asker {
    control: Arc<ControlPlane>,
    visitor: Visitor,
}

impl axum::extract::FromRequestParts<Console> for Asker {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        console: &Console,
    ) -> Result<Self, Response> {
        let visitor = parts
            .extensions
            .get::<Visitor>()
            .cloned()
            .ok_or_else(|| refused(StatusCode::UNAUTHORIZED, "sign in first"))?;
        Ok(Asker {
            control: console.control.clone(),
            visitor,
        })
    }
}

/// A change's request: who asks, and its form, which carries the
/// session's CSRF token (else `403`, and nothing changes).
struct Change {
    control: Arc<ControlPlane>,
    visitor: Visitor,
    form: Form,
}

impl axum::extract::FromRequest<Console> for Change {
    type Rejection = Response;

    async fn from_request(req: Request, console: &Console) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let Asker { control, visitor } =
            <Asker as axum::extract::FromRequestParts<Console>>::from_request_parts(
                &mut parts, console,
            )
            .await?;
        let form = Form::read(body).await?;
        if !form.allowed_for(&visitor) {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "this form is not from this session (reload the page)",
            ));
        }
        Ok(Change {
            control,
            visitor,
            form,
        })
    }
}

async fn not_found(asker: Asker) -> Response {
    pages::not_found(&asker.control, &asker.visitor, "There is no such page.")
}

async fn services(asker: Asker) -> Response {
    pages::services(&asker.control, &asker.visitor).await
}

async fn service(asker: Asker, Path(name): Path<String>) -> Response {
    pages::service(&asker.control, &asker.visitor, &name).await
}

async fn usage(asker: Asker, RawQuery(query): RawQuery) -> Response {
    let days = super::admin::query_param(query.as_deref(), "days")
        .and_then(|d| d.parse::<u32>().ok())
        .filter(|d| (1..=90).contains(d))
        .unwrap_or(14);
    pages::usage(&asker.control, &asker.visitor, days).await
}

async fn events(asker: Asker, RawQuery(query): RawQuery) -> Response {
    // Only what a change of this console redirects with is shown.
    let done = super::admin::query_param(query.as_deref(), "done").filter(|done| {
        done.split_once(' ').is_some_and(|(what, n)| {
            matches!(what, "replayed" | "purged") && n.parse::<u64>().is_ok()
        })
    });
    pages::events(&asker.control, &asker.visitor, done.as_deref()).await
}

async fn replay(change: Change) -> Response {
    let which = match (change.form.get("id"), change.form.get("all")) {
        (Some(id), _) => Replay::Id(id.to_owned()),
        (None, Some(_)) => Replay::All,
        (None, None) => {
            return refused(StatusCode::BAD_REQUEST, "replay which dead letter?");
        }
    };
    changed(change.control.bus().replay(which).await, "replayed")
}

async fn purge(change: Change) -> Response {
    let topic = change.form.get("topic");
    changed(change.control.bus().purge(topic).await, "purged")
}

/// After a change of the dead letters: back to the events page, saying
/// how many were `done`.
fn changed(result: Result<usize, crate::triggers::events::bus::BusError>, done: &str) -> Response {
    match result {
        Ok(n) => {
            tracing::info!(count = n, "dead letters {done} from the console");
            see_other(&format!("/console/events?done={done}+{n}"))
        }
        Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn nodes(asker: Asker) -> Response {
    pages::nodes(&asker.control, &asker.visitor).await
}

async fn find_invocation(asker: Asker, RawQuery(query): RawQuery) -> Response {
    match super::admin::query_param(query.as_deref(), "id") {
        Some(id) => see_other(&format!(
            "/console/invocations/{}",
            form_urlencoded::byte_serialize(id.trim().as_bytes()).collect::<String>()
        )),
        None => pages::find_invocation(&asker.control, &asker.visitor),
    }
}

async fn invocation(asker: Asker, Path(id): Path<String>) -> Response {
    pages::invocation(&asker.control, &asker.visitor, &id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn same_origin_of(h: &HeaderMap) -> bool {
        same_origin(h, None)
    }

    #[test]
    fn a_change_must_come_from_this_origin() {
        // HTTP/2: the authority from the URI.
        let h2 = headers(&[("origin", "https://console.example:3001")]);
        assert!(same_origin(&h2, Some("console.example:3001")));
        assert!(!same_origin(&h2, Some("other.example:3001")));
        assert!(same_origin_of(&headers(&[("host", "127.0.0.1:3001")])));
        assert!(same_origin_of(&headers(&[
            ("host", "127.0.0.1:3001"),
            ("origin", "http://127.0.0.1:3001"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_origin_of(&headers(&[
            ("host", "127.0.0.1:3001"),
            ("origin", "http://evil.example"),
        ])));
        assert!(!same_origin_of(&headers(&[
            ("host", "127.0.0.1:3001"),
            ("origin", "null"),
        ])));
        assert!(!same_origin_of(&headers(&[
            ("host", "127.0.0.1:3001"),
            ("sec-fetch-site", "cross-site"),
        ])));
        assert!(!same_origin_of(&headers(&[
            ("host", "127.0.0.1:3001"),
            ("origin", "http://127.0.0.1:3002"),
        ])));
    }

    #[test]
    fn sessions_and_cookies() {
        let sessions = Sessions::default();
        let (id, session) = sessions.open().unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, session.csrf);
        assert_eq!(sessions.get(&id).unwrap().csrf, session.csrf);
        let h = headers(&[("cookie", &format!("a=b; {COOKIE_NAME}={id}; c=d"))]);
        assert_eq!(session_id(&h).as_deref(), Some(id.as_str()));
        sessions.close(&id);
        assert!(sessions.get(&id).is_none());
        for _ in 0..MAX_SESSIONS + 10 {
            sessions.open();
        }
        assert_eq!(sessions.open.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn only_console_paths_are_followed() {
        assert_eq!(local_path(Some("/console/events")), "/console/events");
        assert_eq!(local_path(Some("https://evil.example")), "/console");
        assert_eq!(local_path(Some("/console//evil.example")), "/console");
        assert_eq!(local_path(None), "/console");
    }
}
