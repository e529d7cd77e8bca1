//! Line-protocol encoding, round trip: every point `check` accepts is
//! written as exactly one line that InfluxDB's parser (influxdb-line-protocol)
//! reads back as the WHOLE point the writer documents it writes
//! (`lineproto::as_written`, shared with the property test): measurement, tag
//! keys and values, field keys in order, field values (floats to the bit) and
//! timestamp. `check` and the writer never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexuspipe::lineproto::{as_written, check, to_line, to_line_bare};
use nexuspipe::runtime::Value;
use nexuspipe_fuzz::{APoint, parse_back};

fuzz_target!(|p: APoint| {
    let p = p.into_point();
    if check(&p).is_err() {
        return;
    }
    let line = to_line(&p);
    assert_eq!(line.matches('\n').count(), 1, "{line:?}");
    assert!(line.ends_with('\n'), "{line:?}");
    assert_eq!(to_line_bare(&p), line[..line.len() - 1], "{line:?}");
    let back = parse_back(&line).unwrap_or_else(|e| panic!("{e}: {line:?} from {p:?}"));
    let want = as_written(&p);
    // `==` on the whole point, then floats to the bit (`==` has -0.0 == 0.0).
    assert_eq!(back, want, "line {line:?} from {p:?}");
    for ((_, got), (_, want)) in back.fields.iter().zip(&want.fields) {
        if let (Value::Float(a), Value::Float(b)) = (got, want) {
            assert_eq!(a.to_bits(), b.to_bits(), "line {line:?}");
        }
    }
});
