//! `service-p3`: a WASI 0.3 HTTP service (`wasi:http/service`, built with
//! the `wasip3` crate), one behaviour per last path segment (under any
//! route):
//!
//! - `/` — a greeting, its body written by a spawned task;
//! - `POST /echo` — the request body streamed back as it arrives;
//! - `POST /length` — reads the whole request body, then answers with its
//!   length;
//! - `/count` — how many requests this instance has served (1 in a fresh
//!   instance, more in a reused one);
//! - `/info` — the request as the guest sees it (method, scheme,
//!   authority, path, headers), as the 0.2 `request-info` fixture;
//! - `/sleep?ms=N` — answers after N ms on the host's clock;
//! - `/spin` — a busy loop that never answers;
//! - `/never` — a response that never comes (it waits on a future
//!   nobody writes);
//! - `/half` — declares 1 MiB, sends 64 KiB, then drops its body stream;
//! - `/stall` — sends 64 KiB without a length, then keeps its body stream
//!   open with no task left to write it;
//! - `/trap-body` — sends 64 KiB, then its writing task panics;
//! - `/panic` — panics before answering;
//! - `/error` — answers with an error code instead of a response;
//! - `/proxy?url=U` — answers with U's response itself, its body passed on
//!   unread;
//! - `/late?ms=N` — answers at once, leaves a task running for N ms;
//! - `/alloc?mib=N` — holds N MiB for 200 ms, then answers;
//! - `/call?url=U` — sends a GET to U through `wasi:http/client` and
//!   answers with its status and body (or the error code, with 502).

use wasip3::http::client;
use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response, Scheme};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(Service);

struct Service;

/// Requests this instance served through `/count`.
static SERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl wasip3::exports::http::handler::Guest for Service {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request.get_path_with_query().unwrap_or_default();
        let (route, query) = path.split_once('?').unwrap_or((path.as_str(), ""));
        let number = |name: &str, default: u64| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(default)
        };
        match route.rsplit('/').next().unwrap_or_default() {
            "echo" => {
                let (_, done) = wit_future::new(|| Ok(()));
                let (body, trailers) = Request::consume_body(request, done);
                let (response, _) = Response::new(Fields::new(), Some(body), trailers);
                Ok(response)
            }
            "length" => {
                let (_, done) = wit_future::new(|| Ok(()));
                let (mut body, _) = Request::consume_body(request, done);
                let mut read = 0;
                loop {
                    let (result, chunk) = body.read(Vec::with_capacity(64 * 1024)).await;
                    read += chunk.len();
                    if !matches!(result, wit_bindgen::StreamResult::Complete(_)) {
                        break;
                    }
                }
                Ok(text(200, format!("read {read} bytes\n")))
            }
            "count" => {
                let count = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                Ok(text(200, format!("count={count}\n")))
            }
            "info" => Ok(text(200, info(&request))),
            "sleep" => {
                let ms = number("ms", 3_600_000);
                sleep(ms).await;
                Ok(text(200, format!("slept {ms} ms\n")))
            }
            "spin" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "never" => {
                // Waits on a future of its own that nobody ever writes (the
                // writer is kept, never dropped): a wait the host sees.
                let (tx, rx) = wit_future::new::<Result<(), ErrorCode>>(|| Ok(()));
                std::mem::forget(tx);
                let _ = rx.await;
                Ok(text(200, "unreachable\n".into()))
            }
            "half" => {
                let headers = Fields::from_list(&[("content-length".into(), b"1048576".to_vec())])
                    .expect("valid header");
                let (mut tx, rx) = wit_stream::new();
                let (_, trailers) = wit_future::new(|| Ok(None));
                let (response, _) = Response::new(headers, Some(rx), trailers);
                wit_bindgen::spawn_local(async move {
                    tx.write_all(vec![b'h'; 64 * 1024]).await;
                    drop(tx);
                });
                Ok(response)
            }
            "stall" => {
                let (mut tx, rx) = wit_stream::new();
                let (_, trailers) = wit_future::new(|| Ok(None));
                let (response, _) = Response::new(Fields::new(), Some(rx), trailers);
                wit_bindgen::spawn_local(async move {
                    tx.write_all(vec![b's'; 64 * 1024]).await;
                    std::mem::forget(tx);
                });
                Ok(response)
            }
            "trap-body" => {
                let (mut tx, rx) = wit_stream::new();
                let (_, trailers) = wit_future::new(|| Ok(None));
                let (response, _) = Response::new(Fields::new(), Some(rx), trailers);
                wit_bindgen::spawn_local(async move {
                    tx.write_all(vec![b't'; 64 * 1024]).await;
                    panic!("the service-p3 fixture panicked mid-body on purpose");
                });
                Ok(response)
            }
            "panic" => panic!("the service-p3 fixture panicked on purpose"),
            "error" => Err(ErrorCode::InternalError(Some("the guest gave up".into()))),
            "proxy" => {
                let url = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("url="))
                    .unwrap_or_default()
                    .to_owned();
                client::send(outgoing(&url)).await
            }
            "late" => {
                let ms = number("ms", 3_600_000);
                wit_bindgen::spawn_local(async move {
                    sleep(ms).await;
                    println!("the late task ran for {ms} ms");
                });
                Ok(text(200, "answered; a task goes on\n".into()))
            }
            "alloc" => {
                let mib = number("mib", 1) as usize;
                let held = vec![1u8; mib << 20];
                sleep(200).await;
                Ok(text(
                    200,
                    format!("held {} MiB\n", std::hint::black_box(held).len() >> 20),
                ))
            }
            "call" => {
                let url = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("url="))
                    .unwrap_or_default()
                    .to_owned();
                Ok(call(&url).await)
            }
            _ => Ok(streamed(b"Hello from Rust on WASI 0.3\n".to_vec())),
        }
    }
}

