//! Windowed metrics: filter, assign windows, group, aggregate, emit on the watermark.

use crate::config::{AggFn, Metric, WindowSpec};
use crate::hll::Distinct;
use nexuspipe_sdk::filter::field_value;
use nexuspipe_sdk::prelude::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// The values of one window and group.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Acc {
    count: i64,
    /// One per configured aggregate, in order.
    aggs: Vec<AggState>,
    /// For top-N metrics: value -> count (ranked when emitted).
    #[serde(default, skip_serializing_if = "FxHashMap::is_empty")]
    top: FxHashMap<String, i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum AggState {
    Count,
    Sum { sum: f64, n: u64 },
    Min(Option<f64>),
    Max(Option<f64>),
    Unique(Distinct),
}

/// What a metric reads of an event: its aggregates' fields and the top-N
/// field. An event itself, or what was taken of it while it waits for the
/// watermark (metrics with early results).
trait Source {
    /// The value of aggregate `i`'s field as a number.
    fn num(&self, m: &Metric, i: usize) -> Option<f64>;
    /// The value of aggregate `i`'s field as text (for `unique`).
    fn text(&self, m: &Metric, i: usize) -> Option<std::borrow::Cow<'_, str>>;
    /// The top-N field's value.
    fn top(&self, m: &Metric) -> Option<std::borrow::Cow<'_, str>>;
}

impl Source for Event {
    fn num(&self, m: &Metric, i: usize) -> Option<f64> {
        let field = m.aggregates[i].field.as_ref()?;
        field_value(self, field).and_then(|v| v.as_f64())
    }
    fn text(&self, m: &Metric, i: usize) -> Option<std::borrow::Cow<'_, str>> {
        self.field(m.aggregates[i].field.as_ref()?)
    }
    fn top(&self, m: &Metric) -> Option<std::borrow::Cow<'_, str>> {
        self.field(&m.top.as_ref()?.field)
    }
}

/// What a metric with early results keeps of an event until the watermark
/// passes it: its group and the values its aggregates read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Taken {
    group: Vec<String>,
    /// Per aggregate: the field as text (unique) or number (the others).
    values: Vec<Option<Taken1>>,
    top: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Taken1 {
    Num(f64),
    Text(String),
}

impl Taken {
    fn of(m: &Metric, e: &Event, group: Vec<String>) -> Taken {
        Taken {
            group,
            values: (0..m.aggregates.len())
                .map(|i| match m.aggregates[i].func {
                    AggFn::Count => None,
                    AggFn::Unique => e.text(m, i).map(|t| Taken1::Text(t.into_owned())),
                    _ => e.num(m, i).map(Taken1::Num),
                })
                .collect(),
            top: e.top(m).map(|t| t.into_owned()),
        }
    }
}

impl Source for Taken {
    fn num(&self, _: &Metric, i: usize) -> Option<f64> {
        match self.values.get(i)? {
            Some(Taken1::Num(x)) => Some(*x),
            _ => None,
        }
    }
    fn text(&self, _: &Metric, i: usize) -> Option<std::borrow::Cow<'_, str>> {
        match self.values.get(i)? {
            Some(Taken1::Text(t)) => Some(t.as_str().into()),
            _ => None,
        }
    }
    fn top(&self, _: &Metric) -> Option<std::borrow::Cow<'_, str>> {
        self.top.as_deref().map(Into::into)
    }
}

impl Acc {
    fn add(&mut self, m: &Metric, e: &impl Source) {
        self.count += 1;
        if self.aggs.is_empty() {
            self.aggs = m
                .aggregates
                .iter()
                .map(|a| match a.func {
                    AggFn::Count => AggState::Count,
                    AggFn::Sum | AggFn::Avg => AggState::Sum { sum: 0.0, n: 0 },
                    AggFn::Min => AggState::Min(None),
                    AggFn::Max => AggState::Max(None),
                    AggFn::Unique => AggState::Unique(Distinct::default()),
                })
                .collect();
        }
        for (i, st) in self.aggs.iter_mut().enumerate() {
            match st {
                AggState::Count => {}
                AggState::Unique(d) => {
                    if let Some(v) = e.text(m, i) {
                        d.insert(&v);
                    }
                }
                _ => {
                    let Some(x) = e.num(m, i) else {
                        continue;
                    };
                    match st {
                        AggState::Sum { sum, n } => {
                            *sum += x;
                            *n += 1;
                        }
                        AggState::Min(v) => *v = Some(v.map_or(x, |m| m.min(x))),
                        AggState::Max(v) => *v = Some(v.map_or(x, |m| m.max(x))),
                        _ => {}
                    }
                }
            }
        }
        if let Some(v) = e.top(m) {
            // A lookup first: the key is allocated only for a value new to the window.
            match self.top.get_mut(v.as_ref()) {
                Some(n) => *n += 1,
                None => {
                    self.top.insert(v.into_owned(), 1);
                }
            }
        }
    }

