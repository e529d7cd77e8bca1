//! Live plugins across hosts: the compacted `<topic>.<group>.plugins` topic
//! carries every deployed change, keyed by plugin name, and
//! `<topic>.<group>.status` what each processor of the group runs.
//!
//! - A change (upload, rollback, delete) is validated on the host that took
//!   it, then published: the component's bytes first, in chunks keyed
//!   `<name>@<hash>/<i>` (a component may be larger than a record), then the
//!   change itself under the plugin's name (version by hash, config,
//!   `reset_state`; no version: removed). Compaction keeps each plugin's
//!   latest change and the chunks of every version, so a host that starts
//!   later reads the pipeline as deployed.
//! - Every host tails both topics from the beginning (no consumer group:
//!   each host reads all of it). Processors apply a change at their next
//!   batch boundary and publish their status, on every change and every
//!   [`HEARTBEAT`], keyed by processor id; a clean stop removes it.

use super::{KafkaError, Topics, client_config, client_error};
use crate::config::KafkaConfig;
use crate::dataflow::Handover;
use crate::runtime::{Plugin, World};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of a component per record: well under a broker's default 1 MB limit.
const CHUNK: usize = 256 << 10;

/// How often a processor says what it runs, so hosts can tell a live one
/// from one that went away without a word (`kill -9`).
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// A processor not heard of for this long is taken as gone.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

impl Topics {
    /// Compacted: the latest change of each plugin, and every version's bytes.
    pub fn plugins(&self) -> String {
        format!("{}.plugins", self.prefix)
    }

    /// Compacted: what each processor runs, keyed by processor id.
    pub fn status(&self) -> String {
        format!("{}.status", self.prefix)
    }
}

/// A version as published: enough for any host to load it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub hash: String,
    pub world: World,
    pub config: String,
    /// Size of the component (the chunks under `<name>@<hash>/…` add up to it).
    pub size: usize,
}

/// A change to the pipeline, as every host reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    /// Unique: statuses name the change they applied or refused.
    pub id: String,
    pub name: String,
    /// `None`: the plugin is removed.
    pub current: Option<Version>,
    /// What ran before (for rollback on any host).
    pub previous: Option<Version>,
    pub reset_state: bool,
    /// Milliseconds since the epoch, when published.
    pub at_ms: u64,
    /// Put the previous version back because processors refused this change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverts: Option<String>,
}

/// What one processor runs of one plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginStatus {
    pub name: String,
    pub version: String,
    /// The last change of this plugin the processor took (applied or refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// How its state went over in that change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<Handover>,
    /// The new version caught up with the running one before the swap
    /// (the pause is then the replay of the last batches only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub caught_up: bool,
    /// How long applying it held this processor's events back, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_us: Option<u64>,
    /// Why the processor refused that change (it runs `version`, the old one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one processor runs, as it last said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub processor: String,
    pub at_ms: u64,
    pub plugins: Vec<PluginStatus>,
    /// Event time reached by each source partition it reads that still has
    /// records to give (see [`GroupClock`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<i32, i64>,
    /// The other source partitions it reads: nothing to give for now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quiet: Vec<i32>,
}

impl Status {
    /// Heard of within [`STALE_AFTER`].
    pub fn live(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.at_ms) < STALE_AFTER.as_millis() as u64
    }
}

/// The group's source partitions in event time, as each processor last said
/// (every [`CLOCK_EVERY`] while it reads): a processor holds back its own
/// partitions that ran more than `[kafka] max_drift` ahead of the least
/// advanced partition of the group, as Flink aligns watermarks across
/// sources. Without it, two processors reading a backlog at their own pace
/// left the keyed tasks' event time at the slower one, and the faster one's
/// events piled up in the plugins' buffers.
#[derive(Default)]
pub struct GroupClock {
    /// Per source partition, the latest word of its owner: when, and its
    /// event time (`None`: quiet). A partition between two owners in a
    /// rebalance keeps its last word until the next owner speaks.
    partitions: Mutex<HashMap<i32, (u64, Option<i64>)>>,
}

