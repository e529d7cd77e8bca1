//! funnel: windowed analytics.
//!
//! Placeholder logic until the full plugin lands: `events,event_type=<t> count=<n>i`
//! per 1-minute tumbling window.

use nexuspipe_sdk::prelude::*;

pub struct Funnel {
    window: Tumbling,
    state: WindowStore<String, i64>,
}

impl Aggregator for Funnel {
    type State = WindowStore<String, i64>;

    fn init(_config: &str, settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        let funnel = Funnel {
            window: Tumbling::new(60_000),
            state: WindowStore::new(settings.allowed_lateness),
        };
        Ok((
            funnel,
            Interest::all().with_properties(Vec::<String>::new()),
        ))
    }

    fn process(&mut self, events: Vec<Event>, watermark: i64) -> AggregateOutput {
        let mut late = Vec::new();
        for (i, e) in events.iter().enumerate() {
            match self
                .state
                .get_mut(self.window.assign(e.timestamp), &e.event_type)
            {
                Some(count) => *count += 1,
                None => late.push(i as u32),
            }
        }
        let mut points = Vec::new();
        self.state.advance(watermark, |w, event_type, count| {
            points.push(
                MetricPoint::new("events", w.start)
                    .tag("event_type", event_type.clone())
                    .field("count", *count),
            );
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

nexuspipe_sdk::export_aggregator!(Funnel);

#[cfg(test)]
mod tests {
    use super::*;
    use nexuspipe_sdk::testing::AggregatorHarness;

    #[test]
    fn counts_per_type_and_minute() {
        let mut h = AggregatorHarness::<Funnel>::new("");
        let out = h.run([vec![
            Event::new("click", 0),
            Event::new("click", 59_999),
            Event::new("click", 60_000),
        ]]);
        let counts: Vec<(i64, Option<i64>)> = out
            .items
            .iter()
            .map(|p| (p.timestamp, p.fields[0].1.as_i64()))
            .collect();
        assert_eq!(counts, vec![(0, Some(2)), (60_000, Some(1))]);
    }
}
