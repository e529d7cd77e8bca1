//! Version 2 of the `counter` test guest, for live-swap tests: the same logic
//! and state format, and every point also carries `version=2i`, so a test can
//! tell which version emitted a window.

const VERSION: i64 = 2;

include!("../../counter/src/counter.rs");

nexuspipe_sdk::export_aggregator!(Counter);