/// How often a reading processor says where its partitions are.
pub const CLOCK_EVERY: Duration = Duration::from_millis(100);

impl GroupClock {
    pub fn update(&self, s: &Status) {
        let mut p = self.partitions.lock().expect("group clock lock");
        let said = s
            .sources
            .iter()
            .map(|(part, t)| (*part, Some(*t)))
            .chain(s.quiet.iter().map(|part| (*part, None)));
        for (part, t) in said {
            let e = p.entry(part).or_insert((s.at_ms, t));
            if s.at_ms >= e.0 {
                *e = (s.at_ms, t);
            }
        }
    }

    /// The least event time of the group's source partitions other than
    /// `own` (which the caller knows better), as last said within
    /// [`STALE_AFTER`].
    pub fn minimum(&self, own: &BTreeSet<i32>, now_ms: u64) -> Option<i64> {
        let p = self.partitions.lock().expect("group clock lock");
        p.iter()
            .filter(|(part, (at, _))| {
                !own.contains(part) && now_ms.saturating_sub(*at) < STALE_AFTER.as_millis() as u64
            })
            .filter_map(|(_, (_, t))| *t)
            .min()
    }
}

/// A change for a processor's pipeline, with the new version instantiated
/// by the host (so a processor only swaps, at a batch boundary).
pub enum Apply {
    Deploy {
        change: String,
        plugin: Box<Plugin>,
        reset_state: bool,
        /// A keyed plugin's field, from the host's `[[plugins]]` entry.
        partition_by: Option<String>,
    },
    Remove {
        change: String,
        name: String,
    },
    /// The host could not instantiate the version; the processor says so.
    Refused {
        change: String,
        name: String,
        error: String,
    },
}

/// A record of the plugins or status topic.
pub enum Record {
    /// Part `index` of `parts` of the component `hash`.
    Chunk {
        hash: String,
        index: u32,
        parts: u32,
        bytes: Vec<u8>,
    },
    Change(Change),
    /// A version of an event type's schema (key `schema:<event type>/<version>`:
    /// compaction keeps every version).
    Schema {
        event_type: String,
        value: Vec<u8>,
    },
    Status(Status),
    /// A processor left (its status' tombstone).
    Gone(String),
}

/// The key prefix of event schemas in the plugins topic.
pub const SCHEMA_KEY: &str = "schema:";

fn chunk_key(name: &str, hash: &str, index: usize, parts: usize) -> String {
    format!("{name}@{hash}/{index}/{parts}")
}

/// Reads a record; `None` for one this version does not know (ignored).
fn decode(topics: &Topics, topic: &str, key: &[u8], value: Option<&[u8]>) -> Option<Record> {
    let key = std::str::from_utf8(key).ok()?;
    if topic == topics.status() {
        return Some(match value {
            None => Record::Gone(key.to_string()),
            Some(v) => Record::Status(serde_json::from_slice(v).ok()?),
        });
    }
    let value = value?;
    // Plugin names have no `:` (see `validate_plugin_name`).
    if let Some(rest) = key.strip_prefix(SCHEMA_KEY) {
        let (event_type, _version) = rest.rsplit_once('/')?;
        return Some(Record::Schema {
            event_type: event_type.to_string(),
            value: value.to_vec(),
        });
    }
    match key.split_once('@') {
        Some((_, rest)) => {
            let mut it = rest.splitn(3, '/');
            let hash = it.next()?.to_string();
            let index = it.next()?.parse().ok()?;
            let parts = it.next()?.parse().ok()?;
            Some(Record::Chunk {
                hash,
                index,
                parts,
                bytes: value.to_vec(),
            })
        }
        None => match serde_json::from_slice(value) {
            Ok(c) => Some(Record::Change(c)),
            Err(e) => {
                tracing::warn!(key, error = %e, "unreadable record in the plugins topic; skipped");
                None
            }
        },
    }
}

/// Components put back together from their chunks.
#[derive(Default)]
pub struct Chunks {
    parts: HashMap<String, (u32, HashMap<u32, Vec<u8>>)>,
}

