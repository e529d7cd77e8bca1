//! The store's contents: series of points by measurement, columnar per
//! field, with raw points and their hourly rollups; and the alert history.
//!
//! One value per series, field and timestamp: a window emitted again
//! (allowed lateness, a replay) overwrites its earlier point, as InfluxDB
//! does. Raw points older than the raw retention are rolled up into
//! buckets keeping sum, count, min, max and last, so every aggregate the
//! query API offers stays answerable after the raw points are gone.

use super::StoreSettings;
use crate::runtime::{MetricPoint, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

/// A stored field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    F(f64),
    I(i64),
    B(bool),
    S(Arc<str>),
}

impl Val {
    pub fn from_value(v: &Value) -> Val {
        match v {
            Value::Float(f) => Val::F(*f),
            Value::Int(i) => Val::I(*i),
            Value::Boolean(b) => Val::B(*b),
            Value::Str(s) => Val::S(s.as_str().into()),
        }
    }

    /// The value as a number, for sum, min, max and avg (strings have none).
    pub fn num(&self) -> Option<f64> {
        match self {
            Val::F(f) => Some(*f),
            Val::I(i) => Some(*i as f64),
            Val::B(b) => Some(f64::from(u8::from(*b))),
            Val::S(_) => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Val::F(f) => {
                serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
            }
            Val::I(i) => (*i).into(),
            Val::B(b) => (*b).into(),
            Val::S(s) => serde_json::Value::String(s.to_string()),
        }
    }

    /// Rough bytes held, for the memory budget.
    fn weight(&self) -> usize {
        match self {
            Val::S(s) => 24 + s.len(),
            _ => 24,
        }
    }
}

/// What one rollup bucket keeps of a field's raw points.
#[derive(Debug, Clone, PartialEq)]
pub struct Roll {
    /// Over the numeric values.
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// Over every value (also strings).
    pub count: u64,
    /// The value with the latest timestamp, and that timestamp.
    pub last: Val,
    pub last_ts: i64,
}

impl Roll {
    fn of(ts: i64, v: &Val) -> Roll {
        let n = v.num();
        Roll {
            sum: n.unwrap_or(0.0),
            min: n.unwrap_or(f64::INFINITY),
            max: n.unwrap_or(f64::NEG_INFINITY),
            count: 1,
            last: v.clone(),
            last_ts: ts,
        }
    }

    fn add(&mut self, ts: i64, v: &Val) {
        if let Some(n) = v.num() {
            self.sum += n;
            self.min = self.min.min(n);
            self.max = self.max.max(n);
        }
        self.count += 1;
        if ts >= self.last_ts {
            self.last = v.clone();
            self.last_ts = ts;
        }
    }
}

/// One field of one series. Raw points are kept as two parallel columns,
/// so a range is two binary searches and an answer borrows the slices.
#[derive(Debug, Default, Clone)]
pub struct Column {
    /// Raw point timestamps, ascending, and their values.
    pub ts: Vec<i64>,
    pub vals: Vec<Val>,
    /// Rollup buckets (bucket start, what it keeps), by start.
    pub rolled: Vec<(i64, Roll)>,
}

impl Column {
    /// Sets the value at `ts` (replacing one there); the change in weight.
    fn put(&mut self, ts: i64, v: Val) -> isize {
        let w = v.weight() as isize;
        // Windows are usually emitted in time order: the common case appends.
        if self.ts.last().is_none_or(|last| *last < ts) {
            self.ts.push(ts);
            self.vals.push(v);
            return w + 8;
        }
        match self.ts.binary_search(&ts) {
            Ok(i) => {
                let before = self.vals[i].weight() as isize;
                self.vals[i] = v;
                w - before
            }
            Err(i) => {
                self.ts.insert(i, ts);
                self.vals.insert(i, v);
                w + 8
            }
        }
    }

    /// The index range of the raw points in `[start, end)`.
    pub fn range(&self, start: i64, end: i64) -> std::ops::Range<usize> {
        let a = self.ts.partition_point(|t| *t < start);
        let b = self.ts.partition_point(|t| *t < end);
        a..b.max(a)
    }

    /// The raw points, as pairs.
    pub fn points(&self) -> impl Iterator<Item = (i64, &Val)> {
        self.ts.iter().copied().zip(&self.vals)
    }

    /// Rolls the raw points before `cutoff` (a bucket boundary) up into
    /// buckets of `res`; returns the weight freed (net).
    fn roll_up(&mut self, cutoff: i64, res: i64) -> isize {
        let n = self.ts.partition_point(|t| *t < cutoff);
        if n == 0 {
            return 0;
        }
        let mut freed = 0isize;
        for (ts, v) in self.ts.drain(..n).zip(self.vals.drain(..n)) {
            freed += v.weight() as isize + 8;
            let bucket = ts - ts.rem_euclid(res);
            match self.rolled.binary_search_by_key(&bucket, |(b, _)| *b) {
                Ok(i) => self.rolled[i].1.add(ts, &v),
                Err(i) => {
                    freed -= ROLL_WEIGHT;
                    self.rolled.insert(i, (bucket, Roll::of(ts, &v)));
                }
            }
        }
        freed
    }

