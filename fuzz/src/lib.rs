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

/// The point InfluxDB's own parser (influxdb-line-protocol, from IOx) reads
/// back from `line`: tags sorted, fields in line order. The same reading as
/// `parse_back` in the host's line-protocol tests (that one stays there:
/// influxdb-line-protocol is only a dev-dependency of the host).
pub fn parse_back(line: &str) -> Result<MetricPoint, String> {
    use influxdb_line_protocol::{FieldValue, parse_lines};
    let mut lines = parse_lines(line);
    let parsed = lines.next().ok_or("no line")?.map_err(|e| e.to_string())?;
    if lines.next().is_some() {
        return Err("more than one line".into());
    }
    let mut tags: Vec<(String, String)> = parsed
        .series
        .tag_set
        .iter()
        .flatten()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tags.sort();
    Ok(MetricPoint {
        measurement: parsed.series.measurement.to_string(),
        tags,
        fields: parsed
            .field_set
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    FieldValue::I64(i) => Value::Int(*i),
                    FieldValue::F64(f) => Value::Float(*f),
                    FieldValue::Boolean(b) => Value::Boolean(*b),
                    FieldValue::String(s) => Value::Str(s.to_string()),
                    // The writer never writes `u`: read it as a float, which
                    // then differs from any field the writer was given.
                    FieldValue::U64(u) => Value::Float(*u as f64),
                };
                (k.to_string(), v)
            })
            .collect(),
        timestamp: parsed.timestamp.ok_or("no timestamp")?,
    })
}
