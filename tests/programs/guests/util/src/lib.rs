//! Small helpers shared by the raw-bindings guest fixtures.

use std::io::Write as _;
use wasip2::http::types::{Fields, OutgoingBody, OutgoingResponse, ResponseOutparam};

/// Sends a complete response: status, headers and the whole body.
pub fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let (response, body_handle) = start(status, headers);
    ResponseOutparam::set(out, Ok(response));
    let mut stream = body_handle.write().expect("response body stream");
    stream.write_all(body).expect("write response body");
    stream.flush().expect("flush response body");
    drop(stream);
    OutgoingBody::finish(body_handle, None).expect("finish response body");
}

/// Builds a response and its body without sending it yet.
pub fn start(status: u16, headers: &[(&str, &str)]) -> (OutgoingResponse, OutgoingBody) {
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    let fields = Fields::from_list(&entries).expect("valid headers");
    let response = OutgoingResponse::new(fields);
    response.set_status_code(status).expect("valid status");
    let body = response.body().expect("response body");
    (response, body)
}

/// Burns CPU forever without touching memory or calling the host.
pub fn spin_forever() -> ! {
    let mut x: u64 = 0;
    loop {
        x = core::hint::black_box(x.wrapping_add(1));
    }
}
