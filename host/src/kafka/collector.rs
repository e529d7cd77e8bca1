//! A collector's way into Kafka: each accepted event is produced to the
//! events topic, keyed by [`record_key`], and the HTTP answer waits for the
//! broker's acknowledgement (acks=all, idempotent producer).

use super::{KafkaError, client_config, client_error, record_key};
use crate::config::KafkaConfig;
use crate::runtime::{Event, Value};
use rdkafka::ClientContext;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a batch was not acknowledged. Some of its events may have been
/// written: a client that retries may send them twice (events with their
/// own `event_id` can be told apart downstream).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The producer's local queue is full: back-pressure, retry later.
    #[error("the Kafka producer queue is full")]
    QueueFull,
    /// The broker did not acknowledge in time, or refused.
    #[error("the Kafka broker did not acknowledge the events: {0}")]
    Broker(String),
}

/// One request's records in flight: its answer waits until the last is
/// acknowledged. Shared by its records' delivery reports, so a post costs
/// one allocation and one wake-up, not a future per record.
struct Post {
    left: AtomicUsize,
    failed: Mutex<Option<String>>,
    done: tokio::sync::Notify,
}

/// Counts each post's acknowledgements down (on librdkafka's polling thread).
struct Acks;

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Arc<Post>;
    fn delivery(&self, r: &DeliveryResult<'_>, post: Arc<Post>) {
        if let Err((e, _)) = r {
            post.failed
                .lock()
                .expect("post lock")
                .get_or_insert_with(|| e.to_string());
        }
        if post.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Stores a permit if `send` is not waiting yet.
            post.done.notify_one();
        }
    }
}

pub struct Collector {
    producer: ThreadedProducer<Acks>,
    topic: String,
    timeout: Duration,
}

impl Collector {
    pub fn new(k: &KafkaConfig) -> Result<Self, KafkaError> {
        let timeout_ms = k.ack_timeout.as_millis().max(1).to_string();
        let producer: ThreadedProducer<Acks> = client_config(
            k,
            &[
                ("acks", "all"),
                ("enable.idempotence", "true"),
                // Every answer waits for its records' acks, so a client's
                // throughput is its requests in flight over this latency.
                // librdkafka sleeps in whole milliseconds, so any linger
                // under 1 ms waited about 1 ms (p50 0.9 ms in its stats),
                // and 5 requests in flight split posts into many small
                // ones. With no linger and one request in flight a
                // partition's records gather while the one before is
                // acknowledged: 1.3x the events/s of linger 0.5 with 4 and
                // with 16 clients, p99 3.6 ms instead of 8
                // (docs/kafka-performance.md).
                ("linger.ms", "0"),
                ("max.in.flight.requests.per.connection", "1"),
                ("compression.type", "lz4"),
                ("message.timeout.ms", &timeout_ms),
                ("queue.buffering.max.messages", "500000"),
            ],
        )
        .create_with_context(Acks)
        .map_err(client_error("creating the collector's producer"))?;
        Ok(Collector {
            producer,
            topic: k.topic.clone(),
            timeout: k.ack_timeout,
        })
    }

    /// Produces every event; returns once the broker acknowledged them all.
    pub async fn send(&self, events: &[Event]) -> Result<(), SendError> {
        if events.is_empty() {
            return Ok(());
        }
        let post = Arc::new(Post {
            left: AtomicUsize::new(events.len()),
            failed: Mutex::new(None),
            done: tokio::sync::Notify::new(),
        });
        let mut payload = Vec::with_capacity(512);
        for e in events {
            payload.clear();
            write_record(e, &mut payload);
            let record = BaseRecord::with_opaque_to(&self.topic, post.clone())
                .key(record_key(e))
                .payload(&payload);
            // What was queued before a refusal is still written; the
            // client is told to retry all (see `SendError`).
            match self.producer.send(record) {
                Ok(()) => {}
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => return Err(SendError::QueueFull),
                Err((e, _)) => return Err(SendError::Broker(e.to_string())),
            }
        }
        tokio::time::timeout(self.timeout + Duration::from_secs(1), post.done.notified())
            .await
            .map_err(|_| {
                SendError::Broker(format!("no acknowledgement within {:?}", self.timeout))
            })?;
        match post.failed.lock().expect("post lock").take() {
            Some(e) => Err(SendError::Broker(e)),
            None => Ok(()),
        }
    }

    /// Waits for what is in flight (at shutdown).
    pub fn flush(&self) {
        if let Err(e) = self.producer.flush(self.timeout) {
            tracing::warn!(error = %e, "flushing the Kafka producer at shutdown");
        }
    }
}

/// Writes an event's canonical JSON form (as `event::to_json`, whose
/// `serde_json::Value` cost two allocations per field) straight into `out`.
fn write_record(e: &Event, out: &mut Vec<u8>) {
    use serde::ser::{SerializeMap, Serializer};
    struct Props<'a>(&'a [crate::runtime::Property]);
    impl serde::Serialize for Props<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for p in self.0 {
                match &p.value {
                    Value::Str(v) => m.serialize_entry(&p.key, v)?,
                    // Not finite: null, as `value_to_json` writes it.
                    Value::Float(f) => m.serialize_entry(&p.key, &f.is_finite().then_some(*f))?,
                    Value::Int(i) => m.serialize_entry(&p.key, i)?,
                    Value::Boolean(b) => m.serialize_entry(&p.key, b)?,
                }
            }
            m.end()
        }
    }
    #[derive(serde::Serialize)]
    struct Metadata<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        ip_address: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_agent: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        platform: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        url: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        referrer: Option<&'a str>,
    }
    #[derive(serde::Serialize)]
    struct Record<'a> {
        event_id: &'a str,
        event_type: &'a str,
        timestamp: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        session_id: Option<&'a str>,
        properties: Props<'a>,
        metadata: Metadata<'a>,
    }
    let m = &e.metadata;
    let r = Record {
        event_id: &e.id,
        event_type: &e.event_type,
        timestamp: e.timestamp,
        user_id: e.user_id.as_deref(),
        session_id: e.session_id.as_deref(),
        properties: Props(&e.properties),
        metadata: Metadata {
            ip_address: m.ip_address.as_deref(),
            user_agent: m.user_agent.as_deref(),
            platform: m.platform.as_deref(),
            url: m.url.as_deref(),
            referrer: m.referrer.as_deref(),
        },
    };
    serde_json::to_writer(out, &r).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventDefaults, from_json, to_json};

    /// The record is the canonical JSON form, byte for byte the same value.
    #[test]
    fn a_record_is_the_canonical_form() {
        let e = from_json(
            serde_json::json!({
                "event_id": "e1", "event_type": "purchase", "timestamp": 1_767_225_600_123i64,
                "user_id": "u\"1", "properties": {"amount": 12.5, "n": 3, "ok": true, "s": "a\nb"},
                "metadata": {"ip_address": "10.0.0.1", "url": "https://x/y?z"}
            }),
            &EventDefaults::default(),
        )
        .unwrap();
        let mut out = Vec::new();
        write_record(&e, &mut out);
        let written: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(written, to_json(&e));
    }
}
