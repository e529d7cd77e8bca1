//! A native test harness: runs plugin logic with plain `cargo test`, the way
//! the host drives it (interest filtering, watermarks, a final flush,
//! snapshot/restore), without building a component.

use crate::{
    Aggregator, Alert, Alerter, Change, Enricher, Event, HostSettings, Interest, MetricPoint,
    plugin::{restore_state, snapshot_state},
};

/// Settings the host passes by default (no allowed lateness).
pub fn default_settings() -> HostSettings {
    HostSettings {
        allowed_lateness: 0,
        downstream_properties: None,
    }
}

/// Drives an [`Enricher`].
pub struct EnricherHarness<P: Enricher> {
    pub plugin: P,
    pub interest: Interest,
}

impl<P: Enricher> EnricherHarness<P> {
    /// Initializes the plugin; panics with the config error (this is a test).
    pub fn new(config: &str) -> Self {
        Self::with_settings(config, &default_settings())
    }

    /// Initializes the plugin with these host settings (e.g. the properties
    /// read downstream).
    pub fn with_settings(config: &str, settings: &HostSettings) -> Self {
        let (plugin, interest) =
            P::init(config, settings).unwrap_or_else(|e| panic!("init failed: {e}"));
        EnricherHarness { plugin, interest }
    }

    /// The plugin's raw changes for a batch.
    pub fn changes(&mut self, events: Vec<Event>) -> Vec<Change> {
        self.plugin.process(events)
    }

    /// The events the next stage sees: wanted events enriched, others untouched.
    pub fn run(&mut self, events: Vec<Event>) -> Vec<Event> {
        let (wanted, skipped): (Vec<Event>, Vec<Event>) = events
            .into_iter()
            .partition(|e| self.interest.wants(&e.event_type));
        let changes = self.plugin.process(wanted.clone());
        let mut out = Change::apply(changes, wanted);
        out.extend(skipped);
        out
    }
}

/// What a stateful plugin's run produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outputs<T> {
    pub items: Vec<T>,
    /// Late events, as the host would write them to the late output.
    pub late: Vec<Event>,
}

/// Drives an [`Aggregator`] or [`Alerter`] as the host does: the watermark is
/// the highest event time seen minus `out_of_orderness`.
pub struct StatefulHarness<P> {
    pub plugin: P,
    pub interest: Interest,
    pub out_of_orderness: i64,
    max_ts: i64,
}

/// Common shape of aggregators and alerters for the harness.
pub trait Stateful: Sized {
    type Item;
    fn init(config: &str, settings: &HostSettings) -> (Self, Interest);
    fn step(&mut self, events: Vec<Event>, watermark: i64) -> (Vec<Self::Item>, Vec<u32>);
    fn snapshot(&self) -> Vec<u8>;
    fn restore(&mut self, bytes: &[u8]) -> Result<crate::Restored, crate::StateError>;
}

impl<P: Aggregator> Stateful for AsAggregator<P> {
    type Item = MetricPoint;
    fn init(config: &str, settings: &HostSettings) -> (Self, Interest) {
        let (p, i) = P::init(config, settings).unwrap_or_else(|e| panic!("init failed: {e}"));
        (AsAggregator(p), i)
    }
    fn step(&mut self, events: Vec<Event>, watermark: i64) -> (Vec<MetricPoint>, Vec<u32>) {
        let out = self.0.process(events, watermark);
        (out.points, out.late)
    }
    fn snapshot(&self) -> Vec<u8> {
        snapshot_state(self.0.state())
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<crate::Restored, crate::StateError> {
        Ok(self.0.restore(restore_state(bytes)?))
    }
}

impl<P: Alerter> Stateful for AsAlerter<P> {
    type Item = Alert;
    fn init(config: &str, settings: &HostSettings) -> (Self, Interest) {
        let (p, i) = P::init(config, settings).unwrap_or_else(|e| panic!("init failed: {e}"));
        (AsAlerter(p), i)
    }
    fn step(&mut self, events: Vec<Event>, watermark: i64) -> (Vec<Alert>, Vec<u32>) {
        let out = self.0.process(events, watermark);
        (out.alerts, out.late)
    }
    fn snapshot(&self) -> Vec<u8> {
        snapshot_state(self.0.state())
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<crate::Restored, crate::StateError> {
        Ok(self.0.restore(restore_state(bytes)?))
    }
}

/// Adapter: an [`Aggregator`] in a [`StatefulHarness`].
pub struct AsAggregator<P>(pub P);
/// Adapter: an [`Alerter`] in a [`StatefulHarness`].
pub struct AsAlerter<P>(pub P);

/// Harness for an aggregator.
pub type AggregatorHarness<P> = StatefulHarness<AsAggregator<P>>;
/// Harness for an alerter.
pub type AlerterHarness<P> = StatefulHarness<AsAlerter<P>>;

impl<S: Stateful> StatefulHarness<S> {
    pub fn new(config: &str) -> Self {
        Self::with_settings(config, default_settings(), 5_000)
    }

