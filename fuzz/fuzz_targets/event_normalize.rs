//! `/event` normalisation: any JSON becomes a canonical event or a named
//! error, never a panic; and an accepted event's canonical form normalises
//! to the same event again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexuspipe::event::{EventDefaults, from_json, to_json};
use nexuspipe::fuzzing::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let d = EventDefaults {
        now_ms: 1_767_225_600_000,
        max_future_ms: Some(3_600_000),
        ..EventDefaults::default()
    };
    let Ok(e) = normalize(v).and_then(|c| from_json(c, &d)) else {
        return;
    };
    let again = normalize(to_json(&e))
        .and_then(|c| from_json(c, &d))
        .unwrap_or_else(|err| panic!("the canonical form of {e:?} is refused: {err}"));
    assert_eq!(again, e);
});
