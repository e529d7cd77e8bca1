//! A collector's way into Kafka: each accepted event is produced to the
//! events topic, keyed by [`record_key`], and the HTTP answer waits for the
//! broker's acknowledgement (acks=all, idempotent producer).

use super::{KafkaError, client_config, client_error, record_key};
use crate::config::KafkaConfig;
use crate::event::to_json;
use crate::runtime::Event;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
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

pub struct Collector {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl Collector {
    pub fn new(k: &KafkaConfig) -> Result<Self, KafkaError> {
        let timeout_ms = k.ack_timeout.as_millis().max(1).to_string();
        let producer: FutureProducer = client_config(
            k,
            &[
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("linger.ms", "2"),
                ("compression.type", "lz4"),
                ("message.timeout.ms", &timeout_ms),
                ("queue.buffering.max.messages", "500000"),
            ],
        )
        .create()
        .map_err(client_error("creating the collector's producer"))?;
        Ok(Collector {
            producer,
            topic: k.topic.clone(),
            timeout: k.ack_timeout,
        })
    }

    /// Produces every event; returns once the broker acknowledged them all.
    pub async fn send(&self, events: &[Event]) -> Result<(), SendError> {
        let mut pending = Vec::with_capacity(events.len());
        for e in events {
            let payload = to_json(e).to_string();
            let record = FutureRecord::to(&self.topic)
                .key(record_key(e))
                .payload(&payload);
            match self.producer.send_result(record) {
                Ok(f) => pending.push(f),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => return Err(SendError::QueueFull),
                Err((e, _)) => return Err(SendError::Broker(e.to_string())),
            }
        }
        let all = futures_util::future::join_all(pending);
        let results = tokio::time::timeout(self.timeout + Duration::from_secs(1), all)
            .await
            .map_err(|_| {
                SendError::Broker(format!("no acknowledgement within {:?}", self.timeout))
            })?;
        for r in results {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(SendError::Broker(e.to_string())),
                Err(_) => return Err(SendError::Broker("the producer was dropped".into())),
            }
        }
        Ok(())
    }

    /// Waits for what is in flight (at shutdown).
    pub fn flush(&self) {
        if let Err(e) = self.producer.flush(self.timeout) {
            tracing::warn!(error = %e, "flushing the Kafka producer at shutdown");
        }
    }
}
