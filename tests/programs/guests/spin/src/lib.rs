//! `spin`: burns CPU forever. `/.../after-body` first sends the response
//! headers and part of the body, then spins.

use std::io::Write;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Spin;

impl wasip2::exports::http::incoming_handler::Guest for Spin {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        if path.contains("after-body") {
            let (response, body) = util::start(200, &[("content-type", "text/plain")]);
            ResponseOutparam::set(out, Ok(response));
            let mut stream = body.write().expect("response body stream");
            stream
                .write_all(b"the first part of a body that never ends\n")
                .expect("write");
            stream.flush().expect("flush");
            util::spin_forever();
        }
        util::spin_forever();
    }
}

wasip2::http::proxy::export!(Spin);
