//! Queries over the store: the stored points of a measurement's series, or
//! points rolled up into epoch-aligned `[start, end)` buckets with the
//! aggregate the caller names, grouped by tags.
//!
//! Ranges older than the raw retention are answered from the rollups: a
//! rollup bucket counts when its start lies in the range, and lands in the
//! query bucket that holds its start.

use super::data::{Column, Data, Measurement, Roll, Val};
use serde::Serialize;
use serde::ser::SerializeSeq;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

/// How points are rolled up into a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Agg {
    Sum,
    Count,
    Min,
    Max,
    Avg,
    Last,
}

impl Agg {
    pub const ALL: [(&'static str, Agg); 6] = [
        ("sum", Agg::Sum),
        ("count", Agg::Count),
        ("min", Agg::Min),
        ("max", Agg::Max),
        ("avg", Agg::Avg),
        ("last", Agg::Last),
    ];

    pub fn parse(s: &str) -> Option<Agg> {
        Agg::ALL.iter().find(|(n, _)| *n == s).map(|(_, a)| *a)
    }
}

/// A query of one measurement.
#[derive(Debug, Clone)]
pub struct MetricQuery {
    pub metric: String,
    /// One field, or all.
    pub field: Option<String>,
    pub group_by: Vec<String>,
    /// Tag equalities every series must meet.
    pub filters: Vec<(String, String)>,
    /// `[start, end)`, ms.
    pub start: i64,
    pub end: i64,
    /// Bucket size (ms) and aggregate; `None`: the stored points.
    pub window: Option<(i64, Agg)>,
}

/// One series of an answer, columnar. Raw answers borrow the store's
/// columns (a day of 1 000 series is 1.4 million points: copying them
/// first would cost more than writing them out).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SeriesOut<'a> {
    pub tags: BTreeMap<String, String>,
    pub timestamps: Cow<'a, [i64]>,
    /// Per field, one value per timestamp (`null` where it has none).
    pub fields: BTreeMap<String, Values<'a>>,
}

impl SeriesOut<'_> {
    /// Rough bytes of its JSON, to size the answer's buffer once.
    pub fn json_size(&self) -> usize {
        64 + self
            .tags
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum::<usize>()
            + self.timestamps.len() * (15 + 6 * self.fields.len())
    }

    /// Appends the same JSON as its `Serialize`, faster: numbers are
    /// formatted straight into `out` (a day of raw points for a thousand
    /// series is 2.9 million numbers, and serde's per-element calls were
    /// a third of the answer's time).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut ints = itoa::Buffer::new();
        let mut floats = ryu::Buffer::new();
        let key = |out: &mut Vec<u8>, k: &str| {
            string(out, k);
            out.push(b':');
        };
        out.extend_from_slice(b"{\"tags\":{");
        for (i, (k, v)) in self.tags.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            key(out, k);
            string(out, v);
        }
        out.extend_from_slice(b"},\"timestamps\":[");
        for (i, t) in self.timestamps.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(ints.format(*t).as_bytes());
        }
        out.extend_from_slice(b"],\"fields\":{");
        for (i, (k, values)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            key(out, k);
            out.push(b'[');
            let mut one = |j: usize, v: Option<&Val>| {
                if j > 0 {
                    out.push(b',');
                }
                match v {
                    Some(Val::F(f)) if f.is_finite() => {
                        out.extend_from_slice(floats.format_finite(*f).as_bytes())
                    }
                    Some(Val::I(n)) => out.extend_from_slice(ints.format(*n).as_bytes()),
                    Some(Val::B(true)) => out.extend_from_slice(b"true"),
                    Some(Val::B(false)) => out.extend_from_slice(b"false"),
                    Some(Val::S(v)) => string(out, v),
                    Some(Val::F(_)) | None => out.extend_from_slice(b"null"),
                }
            };
            match values {
                Values::Every(v) => v.iter().enumerate().for_each(|(j, v)| one(j, Some(v))),
                Values::Sparse(v) => v.iter().enumerate().for_each(|(j, v)| one(j, v.as_ref())),
            }
            out.push(b']');
        }
        out.extend_from_slice(b"}}");
    }
}

