//! A counting aggregator for the host's tests: `counts,event_type=<t> count=<n>i`
//! per tumbling window (1 minute, or `{"window_ms": N}` in the config, with
//! `"init_ms": M` to spend M ms of real time in `init`), except
//! that an event of type `trap` panics and one of type `stall-once` loops the
//! first time its id is seen (see `stall_once`). Its state must survive the
//! panic (the host replays from a snapshot) and restarts (checkpoints).

const VERSION: i64 = 1;

include!("counter.rs");

nexuspipe_sdk::export_aggregator!(Counter);
