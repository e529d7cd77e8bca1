//! scroll-depth in Rust with the SDK: the same logic and config as
//! `examples/plugins/js-scroll-depth`, to compare languages.

use nexuspipe_sdk::filter::json_config;
use nexuspipe_sdk::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "defaults::window_ms")]
    window_ms: i64,
    #[serde(default = "defaults::event_type")]
    event_type: String,
    #[serde(default = "defaults::depth_property")]
    depth_property: String,
    #[serde(default = "defaults::page_property")]
    page_property: String,
    #[serde(default = "defaults::measurement")]
    measurement: String,
}

mod defaults {
    pub fn window_ms() -> i64 {
        60_000
    }
    pub fn event_type() -> String {
        "scroll".into()
    }
    pub fn depth_property() -> String {
        "depth".into()
    }
    pub fn page_property() -> String {
        "path".into()
    }
    pub fn measurement() -> String {
        "scroll_depth".into()
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Acc {
    sum: f64,
    max: f64,
    count: i64,
}

pub struct ScrollDepth {
    config: Config,
    window: Tumbling,
    state: WindowStore<String, Acc>,
}

/// The page: a string property, else the path of `metadata.url`, query and fragment cut off.
fn page_of(config: &Config, e: &Event) -> Option<String> {
    let page = match e.get_str(&config.page_property) {
        Some(p) => p.to_string(),
        None => {
            let url = e.metadata.url.as_deref()?;
            match url.split_once("://") {
                Some((scheme, rest))
                    if !scheme.is_empty()
                        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                        && scheme
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c)) =>
                {
                    let path = rest.find(['/', '?', '#']).map_or("", |i| &rest[i..]);
                    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
                    if path.is_empty() { "/" } else { path }.to_string()
                }
                _ => url.to_string(),
            }
        }
    };
    let page = &page[..page.find(['?', '#']).unwrap_or(page.len())];
    (!page.is_empty()).then(|| page.to_string())
}

fn depth_of(config: &Config, e: &Event) -> Option<f64> {
    match e.get(&config.depth_property)? {
        Value::Float(f) if f.is_finite() => Some(*f),
        Value::Int(i) => Some(*i as f64),
        _ => None,
    }
}

impl Aggregator for ScrollDepth {
    type State = WindowStore<String, Acc>;

    fn init(config: &str, settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        let config: Config = json_config(config, "{}")?;
        if config.window_ms <= 0 {
            return Err(ConfigError::at(
                "window_ms",
                "expected a positive integer (milliseconds)",
            ));
        }
        let interest = Interest::event_types([config.event_type.clone()])
            .with_properties([config.depth_property.clone(), config.page_property.clone()])
            .with_metadata(MetadataFields::URL)
            // No id, user or session: each string sent is an allocation here.
            .with_only_fields(EventFields::empty());
        Ok((
            ScrollDepth {
                window: Tumbling::new(config.window_ms),
                config,
                state: WindowStore::new(settings.allowed_lateness),
            },
            interest,
        ))
    }

    fn process(&mut self, events: Vec<Event>, watermark: i64) -> AggregateOutput {
        let mut late = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let (Some(depth), Some(page)) = (depth_of(&self.config, e), page_of(&self.config, e))
            else {
                continue;
            };
            match self.state.get_mut(self.window.assign(e.timestamp), &page) {
                Some(acc) => {
                    acc.max = if acc.count == 0 {
                        depth
                    } else {
                        acc.max.max(depth)
                    };
                    acc.sum += depth;
                    acc.count += 1;
                }
                None => late.push(i as u32),
            }
        }
        let mut points = Vec::new();
        let measurement = &self.config.measurement;
        self.state.advance(watermark, |w, page, acc| {
            points.push(
                MetricPoint::new(measurement.clone(), w.start)
                    .tag("page", page.clone())
                    .field("avg", acc.sum / acc.count as f64)
                    .field("max", acc.max)
                    .field("count", acc.count),
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

nexuspipe_sdk::export_aggregator!(ScrollDepth);
