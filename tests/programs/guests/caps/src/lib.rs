//! `caps`: tries what a guest may or may not be given, one thing per path
//! (its last segment),
//! and says what happened. 200 with the result when it worked; 422 (or
//! 502 for HTTP) with the error when it did not.
//!
//! - `/read?p=PATH` — a file's contents
//! - `/write?p=PATH` — writes `written` to a file
//! - `/list?p=PATH` — a directory's entries
//! - `/env?name=NAME` — one environment variable
//! - `/envs` — every environment variable's name
//! - `/fetch?url=URL[&traceparent=TP]` — a GET (with that `traceparent`
//!   header, if given); answers `status=N` and the body, or the
//!   `wasi:http` error code
//! - `/tcp?addr=HOST:PORT` — opens a TCP connection
//! - `/udp?addr=HOST:PORT` — sends a UDP datagram
//! - `/resolve?host=NAME` — looks a name up
//! - `/clock` — the wall clock (seconds since the epoch) and whether the
//!   monotonic clock moves sanely
//! - `/random` — 16 random bytes, in hex
//! - `/stdin` — reads stdin to its end
//! - `/loop` — fetches `http://$PEER.svc/loop` and passes on what it got

use std::io::Read as _;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingRequest, ResponseOutparam, Scheme,
};

struct Caps;

impl wasip2::exports::http::incoming_handler::Guest for Caps {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_query.split_once('?').unwrap_or((&path_query, ""));
        let param = |name: &str| {
            query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| decode(v))
            })
        };
        // The last segment names the test, so the guest works on any route.
        let (status, body) = match path.rsplit('/').next().unwrap_or_default() {
            "read" => match std::fs::read_to_string(param("p").unwrap_or_default()) {
                Ok(text) => (200, text),
                Err(e) => (422, format!("error: {e}")),
            },
            "write" => match std::fs::write(param("p").unwrap_or_default(), "written") {
                Ok(()) => (200, "wrote".to_owned()),
                Err(e) => (422, format!("error: {e}")),
            },
            "list" => match std::fs::read_dir(param("p").unwrap_or_default()) {
                Ok(entries) => {
                    let mut names: Vec<String> = entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    (200, names.join("\n"))
                }
                Err(e) => (422, format!("error: {e}")),
            },
            "env" => match std::env::var(param("name").unwrap_or_default()) {
                Ok(value) => (200, value),
                Err(_) => (404, "absent".to_owned()),
            },
            "envs" => {
                let names: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                (200, names.join("\n"))
            }
            "fetch" => fetch(
                &param("url").unwrap_or_default(),
                param("traceparent").as_deref(),
            ),
            "tcp" => match std::net::TcpStream::connect(param("addr").unwrap_or_default()) {
                Ok(_) => (200, "connected".to_owned()),
                Err(e) => (422, format!("error: {e}")),
            },
            "udp" => match std::net::UdpSocket::bind("0.0.0.0:0") {
                Ok(socket) => match socket.send_to(b"x", param("addr").unwrap_or_default()) {
                    Ok(_) => (200, "sent".to_owned()),
                    Err(e) => (422, format!("error: {e}")),
                },
                Err(e) => (422, format!("error: {e}")),
            },
            "resolve" => {
                use std::net::ToSocketAddrs;
                match (param("host").unwrap_or_default().as_str(), 80).to_socket_addrs() {
                    Ok(addrs) => (200, format!("{:?}", addrs.collect::<Vec<_>>())),
                    Err(e) => (422, format!("error: {e}")),
                }
            }
            "clock" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let started = std::time::Instant::now();
                (
                    200,
                    format!("{now} {}", started.elapsed().as_nanos() < 1_000_000_000),
                )
            }
            "random" => {
                let bytes = wasip2::random::random::get_random_bytes(16);
                (200, bytes.iter().map(|b| format!("{b:02x}")).collect())
            }
            "stdin" => {
                let mut input = Vec::new();
                match std::io::stdin().read_to_end(&mut input) {
                    Ok(n) => (200, format!("{n} bytes")),
                    Err(e) => (422, format!("error: {e}")),
                }
            }
            "loop" => {
                let peer = std::env::var("PEER").unwrap_or_default();
                fetch(&format!("http://{peer}.svc/loop"), None)
            }
            _ => (404, "unknown test\n".to_owned()),
        };
        util::respond(out, status, &[], body.as_bytes());
    }
}

/// GETs `url`: `(200, "status=N\n" + body)`, or `(502, "error=CODE")`.
fn fetch(url: &str, traceparent: Option<&str>) -> (u16, String) {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return (400, format!("not a URL: {url}"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let headers = Fields::new();
    if let Some(value) = traceparent {
        headers
            .append("traceparent", value.as_bytes())
            .expect("a valid header");
    }
    let request = OutgoingRequest::new(headers);
    request.set_method(&Method::Get).unwrap();
    request.set_scheme(Some(&scheme)).unwrap();
    request.set_authority(Some(authority)).unwrap();
    request.set_path_with_query(Some(path)).unwrap();
    let future = match outgoing_handler::handle(request, None) {
        Ok(future) => future,
        Err(code) => return (502, format!("error={code:?}")),
    };
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return (502, format!("error={code:?}")),
        other => return (502, format!("error=unexpected {other:?}")),
    };
    let status = response.status();
    let body = response.consume().expect("response body");
    let mut text = String::new();
    let mut stream = body.stream().expect("response body stream");
    if let Err(e) = stream.read_to_string(&mut text) {
        return (502, format!("error=reading the body: {e}"));
    }
    (200, format!("status={status}\n{text}"))
}

/// Percent-decoding, enough for tests.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

wasip2::http::proxy::export!(Caps);
