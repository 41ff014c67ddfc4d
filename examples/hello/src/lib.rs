//! A hello-world HTTP service: a plain `wasi:http/proxy` component that
//! runs unchanged on Berth or on any other WASI 0.2 host.
//!
//! Run this example with (from the repository root):
//!
//! ```text
//! cargo run --release -- up --build examples/berth.toml
//! curl http://127.0.0.1:3000/hello/world
//! ```

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let path = request.uri().path();
    let who = path
        .strip_prefix("/hello")
        .map(|rest| rest.trim_matches('/'))
        .filter(|name| !name.is_empty())
        .unwrap_or("world");
    // Guest output becomes a log line tagged with the service and invocation.
    println!("greeting {who}");
    Ok(Response::new(format!("Hello, {who}!\n").into()))
}
