//! {{name}}: an HTTP service for Berth.

use berth_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    // What a guest prints is a log line, tagged with the service and the
    // invocation (`berth logs {{name}}`).
    println!("{} {}", req.method(), req.path());
    Response::text(format!("Hello from {{name}} at {}!\n", req.path()))
}

berth_sdk::http_handler!(handle);
