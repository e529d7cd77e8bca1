//! Rule configuration (JSON). The default rules are what `nexuspipe run` uses
//! when the plugin is given no config.

use nexuspipe_sdk::filter::{Filter, InterestBuilder, json_config_source, parse_duration};
use nexuspipe_sdk::{ConfigError, Interest, Severity};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub rules: Vec<Rule>,
    /// Rule id -> the rule as written (keys sorted): a rule's state is taken
    /// over by a new config only if its definition is unchanged.
    #[serde(skip)]
    pub definitions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawRule")]
pub struct Rule {
    pub id: String,
    pub severity: Severity,
    /// Text with placeholders `{rule}`, `{key}`, `{count}`, `{value}`, `{window}`.
    pub summary: String,
    pub labels: BTreeMap<String, String>,
    /// Field path the rule is evaluated per, e.g. `metadata.ip_address`, `user_id`.
    pub key: String,
    /// Minimum event time between two `firing` alerts of this rule for one key.
    pub cooldown: i64,
    pub kind: RuleKind,
}

/// A rule as written: every key of every rule type, checked against `type`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "default_severity", deserialize_with = "de_severity")]
    severity: Severity,
    summary: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    key: String,
    #[serde(default)]
    cooldown: Option<Dur>,
    filter: Option<Filter>,
    window: Option<Dur>,
    above: Option<f64>,
    sum: Option<String>,
    #[serde(rename = "for")]
    for_: Option<Dur>,
    first: Option<Filter>,
    count: Option<usize>,
    then: Option<Filter>,
    within: Option<Dur>,
    avg: Option<String>,
    k: Option<f64>,
    direction: Option<String>,
    baseline: Option<usize>,
    min_deviation: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Dur {
    Ms(i64),
    Text(String),
}

fn ms(d: Option<Dur>, what: &str) -> Result<Option<i64>, String> {
    match d {
        None => Ok(None),
        Some(Dur::Ms(v)) => Ok(Some(v)),
        Some(Dur::Text(t)) => parse_duration(&t)
            .map(Some)
            .map_err(|e| format!("`{what}`: {e}")),
    }
}

impl TryFrom<RawRule> for Rule {
    type Error = String;

