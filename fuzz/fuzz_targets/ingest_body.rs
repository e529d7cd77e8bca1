//! The ingest body, differentially: whatever the fast canonical parser
//! accepts, the JSON-value path accepts too and builds the same events
//! (the fast path may give up on valid input, never disagree). Bodies are
//! JSON objects, arrays or NDJSON, optionally gzipped.
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
    if let Some(fast) = fast {
        let slow = slow
            .unwrap_or_else(|e| panic!("the fast path accepted what the value path refuses: {e}"));
        assert_eq!(fast.len(), slow.len());
        for (mut a, b) in fast.into_iter().zip(slow) {
            // Events without an id get a fresh UUIDv7 on each path.
            if a.id != b.id && a.id.len() == 36 && b.id.len() == 36 {
                a.id.clone_from(&b.id);
            }
            assert_eq!(a, b);
        }
    }
});
