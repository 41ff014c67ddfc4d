//! HTTP: requests, responses, and a small router.
//!
//! ```no_run
//! use berth_sdk::http::{Request, Response, Router};
//!
//! fn handle(req: Request) -> Response {
//!     Router::new()
//!         .get("/users/:id", |req| Response::text(format!("user {}\n", req.param("id").unwrap_or(""))))
//!         .post("/users", |req| match req.json::<serde_json::Value>() {
//!             Ok(user) => Response::json(&user).with_status(201),
//!             Err(e) => Response::text(format!("bad user: {e}\n")).with_status(400),
//!         })
//!         .handle(req)
//! }
//! berth_sdk::http_handler!(handle);
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::io::{Read, Write};
use wasip2::http::types::{
    Fields, IncomingRequest, Method as WasiMethod, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// An HTTP method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// PATCH
    Patch,
    /// OPTIONS
    Options,
    /// Any other method.
    Other(String),
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other(m) => m,
        })
    }
}

/// A request, with its body read whole.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    path: String,
    query: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    params: Vec<(String, String)>,
}

impl Request {
    /// A request, for tests of handlers.
    pub fn new(method: Method, path_and_query: &str, body: impl Into<Vec<u8>>) -> Request {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (path_and_query.to_owned(), None),
        };
        Request {
            method,
            path,
            query,
            headers: Vec::new(),
            body: body.into(),
            params: Vec::new(),
        }
    }

    /// Adds a header (for tests of handlers).
    pub fn with_header(mut self, name: &str, value: &str) -> Request {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query string, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// A query parameter (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .find_map(|pair| match pair.split_once('=') {
                Some((k, v)) if k == name => Some(v),
                None if pair == name => Some(""),
                _ => None,
            })
    }

    /// A header's value, if it is text (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// A path parameter captured by the [`Router`] (`:name` or `*name`).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text.
    pub fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `200`, `text/plain`.
    pub fn text(body: impl Into<String>) -> Response {
        Response::new(200)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into().into_bytes())
    }

    /// `200`, `application/json`, `value` serialized.
    pub fn json<T: Serialize>(value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(200)
                .with_header("content-type", "application/json")
                .with_body(body),
            Err(e) => {
                Response::text(format!("cannot serialize the response: {e}\n")).with_status(500)
            }
        }
    }

    /// `404`.
    pub fn not_found() -> Response {
        Response::text("not found\n").with_status(404)
    }

    /// Sets the status.
    pub fn with_status(mut self, status: u16) -> Response {
        self.status = status;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl From<&str> for Response {
    fn from(text: &str) -> Response {
        Response::text(text)
    }
}

impl From<String> for Response {
    fn from(text: String) -> Response {
        Response::text(text)
    }
}

type Handler = Box<dyn Fn(Request) -> Response>;

/// Dispatches requests by method and path pattern. Patterns are literal
/// segments, `:name` (one segment) and a final `*name` (the rest); the
/// first route that matches wins; a path that matches no route gets 404,
/// a path that matches with another method 405.
#[derive(Default)]
pub struct Router {
    routes: Vec<(Method, Vec<String>, Handler)>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.routes.len())
            .finish()
    }
}

impl Router {
    /// A router with no routes.
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds a route.
    pub fn route(
        mut self,
        method: Method,
        pattern: &str,
        handler: impl Fn(Request) -> Response + 'static,
    ) -> Router {
        let segments = pattern
            .trim_matches('/')
            .split('/')
            .map(str::to_owned)
            .collect();
        self.routes.push((method, segments, Box::new(handler)));
        self
    }

    /// Adds a GET route.
    pub fn get(self, pattern: &str, handler: impl Fn(Request) -> Response + 'static) -> Router {
        self.route(Method::Get, pattern, handler)
    }

    /// Adds a POST route.
    pub fn post(self, pattern: &str, handler: impl Fn(Request) -> Response + 'static) -> Router {
        self.route(Method::Post, pattern, handler)
    }

    /// Adds a PUT route.
    pub fn put(self, pattern: &str, handler: impl Fn(Request) -> Response + 'static) -> Router {
        self.route(Method::Put, pattern, handler)
    }

    /// Adds a DELETE route.
    pub fn delete(self, pattern: &str, handler: impl Fn(Request) -> Response + 'static) -> Router {
        self.route(Method::Delete, pattern, handler)
    }

    /// Runs the first matching route's handler.
    pub fn handle(&self, mut req: Request) -> Response {
        let path: Vec<&str> = req.path.trim_matches('/').split('/').collect();
        let mut path_matched = false;
        for (method, pattern, handler) in &self.routes {
            let Some(params) = match_path(pattern, &path) else {
                continue;
            };
            if *method != req.method {
                path_matched = true;
                continue;
            }
            req.params = params;
            return handler(req);
        }
        if path_matched {
            Response::text("method not allowed\n").with_status(405)
        } else {
            Response::not_found()
        }
    }
}