    /// Forgets rollups that start before `cutoff`; the weight freed.
    fn expire(&mut self, cutoff: i64) -> isize {
        let n = self.rolled.partition_point(|(b, _)| *b < cutoff);
        self.rolled.drain(..n);
        n as isize * ROLL_WEIGHT
    }

    fn is_empty(&self) -> bool {
        self.ts.is_empty() && self.rolled.is_empty()
    }
}

const ROLL_WEIGHT: isize = 96;
const SERIES_WEIGHT: usize = 256;

/// One series: a measurement and a tag set.
#[derive(Debug, Clone)]
pub struct Series {
    /// Sorted by key; no empty values.
    pub tags: Vec<(String, String)>,
    pub fields: BTreeMap<String, Column>,
}

impl Series {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default, Clone)]
pub struct Measurement {
    pub series: Vec<Series>,
    index: HashMap<Vec<(String, String)>, usize>,
}

impl Measurement {
    pub fn fields(&self) -> BTreeSet<&str> {
        self.series
            .iter()
            .flat_map(|s| s.fields.keys().map(String::as_str))
            .collect()
    }

    pub fn tag_keys(&self) -> BTreeSet<&str> {
        self.series
            .iter()
            .flat_map(|s| s.tags.iter().map(|(k, _)| k.as_str()))
            .collect()
    }

    /// Oldest and newest timestamps held (raw or rolled up).
    pub fn span(&self) -> Option<(i64, i64)> {
        let cols = self.series.iter().flat_map(|s| s.fields.values());
        let mut span: Option<(i64, i64)> = None;
        for c in cols {
            let first = c.rolled.first().map(|r| r.0).or(c.ts.first().copied());
            let last = c.ts.last().copied().or(c.rolled.last().map(|r| r.0));
            if let (Some(a), Some(b)) = (first, last) {
                span = Some(span.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
            }
        }
        span
    }
}

/// A stored alert: its record (as `alerts.jsonl` has it) and when it was
/// stored, for retention.
#[derive(Debug, Clone)]
pub struct AlertRec {
    pub record: Arc<serde_json::Value>,
    /// Event time of the alert (its end if resolved, else its start).
    pub at: i64,
}

/// Why a point was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_series` series exist already.
    TooManySeries,
}

#[derive(Debug, Default)]
pub struct Data {
    pub measurements: BTreeMap<String, Measurement>,
    pub series_count: usize,
    /// Alert records, oldest first.
    pub alerts: VecDeque<AlertRec>,
    /// Firing alerts by fingerprint (dropped when their resolution comes).
    pub firing: BTreeMap<String, AlertRec>,
    /// The newest point timestamp seen: event time, for retention.
    pub newest: i64,
    /// Bytes held, roughly.
    pub weight: usize,
    /// Raw points rolled up before their retention to stay in the memory budget.
    pub early_rollups: u64,
}

impl Data {
    pub fn new() -> Self {
        Data {
            newest: i64::MIN,
            ..Data::default()
        }
    }

    /// Stores one point, field by field; `Err` if it would add a series past `max_series`.
    pub fn put(&mut self, p: &MetricPoint, max_series: usize) -> Result<(), Refused> {
        // Event time moves on even with a point that is refused.
        self.newest = self.newest.max(p.timestamp);
        let mut tags: Vec<(String, String)> = p
            .tags
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .cloned()
            .collect();
        tags.sort();
        tags.dedup_by(|a, b| a.0 == b.0);
        let m = self.measurements.entry(p.measurement.clone()).or_default();
        let i = match m.index.get(&tags) {
            Some(&i) => i,
            None => {
                if self.series_count >= max_series {
                    if m.series.is_empty() {
                        self.measurements.remove(&p.measurement);
                    }
                    return Err(Refused::TooManySeries);
                }
                self.series_count += 1;
                self.weight += SERIES_WEIGHT;
                m.series.push(Series {
                    tags: tags.clone(),
                    fields: BTreeMap::new(),
                });
                m.index.insert(tags, m.series.len() - 1);
                m.series.len() - 1
            }
        };
        let s = &mut m.series[i];
        for (k, v) in &p.fields {
            let delta = s
                .fields
                .entry(k.clone())
                .or_default()
                .put(p.timestamp, Val::from_value(v));
            self.weight = (self.weight as isize + delta).max(0) as usize;
        }
        Ok(())
    }

