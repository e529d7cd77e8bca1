//! funnel: configurable windowed metrics and conversion funnels (see README.md).

mod config;
mod funnels;
pub mod hll;
mod metrics;

pub use config::{Config, DEFAULT_CONFIG};
use funnels::FunnelState;
use metrics::MetricState;
use nexuspipe_sdk::prelude::*;
use serde::{Deserialize, Serialize};

pub struct Funnel {
    config: Config,
    lateness: i64,
    state: State,
}

/// Per metric and per funnel state, in config order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    metrics: Vec<MetricState>,
    funnels: Vec<FunnelState>,
}

impl Aggregator for Funnel {
    type State = State;

    fn init(config: &str, settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        let config = Config::parse(config)?;
        let interest = config.interest();
        let lateness = settings.allowed_lateness;
        let state = State {
            metrics: config
                .metrics
                .iter()
                .map(|_| MetricState::new(lateness))
                .collect(),
            funnels: config
                .funnels
                .iter()
                .map(|_| FunnelState::default())
                .collect(),
        };
        Ok((
            Funnel {
                config,
                lateness,
                state,
            },
            interest,
        ))
    }

    fn process(&mut self, events: Vec<Event>, watermark: i64) -> AggregateOutput {
        let mut points = Vec::new();
        // An event is late only if no metric or funnel could take it.
        let mut taken = vec![false; events.len()];
        let mut wanted = vec![false; events.len()];
        for (m, st) in self
            .config
            .metrics
            .iter()
            .zip(self.state.metrics.iter_mut())
        {
            for (i, e) in events.iter().enumerate() {
                if m.filter.matches(e) {
                    wanted[i] = true;
                    taken[i] |= metrics::add(m, st, e);
                }
            }
        }
        let mut funnel_late = Vec::new();
        for (f, st) in self
            .config
            .funnels
            .iter()
            .zip(self.state.funnels.iter_mut())
        {
            st.add(f, &events, self.lateness, &mut funnel_late);
        }
        for (m, st) in self
            .config
            .metrics
            .iter()
            .zip(self.state.metrics.iter_mut())
        {
            metrics::advance(m, st, watermark, &mut points);
        }
        for (f, st) in self
            .config
            .funnels
            .iter()
            .zip(self.state.funnels.iter_mut())
        {
            st.advance(f, watermark, self.lateness, &mut points);
        }
        let mut late: Vec<u32> = (0..events.len())
            .filter(|&i| wanted[i] && !taken[i])
            .map(|i| i as u32)
            .collect();
        for i in funnel_late {
            if !late.contains(&i) && !taken[i as usize] {
                late.push(i);
            }
        }
        late.sort_unstable();
        AggregateOutput { points, late }
    }

    fn state(&self) -> &State {
        &self.state
    }

    fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

nexuspipe_sdk::export_aggregator!(Funnel);
