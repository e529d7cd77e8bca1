//! Building blocks for plugin configs: event filters, field paths, durations,
//! and an [`InterestBuilder`] that turns the fields a config reads into the
//! plugin's declared [`Interest`].

use crate::{ConfigError, Event, EventFields, Interest, MetadataFields, Value};
use serde::Deserialize;
use std::borrow::Cow;

/// Parses a plugin's JSON config; empty text means `default` (the plugin's
/// default config). Errors carry serde's line and column.
pub fn json_config<T: serde::de::DeserializeOwned>(
    text: &str,
    default: &str,
) -> Result<T, ConfigError> {
    let text = if text.trim().is_empty() {
        default
    } else {
        text
    };
    serde_json::from_str(text).map_err(ConfigError::parse)
}

/// As [`json_config`], also returning the config as JSON (for the
/// definitions of [`crate::Parts`]).
pub fn json_config_source<T: serde::de::DeserializeOwned>(
    text: &str,
    default: &str,
) -> Result<(T, serde_json::Value), ConfigError> {
    let text = if text.trim().is_empty() {
        default
    } else {
        text
    };
    // Typed from the text, so errors name the line and column.
    let config = serde_json::from_str(text).map_err(ConfigError::parse)?;
    let value = serde_json::from_str(text).map_err(ConfigError::parse)?;
    Ok((config, value))
}