    /// Puts a rollup bucket back (loading a snapshot).
    pub fn put_roll(
        &mut self,
        measurement: &str,
        tags: Vec<(String, String)>,
        field: &str,
        bucket: i64,
        roll: Roll,
    ) {
        let m = self
            .measurements
            .entry(measurement.to_string())
            .or_default();
        let i = match m.index.get(&tags) {
            Some(&i) => i,
            None => {
                self.series_count += 1;
                m.series.push(Series {
                    tags: tags.clone(),
                    fields: BTreeMap::new(),
                });
                m.index.insert(tags, m.series.len() - 1);
                m.series.len() - 1
            }
        };
        let c = m.series[i].fields.entry(field.to_string()).or_default();
        match c.rolled.binary_search_by_key(&bucket, |(b, _)| *b) {
            Ok(j) => c.rolled[j].1 = roll,
            Err(j) => c.rolled.insert(j, (bucket, roll)),
        }
        self.weight += ROLL_WEIGHT as usize;
    }

    pub fn put_alert(&mut self, record: Arc<serde_json::Value>) {
        let ms = |k: &str| {
            record[k]
                .as_str()
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        };
        let at = ms("ends_at").or_else(|| ms("starts_at")).unwrap_or(0);
        let rec = AlertRec {
            record: record.clone(),
            at,
        };
        let fingerprint = record["fingerprint"].as_str().unwrap_or("").to_string();
        match record["status"].as_str() {
            Some("firing") => {
                self.firing.insert(fingerprint, rec.clone());
            }
            _ => {
                self.firing.remove(&fingerprint);
            }
        }
        self.weight += 256;
        self.alerts.push_back(rec);
    }

    /// Rolls up raw points older than the raw retention (or, over the
    /// memory budget, older still until it fits), and forgets rollups and
    /// alerts past their retention and series left empty.
    pub fn maintain(&mut self, s: &StoreSettings) {
        if self.newest == i64::MIN {
            return;
        }
        let res = s.rollup_resolution.max(1);
        let floor = |t: i64| t - t.rem_euclid(res);
        let mut cutoff = floor(self.newest.saturating_sub(s.retention));
        self.roll_up(cutoff, res);
        // Over budget: roll up earlier, an hour at a time, down to the newest hour.
        let newest_bucket = floor(self.newest);
        while self.weight > s.memory_budget && cutoff < newest_bucket {
            let oldest = self.oldest_raw().unwrap_or(newest_bucket);
            cutoff = floor(oldest).saturating_add(res).max(cutoff + res);
            self.early_rollups += 1;
            self.roll_up(cutoff.min(newest_bucket), res);
        }
        let expire = self.newest.saturating_sub(s.rollup_retention);
        let mut freed = 0isize;
        for m in self.measurements.values_mut() {
            for series in &mut m.series {
                for c in series.fields.values_mut() {
                    freed += c.expire(expire);
                }
                series.fields.retain(|_, c| !c.is_empty());
            }
        }
        self.weight = (self.weight as isize - freed).max(0) as usize;
        let alerts_before = self.newest.saturating_sub(s.retention);
        // A flood of alerts (thousands a second from a noisy rule) is bounded
        // by count too: retention alone would keep a week of them in memory.
        while self.alerts.front().is_some_and(|a| a.at < alerts_before)
            || self.alerts.len() > s.max_alerts
        {
            self.alerts.pop_front();
            self.weight = self.weight.saturating_sub(256);
        }
        // Firing alerts too: a rule that never resolves (a sequence, say
        // credential stuffing) adds one per key and time, thousands a minute
        // under attack. Past retention they go; past the cap, the oldest.
        self.firing.retain(|_, a| a.at >= alerts_before);
        if self.firing.len() > s.max_alerts {
            let mut by_age: Vec<(i64, String)> =
                self.firing.iter().map(|(f, a)| (a.at, f.clone())).collect();
            // Down to 90% of the cap, so this runs now and then, not each second.
            let drop = self.firing.len() - s.max_alerts * 9 / 10;
            by_age.select_nth_unstable(drop - 1);
            for (_, f) in &by_age[..drop] {
                self.firing.remove(f);
            }
        }
        self.drop_empty_series();
    }

    fn oldest_raw(&self) -> Option<i64> {
        self.measurements
            .values()
            .flat_map(|m| m.series.iter())
            .flat_map(|s| s.fields.values())
            .filter_map(|c| c.ts.first().copied())
            .min()
    }

    fn roll_up(&mut self, cutoff: i64, res: i64) {
        let mut freed = 0isize;
        for m in self.measurements.values_mut() {
            for series in &mut m.series {
                for c in series.fields.values_mut() {
                    freed += c.roll_up(cutoff, res);
                }
            }
        }
        self.weight = (self.weight as isize - freed).max(0) as usize;
    }

