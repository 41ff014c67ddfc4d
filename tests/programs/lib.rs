//! Paths of the guest components Berth's tests run, built from source in
//! `guests/` for `wasm32-wasip2` by this crate's build script.

include!(concat!(env!("OUT_DIR"), "/programs.rs"));