    pub fn with_settings(config: &str, settings: HostSettings, out_of_orderness: i64) -> Self {
        let (plugin, interest) = S::init(config, &settings);
        StatefulHarness {
            plugin,
            interest,
            out_of_orderness,
            max_ts: i64::MIN,
        }
    }

    /// The watermark the host would hold after the events seen so far.
    pub fn watermark(&self) -> i64 {
        self.max_ts.saturating_sub(self.out_of_orderness)
    }

    /// Feeds one batch (filtered by interest) and advances the watermark. Like
    /// the host, the batch is cut before each late event (older than the
    /// running watermark), so each event meets the watermark of all before it.
    pub fn push(&mut self, events: Vec<Event>) -> Outputs<S::Item> {
        let mut out = Outputs {
            items: Vec::new(),
            late: Vec::new(),
        };
        let mut passed = self.watermark();
        let mut sub: Vec<Event> = Vec::new();
        for e in events {
            if e.timestamp < self.watermark() && self.watermark() > passed && !sub.is_empty() {
                passed = self.watermark();
                self.step(std::mem::take(&mut sub), &mut out);
            }
            self.max_ts = self.max_ts.max(e.timestamp);
            sub.push(e);
        }
        if !sub.is_empty() {
            self.step(sub, &mut out);
        }
        out
    }

    /// One call: every event moves event time, wanted or not; only wanted
    /// events reach the plugin.
    fn step(&mut self, events: Vec<Event>, out: &mut Outputs<S::Item>) {
        let wanted: Vec<Event> = events
            .into_iter()
            .filter(|e| self.interest.wants(&e.event_type))
            .collect();
        let watermark = self.watermark();
        let (items, late) = self.plugin.step(wanted.clone(), watermark);
        out.items.extend(items);
        out.late.extend(
            late.into_iter()
                .filter_map(|i| wanted.get(i as usize).cloned()),
        );
    }

    /// Advances event time without events (the host's idle advance or a final flush).
    pub fn advance(&mut self, watermark: i64) -> Vec<S::Item> {
        self.plugin.step(Vec::new(), watermark).0
    }

    /// Feeds every event one batch at a time, then flushes: every window and timer fires.
    pub fn run(&mut self, batches: impl IntoIterator<Item = Vec<Event>>) -> Outputs<S::Item> {
        let mut all = Outputs {
            items: Vec::new(),
            late: Vec::new(),
        };
        for batch in batches {
            let out = self.push(batch);
            all.items.extend(out.items);
            all.late.extend(out.late);
        }
        all.items.extend(self.advance(i64::MAX));
        all
    }