    fn try_from(r: RawRule) -> Result<Rule, String> {
        let need = |v: Option<i64>, what: &str| {
            v.ok_or_else(|| format!("rule `{}` ({}) needs `{what}`", r.id, r.kind))
        };
        let window = ms(r.window, "window")?;
        let within = ms(r.within, "within")?;
        // An anomaly's `for` counts windows; every other rule's is a duration.
        let for_windows = match (&r.for_, r.kind.as_str()) {
            (Some(Dur::Ms(n)), "anomaly") if *n >= 1 => Some(u32::try_from(*n).unwrap_or(u32::MAX)),
            (Some(_), "anomaly") => {
                return Err(format!(
                    "rule `{}` (anomaly): `for` counts windows: a whole number, at least 1",
                    r.id
                ));
            }
            _ => None,
        };
        let for_ms = match r.kind.as_str() {
            "anomaly" => 0,
            _ => ms(r.for_, "for")?.unwrap_or(0),
        };
        let anomaly_only = [
            ("avg", r.avg.is_some()),
            ("k", r.k.is_some()),
            ("direction", r.direction.is_some()),
            ("baseline", r.baseline.is_some()),
            ("min_deviation", r.min_deviation.is_some()),
        ];
        let unused = |names: &[(&str, bool)]| -> Result<(), String> {
            match names.iter().find(|(_, set)| *set) {
                Some((n, _)) => Err(format!("rule `{}` ({}) does not use `{n}`", r.id, r.kind)),
                None => Ok(()),
            }
        };
        let kind = match r.kind.as_str() {
            "threshold" => {
                unused(&[
                    ("first", r.first.is_some()),
                    ("then", r.then.is_some()),
                    ("within", within.is_some()),
                    ("count", r.count.is_some()),
                ])?;
                unused(&anomaly_only)?;
                RuleKind::Threshold {
                    filter: r.filter.clone().unwrap_or_default(),
                    window: need(window, "window")?,
                    above: r
                        .above
                        .ok_or_else(|| format!("rule `{}` (threshold) needs `above`", r.id))?,
                    sum: r.sum.clone(),
                    for_ms,
                }
            }
            "sequence" | "absence" => {
                unused(&[
                    ("filter", r.filter.is_some()),
                    ("window", window.is_some()),
                    ("above", r.above.is_some()),
                    ("sum", r.sum.is_some()),
                    ("for", for_ms != 0),
                ])?;
                unused(&anomaly_only)?;
                let first = r
                    .first
                    .clone()
                    .ok_or_else(|| format!("rule `{}` needs `first`", r.id))?;
                let then = r
                    .then
                    .clone()
                    .ok_or_else(|| format!("rule `{}` needs `then`", r.id))?;
                let within = need(within, "within")?;
                if r.kind == "sequence" {
                    RuleKind::Sequence {
                        first,
                        count: r.count.unwrap_or(1),
                        then,
                        within,
                    }
                } else {
                    unused(&[("count", r.count.is_some())])?;
                    RuleKind::Absence {
                        first,
                        then,
                        within,
                    }
                }
            }
            "anomaly" => {
                unused(&[
                    ("first", r.first.is_some()),
                    ("then", r.then.is_some()),
                    ("within", within.is_some()),
                    ("count", r.count.is_some()),
                    ("above", r.above.is_some()),
                ])?;
                let aggregate = match (r.sum.clone(), r.avg.clone()) {
                    (None, None) => Aggregate::Count,
                    (Some(f), None) => Aggregate::Sum(f),
                    (None, Some(f)) => Aggregate::Avg(f),
                    (Some(_), Some(_)) => {
                        return Err(format!(
                            "rule `{}` (anomaly): `sum` or `avg`, not both",
                            r.id
                        ));
                    }
                };
                let direction = match r.direction.as_deref().unwrap_or("above") {
                    "above" => Direction::Above,
                    "below" => Direction::Below,
                    "both" => Direction::Both,
                    other => {
                        return Err(format!(
                            "rule `{}` (anomaly): unknown direction `{other}` (above, below, both)",
                            r.id
                        ));
                    }
                };
                RuleKind::Anomaly {
                    min_deviation: r.min_deviation.unwrap_or(match aggregate {
                        Aggregate::Count => 1.0,
                        _ => 0.0,
                    }),
                    filter: r.filter.clone().unwrap_or_default(),
                    window: need(window, "window")?,
                    aggregate,
                    k: r.k.unwrap_or(3.0),
                    direction,
                    baseline: r.baseline.unwrap_or(10),
                    for_windows: for_windows.unwrap_or(1),
                    lateness: 0,
                }
            }
            other => {
                return Err(format!(
                    "rule `{}`: unknown type `{other}` (threshold, sequence, absence, anomaly)",
                    r.id
                ));
            }
        };
        Ok(Rule {
            cooldown: ms(r.cooldown, "cooldown")?.unwrap_or(0),
            id: r.id,
            severity: r.severity,
            summary: r.summary,
            labels: r.labels,
            key: r.key,
            kind,
        })
    }
}

fn default_severity() -> Severity {
    Severity::Warning
}

fn de_severity<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Severity, D::Error> {
    let s = String::deserialize(d)?;
    Ok(match s.as_str() {
        "info" => Severity::Info,
        "warning" => Severity::Warning,
        "error" => Severity::Error,
        "critical" => Severity::Critical,
        other => {
            return Err(serde::de::Error::custom(format!(
                "unknown severity `{other}` (info, warning, error, critical)"
            )));
        }
    })
}