/// Waits `ms` milliseconds on the host's monotonic clock.
async fn sleep(ms: u64) {
    wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
}

/// A response whose body a spawned task writes.
fn streamed(bytes: Vec<u8>) -> Response {
    let (mut tx, rx) = wit_stream::new();
    let (_, trailers) = wit_future::new(|| Ok(None));
    let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())])
        .expect("valid header");
    let (response, _) = Response::new(headers, Some(rx), trailers);
    wit_bindgen::spawn_local(async move {
        tx.write_all(bytes).await;
    });
    response
}

/// A plain-text response with status `status`.
fn text(status: u16, body: String) -> Response {
    let response = streamed(body.into_bytes());
    response.set_status_code(status).expect("valid status");
    response
}

fn info(request: &Request) -> String {
    let method = match request.get_method() {
        Method::Get => "GET".to_owned(),
        Method::Post => "POST".to_owned(),
        Method::Put => "PUT".to_owned(),
        Method::Delete => "DELETE".to_owned(),
        Method::Options => "OPTIONS".to_owned(),
        Method::Other(other) => other,
        other => format!("{other:?}").to_uppercase(),
    };
    let scheme = match request.get_scheme() {
        Some(Scheme::Http) => "http".to_owned(),
        Some(Scheme::Https) => "https".to_owned(),
        Some(Scheme::Other(other)) => other,
        None => "-".to_owned(),
    };
    let mut headers: Vec<(String, String)> = request
        .get_headers()
        .copy_all()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect();
    headers.sort();
    let mut body = format!(
        "method: {method}\nscheme: {scheme}\nauthority: {}\npath: {}\n",
        request.get_authority().unwrap_or_default(),
        request.get_path_with_query().unwrap_or_default()
    );
    for (name, value) in headers {
        body.push_str(&format!("header {name}: {value}\n"));
    }
    body
}

/// A GET request for `url`.
fn outgoing(url: &str) -> Request {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((_, rest)) => (Scheme::Http, rest),
        None => (Scheme::Http, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (_, trailers) = wit_future::new(|| Ok(None));
    let (request, _) = Request::new(Fields::new(), None, trailers, None);
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    request
}

/// Sends a GET to `url` and answers with what came back.
async fn call(url: &str) -> Response {
    match client::send(outgoing(url)).await {
        Ok(response) => {
            let status = response.get_status_code();
            let (_, done) = wit_future::new(|| Ok(()));
            let (mut body, _) = Response::consume_body(response, done);
            let mut bytes = Vec::new();
            loop {
                let (result, chunk) = body.read(Vec::with_capacity(64 * 1024)).await;
                bytes.extend_from_slice(&chunk);
                if !matches!(result, wit_bindgen::StreamResult::Complete(_)) {
                    break;
                }
            }
            text(
                200,
                format!("status {status}\n{}", String::from_utf8_lossy(&bytes)),
            )
        }
        Err(code) => text(502, format!("error {code:?}\n")),
    }
}
