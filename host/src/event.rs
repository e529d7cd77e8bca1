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

use crate::bindings::types::MetricPoint;
pub use crate::bindings::types::{Event, EventFields, Metadata, MetadataFields, Property, Value};
use serde_json::{Map, Value as Json, json};
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
    /// How far ahead of `now_ms` an event's time may be (`engine.max_future`);
    /// `None`: no bound (offline runs over arbitrary history).
    pub max_future_ms: Option<i64>,
}

/// The latest event time RFC 3339 can write (9999-12-31T23:59:59.999Z).
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

impl EventDefaults<'_> {
    /// Checks an event time against what the engine can trust: at or after
    /// the epoch, within what RFC 3339 can write, and not further ahead of
    /// the receive time than `max_future_ms`. One event from the far future
    /// would move the watermark for everyone and make all later traffic late.
    pub fn check_time(&self, ts: i64) -> Result<i64, EventError> {
        let fault = |kind, message: String| EventError {
            field: "timestamp".into(),
            message,
            kind,
        };
        if ts < 0 {
            return Err(fault(
                ErrorKind::TimeOutOfRange,
                format!(
                    "{ts} ms is before 1970-01-01T00:00:00Z; event time starts at the Unix epoch"
                ),
            ));
        }
        if ts > MAX_TIMESTAMP_MS {
            return Err(fault(
                ErrorKind::TimeOutOfRange,
                format!(
                    "{ts} ms is after 9999-12-31T23:59:59.999Z, the latest time RFC 3339 can write"
                ),
            ));
        }
        if let Some(max) = self.max_future_ms
            && ts > self.now_ms.saturating_add(max)
        {
            return Err(fault(
                ErrorKind::TooFarAhead,
                format!(
                    "{} is {} ahead of the receive time {}; at most {} is allowed (engine.max_future)",
                    format_timestamp(ts),
                    humantime::format_duration(std::time::Duration::from_millis(
                        (ts - self.now_ms) as u64 / 1000 * 1000
                    )),
                    format_timestamp(self.now_ms),
                    humantime::format_duration(std::time::Duration::from_millis(max as u64)),
                ),
            ));
        }
        Ok(ts)
    }
}

/// An event that could not be accepted, naming the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct EventError {
    pub field: String,
    pub message: String,
    pub kind: ErrorKind,
}

/// What kind of fault an [`EventError`] is, for the rejection counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A missing, unknown or mistyped field.
    Invalid,
    /// A timestamp further ahead of the receive time than `engine.max_future`.
    TooFarAhead,
    /// A timestamp before 1970 or beyond what RFC 3339 can write.
    TimeOutOfRange,
    /// The event broke its type's schema.
    Schema,
}

fn err(field: &str, message: impl Into<String>) -> EventError {
    EventError {
        field: field.to_string(),
        message: message.into(),
        kind: ErrorKind::Invalid,
    }
}

/// Bytes 13..16 of the ids the server makes (a UUIDv7 whose last three
/// random bytes are these), so the duplicate check can tell them from a
/// client's: a fresh id never repeats and is not worth remembering.
const SERVER_ID_MARK: [u8; 3] = *b"NP\x01";

/// An event id made by the server (for an event sent without one): a
/// UUIDv7, time-ordered, with 50 random bits.
pub fn server_event_id() -> String {
    let mut b = *uuid::Uuid::now_v7().as_bytes();
    b[13..].copy_from_slice(&SERVER_ID_MARK);
    uuid::Uuid::from_bytes(b).to_string()
}

/// Whether `u` is an id [`server_event_id`] made (here or on another host).
pub fn is_server_event_id(u: &uuid::Uuid) -> bool {
    u.get_version_num() == 7 && u.as_bytes()[13..] == SERVER_ID_MARK
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
            .or_else(|| n.as_f64().and_then(float_ms))
            .ok_or_else(|| format!("{n} {TOO_BIG}")),
        Json::String(s) => parse_timestamp_text(s),
        other => Err(format!(
            "expected RFC 3339 text or epoch milliseconds, got {}",
            json_kind(other)
        )),
    }
}

