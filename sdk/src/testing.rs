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
        let (plugin, interest) =
            P::init(config, &default_settings()).unwrap_or_else(|e| panic!("init failed: {e}"));
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
    fn restore(&mut self, bytes: &[u8]) -> Result<(), crate::StateError>;
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
    fn restore(&mut self, bytes: &[u8]) -> Result<(), crate::StateError> {
        restore_state(self.0.state_mut(), bytes)
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
    fn restore(&mut self, bytes: &[u8]) -> Result<(), crate::StateError> {
        restore_state(self.0.state_mut(), bytes)
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

    /// Feeds one batch (filtered by interest) and advances the watermark.
    pub fn push(&mut self, events: Vec<Event>) -> Outputs<S::Item> {
        let wanted: Vec<Event> = events
            .into_iter()
            .filter(|e| self.interest.wants(&e.event_type))
            .collect();
        if let Some(max) = wanted.iter().map(|e| e.timestamp).max() {
            self.max_ts = self.max_ts.max(max);
        }
        let watermark = self.watermark();
        let (items, late) = self.plugin.step(wanted.clone(), watermark);
        Outputs {
            items,
            late: late
                .into_iter()
                .filter_map(|i| wanted.get(i as usize).cloned())
                .collect(),
        }
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

    /// Snapshots the state and restores it into a fresh instance, as a restart
    /// or a version swap does.
    pub fn restart(&mut self, config: &str) {
        let bytes = self.plugin.snapshot();
        let (mut fresh, interest) = S::init(config, &default_settings());
        fresh
            .restore(&bytes)
            .unwrap_or_else(|e| panic!("restore failed: {}", e.message));
        self.plugin = fresh;
        self.interest = interest;
    }
}
