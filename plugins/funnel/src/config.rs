//! funnel's configuration (JSON). See README.md; `DEFAULT_CONFIG` is what runs
//! when the plugin is given no config.

use nexuspipe_sdk::filter::{Filter, InterestBuilder, duration_ms, json_config_source};
use nexuspipe_sdk::{ConfigError, Interest};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub metrics: Vec<Metric>,
    #[serde(default)]
    pub funnels: Vec<Funnel>,
    /// Each metric's and funnel's identity, `(name, definition)` in config
    /// order: its state is taken over by a new config only where both match.
    #[serde(skip)]
    pub identities: Identities,
}

#[derive(Debug, Clone, Default)]
pub struct Identities {
    pub metrics: Vec<(String, String)>,
    pub funnels: Vec<(String, String)>,
}

/// A windowed metric: one point per window and group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    pub measurement: String,
    #[serde(default)]
    pub filter: Filter,
    pub window: WindowSpec,
    /// Tag name -> source(s); the first source present wins.
    #[serde(default)]
    pub group_by: Vec<GroupBy>,
    /// Aggregates, each one field of the point.
    #[serde(default)]
    pub aggregates: Vec<Aggregate>,
    /// Instead of aggregates: the N most frequent values of a field.
    #[serde(default)]
    pub top: Option<Top>,
    /// Early results: an open window is also emitted each time event time
    /// passes a multiple of this (with the events before that instant), and
    /// again when it closes; the sink keeps the last. E.g. today's distinct
    /// users through the day.
    #[serde(default, deserialize_with = "opt_duration_ms")]
    pub early: Option<i64>,
}

