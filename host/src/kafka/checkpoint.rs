//! Checkpoints of a keyed stage in a compacted Kafka topic, keyed by plugin
//! and partition, so whichever host is assigned a partition restores it.
//!
//! A record is a JSON header line, then the event ids taken (`ids` bytes,
//! see [`crate::dataflow::dedupe`]) and the plugin's snapshot bytes as is.

use super::{KafkaError, client_config, client_error};
use crate::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Where a plugin instance stood when its state was snapshotted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub plugin: String,
    pub partition: i32,
    /// The plugin version that wrote the state.
    pub version: String,
    /// The next offset of the repartition topic to read: the state covers
    /// every record before it.
    pub next_offset: i64,
    /// Event time: the stage's watermark and each source partition's highest time.
    pub watermark: i64,
    pub inputs: BTreeMap<i32, i64>,
    /// Per source partition, the last (offset, index) taken in: replayed
    /// copies of earlier records are skipped.
    pub seen: BTreeMap<i32, (i64, u32)>,
    /// Bytes at the start of the state that are the event ids taken
    /// (absent in checkpoints older than idempotent ingest).
    #[serde(default)]
    pub ids: usize,
}

/// The record key: `plugin/partition`.
pub fn key(plugin: &str, partition: i32) -> String {
    format!("{plugin}/{partition}")
}

/// The header line, then `parts` (the event ids, the plugin's state) as they are.
pub fn encode(h: &Header, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = serde_json::to_vec(h).expect("checkpoint header serializes");
    out.push(b'\n');
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// The header and the state (`None`: the plugin had nothing to save).
pub fn decode(bytes: &[u8]) -> Result<(Header, Vec<u8>), String> {
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let h: Header = serde_json::from_slice(&bytes[..nl]).map_err(|e| e.to_string())?;
    Ok((h, bytes[nl + 1..].to_vec()))
}

/// Reads the checkpoints topic from its start to its end: the last record
/// of each key wins (what compaction keeps).
pub fn load_all(k: &KafkaConfig, topic: &str) -> Result<HashMap<String, Vec<u8>>, KafkaError> {
    let consumer: BaseConsumer = client_config(
        k,
        &[
            ("group.id", &format!("{}.checkpoint-reader", k.group)),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
        ],
    )
    .create()
    .map_err(client_error("creating the checkpoint reader"))?;
    let timeout = Duration::from_secs(30);
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(client_error(format!("reading the metadata of `{topic}`")))?;
    let partitions = md
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32);
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(client_error(format!("reading the offsets of `{topic}`")))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .map_err(client_error("assigning"))?;
            ends.insert(p, high);
        }
    }
    let mut latest = HashMap::new();
    if ends.is_empty() {
        return Ok(latest);
    }
    consumer
        .assign(&tpl)
        .map_err(client_error(format!("reading `{topic}`")))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Past the reported end, read on until the log is quiet: some brokers
    // (tansu 0.6) report the start of the last batch as the end.
    let mut quiet_since: Option<Instant> = None;
    while !ends.is_empty() || quiet_since.is_none_or(|q| q.elapsed() < Duration::from_millis(500)) {
        if Instant::now() > deadline {
            return Err(KafkaError::Other(format!(
                "reading the checkpoints in `{topic}` took over a minute"
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if let (Some(key), Some(value)) = (m.key(), m.payload()) {
                    latest.insert(String::from_utf8_lossy(key).into_owned(), value.to_vec());
                }
                if ends
                    .get(&m.partition())
                    .is_some_and(|&end| m.offset() + 1 >= end)
                {
                    ends.remove(&m.partition());
                }
                quiet_since = ends.is_empty().then(Instant::now);
            }
            Some(Err(e)) => return Err(client_error(format!("reading `{topic}`"))(e)),
            None if ends.is_empty() => {
                quiet_since.get_or_insert_with(Instant::now);
            }
            None => {}
        }
    }
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_header_and_state_apart() {
        let h = Header {
            plugin: "alerts".into(),
            partition: 2,
            version: "abc".into(),
            next_offset: 42,
            watermark: 1_000,
            inputs: [(0, 6_000), (1, 5_500)].into(),
            seen: [(0, (17, 0))].into(),
            ids: 0,
        };
        let state = b"binary\nstate\x00".to_vec();
        let (back, s) = decode(&encode(&h, &[&state])).unwrap();
        assert_eq!(s, state);
        assert_eq!(back.next_offset, 42);
        assert_eq!(back.seen[&0], (17, 0));
        assert!(decode(b"not a checkpoint").is_err());
    }
}
