//! `echo`: sends the request body back. By default it streams it chunk by
//! chunk without buffering it whole; `/.../buffered` reads the whole body
//! first and answers after, as most JSON APIs do.

use std::io::{Read, Write};
use wasip2::http::types::{IncomingRequest, OutgoingBody, ResponseOutparam};

struct Echo;

impl wasip2::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let body = request.consume().expect("request body");
        let mut input = body.stream().expect("request body stream");
        if path.contains("buffered") {
            let mut all = Vec::new();
            match Read::read_to_end(&mut input, &mut all) {
                Ok(_) => util::respond(out, 200, &[], &all),
                Err(e) => util::respond(
                    out,
                    500,
                    &[],
                    format!("reading the body failed: {e}\n").as_bytes(),
                ),
            }
            return;
        }
        let (response, out_body) =
            util::start(200, &[("content-type", "application/octet-stream")]);
        ResponseOutparam::set(out, Ok(response));
        let mut output = out_body.write().expect("response body stream");
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        loop {
            match Read::read(&mut input, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    output.write_all(&buf[..n]).expect("write response body");
                    total += n;
                }
                Err(e) => {
                    // The body could not be read whole (e.g. the host cut it
                    // off at its size limit): drop the response body without
                    // finishing it so the client sees an incomplete response.
                    eprintln!("echo: reading the request body failed after {total} bytes: {e}");
                    return;
                }
            }
        }
        output.flush().expect("flush response body");
        drop(output);
        OutgoingBody::finish(out_body, None).expect("finish response body");
        println!("echo: echoed {total} bytes");
    }
}

wasip2::http::proxy::export!(Echo);
