//! The records of the repartition topics: many items per record, in a binary
//! form, so a keyed task reads events without parsing JSON and the broker
//! handles one record per batch and partition instead of one per event.
//!
//! A record (version 1, all integers little-endian):
//! - `u8` version, `u32` number of items;
//! - per item, a fixed index entry: `u8` kind (0 event, 1 marker with an
//!   event time, 2 idle marker), `i32` source partition; then for an event
//!   `i64` source offset, `u32` index within that source record, `i64` event
//!   time and the key (`u32` length and bytes); for a timed marker `i64` time;
//! - `u32` number of events, then the events in the replay codec
//!   ([`crate::runtime::replay`]), in item order.
//!
//! The index comes first, so the event time, key and origin of every item
//! are read without decoding an event. The version byte cannot be `{`, so a
//! JSON record of an older release is told apart and reported.

use crate::runtime::replay::{self, array, take};
use crate::runtime::{Event, Interest};

pub const VERSION: u8 = 1;

/// Above this many bytes, a writer's record is closed and a new one begun
/// (well under the brokers' default 1 MB record limit).
pub const MAX_RECORD_BYTES: usize = 512 * 1024;

/// What a keyed task reads off its partition.
#[derive(Debug, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "nearly every item is an event; boxing them would cost an allocation each"
)]
pub enum Item {
    /// An event, with the source partition, offset and index it came from.
    Event {
        src: i32,
        offset: i64,
        index: u32,
        event: Event,
    },
    /// Source partition `src` reached this event time (`None`: it is idle).
    Marker(i32, Option<i64>),
}

/// Builds one record's bytes.
#[derive(Default)]
pub struct Writer {
    index: Vec<u8>,
    items: u32,
    events: u32,
    body: Vec<u8>,
}

impl Writer {
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    pub fn len_bytes(&self) -> usize {
        self.index.len() + self.body.len()
    }

    /// Adds an event whose replay-codec form is `encoded`.
    pub fn event(
        &mut self,
        src: i32,
        offset: i64,
        index: u32,
        e: &Event,
        key: &str,
        encoded: &[u8],
    ) {
        self.index.push(0);
        self.index.extend_from_slice(&src.to_le_bytes());
        self.index.extend_from_slice(&offset.to_le_bytes());
        self.index.extend_from_slice(&index.to_le_bytes());
        self.index.extend_from_slice(&e.timestamp.to_le_bytes());
        self.index
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.index.extend_from_slice(key.as_bytes());
        self.body.extend_from_slice(encoded);
        self.items += 1;
        self.events += 1;
    }

    pub fn marker(&mut self, src: i32, ts: Option<i64>) {
        match ts {
            Some(ts) => {
                self.index.push(1);
                self.index.extend_from_slice(&src.to_le_bytes());
                self.index.extend_from_slice(&ts.to_le_bytes());
            }
            None => {
                self.index.push(2);
                self.index.extend_from_slice(&src.to_le_bytes());
            }
        }
        self.items += 1;
    }

    /// The record's bytes; the writer is empty again.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(13 + self.index.len() + self.body.len());
        out.push(VERSION);
        out.extend_from_slice(&self.items.to_le_bytes());
        out.extend_from_slice(&self.index);
        out.extend_from_slice(&self.events.to_le_bytes());
        out.extend_from_slice(&self.body);
        *self = Writer::default();
        out
    }
}

/// The replay-codec form of a batch, event by event: the bytes and where
/// each event's bytes end. Encoded once for every stage fed at one point of
/// the pipeline.
pub fn encode_each(events: &[Event]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::with_capacity(replay::encoded_len(events));
    let mut ends = Vec::with_capacity(events.len());
    for e in events {
        replay::encode(std::slice::from_ref(e), &mut bytes);
        ends.push(bytes.len());
    }
    (bytes, ends)
}

/// Reads a record back; the error says what is wrong with it.
pub fn decode(b: &[u8]) -> Result<Vec<Item>, String> {
    decode_wanted(b, None)
}