    /// Snapshots the state and restores it into a fresh instance with
    /// `config`, as a restart or a version swap does; returns what the
    /// plugin says it kept.
    pub fn restart(&mut self, config: &str) -> crate::Restored {
        let bytes = self.plugin.snapshot();
        let (mut fresh, interest) = S::init(config, &default_settings());
        let report = fresh
            .restore(&bytes)
            .unwrap_or_else(|e| panic!("restore failed: {}", e.message));
        self.plugin = fresh;
        self.interest = interest;
        report
    }
}

/// Reads an event from the HTTP API's canonical JSON (timestamps in epoch ms),
/// for golden files shared with `nexuspipe plugin run`.
pub fn event_from_json(v: &serde_json::Value) -> Event {
    use crate::{Metadata, Property, Value};
    let s = |k: &str| v[k].as_str().map(str::to_string);
    let md = &v["metadata"];
    let m = |k: &str| md[k].as_str().map(str::to_string);
    let properties = v["properties"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, x)| {
                    let value = match x {
                        serde_json::Value::String(s) => Value::Str(s.clone()),
                        serde_json::Value::Bool(b) => Value::Boolean(*b),
                        serde_json::Value::Number(n) => match n.as_i64() {
                            Some(i) => Value::Int(i),
                            None => Value::Float(n.as_f64()?),
                        },
                        serde_json::Value::Null => return None,
                        other => Value::Str(other.to_string()),
                    };
                    Some(Property {
                        key: k.clone(),
                        value,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Event {
        id: s("event_id").unwrap_or_default(),
        event_type: s("event_type").expect("event_type"),
        timestamp: v["timestamp"].as_i64().expect("timestamp in epoch ms"),
        user_id: s("user_id"),
        session_id: s("session_id"),
        properties,
        metadata: Metadata {
            ip_address: m("ip_address"),
            user_agent: m("user_agent"),
            platform: m("platform"),
            url: m("url"),
            referrer: m("referrer"),
        },
    }
}

fn value_json(v: &crate::Value) -> serde_json::Value {
    match v {
        crate::Value::Str(s) => s.clone().into(),
        crate::Value::Float(f) => (*f).into(),
        crate::Value::Int(i) => (*i).into(),
        crate::Value::Boolean(b) => (*b).into(),
    }
}

/// An event as `nexuspipe plugin run` prints it (id omitted when empty).
pub fn event_to_json(e: &Event) -> serde_json::Value {
    let mut o = serde_json::json!({
        "event_id": e.id, "event_type": e.event_type, "timestamp": e.timestamp,
        "properties": e.properties.iter().map(|p| (p.key.clone(), value_json(&p.value))).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(u) = &e.user_id {
        o["user_id"] = u.clone().into();
    }
    if let Some(s) = &e.session_id {
        o["session_id"] = s.clone().into();
    }
    let m = &e.metadata;
    let md: serde_json::Map<String, serde_json::Value> = [
        ("ip_address", &m.ip_address),
        ("user_agent", &m.user_agent),
        ("platform", &m.platform),
        ("url", &m.url),
        ("referrer", &m.referrer),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), v.clone()?.into())))
    .collect();
    o["metadata"] = md.into();
    o
}

/// A point as `nexuspipe plugin run` prints it.
pub fn point_to_json(p: &MetricPoint) -> serde_json::Value {
    serde_json::json!({
        "measurement": p.measurement,
        "tags": p.tags.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
        "fields": p.fields.iter().map(|(k, v)| (k.clone(), value_json(v))).collect::<serde_json::Map<_, _>>(),
        "timestamp": p.timestamp,
    })
}

/// An alert as `nexuspipe plugin run` prints it (times in RFC 3339).
pub fn alert_to_json(a: &Alert) -> serde_json::Value {
    use crate::{AlertStatus, Severity};
    serde_json::json!({
        "rule_id": a.rule_id,
        "key": a.key,
        "status": match a.status { AlertStatus::Firing => "firing", AlertStatus::Resolved => "resolved" },
        "severity": match a.severity {
            Severity::Info => "info", Severity::Warning => "warning",
            Severity::Error => "error", Severity::Critical => "critical",
        },
        "summary": a.summary,
        "labels": a.labels.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
        "starts_at": rfc3339(a.starts_at),
        "ends_at": a.ends_at.map(rfc3339),
        "fingerprint": a.fingerprint,
    })
}

/// Epoch milliseconds as RFC 3339 UTC, fraction only when non-zero (as the host prints).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let frac = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if frac != 0 {
        let f = format!(".{frac:03}");
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Runs a plugin's golden case natively: `<case>.input.ndjson` (and
/// `<case>.config.json`, with `{geo}` replaced by `vars`) from `dir`, and
/// returns the output lines as `nexuspipe plugin run` would print them.
pub fn golden_outputs<F>(
    dir: &std::path::Path,
    case: &str,
    config_vars: &[(&str, &str)],
    run: F,
) -> Vec<serde_json::Value>
where
    F: FnOnce(&str, Vec<Event>) -> Vec<serde_json::Value>,
{
    let input =
        std::fs::read_to_string(dir.join(format!("{case}.input.ndjson"))).expect("input file");
    let events = input
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| event_from_json(&serde_json::from_str(l).expect("input JSON")))
        .collect();
    let mut config =
        std::fs::read_to_string(dir.join(format!("{case}.config.json"))).unwrap_or_default();
    for (k, v) in config_vars {
        config = config.replace(k, v);
    }
    run(&config, events)
}

/// The golden cases in a directory: every `<case>.input.ndjson` with its `<case>.output.ndjson`.
pub fn golden_cases(dir: &std::path::Path) -> Vec<(String, Vec<serde_json::Value>)> {
    let mut cases: Vec<_> = std::fs::read_dir(dir)
        .expect("examples dir")
        .filter_map(|f| {
            let name = f.ok()?.file_name().into_string().ok()?;
            let case = name.strip_suffix(".input.ndjson")?.to_string();
            let out = std::fs::read_to_string(dir.join(format!("{case}.output.ndjson"))).ok()?;
            let expected = out
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).expect("output JSON"))
                .collect();
            Some((case, expected))
        })
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!cases.is_empty(), "no golden cases in {}", dir.display());
    cases
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_matches_the_host() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::rfc3339(1_767_225_600_011),
            "2026-01-01T00:00:00.011Z"
        );
        assert_eq!(super::rfc3339(1_500), "1970-01-01T00:00:01.5Z");
        assert_eq!(super::rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }
}
