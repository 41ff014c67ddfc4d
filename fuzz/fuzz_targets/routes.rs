//! Route tables: routes parsed, claimed, and looked up as the gateway
//! routes a request; what a lookup finds matches the path.
#![no_main]
use berth::values::route::{Route, RouteTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = berth_fuzz::text(data);
    let mut lines = text.split('\n');
    let routes = lines.next().unwrap_or("");
    let mut table = RouteTable::new();
    for (i, route) in routes.split(' ').enumerate() {
        if let Ok(route) = Route::parse(route) {
            assert_eq!(Route::parse(route.as_str()).ok().as_ref(), Some(&route));
            let _ = table.insert(route, i);
        }
    }
    for path in lines {
        if let Some((route, _)) = table.lookup(path) {
            assert!(
                route.matches(path),
                "{} does not match {path:?}",
                route.as_str()
            );
        }
    }
});
