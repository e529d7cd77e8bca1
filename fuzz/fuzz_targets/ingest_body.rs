//! The ingest body, differentially: the fast canonical parser
//! (`event::parse_events`) against the JSON-value path (`split_body`, then
//! `from_json` per item). Bodies are JSON objects, arrays or NDJSON,
//! optionally gzipped (gunzipped first, as ingest does).
//!
//! Why this differential is complete: the fast parser returns an `Option`,
//! and `None` means "not taken", not "refused": ingest (`api::ingest::ingest`)
//! then runs the value path on the same bytes, and the value path's answer is
//! the answer. So what ingest accepts or refuses, and the events it builds,
//! can only differ from the value path's when the fast path returns `Some`,
//! and every such case is checked here:
//! - the value path accepts too, with the same number of events and the same
//!   events (ids aside when both paths made up a fresh UUIDv7);
//! - the value path refuses (malformed JSON, or any item `from_json`
//!   refuses): then the fast path must have returned `None`; it must never
//!   accept a body the value path refuses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexuspipe::event::{EventDefaults, from_json, parse_events};
use nexuspipe::fuzzing::{Gunzip, gunzip, split_body};

fuzz_target!(|input: (u8, &[u8])| {
    let (flags, raw) = input;
    let ndjson = flags & 1 == 1;
    let limit = 64 << 10;
    let body = if flags & 2 == 2 {
        // As ingest sends a gzipped body: the raw bytes are the gzip stream.
        match gunzip(raw, limit) {
            Ok(b) => b,
            Err(Gunzip::TooLarge) | Err(Gunzip::Invalid(_)) => return,
        }
    } else {
        raw.to_vec()
    };
    let d = EventDefaults {
        now_ms: 1_767_225_600_000,
        ip_address: Some("10.0.0.1"),
        user_agent: Some("fuzz"),
        max_future_ms: Some(3_600_000),
    };
    let fast = parse_events(&body, ndjson, &d);
    let slow: Result<Vec<_>, String> = split_body(&body, ndjson).and_then(|items| {
        items
            .into_iter()
            .map(|(_, _, v)| from_json(v, &d).map_err(|e| e.to_string()))
            .collect()
    });
    match (fast, slow) {
        // Not taken: ingest answers with the value path, whatever it is.
        (None, _) => {}
        // The value path refuses: the fast path must not have accepted.
        (Some(fast), Err(e)) => panic!(
            "the fast path accepted ({} events) a body the value path refuses: {e}",
            fast.len()
        ),
        // Both accept: the same events.
        (Some(fast), Ok(slow)) => {
            assert_eq!(fast.len(), slow.len(), "event counts differ");
            for (mut a, b) in fast.into_iter().zip(slow) {
                // Events without an id get a fresh UUIDv7 on each path.
                if a.id != b.id && a.id.len() == 36 && b.id.len() == 36 {
                    a.id.clone_from(&b.id);
                }
                assert_eq!(a, b);
            }
        }
    }
});