    fn drop_empty_series(&mut self) {
        let mut dropped = 0;
        for m in self.measurements.values_mut() {
            if m.series.iter().all(|s| !s.fields.is_empty()) {
                continue;
            }
            let before = m.series.len();
            m.series.retain(|s| !s.fields.is_empty());
            dropped += before - m.series.len();
            m.index = m
                .series
                .iter()
                .enumerate()
                .map(|(i, s)| (s.tags.clone(), i))
                .collect();
        }
        self.measurements.retain(|_, m| !m.series.is_empty());
        self.series_count -= dropped;
        self.weight = self.weight.saturating_sub(dropped * SERIES_WEIGHT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(m: &str, tags: &[(&str, &str)], ts: i64, v: Value) -> MetricPoint {
        MetricPoint {
            measurement: m.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            fields: vec![("n".into(), v)],
            timestamp: ts,
        }
    }

    fn settings() -> StoreSettings {
        StoreSettings {
            retention: 10_000,
            rollup_resolution: 1_000,
            rollup_retention: 100_000,
            max_series: 2,
            memory_budget: usize::MAX,
            max_alerts: 3,
        }
    }

    /// Past `max_alerts`, the oldest alerts are forgotten, whatever their age.
    #[test]
    fn alerts_are_bounded_by_count() {
        let mut d = Data::new();
        d.put(&point("m", &[("a", "1")], 9_000, Value::Int(1)), 2)
            .unwrap();
        for i in 0..5 {
            d.put_alert(Arc::new(serde_json::json!({
                "fingerprint": format!("f{i}"), "status": "resolved",
                "starts_at": "1970-01-01T00:00:08Z",
            })));
        }
        d.maintain(&settings());
        let kept: Vec<_> = d
            .alerts
            .iter()
            .map(|a| a.record["fingerprint"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kept, ["f2", "f3", "f4"]);
        // Firing ones that never resolve: the newest stay, within the cap.
        for i in 0..5 {
            d.put_alert(Arc::new(serde_json::json!({
                "fingerprint": format!("g{i}"), "status": "firing",
                "starts_at": format!("1970-01-01T00:00:0{}Z", 5 + i % 5),
            })));
        }
        d.maintain(&settings());
        let firing: BTreeSet<_> = d.firing.keys().cloned().collect();
        assert_eq!(firing, BTreeSet::from(["g3".to_string(), "g4".to_string()]));
    }

    #[test]
    fn a_point_written_again_overwrites_and_series_are_bounded() {
        let mut d = Data::new();
        d.put(&point("m", &[("a", "1")], 5, Value::Int(1)), 2)
            .unwrap();
        d.put(&point("m", &[("a", "1")], 5, Value::Int(7)), 2)
            .unwrap();
        d.put(&point("m", &[("a", "1")], 3, Value::Int(2)), 2)
            .unwrap();
        let col = &d.measurements["m"].series[0].fields["n"];
        assert_eq!(col.ts, vec![3, 5]);
        assert_eq!(col.vals, vec![Val::I(2), Val::I(7)]);
        // Tag order and empty tags do not make another series.
        d.put(
            &point("m", &[("b", "2"), ("a", "1"), ("c", "")], 9, Value::Int(1)),
            2,
        )
        .unwrap();
        d.put(&point("m", &[("a", "1"), ("b", "2")], 9, Value::Int(1)), 2)
            .unwrap();
        assert_eq!(d.series_count, 2);
        assert_eq!(
            d.put(&point("other", &[], 9, Value::Int(1)), 2),
            Err(Refused::TooManySeries)
        );
        assert!(!d.measurements.contains_key("other"));
    }

    #[test]
    fn old_raw_points_roll_up_and_rollups_expire() {
        let mut d = Data::new();
        for ts in [100, 200, 1_100, 20_000] {
            d.put(&point("m", &[], ts, Value::Float(ts as f64)), 2)
                .unwrap();
        }
        d.maintain(&settings());
        let col = &d.measurements["m"].series[0].fields["n"];
        // Retention 10 s before the newest (20 000): buckets before 10 000 are rolled.
        assert_eq!(col.ts, vec![20_000]);
        assert_eq!(col.vals, vec![Val::F(20_000.0)]);
        assert_eq!(col.rolled.len(), 2);
        assert_eq!(col.rolled[0].0, 0);
        assert_eq!((col.rolled[0].1.sum, col.rolled[0].1.count), (300.0, 2));
        assert_eq!((col.rolled[0].1.min, col.rolled[0].1.max), (100.0, 200.0));
        assert_eq!(col.rolled[0].1.last, Val::F(200.0));
        d.put(&point("m", &[], 200_000, Value::Float(1.0)), 2)
            .unwrap();
        d.maintain(&settings());
        let col = &d.measurements["m"].series[0].fields["n"];
        assert!(
            col.rolled.iter().all(|(b, _)| *b >= 100_000),
            "{:?}",
            col.rolled
        );
    }
}
