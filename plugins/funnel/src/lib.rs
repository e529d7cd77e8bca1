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

/// Per metric and per funnel state, in config order, each part tied to its
/// metric's or funnel's identity (see `Config::identities`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    metrics: Parts<MetricState>,
    funnels: Parts<FunnelState>,
}

impl Aggregator for Funnel {
    type State = State;

    fn init(config: &str, settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        let config = Config::parse(config)?;
        let interest = config.interest();
        let lateness = settings.allowed_lateness;
        let state = State {
            metrics: Parts::new(config.identities.metrics.clone(), |_| {
                MetricState::new(lateness)
            }),
            funnels: Parts::new(config.identities.funnels.clone(), |_| {
                FunnelState::default()
            }),
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

    /// Keeps the metrics and funnels whose name and definition are
    /// unchanged; a changed one starts empty, a removed one is dropped.
    fn restore(&mut self, saved: State) -> Restored {
        let mut report = self.state.metrics.adopt(saved.metrics);
        report.merge(self.state.funnels.adopt(saved.funnels));
        for (what, parts) in [
            ("kept", &report.kept),
            ("reset", &report.reset),
            ("dropped", &report.dropped),
        ] {
            if !parts.is_empty() {
                log(
                    Level::Info,
                    &format!("state {what}"),
                    &[("parts", &parts.join(","))],
                );
            }
        }
        report
    }
}

nexuspipe_sdk::export_aggregator!(Funnel);
