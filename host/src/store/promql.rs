//! The PromQL a dashboard needs, over the store: selectors of
//! `<measurement>_<field>` (tags as labels: VictoriaMetrics' mapping of line
//! protocol) with `=`, `!=`, `=~`, `!~`, and `sum|avg|min|max|count by|without (…)`.
//! Anything else is refused, naming what is not supported. String fields are
//! samples too, as VictoriaMetrics stores them: their number, or 0.
//!
//! A series' value at time `t` is its newest sample in `(t - window, t]`,
//! where, as VictoriaMetrics computes it for a bare selector, `window` is the
//! step or, if larger, the series' sample interval (the 0.6 quantile of its
//! first 20 intervals, the step when it has fewer than two samples) plus a
//! margin that shrinks as the interval grows. Instant queries use a step of
//! five minutes.

use super::data::Data;
use promql_parser::label::Matcher;
use promql_parser::parser::ast::{Expr, LabelModifier, VectorSelector};
use std::collections::BTreeMap;

/// The step of an instant query, as VictoriaMetrics takes it.
pub const INSTANT_STEP: i64 = 300_000;
/// How far before the range a series' samples are looked at for its interval.
const SILENCE: i64 = 300_000;

/// One series of a result: its labels and its samples (ms, value).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub values: Vec<(i64, f64)>,
}

