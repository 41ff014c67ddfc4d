//! `alloc`: allocates memory without end. By default it aborts (traps) when
//! an allocation fails; `/.../try` instead notices the failed growth and
//! reports how far it got.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

const CHUNK: usize = 1 << 20;

struct Alloc;

impl wasip2::exports::http::incoming_handler::Guest for Alloc {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let mut chunks: Vec<Vec<u8>> = Vec::with_capacity(1 << 16);
        if path.contains("try") {
            loop {
                let mut chunk = Vec::new();
                if chunk.try_reserve_exact(CHUNK).is_err() {
                    break;
                }
                chunk.resize(CHUNK, 1);
                chunks.push(chunk);
            }
            let mib = chunks.len();
            drop(chunks);
            let body = format!("allocated {mib} MiB before memory.grow failed\n");
            util::respond(out, 200, &[], body.as_bytes());
        } else {
            loop {
                chunks.push(core::hint::black_box(vec![1u8; CHUNK]));
            }
        }
    }
}

wasip2::http::proxy::export!(Alloc);
