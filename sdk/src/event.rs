//! Ergonomic helpers on the generated event types: typed property access,
//! builders for events, patches, metric points and interests.

use crate::{
    Change, ConfigError, Event, Interest, Metadata, MetadataFields, MetricPoint, Property,
    StateError, Value,
};

/// Conversion into a typed [`Value`].
pub trait IntoValue {
    fn into_value(self) -> Value;
}

impl IntoValue for Value {
    fn into_value(self) -> Value {
        self
    }
}
impl IntoValue for &str {
    fn into_value(self) -> Value {
        Value::Str(self.to_string())
    }
}
impl IntoValue for String {
    fn into_value(self) -> Value {
        Value::Str(self)
    }
}
impl IntoValue for f64 {
    fn into_value(self) -> Value {
        Value::Float(self)
    }
}
impl IntoValue for i64 {
    fn into_value(self) -> Value {
        Value::Int(self)
    }
}
impl IntoValue for u32 {
    fn into_value(self) -> Value {
        Value::Int(i64::from(self))
    }
}
impl IntoValue for bool {
    fn into_value(self) -> Value {
        Value::Boolean(self)
    }
}

impl Value {
    /// The value as text: strings as they are, numbers and booleans formatted.
    pub fn to_text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Float(f) => f.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Boolean(b) => b.to_string(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Numbers as `f64`; numeric strings are parsed (trackers often send `"12.50"`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            Value::Str(s) => s.trim().parse().ok(),
            Value::Boolean(_) => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Float(f) if f.fract() == 0.0 => Some(*f as i64),
            Value::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            ip_address: None,
            user_agent: None,
            platform: None,
            url: None,
            referrer: None,
        }
    }
}

impl Event {
    /// A new event with no properties; chain the `with_*` methods to fill it.
    pub fn new(event_type: impl Into<String>, timestamp: i64) -> Self {
        Event {
            id: String::new(),
            event_type: event_type.into(),
            timestamp,
            user_id: None,
            session_id: None,
            properties: Vec::new(),
            metadata: Metadata::default(),
        }
    }

    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    pub fn with_user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    pub fn with_session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    pub fn with_property(mut self, key: impl Into<String>, value: impl IntoValue) -> Self {
        self.set(key, value);
        self
    }

    pub fn with_ip(mut self, ip: impl Into<String>) -> Self {
        self.metadata.ip_address = Some(ip.into());
        self
    }

    pub fn with_user_agent(mut self, ua: impl Into<String>) -> Self {
        self.metadata.user_agent = Some(ua.into());
        self
    }

    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.metadata.url = Some(url.into());
        self
    }

    pub fn with_referrer(mut self, referrer: impl Into<String>) -> Self {
        self.metadata.referrer = Some(referrer.into());
        self
    }

    /// The property `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.properties
            .iter()
            .find(|p| p.key == key)
            .map(|p| &p.value)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(Value::as_i64)
    }

    /// Sets (or overwrites) the property `key`.
    pub fn set(&mut self, key: impl Into<String>, value: impl IntoValue) {
        let key = key.into();
        let value = value.into_value();
        match self.properties.iter_mut().find(|p| p.key == key) {
            Some(p) => p.value = value,
            None => self.properties.push(Property { key, value }),
        }
    }

    /// Removes the property `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let pos = self.properties.iter().position(|p| p.key == key)?;
        Some(self.properties.remove(pos).value)
    }

    /// Resolves a field path as used in plugin configs: `event_type`, `user_id`,
    /// `session_id`, `event_id`, `metadata.<field>` or `properties.<key>` (a bare
    /// name is a property).
    pub fn field(&self, path: &str) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        let md = &self.metadata;
        fn borrowed(s: &Option<String>) -> Option<Cow<'_, str>> {
            s.as_deref().map(Cow::Borrowed)
        }
        match path {
            "event_type" => Some(Cow::Borrowed(&self.event_type)),
            "event_id" | "id" => Some(Cow::Borrowed(&self.id)),
            "user_id" => borrowed(&self.user_id),
            "session_id" => borrowed(&self.session_id),
            "metadata.ip_address" | "ip_address" => borrowed(&md.ip_address),
            "metadata.user_agent" | "user_agent" => borrowed(&md.user_agent),
            "metadata.platform" | "platform" => borrowed(&md.platform),
            "metadata.url" | "url" => borrowed(&md.url),
            "metadata.referrer" | "referrer" => borrowed(&md.referrer),
            _ => {
                let key = path.strip_prefix("properties.").unwrap_or(path);
                self.get(key).map(|v| match v {
                    Value::Str(s) => Cow::Borrowed(s.as_str()),
                    other => Cow::Owned(other.to_text()),
                })
            }
        }
    }
}

/// A change to one event of the batch, built fluently and turned into a [`Change`].
#[derive(Debug, Clone)]
pub struct EventPatch(crate::wit::enricher::nexuspipe::plugin::types::EventPatch);