/// Evaluates `query` at `start`, `start + step`, ... up to `end` (ms).
pub fn eval(d: &Data, query: &str, start: i64, end: i64, step: i64) -> Result<Vec<Sample>, String> {
    let expr =
        promql_parser::parser::parse(query).map_err(|e| format!("cannot parse `{query}`: {e}"))?;
    let times: Vec<i64> = (0..)
        .map(|i| start + i * step)
        .take_while(|t| *t <= end)
        .take(11_000)
        .collect();
    let mut out = eval_expr(d, &expr, &times, step)?;
    out.retain(|s| !s.values.is_empty());
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

fn eval_expr(d: &Data, e: &Expr, times: &[i64], step: i64) -> Result<Vec<Sample>, String> {
    match e {
        Expr::VectorSelector(vs) => select(d, vs, times, step),
        Expr::Paren(p) => eval_expr(d, &p.expr, times, step),
        Expr::Aggregate(a) => {
            let op = a.op.to_string();
            let op = op.as_str();
            if !["sum", "avg", "min", "max", "count"].contains(&op) {
                return Err(format!(
                    "the aggregation `{op}` is not supported (sum, avg, min, max, count are)"
                ));
            }
            if a.param.is_some() {
                return Err(format!("`{op}` with a parameter is not supported"));
            }
            let inner = eval_expr(d, &a.expr, times, step)?;
            Ok(aggregate(op, a.modifier.as_ref(), inner))
        }
        Expr::Call(c) => Err(format!("functions are not supported (`{}`)", c.func.name)),
        Expr::Binary(_) => Err("binary expressions are not supported".into()),
        Expr::Unary(_) => Err("unary expressions are not supported".into()),
        Expr::MatrixSelector(_) => Err("range vectors (`[5m]`) are not supported".into()),
        Expr::Subquery(_) => Err("subqueries are not supported".into()),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {
            Err("scalars and strings are not supported; select `<measurement>_<field>`".into())
        }
        Expr::Extension(_) => Err("this expression is not supported".into()),
    }
}

/// A stored value as a sample: as VictoriaMetrics reads line protocol, a
/// string field is its number if it is one, else 0; booleans are 1 and 0.
fn sample_value(v: &super::data::Val) -> f64 {
    match v {
        super::data::Val::S(s) => s.trim().parse().unwrap_or(0.0),
        other => other.num().unwrap_or(0.0),
    }
}

/// VictoriaMetrics' margin over a sample interval, for gaps from jitter.
fn max_prev_interval(scrape: i64) -> i64 {
    scrape
        + match scrape {
            s if s <= 2_000 => 4 * s,
            s if s <= 4_000 => 2 * s,
            s if s <= 8_000 => s,
            s if s <= 16_000 => s / 2,
            s if s <= 32_000 => s / 4,
            s => s / 8,
        }
}

/// The 0.6 quantile (linear between ranks) of the first 20 intervals.
fn scrape_interval(ts: &[i64], default: i64) -> i64 {
    if ts.len() < 2 {
        return default;
    }
    let mut intervals: Vec<f64> = ts
        .windows(2)
        .take(20)
        .map(|w| (w[1] - w[0]) as f64)
        .collect();
    intervals.sort_by(f64::total_cmp);
    let rank = 0.6 * (intervals.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(intervals.len() - 1);
    let w = rank - rank.floor();
    let q = (intervals[lo] * (1.0 - w) + intervals[hi] * w) as i64;
    if q <= 0 { default } else { q }
}

fn select(d: &Data, vs: &VectorSelector, times: &[i64], step: i64) -> Result<Vec<Sample>, String> {
    if vs.offset.is_some() || vs.at.is_some() {
        return Err("`offset` and `@` are not supported".into());
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err("`or` between label matchers is not supported".into());
    }
    let (Some(&first), Some(&last)) = (times.first(), times.last()) else {
        return Ok(Vec::new());
    };
    let name_ok = |name: &str| {
        vs.name.as_deref().is_none_or(|n| n == name)
            && vs
                .matchers
                .matchers
                .iter()
                .filter(|m| m.name == "__name__")
                .all(|m| m.is_match(name))
    };
    let tag_matchers: Vec<&Matcher> = vs
        .matchers
        .matchers
        .iter()
        .filter(|m| m.name != "__name__")
        .collect();
    let mut out = Vec::new();
    for (measurement, m) in &d.measurements {
        for series in &m.series {
            // A missing label reads as empty, as in Prometheus.
            if !tag_matchers
                .iter()
                .all(|mt| mt.is_match(series.tag(&mt.name).unwrap_or("")))
            {
                continue;
            }
            for (field, col) in &series.fields {
                let name = format!("{measurement}_{field}");
                if !name_ok(&name) {
                    continue;
                }
                let r = col.range(first - step - SILENCE, last.saturating_add(1));
                let pts: Vec<(i64, f64)> = col.ts[r.clone()]
                    .iter()
                    .zip(&col.vals[r])
                    .map(|(t, v)| (*t, sample_value(v)))
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                let ts: Vec<i64> = pts.iter().map(|p| p.0).collect();
                let window = step.max(max_prev_interval(scrape_interval(&ts, step)));
                let mut values = Vec::new();
                for &t in times {
                    // The newest sample in (t - window, t].
                    let upto = ts.partition_point(|x| *x <= t);
                    if upto > 0 && ts[upto - 1] > t - window {
                        values.push((t, pts[upto - 1].1));
                    }
                }
                let mut labels: BTreeMap<String, String> = series.tags.iter().cloned().collect();
                labels.insert("__name__".into(), name);
                out.push(Sample { labels, values });
            }
        }
    }
    Ok(out)
}

fn aggregate(op: &str, modifier: Option<&LabelModifier>, inner: Vec<Sample>) -> Vec<Sample> {
    let key = |labels: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        match modifier {
            None => BTreeMap::new(),
            Some(LabelModifier::Include(by)) => labels
                .iter()
                .filter(|(k, _)| by.labels.iter().any(|l| l == *k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            Some(LabelModifier::Exclude(without)) => labels
                .iter()
                .filter(|(k, _)| *k != "__name__" && !without.labels.iter().any(|l| l == *k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    };
    // Group -> time -> (sum, count, min, max).
    type Labels = BTreeMap<String, String>;
    type Acc = (f64, u64, f64, f64);
    let mut groups: BTreeMap<Labels, BTreeMap<i64, Acc>> = BTreeMap::new();
    for s in inner {
        let g = groups.entry(key(&s.labels)).or_default();
        for (t, v) in s.values {
            let a = g
                .entry(t)
                .or_insert((0.0, 0, f64::INFINITY, f64::NEG_INFINITY));
            a.0 += v;
            a.1 += 1;
            a.2 = a.2.min(v);
            a.3 = a.3.max(v);
        }
    }
    groups
        .into_iter()
        .map(|(labels, by_time)| Sample {
            labels,
            values: by_time
                .into_iter()
                .map(|(t, (sum, n, min, max))| {
                    let v = match op {
                        "sum" => sum,
                        "avg" => sum / n as f64,
                        "min" => min,
                        "max" => max,
                        _ => n as f64,
                    };
                    (t, v)
                })
                .collect(),
        })
        .collect()
}

/// Whether a series (its metric name and tags) meets every matcher of a
/// selector, for `/series` and label listings.
pub fn selects(vs: &VectorSelector, name: &str, tags: &[(String, String)]) -> bool {
    let tag = |k: &str| {
        tags.iter()
            .find(|(t, _)| t == k)
            .map_or("", |(_, v)| v.as_str())
    };
    vs.name.as_deref().is_none_or(|n| n == name)
        && vs.matchers.matchers.iter().all(|m| {
            let v = if m.name == "__name__" {
                name
            } else {
                tag(&m.name)
            };
            m.is_match(v)
        })
}

/// Parses a series selector (`match[]`).
pub fn selector(s: &str) -> Result<VectorSelector, String> {
    match promql_parser::parser::parse(s) {
        Ok(Expr::VectorSelector(vs)) => Ok(vs),
        Ok(_) => Err(format!("`{s}` is not a series selector")),
        Err(e) => Err(format!("cannot parse `{s}`: {e}")),
    }
}
