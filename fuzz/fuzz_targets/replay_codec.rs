//! The replay codec: any batch of events decodes back to itself, and any
//! bytes decode to events or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexuspipe::fuzzing::{decode_replay, encode_replay};
use nexuspipe_fuzz::AEvent;

fuzz_target!(|input: (Vec<AEvent>, &[u8], u8)| {
    let (events, junk, n) = input;
    let events: Vec<_> = events.into_iter().map(AEvent::into_event).collect();
    let mut buf = Vec::new();
    encode_replay(&events, &mut buf);
    let back = decode_replay(&buf, events.len()).expect("an encoded batch decodes");
    // NaN != NaN: compare floats by their bits through the encoding itself.
    let mut again = Vec::new();
    encode_replay(&back, &mut again);
    assert_eq!(again, buf);
    assert_eq!(back.len(), events.len());
    let _ = decode_replay(junk, n as usize);
});
