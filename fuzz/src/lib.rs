//! Shared by the fuzz targets: arbitrary events and points, converted to
//! the host's types (generated from the WIT, which `arbitrary` cannot derive for).

use arbitrary::Arbitrary;
use nexuspipe::runtime::{Event, Metadata, MetricPoint, Property, Value};

#[derive(Debug, Arbitrary)]
pub enum AValue {
    Str(String),
    Float(f64),
    Int(i64),
    Bool(bool),
}

impl AValue {
    pub fn into_value(self) -> Value {
        match self {
            AValue::Str(s) => Value::Str(s),
            AValue::Float(f) => Value::Float(f),
            AValue::Int(i) => Value::Int(i),
            AValue::Bool(b) => Value::Boolean(b),
        }
    }
}

#[derive(Debug, Arbitrary)]
pub struct AEvent {
    pub id: String,
    pub event_type: String,
    pub timestamp: i64,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub properties: Vec<(String, AValue)>,
    pub metadata: [Option<String>; 5],
}

impl AEvent {
    pub fn into_event(self) -> Event {
        let [ip_address, user_agent, platform, url, referrer] = self.metadata;
        Event {
            id: self.id,
            event_type: self.event_type,
            timestamp: self.timestamp,
            user_id: self.user_id,
            session_id: self.session_id,
            properties: self
                .properties
                .into_iter()
                .map(|(key, v)| Property {
                    key,
                    value: v.into_value(),
                })
                .collect(),
            metadata: Metadata {
                ip_address,
                user_agent,
                platform,
                url,
                referrer,
            },
        }
    }
}

#[derive(Debug, Arbitrary)]
pub struct APoint {
    pub measurement: String,
    pub tags: Vec<(String, String)>,
    pub fields: Vec<(String, AValue)>,
    pub timestamp: i64,
}

impl APoint {
    pub fn into_point(self) -> MetricPoint {
        MetricPoint {
            measurement: self.measurement,
            tags: self.tags,
            fields: self
                .fields
                .into_iter()
                .map(|(k, v)| (k, v.into_value()))
                .collect(),
            timestamp: self.timestamp,
        }
    }
}
