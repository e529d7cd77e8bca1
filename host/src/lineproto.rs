//! InfluxDB line protocol: `measurement[,tag=v...] field=v[,...] timestamp`.
//!
//! Escaping follows InfluxDB's reference: in a measurement, commas, spaces
//! and backslashes; in tag keys, tag values and field keys, commas, `=`,
//! spaces and backslashes; in string field values, `"` and backslashes.
//! (A backslash is escaped everywhere, so a name ending in one still parses.)
//! Line protocol has no way to carry a newline in a name or value, nor a tab
//! in a name or tag value (both end a token): each is written as a space.
//! Nor can a name or tag value end with a backslash: a tag value's trailing
//! backslashes are left out (a value left empty means no tag), and a name
//! ending in one is refused. [`check`] names what cannot be written at all.

use crate::bindings::types::{MetricPoint, Value};
use std::fmt::Write;

const MEASUREMENT: &[char] = &[',', ' ', '\\'];
const KEY_OR_TAG: &[char] = &[',', '=', ' ', '\\'];

/// A name as line protocol carries it (see the module's doc).
fn carried(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\n', '\t', '\0']) {
        s.replace(['\n', '\t', '\0'], " ").into()
    } else {
        s.into()
    }
}

/// A tag value as line protocol carries it: as a name, without trailing backslashes.
fn carried_value(s: &str) -> std::borrow::Cow<'_, str> {
    match carried(s) {
        std::borrow::Cow::Borrowed(b) => b.trim_end_matches('\\').into(),
        std::borrow::Cow::Owned(o) => o.trim_end_matches('\\').to_string().into(),
    }
}

fn escape(out: &mut String, s: &str, special: &[char]) {
    for c in s.chars() {
        // A newline would end the line, a tab the token; NUL is refused by parsers.
        let c = if matches!(c, '\n' | '\t' | '\0') {
            ' '
        } else {
            c
        };
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// What line protocol cannot carry, whatever the escaping: an empty or
/// commented-out measurement, an empty or repeated key, no field, a float
/// that is not finite.
pub fn check(p: &MetricPoint) -> Result<(), String> {
    if p.measurement.is_empty() {
        return Err("measurement is empty".into());
    }
    if p.measurement.starts_with('#') {
        return Err(format!(
            "measurement `{}` starts with `#`, which line protocol reads as a comment",
            p.measurement
        ));
    }
    if p.fields.is_empty() {
        return Err("a point needs at least one field".into());
    }
    let names = std::iter::once(&p.measurement)
        .chain(p.tags.iter().map(|(k, _)| k))
        .chain(p.fields.iter().map(|(k, _)| k));
    if let Some(n) = names.into_iter().find(|n| n.ends_with('\\')) {
        return Err(format!(
            "`{n}` ends with a backslash, which line protocol cannot carry in a name"
        ));
    }
    let mut keys = std::collections::HashSet::new();
    for (k, v) in &p.fields {
        if k.is_empty() {
            return Err("a field key is empty".into());
        }
        if !keys.insert(carried(k)) {
            return Err(format!("field `{k}` appears twice"));
        }
        if let Value::Float(f) = v
            && !f.is_finite()
        {
            return Err(format!(
                "field `{k}` is {f}, which line protocol cannot carry"
            ));
        }
    }
    let mut tags = std::collections::HashSet::new();
    for (k, v) in &p.tags {
        if k.is_empty() {
            return Err(format!("a tag key is empty (tag value `{v}`)"));
        }
        if !tags.insert(carried(k)) {
            return Err(format!("tag `{k}` appears twice"));
        }
    }
    Ok(())
}

/// Appends one point, timestamp in the point's milliseconds (`precision=ms`), and a newline.
pub fn write_point(out: &mut String, p: &MetricPoint) {
    escape(out, &p.measurement, MEASUREMENT);
    // An empty tag value is no tag (InfluxDB refuses `tag=`).
    let mut tags: Vec<(&str, std::borrow::Cow<'_, str>)> = p
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), carried_value(v)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    // Sorted tags: InfluxDB's preferred order, and a stable line for a stable point.
    tags.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in tags {
        out.push(',');
        escape(out, k, KEY_OR_TAG);
        out.push('=');
        escape(out, &v, KEY_OR_TAG);
    }
    out.push(' ');
    for (i, (k, v)) in p.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        escape(out, k, KEY_OR_TAG);
        out.push('=');
        match v {
            Value::Float(f) => {
                // Always a decimal point or exponent, so InfluxDB reads a float.
                let _ = write!(out, "{f:?}");
            }
            Value::Int(n) => {
                let _ = write!(out, "{n}i");
            }
            Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Str(s) => {
                out.push('"');
                for c in s.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(if c == '\n' { ' ' } else { c });
                }
                out.push('"');
            }
        }
    }
    let _ = writeln!(out, " {}", p.timestamp);
}

/// One point as a line, without the newline.
pub fn to_line_bare(p: &MetricPoint) -> String {
    let mut s = String::with_capacity(96);
    write_point(&mut s, p);
    s.pop();
    s
}

/// One point as a line (with its newline).
pub fn to_line(p: &MetricPoint) -> String {
    let mut s = String::new();
    write_point(&mut s, p);
    s
}

