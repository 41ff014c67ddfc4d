//! `echo`: streams the request body back as the response body, chunk by
//! chunk, without buffering it whole.

use std::io::{Read, Write};
use wasip2::http::types::{IncomingRequest, OutgoingBody, ResponseOutparam};

struct Echo;

impl wasip2::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let body = request.consume().expect("request body");
        let mut input = body.stream().expect("request body stream");
        let (response, out_body) = util::start(200, &[("content-type", "application/octet-stream")]);
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