#[derive(Debug, Clone)]
pub enum RuleKind {
    /// Count (or sum of `sum`) of matching events per key over a sliding window `> above`.
    Threshold {
        filter: Filter,
        window: i64,
        above: f64,
        /// Sum this numeric field instead of counting events.
        sum: Option<String>,
        /// The condition must hold this long before the alert fires.
        for_ms: i64,
    },
    /// `count` events matching `first`, then one matching `then`, within `within`.
    Sequence {
        first: Filter,
        count: usize,
        then: Filter,
        within: i64,
    },
    /// An event matching `first` not followed by one matching `then` within `within`.
    Absence {
        first: Filter,
        then: Filter,
        within: i64,
    },
    /// A per-key aggregate over tumbling windows of `window`, compared at each
    /// window's close with the median and MAD of the key's last `baseline`
    /// windows: beyond when `k` deviations off in `direction`.
    Anomaly {
        filter: Filter,
        window: i64,
        aggregate: Aggregate,
        k: f64,
        direction: Direction,
        /// Windows in the baseline, and the warm-up before the rule can fire.
        baseline: usize,
        /// The deviation never counts as less than this (a flat baseline has a MAD of 0).
        min_deviation: f64,
        /// Consecutive windows beyond before it fires.
        for_windows: u32,
        /// The host's allowed lateness: a window is decided once the
        /// watermark passes its end by that much (set by `init`).
        lateness: i64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Aggregate {
    Count,
    Sum(String),
    Avg(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Direction {
    Above,
    Below,
    Both,
}

/// The rules used when no config is given (a file of its own: the host's
/// dashboard shows these rules when an alerter runs without a config).
pub const DEFAULT_CONFIG: &str = include_str!("../default-config.json");

impl Config {
    /// Parses and checks a config; empty text means the default rules.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let (mut c, source): (Config, serde_json::Value) =
            json_config_source(text, DEFAULT_CONFIG)?;
        c.definitions = c
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    r.id.clone(),
                    nexuspipe_sdk::state::definition(&source["rules"][i]),
                )
            })
            .collect();
        let mut ids = std::collections::HashSet::new();
        for (i, r) in c.rules.iter_mut().enumerate() {
            let at = format!("rules[{i}]");
            if r.id.is_empty() || !ids.insert(r.id.clone()) {
                return Err(ConfigError::at(
                    format!("{at}.id"),
                    "must be non-empty and unique",
                ));
            }
            match &mut r.kind {
                RuleKind::Threshold { filter, window, .. } => {
                    filter.prepare(&format!("{at}.filter"))?;
                    if *window <= 0 {
                        return Err(ConfigError::at(format!("{at}.window"), "must be positive"));
                    }
                }
                RuleKind::Sequence {
                    first,
                    then,
                    within,
                    count,
                } => {
                    first.prepare(&format!("{at}.first"))?;
                    then.prepare(&format!("{at}.then"))?;
                    if *within <= 0 || *count == 0 {
                        return Err(ConfigError::at(
                            format!("{at}.within"),
                            "within and count must be positive",
                        ));
                    }
                }
                RuleKind::Absence {
                    first,
                    then,
                    within,
                } => {
                    first.prepare(&format!("{at}.first"))?;
                    then.prepare(&format!("{at}.then"))?;
                    if *within <= 0 {
                        return Err(ConfigError::at(format!("{at}.within"), "must be positive"));
                    }
                }
                RuleKind::Anomaly {
                    filter,
                    window,
                    k,
                    baseline,
                    min_deviation,
                    ..
                } => {
                    filter.prepare(&format!("{at}.filter"))?;
                    if *window <= 0 {
                        return Err(ConfigError::at(format!("{at}.window"), "must be positive"));
                    }
                    if !(k.is_finite() && *k > 0.0) {
                        return Err(ConfigError::at(format!("{at}.k"), "must be positive"));
                    }
                    if !(3..=10_000).contains(baseline) {
                        return Err(ConfigError::at(
                            format!("{at}.baseline"),
                            "must be between 3 and 10000 windows",
                        ));
                    }
                    if !(min_deviation.is_finite() && *min_deviation >= 0.0) {
                        return Err(ConfigError::at(
                            format!("{at}.min_deviation"),
                            "must be 0 or more",
                        ));
                    }
                }
            }
        }
        Ok(c)
    }

    /// What the rules read: the union of their filters, keys and summed fields.
    pub fn interest(&self) -> Interest {
        let mut b = InterestBuilder::new();
        for r in &self.rules {
            b.field(&r.key);
            match &r.kind {
                RuleKind::Threshold { filter, sum, .. } => {
                    filter.declare(&mut b);
                    if let Some(f) = sum {
                        b.field(f);
                    }
                }
                RuleKind::Anomaly {
                    filter, aggregate, ..
                } => {
                    filter.declare(&mut b);
                    if let Aggregate::Sum(f) | Aggregate::Avg(f) = aggregate {
                        b.field(f);
                    }
                }
                RuleKind::Sequence { first, then, .. } | RuleKind::Absence { first, then, .. } => {
                    first.declare(&mut b);
                    then.declare(&mut b);
                }
            }
        }
        b.build()
    }
}
