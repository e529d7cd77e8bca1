//! `nexuspipe.toml`: the operator's config. Every key is documented in
//! `examples/nexuspipe.toml`; unknown keys are an error that names the key.

pub mod limits;

use base64::Engine as _;
pub use limits::{Capabilities, DirGrant, Limits};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A config that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub engine: EngineConfig,
    /// The pipeline, in order. Empty: the default pipeline of bundled plugins.
    pub plugins: Vec<PluginConfig>,
    /// A watched folder of plugins (`<name>.wasm` and optional `<name>.toml`).
    /// Not `[plugins]`: TOML cannot have that table beside the `[[plugins]]` list.
    pub plugin_folder: Option<FolderConfig>,
    /// Metric points go to InfluxDB (v2 or v1 write API) instead of `metrics.lp`.
    pub influxdb: Option<InfluxConfig>,
    /// Alert receivers, each independent of the others.
    pub webhooks: Vec<WebhookConfig>,
    /// Events go through Kafka: collectors produce, processors consume.
    pub kafka: Option<KafkaConfig>,
    /// The embedded metric store behind the query API.
    pub store: StoreConfig,
    /// Live push (`/v1/stream`).
    pub stream: StreamConfig,
    /// The event archive: every event as Parquet files by event-time hour.
    pub archive: Option<ArchiveConfig>,
    /// Event schemas: a JSON Schema per event type, checked at ingest.
    pub schemas: SchemasConfig,
}

/// `[schemas]`: what happens to an event its type's schema refuses, and
/// schemas from files. The files are `[[schemas.types]]`, not `[[schemas]]`:
/// TOML cannot have that list beside the `[schemas]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemasConfig {
    pub on_invalid: OnInvalid,
    pub types: Vec<SchemaFile>,
}

/// `[[schemas.types]]`: the schema of one event type, from a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaFile {
    pub event_type: String,
    /// A JSON Schema (draft 2020-12) for the event's `properties`; relative
    /// to the config file.
    pub file: PathBuf,
}

/// What ingest does with an event that breaks its type's schema.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalid {
    /// `400` naming the event, the field and the rule (`?partial=true`
    /// accepts the rest of the batch).
    #[default]
    Reject,
    /// Accepted, and written to `dead-letter.jsonl` with the errors instead
    /// of going through the pipeline.
    DeadLetter,
}

