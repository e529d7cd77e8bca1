//! The canonical event and its JSON form (the HTTP API's schema):
//!
//! ```json
//! {"event_id": "…", "event_type": "purchase", "timestamp": "2026-01-01T10:00:00Z",
//!  "user_id": "u1", "session_id": "s1", "properties": {"amount": 12.5},
//!  "metadata": {"ip_address": "…", "user_agent": "…", "platform": "web", "url": "…", "referrer": "…"}}
//! ```
//!
//! Inside the host an event is the WIT record itself, so it crosses into
//! plugins without conversion.

pub use crate::runtime::{Event, Metadata, Property, Value};
use serde_json::{Map, Value as Json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Values the host fills in when an event leaves them out.
#[derive(Debug, Clone, Default)]
pub struct EventDefaults<'a> {
    /// Receive time, for events without a timestamp (ms since the epoch).
    pub now_ms: i64,
    /// The client's address, for `metadata.ip_address`.
    pub ip_address: Option<&'a str>,
    /// The request's `User-Agent`, for `metadata.user_agent`.
    pub user_agent: Option<&'a str>,
}

/// An event that could not be accepted, naming the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct EventError {
    pub field: String,
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> EventError {
    EventError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Parses a timestamp: epoch milliseconds (number or numeric string) or RFC 3339.
pub fn parse_timestamp(v: &Json) -> Result<i64, String> {
    match v {
        Json::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .ok_or_else(|| format!("{n} is not a valid epoch-milliseconds timestamp")),
        Json::String(s) => {
            if let Ok(ms) = s.parse::<i64>() {
                return Ok(ms);
            }
            OffsetDateTime::parse(s, &Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .map_err(|e| format!("`{s}` is neither RFC 3339 nor epoch milliseconds ({e})"))
        }
        other => Err(format!(
            "expected RFC 3339 text or epoch milliseconds, got {}",
            json_kind(other)
        )),
    }
}

/// Formats epoch milliseconds as RFC 3339 (UTC, millisecond precision).
pub fn format_timestamp(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn opt_string(
    obj: &mut Map<String, Json>,
    key: &str,
    field: &str,
) -> Result<Option<String>, EventError> {
    match obj.remove(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if s.is_empty() => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        // Ids are often numeric in trackers; accept them as text.
        Some(Json::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(err(
            field,
            format!("expected a string, got {}", json_kind(&other)),
        )),
    }
}

/// A JSON value as a typed property value; `None` for null.
pub fn json_to_value(v: Json) -> Option<Value> {
    Some(match v {
        Json::Null => return None,
        Json::Bool(b) => Value::Boolean(b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Str(s),
        // Nested structures are kept, as JSON text, rather than refused.
        other @ (Json::Array(_) | Json::Object(_)) => Value::Str(other.to_string()),
    })
}

pub fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Str(s) => Json::String(s.clone()),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Int(i) => Json::from(*i),
        Value::Boolean(b) => Json::Bool(*b),
    }
}

/// Builds an event from its canonical JSON object.
pub fn from_json(v: Json, d: &EventDefaults<'_>) -> Result<Event, EventError> {
    let Json::Object(mut obj) = v else {
        return Err(err(
            "",
            format!("an event must be a JSON object, got {}", json_kind(&v)),
        ));
    };
    let event_type = match obj.remove("event_type") {
        Some(Json::String(s)) if !s.trim().is_empty() => s,
        Some(Json::String(_)) => return Err(err("event_type", "must not be empty")),
        None | Some(Json::Null) => return Err(err("event_type", "is required")),
        Some(other) => {
            return Err(err(
                "event_type",
                format!("expected a string, got {}", json_kind(&other)),
            ));
        }
    };
    let timestamp = match obj.remove("timestamp") {
        None | Some(Json::Null) => d.now_ms,
        Some(t) => parse_timestamp(&t).map_err(|m| err("timestamp", m))?,
    };
    let id = opt_string(&mut obj, "event_id", "event_id")?
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let user_id = opt_string(&mut obj, "user_id", "user_id")?;
    let session_id = opt_string(&mut obj, "session_id", "session_id")?;
    let properties = match obj.remove("properties") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Object(props)) => props
            .into_iter()
            .filter_map(|(key, v)| json_to_value(v).map(|value| Property { key, value }))
            .collect(),
        Some(other) => {
            return Err(err(
                "properties",
                format!("expected an object, got {}", json_kind(&other)),
            ));
        }
    };
    let mut metadata = match obj.remove("metadata") {
        None | Some(Json::Null) => Map::new(),
        Some(Json::Object(m)) => m,
        Some(other) => {
            return Err(err(
                "metadata",
                format!("expected an object, got {}", json_kind(&other)),
            ));
        }
    };
    let mut md = Metadata {
        ip_address: opt_string(&mut metadata, "ip_address", "metadata.ip_address")?,
        user_agent: opt_string(&mut metadata, "user_agent", "metadata.user_agent")?,
        platform: opt_string(&mut metadata, "platform", "metadata.platform")?,
        url: opt_string(&mut metadata, "url", "metadata.url")?,
        referrer: opt_string(&mut metadata, "referrer", "metadata.referrer")?,
    };
    if let Some(key) = metadata.keys().next() {
        return Err(err(
            &format!("metadata.{key}"),
            "unknown metadata field (known: ip_address, user_agent, platform, url, referrer); put custom data in properties",
        ));
    }
    if let Some(key) = obj.keys().next() {
        return Err(err(
            key,
            "unknown field (known: event_id, event_type, timestamp, user_id, session_id, properties, metadata); put custom data in properties",
        ));
    }
    if md.ip_address.is_none() {
        md.ip_address = d.ip_address.map(str::to_string);
    }
    if md.user_agent.is_none() {
        md.user_agent = d.user_agent.map(str::to_string);
    }
    Ok(Event {
        id,
        event_type,
        timestamp,
        user_id,
        session_id,
        properties,
        metadata: md,
    })
}

/// The canonical JSON form of an event (timestamp in epoch milliseconds).
pub fn to_json(e: &Event) -> Json {
    let mut obj = Map::new();
    obj.insert("event_id".into(), Json::String(e.id.clone()));
    obj.insert("event_type".into(), Json::String(e.event_type.clone()));
    obj.insert("timestamp".into(), Json::from(e.timestamp));
    if let Some(u) = &e.user_id {
        obj.insert("user_id".into(), Json::String(u.clone()));
    }
    if let Some(s) = &e.session_id {
        obj.insert("session_id".into(), Json::String(s.clone()));
    }
    let props: Map<String, Json> = e
        .properties
        .iter()
        .map(|p| (p.key.clone(), value_to_json(&p.value)))
        .collect();
    obj.insert("properties".into(), Json::Object(props));
    let m = &e.metadata;
    let mut md = Map::new();
    for (k, v) in [
        ("ip_address", &m.ip_address),
        ("user_agent", &m.user_agent),
        ("platform", &m.platform),
        ("url", &m.url),
        ("referrer", &m.referrer),
    ] {
        if let Some(v) = v {
            md.insert(k.into(), Json::String(v.clone()));
        }
    }
    obj.insert("metadata".into(), Json::Object(md));
    Json::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_round_trips() {
        let d = EventDefaults {
            now_ms: 5,
            ip_address: Some("10.0.0.1"),
            user_agent: None,
        };
        let e = from_json(
            json!({"event_type":"purchase","timestamp":"2026-01-01T00:00:01.5Z","user_id":"u1",
                   "properties":{"amount":12.5,"qty":2,"ok":true,"n":null}}),
            &d,
        )
        .unwrap();
        assert_eq!(e.timestamp, 1_767_225_601_500);
        assert_eq!(e.metadata.ip_address.as_deref(), Some("10.0.0.1"));
        assert_eq!(e.properties.len(), 3);
        let back = from_json(to_json(&e), &d).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn errors_name_the_field() {
        let d = EventDefaults::default();
        let e = from_json(json!({"timestamp": 1}), &d).unwrap_err();
        assert_eq!(e.field, "event_type");
        let e = from_json(json!({"event_type": "x", "timestamp": "yesterday"}), &d).unwrap_err();
        assert_eq!(e.field, "timestamp");
        let e = from_json(json!({"event_type": "x", "properties": [1]}), &d).unwrap_err();
        assert_eq!(e.field, "properties");
        let e = from_json(json!({"event_type": "x", "metadata": {"ip": "1"}}), &d).unwrap_err();
        assert_eq!(e.field, "metadata.ip");
    }
}