/// Parses timestamp text: epoch milliseconds or RFC 3339.
fn parse_timestamp_text(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if !s.is_empty()
        && s.trim_start_matches('-')
            .bytes()
            .all(|b| b.is_ascii_digit())
    {
        return Err(format!("`{s}` {TOO_BIG}"));
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|e| format!("`{s}` is neither RFC 3339 nor epoch milliseconds ({e})"))
}

/// How a timestamp beyond what an `i64` of milliseconds holds is described.
const TOO_BIG: &str = "does not fit in 64-bit epoch milliseconds";

/// A fractional epoch-milliseconds number as whole milliseconds, if it fits.
fn float_ms(f: f64) -> Option<i64> {
    // 2^63 as f64 is the first value that no longer fits.
    (f.is_finite() && f.abs() < 9_223_372_036_854_775_808.0).then_some(f as i64)
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
        Some(t) => parse_timestamp(&t).map_err(|m| {
            let mut e = err("timestamp", m);
            if e.message.contains(TOO_BIG) {
                e.kind = ErrorKind::TimeOutOfRange;
            }
            e
        })?,
    };
    let timestamp = d.check_time(timestamp)?;
    let id = opt_string(&mut obj, "event_id", "event_id")?.unwrap_or_else(server_event_id);
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

/// Parses a body of canonical events (one object, an array, or NDJSON lines)
/// straight into events, without building JSON values first: the fast path
/// for valid input. `None` if anything is off (a bad field, an unknown or
/// duplicate key...): the caller then takes the [`from_json`] path, which
/// names the problem. Both paths build the same events from valid input.
pub fn parse_events(body: &[u8], ndjson: bool, d: &EventDefaults<'_>) -> Option<Vec<Event>> {
    // One SIMD pass over the whole body; parsing text then skips the check
    // of every string (serde_json's byte parser checks each one on its own).
    let body = simdutf8::basic::from_utf8(body).ok()?;
    let all = Keep::all();
    if ndjson {
        return body
            .split('\n')
            .filter(|line| !line.trim_ascii().is_empty())
            .map(|line| parse_event_kept(line, d, &all))
            .collect();
    }
    match body.trim_ascii_start().as_bytes().first()? {
        b'[' => {
            use serde::de::DeserializeSeed;
            let mut de = serde_json::Deserializer::from_str(body);
            let events = wire::Events(&all).deserialize(&mut de).ok()?;
            de.end().ok()?;
            events.into_iter().map(|w| w.into_event(d)).collect()
        }
        b'{' => Some(vec![parse_event_kept(body, d, &all)?]),
        _ => None,
    }
}

/// The fields of an event a reader builds; the others it checks as
/// [`from_json`] would, and leaves out (a replay builds only what its
/// pipeline reads). The id, type and time are always built.
#[derive(Debug, Clone)]
pub struct Keep {
    /// Property keys, sorted; `None`: every property.
    pub properties: Option<Vec<String>>,
    pub metadata: MetadataFields,
    /// `user-id` and `session-id` (the id is always kept).
    pub fields: EventFields,
}

impl Keep {
    pub fn all() -> Keep {
        Keep {
            properties: None,
            metadata: MetadataFields::all(),
            fields: EventFields::all(),
        }
    }

    /// Nothing but the id, type and time.
    pub fn none() -> Keep {
        Keep {
            properties: Some(Vec::new()),
            metadata: MetadataFields::empty(),
            fields: EventFields::empty(),
        }
    }

    /// Also keeps these properties (`None`: every one), metadata and fields.
    pub fn add(
        &mut self,
        properties: Option<&[String]>,
        metadata: MetadataFields,
        fields: EventFields,
    ) {
        match (&mut self.properties, properties) {
            (Some(keys), Some(more)) => {
                keys.extend(more.iter().cloned());
                keys.sort();
                keys.dedup();
            }
            (Some(_), None) => self.properties = None,
            (None, _) => {}
        }
        self.metadata |= metadata;
        self.fields |= fields;
    }

