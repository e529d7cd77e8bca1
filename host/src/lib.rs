//! NexusPipe: a real-time event engine whose logic lives in WebAssembly plugins.
//!
//! - [`runtime`] loads, sandboxes and supervises plugins (wasmtime).
//! - [`event`] is the canonical event and its JSON form, [`lineproto`] the
//!   line-protocol form of a metric point.
//! - [`sinks`] turn plugin outputs into line protocol, alert records and dead letters.

pub mod api;
pub mod bindings;
pub mod config;
pub mod dataflow;
pub mod engine;
pub mod event;
pub(crate) mod fsutil;
pub mod histogram;
pub mod hub;
pub mod kafka;
pub mod lineproto;
pub mod live;
pub mod runtime;
pub mod schema;
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

/// The module layering (the README's "Repository" section): a top-level
/// module may name (`crate::<module>`) only the modules below it, so there is
/// no cycle between them.
#[cfg(test)]
mod layering {
    use std::path::Path;

    /// The top-level modules, bottom to top.
    const LAYERS: &[&str] = &[
        // the WIT types, helpers, and the model built on the WIT types
        "bindings",
        "fsutil",
        "histogram",
        "event",
        "lineproto",
        // configuration, then the runtime and what is built on it
        "config",
        "runtime",
        "telemetry",
        "store",
        "hub",
        "sinks",
        "schema",
        "dataflow",
        "engine",
        "kafka",
        "live",
        "api",
    ];

    /// The text of `path`, or of every `.rs` file under it (none if absent).
    fn sources(path: &Path, out: &mut Vec<String>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                sources(&entry.unwrap().path(), out);
            }
        } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
            out.push(std::fs::read_to_string(path).unwrap());
        }
    }

    #[test]
    fn modules_use_only_modules_below_them() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut wrong = Vec::new();
        for (rank, &module) in LAYERS.iter().enumerate() {
            let mut texts = Vec::new();
            sources(&src.join(format!("{module}.rs")), &mut texts);
            sources(&src.join(module), &mut texts);
            assert!(!texts.is_empty(), "no source for module `{module}`");
            for text in &texts {
                for (i, _) in text.match_indices("crate::") {
                    let used: String = text[i + "crate::".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if LAYERS[rank + 1..].contains(&used.as_str()) {
                        wrong.push(format!("{module} uses crate::{used}"));
                    }
                }
            }
        }
        wrong.sort();
        wrong.dedup();
        assert!(
            wrong.is_empty(),
            "a module may use only the modules before it in LAYERS:\n{}",
            wrong.join("\n")
        );
    }

    #[test]
    fn every_module_has_a_layer() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for entry in std::fs::read_dir(&src).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let module = name.strip_suffix(".rs").unwrap_or(&name);
            // The crate root and the binary (`main.rs`, `cli/`) sit on top.
            if !["lib", "main", "cli"].contains(&module) {
                assert!(LAYERS.contains(&module), "add `{module}` to LAYERS");
            }
        }
    }
}
