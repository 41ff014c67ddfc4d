//! `no-response`: returns without ever setting a response (`/...`), or sets
//! an error instead of a response (`/.../error`).

use wasip2::http::types::{ErrorCode, IncomingRequest, ResponseOutparam};

struct NoResponse;

impl wasip2::exports::http::incoming_handler::Guest for NoResponse {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        if path.contains("error") {
            ResponseOutparam::set(
                out,
                Err(ErrorCode::InternalError(Some("the guest gave up".into()))),
            );
        } else {
            drop(out);
        }
    }
}

wasip2::http::proxy::export!(NoResponse);