/// What a point becomes through line protocol, by the rules in the module's
/// doc, worked out independently of the writer: newlines, tabs and NULs in
/// names and tag values become spaces, a tag value loses its trailing
/// backslashes (and is left out when that leaves it empty), tags are sorted,
/// a newline in a string field value becomes a space. For a point [`check`]
/// accepts, InfluxDB's parser reads [`to_line`]'s output back as exactly this
/// point. The property test and the `line_protocol` fuzz target share it.
#[doc(hidden)]
pub fn as_written(p: &MetricPoint) -> MetricPoint {
    let name = |s: &str| s.replace(['\n', '\t', '\0'], " ");
    let mut tags: Vec<(String, String)> = p
        .tags
        .iter()
        .map(|(k, v)| (name(k), name(v).trim_end_matches('\\').to_string()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    tags.sort();
    MetricPoint {
        measurement: name(&p.measurement),
        tags,
        fields: p
            .fields
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::Str(s) => Value::Str(s.replace('\n', " ")),
                    other => other.clone(),
                };
                (name(k), v)
            })
            .collect(),
        timestamp: p.timestamp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use influxdb_line_protocol::{FieldValue, parse_lines};
    use proptest::prelude::*;

    #[test]
    fn escapes_and_types() {
        let p = MetricPoint {
            measurement: "page views,x".into(),
            tags: vec![
                ("path".into(), "/a b,c=d".into()),
                ("empty".into(), String::new()),
            ],
            fields: vec![
                ("count".into(), Value::Int(3)),
                ("avg".into(), Value::Float(2.0)),
                ("name".into(), Value::Str("say \"hi\" \\".into())),
                ("ok".into(), Value::Boolean(true)),
            ],
            timestamp: 60_000,
        };
        assert_eq!(
            to_line(&p),
            "page\\ views\\,x,path=/a\\ b\\,c\\=d count=3i,avg=2.0,name=\"say \\\"hi\\\" \\\\\",ok=true 60000\n"
        );
    }

    /// The point InfluxDB's own parser (influxdb-line-protocol, from IOx)
    /// reads back from `line`.
    fn parse_back(line: &str) -> Result<MetricPoint, String> {
        let mut lines = parse_lines(line);
        let parsed = lines.next().ok_or("no line")?.map_err(|e| e.to_string())?;
        if lines.next().is_some() {
            return Err("more than one line".into());
        }
        let mut tags: Vec<(String, String)> = parsed
            .series
            .tag_set
            .iter()
            .flatten()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tags.sort();
        Ok(MetricPoint {
            measurement: parsed.series.measurement.to_string(),
            tags,
            fields: parsed
                .field_set
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        FieldValue::I64(i) => Value::Int(*i),
                        FieldValue::F64(f) => Value::Float(*f),
                        FieldValue::Boolean(b) => Value::Boolean(*b),
                        FieldValue::String(s) => Value::Str(s.to_string()),
                        FieldValue::U64(u) => Value::Float(*u as f64),
                    };
                    (k.to_string(), v)
                })
                .collect(),
            timestamp: parsed.timestamp.ok_or("no timestamp")?,
        })
    }

    /// Any text, with the characters line protocol treats specially made likely.
    fn text() -> impl Strategy<Value = String> {
        chars(0..12)
    }

    /// A name: as `text`, never empty.
    fn name() -> impl Strategy<Value = String> {
        chars(1..10)
    }

    fn chars(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                4 => prop::char::any(),
                6 => prop::sample::select(vec![
                    ',', '=', ' ', '\\', '"', '\n', '\t', '\r', '\0', '#', 'é', 'a', 'Z', '1', '-'
                ]),
            ],
            len,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            text().prop_map(Value::Str),
            any::<i64>().prop_map(Value::Int),
            any::<bool>().prop_map(Value::Boolean),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::Float),
        ]
    }

    fn point() -> impl Strategy<Value = MetricPoint> {
        (
            name(),
            prop::collection::vec((name(), text()), 0..4),
            prop::collection::vec((name(), value()), 1..4),
            any::<i64>(),
        )
            .prop_map(|(measurement, tags, fields, timestamp)| MetricPoint {
                measurement,
                tags,
                fields,
                timestamp,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Every point the host accepts is written as one line that
        /// InfluxDB's parser reads back as the same point (with the newline
        /// and tab replacements the docs name); a point that cannot be
        /// written is refused by `check` instead.
        #[test]
        fn every_accepted_point_parses_back(p in point()) {
            if check(&p).is_err() {
                return Ok(()); // refused instead (see `what_cannot_be_written_is_refused`)
            }
            let written = as_written(&p);
            let line = to_line(&p);
            prop_assert_eq!(line.matches('\n').count(), 1, "one line: {:?}", line);
            let back = parse_back(&line).map_err(|e| TestCaseError::fail(format!("{e}: {line:?}")))?;
            prop_assert_eq!(back, written, "line {:?}", line);
        }
    }

    #[test]
    fn what_cannot_be_written_is_refused() {
        let p = |measurement: &str, tags: &[(&str, &str)], fields: &[(&str, Value)]| MetricPoint {
            measurement: measurement.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            timestamp: 0,
        };
        let one = [("n", Value::Int(1))];
        for (point, why) in [
            (p("", &[], &one), "measurement is empty"),
            (p("#x", &[], &one), "comment"),
            (p("m", &[], &[]), "at least one field"),
            (p("m", &[("", "v")], &one), "tag key is empty"),
            (
                p("m", &[("a", "1"), ("a", "2")], &one),
                "tag `a` appears twice",
            ),
            (
                p("m", &[], &[("n", Value::Int(1)), ("n", Value::Int(2))]),
                "field `n` appears twice",
            ),
            (
                p("m", &[], &[("f", Value::Float(f64::NAN))]),
                "cannot carry",
            ),
            (p("m\\", &[], &one), "ends with a backslash"),
            (p("m", &[("k\\", "v")], &one), "ends with a backslash"),
        ] {
            let err = check(&point).unwrap_err();
            assert!(err.contains(why), "{point:?}: {err}");
        }
    }
}