fn match_path(pattern: &[String], path: &[&str]) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    for (i, segment) in pattern.iter().enumerate() {
        if let Some(name) = segment.strip_prefix('*') {
            params.push((name.to_owned(), path.get(i..).unwrap_or_default().join("/")));
            return Some(params);
        }
        let actual = path.get(i)?;
        if let Some(name) = segment.strip_prefix(':') {
            if actual.is_empty() {
                return None;
            }
            params.push((name.to_owned(), (*actual).to_owned()));
        } else if segment != actual {
            return None;
        }
    }
    (pattern.len() == path.len()).then_some(params)
}

fn method(m: WasiMethod) -> Method {
    match m {
        WasiMethod::Get => Method::Get,
        WasiMethod::Head => Method::Head,
        WasiMethod::Post => Method::Post,
        WasiMethod::Put => Method::Put,
        WasiMethod::Delete => Method::Delete,
        WasiMethod::Patch => Method::Patch,
        WasiMethod::Options => Method::Options,
        WasiMethod::Connect => Method::Other("CONNECT".into()),
        WasiMethod::Trace => Method::Other("TRACE".into()),
        WasiMethod::Other(m) => Method::Other(m),
    }
}

/// Reads a `wasi:http` request, runs `handler`, writes its response. Used
/// by [`http_handler!`](crate::http_handler).
#[doc(hidden)]
pub fn __serve(
    incoming: IncomingRequest,
    out: ResponseOutparam,
    handler: impl Fn(Request) -> Response,
) {
    let path_and_query = incoming.path_with_query().unwrap_or_else(|| "/".into());
    let mut request = Request::new(method(incoming.method()), &path_and_query, Vec::new());
    request.headers = incoming
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    if let Ok(body) = incoming.consume()
        && let Ok(mut stream) = body.stream()
        && let Err(e) = Read::read_to_end(&mut stream, &mut request.body)
    {
        let response =
            Response::text(format!("cannot read the request body: {e}\n")).with_status(400);
        drop(stream);
        drop(body);
        return send(out, response);
    }
    send(out, handler(request));
}

fn send(out: ResponseOutparam, response: Response) {
    let entries: Vec<(String, Vec<u8>)> = response
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
        .collect();
    let headers = match Fields::from_list(&entries) {
        Ok(headers) => headers,
        Err(_) => {
            return send(
                out,
                Response::text("the handler made invalid headers\n").with_status(500),
            );
        }
    };
    let outgoing = OutgoingResponse::new(headers);
    if outgoing.set_status_code(response.status).is_err() {
        return send(
            out,
            Response::text("the handler made an invalid status\n").with_status(500),
        );
    }
    let Ok(body) = outgoing.body() else { return };
    ResponseOutparam::set(out, Ok(outgoing));
    let Ok(mut stream) = body.write() else { return };
    if stream.write_all(&response.body).is_ok() && stream.flush().is_ok() {
        drop(stream);
        let _ = OutgoingBody::finish(body, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_matches_params_and_methods() {
        let router = Router::new()
            .get("/users/:id", |r| {
                Response::text(format!("user {}", r.param("id").unwrap()))
            })
            .post("/users", |r| {
                Response::text(format!("made {}", r.text().unwrap())).with_status(201)
            })
            .get("/files/*rest", |r| {
                Response::text(r.param("rest").unwrap().to_owned())
            });
        let got = router.handle(Request::new(Method::Get, "/users/7?x=1", ""));
        assert_eq!((got.status(), got.body()), (200, &b"user 7"[..]));
        let made = router.handle(Request::new(Method::Post, "/users", "ada"));
        assert_eq!((made.status(), made.body()), (201, &b"made ada"[..]));
        assert_eq!(
            router
                .handle(Request::new(Method::Get, "/files/a/b.txt", ""))
                .body(),
            b"a/b.txt"
        );
        assert_eq!(
            router
                .handle(Request::new(Method::Delete, "/users/7", ""))
                .status(),
            405
        );
        assert_eq!(
            router
                .handle(Request::new(Method::Get, "/nope", ""))
                .status(),
            404
        );
        // A trailing slash does not matter: `/users/` is `/users`, which
        // only takes POST.
        assert_eq!(
            router
                .handle(Request::new(Method::Get, "/users/", ""))
                .status(),
            405
        );
    }

    #[test]
    fn requests_and_responses() {
        let req = Request::new(Method::Post, "/x?a=1&b", r#"{"n": 2}"#).with_header("X-Key", "v");
        assert_eq!(req.query_param("a"), Some("1"));
        assert_eq!(req.query_param("b"), Some(""));
        assert_eq!(req.query_param("c"), None);
        assert_eq!(req.header("x-key"), Some("v"));
        assert_eq!(req.json::<serde_json::Value>().unwrap()["n"], 2);
        let res = Response::json(&serde_json::json!({"ok": true}));
        assert_eq!(res.header("content-type"), Some("application/json"));
        assert_eq!(Response::from("hi").status(), 200);
    }
}
