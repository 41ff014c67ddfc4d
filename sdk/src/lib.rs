//! # berth-sdk
//!
//! Write Berth services in Rust. A service is a WebAssembly component
//! (`wasm32-wasip2`) that handles HTTP requests, events, or both:
//!
//! 1. Make a library crate with `crate-type = ["cdylib"]` and depend on
//!    `berth-sdk`.
//! 2. Write a handler: `fn(Request) -> Response` for HTTP (a [`Router`]
//!    dispatches on method and path), `fn(Event) -> Result<(), Error>` for
//!    events.
//! 3. Export it with [`http_handler!`] and/or [`event_handler!`].
//! 4. Build with `cargo build --release --target wasm32-wasip2` and name
//!    the `.wasm` in a `berth.toml`.
//!
//! ```no_run
//! use berth_sdk::http::{Request, Response};
//!
//! fn hello(req: Request) -> Response {
//!     Response::text(format!("Hello, {}!\n", req.path()))
//! }
//!
//! berth_sdk::http_handler!(hello);
//! ```
//!
//! An event handler that publishes in turn:
//!
//! ```no_run
//! use berth_sdk::events::{self, Error, Event, NewEvent};
//!
//! fn on_signup(event: Event) -> Result<(), Error> {
//!     let user: serde_json::Value = event.json()?;
//!     events::publish("emails.welcome", NewEvent::json("email.requested", &user)?)?;
//!     Ok(())
//! }
//!
//! berth_sdk::event_handler!(on_signup);
//! ```
//!
//! HTTP services are plain `wasi:http/proxy` components: they run on any
//! WASI 0.2 host. Events use Berth's `berth:events` interfaces
//! (`sdk/wit/events.wit`), which the SDK wraps; the WIT is the contract,
//! the SDK a convenience.

#![deny(missing_docs)]

pub mod events;
pub mod http;

pub use http::{Request, Response, Router};

/// The bindings generated from `wit/events.wit`: an implementation detail
/// of the macros.
#[doc(hidden)]
pub mod wit {
    /// The world a component exports the event handler from.
    pub mod consumer {
        wit_bindgen::generate!({
            path: "wit",
            world: "berth:events/consumer",
            pub_export_macro: true,
            export_macro_name: "__berth_export_consumer",
            default_bindings_module: "berth_sdk::wit::consumer",
        });
    }

    /// The world a component imports the publisher from.
    pub mod producer {
        wit_bindgen::generate!({
            path: "wit",
            world: "berth:events/producer",
            with: {
                "berth:events/types@0.1.0": crate::wit::consumer::berth::events::types,
            },
        });
    }
}

/// What the macros need from outside the SDK.
#[doc(hidden)]
pub mod __private {
    pub use wasip2;
}

/// Exports `handler` — a `fn(Request) -> Response`, or a [`Router`]-using
/// function — as the component's `wasi:http/incoming-handler`.
///
/// ```no_run
/// fn handle(req: berth_sdk::Request) -> berth_sdk::Response {
///     berth_sdk::Response::text("ok\n")
/// }
/// berth_sdk::http_handler!(handle);
/// ```
#[macro_export]
macro_rules! http_handler {
    ($handler:expr) => {
        struct __BerthHttpHandler;

        impl $crate::__private::wasip2::exports::http::incoming_handler::Guest
            for __BerthHttpHandler
        {
            fn handle(
                request: $crate::__private::wasip2::http::types::IncomingRequest,
                out: $crate::__private::wasip2::http::types::ResponseOutparam,
            ) {
                $crate::http::__serve(request, out, $handler)
            }
        }

        $crate::__private::wasip2::http::proxy::export!(__BerthHttpHandler);
    };
}

/// Exports `handler` — a `fn(Event) -> Result<(), Error>` — as the
/// component's `berth:events/handler`.
///
/// ```no_run
/// fn handle(event: berth_sdk::events::Event) -> Result<(), berth_sdk::events::Error> {
///     println!("got {}", event.id());
///     Ok(())
/// }
/// berth_sdk::event_handler!(handle);
/// ```
#[macro_export]
macro_rules! event_handler {
    ($handler:expr) => {
        struct __BerthEventHandler;

        impl $crate::wit::consumer::exports::berth::events::handler::Guest for __BerthEventHandler {
            fn handle(
                event: $crate::wit::consumer::berth::events::types::Event,
            ) -> ::core::result::Result<(), $crate::wit::consumer::berth::events::types::HandleError> {
                $crate::events::__handle(event, $handler)
            }
        }

        $crate::wit::consumer::__berth_export_consumer!(__BerthEventHandler with_types_in $crate::wit::consumer);
    };
}