/// `[archive]`: every event the pipeline took, as Parquet files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// The archive's folder; relative paths are under `engine.data_dir`.
    pub path: PathBuf,
    /// Object storage instead: `"s3://bucket/prefix"` (S3 or S3-compatible).
    /// Parts are staged in `engine.data_dir/archive-staging` and put there.
    pub url: Option<String>,
    /// The store's settings (object_store's keys: `aws_endpoint`,
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_region`,
    /// `aws_allow_http`, …); unset ones come from the `AWS_*` environment.
    pub options: std::collections::BTreeMap<String, String>,
    /// `"enriched"`: the events as the pipeline's enrichers left them (geo,
    /// device, campaign properties there); `"raw"`: as received.
    pub stage: ArchiveStage,
    /// A part closes once this many bytes are written (bytes, or text like "128MiB").
    #[serde(deserialize_with = "de_size")]
    pub max_file_size: usize,
    /// A part closes once it is this old (and at every checkpoint).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Partitions whose hour ended longer ago than this are removed.
    #[serde(with = "humantime_serde")]
    pub keep: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveStage {
    Enriched,
    Raw,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            path: PathBuf::from("archive"),
            url: None,
            options: Default::default(),
            stage: ArchiveStage::Enriched,
            max_file_size: 128 << 20,
            flush_interval: Duration::from_secs(600),
            keep: None,
        }
    }
}

/// `[store]`: every point and alert is kept here for the query API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Off: no store, and the query API answers 404.
    pub enabled: bool,
    /// Raw points are kept this long (event time, behind the newest point)...
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// ...then rolled up into buckets of this size (sum, count, min, max, last)...
    #[serde(with = "humantime_serde")]
    pub rollup_resolution: Duration,
    /// ...kept this long.
    #[serde(with = "humantime_serde")]
    pub rollup_retention: Duration,
    /// Points of new series beyond this many are refused (counted, logged).
    pub max_series: usize,
    /// Past this, the oldest raw points are rolled up before their retention.
    #[serde(deserialize_with = "de_size")]
    pub memory_budget: usize,
    /// Alerts kept at most (they stay in `alerts.jsonl`); the oldest go first.
    pub max_alerts: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            enabled: true,
            retention: Duration::from_secs(7 * 86_400),
            rollup_resolution: Duration::from_secs(3_600),
            rollup_retention: Duration::from_secs(90 * 86_400),
            max_series: 100_000,
            memory_budget: 512 << 20,
            max_alerts: 10_000,
        }
    }
}

/// `[stream]`: live push of points, alerts, an event sample and engine figures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Events per second of the live sample, at most, chosen evenly.
    pub sample_rate: u32,
    /// Clients at once; the next is answered 503.
    pub max_clients: usize,
    /// Messages waiting for one client; past it the oldest are dropped
    /// (the client is told how many).
    pub client_queue: usize,
    /// A ping this often; a client silent for two intervals is closed.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Properties the event sample shows even when no plugin reads them
    /// (e.g. `geo.country_code`, `ua.device` for the dashboard). Enrichers
    /// compute what the plugins after them read: each of these makes them
    /// compute it for every event while a client watches the sample.
    pub sample_properties: Vec<String>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            sample_rate: 20,
            max_clients: 1_000,
            client_queue: 1_024,
            ping_interval: Duration::from_secs(30),
            sample_properties: Vec::new(),
        }
    }
}

/// `[kafka]`: the topic HTTP collectors write to and processors read from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The events topic.
    #[serde(default = "KafkaConfig::default_topic")]
    pub topic: String,
    /// The processors' consumer group; also names the internal topics.
    #[serde(default = "KafkaConfig::default_group")]
    pub group: String,
    /// Partitions of the topics NexusPipe creates when they are missing (the
    /// events topic and the repartition topics of keyed plugins): the most
    /// processors that share the work. 2 by default: a collector's post waits
    /// for a produce request per partition its events fall on (librdkafka
    /// puts one partition in a request, sent one at a time), so with 4 a post
    /// took twice as long (docs/kafka-performance.md).
    #[serde(default = "KafkaConfig::default_partitions")]
    pub partitions: i32,
    #[serde(default = "KafkaConfig::default_replication")]
    pub replication_factor: i32,
    /// librdkafka properties passed through to every client (security, tuning),
    /// e.g. `"security.protocol" = "SASL_SSL"`.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
    /// A collector's answer waits at most this long for the broker's
    /// acknowledgement; then it is 503.
    #[serde(default = "KafkaConfig::default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// How a processor resumes an assigned partition: `offset` fetches from
    /// the committed (or checkpointed) offset; `scan` reads the partition from
    /// its start and skips what is before it, for brokers that cannot fetch
    /// from inside a record batch (tansu 0.6).
    #[serde(default)]
    pub resume: Resume,
    /// How long a processor's source partitions wait for one whose records
    /// have not arrived yet before going on without it (Kafka Streams'
    /// `max.task.idle.ms`): more evens out event time over a backlog, less
    /// keeps a live stream's latency down when a partition is quiet.
    #[serde(default = "KafkaConfig::default_align_wait", with = "humantime_serde")]
    pub align_wait: Duration,
    /// How far in event time a processor's source partitions may run ahead
    /// of the least advanced one of the whole group (Flink's watermark
    /// alignment): the keyed tasks' event time waits for that one, and what
    /// runs ahead waits in the plugins' buffers.
    #[serde(default = "KafkaConfig::default_max_drift", with = "humantime_serde")]
    pub max_drift: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resume {
    #[default]
    Offset,
    Scan,
}

impl KafkaConfig {
    /// The defaults of every key but the brokers and the topic.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            group: Self::default_group(),
            partitions: Self::default_partitions(),
            replication_factor: Self::default_replication(),
            options: Default::default(),
            ack_timeout: Self::default_ack_timeout(),
            resume: Resume::default(),
            align_wait: Self::default_align_wait(),
            max_drift: Self::default_max_drift(),
        }
    }

    fn default_topic() -> String {
        "nexuspipe-events".into()
    }
    fn default_group() -> String {
        "nexuspipe".into()
    }
    fn default_partitions() -> i32 {
        2
    }
    fn default_replication() -> i32 {
        1
    }
    fn default_ack_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_align_wait() -> Duration {
        Duration::from_millis(200)
    }
    fn default_max_drift() -> Duration {
        Duration::from_secs(30)
    }

    fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("kafka.brokers: empty; give host:port of at least one broker".into());
        }
        for (k, v) in [("topic", &self.topic), ("group", &self.group)] {
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(format!(
                    "kafka.{k}: `{v}` is not a valid topic or group name (letters, digits, `.`, `_`, `-`)"
                ));
            }
        }
        if self.partitions < 1 || self.replication_factor < 1 {
            return Err("kafka.partitions and kafka.replication_factor must be positive".into());
        }
        Ok(())
    }
}

/// Which InfluxDB write API to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// `/api/v2/write` with org, bucket and token (InfluxDB 2.x, 3.x, Cloud,
    /// VictoriaMetrics).
    V2,
    /// `/write?db=` (InfluxDB 1.x).
    V1,
}

/// `[influxdb]`: where metric points go, and how they are batched and retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    #[serde(default = "InfluxConfig::default_api")]
    pub api: InfluxApi,
    /// v2: organization, bucket and API token.
    #[serde(default)]
    pub org: String,
    #[serde(default)]
    pub bucket: String,
    #[serde(default)]
    pub token: String,
    /// v1: database, optional user and password, optional retention policy.
    #[serde(default)]
    pub database: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub retention_policy: Option<String>,
    /// A write carries at most this many points...
    #[serde(default = "InfluxConfig::default_batch_size")]
    pub batch_size: usize,
    /// ...and waits at most this long for more.
    #[serde(
        default = "InfluxConfig::default_flush_interval",
        with = "humantime_serde"
    )]
    pub flush_interval: Duration,
    /// Gzip the request bodies.
    #[serde(default = "yes")]
    pub gzip: bool,
    /// One write attempt's timeout.
    #[serde(default = "InfluxConfig::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Backoff between retries: starts here, doubles, with jitter...
    #[serde(
        default = "InfluxConfig::default_retry_initial",
        with = "humantime_serde"
    )]
    pub retry_initial: Duration,
    /// ...up to this. Points are retried until they are written: none is dropped.
    #[serde(default = "InfluxConfig::default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// Points held in memory while InfluxDB is slow or down.
    #[serde(default = "InfluxConfig::default_buffer_points")]
    pub buffer_points: usize,
    /// Beyond the memory buffer, points spill to `<data_dir>/spool/influxdb/`
    /// up to this many bytes (0: no spill). Then the pipeline waits, and
    /// ingest answers 429.
    #[serde(default, deserialize_with = "de_size")]
    pub spill_max: usize,
    /// Also append the points to `metrics.lp` in the data dir.
    #[serde(default)]
    pub metrics_file: bool,
    /// At shutdown, how long to keep trying to deliver the backlog; what is
    /// left is kept in the spool and sent after the restart.
    #[serde(
        default = "InfluxConfig::default_drain_timeout",
        with = "humantime_serde"
    )]
    pub drain_timeout: Duration,
}

fn yes() -> bool {
    true
}

impl InfluxConfig {
    fn default_api() -> InfluxApi {
        InfluxApi::V2
    }
    fn default_batch_size() -> usize {
        5000
    }
    fn default_flush_interval() -> Duration {
        Duration::from_secs(1)
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_retry_initial() -> Duration {
        Duration::from_millis(200)
    }
    fn default_retry_max() -> Duration {
        Duration::from_secs(30)
    }
    fn default_buffer_points() -> usize {
        200_000
    }
    fn default_drain_timeout() -> Duration {
        Duration::from_secs(10)
    }

    fn validate(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| format!("influxdb.url: `{}` is not a URL: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("influxdb.url: `{}` is not http or https", self.url));
        }
        match self.api {
            InfluxApi::V2 if self.bucket.is_empty() => {
                return Err("influxdb: api = \"v2\" needs `bucket` (and `org`, `token`)".into());
            }
            InfluxApi::V1 if self.database.is_empty() => {
                return Err("influxdb: api = \"v1\" needs `database`".into());
            }
            _ => {}
        }
        if self.batch_size == 0 || self.buffer_points == 0 {
            return Err("influxdb.batch_size and influxdb.buffer_points must be positive".into());
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err("influxdb: retry_initial must be positive and at most retry_max".into());
        }
        Ok(())
    }
}

/// The body a webhook receiver gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The Prometheus Alertmanager webhook shape.
    Alertmanager,
    /// A Slack incoming-webhook message (`{"text": ...}`).
    Slack,
}

/// `[[webhooks]]`: one alert receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Name in logs, metrics and dead letters (default `webhook-<index>`).
    #[serde(default)]
    pub name: String,
    pub url: String,
    /// HMAC key of the Standard Webhooks signature: `whsec_<base64>` is
    /// decoded, any other text is used as bytes. Unset: requests are unsigned.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default = "WebhookConfig::default_format")]
    pub format: WebhookFormat,
    /// Rule ids sent to this receiver; unset: all.
    #[serde(default)]
    pub rules: Option<Vec<String>>,
    /// Extra request headers, e.g. `{ Authorization = "Bearer ..." }`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// One attempt's timeout.
    #[serde(default = "WebhookConfig::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per alert (on 5xx, 429, timeouts and connection errors)
    /// before it goes to the dead-letter file.
    #[serde(default = "WebhookConfig::default_max_attempts")]
    pub max_attempts: u32,
    #[serde(
        default = "WebhookConfig::default_retry_initial",
        with = "humantime_serde"
    )]
    pub retry_initial: Duration,
    #[serde(default = "WebhookConfig::default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// Alerts waiting for this receiver, at most; more go to the dead-letter
    /// file at once (a dead receiver never holds the pipeline back).
    #[serde(default = "WebhookConfig::default_queue_capacity")]
    pub queue_capacity: usize,
}

impl WebhookConfig {
    fn default_format() -> WebhookFormat {
        WebhookFormat::Alertmanager
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_max_attempts() -> u32 {
        8
    }
    fn default_retry_initial() -> Duration {
        Duration::from_millis(500)
    }
    fn default_retry_max() -> Duration {
        Duration::from_secs(60)
    }
    fn default_queue_capacity() -> usize {
        10_000
    }

    fn validate(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| format!("url: `{}` is not a URL: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("url: `{}` is not http or https", self.url));
        }
        if let Some(s) = &self.secret {
            secret_key(s).map_err(|e| format!("secret: {e}"))?;
        }
        for (k, v) in &self.headers {
            reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("headers: `{k}` is not a header name"))?;
            reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| format!("headers.{k}: the value is not a valid header value"))?;
        }
        if self.max_attempts == 0 || self.queue_capacity == 0 {
            return Err("max_attempts and queue_capacity must be positive".into());
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err("retry_initial must be positive and at most retry_max".into());
        }
        Ok(())
    }
}

/// The HMAC key of a `secret`: a `whsec_` prefix means base64 (as Standard
/// Webhooks secrets are given out); anything else is used as raw bytes.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("a `whsec_` secret must be base64 after the prefix: {e}")),
        None if secret.is_empty() => Err("the secret is empty".into()),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderConfig {
    /// The folder; created if missing.
    pub dir: PathBuf,
    /// A file must be unchanged this long before it is loaded, so a file
    /// still being copied is never loaded half-written.
    #[serde(with = "humantime_serde", default = "FolderConfig::default_debounce")]
    pub debounce: Duration,
}

impl FolderConfig {
    fn default_debounce() -> Duration {
        Duration::from_millis(500)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP ingest API.
    pub listen: String,
    /// Largest request body accepted, after decompression (bytes, or text like "1MiB").
    #[serde(deserialize_with = "de_size")]
    pub max_body: usize,
    /// Browser origins allowed to post events (CORS); `["*"]` allows any.
    pub cors_origins: Vec<String>,
    /// Bearer token of the admin API (`/v1/plugins`); the environment variable
    /// `NEXUSPIPE_ADMIN_TOKEN` overrides it. Unset: the admin API is disabled.
    pub admin_token: Option<String>,
    /// Largest plugin upload (bytes, or text like "64MiB").
    #[serde(deserialize_with = "de_size")]
    pub max_plugin_size: usize,
    /// Bearer token the query API (and live push) asks for; the admin token
    /// works too. `NEXUSPIPE_READ_TOKEN` overrides it. Unset: reads are open.
    pub read_token: Option<String>,
    /// A request's head and body must arrive within this (a body gets a
    /// second more per 64 KiB received); a slower one is answered 408 and
    /// its connection closed.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// A keep-alive connection with nothing going on for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections open at once (live-push clients included); the next is
    /// answered 503 and closed.
    pub max_connections: usize,
    /// PEM certificate chain and private key: the API speaks HTTPS (TLS 1.2
    /// and 1.3, rustls) instead of plain HTTP. Both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8000".into(),
            max_body: 1 << 20,
            cors_origins: Vec::new(),
            admin_token: None,
            // Components that embed an interpreter (Python, JavaScript) weigh tens of MiB.
            max_plugin_size: 64 << 20,
            read_token: None,
            read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl HttpConfig {
    /// The admin token in force: the environment's, else the config's; empty counts as unset.
    pub fn admin_token(&self) -> Option<String> {
        std::env::var("NEXUSPIPE_ADMIN_TOKEN")
            .ok()
            .or_else(|| self.admin_token.clone())
            .filter(|t| !t.is_empty())
    }

    /// The read token in force, as `admin_token`.
    pub fn read_token(&self) -> Option<String> {
        std::env::var("NEXUSPIPE_READ_TOKEN")
            .ok()
            .or_else(|| self.read_token.clone())
            .filter(|t| !t.is_empty())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// How far behind the newest event time the watermark trails.
    #[serde(with = "humantime_serde")]
    pub out_of_orderness: Duration,
    /// After this long without events, event time advances with processing time.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long after a window closes late events still update it.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// How often plugin state is written to the data dir.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Outputs, dead letters, late events and checkpoints live here.
    pub data_dir: PathBuf,
    /// Events accepted but not yet processed, at most; beyond it ingest answers 429.
    pub queue_capacity: usize,
    /// Most events per call into a plugin.
    pub batch_size: usize,
    /// How far ahead of its receive time (with Kafka: of its record's
    /// timestamp) an event's time may be; later events are refused, since
    /// one of them would move the watermark for everyone.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Event ids remembered to recognise a retried event (0: off). About
    /// 60 bytes each in memory and 24 in each checkpoint.
    pub dedupe_max_ids: usize,
    /// What `202` promises: `wal`, the events are in the write-ahead log
    /// under `data_dir/wal` (as durable as `fsync` says); `memory`, they are
    /// in the engine's queue (a crash loses what was queued).
    pub durability: Durability,
    /// When the write-ahead log is synced to the device: `always` before
    /// each answer (group commit), or `interval`, every `fsync_interval`.
    pub fsync: FsyncMode,
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    #[default]
    Wal,
    Memory,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    Always,
    #[default]
    Interval,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            out_of_orderness: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            allowed_lateness: Duration::ZERO,
            checkpoint_interval: Duration::from_secs(5),
            data_dir: PathBuf::from("nexuspipe-data"),
            queue_capacity: 100_000,
            batch_size: 1024,
            max_future: Duration::from_secs(3600),
            dedupe_max_ids: 100_000,
            durability: Durability::Wal,
            fsync: FsyncMode::Interval,
            fsync_interval: Duration::from_millis(200),
        }
    }
}

/// One plugin of the pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Unique name: in logs, metrics, checkpoints and the admin API.
    pub name: String,
    /// The component file.
    pub path: PathBuf,
    /// The plugin's own config, passed to its `init` as is.
    #[serde(default)]
    pub config: Option<String>,
    /// Or a file holding it (relative to the config file).
    #[serde(default)]
    pub config_file: Option<PathBuf>,
    #[serde(default)]
    pub limits: Limits,
    /// Granted capabilities (directories, env, clock, network); none by default.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// With Kafka: the event field this stateful plugin's state is keyed by
    /// (`user_id`, `session_id`, `event_type`, `metadata.ip_address`,
    /// `properties.<key>`...). Its events are repartitioned by that field, so
    /// its work spreads over the processors. Unset: one instance sees every
    /// event (right for global aggregates). Ignored without Kafka.
    #[serde(default)]
    pub partition_by: Option<String>,
}

pub(crate) fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(usize),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

/// Parses `512`, `64KiB`, `1MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1000).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 1048576 or \"1MiB\")"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}` (use KiB, MiB, GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large a size"))
}

impl Config {
    /// Reads and validates a config file. Relative paths in it are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in &mut config.plugins {
            p.path = base.join(&p.path);
            p.resolve_paths(base);
        }
        if let Some(f) = &mut config.plugin_folder {
            f.dir = base.join(&f.dir);
        }
        for t in &mut config.schemas.types {
            t.file = base.join(&t.file);
        }
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Checks what serde cannot: names, exclusive keys, sane numbers.
    pub fn validate(&self) -> Result<(), String> {
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "http.listen: `{}` is not an address like 127.0.0.1:8000",
                self.http.listen
            ));
        }
        if self.http.read_timeout.is_zero()
            || self.http.idle_timeout.is_zero()
            || self.http.max_connections == 0
        {
            return Err(
                "http.read_timeout, http.idle_timeout and http.max_connections must be positive"
                    .into(),
            );
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return Err("http.tls_cert and http.tls_key go together: set both or neither".into());
        }
        if self.engine.queue_capacity == 0 || self.engine.batch_size == 0 {
            return Err("engine.queue_capacity and engine.batch_size must be positive".into());
        }
        if let Some(a) = &self.archive {
            if let Some(url) = &a.url
                && !url.starts_with("s3://")
            {
                return Err(format!(
                    "archive.url {url:?}: only s3://bucket/prefix (S3 or S3-compatible) for now"
                ));
            }
            if a.max_file_size == 0 || a.flush_interval.is_zero() {
                return Err(
                    "archive.max_file_size and archive.flush_interval must be positive".into(),
                );
            }
            // Processors write their source partitions' parts side by side,
            // and whichever takes a partition over removes its parts past
            // the committed offset: they need one place they all reach.
            if self.kafka.is_some() && a.url.is_none() {
                return Err("[archive] with [kafka] needs archive.url (s3://bucket/prefix): every processor writes there, and one that takes a partition over removes what was written past its commit".into());
            }
        }
        if self.engine.durability == Durability::Wal
            && self.engine.fsync == FsyncMode::Interval
            && self.engine.fsync_interval.is_zero()
        {
            return Err(
                "engine.fsync_interval must be positive (for a sync before every answer, fsync = \"always\")"
                    .into(),
            );
        }
        if self.engine.checkpoint_interval.is_zero() {
            return Err("engine.checkpoint_interval must be positive".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.plugins.iter().enumerate() {
            validate_plugin_name(&p.name).map_err(|m| format!("plugins[{i}].name: {m}"))?;
            if !seen.insert(&p.name) {
                return Err(format!("plugins[{i}].name: `{}` is used twice", p.name));
            }
            p.validate()
                .map_err(|m| format!("plugins[{i}] ({}): {m}", p.name))?;
        }
        if self.http.max_plugin_size == 0 {
            return Err("http.max_plugin_size must be positive".into());
        }
        if let Some(i) = &self.influxdb {
            i.validate()?;
        }
        if let Some(k) = &self.kafka {
            k.validate()?;
        }
        let mut names = std::collections::HashSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            w.validate()
                .map_err(|m| format!("webhooks[{i}] ({}): {m}", w.url))?;
            if !w.name.is_empty() {
                validate_plugin_name(&w.name).map_err(|m| format!("webhooks[{i}].name: {m}"))?;
            }
            if !names.insert(self.webhook_name(i)) {
                return Err(format!(
                    "webhooks[{i}].name: `{}` is used twice",
                    self.webhook_name(i)
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The name of webhook receiver `i`: its `name`, else `webhook-<i>`.
    pub fn webhook_name(&self, i: usize) -> String {
        match self.webhooks[i].name.as_str() {
            "" => format!("webhook-{i}"),
            n => n.to_string(),
        }
    }
}

/// Plugin names appear in file names and URLs: letters, digits, `-`, `_`, `.`; 1 to 64 characters.
pub fn validate_plugin_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("`{name}` must be 1 to 64 characters long"));
    }
    if name.starts_with('.') {
        return Err(format!("`{name}` must not start with a dot"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "`{name}` contains `{c}`; use letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

impl PluginConfig {
    /// Resolves the relative paths of the entry (config file, granted dirs) against `base`.
    fn resolve_paths(&mut self, base: &Path) {
        if let Some(f) = &mut self.config_file {
            *f = base.join(&*f);
        }
        for d in &mut self.capabilities.dirs {
            d.host = base.join(&d.host);
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.config.is_some() && self.config_file.is_some() {
            return Err("set `config` or `config_file`, not both".into());
        }
        if let Some(f) = &self.partition_by {
            crate::event::check_field(f).map_err(|m| format!("partition_by: {m}"))?;
        }
        Ok(())
    }

    /// Reads the sidecar `<name>.toml` of a plugin in the plugins folder: the
    /// keys of a `[[plugins]]` table except `name` and `path`, which the file
    /// names give. Relative paths are resolved against the folder.
    pub fn from_sidecar(
        name: &str,
        wasm: &Path,
        sidecar: Option<&Path>,
    ) -> Result<PluginConfig, ConfigError> {
        let invalid = |path: &Path, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut table = toml::Table::new();
        if let Some(path) = sidecar {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            table = text
                .parse::<toml::Table>()
                .map_err(|e| invalid(path, e.to_string()))?;
            for key in ["name", "path"] {
                if table.contains_key(key) {
                    return Err(invalid(
                        path,
                        format!("`{key}` is given by the file names; remove it"),
                    ));
                }
            }
        }
        let at = sidecar.unwrap_or(wasm);
        table.insert("name".into(), name.into());
        table.insert("path".into(), wasm.display().to_string().into());
        let mut p: PluginConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| invalid(at, e.to_string()))?;
        p.resolve_paths(wasm.parent().unwrap_or(Path::new(".")));
        p.validate().map_err(|m| invalid(at, m))?;
        Ok(p)
    }

    /// The plugin's own config text (empty: its default).
    pub fn config_text(&self) -> Result<String, ConfigError> {
        match (&self.config, &self.config_file) {
            (Some(c), _) => Ok(c.clone()),
            (None, Some(f)) => std::fs::read_to_string(f).map_err(|source| ConfigError::Read {
                path: f.clone(),
                source,
            }),
            (None, None) => Ok(String::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = toml::from_str::<Config>("[engine]\nout_of_order = \"5s\"\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `out_of_order`"),
            "{err}"
        );
        let c: Config =
            toml::from_str("[http]\nmax_body = \"2MiB\"\n[engine]\nidle_timeout = \"250ms\"\n")
                .unwrap();
        assert_eq!(c.http.max_body, 2 << 20);
        assert_eq!(c.engine.idle_timeout, Duration::from_millis(250));
    }

    /// The log is the default; its keys parse, and an interval of 0 (a writer
    /// that would sync in a loop) is refused with the key and the way out.
    #[test]
    fn durability_keys() {
        let c = Config::default();
        assert_eq!(c.engine.durability, Durability::Wal);
        assert_eq!(c.engine.fsync, FsyncMode::Interval);
        let c: Config = toml::from_str(
            "[engine]\ndurability = \"memory\"\nfsync = \"always\"\nfsync_interval = \"1s\"\n",
        )
        .unwrap();
        assert_eq!(
            (c.engine.durability, c.engine.fsync, c.engine.fsync_interval),
            (
                Durability::Memory,
                FsyncMode::Always,
                Duration::from_secs(1)
            )
        );
        let c: Config = toml::from_str("[engine]\nfsync_interval = \"0s\"\n").unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.contains("engine.fsync_interval"), "{err}");
        let err = toml::from_str::<Config>("[engine]\ndurability = \"disk\"\n").unwrap_err();
        assert!(
            err.to_string().contains("expected `wal` or `memory`"),
            "{err}"
        );
    }

    /// With Kafka the archive must be where every processor reaches.
    #[test]
    fn an_archive_with_kafka_needs_a_bucket() {
        let kafka = "[kafka]\nbrokers = \"127.0.0.1:9092\"\n";
        let c: Config = toml::from_str(&format!("{kafka}[archive]\n")).unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.contains("archive.url"), "{err}");
        let c: Config =
            toml::from_str(&format!("{kafka}[archive]\nurl = \"s3://b/events\"\n")).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn a_sidecar_is_a_plugins_table_without_name_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("geo.wasm");
        let sidecar = dir.path().join("geo.toml");
        std::fs::write(
            &sidecar,
            "config_file = \"geo.json\"\n[limits]\nmemory_mib = 128\n[capabilities]\ndirs = [{ host = \"db\", guest = \"/db\" }]\n",
        )
        .unwrap();
        let p = PluginConfig::from_sidecar("geo", &wasm, Some(&sidecar)).unwrap();
        assert_eq!(p.name, "geo");
        assert_eq!(p.path, wasm);
        assert_eq!(p.config_file, Some(dir.path().join("geo.json")));
        assert_eq!(p.limits.memory_mib, 128);
        assert_eq!(p.capabilities.dirs[0].host, dir.path().join("db"));

        std::fs::write(&sidecar, "name = \"other\"\n").unwrap();
        let err = PluginConfig::from_sidecar("geo", &wasm, Some(&sidecar)).unwrap_err();
        assert!(
            err.to_string()
                .contains("`name` is given by the file names"),
            "{err}"
        );
        std::fs::write(&sidecar, "[limits]\nmemory = 1\n").unwrap();
        let err = PluginConfig::from_sidecar("geo", &wasm, Some(&sidecar)).unwrap_err();
        assert!(err.to_string().contains("unknown field `memory`"), "{err}");
        assert!(err.to_string().contains("geo.toml"), "{err}");
    }

    #[test]
    fn sink_tables_are_checked() {
        let check = |text: &str| {
            toml::from_str::<Config>(text)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map(|()| c))
        };
        let ok = check(
            "[influxdb]\nurl = \"http://127.0.0.1:8086\"\napi = \"v1\"\ndatabase = \"db\"\nflush_interval = \"250ms\"\n[[webhooks]]\nurl = \"https://h/x\"\nsecret = \"whsec_AAAA\"\nformat = \"slack\"\n",
        )
        .unwrap();
        assert_eq!(ok.influxdb.unwrap().api, InfluxApi::V1);
        assert_eq!(ok.webhooks[0].format, WebhookFormat::Slack);
        for (text, want) in [
            ("[influxdb]\nurl = \"http://h\"\n", "needs `bucket`"),
            (
                "[influxdb]\nurl = \"h:1\"\nbucket = \"b\"\n",
                "not http or https",
            ),
            (
                "[influxdb]\nurl = \"http://h\"\napi = \"v3\"\n",
                "unknown variant `v3`",
            ),
            (
                "[influxdb]\nurl = \"http://h\"\nbuckett = \"b\"\n",
                "unknown field `buckett`",
            ),
            (
                "[[webhooks]]\nurl = \"http://h\"\nsecret = \"whsec_!!\"\n",
                "webhooks[0] (http://h): secret: a `whsec_` secret must be base64",
            ),
            (
                "[[webhooks]]\nurl = \"http://h\"\n[[webhooks]]\nname = \"webhook-0\"\nurl = \"http://i\"\n",
                "`webhook-0` is used twice",
            ),
        ] {
            let err = check(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn sizes_parse_and_overflow_is_an_error() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size(" 2 MiB "), Ok(2 << 20));
        assert_eq!(parse_size("3GB"), Ok(3_000_000_000));
        let huge = format!("{}GiB", usize::MAX / 2);
        assert!(
            parse_size(&huge).unwrap_err().contains("too large"),
            "{huge}"
        );
        assert!(parse_size("99999999999999999999999").is_err());
        assert!(
            parse_size("1 parsec")
                .unwrap_err()
                .contains("unknown size unit")
        );
    }

    #[test]
    fn plugin_names_are_safe() {
        assert!(validate_plugin_name("enrich-geo").is_ok());
        assert!(validate_plugin_name("../x").is_err());
        assert!(validate_plugin_name("a/b").is_err());
        assert!(validate_plugin_name(&"x".repeat(65)).is_err());
    }
}