impl Chunks {
    pub fn add(&mut self, hash: String, index: u32, parts: u32, bytes: Vec<u8>) {
        let e = self
            .parts
            .entry(hash)
            .or_insert_with(|| (parts, HashMap::new()));
        e.0 = parts;
        e.1.insert(index, bytes);
    }

    /// The whole component, if every chunk arrived.
    pub fn get(&self, hash: &str) -> Option<Vec<u8>> {
        let (parts, chunks) = self.parts.get(hash)?;
        let mut out = Vec::new();
        for i in 0..*parts {
            out.extend_from_slice(chunks.get(&i)?);
        }
        Some(out)
    }
}

/// Delivery errors of the publisher's producer.
#[derive(Default)]
struct Delivery {
    failed: Mutex<Option<String>>,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            *self.failed.lock().expect("delivery lock") = Some(e.to_string());
        }
    }
}

/// Creates the plugins and status topics (compacted, one partition) if missing.
fn ensure(k: &KafkaConfig) -> Result<Topics, KafkaError> {
    let topics = Topics::new(k);
    super::ensure_topics(
        k,
        &[(topics.plugins(), 1, true), (topics.status(), 1, true)],
    )?;
    Ok(topics)
}

/// Publishes changes to the plugins topic (acks=all, idempotent).
pub struct Publisher {
    producer: BaseProducer<Delivery>,
    topics: Topics,
    /// One publication at a time: a change's chunks and record stay together.
    lock: Mutex<()>,
}

impl Publisher {
    pub fn new(k: &KafkaConfig) -> Result<Self, KafkaError> {
        let topics = ensure(k)?;
        let producer = client_config(
            k,
            &[
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("linger.ms", "0"),
            ],
        )
        .create_with_context(Delivery::default())
        .map_err(client_error("creating the plugins topic's producer"))?;
        Ok(Publisher {
            producer,
            topics,
            lock: Mutex::new(()),
        })
    }

    /// Publishes `change` (and `bytes`, the new version's component, unless
    /// the topic has it already) and waits for the broker's acknowledgement.
    pub fn publish(&self, change: &Change, bytes: Option<&[u8]>) -> Result<(), KafkaError> {
        let json = serde_json::to_vec(change).expect("a change serializes");
        let chunks = match (bytes, &change.current) {
            (Some(bytes), Some(v)) => {
                let parts = bytes.len().div_ceil(CHUNK).max(1);
                bytes
                    .chunks(CHUNK)
                    .enumerate()
                    .map(|(i, chunk)| (chunk_key(&change.name, &v.hash, i, parts), chunk))
                    .collect()
            }
            _ => Vec::new(),
        };
        let records = chunks
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .chain([(change.name.as_str(), &json[..])]);
        self.publish_records(records)
    }

    /// Publishes a version of an event type's schema (as JSON).
    pub fn publish_schema(
        &self,
        event_type: &str,
        version: u32,
        json: &[u8],
    ) -> Result<(), KafkaError> {
        let key = format!("{SCHEMA_KEY}{event_type}/{version}");
        self.publish_records([(key.as_str(), json)])
    }

    /// Sends records in order and waits for the broker's acknowledgement.
    fn publish_records<'a>(
        &self,
        records: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<(), KafkaError> {
        let _one = self.lock.lock().expect("publisher lock");
        let topic = self.topics.plugins();
        let send = |key: &str, value: &[u8]| -> Result<(), KafkaError> {
            let mut record = BaseRecord::<str, [u8]>::to(&topic).key(key).payload(value);
            loop {
                match self.producer.send(record) {
                    Ok(()) => return Ok(()),
                    Err((e, r)) if super::processor::is_queue_full(&e) => {
                        self.producer.poll(Duration::from_millis(50));
                        record = r;
                    }
                    Err((e, _)) => return Err(client_error(format!("publishing to `{topic}`"))(e)),
                }
            }
        };
        for (key, value) in records {
            send(key, value)?;
        }
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(client_error(format!("publishing to `{topic}`")))?;
        if let Some(e) = self.producer.context().failed.lock().expect("lock").take() {
            return Err(KafkaError::Other(format!("publishing to `{topic}`: {e}")));
        }
        Ok(())
    }
}