/// Parses a duration: an integer (milliseconds) or text like `500ms`, `10s`, `30m`, `1h`, `1d`.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. \"30s\", \"5m\", \"1h\")"))?;
    let mult = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}` (use ms, s, m, h, d)"
            ));
        }
    };
    Ok(n * mult)
}

/// Formats milliseconds in the largest unit that divides them (`1m`, `90s`,
/// `250ms`): the inverse of [`parse_duration`], for alert summaries.
pub fn format_duration(ms: i64) -> String {
    match ms {
        m if m != 0 && m % 86_400_000 == 0 => format!("{}d", m / 86_400_000),
        m if m != 0 && m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m != 0 && m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m != 0 && m % 1_000 == 0 => format!("{}s", m / 1_000),
        m => format!("{m}ms"),
    }
}

/// The fingerprint of an alert: FNV-1a (64 bits, hex) of rule id, key and
/// start time. Stable across replays and versions, so receivers can
/// deduplicate on it (the WIT's `alert.fingerprint`).
pub fn alert_fingerprint(rule: &str, key: &str, starts_at: i64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rule
        .bytes()
        .chain([0])
        .chain(key.bytes())
        .chain([0])
        .chain(starts_at.to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Serde helper: a duration in milliseconds from `"5m"` or a number of ms.
pub fn duration_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Dur {
        Ms(i64),
        Text(String),
    }
    match Dur::deserialize(d)? {
        Dur::Ms(ms) => Ok(ms),
        Dur::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

/// Serde helper: one string or a list of strings.
pub fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// A comparison on one field of an event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// A field path: `user_id`, `metadata.ip_address`, `properties.amount` (or just `amount`).
    pub field: String,
    pub op: Op,
    /// The operand; a list for `in`, a pattern for `regex`, absent for `exists`.
    #[serde(default)]
    pub value: serde_json::Value,
    #[serde(skip)]
    regex: Option<regex_lite::Regex>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Ne,
    In,
    Gt,
    Ge,
    Lt,
    Le,
    Regex,
    Exists,
}

/// Which events a rule or metric applies to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Event types; empty means any.
    #[serde(default, deserialize_with = "one_or_many")]
    pub event_type: Vec<String>,
    /// Conditions that must all hold.
    #[serde(default, rename = "where")]
    pub conditions: Vec<Condition>,
}

fn json_matches(v: &Value, want: &serde_json::Value) -> bool {
    match want {
        serde_json::Value::String(s) => v.to_text() == *s,
        serde_json::Value::Number(n) => v.as_f64().zip(n.as_f64()).is_some_and(|(a, b)| a == b),
        serde_json::Value::Bool(b) => v.as_bool() == Some(*b),
        _ => false,
    }
}

impl Filter {
    /// A filter on event types only.
    pub fn types<S: Into<String>>(types: impl IntoIterator<Item = S>) -> Self {
        Filter {
            event_type: types.into_iter().map(Into::into).collect(),
            conditions: Vec::new(),
        }
    }

    /// Checks operands and compiles patterns; `at` names this filter in errors.
    pub fn prepare(&mut self, at: &str) -> Result<(), ConfigError> {
        for (i, c) in self.conditions.iter_mut().enumerate() {
            let here = format!("{at}.where[{i}]");
            match c.op {
                Op::Regex => {
                    let pattern = c
                        .value
                        .as_str()
                        .ok_or_else(|| ConfigError::at(&here, "`regex` needs a string pattern"))?;
                    c.regex = Some(
                        regex_lite::Regex::new(pattern)
                            .map_err(|e| ConfigError::at(&here, format!("bad pattern: {e}")))?,
                    );
                }
                Op::In if !c.value.is_array() => {
                    return Err(ConfigError::at(&here, "`in` needs a list"));
                }
                Op::Gt | Op::Ge | Op::Lt | Op::Le if !c.value.is_number() => {
                    return Err(ConfigError::at(&here, "numeric comparisons need a number"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn matches(&self, e: &Event) -> bool {
        if !self.event_type.is_empty() && !self.event_type.contains(&e.event_type) {
            return false;
        }
        self.conditions.iter().all(|c| c.holds(e))
    }

    /// Adds what this filter reads to an interest.
    pub fn declare(&self, b: &mut InterestBuilder) {
        if self.event_type.is_empty() {
            b.any_type();
        } else {
            b.types(&self.event_type);
        }
        for c in &self.conditions {
            b.field(&c.field);
        }
    }
}

impl Condition {
    fn holds(&self, e: &Event) -> bool {
        if self.op == Op::Exists {
            // Per event: no copy of the value just to see it is there.
            return has_field(e, &self.field);
        }
        let Some(v) = field_ref(e, &self.field) else {
            return false;
        };
        let num = || v.as_f64().zip(self.value.as_f64());
        match self.op {
            Op::Eq => json_matches(&v, &self.value),
            Op::Ne => !json_matches(&v, &self.value),
            Op::In => self
                .value
                .as_array()
                .is_some_and(|l| l.iter().any(|w| json_matches(&v, w))),
            Op::Gt => num().is_some_and(|(a, b)| a > b),
            Op::Ge => num().is_some_and(|(a, b)| a >= b),
            Op::Lt => num().is_some_and(|(a, b)| a < b),
            Op::Le => num().is_some_and(|(a, b)| a <= b),
            Op::Regex => self
                .regex
                .as_ref()
                .is_some_and(|r| r.is_match(&v.to_text())),
            Op::Exists => true,
        }
    }
}

/// The typed value of a field path (core fields and metadata as strings).
pub fn field_value(e: &Event, path: &str) -> Option<Value> {
    field_ref(e, path).map(Cow::into_owned)
}

/// [`field_value`], borrowed where the event holds the value (a property):
/// what a filter or an aggregate reads per event needs no copy.
pub fn field_ref<'e>(e: &'e Event, path: &str) -> Option<Cow<'e, Value>> {
    if !is_core(path) {
        let key = path.strip_prefix("properties.").unwrap_or(path);
        if let Some(v) = e.get(key) {
            return Some(Cow::Borrowed(v));
        }
    }
    e.field(path)
        .map(|s| Cow::Owned(Value::Str(s.into_owned())))
}

/// Whether [`field_value`] has a value for `path`, without building it.
pub fn has_field(e: &Event, path: &str) -> bool {
    (!is_core(path)
        && e.get(path.strip_prefix("properties.").unwrap_or(path))
            .is_some())
        || e.field(path).is_some()
}

fn is_core(path: &str) -> bool {
    matches!(
        path,
        "event_type" | "event_id" | "id" | "user_id" | "session_id" | "timestamp"
    ) || path.starts_with("metadata.")
}

/// Collects what a plugin reads into an [`Interest`].
#[derive(Debug, Default)]
pub struct InterestBuilder {
    all_types: bool,
    types: Vec<String>,
    properties: Vec<String>,
    all_properties: bool,
    metadata: MetadataFields,
    fields: EventFields,
}

impl Default for MetadataFields {
    fn default() -> Self {
        MetadataFields::empty()
    }
}

impl Default for EventFields {
    fn default() -> Self {
        EventFields::empty()
    }
}

impl InterestBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The plugin wants events of every type.
    pub fn any_type(&mut self) -> &mut Self {
        self.all_types = true;
        self
    }

    pub fn types(&mut self, types: &[String]) -> &mut Self {
        for t in types {
            if !self.types.contains(t) {
                self.types.push(t.clone());
            }
        }
        self
    }

    /// The plugin reads this field path.
    pub fn field(&mut self, path: &str) -> &mut Self {
        let md = match path {
            "metadata.ip_address" | "ip_address" => Some(MetadataFields::IP_ADDRESS),
            "metadata.user_agent" | "user_agent" => Some(MetadataFields::USER_AGENT),
            "metadata.platform" | "platform" => Some(MetadataFields::PLATFORM),
            "metadata.url" | "url" => Some(MetadataFields::URL),
            "metadata.referrer" | "referrer" => Some(MetadataFields::REFERRER),
            _ => None,
        };
        let field = match path {
            "event_id" | "id" => Some(EventFields::ID),
            "user_id" => Some(EventFields::USER_ID),
            "session_id" => Some(EventFields::SESSION_ID),
            _ => None,
        };
        if let Some(f) = md {
            self.metadata |= f;
        } else if let Some(f) = field {
            self.fields |= f;
        } else if !is_core(path) {
            let key = path.strip_prefix("properties.").unwrap_or(path).to_string();
            if !self.properties.contains(&key) {
                self.properties.push(key);
            }
        }
        self
    }

    /// The plugin reads every property.
    pub fn all_properties(&mut self) -> &mut Self {
        self.all_properties = true;
        self
    }

    pub fn build(&self) -> Interest {
        Interest {
            event_types: if self.all_types {
                Vec::new()
            } else {
                self.types.clone()
            },
            properties: if self.all_properties {
                None
            } else {
                Some(self.properties.clone())
            },
            metadata: self.metadata,
            fields: self.fields,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_interest() {
        let mut f: Filter = serde_json::from_value(serde_json::json!({
            "event_type": "purchase",
            "where": [
                {"field": "amount", "op": "ge", "value": 10},
                {"field": "currency", "op": "in", "value": ["EUR", "USD"]},
                {"field": "metadata.url", "op": "regex", "value": "^https://shop"}
            ]
        }))
        .unwrap();
        f.prepare("metrics[0].filter").unwrap();
        let e = Event::new("purchase", 1)
            .with_property("amount", "12.5")
            .with_property("currency", "EUR")
            .with_url("https://shop.example/x");
        assert!(f.matches(&e));
        assert!(!f.matches(&e.clone().with_property("currency", "GBP")));
        let mut b = InterestBuilder::new();
        f.declare(&mut b);
        let i = b.build();
        assert_eq!(i.event_types, ["purchase"]);
        assert_eq!(i.properties.unwrap(), ["amount", "currency"]);
        assert!(i.metadata.contains(MetadataFields::URL));
        assert_eq!(
            i.fields,
            EventFields::empty(),
            "reads no id, user or session"
        );
        b.field("user_id").field("event_id");
        assert_eq!(b.build().fields, EventFields::USER_ID | EventFields::ID);
        assert_eq!(parse_duration("30m"), Ok(1_800_000));
        let mut bad: Filter = serde_json::from_value(
            serde_json::json!({"where": [{"field": "a", "op": "gt", "value": "x"}]}),
        )
        .unwrap();
        assert_eq!(
            bad.prepare("rules[1].filter").unwrap_err().field.as_deref(),
            Some("rules[1].filter.where[0]")
        );
    }

    /// `field_ref` and `has_field` answer as the plain definition does (a
    /// property, unless the path names a core field; else the core field as
    /// text), for core fields, metadata, properties, and properties named
    /// like core fields.
    #[test]
    fn borrowed_field_values_equal_the_plain_definition() {
        fn plain(e: &Event, path: &str) -> Option<Value> {
            let key = path.strip_prefix("properties.").unwrap_or(path);
            if let Some(v) = e.get(key)
                && !is_core(path)
            {
                return Some(v.clone());
            }
            e.field(path).map(|s| Value::Str(s.into_owned()))
        }
        let bare = Event::new("click", 1);
        let full = Event::new("purchase", 2)
            .with_user("u1")
            .with_session("s1")
            .with_ip("203.0.113.9")
            .with_url("https://shop.example/a")
            .with_property("amount", 12.5)
            .with_property("path", "/a")
            .with_property("user_id", "shadow")
            .with_property("ip_address", "198.51.100.1")
            .with_property("timestamp", 7i64);
        let paths = [
            "event_type",
            "event_id",
            "id",
            "user_id",
            "session_id",
            "timestamp",
            "ip_address",
            "metadata.ip_address",
            "metadata.url",
            "url",
            "referrer",
            "amount",
            "properties.amount",
            "path",
            "properties.path",
            "properties.user_id",
            "missing",
            "properties.missing",
        ];
        let mut present = 0;
        for e in [&bare, &full] {
            for p in paths {
                let want = plain(e, p);
                assert_eq!(field_ref(e, p).map(Cow::into_owned), want, "{p}");
                assert_eq!(has_field(e, p), want.is_some(), "{p}");
                present += usize::from(want.is_some());
            }
        }
        assert!(
            present > 0 && present < 2 * paths.len(),
            "both present and absent fields are asked"
        );
    }
}