    fn property(&self, key: &str) -> bool {
        self.properties
            .as_ref()
            .is_none_or(|keys| keys.binary_search_by(|k| k.as_str().cmp(key)).is_ok())
    }
}

/// One JSON event (a line of NDJSON) into an event with the fields of
/// `keep`; `None` whenever [`from_json`] would refuse it (the caller then
/// takes that path, which names the problem), or treat it specially.
pub fn parse_event_kept(text: &str, d: &EventDefaults<'_>, keep: &Keep) -> Option<Event> {
    scan::event(text, d, keep).or_else(|| parse_event_serde(text, d, keep))
}

/// [`parse_event_kept`] by serde alone: what [`scan`] leaves.
fn parse_event_serde(text: &str, d: &EventDefaults<'_>, keep: &Keep) -> Option<Event> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(text);
    let event = wire::EventSeed(keep).deserialize(&mut de).ok()?;
    de.end().ok()?;
    event.into_event(d)
}

mod scan;

/// Metadata with every field absent.
pub fn empty_metadata() -> Metadata {
    Metadata {
        ip_address: None,
        user_agent: None,
        platform: None,
        url: None,
        referrer: None,
    }
}

/// The canonical JSON event as serde types, for [`parse_events`]. Every
/// visitor accepts exactly what [`from_json`] accepts, or fails; fields
/// left out by a [`Keep`] are checked the same way and not built.
mod wire {
    use super::{
        EventDefaults, EventFields, Keep, Metadata, MetadataFields, Property, Value, empty_metadata,
    };
    use serde::Deserialize;
    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use std::borrow::Cow;
    use std::fmt;

    #[derive(Default)]
    pub struct Event {
        event_id: Option<Text>,
        event_type: Option<String>,
        timestamp: Option<Time>,
        user_id: Option<Text>,
        session_id: Option<Text>,
        properties: Option<Props>,
        metadata: Option<Metadata>,
    }

    #[derive(Deserialize, Clone, Copy)]
    #[serde(field_identifier, rename_all = "snake_case")]
    enum Field {
        EventId,
        EventType,
        Timestamp,
        UserId,
        SessionId,
        Properties,
        Metadata,
    }

    #[derive(Deserialize, Clone, Copy)]
    #[serde(field_identifier, rename_all = "snake_case")]
    enum MetaField {
        IpAddress,
        UserAgent,
        Platform,
        Url,
        Referrer,
    }

    /// A seed that takes a JSON object through its own `visit_map`.
    macro_rules! map_seed {
        ($seed:ty, $value:ty) => {
            impl<'de> DeserializeSeed<'de> for $seed {
                type Value = $value;
                fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<$value, D::Error> {
                    d.deserialize_map(self)
                }
            }
        };
    }

    /// Fails on a key seen before in the same object (`seen`: a bit per key).
    fn once<E: de::Error>(seen: &mut u8, bit: u8) -> Result<(), E> {
        if *seen & (1 << bit) != 0 {
            return Err(E::custom("duplicate field"));
        }
        *seen |= 1 << bit;
        Ok(())
    }

