//! The admin API's request bodies, query strings and path parameters,
//! through its real router over a real host: whatever is sent, the answer
//! is a 2xx, 3xx or 4xx with a JSON body (a 503 only where the host says
//! it is unavailable), never a 500 or a panic.
#![no_main]
use berth::control::admin::{Auth, router};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token";

/// Each endpoint, with `{}` where the fuzzed path parameter goes.
const ENDPOINTS: &[(Method, &str)] = &[
    (Method::POST, "/v1/artifacts"),
    (Method::GET, "/v1/artifacts"),
    (Method::GET, "/v1/artifacts/{}"),
    (Method::GET, "/v1/services"),
    (Method::GET, "/v1/services/{}"),
    (Method::PUT, "/v1/services/{}"),
    (Method::DELETE, "/v1/services/{}"),
    (Method::GET, "/v1/services/{}/revisions"),
    (Method::POST, "/v1/services/{}/rollback"),
    (Method::GET, "/v1/events"),
    (Method::GET, "/v1/events/dead"),
    (Method::DELETE, "/v1/events/dead"),
    (Method::POST, "/v1/events/dead"),
    (Method::POST, "/v1/events/dead/replay"),
    (Method::POST, "/v1/events/{}"),
    (Method::GET, "/v1/nodes"),
    (Method::GET, "/v1/keys"),
    (Method::POST, "/v1/keys"),
    (Method::DELETE, "/v1/keys/{}"),
    (Method::GET, "/v1/usage"),
    (Method::GET, "/v1/usage/records"),
    (Method::GET, "/v1/logs"),
    (Method::GET, "/metrics"),
];

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/wasm",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
    "text/plain",
];

fuzz_target!(|data: &[u8]| {
    let [head, param, query, body] = berth_fuzz::parts(data, 4)[..] else {
        unreachable!()
    };
    let (endpoint, content_type, bearer) = match head {
        [e, c, b, ..] => (*e as usize, *c as usize, *b != 0),
        [e, c] => (*e as usize, *c as usize, true),
        [e] => (*e as usize, 0, true),
        [] => (0, 0, true),
    };
    let (method, template) = &ENDPOINTS[endpoint % ENDPOINTS.len()];
    // A parameter is percent-encoded, as a client would send it; the query
    // goes as it is, if it makes a valid URI.
    let param: String = form_urlencoded::byte_serialize(param).collect();
    let mut uri = template.replace("{}", &param);
    if !query.is_empty() {
        uri = format!("{uri}?{}", berth_fuzz::text(query));
    }
    // Follow mode streams without end; the fuzzer asks for one page.
    if uri.contains("follow") {
        return;
    }
    let Ok(uri) = uri.parse::<http::Uri>() else {
        return;
    };
    let mut request = Request::builder().method(method.clone()).uri(uri);
    request = request.header(
        "content-type",
        CONTENT_TYPES[content_type % CONTENT_TYPES.len()],
    );
    if bearer {
        request = request.header("authorization", format!("Bearer {TOKEN}"));
    }
    let request = request
        .body(axum::body::Body::new(Full::new(Bytes::copy_from_slice(
            body,
        ))))
        .unwrap();
    let host = berth_fuzz::host();
    let app = router(host.control().clone(), Auth::token(TOKEN.into()));
    let (status, body) = berth_fuzz::runtime().block_on(async move {
        let response =
            tokio::time::timeout(std::time::Duration::from_secs(20), app.oneshot(request))
                .await
                .expect("the admin API answered within 20 s")
                .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    });
    if !bearer {
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert!(
        !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "{method} {template}: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    // A key made has a time as its expiry (if any), and is active unless
    // that time has come already.
    if *method == Method::POST && *template == "/v1/keys" && status == StatusCode::CREATED {
        let key: serde_json::Value = serde_json::from_slice(&body).unwrap();
        match key.get("expires") {
            None => assert_eq!(key["state"], "active", "{key}"),
            Some(expires) => {
                let expires: jiff::Timestamp = expires
                    .as_str()
                    .unwrap_or_default()
                    .parse()
                    .unwrap_or_else(|e| panic!("{key}: expires is no time: {e}"));
                // Still to come now, it was to come when the key was made.
                if expires > jiff::Timestamp::now() {
                    assert_eq!(key["state"], "active", "{key}");
                }
            }
        }
    }
    if status.is_client_error() || status.is_server_error() {
        let error: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{status} with a body that is not JSON ({e}): {body:?}"));
        assert!(
            error["error"]["code"].is_string() && error["error"]["message"].is_string(),
            "{error}"
        );
    }
});
