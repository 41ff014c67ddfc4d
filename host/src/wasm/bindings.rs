//! The WIT bindings of `berth:events` (`sdk/wit/events.wit`): the
//! `berth:events/handler` export the events trigger calls, and the
//! `berth:events/publisher` import instances provide.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "berth:events/events-host",
    imports: { default: async | trappable },
    exports: { default: async },
    require_store_data_send: true,
});