    /// Combines two accumulators of one metric (merging session windows).
    fn merge(&mut self, other: Acc) {
        self.count += other.count;
        if self.aggs.is_empty() {
            self.aggs = other.aggs;
        } else {
            for (a, b) in self.aggs.iter_mut().zip(other.aggs) {
                match (a, b) {
                    (AggState::Sum { sum, n }, AggState::Sum { sum: s2, n: n2 }) => {
                        *sum += s2;
                        *n += n2;
                    }
                    (AggState::Min(x), AggState::Min(y)) => *x = min_opt(*x, y, f64::min),
                    (AggState::Max(x), AggState::Max(y)) => *x = min_opt(*x, y, f64::max),
                    (AggState::Unique(x), AggState::Unique(y)) => x.merge(&y),
                    _ => {}
                }
            }
        }
        for (k, v) in other.top {
            *self.top.entry(k).or_default() += v;
        }
    }
}

fn min_opt(a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(f(x, y)),
        (x, y) => x.or(y),
    }
}

/// State of one metric.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricState {
    store: WindowStore<Vec<String>, Acc>,
    /// Session windows per group (session metrics only).
    #[serde(default)]
    sessions: Vec<(Vec<String>, SessionWindows)>,
    /// The group of the event being added, reused from event to event so that
    /// looking up an existing group allocates nothing.
    #[serde(skip)]
    scratch: Vec<String>,
    /// Early results only: what was taken of events the watermark has not
    /// passed yet, applied in event-time order as it does.
    #[serde(default, skip_serializing_if = "EventTimeBuffer::is_empty")]
    pending: EventTimeBuffer<Taken>,
}

impl MetricState {
    pub fn new(lateness: i64) -> Self {
        MetricState {
            store: WindowStore::new(lateness),
            sessions: Vec::new(),
            scratch: Vec::new(),
            pending: EventTimeBuffer::default(),
        }
    }
}

/// The URL part after `#` in a group source (`metadata.url#path`).
fn url_part<'a>(url: &'a str, part: &str) -> &'a str {
    let (scheme_rest, has_scheme) = match url.split_once("://") {
        Some((_, r)) => (r, true),
        None => (url, false),
    };
    let (host, path) = if has_scheme {
        match scheme_rest.find('/') {
            Some(i) => (&scheme_rest[..i], &scheme_rest[i..]),
            None => (scheme_rest, "/"),
        }
    } else {
        ("", scheme_rest)
    };
    match part {
        "host" => host
            .split(['@'])
            .next_back()
            .unwrap_or(host)
            .split(':')
            .next()
            .unwrap_or(""),
        _ => {
            let end = path.find(['?', '#']).unwrap_or(path.len());
            match &path[..end] {
                "" => "/",
                p => p,
            }
        }
    }
}

/// Writes the event's group into `group`, reusing its strings.
fn group_into(m: &Metric, e: &Event, group: &mut Vec<String>) {
    group.resize_with(m.group_by.len(), String::new);
    for (g, slot) in m.group_by.iter().zip(group.iter_mut()) {
        slot.clear();
        for src in &g.from {
            let value = match src.split_once('#') {
                Some((field, part)) => e.field(field).map(|v| slot.push_str(url_part(&v, part))),
                None => e.field(src).map(|v| slot.push_str(&v)),
            };
            if value.is_some() {
                break;
            }
        }
    }
}

/// Adds an event to a metric; false if every window it belongs to has expired (late).
pub fn add(m: &Metric, st: &mut MetricState, e: &Event) -> bool {
    let mut group = std::mem::take(&mut st.scratch);
    group_into(m, e, &mut group);
    // Early results are cut at instants of event time: an event waits until
    // the watermark passes it, so what each early result holds does not
    // depend on how events were batched.
    if m.early.is_some() && e.timestamp >= st.store.watermark() {
        let taken = Taken::of(m, e, group.clone());
        st.pending.push(e.timestamp, taken);
        st.scratch = group;
        return true;
    }
    let taken = add_to(m, st, e, &group);
    st.scratch = group;
    taken
}

// A `&Vec`: the window store's keys are `Vec<String>`.
#[allow(clippy::ptr_arg)]
fn add_to(m: &Metric, st: &mut MetricState, e: &Event, group: &Vec<String>) -> bool {
    add_at(m, st, e.timestamp, e, group)
}

