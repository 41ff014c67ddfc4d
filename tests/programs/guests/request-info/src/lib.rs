//! `request-info`: answers with the request as the guest sees it — method,
//! scheme, authority, path and query, then every header (`name: value`,
//! sorted) — so tests can check that HTTP/1.1 and HTTP/2, TLS or not, give
//! the guest the same request, and what the edge added or removed.

use wasip2::http::types::{IncomingRequest, Method, ResponseOutparam, Scheme};

struct RequestInfo;

impl wasip2::exports::http::incoming_handler::Guest for RequestInfo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let method = match request.method() {
            Method::Get => "GET".to_owned(),
            Method::Post => "POST".to_owned(),
            Method::Put => "PUT".to_owned(),
            Method::Delete => "DELETE".to_owned(),
            Method::Options => "OPTIONS".to_owned(),
            Method::Other(other) => other,
            other => format!("{other:?}").to_uppercase(),
        };
        let scheme = match request.scheme() {
            Some(Scheme::Http) => "http".to_owned(),
            Some(Scheme::Https) => "https".to_owned(),
            Some(Scheme::Other(other)) => other,
            None => "-".to_owned(),
        };
        let mut headers: Vec<(String, String)> = request
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect();
        headers.sort();
        let mut body = format!(
            "method: {method}\nscheme: {scheme}\nauthority: {}\npath: {}\n",
            request.authority().unwrap_or_default(),
            request.path_with_query().unwrap_or_default()
        );
        for (name, value) in headers {
            body.push_str(&format!("header {name}: {value}\n"));
        }
        util::respond(out, 200, &[("content-type", "text/plain")], body.as_bytes());
    }
}

wasip2::http::proxy::export!(RequestInfo);