/// Tails the plugins and status topics on a thread of its own.
pub struct Tail {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A reader of both topics from their beginning.
pub struct Reader {
    consumer: BaseConsumer,
    topics: Topics,
}

impl Reader {
    pub fn new(k: &KafkaConfig) -> Result<Self, KafkaError> {
        let topics = ensure(k)?;
        let consumer: BaseConsumer = client_config(
            k,
            &[
                // Never joins: partitions are assigned, offsets never committed.
                ("group.id", &format!("{}.plugins-reader", k.group)),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
                // Statuses carry the group's event time, which processors
                // align on: a fetch may not sit out the default 500 ms.
                ("fetch.wait.max.ms", "10"),
            ],
        )
        .create()
        .map_err(client_error("creating the plugins topic's reader"))?;
        let mut tpl = TopicPartitionList::new();
        for t in [topics.plugins(), topics.status()] {
            tpl.add_partition_offset(&t, 0, Offset::Beginning)
                .map_err(client_error("assigning"))?;
        }
        consumer
            .assign(&tpl)
            .map_err(client_error("reading the plugins topic"))?;
        Ok(Reader { consumer, topics })
    }

    fn record(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Record> {
        decode(
            &self.topics,
            m.topic(),
            m.key().unwrap_or_default(),
            m.payload(),
        )
    }

    /// Reads the plugins topic up to its end (what a host starts from);
    /// statuses read on the way are passed on too.
    pub fn catch_up(&mut self, on: &mut dyn FnMut(Record)) -> Result<(), KafkaError> {
        let topic = self.topics.plugins();
        let (_, end) = self
            .consumer
            .fetch_watermarks(&topic, 0, Duration::from_secs(30))
            .map_err(client_error(format!("reading the offsets of `{topic}`")))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next = 0;
        // Past the reported end, read on until the log is quiet: some brokers
        // (tansu 0.6) report the start of the last batch as the end.
        let mut quiet_since: Option<Instant> = None;
        while next < end || quiet_since.is_none_or(|q| q.elapsed() < Duration::from_millis(300)) {
            if Instant::now() > deadline {
                return Err(KafkaError::Other(format!(
                    "reading `{topic}` took over a minute"
                )));
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if m.topic() == topic {
                        next = next.max(m.offset() + 1);
                        quiet_since = None;
                    }
                    if let Some(r) = self.record(&m) {
                        on(r);
                    }
                }
                Some(Err(e)) => return Err(client_error(format!("reading `{topic}`"))(e)),
                None if next >= end => {
                    quiet_since.get_or_insert_with(Instant::now);
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Goes on reading on a thread of its own, until the [`Tail`] is dropped.
    pub fn tail(self, mut on: impl FnMut(Record) + Send + 'static) -> Result<Tail, KafkaError> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("nexuspipe-plugins".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match self.consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            if let Some(r) = self.record(&m) {
                                on(r);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "reading the plugins topic");
                            std::thread::sleep(Duration::from_millis(500));
                        }
                        None => {}
                    }
                }
            })
            .map_err(|e| KafkaError::Other(format!("starting the plugins reader: {e}")))?;
        Ok(Tail {
            stop,
            thread: Some(thread),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_come_back_whole_in_any_order() {
        let bytes: Vec<u8> = (0..(CHUNK * 2 + 10)).map(|i| (i % 251) as u8).collect();
        let parts = bytes.len().div_ceil(CHUNK);
        let topics = Topics {
            events: "e".into(),
            prefix: "e.g".into(),
        };
        let mut c = Chunks::default();
        for (i, chunk) in bytes.chunks(CHUNK).enumerate().rev() {
            let key = chunk_key("funnel", "abc", i, parts);
            let Some(Record::Chunk {
                hash,
                index,
                parts,
                bytes,
            }) = decode(&topics, "e.g.plugins", key.as_bytes(), Some(chunk))
            else {
                panic!("a chunk");
            };
            assert!(c.get("abc").is_none(), "incomplete until the last");
            c.add(hash, index, parts, bytes);
        }
        assert_eq!(c.get("abc").as_deref(), Some(&bytes[..]));
    }
}