/// A JSON string, escaped as serde_json escapes it.
fn string(out: &mut Vec<u8>, s: &str) {
    // Writing a `&str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The values of one field of an answer's series.
#[derive(Debug, Clone, PartialEq)]
pub enum Values<'a> {
    /// A value at every timestamp, borrowed from a column.
    Every(&'a [Val]),
    /// `None` where the field has no value at that timestamp.
    Sparse(Vec<Option<Val>>),
}

impl Values<'_> {
    pub fn len(&self) -> usize {
        match self {
            Values::Every(v) => v.len(),
            Values::Sparse(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> Option<&Val> {
        match self {
            Values::Every(v) => v.get(i),
            Values::Sparse(v) => v.get(i).and_then(Option::as_ref),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Option<&Val>> {
        (0..self.len()).map(|i| self.get(i))
    }
}

impl Serialize for Values<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        match self {
            Values::Every(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            Values::Sparse(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
        }
        seq.end()
    }
}

impl Serialize for Val {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Val::F(f) if f.is_finite() => s.serialize_f64(*f),
            Val::F(_) => s.serialize_none(),
            Val::I(i) => s.serialize_i64(*i),
            Val::B(b) => s.serialize_bool(*b),
            Val::S(v) => s.serialize_str(v),
        }
    }
}

/// The bucket aggregate of one field.
#[derive(Debug, Clone)]
struct Acc {
    sum: f64,
    /// Values that are numbers, and all values.
    nums: u64,
    count: u64,
    min: f64,
    max: f64,
    last: Option<(i64, Val)>,
}

impl Default for Acc {
    fn default() -> Self {
        Acc {
            sum: 0.0,
            nums: 0,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: None,
        }
    }
}

impl Acc {
    /// Adds a run of points in time order (the last is the latest).
    fn add_run(&mut self, ts: &[i64], vals: &[Val]) {
        for v in vals {
            if let Some(n) = v.num() {
                self.sum += n;
                self.nums += 1;
                self.min = self.min.min(n);
                self.max = self.max.max(n);
            }
        }
        self.count += vals.len() as u64;
        if let (Some(t), Some(v)) = (ts.last(), vals.last())
            && self.last.as_ref().is_none_or(|(lt, _)| t >= lt)
        {
            self.last = Some((*t, v.clone()));
        }
    }

    fn add_roll(&mut self, r: &Roll) {
        if r.min.is_finite() {
            self.sum += r.sum;
            self.nums += r.count;
            self.min = self.min.min(r.min);
            self.max = self.max.max(r.max);
        }
        self.count += r.count;
        if self.last.as_ref().is_none_or(|(t, _)| r.last_ts >= *t) {
            self.last = Some((r.last_ts, r.last.clone()));
        }
    }

    fn merge(&mut self, o: &Acc) {
        self.sum += o.sum;
        self.nums += o.nums;
        self.count += o.count;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if let Some((t, v)) = &o.last
            && self.last.as_ref().is_none_or(|(lt, _)| t >= lt)
        {
            self.last = Some((*t, v.clone()));
        }
    }

    fn value(&self, agg: Agg) -> Option<Val> {
        let num = |f: f64| (self.nums > 0).then_some(Val::F(f));
        match agg {
            Agg::Sum => num(self.sum),
            Agg::Count => Some(Val::I(self.count as i64)),
            Agg::Min => num(self.min),
            Agg::Max => num(self.max),
            Agg::Avg => num(self.sum / self.nums as f64),
            Agg::Last => self.last.as_ref().map(|(_, v)| v.clone()),
        }
    }
}

/// Why a query cannot be answered.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryError {
    UnknownMetric { known: Vec<String> },
    UnknownField { field: String, known: Vec<String> },
    UnknownTag { tag: String, known: Vec<String> },
}

impl Data {
    /// Answers a query.
    pub fn query(&self, q: &MetricQuery) -> Result<Vec<SeriesOut<'_>>, QueryError> {
        let Some(m) = self.measurements.get(&q.metric) else {
            return Err(QueryError::UnknownMetric {
                known: self.measurements.keys().cloned().collect(),
            });
        };
        let fields = m.fields();
        if let Some(f) = &q.field
            && !fields.contains(f.as_str())
        {
            return Err(QueryError::UnknownField {
                field: f.clone(),
                known: fields.iter().map(|s| s.to_string()).collect(),
            });
        }
        let tag_keys = m.tag_keys();
        for t in q.group_by.iter().chain(q.filters.iter().map(|(k, _)| k)) {
            if !tag_keys.contains(t.as_str()) {
                return Err(QueryError::UnknownTag {
                    tag: t.clone(),
                    known: tag_keys.iter().map(|s| s.to_string()).collect(),
                });
            }
        }
        Ok(match q.window {
            None => raw(m, q),
            Some((w, agg)) => windowed(m, q, w.max(1), agg),
        })
    }
}

fn wanted<'a, 'q>(
    m: &'a Measurement,
    q: &'q MetricQuery,
) -> impl Iterator<Item = &'a super::data::Series> + use<'a, 'q> {
    m.series
        .iter()
        .filter(|s| q.filters.iter().all(|(k, v)| s.tag(k) == Some(v.as_str())))
}

