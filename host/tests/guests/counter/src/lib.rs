//! A counting aggregator for the host's recovery tests: `count` per event
//! type per 1-minute window, except that an event of type `trap` panics.
//! Its state must survive the panic (the host replays from a snapshot).

use nexuspipe_sdk::prelude::*;

pub struct Counter {
    window: Tumbling,
    state: WindowStore<String, i64>,
}

impl Aggregator for Counter {
    type State = WindowStore<String, i64>;

    fn init(_config: &str, settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        Ok((
            Counter {
                window: Tumbling::new(60_000),
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
