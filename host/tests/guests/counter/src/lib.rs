//! A counting aggregator for the host's tests: `counts,event_type=<t> count=<n>i`
//! per tumbling window (1 minute, or `{"window_ms": N}` in the config), except
//! that an event of type `trap` panics. Its state must survive the panic (the
//! host replays from a snapshot) and restarts (checkpoints).

use nexuspipe_sdk::prelude::*;

pub struct Counter {
    window: Tumbling,
    state: WindowStore<String, i64>,
}

impl Aggregator for Counter {
    type State = WindowStore<String, i64>;

    fn init(config: &str, settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        let mut window_ms = 60_000;
        if !config.trim().is_empty() {
            let v: serde_json::Value = serde_json::from_str(config).map_err(ConfigError::parse)?;
            window_ms = v["window_ms"]
                .as_i64()
                .filter(|w| *w > 0)
                .ok_or_else(|| ConfigError::at("window_ms", "must be a positive integer"))?;
        }
        Ok((
            Counter {
                window: Tumbling::new(window_ms),
                state: WindowStore::new(settings.allowed_lateness),
            },
            Interest::all(),
        ))
    }

    fn process(&mut self, events: Vec<Event>, watermark: i64) -> AggregateOutput {
        let mut late = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if e.event_type == "trap" {
                panic!("counter told to trap by event {}", e.id);
            }
            match self
                .state
                .get_mut(self.window.assign(e.timestamp), &e.event_type)
            {
                Some(n) => *n += 1,
                None => late.push(i as u32),
            }
        }
        let mut points = Vec::new();
        self.state.advance(watermark, |w, t, n| {
            points.push(
                MetricPoint::new("counts", w.start)
                    .tag("event_type", t.clone())
                    .field("count", *n),
            )
        });
        AggregateOutput { points, late }
    }

    fn state(&self) -> &Self::State {
        &self.state
    }

    fn state_mut(&mut self) -> &mut Self::State {
        &mut self.state
    }
}

nexuspipe_sdk::export_aggregator!(Counter);
