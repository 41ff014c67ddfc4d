//! `panic`: traps in three ways: a Rust panic (`/...`), an explicit
//! `unreachable` (`/.../unreachable`) and unbounded recursion that exhausts
//! the wasm call stack (`/.../overflow`).

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Panic;

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if core::hint::black_box(depth) == u64::MAX {
        return depth;
    }
    recurse(depth + 1).wrapping_add(core::hint::black_box(depth))
}

impl wasip2::exports::http::incoming_handler::Guest for Panic {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        if path.contains("unreachable") {
            core::arch::wasm32::unreachable();
        }
        if path.contains("overflow") {
            let depth = recurse(0);
            util::respond(out, 200, &[], format!("{depth}").as_bytes());
            return;
        }
        drop(out);
        panic!("the panic fixture panicked on purpose");
    }
}

wasip2::http::proxy::export!(Panic);
