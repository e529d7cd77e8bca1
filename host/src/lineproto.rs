//! InfluxDB line protocol: `measurement[,tag=v...] field=v[,...] timestamp`.
//! Escaping follows the spec: commas and spaces in measurements; commas, `=`
//! and spaces in tag keys, tag values and field keys; `"` and `\` in strings.

use crate::runtime::{MetricPoint, Value};
use std::fmt::Write;

fn escape(out: &mut String, s: &str, special: &[char]) {
    for c in s.chars() {
        if special.contains(&c) {
            out.push('\\');
        }
        // Line protocol has no escape for a newline: it would end the line.
        out.push(if c == '\n' { ' ' } else { c });
    }
}

/// Appends one point, timestamp in the point's milliseconds (`precision=ms`), and a newline.
pub fn write_point(out: &mut String, p: &MetricPoint) {
    escape(out, &p.measurement, &[',', ' ']);
    let mut tags: Vec<&(String, String)> = p.tags.iter().filter(|(_, v)| !v.is_empty()).collect();
    // Sorted tags: InfluxDB's preferred order, and a stable line for a stable point.
    tags.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in tags {
        out.push(',');
        escape(out, k, &[',', '=', ' ']);
        out.push('=');
        escape(out, v, &[',', '=', ' ']);
    }
    out.push(' ');
    for (i, (k, v)) in p.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        escape(out, k, &[',', '=', ' ']);
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
                    out.push(c);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
