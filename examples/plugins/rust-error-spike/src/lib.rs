//! error-spike in Rust with the SDK: the same logic and config as
//! `examples/plugins/c-error-spike`, to compare languages.

use nexuspipe_sdk::filter::{alert_fingerprint, format_duration, parse_duration};
use nexuspipe_sdk::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

struct Config {
    rule: String,
    event_type: String,
    key: String,
    threshold: i64,
    window: i64,
    severity: Severity,
}

fn parse_config(text: &str) -> Result<Config, ConfigError> {
    let mut c = Config {
        rule: "error_spike".into(),
        event_type: "error".into(),
        key: "service".into(),
        threshold: 5,
        window: 60_000,
        severity: Severity::Error,
    };
    for item in text
        .split(|ch: char| ch == ',' || ch == ';' || ch.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        let Some((k, v)) = item.split_once('=') else {
            return Err(ConfigError::new(format!(
                "expected key=value, got \"{item}\""
            )));
        };
        match k {
            "threshold" => {
                c.threshold = v.parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    ConfigError::at(k, format!("expected a non-negative integer, got \"{v}\""))
                })?;
            }
            "window" => {
                c.window = parse_duration(v).ok().filter(|w| *w > 0).ok_or_else(|| {
                    ConfigError::at(k, format!("expected a duration like 1m, got \"{v}\""))
                })?;
            }
            "key" | "event_type" | "rule" if v.is_empty() => {
                return Err(ConfigError::at(k, "must not be empty"));
            }
            "key" => c.key = v.into(),
            "event_type" => c.event_type = v.into(),
            "rule" => c.rule = v.into(),
            "severity" => {
                c.severity = match v {
                    "info" => Severity::Info,
                    "warning" => Severity::Warning,
                    "error" => Severity::Error,
                    "critical" => Severity::Critical,
                    _ => {
                        return Err(ConfigError::at(
                            k,
                            format!("expected info, warning, error or critical, got \"{v}\""),
                        ));
                    }
                }
            }
            _ => return Err(ConfigError::at(k, format!("unknown key \"{k}\""))),
        }
    }
    Ok(c)
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Slot {
    count: i64,
    dirty: bool,
    fired: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Active {
    starts_at: i64,
    last_end: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    watermark: Option<i64>,
    /// (window start, key) -> count; a list because JSON keys are strings.
    #[serde(with = "pairs")]
    slots: BTreeMap<(i64, String), Slot>,
    active: BTreeMap<String, Active>,
}

mod pairs {
    use super::Slot;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::BTreeMap;
    pub fn serialize<S: Serializer>(
        m: &BTreeMap<(i64, String), Slot>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<(i64, String), Slot>, D::Error> {
        Ok(Vec::<((i64, String), Slot)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

pub struct ErrorSpike {
    config: Config,
    lateness: i64,
    state: State,
}

impl ErrorSpike {
    fn alert(&self, key: &str, starts_at: i64, ends_at: Option<i64>, count: i64) -> Alert {
        let c = &self.config;
        let (status, summary) = match ends_at {
            None => (
                AlertStatus::Firing,
                format!(
                    "{count} {} events for {key} in {} (threshold {})",
                    c.event_type,
                    format_duration(c.window),
                    c.threshold
                ),
            ),
            Some(_) => (
                AlertStatus::Resolved,
                format!(
                    "{} events for {key} back to at most {} per {}",
                    c.event_type,
                    c.threshold,
                    format_duration(c.window)
                ),
            ),
        };
        Alert {
            rule_id: c.rule.clone(),
            key: key.to_string(),
            status,
            severity: c.severity,
            summary,
            labels: vec![
                ("rule".into(), c.rule.clone()),
                (c.key.clone(), key.to_string()),
            ],
            starts_at,
            ends_at,
            fingerprint: alert_fingerprint(&c.rule, key, starts_at),
        }
    }

    fn key_of(&self, e: &Event) -> String {
        match e.get(&self.config.key) {
            Some(Value::Str(s)) if !s.is_empty() => s.clone(),
            Some(Value::Int(i)) => i.to_string(),
            _ => "unknown".into(),
        }
    }
}

impl Alerter for ErrorSpike {
    type State = State;

    fn init(config: &str, settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        let config = parse_config(config)?;
        let interest = Interest::event_types([config.event_type.clone()])
            .with_properties([config.key.clone()])
            // No id, user or session: each string sent is an allocation here.
            .with_only_fields(EventFields::empty());
        Ok((
            ErrorSpike {
                config,
                lateness: settings.allowed_lateness,
                state: State::default(),
            },
            interest,
        ))
    }

    fn process(&mut self, events: Vec<Event>, watermark: i64) -> AlertOutput {
        let size = self.config.window;
        let mut late = Vec::new();
        let prev = self.state.watermark.unwrap_or(i64::MIN);
        for (i, e) in events.iter().enumerate() {
            let start = e.timestamp - e.timestamp.rem_euclid(size);
            if (start + size).saturating_add(self.lateness) <= prev {
                late.push(i as u32);
                continue;
            }
            let slot = self.state.slots.entry((start, self.key_of(e))).or_default();
            slot.count += 1;
            slot.dirty = true;
        }
        let wm = prev.max(watermark);
        self.state.watermark = Some(wm);

        let mut alerts = Vec::new();
        let threshold = self.config.threshold;
        let closed: Vec<(i64, String, i64)> = self
            .state
            .slots
            .iter_mut()
            .filter(|((start, _), s)| s.dirty && start + size <= wm)
            .filter_map(|((start, key), s)| {
                s.dirty = false;
                (!s.fired && s.count > threshold).then(|| {
                    s.fired = true;
                    (*start, key.clone(), s.count)
                })
            })
            .collect();
        for (start, key, count) in closed {
            let end = start + size;
            if let Some(a) = self.state.active.get_mut(&key) {
                if start <= a.last_end {
                    a.last_end = a.last_end.max(end);
                    continue;
                }
                let (s, e) = (a.starts_at, a.last_end);
                alerts.push(self.alert(&key, s, Some(e), 0));
            }
            alerts.push(self.alert(&key, start, None, count));
            self.state.active.insert(
                key,
                Active {
                    starts_at: start,
                    last_end: end,
                },
            );
        }
        let cleared: Vec<(String, i64, i64)> = self
            .state
            .active
            .iter()
            .filter(|(_, a)| a.last_end.saturating_add(size) <= wm)
            .map(|(k, a)| (k.clone(), a.starts_at, a.last_end))
            .collect();
        for (key, s, e) in cleared {
            self.state.active.remove(&key);
            alerts.push(self.alert(&key, s, Some(e), 0));
        }
        let lateness = self.lateness;
        self.state
            .slots
            .retain(|(start, _), _| (start + size).saturating_add(lateness) > wm);
        AlertOutput { alerts, late }
    }

    fn state(&self) -> &State {
        &self.state
    }

    fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

nexuspipe_sdk::export_alerter!(ErrorSpike);
