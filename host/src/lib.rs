//! NexusPipe: a real-time event engine whose logic lives in WebAssembly plugins.
//!
//! - [`runtime`] loads, sandboxes and supervises plugins (wasmtime).
//! - [`event`] is the canonical event and its JSON form, [`lineproto`] the
//!   line-protocol form of a metric point.
//! - [`sinks`] turn plugin outputs into line protocol, alert records and dead letters.

pub mod api;
pub mod config;
pub mod engine;
pub mod event;
pub mod hub;
pub mod kafka;
pub mod lineproto;
pub mod live;
pub mod runtime;
pub mod sinks;
pub mod store;
pub mod telemetry;

/// Entry points for the fuzz targets in `fuzz/`: the pure functions behind
/// ingest, output validation and the codecs, reachable without a server or
/// a component. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::api::ingest::{Gunzip, gunzip, split_body};
    pub use crate::api::legacy::normalize;
    pub use crate::runtime::replay::{decode as decode_replay, encode as encode_replay};
    use crate::runtime::supervisor::{CallResult, apply_changes, validate_output};
    use crate::runtime::{Change, Event, Limits};

    /// Validates an enricher's changes for a batch as the supervisor does
    /// and, when they pass, applies them; returns the events passed on.
    pub fn enrich_output(
        changes: Vec<Change>,
        mut batch: Vec<Event>,
        limits: &Limits,
    ) -> Result<Vec<Event>, String> {
        let n = batch.len();
        let r = CallResult::Changes(changes);
        validate_output("fuzz", limits, &r, n).map_err(|f| f.message)?;
        let CallResult::Changes(changes) = r else {
            unreachable!()
        };
        let wanted: Vec<usize> = (0..n).collect();
        apply_changes(changes, &mut batch, &wanted);
        Ok(batch)
    }

    /// Validates an aggregator's points as the supervisor does.
    pub fn aggregate_output(
        points: Vec<crate::runtime::MetricPoint>,
        late: Vec<u32>,
        n: usize,
        limits: &Limits,
    ) -> Result<(), String> {
        validate_output("fuzz", limits, &CallResult::Points(points, late), n).map_err(|f| f.message)
    }
}
