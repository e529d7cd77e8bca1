//! Line-protocol encoding: every point the host accepts is written as one
//! line that InfluxDB's parser (influxdb-line-protocol) reads back with the
//! same timestamp and the same field values for every non-string field;
//! `check` and the writer never panic.
#![no_main]

use influxdb_line_protocol::{FieldValue, parse_lines};
use libfuzzer_sys::fuzz_target;
use nexuspipe::lineproto::{check, to_line};
use nexuspipe::runtime::Value;
use nexuspipe_fuzz::APoint;

fuzz_target!(|p: APoint| {
    let p = p.into_point();
    if check(&p).is_err() {
        return;
    }
    let line = to_line(&p);
    assert_eq!(line.matches('\n').count(), 1, "{line:?}");
    let parsed = parse_lines(&line)
        .next()
        .expect("a line")
        .unwrap_or_else(|e| panic!("{e}: {line:?} from {p:?}"));
    assert_eq!(parsed.timestamp, Some(p.timestamp), "{line:?}");
    assert_eq!(parsed.field_set.len(), p.fields.len(), "{line:?}");
    for ((_, got), (_, want)) in parsed.field_set.iter().zip(&p.fields) {
        match (got, want) {
            (FieldValue::I64(a), Value::Int(b)) => assert_eq!(a, b),
            (FieldValue::F64(a), Value::Float(b)) => assert_eq!(a.to_bits(), b.to_bits()),
            (FieldValue::Boolean(a), Value::Boolean(b)) => assert_eq!(a, b),
            (FieldValue::String(a), Value::Str(b)) => {
                assert_eq!(a.to_string(), b.replace('\n', " "))
            }
            (a, b) => panic!("{a:?} read back for {b:?}: {line:?}"),
        }
    }
});
