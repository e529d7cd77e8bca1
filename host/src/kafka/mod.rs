//! Kafka: HTTP collectors produce events to a topic; processors in one
//! consumer group share its partitions (see `processor` for the guarantees).
//!
//! Every client goes through librdkafka (rdkafka's bundled build), configured
//! from `[kafka]`: `brokers`, plus `options` passed through as is.

pub mod checkpoint;
pub mod collector;
pub mod internal;
pub mod plugins;
pub mod processor;

use crate::config::KafkaConfig;
use crate::runtime::Event;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

pub use crate::event::check_field;
pub use collector::Collector;

/// A Kafka operation that failed, with what it was about.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka: {what}: {source}")]
    Client {
        what: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("kafka: {0}")]
    Other(String),
}

pub(crate) fn client_error(
    what: impl Into<String>,
) -> impl FnOnce(rdkafka::error::KafkaError) -> KafkaError {
    let what = what.into();
    move |source| KafkaError::Client { what, source }
}

/// The librdkafka settings every client starts from: the brokers and the
/// user's pass-through options (which win over ours).
pub fn client_config(k: &KafkaConfig, ours: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, value) in ours {
        c.set(*key, *value);
    }
    for (key, value) in &k.options {
        c.set(key, value);
    }
    c
}

/// The topics a deployment uses, named after the events topic and the group
/// (like Kafka Streams' `<application.id>-...` internal topics).
#[derive(Debug, Clone)]
pub struct Topics {
    pub events: String,
    prefix: String,
}

impl Topics {
    pub fn new(k: &KafkaConfig) -> Self {
        Topics {
            events: k.topic.clone(),
            prefix: format!("{}.{}", k.topic, k.group),
        }
    }

    /// The internal topic a keyed stateful plugin reads, keyed by its `partition_by`.
    pub fn repartition(&self, plugin: &str) -> String {
        format!("{}.{plugin}.repartition", self.prefix)
    }

    /// Compacted: the last checkpoint of each plugin instance (plugin + partition).
    pub fn checkpoints(&self) -> String {
        format!("{}.checkpoints", self.prefix)
    }
}

/// Creates the topics that do not exist yet; existing ones are left alone.
pub fn ensure_topics(k: &KafkaConfig, topics: &[(String, i32, bool)]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(k, &[])
        .create()
        .map_err(client_error("creating the admin client"))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions, compact)| {
            let t = NewTopic::new(
                name,
                *partitions,
                TopicReplication::Fixed(k.replication_factor),
            );
            if *compact {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| KafkaError::Other(format!("starting a runtime: {e}")))?;
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(30)));
    let results = rt
        .block_on(admin.create_topics(&new, &opts))
        .map_err(client_error(format!("creating topics at {}", k.brokers)))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::Other(format!(
                    "creating topic `{name}`: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// The record key of an event on the events topic: its user, else its
/// session, else its id. A user's events stay in order on one partition.
pub fn record_key(e: &Event) -> &str {
    e.user_id
        .as_deref()
        .or(e.session_id.as_deref())
        .unwrap_or(&e.id)
}

/// The value of a field path in an event (see [`check_field`]); empty when absent.
pub fn field_value(e: &Event, path: &str) -> String {
    let m = &e.metadata;
    let s = match path {
        "event_type" => Some(e.event_type.as_str()),
        "user_id" => e.user_id.as_deref(),
        "session_id" => e.session_id.as_deref(),
        "metadata.ip_address" => m.ip_address.as_deref(),
        "metadata.user_agent" => m.user_agent.as_deref(),
        "metadata.platform" => m.platform.as_deref(),
        "metadata.url" => m.url.as_deref(),
        "metadata.referrer" => m.referrer.as_deref(),
        p => {
            let key = p.strip_prefix("properties.").unwrap_or(p);
            return e
                .properties
                .iter()
                .find(|x| x.key == key)
                .map(|x| crate::event::value_to_json(&x.value).to_string())
                .unwrap_or_default();
        }
    };
    s.unwrap_or_default().to_string()
}
