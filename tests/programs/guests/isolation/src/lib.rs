//! `isolation`: checks that nothing survives from one instance to the next.
//! It bumps a counter in its data segment and grows its memory, checks that
//! the new pages are all zero, then fills them with a marker. A fresh
//! instance must always answer `count=1 clean`, however its pool slot was
//! reused.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

static mut COUNTER: u64 = 0;

/// Pages grown and scribbled over on every request.
const PAGES: usize = 16;
const PAGE: usize = 65536;

struct Isolation;

impl wasip2::exports::http::incoming_handler::Guest for Isolation {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        // SAFETY: the guest is single-threaded.
        let count = unsafe {
            COUNTER += 1;
            COUNTER
        };
        let old = core::arch::wasm32::memory_grow(0, PAGES);
        let verdict = if old == usize::MAX {
            "grow-failed".to_owned()
        } else {
            let base = (old * PAGE) as *mut u8;
            let mut dirty = 0usize;
            for i in 0..PAGES * PAGE {
                // SAFETY: these pages were just added to linear memory and
                // belong to no Rust allocation.
                unsafe {
                    if core::ptr::read_volatile(base.add(i)) != 0 {
                        dirty += 1;
                    }
                    core::ptr::write_volatile(base.add(i), 0xAB);
                }
            }
            if dirty == 0 {
                "clean".to_owned()
            } else {
                format!("dirty {dirty}")
            }
        };
        util::respond(
            out,
            200,
            &[],
            format!("count={count} {verdict}\n").as_bytes(),
        );
    }
}

wasip2::http::proxy::export!(Isolation);
