//! `hello`: a `wasi:http/proxy` component written against the raw `wasip2`
//! bindings. It answers with the full path and query it saw and writes one
//! line to stdout and one to stderr (and with `?flood=N`, N MiB more to
//! stdout).

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        println!("hello handled {path}");
        eprintln!("hello says hi on stderr");
        // `?flood=N`: N MiB more to stdout, in lines of 1 KiB.
        if let Some(mib) = path
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("flood="))
            .and_then(|n| n.parse::<usize>().ok())
        {
            let line = "x".repeat(1023);
            for _ in 0..mib * 1024 {
                println!("{line}");
            }
        }
        let body = format!("hello from berth: {path}\n");
        util::respond(out, 200, &[("content-type", "text/plain")], body.as_bytes());
    }
}

wasip2::http::proxy::export!(Hello);
