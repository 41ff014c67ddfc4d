//! `hello-p3-bench`: answers every request with a fixed greeting, over
//! WASI 0.3.

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(Hello);

struct Hello;

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(_request: Request) -> Result<Response, ErrorCode> {
        let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())])
            .expect("valid headers");
        let (mut tx, rx) = wit_stream::new();
        let (_, trailers) = wit_future::new(|| Ok(None));
        let (response, _) = Response::new(headers, Some(rx), trailers);
        wit_bindgen::spawn_local(async move {
            tx.write_all(b"Hello, world!\n".to_vec()).await;
        });
        Ok(response)
    }
}