/// Adds what `e` holds at event time `ts`; false if every window it belongs to has expired.
#[allow(clippy::ptr_arg)]
fn add_at(m: &Metric, st: &mut MetricState, ts: i64, e: &impl Source, group: &Vec<String>) -> bool {
    match m.window {
        WindowSpec::Tumbling { size, offset } => {
            let w = Tumbling { size, offset }.assign(ts);
            match st.store.get_mut(w, group) {
                Some(acc) => {
                    acc.add(m, e);
                    true
                }
                None => false,
            }
        }
        WindowSpec::Sliding {
            size,
            slide,
            offset,
        } => {
            let mut any = false;
            for w in (Sliding {
                size,
                slide,
                offset,
            })
            .assign(ts)
            {
                if let Some(acc) = st.store.get_mut(w, group) {
                    acc.add(m, e);
                    any = true;
                }
            }
            any
        }
        WindowSpec::Session { gap } => {
            let w = Window {
                start: ts,
                end: ts + gap,
            };
            if st.store.is_expired(&w) {
                return false;
            }
            let pos = match st.sessions.iter().position(|(g, _)| g == group) {
                Some(p) => p,
                None => {
                    st.sessions.push((group.clone(), SessionWindows::default()));
                    st.sessions.len() - 1
                }
            };
            let update = st.sessions[pos].1.add(ts, gap);
            let mut merged = Acc::default();
            for old in &update.merged {
                if let Some(acc) = st.store.remove(old, group) {
                    merged.merge(acc);
                }
            }
            let acc = st
                .store
                .get_mut(update.window, group)
                .expect("a fresh session is not expired");
            acc.merge(merged);
            acc.add(m, e);
            true
        }
    }
}

/// Emits every window the watermark closed.
pub fn advance(m: &Metric, st: &mut MetricState, watermark: i64, points: &mut Vec<MetricPoint>) {
    if let Some(every) = m.early {
        // Apply what the watermark passed, oldest first, stopping at each
        // multiple of `every` it passed to emit the windows still open there.
        let next = |t: i64| (t.div_euclid(every) + 1).saturating_mul(every);
        let prev = st.store.watermark();
        let mut boundary = match (prev, st.pending.first_time()) {
            (i64::MIN, Some(t)) => next(t),
            (i64::MIN, None) => i64::MAX,
            (p, _) => next(p),
        };
        while boundary <= watermark {
            for (ts, taken) in st.pending.release(boundary - 1) {
                let group = taken.group.clone();
                add_at(m, st, ts, &taken, &group);
            }
            st.store
                .emit_open(boundary, |w, group, acc| emit(m, w, group, acc, points));
            // Nothing is left to emit until the next waiting event is applied.
            boundary = match st.pending.first_time() {
                Some(t) if t <= watermark => next(t).max(boundary.saturating_add(every)),
                _ => break,
            };
        }
        for (ts, taken) in st.pending.release(watermark) {
            let group = taken.group.clone();
            add_at(m, st, ts, &taken, &group);
        }
    }
    st.store
        .advance(watermark, |w, group, acc| emit(m, w, group, acc, points));
    if matches!(m.window, WindowSpec::Session { .. }) {
        for (_, s) in st.sessions.iter_mut() {
            s.close(watermark);
        }
        st.sessions.retain(|(_, s)| !s.is_empty());
    }
}

fn emit(m: &Metric, w: Window, group: &[String], acc: &Acc, points: &mut Vec<MetricPoint>) {
    let base = || {
        let mut p = MetricPoint::new(m.measurement.clone(), w.start);
        for (g, v) in m.group_by.iter().zip(group) {
            p = p.tag(g.tag.clone(), v.clone());
        }
        p
    };
    if let Some(t) = &m.top {
        let mut ranked: Vec<(&String, &i64)> = acc.top.iter().collect();
        // Most frequent first; ties broken by value, so output is deterministic.
        ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        for (rank, (value, count)) in ranked.into_iter().take(t.n).enumerate() {
            points.push(
                base()
                    .tag("rank", (rank + 1).to_string())
                    .field(t.name.clone(), value.as_str())
                    .field(t.count_as.clone(), *count),
            );
        }
        return;
    }
    let mut p = base();
    for (a, st) in m.aggregates.iter().zip(&acc.aggs) {
        let name = a.name.clone();
        p = match (a.func, st) {
            (AggFn::Count, _) => p.field(name, acc.count),
            (AggFn::Sum, AggState::Sum { sum, .. }) => p.field(name, *sum),
            (AggFn::Avg, AggState::Sum { sum, n }) if *n > 0 => p.field(name, sum / *n as f64),
            (AggFn::Min, AggState::Min(Some(v))) | (AggFn::Max, AggState::Max(Some(v))) => {
                p.field(name, *v)
            }
            (AggFn::Unique, AggState::Unique(d)) => p.field(name, d.count() as i64),
            _ => p,
        };
    }
    if !p.fields.is_empty() {
        points.push(p);
    }
}

#[cfg(test)]
mod tests {
    use super::url_part;

    #[test]
    fn url_parts() {
        assert_eq!(
            url_part("https://shop.example:8080/a/b?x=1", "path"),
            "/a/b"
        );
        assert_eq!(
            url_part("https://shop.example:8080/a/b?x=1", "host"),
            "shop.example"
        );
        assert_eq!(url_part("/products/1?utm=x", "path"), "/products/1");
        assert_eq!(url_part("https://h", "path"), "/");
    }
}