    /// An event: a JSON object (never an array, which derived serde
    /// structs would also take).
    pub struct EventSeed<'k>(pub &'k Keep);

    map_seed!(EventSeed<'_>, Event);

    impl<'de> Visitor<'de> for EventSeed<'_> {
        type Value = Event;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an event object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
            let keep = self.0;
            let mut e = Event::default();
            let mut seen = 0u8;
            let text = |kept: bool| Nullable(TextSeed { kept });
            while let Some(field) = map.next_key::<Field>()? {
                once(&mut seen, field as u8)?;
                match field {
                    Field::EventId => e.event_id = map.next_value_seed(text(true))?,
                    Field::EventType => e.event_type = map.next_value()?,
                    Field::Timestamp => e.timestamp = map.next_value()?,
                    Field::UserId => {
                        e.user_id =
                            map.next_value_seed(text(keep.fields.contains(EventFields::USER_ID)))?
                    }
                    Field::SessionId => {
                        e.session_id = map
                            .next_value_seed(text(keep.fields.contains(EventFields::SESSION_ID)))?
                    }
                    Field::Properties => {
                        e.properties = map.next_value_seed(Nullable(PropsSeed(keep)))?
                    }
                    Field::Metadata => {
                        e.metadata = map.next_value_seed(Nullable(MetaSeed(keep.metadata)))?
                    }
                }
            }
            Ok(e)
        }
    }

    /// A JSON array of events.
    pub struct Events<'k>(pub &'k Keep);

    impl<'de> DeserializeSeed<'de> for Events<'_> {
        type Value = Vec<Event>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Event>, D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for Events<'_> {
        type Value = Vec<Event>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of events")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Event>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(e) = seq.next_element_seed(EventSeed(self.0))? {
                out.push(e);
            }
            Ok(out)
        }
    }

    /// `null` as `None`, anything else through the inner seed.
    struct Nullable<S>(S);

    impl<'de, S: DeserializeSeed<'de> + Copy> DeserializeSeed<'de> for Nullable<S> {
        type Value = Option<S::Value>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_option(self)
        }
    }

    impl<'de, S: DeserializeSeed<'de> + Copy> Visitor<'de> for Nullable<S> {
        type Value = Option<S::Value>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a value or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            self.0.deserialize(d).map(Some)
        }
    }

    #[derive(Clone, Copy)]
    struct MetaSeed(MetadataFields);

    map_seed!(MetaSeed, Metadata);

    impl<'de> Visitor<'de> for MetaSeed {
        type Value = Metadata;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a metadata object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
            let mut md = empty_metadata();
            let mut seen = 0u8;
            while let Some(field) = map.next_key::<MetaField>()? {
                once(&mut seen, field as u8)?;
                let (flag, slot) = match field {
                    MetaField::IpAddress => (MetadataFields::IP_ADDRESS, &mut md.ip_address),
                    MetaField::UserAgent => (MetadataFields::USER_AGENT, &mut md.user_agent),
                    MetaField::Platform => (MetadataFields::PLATFORM, &mut md.platform),
                    MetaField::Url => (MetadataFields::URL, &mut md.url),
                    MetaField::Referrer => (MetadataFields::REFERRER, &mut md.referrer),
                };
                let text = map.next_value_seed(Nullable(TextSeed {
                    kept: self.0.contains(flag),
                }))?;
                *slot = text.and_then(|t| t.0);
            }
            Ok(md)
        }
    }

    impl Event {
        pub fn into_event(self, d: &EventDefaults<'_>) -> Option<super::Event> {
            let event_type = self.event_type.filter(|t| !t.trim().is_empty())?;
            let text = |t: Option<Text>| t.and_then(|t| t.0);
            let md = self.metadata.unwrap_or_else(empty_metadata);
            let timestamp = d
                .check_time(self.timestamp.map_or(d.now_ms, |t| t.0))
                .ok()?;
            Some(super::Event {
                id: text(self.event_id).unwrap_or_else(super::server_event_id),
                event_type,
                timestamp,
                user_id: text(self.user_id),
                session_id: text(self.session_id),
                properties: self.properties.map(|p| p.0).unwrap_or_default(),
                metadata: Metadata {
                    ip_address: md.ip_address.or_else(|| d.ip_address.map(str::to_string)),
                    user_agent: md.user_agent.or_else(|| d.user_agent.map(str::to_string)),
                    ..md
                },
            })
        }
    }

    /// An id or other text field: a string (empty means absent) or a number.
    struct Text(Option<String>);

    /// A [`Text`], built only if `kept` (else checked and left out).
    #[derive(Clone, Copy)]
    struct TextSeed {
        kept: bool,
    }

    impl<'de> DeserializeSeed<'de> for TextSeed {
        type Value = Text;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Text, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl Visitor<'_> for TextSeed {
        type Value = Text;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or a number")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Text, E> {
            Ok(Text((self.kept && !s.is_empty()).then(|| s.to_string())))
        }
        fn visit_string<E: de::Error>(self, s: String) -> Result<Text, E> {
            Ok(Text((self.kept && !s.is_empty()).then_some(s)))
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Text, E> {
            Ok(Text(self.kept.then(|| n.to_string())))
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Text, E> {
            Ok(Text(self.kept.then(|| n.to_string())))
        }
        fn visit_f64<E: de::Error>(self, n: f64) -> Result<Text, E> {
            serde_json::Number::from_f64(n)
                .map(|n| Text(self.kept.then(|| n.to_string())))
                .ok_or_else(|| E::custom("not a finite number"))
        }
    }

    /// Epoch milliseconds (a number or numeric string) or RFC 3339 text.
    struct Time(i64);

    impl<'de> Deserialize<'de> for Time {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Time;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("RFC 3339 text or epoch milliseconds")
                }
                fn visit_i64<E: de::Error>(self, n: i64) -> Result<Time, E> {
                    Ok(Time(n))
                }
                fn visit_u64<E: de::Error>(self, n: u64) -> Result<Time, E> {
                    i64::try_from(n)
                        .map(Time)
                        .map_err(|_| E::custom("does not fit in 64-bit epoch milliseconds"))
                }
                fn visit_f64<E: de::Error>(self, n: f64) -> Result<Time, E> {
                    super::float_ms(n)
                        .map(Time)
                        .ok_or_else(|| E::custom("does not fit in 64-bit epoch milliseconds"))
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<Time, E> {
                    super::parse_timestamp_text(s).map(Time).map_err(E::custom)
                }
            }
            d.deserialize_any(V)
        }
    }

    /// Properties in key order, nulls left out, as the JSON-value path builds them.
    struct Props(Vec<Property>);

    /// [`Props`] with the keys `keep` reads; every key is still checked
    /// (an object, no key twice).
    #[derive(Clone, Copy)]
    struct PropsSeed<'k>(&'k Keep);

    map_seed!(PropsSeed<'_>, Props);

    impl<'de> Visitor<'de> for PropsSeed<'_> {
        type Value = Props;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Props, A::Error> {
            let mut props: Vec<(Cow<'de, str>, Option<Value>)> = Vec::new();
            while let Some(Key(key)) = map.next_key()? {
                let value = if self.0.property(&key) {
                    map.next_value::<PropValue>()?.0
                } else {
                    map.next_value::<IgnoredAny>()?;
                    None
                };
                props.push((key, value));
            }
            props.sort_by(|a, b| a.0.cmp(&b.0));
            if props.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(de::Error::custom("duplicate property"));
            }
            Ok(Props(
                props
                    .into_iter()
                    .filter_map(|(key, v)| {
                        v.map(|value| Property {
                            key: key.into_owned(),
                            value,
                        })
                    })
                    .collect(),
            ))
        }
    }

    /// A property key, borrowed from the text where it has no escapes.
    struct Key<'de>(Cow<'de, str>);

    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a key")
                }
                fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Borrowed(s)))
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(s.to_string())))
                }
                fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(s)))
                }
            }
            d.deserialize_str(V)
        }
    }

    struct PropValue(Option<Value>);

    impl<'de> Deserialize<'de> for PropValue {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = PropValue;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a JSON value")
                }
                fn visit_unit<E: de::Error>(self) -> Result<PropValue, E> {
                    Ok(PropValue(None))
                }
                fn visit_none<E: de::Error>(self) -> Result<PropValue, E> {
                    Ok(PropValue(None))
                }
                fn visit_bool<E: de::Error>(self, b: bool) -> Result<PropValue, E> {
                    Ok(PropValue(Some(Value::Boolean(b))))
                }
                fn visit_i64<E: de::Error>(self, n: i64) -> Result<PropValue, E> {
                    Ok(PropValue(Some(Value::Int(n))))
                }
                fn visit_u64<E: de::Error>(self, n: u64) -> Result<PropValue, E> {
                    Ok(PropValue(Some(match i64::try_from(n) {
                        Ok(i) => Value::Int(i),
                        Err(_) => Value::Float(n as f64),
                    })))
                }
                fn visit_f64<E: de::Error>(self, n: f64) -> Result<PropValue, E> {
                    Ok(PropValue(Some(Value::Float(n))))
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<PropValue, E> {
                    Ok(PropValue(Some(Value::Str(s.to_string()))))
                }
                fn visit_string<E: de::Error>(self, s: String) -> Result<PropValue, E> {
                    Ok(PropValue(Some(Value::Str(s))))
                }
                // Nested structures are kept as JSON text, as `json_to_value` does.
                fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<PropValue, A::Error> {
                    let v =
                        serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                    Ok(PropValue(Some(Value::Str(v.to_string()))))
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PropValue, A::Error> {
                    let v =
                        serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                    Ok(PropValue(Some(Value::Str(v.to_string()))))
                }
            }
            d.deserialize_any(V)
        }
    }
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

