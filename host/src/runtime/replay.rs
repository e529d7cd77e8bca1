//! The compact form of a batch a stateful plugin processed, kept until its
//! next snapshot so a failed instance can be rebuilt (see `Remembered`).
//!
//! Every batch is kept and few are ever replayed: one buffer per batch costs
//! a copy of its bytes, where a clone of the events costs an allocation and a
//! free per string. Strings are a little-endian `u32` length and their bytes.

use super::{Event, EventFields, Interest, Metadata, MetadataFields, Property, Value};

/// The exact size [`encode`] writes for `events`, so the buffer is allocated
/// once (growing it would copy the whole batch again).
pub fn encoded_len(events: &[Event]) -> usize {
    let str = |s: &str| 4 + s.len();
    let opt = |s: &Option<String>| 1 + s.as_deref().map_or(0, str);
    events
        .iter()
        .map(|e| {
            let m = &e.metadata;
            let props: usize = e
                .properties
                .iter()
                .map(|p| {
                    str(&p.key)
                        + match &p.value {
                            Value::Str(s) => 1 + str(s),
                            Value::Float(_) | Value::Int(_) => 9,
                            Value::Boolean(_) => 1,
                        }
                })
                .sum();
            str(&e.id)
                + str(&e.event_type)
                + 8
                + opt(&e.user_id)
                + opt(&e.session_id)
                + 4
                + props
                + [
                    &m.ip_address,
                    &m.user_agent,
                    &m.platform,
                    &m.url,
                    &m.referrer,
                ]
                .into_iter()
                .map(opt)
                .sum::<usize>()
        })
        .sum()
}

pub fn encode(events: &[Event], out: &mut Vec<u8>) {
    fn str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn opt(out: &mut Vec<u8>, s: &Option<String>) {
        match s {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                str(out, s);
            }
        }
    }
    for e in events {
        str(out, &e.id);
        str(out, &e.event_type);
        out.extend_from_slice(&e.timestamp.to_le_bytes());
        opt(out, &e.user_id);
        opt(out, &e.session_id);
        out.extend_from_slice(&(e.properties.len() as u32).to_le_bytes());
        for p in &e.properties {
            str(out, &p.key);
            match &p.value {
                Value::Str(s) => {
                    out.push(0);
                    str(out, s);
                }
                Value::Float(f) => {
                    out.push(1);
                    out.extend_from_slice(&f.to_le_bytes());
                }
                Value::Int(i) => {
                    out.push(2);
                    out.extend_from_slice(&i.to_le_bytes());
                }
                Value::Boolean(b) => out.push(3 + u8::from(*b)),
            }
        }
        let m = &e.metadata;
        for f in [
            &m.ip_address,
            &m.user_agent,
            &m.platform,
            &m.url,
            &m.referrer,
        ] {
            opt(out, f);
        }
    }
}

