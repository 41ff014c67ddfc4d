//! A hello-world HTTP service, five lines with `berth-sdk`.
//!
//! Run this example with (from the repository root):
//!
//! ```text
//! cargo run --release -- up --build examples/berth.toml
//! curl http://127.0.0.1:3000/hello/world
//! ```

use berth_sdk::http::{Request, Response};

fn hello(req: Request) -> Response {
    let who = req.path().trim_start_matches("/hello").trim_matches('/');
    let who = if who.is_empty() { "world" } else { who };
    // Guest output becomes a log line tagged with the service and invocation.
    println!("greeting {who}");
    Response::text(format!("Hello, {who}!\n"))
}

berth_sdk::http_handler!(hello);
