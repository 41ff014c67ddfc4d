//! `bad-import`: an HTTP handler that also imports an interface no host
//! provides (`acme:inventory/stock`), so Berth must refuse it at start-up.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

wit_bindgen::generate!({
    inline: r#"
        package acme:inventory@1.0.0;

        interface stock {
            count: func(item: string) -> u32;
        }

        world needs-stock {
            import stock;
        }
    "#,
});

struct BadImport;

impl wasip2::exports::http::incoming_handler::Guest for BadImport {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let n = acme::inventory::stock::count("widgets");
        util::respond(out, 200, &[], format!("{n} widgets\n").as_bytes());
    }
}

wasip2::http::proxy::export!(BadImport);