/// The next `n` bytes of `b`, which moves past them (for the binary records
/// built on this codec too).
pub(crate) fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if b.len() < n {
        return Err("record truncated".into());
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

pub(crate) fn array<const N: usize>(b: &mut &[u8]) -> Result<[u8; N], String> {
    Ok(take(b, N)?.try_into().expect("N bytes"))
}

/// Reads back `n` events written by [`encode`].
pub fn decode(b: &[u8], n: usize) -> Result<Vec<Event>, String> {
    decode_wanted(b, n, None)
}

/// Reads back `n` events written by [`encode`], only what a plugin with
/// interest `wanted` reads (all of each event with `None`); the rest is left
/// empty, as projection would hide it, and a skipped string costs no
/// allocation. The id, type and time are always read.
pub fn decode_wanted(
    mut b: &[u8],
    n: usize,
    wanted: Option<&Interest>,
) -> Result<Vec<Event>, String> {
    fn u32(b: &mut &[u8]) -> Result<usize, String> {
        Ok(u32::from_le_bytes(array(b)?) as usize)
    }
    fn bytes<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], String> {
        let n = u32(b)?;
        take(b, n)
    }
    fn string(b: &mut &[u8]) -> Result<String, String> {
        String::from_utf8(bytes(b)?.to_vec()).map_err(|e| e.to_string())
    }
    fn opt(b: &mut &[u8], keep: bool) -> Result<Option<String>, String> {
        match take(b, 1)?[0] {
            0 => Ok(None),
            _ if keep => string(b).map(Some),
            _ => bytes(b).map(|_| None),
        }
    }
    let field = |f| wanted.is_none_or(|w| w.fields.contains(f));
    let md = |f| wanted.is_none_or(|w| w.metadata.contains(f));
    let keys = wanted.and_then(|w| w.properties.as_deref());
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        let id = string(&mut b)?;
        let event_type = string(&mut b)?;
        let timestamp = i64::from_le_bytes(array(&mut b)?);
        let user_id = opt(&mut b, field(EventFields::USER_ID))?;
        let session_id = opt(&mut b, field(EventFields::SESSION_ID))?;
        let count = u32(&mut b)?;
        let mut properties = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let key = bytes(&mut b)?;
            let keep = keys.is_none_or(|keys| keys.iter().any(|k| k.as_bytes() == key));
            let tag = take(&mut b, 1)?[0];
            let value = match tag {
                0 if keep => Value::Str(string(&mut b)?),
                0 => {
                    bytes(&mut b)?;
                    continue;
                }
                1 => Value::Float(f64::from_le_bytes(array(&mut b)?)),
                2 => Value::Int(i64::from_le_bytes(array(&mut b)?)),
                3 => Value::Boolean(false),
                4 => Value::Boolean(true),
                t => return Err(format!("unknown value tag {t}")),
            };
            if keep {
                let key = String::from_utf8(key.to_vec()).map_err(|e| e.to_string())?;
                properties.push(Property { key, value });
            }
        }
        let metadata = Metadata {
            ip_address: opt(&mut b, md(MetadataFields::IP_ADDRESS))?,
            user_agent: opt(&mut b, md(MetadataFields::USER_AGENT))?,
            platform: opt(&mut b, md(MetadataFields::PLATFORM))?,
            url: opt(&mut b, md(MetadataFields::URL))?,
            referrer: opt(&mut b, md(MetadataFields::REFERRER))?,
        };
        events.push(Event {
            id,
            event_type,
            timestamp,
            user_id,
            session_id,
            properties,
            metadata,
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_back_as_they_were() {
        let full = Event {
            id: "0192-ü".into(),
            event_type: "purchase".into(),
            timestamp: -1_700_000_000_123,
            user_id: Some("u1".into()),
            session_id: None,
            properties: vec![
                Property {
                    key: "s".into(),
                    value: Value::Str("".into()),
                },
                Property {
                    key: "f".into(),
                    value: Value::Float(-0.5),
                },
                Property {
                    key: "i".into(),
                    value: Value::Int(i64::MIN),
                },
                Property {
                    key: "t".into(),
                    value: Value::Boolean(true),
                },
                Property {
                    key: "n".into(),
                    value: Value::Boolean(false),
                },
            ],
            metadata: Metadata {
                ip_address: Some("10.0.0.1".into()),
                user_agent: None,
                platform: Some("".into()),
                url: Some("https://x/é".into()),
                referrer: None,
            },
        };
        let mut bare = full.clone();
        bare.user_id = None;
        bare.properties.clear();
        bare.metadata = Metadata {
            ip_address: None,
            user_agent: None,
            platform: None,
            url: None,
            referrer: None,
        };
        let events = vec![full, bare.clone(), bare];
        let mut buf = Vec::new();
        encode(&events, &mut buf);
        assert_eq!(buf.len(), encoded_len(&events));
        assert_eq!(decode(&buf, 3).unwrap(), events);
        assert!(
            decode(&buf[..buf.len() - 1], 3).is_err(),
            "a truncated record is an error"
        );
    }

    #[test]
    fn a_wanted_decode_skips_what_is_not_wanted() {
        let prop = |key: &str, value| Property {
            key: key.into(),
            value,
        };
        let md = |ip: Option<&str>, url: Option<&str>| Metadata {
            ip_address: ip.map(Into::into),
            user_agent: None,
            platform: None,
            url: url.map(Into::into),
            referrer: None,
        };
        let full = Event {
            id: "e1".into(),
            event_type: "purchase".into(),
            timestamp: 42,
            user_id: Some("u1".into()),
            session_id: Some("s1".into()),
            properties: vec![
                prop("s", Value::Str("x".into())),
                prop("skipped", Value::Str("long text".into())),
                prop("f", Value::Float(2.5)),
                prop("i", Value::Int(7)),
            ],
            metadata: md(Some("10.0.0.1"), Some("https://a/b")),
        };
        let mut buf = Vec::new();
        encode(std::slice::from_ref(&full), &mut buf);
        let keys = ["f".to_string(), "s".to_string()];
        let wanted = Interest {
            event_types: Vec::new(),
            properties: Some(keys.to_vec()),
            metadata: MetadataFields::URL,
            fields: EventFields::SESSION_ID,
        };
        // Worked out by hand: the wanted fields, properties in their order.
        let expected = Event {
            id: "e1".into(),
            event_type: "purchase".into(),
            timestamp: 42,
            user_id: None,
            session_id: Some("s1".into()),
            properties: vec![
                prop("s", Value::Str("x".into())),
                prop("f", Value::Float(2.5)),
            ],
            metadata: md(None, Some("https://a/b")),
        };
        assert_eq!(
            decode_wanted(&buf, 1, Some(&wanted)).unwrap(),
            vec![expected]
        );
        assert_eq!(decode_wanted(&buf, 1, None).unwrap(), vec![full]);
        assert!(decode_wanted(&buf[..buf.len() - 3], 1, Some(&wanted)).is_err());
    }
}