fn opt_duration_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    duration_ms(d).map(Some)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupBy {
    pub tag: String,
    /// Field paths; `<path>#path` or `<path>#host` takes that part of a URL.
    #[serde(deserialize_with = "nexuspipe_sdk::filter::one_or_many")]
    pub from: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowSpec {
    Tumbling {
        #[serde(deserialize_with = "duration_ms")]
        size: i64,
        #[serde(default, deserialize_with = "duration_ms")]
        offset: i64,
    },
    Sliding {
        #[serde(deserialize_with = "duration_ms")]
        size: i64,
        #[serde(deserialize_with = "duration_ms")]
        slide: i64,
        #[serde(default, deserialize_with = "duration_ms")]
        offset: i64,
    },
    /// Per group: a session closes after `gap` without events.
    Session {
        #[serde(deserialize_with = "duration_ms")]
        gap: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggFn {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    /// Distinct values of `field` (exact up to 10 000, then HyperLogLog).
    Unique,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    #[serde(rename = "fn")]
    pub func: AggFn,
    /// The numeric field (or, for `unique`, the field whose values are counted).
    #[serde(default)]
    pub field: Option<String>,
    /// The point's field name.
    #[serde(rename = "as")]
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Top {
    /// Field whose values are ranked.
    pub field: String,
    #[serde(default = "ten")]
    pub n: usize,
    /// Point field holding the value, and the one holding its count.
    #[serde(rename = "as")]
    pub name: String,
    pub count_as: String,
}

fn ten() -> usize {
    10
}

/// A conversion funnel: ordered steps per user within a conversion window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Funnel {
    pub name: String,
    pub steps: Vec<Step>,
    /// Time from the first step to the last allowed step.
    #[serde(deserialize_with = "duration_ms")]
    pub within: i64,
    /// Results are reported per tumbling window of the first step's time.
    #[serde(deserialize_with = "duration_ms")]
    pub window: i64,
    /// Who a user is.
    #[serde(default = "user_id")]
    pub user: String,
}

fn user_id() -> String {
    "user_id".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    pub filter: Filter,
}

pub const DEFAULT_CONFIG: &str = r#"{
  "metrics": [
    {"measurement": "events", "window": {"type": "tumbling", "size": "1m"},
     "group_by": [{"tag": "event_type", "from": "event_type"},
                  {"tag": "site_id", "from": "properties.site_id"}],
     "aggregates": [{"fn": "count", "as": "count"}]},
    {"measurement": "page_views", "filter": {"event_type": "page_view"},
     "window": {"type": "tumbling", "size": "1m"},
     "group_by": [{"tag": "path", "from": ["properties.path", "metadata.url#path"]},
                  {"tag": "site_id", "from": "properties.site_id"}],
     "aggregates": [{"fn": "count", "as": "count"}]},
    {"measurement": "unique_users", "filter": {"where": [{"field": "user_id", "op": "exists"}]},
     "window": {"type": "tumbling", "size": "1m"},
     "group_by": [{"tag": "site_id", "from": "properties.site_id"}],
     "aggregates": [{"fn": "unique", "field": "user_id", "as": "users"}]},
    {"measurement": "daily_users", "filter": {"where": [{"field": "user_id", "op": "exists"}]},
     "window": {"type": "tumbling", "size": "1d"}, "early": "1m",
     "group_by": [{"tag": "site_id", "from": "properties.site_id"}],
     "aggregates": [{"fn": "unique", "field": "user_id", "as": "users"}]},
    {"measurement": "revenue", "filter": {"event_type": ["purchase", "purchase_completed"]},
     "window": {"type": "tumbling", "size": "1m"},
     "group_by": [{"tag": "currency", "from": "properties.currency"}],
     "aggregates": [{"fn": "count", "as": "orders"}, {"fn": "sum", "field": "amount", "as": "total"},
                    {"fn": "avg", "field": "amount", "as": "avg"}]},
    {"measurement": "top_products", "filter": {"event_type": "product_view"},
     "window": {"type": "sliding", "size": "5m", "slide": "1m"},
     "top": {"field": "properties.product_id", "n": 10, "as": "product_id", "count_as": "views"}}
  ],
  "funnels": [
    {"name": "checkout", "within": "1h", "window": "1h",
     "steps": [{"name": "page_view", "filter": {"event_type": "page_view"}},
               {"name": "add_to_cart", "filter": {"event_type": "add_to_cart"}},
               {"name": "purchase", "filter": {"event_type": "purchase"}}]}
  ]
}"#;

/// Fields that identify people or requests: unbounded, never tags.
const UNBOUNDED: [&str; 8] = [
    "user_id",
    "session_id",
    "event_id",
    "id",
    "metadata.ip_address",
    "metadata.url",
    "metadata.referrer",
    "metadata.user_agent",
];

impl Config {
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let (mut c, source): (Config, serde_json::Value) =
            json_config_source(text, DEFAULT_CONFIG)?;
        // A metric is named by its measurement (`#2`... when two share one),
        // a funnel by its name; the definition is the entry as written.
        let mut seen = std::collections::HashMap::<String, usize>::new();
        let mut name = |base: String| {
            let n = seen.entry(base.clone()).or_default();
            *n += 1;
            if *n == 1 { base } else { format!("{base}#{n}") }
        };
        c.identities.metrics = c
            .metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                (
                    name(format!("metric:{}", m.measurement)),
                    nexuspipe_sdk::state::definition(&source["metrics"][i]),
                )
            })
            .collect();
        c.identities.funnels = c
            .funnels
            .iter()
            .enumerate()
            .map(|(i, f)| {
                (
                    name(format!("funnel:{}", f.name)),
                    nexuspipe_sdk::state::definition(&source["funnels"][i]),
                )
            })
            .collect();
        for (i, m) in c.metrics.iter_mut().enumerate() {
            let at = format!("metrics[{i}]");
            m.filter.prepare(&format!("{at}.filter"))?;
            if m.measurement.is_empty() {
                return Err(ConfigError::at(
                    format!("{at}.measurement"),
                    "must not be empty",
                ));
            }
            if m.aggregates.is_empty() == m.top.is_none() {
                return Err(ConfigError::at(&at, "give either `aggregates` or `top`"));
            }
            for (j, g) in m.group_by.iter().enumerate() {
                for src in &g.from {
                    if UNBOUNDED.contains(&src.as_str()) {
                        return Err(ConfigError::at(
                            format!("{at}.group_by[{j}]"),
                            format!(
                                "`{src}` is unbounded (one series per value); count it with `unique` or use `#path`/`#host` of a URL"
                            ),
                        ));
                    }
                }
            }
            for (j, a) in m.aggregates.iter().enumerate() {
                if a.func != AggFn::Count && a.field.is_none() {
                    return Err(ConfigError::at(
                        format!("{at}.aggregates[{j}]"),
                        "needs a `field`",
                    ));
                }
            }
            if let Some(e) = m.early {
                if e <= 0 {
                    return Err(ConfigError::at(format!("{at}.early"), "must be positive"));
                }
                if matches!(m.window, WindowSpec::Session { .. }) {
                    return Err(ConfigError::at(
                        format!("{at}.early"),
                        "session windows have no early results (their end moves)",
                    ));
                }
            }
            let bad = match m.window {
                WindowSpec::Tumbling { size, .. } => size <= 0,
                WindowSpec::Sliding { size, slide, .. } => size <= 0 || slide <= 0,
                WindowSpec::Session { gap } => gap <= 0,
            };
            if bad {
                return Err(ConfigError::at(
                    format!("{at}.window"),
                    "sizes must be positive",
                ));
            }
        }
        for (i, f) in c.funnels.iter_mut().enumerate() {
            let at = format!("funnels[{i}]");
            if f.steps.len() < 2 || f.within <= 0 || f.window <= 0 {
                return Err(ConfigError::at(
                    &at,
                    "a funnel needs 2+ steps and positive `within` and `window`",
                ));
            }
            for (j, s) in f.steps.iter_mut().enumerate() {
                s.filter.prepare(&format!("{at}.steps[{j}].filter"))?;
            }
        }
        Ok(c)
    }

    pub fn interest(&self) -> Interest {
        let mut b = InterestBuilder::new();
        for m in &self.metrics {
            m.filter.declare(&mut b);
            for g in &m.group_by {
                for src in &g.from {
                    b.field(src.split('#').next().unwrap_or(src));
                }
            }
            for a in &m.aggregates {
                if let Some(f) = &a.field {
                    b.field(f);
                }
            }
            if let Some(t) = &m.top {
                b.field(&t.field);
            }
        }
        for f in &self.funnels {
            b.field(&f.user);
            for s in &f.steps {
                s.filter.declare(&mut b);
            }
        }
        b.build()
    }
}
