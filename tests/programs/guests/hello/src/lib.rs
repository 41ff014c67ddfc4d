//! `hello`: a `wasi:http/proxy` component written against the raw `wasip2`
//! bindings. It answers with the full path and query it saw and writes one
//! line to stdout and one to stderr.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        println!("hello handled {path}");
        eprintln!("hello says hi on stderr");
        let body = format!("hello from berth: {path}\n");
        util::respond(out, 200, &[("content-type", "text/plain")], body.as_bytes());
    }
}

wasip2::http::proxy::export!(Hello);
