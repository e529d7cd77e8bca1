//! Host bindings generated from `wit/` by wasmtime's `bindgen!`; nothing here
//! is written by hand. The enricher world owns the shared `types` and `host`
//! interfaces; the other two worlds reuse them so one `Event` type flows
//! through the whole pipeline.
//!
//! A top-level module, below everything else, so the event model (`event`,
//! `lineproto`) can use these types without depending on the runtime;
//! `runtime::bindings` re-exports it.

pub mod enricher {
    wasmtime::component::bindgen!({
        world: "enricher",
        path: "../wit",
        additional_derives: [PartialEq],
    });
}

pub mod aggregator {
    wasmtime::component::bindgen!({
        world: "aggregator",
        path: "../wit",
        with: {
            "nexuspipe:plugin/types": crate::bindings::enricher::nexuspipe::plugin::types,
            "nexuspipe:plugin/host": crate::bindings::enricher::nexuspipe::plugin::host,
        },
    });
}

pub mod alerter {
    wasmtime::component::bindgen!({
        world: "alerter",
        path: "../wit",
        with: {
            "nexuspipe:plugin/types": crate::bindings::enricher::nexuspipe::plugin::types,
            "nexuspipe:plugin/host": crate::bindings::enricher::nexuspipe::plugin::host,
        },
    });
}

pub use enricher::nexuspipe::plugin::host;
pub use enricher::nexuspipe::plugin::types;
