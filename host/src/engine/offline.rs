//! Runs one plugin over a list of events without a server: the plugin author's
//! inner loop (`nexuspipe plugin run`) and the benchmarks. Event time follows
//! the input, and a final flush fires every window and timer.

use crate::dataflow::Watermark;
use crate::dataflow::watermark::batches;
use crate::runtime::{Alert, Event, MetricPoint, Plugin, PluginOutput};

/// Everything one offline run produced.
#[derive(Debug, Default)]
pub struct OfflineRun {
    /// For enrichers: the events as the next stage would see them.
    pub events: Vec<Event>,
    pub points: Vec<MetricPoint>,
    pub alerts: Vec<Alert>,
    pub output: PluginOutput,
}

/// Feeds `events` to `plugin` in batches of `batch_size`, the watermark
/// trailing the highest event time by `out_of_orderness`, then flushes.
pub fn run(
    plugin: &mut Plugin,
    events: Vec<Event>,
    batch_size: usize,
    out_of_orderness: i64,
) -> OfflineRun {
    let mut wm = Watermark::new(out_of_orderness);
    let mut run = OfflineRun::default();
    let n = events.len();
    for (mut batch, watermark) in batches(events, n, batch_size, &mut wm) {
        plugin.process(&mut batch, watermark, &mut run.output);
        run.events.extend(batch);
    }
    let mut empty = Vec::new();
    plugin.process(&mut empty, wm.advance_to(i64::MAX), &mut run.output);
    run.points = std::mem::take(&mut run.output.points);
    run.alerts = std::mem::take(&mut run.output.alerts);
    run
}