fn columns<'a, 'q>(
    s: &'a super::data::Series,
    q: &'q MetricQuery,
) -> impl Iterator<Item = (&'a String, &'a Column)> + use<'a, 'q> {
    s.fields
        .iter()
        .filter(|(k, _)| q.field.as_ref().is_none_or(|f| f == *k))
}

fn raw<'a>(m: &'a Measurement, q: &MetricQuery) -> Vec<SeriesOut<'a>> {
    let mut out = Vec::new();
    for s in wanted(m, q) {
        let cols: Vec<(&String, &[i64], &[Val])> = columns(s, q)
            .map(|(k, c)| {
                let r = c.range(q.start, q.end);
                (k, &c.ts[r.clone()], &c.vals[r])
            })
            .filter(|(_, t, _)| !t.is_empty())
            .collect();
        if cols.is_empty() {
            continue;
        }
        let same = cols.windows(2).all(|w| w[0].1 == w[1].1);
        let (timestamps, fields) = if same {
            // The usual case: every field has a value at every timestamp.
            let f = cols
                .iter()
                .map(|(k, _, v)| ((*k).clone(), Values::Every(v)))
                .collect();
            (Cow::Borrowed(cols[0].1), f)
        } else {
            let mut ts: Vec<i64> = cols
                .iter()
                .flat_map(|(_, t, _)| t.iter().copied())
                .collect();
            ts.sort_unstable();
            ts.dedup();
            let f = cols
                .iter()
                .map(|(k, t, v)| {
                    let by: HashMap<i64, &Val> = t.iter().copied().zip(v.iter()).collect();
                    let values = ts.iter().map(|t| by.get(t).map(|v| (*v).clone())).collect();
                    ((*k).clone(), Values::Sparse(values))
                })
                .collect();
            (Cow::Owned(ts), f)
        };
        out.push(SeriesOut {
            tags: s.tags.iter().cloned().collect(),
            timestamps,
            fields,
        });
    }
    out
}

fn windowed(m: &Measurement, q: &MetricQuery, w: i64, agg: Agg) -> Vec<SeriesOut<'static>> {
    let bucket = |t: i64| t - t.rem_euclid(w);
    // Group (the group_by tags' values) -> field -> bucket -> aggregate.
    type Groups = BTreeMap<Vec<Option<String>>, BTreeMap<String, BTreeMap<i64, Acc>>>;
    let mut groups: Groups = BTreeMap::new();
    for s in wanted(m, q) {
        let key: Vec<Option<String>> = q
            .group_by
            .iter()
            .map(|t| s.tag(t).map(str::to_string))
            .collect();
        for (field, c) in columns(s, q) {
            let mut rolled: Vec<(i64, Acc)> = Vec::new();
            for (b, r) in c.rolled.iter().filter(|(b, _)| *b >= q.start && *b < q.end) {
                let k = bucket(*b);
                match rolled.last_mut() {
                    Some((last, acc)) if *last == k => acc.add_roll(r),
                    _ => {
                        let mut acc = Acc::default();
                        acc.add_roll(r);
                        rolled.push((k, acc));
                    }
                }
            }
            // Points are in time order: aggregate each bucket's run of
            // points (found by binary search) before touching the group's map.
            let mut runs: Vec<(i64, Acc)> = Vec::new();
            let r = c.range(q.start, q.end);
            let (ts, vals) = (&c.ts[r.clone()], &c.vals[r]);
            let mut i = 0;
            while i < ts.len() {
                let k = bucket(ts[i]);
                let j = i + ts[i..].partition_point(|t| *t < k.saturating_add(w));
                let mut acc = Acc::default();
                acc.add_run(&ts[i..j], &vals[i..j]);
                runs.push((k, acc));
                i = j;
            }
            if rolled.is_empty() && runs.is_empty() {
                continue;
            }
            let target = groups
                .entry(key.clone())
                .or_default()
                .entry(field.clone())
                .or_default();
            for (k, acc) in rolled.into_iter().chain(runs) {
                target.entry(k).or_default().merge(&acc);
            }
        }
    }
    groups
        .into_iter()
        .map(|(key, fields)| {
            let mut ts: Vec<i64> = fields.values().flat_map(|b| b.keys().copied()).collect();
            ts.sort_unstable();
            ts.dedup();
            let fields = fields
                .into_iter()
                .map(|(f, buckets)| {
                    let values = ts
                        .iter()
                        .map(|t| buckets.get(t).and_then(|a| a.value(agg)))
                        .collect();
                    (f, Values::Sparse(values))
                })
                .collect();
            SeriesOut {
                tags: q
                    .group_by
                    .iter()
                    .zip(key)
                    .filter_map(|(k, v)| v.map(|v| (k.clone(), v)))
                    .collect(),
                timestamps: Cow::Owned(ts),
                fields,
            }
        })
        .collect()
}

