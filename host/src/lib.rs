//! NexusPipe: a real-time event engine whose logic lives in WebAssembly plugins.
//!
//! - [`runtime`] loads, sandboxes and supervises plugins (wasmtime).
//! - [`event`] is the canonical event and its JSON form.
//! - [`sinks`] turn plugin outputs into line protocol, alert records and dead letters.

pub mod api;
pub mod config;
pub mod engine;
pub mod event;
pub mod kafka;
pub mod live;
pub mod runtime;
pub mod sinks;
pub mod telemetry;