/// [`decode`], reading of each event only what a plugin with interest
/// `wanted` reads (see [`replay::decode_wanted`]).
pub fn decode_wanted(b: &[u8], wanted: Option<&Interest>) -> Result<Vec<Item>, String> {
    let mut r = b;
    let version = take(&mut r, 1)?[0];
    if version != VERSION {
        return Err(if version == b'{' {
            "a JSON record of a release before the binary repartition format; drain the topic with that release or start a new group".into()
        } else {
            format!("unknown repartition record version {version}")
        });
    }
    let items = u32(&mut r)? as usize;
    // Each item takes at least 5 index bytes: a count beyond that is corrupt.
    if items > r.len() / 5 {
        return Err(format!("{items} items do not fit in {} bytes", b.len()));
    }
    enum Entry {
        Event(i32, i64, u32),
        Marker(i32, Option<i64>),
    }
    let mut entries = Vec::with_capacity(items);
    for _ in 0..items {
        let kind = take(&mut r, 1)?[0];
        let src = i32::from_le_bytes(array(&mut r)?);
        entries.push(match kind {
            0 => {
                let offset = i64::from_le_bytes(array(&mut r)?);
                let index = u32(&mut r)?;
                let _time = i64::from_le_bytes(array(&mut r)?);
                let key = u32(&mut r)? as usize;
                take(&mut r, key)?;
                Entry::Event(src, offset, index)
            }
            1 => Entry::Marker(src, Some(i64::from_le_bytes(array(&mut r)?))),
            2 => Entry::Marker(src, None),
            k => return Err(format!("unknown item kind {k}")),
        });
    }
    let n = u32(&mut r)? as usize;
    let expected = entries
        .iter()
        .filter(|e| matches!(e, Entry::Event(..)))
        .count();
    if n != expected {
        return Err(format!("{n} events for {expected} event items"));
    }
    let mut events = replay::decode_wanted(r, n, wanted)?.into_iter();
    Ok(entries
        .into_iter()
        .map(|e| match e {
            Entry::Event(src, offset, index) => Item::Event {
                src,
                offset,
                index,
                event: events.next().expect("counted above"),
            },
            Entry::Marker(src, ts) => Item::Marker(src, ts),
        })
        .collect())
}

fn u32(b: &mut &[u8]) -> Result<u32, String> {
    Ok(u32::from_le_bytes(array(b)?))
}

/// The partition of a repartition topic that a key goes to: FNV-1a, so every
/// processor of a group, of any release, routes a key to the same task.
pub fn partition_for(key: &str, partitions: i32) -> i32 {
    if partitions <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % partitions as u64) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventDefaults, from_json};

    fn ev(json: serde_json::Value) -> Event {
        from_json(json, &EventDefaults::default()).unwrap()
    }

    #[test]
    fn items_round_trip_in_order() {
        let a = ev(
            serde_json::json!({"event_type": "page_view", "timestamp": 1_000, "user_id": "u1",
            "properties": {"path": "/a\nb", "n": 3, "ok": true, "x": 1.5}}),
        );
        let b = ev(serde_json::json!({"event_type": "purchase", "timestamp": 2_000}));
        let mut w = Writer::default();
        let (bytes, ends) = encode_each(&[a.clone(), b.clone()]);
        w.event(3, 17, 0, &a, "u1", &bytes[..ends[0]]);
        w.marker(1, Some(900));
        w.event(3, 18, 1, &b, "", &bytes[ends[0]..ends[1]]);
        w.marker(2, None);
        let bytes = w.finish();
        assert!(w.is_empty());
        let items = decode(&bytes).unwrap();
        assert_eq!(
            items,
            vec![
                Item::Event {
                    src: 3,
                    offset: 17,
                    index: 0,
                    event: a
                },
                Item::Marker(1, Some(900)),
                Item::Event {
                    src: 3,
                    offset: 18,
                    index: 1,
                    event: b
                },
                Item::Marker(2, None),
            ]
        );
    }

    #[test]
    fn bad_records_are_named() {
        assert!(
            decode(br#"{"event_type":"x"}"#)
                .unwrap_err()
                .contains("JSON record")
        );
        assert!(decode(&[7]).unwrap_err().contains("version 7"));
        let mut w = Writer::default();
        w.marker(0, Some(5));
        let bytes = w.finish();
        for cut in 1..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(
            decode(&[1, 255, 255, 255, 255])
                .unwrap_err()
                .contains("do not fit")
        );
    }

    #[test]
    fn keys_spread_over_partitions_the_same_way_everywhere() {
        // FNV-1a of "a" is 0xaf63dc4c8601ec8c (the published test vector).
        assert_eq!(
            partition_for("a", 7),
            (0xaf63_dc4c_8601_ec8c_u64 % 7) as i32
        );
        assert_eq!(partition_for("anything", 1), 0);
        let hit: std::collections::BTreeSet<i32> = (0..100)
            .map(|i| partition_for(&format!("user-{i}"), 4))
            .collect();
        assert_eq!(hit.len(), 4);
    }
}