/// A measurement as the catalog shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogEntry {
    pub measurement: String,
    pub fields: Vec<String>,
    pub tags: Vec<String>,
    pub series: usize,
    pub oldest: Option<i64>,
    pub newest: Option<i64>,
}

impl Data {
    pub fn catalog(&self) -> Vec<CatalogEntry> {
        self.measurements
            .iter()
            .map(|(name, m)| {
                let span = m.span();
                CatalogEntry {
                    measurement: name.clone(),
                    fields: m.fields().into_iter().map(str::to_string).collect(),
                    tags: m.tag_keys().into_iter().map(str::to_string).collect(),
                    series: m.series.len(),
                    oldest: span.map(|s| s.0),
                    newest: span.map(|s| s.1),
                }
            })
            .collect()
    }

    /// Alert records in `[start, end)` (by their time), newest first,
    /// filtered by status and rule.
    pub fn alerts(
        &self,
        status: Option<&str>,
        rule: Option<&str>,
        start: i64,
        end: i64,
        limit: usize,
    ) -> Vec<std::sync::Arc<serde_json::Value>> {
        self.alerts
            .iter()
            .rev()
            .filter(|a| a.at >= start && a.at < end)
            .filter(|a| status.is_none_or(|s| a.record["status"] == s))
            .filter(|a| rule.is_none_or(|r| a.record["rule_id"] == r))
            .take(limit)
            .map(|a| a.record.clone())
            .collect()
    }

    /// Alerts firing now (no resolution since), newest first.
    pub fn firing(&self, rule: Option<&str>) -> Vec<std::sync::Arc<serde_json::Value>> {
        let mut v: Vec<_> = self
            .firing
            .values()
            .filter(|a| rule.is_none_or(|r| a.record["rule_id"] == r))
            .collect();
        v.sort_by_key(|a| std::cmp::Reverse(a.at));
        v.into_iter().map(|a| a.record.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_json_writes_what_serde_writes() {
        let ts = [1_767_225_600_000, 1_767_225_660_000, -5, 0];
        let every = [
            Val::F(1.0),
            Val::F(f64::NAN),
            Val::F(-2.5e-7),
            Val::I(i64::MIN),
        ];
        let out = SeriesOut {
            tags: BTreeMap::from([
                ("path".to_string(), "/a\"b\\c\u{1}é".to_string()),
                ("site".to_string(), String::new()),
            ]),
            timestamps: Cow::Borrowed(&ts),
            fields: BTreeMap::from([
                ("count".to_string(), Values::Every(&every)),
                (
                    "other \n".to_string(),
                    Values::Sparse(vec![
                        Some(Val::B(true)),
                        None,
                        Some(Val::S("x\ty".into())),
                        Some(Val::B(false)),
                    ]),
                ),
            ]),
        };
        let mut mine = Vec::new();
        out.write_json(&mut mine);
        assert_eq!(
            String::from_utf8(mine).unwrap(),
            serde_json::to_string(&out).unwrap()
        );
        let empty = SeriesOut {
            tags: BTreeMap::new(),
            timestamps: Cow::Owned(Vec::new()),
            fields: BTreeMap::new(),
        };
        let mut mine = Vec::new();
        empty.write_json(&mut mine);
        assert_eq!(mine, serde_json::to_vec(&empty).unwrap());
    }
}
