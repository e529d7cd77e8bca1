//! The NexusPipe plugin SDK.
//!
//! A plugin is a type that implements one of [`Enricher`], [`Aggregator`] or
//! [`Alerter`], exported with the matching macro:
//!
//! ```
//! use nexuspipe_sdk::prelude::*;
//!
//! struct Tagger;
//!
//! impl Enricher for Tagger {
//!     fn init(_config: &str, _settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
//!         Ok((Tagger, Interest::all()))
//!     }
//!     fn process(&mut self, events: Vec<Event>) -> Vec<Change> {
//!         (0..events.len()).map(|i| EventPatch::new(i).set("tagged", true).into()).collect()
//!     }
//! }
//!
//! nexuspipe_sdk::export_enricher!(Tagger);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release`; test its logic
//! natively with [`testing`]. The generated bindings live in [`wit`] and are
//! not meant to be used directly.

mod event;
pub mod filter;
mod plugin;
pub mod state;
pub mod testing;
pub mod window;
#[doc(hidden)]
pub mod wit;

pub use event::{Downstream, EventPatch, IntoValue};
pub use plugin::{Aggregator, Alerter, Enricher, log};
pub use state::{KeyedState, Parts};
pub use window::{EventTimeBuffer, SessionWindows, Sliding, Tumbling, Window, WindowStore};

pub use wit::enricher::nexuspipe::plugin::types::{
    AggregateOutput, Alert, AlertOutput, AlertStatus, Change, ConfigError, Event, EventFields,
    HostSettings, Interest, Level, Metadata, MetadataFields, MetricPoint, Property, Restored,
    Severity, StateError, Value,
};

/// Everything a plugin usually needs, in one import.
pub mod prelude {
    pub use crate::{
        AggregateOutput, Aggregator, Alert, AlertOutput, AlertStatus, Alerter, Change, ConfigError,
        Downstream, Enricher, Event, EventFields, EventPatch, EventTimeBuffer, HostSettings,
        Interest, KeyedState, Level, Metadata, MetadataFields, MetricPoint, Parts, Property,
        Restored, SessionWindows, Severity, Sliding, StateError, Tumbling, Value, Window,
        WindowStore, log,
    };
}

// Plugins allocate and free every string that crosses the boundary; see the
// `talc` feature and `alloc.rs`.
#[cfg(any(
    test,
    all(
        feature = "talc",
        target_family = "wasm",
        not(target_feature = "atomics")
    )
))]
mod alloc;

#[cfg(all(
    feature = "talc",
    target_family = "wasm",
    not(target_feature = "atomics")
))]
#[global_allocator]
// SAFETY: wasm32 without the atomics feature runs one thread.
static ALLOCATOR: alloc::SmallBlocks<talc::wasm::WasmDynamicTalc> =
    unsafe { alloc::SmallBlocks::new(talc::wasm::new_wasm_dynamic_allocator()) };

#[doc(hidden)]
pub mod __private {
    pub use crate::plugin::{restore_state, snapshot_state};
    pub use serde_json;
}