/// A metric point as a JSON record (`plugin run`, the live stream).
pub fn point_to_json(p: &MetricPoint) -> Json {
    let tags: Map<String, Json> = p
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), Json::String(v.clone())))
        .collect();
    let fields: Map<String, Json> = p
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect();
    json!({
        "measurement": p.measurement,
        "tags": tags,
        "fields": fields,
        "timestamp": p.timestamp,
    })
}

/// Checks a field path of an event, as `partition_by` names one: `event_type`,
/// `user_id`, `session_id`, `metadata.<field>` or `properties.<key>`.
pub fn check_field(path: &str) -> Result<(), String> {
    match path {
        "event_type"
        | "user_id"
        | "session_id"
        | "metadata.ip_address"
        | "metadata.user_agent"
        | "metadata.platform"
        | "metadata.url"
        | "metadata.referrer" => Ok(()),
        p if p.strip_prefix("properties.").is_some_and(|k| !k.is_empty()) => Ok(()),
        p => Err(format!(
            "`{p}` is not an event field; use event_type, user_id, session_id, metadata.<field> or properties.<key>"
        )),
    }
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
            max_future_ms: None,
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
    fn the_fast_path_builds_what_the_value_path_builds() {
        let d = EventDefaults {
            now_ms: 7,
            ip_address: Some("10.0.0.9"),
            user_agent: Some("curl/8"),
            max_future_ms: None,
        };
        let body = r#"[
            {"event_id":"e1","event_type":"purchase","timestamp":"2026-01-01T00:00:01.5Z",
             "user_id":42,"session_id":"","properties":{"z":1,"amount":12.5,"big":18446744073709551615,
             "ok":true,"n":null,"tags":["a",{"b":2}],"obj":{"y":1,"x":[]},"s":"t\u00e9"},
             "metadata":{"ip_address":"1.2.3.4","url":null,"referrer":"https://r/","platform":"web"}},
            {"event_id":"e2","event_type":" page_view","timestamp":1767225601500.9,"user_id":1.5},
            {"event_id":"e3","event_type":"x","timestamp":"1767225601500","properties":null,"metadata":null}
        ]"#;
        let fast =
            parse_events(body.as_bytes(), false, &d).expect("valid input takes the fast path");
        let Json::Array(items) = serde_json::from_str(body).unwrap() else {
            unreachable!()
        };
        let slow: Vec<Event> = items
            .into_iter()
            .map(|v| from_json(v, &d).unwrap())
            .collect();
        assert_eq!(fast, slow);
        let ndjson = "{\"event_id\":\"a\",\"event_type\":\"x\",\"timestamp\":5}\n\n{\"event_id\":\"b\",\"event_type\":\"y\"}\n";
        let fast = parse_events(ndjson.as_bytes(), true, &d).unwrap();
        assert_eq!(fast.len(), 2);
        assert_eq!((fast[0].timestamp, fast[1].timestamp), (5, 7));
        let one = parse_events(br#" {"event_type":"x"} "#, false, &d).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].id.len(), 36, "a UUID is assigned");
        // Whatever the value path would refuse (or treat specially) falls back to it.
        for bad in [
            r#"{"timestamp":1}"#,
            r#"{"event_type":""}"#,
            r#"{"event_type":"x","extra":1}"#,
            r#"{"event_type":"x","event_type":"y"}"#,
            r#"{"event_type":"x","properties":{"a":1,"a":2}}"#,
            r#"{"event_type":"x","metadata":{"ip":"1"}}"#,
            r#"{"event_type":"x","user_id":true}"#,
            r#"{"event_type":"x","timestamp":"yesterday"}"#,
            r#"[{"event_type":"x"},{"event_type":7}]"#,
            r#""text""#,
            r#"{"event_type":"x"} trailing"#,
        ] {
            assert!(parse_events(bad.as_bytes(), false, &d).is_none(), "{bad}");
        }
    }

    /// What `keep` leaves of a whole event: a reference for the parser's
    /// projection.
    fn projected(mut e: Event, keep: &Keep) -> Event {
        if let Some(keys) = &keep.properties {
            e.properties.retain(|p| keys.contains(&p.key));
        }
        let md = &mut e.metadata;
        for (flag, field) in [
            (MetadataFields::IP_ADDRESS, &mut md.ip_address),
            (MetadataFields::USER_AGENT, &mut md.user_agent),
            (MetadataFields::PLATFORM, &mut md.platform),
            (MetadataFields::URL, &mut md.url),
            (MetadataFields::REFERRER, &mut md.referrer),
        ] {
            if !keep.metadata.contains(flag) {
                *field = None;
            }
        }
        if !keep.fields.contains(EventFields::USER_ID) {
            e.user_id = None;
        }
        if !keep.fields.contains(EventFields::SESSION_ID) {
            e.session_id = None;
        }
        e
    }

    #[test]
    fn a_kept_parse_builds_what_it_keeps_and_checks_the_rest() {
        let d = EventDefaults::default();
        let lines = [
            r#"{"event_id":"e1","event_type":"purchase","timestamp":5,"user_id":42,"session_id":"s",
                "properties":{"z":1,"amount":12.5,"tags":["a"],"n":null,"s\u00e9":"t"},
                "metadata":{"ip_address":"1.2.3.4","user_agent":"ua","url":null,"referrer":"r","platform":"web"}}"#,
            r#"{"event_id":"e2","event_type":"x","timestamp":"2026-01-01T00:00:00Z","user_id":1.5,"properties":null,"metadata":null}"#,
            r#"{"metadata":{"platform":"ios"},"event_type":"y","event_id":7,"timestamp":9}"#,
        ];
        let mut some = Keep::none();
        some.add(
            Some(&["amount".to_string(), "sé".to_string()]),
            MetadataFields::IP_ADDRESS | MetadataFields::PLATFORM,
            EventFields::SESSION_ID,
        );
        for keep in [Keep::all(), Keep::none(), some] {
            for line in lines {
                let whole = from_json(serde_json::from_str(line).unwrap(), &d).unwrap();
                let kept = parse_event_kept(line, &d, &keep).expect(line);
                assert_eq!(kept, projected(whole, &keep), "{keep:?} {line}");
            }
            // What the value path refuses is refused, read or not; a key
            // twice is left to the value path (which takes the last).
            for (bad, refused) in [
                (r#"{"event_type":"x","user_id":true}"#, true),
                (r#"{"event_type":"x","session_id":{}}"#, true),
                (r#"{"event_type":"x","properties":{"a":1,"a":2}}"#, false),
                (r#"{"event_type":"x","properties":[1]}"#, true),
                (r#"{"event_type":"x","properties":5}"#, true),
                (r#"{"event_type":"x","metadata":{"ip":"1"}}"#, true),
                (
                    r#"{"event_type":"x","metadata":{"url":"a","url":"b"}}"#,
                    false,
                ),
                (r#"{"event_type":"x","metadata":{"user_agent":[]}}"#, true),
                (r#"{"event_type":"x","user_id":1,"user_id":2}"#, false),
                (r#"{"event_type":"x","extra":1}"#, true),
                (r#"["e","x"]"#, true),
                (r#"{"event_type":"x"} trailing"#, true),
            ] {
                let value_path = serde_json::from_str(bad)
                    .ok()
                    .and_then(|v| from_json(v, &d).ok());
                assert_eq!(value_path.is_none(), refused, "the value path on {bad}");
                assert!(parse_event_kept(bad, &d, &keep).is_none(), "{keep:?} {bad}");
            }
        }
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
