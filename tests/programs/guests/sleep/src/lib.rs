//! `sleep`: sleeps on the host's clock (`wasi:clocks` through `wstd`) before
//! answering: `?ms=N` milliseconds, one hour by default.

use wstd::http::{Body, Error, Request, Response};
use wstd::time::Duration;

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let ms = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(3_600_000);
    wstd::task::sleep(Duration::from_millis(ms)).await;
    Ok(Response::new(format!("slept {ms} ms\n").into()))
}
