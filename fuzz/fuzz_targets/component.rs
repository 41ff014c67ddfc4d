//! Component loading of mutated `.wasm` (seeded with the test fixtures):
//! the bytes Berth takes as a component are sniffed, validated, compiled
//! by both engines and checked for the exports and imports a service
//! needs; whatever they hold, the answer is a component or an error.
#![no_main]
use berth::values::digest::Digest;
use berth::wasm::cache::CodeCache;
use berth::wasm::component;
use berth::wasm::engine::{BerthEngine, EngineOptions};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct Fixture {
    engine: BerthEngine,
    cache: CodeCache,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let options = EngineOptions {
            max_instances: 4,
            ..EngineOptions::default()
        };
        Fixture {
            engine: BerthEngine::new(&options).unwrap(),
            cache: CodeCache::new(dir.path()).unwrap(),
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let _ = berth::wasm::artifact::sniff(data);
    if let Ok((handlers, _report)) = component::load(&f.engine, &f.cache, data) {
        let route = berth::values::route::Route::parse("/...").unwrap();
        let config = berth::values::service::ServiceConfig::http(vec![route], Default::default());
        let _ = handlers.check(&config);
    }
    // Each input compiles afresh: no cache entry is left behind.
    let digest = Digest::of(data);
    for flavour in f.engine.flavours() {
        let _ = std::fs::remove_file(f.cache.entry_path(flavour.engine(), &digest));
    }
});