impl EventPatch {
    /// A patch for the event at `index` in the batch.
    pub fn new(index: usize) -> Self {
        EventPatch(crate::wit::enricher::nexuspipe::plugin::types::EventPatch {
            index: index as u32,
            event_type: None,
            user_id: None,
            session_id: None,
            set_properties: Vec::new(),
            remove_properties: Vec::new(),
            metadata: None,
        })
    }

    pub fn set(mut self, key: impl Into<String>, value: impl IntoValue) -> Self {
        self.push(key, value);
        self
    }

    /// Like [`EventPatch::set`], for use in loops.
    pub fn push(&mut self, key: impl Into<String>, value: impl IntoValue) {
        self.0.set_properties.push(Property {
            key: key.into(),
            value: value.into_value(),
        });
    }

    pub fn remove(mut self, key: impl Into<String>) -> Self {
        self.0.remove_properties.push(key.into());
        self
    }

    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.0.event_type = Some(event_type.into());
        self
    }

    pub fn user_id(mut self, user_id: impl Into<String>) -> Self {
        self.0.user_id = Some(user_id.into());
        self
    }

    /// True when the patch changes nothing (so it need not cross the boundary).
    pub fn is_empty(&self) -> bool {
        let p = &self.0;
        p.event_type.is_none()
            && p.user_id.is_none()
            && p.session_id.is_none()
            && p.set_properties.is_empty()
            && p.remove_properties.is_empty()
            && p.metadata.is_none()
    }
}

impl From<EventPatch> for Change {
    fn from(p: EventPatch) -> Change {
        Change::Patch(p.0)
    }
}

impl Change {
    /// Applies a list of changes to a batch, as the host does. Used by the native
    /// test harness so plugin tests see the events the next stage would see.
    pub fn apply(changes: Vec<Change>, events: Vec<Event>) -> Vec<Event> {
        let mut slots: Vec<Option<Event>> = events.into_iter().map(Some).collect();
        let mut emitted = Vec::new();
        for change in changes {
            match change {
                Change::Drop(i) => {
                    if let Some(slot) = slots.get_mut(i as usize) {
                        *slot = None;
                    }
                }
                Change::Emit(e) => emitted.push(e),
                Change::Patch(p) => {
                    let Some(Some(e)) = slots.get_mut(p.index as usize) else {
                        continue;
                    };
                    if let Some(t) = p.event_type {
                        e.event_type = t;
                    }
                    if let Some(u) = p.user_id {
                        e.user_id = Some(u);
                    }
                    if let Some(s) = p.session_id {
                        e.session_id = Some(s);
                    }
                    for key in &p.remove_properties {
                        e.remove(key);
                    }
                    for prop in p.set_properties {
                        e.set(prop.key, prop.value);
                    }
                    if let Some(m) = p.metadata {
                        let md = &mut e.metadata;
                        for (dst, src) in [
                            (&mut md.ip_address, m.ip_address),
                            (&mut md.user_agent, m.user_agent),
                            (&mut md.platform, m.platform),
                            (&mut md.url, m.url),
                            (&mut md.referrer, m.referrer),
                        ] {
                            if src.is_some() {
                                *dst = src;
                            }
                        }
                    }
                }
            }
        }
        slots.into_iter().flatten().chain(emitted).collect()
    }
}

impl Interest {
    /// Every event type, every property, no metadata.
    pub fn all() -> Self {
        Interest {
            event_types: Vec::new(),
            properties: None,
            metadata: MetadataFields::empty(),
        }
    }

    /// Only these event types (all their properties, no metadata).
    pub fn event_types<S: Into<String>>(types: impl IntoIterator<Item = S>) -> Self {
        Interest {
            event_types: types.into_iter().map(Into::into).collect(),
            ..Interest::all()
        }
    }

    /// Restricts the properties sent to these keys.
    pub fn with_properties<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        self.properties = Some(keys.into_iter().map(Into::into).collect());
        self
    }

    /// Adds metadata fields the plugin reads.
    pub fn with_metadata(mut self, fields: MetadataFields) -> Self {
        self.metadata |= fields;
        self
    }

    /// Whether an event of this type is wanted.
    pub fn wants(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type)
    }
}

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError {
            field: None,
            message: message.into(),
        }
    }

    /// An error about one key of the config.
    pub fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// Wraps a config parse error (JSON or TOML) with its position.
    pub fn parse(err: impl std::fmt::Display) -> Self {
        ConfigError::new(format!("invalid config: {err}"))
    }
}

impl StateError {
    pub fn new(message: impl Into<String>) -> Self {
        StateError {
            message: message.into(),
        }
    }
}

impl MetricPoint {
    /// A point with no tags or fields yet.
    pub fn new(measurement: impl Into<String>, timestamp: i64) -> Self {
        MetricPoint {
            measurement: measurement.into(),
            tags: Vec::new(),
            fields: Vec::new(),
            timestamp,
        }
    }

    /// Adds a tag; empty values are left out (InfluxDB rejects them).
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let value = value.into();
        if !value.is_empty() {
            self.tags.push((key.into(), value));
        }
        self
    }

    pub fn field(mut self, key: impl Into<String>, value: impl IntoValue) -> Self {
        self.fields.push((key.into(), value.into_value()));
        self
    }
}
