//! A hostile aggregator for the host's output-limit tests. Event types are
//! commands: `points-flood` returns 200 000 points (more than `max_points`),
//! `long-measurement` a point whose measurement is 1000 bytes (more than
//! `max_key_bytes`); any other event gives one `ok count=1i` point.

use nexuspipe_sdk::prelude::*;

pub struct Flood {
    state: (),
}

impl Aggregator for Flood {
    type State = ();

    fn init(_config: &str, _settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        Ok((Flood { state: () }, Interest::all()))
    }

    fn process(&mut self, events: Vec<Event>, _watermark: i64) -> AggregateOutput {
        let mut points = Vec::new();
        for e in &events {
            match e.event_type.as_str() {
                "points-flood" => points
                    .extend((0..200_000).map(|i| MetricPoint::new("flood", i).field("n", 1i64))),
                "long-measurement" => {
                    points.push(MetricPoint::new("m".repeat(1000), e.timestamp).field("n", 1i64))
                }
                _ => points.push(MetricPoint::new("ok", e.timestamp).field("count", 1i64)),
            }
        }
        AggregateOutput {
            points,
            late: Vec::new(),
        }
    }

    fn state(&self) -> &() {
        &self.state
    }

    fn state_mut(&mut self) -> &mut () {
        &mut self.state
    }
}

nexuspipe_sdk::export_aggregator!(Flood);
