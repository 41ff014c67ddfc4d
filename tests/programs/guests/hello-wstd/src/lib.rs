//! `hello-wstd`: the same greeting as `hello`, written with the async `wstd`
//! library instead of raw bindings.

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    println!("hello-wstd handled {path}");
    Ok(Response::new(format!("hello from wstd: {path}\n").into()))
}
