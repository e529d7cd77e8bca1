//! Counters and histograms behind `GET /metrics` (Prometheus text format).
//! Updated with relaxed atomics from the HTTP tasks and the engine thread.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::histogram::Histogram;

/// Reads one counter out of a plugin's stats.
type StatFn = fn(&crate::runtime::PluginStats) -> u64;

/// One sink metric family: name, Prometheus type, help, and how to read it.
type SinkFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&SinkStats) -> u64,
);

/// Why an ingest request or event was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    MalformedJson,
    InvalidEvent,
    BodyTooLarge,
    QueueFull,
    BadEncoding,
    /// A collector's Kafka broker did not acknowledge (503).
    Broker,
    /// A timestamp further ahead than `engine.max_future`.
    TimestampTooFarAhead,
    /// A timestamp before 1970 or beyond what RFC 3339 can write.
    TimestampOutOfRange,
    /// The write-ahead log could not take the events (503).
    Storage,
    /// The event broke its type's schema (`[schemas] on_invalid = "reject"`).
    SchemaViolation,
}

impl RejectReason {
    const ALL: [RejectReason; 10] = [
        RejectReason::MalformedJson,
        RejectReason::InvalidEvent,
        RejectReason::TimestampTooFarAhead,
        RejectReason::TimestampOutOfRange,
        RejectReason::BodyTooLarge,
        RejectReason::QueueFull,
        RejectReason::BadEncoding,
        RejectReason::Broker,
        RejectReason::Storage,
        RejectReason::SchemaViolation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::InvalidEvent => "invalid_event",
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::QueueFull => "queue_full",
            RejectReason::BadEncoding => "bad_encoding",
            RejectReason::Broker => "broker_unavailable",
            RejectReason::TimestampTooFarAhead => "timestamp_too_far_ahead",
            RejectReason::TimestampOutOfRange => "timestamp_out_of_range",
            RejectReason::Storage => "log_unavailable",
            RejectReason::SchemaViolation => "schema_violation",
        }
    }

    /// The counter an invalid event goes to.
    pub fn of(kind: crate::event::ErrorKind) -> Self {
        match kind {
            crate::event::ErrorKind::Invalid => RejectReason::InvalidEvent,
            crate::event::ErrorKind::TooFarAhead => RejectReason::TimestampTooFarAhead,
            crate::event::ErrorKind::TimeOutOfRange => RejectReason::TimestampOutOfRange,
            crate::event::ErrorKind::Schema => RejectReason::SchemaViolation,
        }
    }
}

/// One plugin's figures, published by the engine after each round.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginFigures {
    pub name: String,
    pub world: crate::runtime::World,
    pub version: String,
    pub stats: crate::runtime::PluginStats,
    pub breaker: crate::runtime::BreakerState,
}

/// The state of one external sink (InfluxDB, a webhook receiver), shared by
/// its delivery thread and the health endpoints.
#[derive(Debug)]
pub struct SinkStats {
    /// `influxdb`, or the webhook receiver's name.
    pub name: String,
    /// `influxdb` or `webhook`.
    pub kind: &'static str,
    /// Items (points, alerts) waiting in memory...
    pub backlog: AtomicU64,
    /// ...and bytes of them spilled to the data dir.
    pub spilled_bytes: AtomicU64,
    /// How many items memory holds before the sink spills or holds back.
    pub capacity: u64,
    pub delivered: AtomicU64,
    pub retries: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// The last attempt succeeded (or none failed yet).
    pub up: AtomicBool,
    /// The buffer is full: the pipeline waits for this sink (back-pressure).
    pub full: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    /// From an item's hand-over to the sink to its acknowledgement.
    pub latency: Mutex<Histogram>,
    /// Items handed over, and items settled (delivered or dead-lettered), in
    /// order: everything handed over before `handed == n` is settled once
    /// `settled >= n`. Kafka offsets are committed on that.
    pub handed: AtomicU64,
    pub settled: AtomicU64,
}

impl SinkStats {
    pub fn new(name: impl Into<String>, kind: &'static str, capacity: usize) -> Arc<Self> {
        Arc::new(SinkStats {
            name: name.into(),
            kind,
            backlog: AtomicU64::new(0),
            spilled_bytes: AtomicU64::new(0),
            capacity: capacity as u64,
            delivered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            up: AtomicBool::new(true),
            full: AtomicBool::new(false),
            last_error: Mutex::new(None),
            latency: Mutex::new(Histogram::default()),
            handed: AtomicU64::new(0),
            settled: AtomicU64::new(0),
        })
    }

    /// Records a failed attempt.
    pub fn failed(&self, error: &str) {
        self.up.store(false, Ordering::Relaxed);
        self.retries.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().expect("sink stats lock") = Some(error.to_string());
    }

    /// Records a successful delivery of `n` items.
    pub fn delivered(&self, n: u64) {
        self.up.store(true, Ordering::Relaxed);
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// `ok`, `retrying` (the last attempt failed) or `full` (holding the pipeline back).
    pub fn state(&self) -> &'static str {
        if self.full.load(Ordering::Relaxed) {
            "full"
        } else if self.up.load(Ordering::Relaxed) {
            "ok"
        } else {
            "retrying"
        }
    }

    /// The sink as `/readyz` shows it.
    pub fn to_json(&self) -> serde_json::Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "name": self.name,
            "kind": self.kind,
            "state": self.state(),
            "backlog": get(&self.backlog),
            "spilled_bytes": get(&self.spilled_bytes),
            "capacity": self.capacity,
            "delivered": get(&self.delivered),
            "retries": get(&self.retries),
            "dead_lettered": get(&self.dead_lettered),
            "last_error": *self.last_error.lock().expect("sink stats lock"),
        })
    }
}

/// Process-wide telemetry.
#[derive(Debug, Default)]
pub struct Metrics {
    pub events_received: AtomicU64,
    pub events_accepted: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    pub events_processed: AtomicU64,
    pub events_late: AtomicU64,
    /// Events whose `event_id` the engine had already taken (not processed again).
    pub events_duplicate: AtomicU64,
    pub events_dead_lettered: AtomicU64,
    pub points_written: AtomicU64,
    pub alerts_written: AtomicU64,
    /// Events accepted and not yet processed.
    pub queue_depth: AtomicU64,
    pub watermark_ms: AtomicI64,
    /// The newest event time the engine has seen.
    pub max_event_ms: AtomicI64,
    pub plugins: Mutex<Vec<PluginFigures>>,
    /// From the HTTP request that carried an event to its outputs being written.
    pub ingest_to_output: Mutex<Histogram>,
    /// How long the engine held events back to swap a plugin version.
    pub swap_pause: Mutex<Histogram>,
    /// Plugin versions that reached the pipeline (uploads, folder, rollbacks).
    pub plugin_swaps: AtomicU64,
    /// Uploads and folder loads refused (bad component, config, state...).
    pub plugin_swaps_failed: AtomicU64,
    /// Times the plugins folder watcher looked and had nothing left to load.
    pub folder_idle_checks: AtomicU64,
    /// Checkpoints of plugin state committed (the embedded engine's, or a
    /// processor's tasks' with their offsets).
    pub checkpoints: AtomicU64,
    /// External sinks, registered when they start.
    pub sinks: Mutex<Vec<Arc<SinkStats>>>,
    /// Files under the data dir whose last write failed (a full disk...),
    /// by path: `/readyz` is 503 with the cause until a write succeeds.
    pub storage: Mutex<std::collections::BTreeMap<String, StorageFault>>,
    /// The metric store's figures (zero without a store).
    pub store: Arc<StoreFigures>,
    /// The embedded engine's write-ahead log (zero with `durability = "memory"`).
    pub wal: Arc<WalFigures>,
    /// A Kafka processor's figures (empty on other roles).
    pub processor: ProcessorFigures,
    /// Why the process can no longer do its work (a processor whose consumer
    /// loop died): `/readyz` is 503 with it, and the process exits.
    fatal: Mutex<Option<String>>,
    /// Events their type's schema refused, by (event type, the first rule
    /// they broke, `rejected` or `dead_lettered`). Only types with a schema
    /// and JSON Schema's keywords appear, so the label sets stay few.
    pub schema_violations: Mutex<std::collections::BTreeMap<(String, String, &'static str), u64>>,
}

/// A Kafka processor's figures, for `/metrics`.
#[derive(Debug, Default)]
pub struct ProcessorFigures {
    /// Records behind the end of each assigned partition, (topic, partition)
    /// -> lag, as librdkafka last reported it.
    pub lag: Mutex<std::collections::BTreeMap<(String, i32), i64>>,
    /// Records taken per stage: `source` for the events topic, else the
    /// keyed plugin whose repartition topic they came from.
    pub records: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Partition assignments and revocations.
    pub rebalances: AtomicU64,
    /// Offset commits that succeeded.
    pub commits: AtomicU64,
    /// Bytes of the last checkpoint record of each task, (plugin, partition).
    pub checkpoint_bytes: Mutex<std::collections::BTreeMap<(String, i32), u64>>,
    /// Event time between the most advanced and the least advanced of the
    /// source partitions this processor reads (active ones), ms.
    pub source_skew_ms: std::sync::atomic::AtomicI64,
}

impl ProcessorFigures {
    /// Counts records taken by a stage.
    pub fn took(&self, stage: &str, n: u64) {
        let mut r = self.records.lock().expect("metrics lock");
        match r.get_mut(stage) {
            Some(c) => *c += n,
            None => {
                r.insert(stage.to_string(), n);
            }
        }
    }

    fn render(&self, o: &mut String) {
        let lag = self.lag.lock().expect("metrics lock").clone();
        let records = self.records.lock().expect("metrics lock").clone();
        let sizes = self.checkpoint_bytes.lock().expect("metrics lock").clone();
        let rebalances = self.rebalances.load(Ordering::Relaxed);
        let commits = self.commits.load(Ordering::Relaxed);
        if lag.is_empty() && records.is_empty() && rebalances == 0 {
            return; // not a processor
        }
        let _ = writeln!(
            o,
            "# HELP nexuspipe_kafka_consumer_lag Records behind the end of an assigned partition.\n# TYPE nexuspipe_kafka_consumer_lag gauge"
        );
        for ((topic, p), n) in &lag {
            let _ = writeln!(
                o,
                "nexuspipe_kafka_consumer_lag{{topic=\"{topic}\",partition=\"{p}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP nexuspipe_kafka_records_total Records taken per stage (source: the events topic).\n# TYPE nexuspipe_kafka_records_total counter"
        );
        for (stage, n) in &records {
            let _ = writeln!(o, "nexuspipe_kafka_records_total{{stage=\"{stage}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP nexuspipe_kafka_rebalances_total Partition assignments and revocations.\n# TYPE nexuspipe_kafka_rebalances_total counter\nnexuspipe_kafka_rebalances_total {rebalances}"
        );
        let _ = writeln!(
            o,
            "# HELP nexuspipe_kafka_commits_total Offset commits.\n# TYPE nexuspipe_kafka_commits_total counter\nnexuspipe_kafka_commits_total {commits}"
        );
        let _ = writeln!(
            o,
            "# HELP nexuspipe_kafka_checkpoint_bytes Size of a task's last checkpoint record.\n# TYPE nexuspipe_kafka_checkpoint_bytes gauge"
        );
        for ((plugin, p), n) in &sizes {
            let _ = writeln!(
                o,
                "nexuspipe_kafka_checkpoint_bytes{{plugin=\"{plugin}\",partition=\"{p}\"}} {n}"
            );
        }
        let skew = self.source_skew_ms.load(Ordering::Relaxed) as f64 / 1e3;
        let _ = writeln!(
            o,
            "# HELP nexuspipe_kafka_source_skew_seconds Event time between the most and the least advanced active source partition of this processor (the keyed tasks wait for the least).\n# TYPE nexuspipe_kafka_source_skew_seconds gauge\nnexuspipe_kafka_source_skew_seconds {skew}"
        );
    }
}

/// Figures of the write-ahead log, for `/metrics` and the tests.
#[derive(Debug, Default)]
pub struct WalFigures {
    /// Batches appended (each answered once durable).
    pub appends: AtomicU64,
    /// `fdatasync` calls: fewer than appends when commits are grouped.
    pub syncs: AtomicU64,
    /// Events replayed from the log at start (not yet in a checkpoint).
    pub replayed: AtomicU64,
    /// Bytes of a torn write cut off the log's end at start.
    pub torn_bytes: AtomicU64,
    /// The engine is replaying the log at start (`/readyz` says so, 503).
    pub replaying: std::sync::atomic::AtomicBool,
    /// The last append failed (the log's dir is a storage fault until one succeeds).
    pub failing: std::sync::atomic::AtomicBool,
}

/// Figures of the metric store, for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreFigures {
    pub series: AtomicU64,
    /// Bytes held in memory, roughly.
    pub bytes: AtomicU64,
    /// Points stored since the start.
    pub points: AtomicU64,
    /// Points of new series refused because `max_series` series exist.
    pub series_refused: AtomicU64,
    /// Times raw points were rolled up before their retention (memory budget).
    pub early_rollups: AtomicU64,
}

/// A file the engine cannot write.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StorageFault {
    pub path: String,
    pub error: String,
    /// Bytes held in memory until the write succeeds.
    pub pending_bytes: usize,
    #[serde(skip)]
    since: std::time::Instant,
    #[serde(skip)]
    logged: std::time::Instant,
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics::default();
        m.watermark_ms.store(i64::MIN, Ordering::Relaxed);
        m.max_event_ms.store(i64::MIN, Ordering::Relaxed);
        m
    }

    pub fn reject(&self, reason: RejectReason, n: u64) {
        let i = RejectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("listed");
        self.rejected[i].fetch_add(n, Ordering::Relaxed);
    }

    /// Events refused at ingest, for every reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .sum()
    }

    /// The newest event time seen, if any.
    pub fn newest_event_ms(&self) -> Option<i64> {
        Some(self.max_event_ms.load(Ordering::Relaxed)).filter(|t| *t != i64::MIN)
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        let i = RejectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("listed");
        self.rejected[i].load(Ordering::Relaxed)
    }

    /// Records the outcome of a write to a file under the data dir; logs a
    /// failure when it starts (then every 30 s) and when it ends. True on success.
    pub fn storage_result(
        &self,
        path: &std::path::Path,
        r: std::io::Result<()>,
        pending_bytes: usize,
    ) -> bool {
        let key = path.display().to_string();
        let mut faults = self.storage.lock().expect("metrics lock");
        match r {
            Ok(()) => {
                if let Some(f) = faults.remove(&key) {
                    tracing::info!(file = %key, failing_for_s = f.since.elapsed().as_secs(), "writes succeed again; what was held is written");
                }
                true
            }
            Err(e) => {
                let now = std::time::Instant::now();
                let error = e.to_string();
                match faults.get_mut(&key) {
                    Some(f) => {
                        f.pending_bytes = pending_bytes;
                        f.error = error;
                        if f.logged.elapsed() >= Duration::from_secs(30) {
                            f.logged = now;
                            tracing::error!(file = %key, error = %f.error, pending_bytes, failing_for_s = f.since.elapsed().as_secs(), "still cannot write; what it holds is kept until it can");
                        }
                    }
                    None => {
                        tracing::error!(file = %key, error = %error, pending_bytes, "cannot write; what it holds is kept until it can (outputs hold the pipeline back, so ingest answers 429 once the queue is full)");
                        faults.insert(
                            key.clone(),
                            StorageFault {
                                path: key,
                                error,
                                pending_bytes,
                                since: now,
                                logged: now,
                            },
                        );
                    }
                }
                false
            }
        }
    }

    /// The files that cannot be written now.
    pub fn storage_faults(&self) -> Vec<StorageFault> {
        self.storage
            .lock()
            .expect("metrics lock")
            .values()
            .cloned()
            .collect()
    }

    /// Records why the process cannot go on (the first cause wins).
    pub fn set_fatal(&self, cause: String) {
        let mut f = self.fatal.lock().expect("metrics lock");
        if f.is_none() {
            *f = Some(cause);
        }
    }

    /// Why the process cannot go on, if it cannot.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().expect("metrics lock").clone()
    }

    /// Whether a sink holds the pipeline back (its buffer is full).
    pub fn sink_full(&self) -> bool {
        self.sinks
            .lock()
            .expect("metrics lock")
            .iter()
            .any(|s| s.full.load(Ordering::Relaxed))
    }

    fn render_sinks(&self, o: &mut String) {
        let sinks = self.sinks.lock().expect("metrics lock").clone();
        if sinks.is_empty() {
            return;
        }
        let families: [SinkFamily; 7] = [
            (
                "nexuspipe_sink_backlog",
                "gauge",
                "Items (points, alerts) waiting in memory for the sink.",
                |s| s.backlog.load(Ordering::Relaxed),
            ),
            (
                "nexuspipe_sink_spilled_bytes",
                "gauge",
                "Bytes of points spilled to the data dir.",
                |s| s.spilled_bytes.load(Ordering::Relaxed),
            ),
            (
                "nexuspipe_sink_up",
                "gauge",
                "1 when the sink's last attempt succeeded.",
                |s| u64::from(s.up.load(Ordering::Relaxed)),
            ),
            (
                "nexuspipe_sink_full",
                "gauge",
                "1 when the sink's buffer is full and the pipeline waits for it.",
                |s| u64::from(s.full.load(Ordering::Relaxed)),
            ),
            (
                "nexuspipe_sink_delivered_total",
                "counter",
                "Items the sink acknowledged.",
                |s| s.delivered.load(Ordering::Relaxed),
            ),
            (
                "nexuspipe_sink_retries_total",
                "counter",
                "Failed attempts, retried.",
                |s| s.retries.load(Ordering::Relaxed),
            ),
            (
                "nexuspipe_sink_dead_lettered_total",
                "counter",
                "Items written to the dead-letter file (rejected, or out of attempts).",
                |s| s.dead_lettered.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, f) in families {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for s in &sinks {
                let _ = writeln!(
                    o,
                    "{name}{{sink=\"{}\",kind=\"{}\"}} {}",
                    s.name,
                    s.kind,
                    f(s)
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP nexuspipe_sink_delivery_seconds From hand-over to the sink to acknowledgement.\n# TYPE nexuspipe_sink_delivery_seconds histogram"
        );
        for s in &sinks {
            s.latency.lock().expect("sink stats lock").render(
                o,
                "nexuspipe_sink_delivery_seconds",
                &format!("sink=\"{}\",kind=\"{}\"", s.name, s.kind),
            );
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut o,
            "nexuspipe_events_received_total",
            "Events received over HTTP.",
            get(&self.events_received),
        );
        counter(
            &mut o,
            "nexuspipe_events_accepted_total",
            "Events accepted into the engine.",
            get(&self.events_accepted),
        );
        counter(
            &mut o,
            "nexuspipe_events_processed_total",
            "Events that went through the pipeline.",
            get(&self.events_processed),
        );
        counter(
            &mut o,
            "nexuspipe_events_duplicate_total",
            "Events whose event_id the engine had already taken: acknowledged, not processed again (counted in processed).",
            get(&self.events_duplicate),
        );
        counter(
            &mut o,
            "nexuspipe_events_late_total",
            "Events written to the late output.",
            get(&self.events_late),
        );
        counter(
            &mut o,
            "nexuspipe_events_dead_lettered_total",
            "Events written to the dead-letter output.",
            get(&self.events_dead_lettered),
        );
        counter(
            &mut o,
            "nexuspipe_points_written_total",
            "Metric points written to the sink.",
            get(&self.points_written),
        );
        counter(
            &mut o,
            "nexuspipe_alerts_written_total",
            "Alerts written to the sink.",
            get(&self.alerts_written),
        );
        let _ = writeln!(
            o,
            "# HELP nexuspipe_events_rejected_total Events refused at ingest (and, on a processor, events-topic records dead-lettered as kafka_bad_record), by reason.\n# TYPE nexuspipe_events_rejected_total counter"
        );
        for r in RejectReason::ALL {
            let _ = writeln!(
                o,
                "nexuspipe_events_rejected_total{{reason=\"{}\"}} {}",
                r.name(),
                self.rejected(r)
            );
        }
        let _ = writeln!(
            o,
            "# HELP nexuspipe_schema_violations_total Events their type's schema refused, by event type, the first rule broken and what became of them (rejected or dead_lettered).\n# TYPE nexuspipe_schema_violations_total counter"
        );
        for ((event_type, rule, outcome), n) in
            self.schema_violations.lock().expect("metrics lock").iter()
        {
            let _ = writeln!(
                o,
                "nexuspipe_schema_violations_total{{event_type=\"{}\",rule=\"{}\",outcome=\"{outcome}\"}} {n}",
                label_value(event_type),
                label_value(rule),
            );
        }
        let _ = writeln!(
            o,
            "# HELP nexuspipe_queue_depth Events accepted and not yet processed.\n# TYPE nexuspipe_queue_depth gauge\nnexuspipe_queue_depth {}",
            get(&self.queue_depth)
        );
        let wm = self.watermark_ms.load(Ordering::Relaxed);
        if wm != i64::MIN {
            let _ = writeln!(
                o,
                "# HELP nexuspipe_watermark_ms Current event-time watermark (ms since the epoch).\n# TYPE nexuspipe_watermark_ms gauge\nnexuspipe_watermark_ms {wm}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP nexuspipe_ingest_to_output_seconds Time from HTTP ingest to the event's outputs being written.\n# TYPE nexuspipe_ingest_to_output_seconds histogram"
        );
        self.ingest_to_output.lock().expect("metrics lock").render(
            &mut o,
            "nexuspipe_ingest_to_output_seconds",
            "",
        );
        let _ = writeln!(
            o,
            "# HELP nexuspipe_plugin_swap_pause_seconds Time the engine held events back to swap a plugin version.\n# TYPE nexuspipe_plugin_swap_pause_seconds histogram"
        );
        self.swap_pause.lock().expect("metrics lock").render(
            &mut o,
            "nexuspipe_plugin_swap_pause_seconds",
            "",
        );
        counter(
            &mut o,
            "nexuspipe_plugin_swaps_total",
            "Plugin versions swapped in or removed (uploads, folder, rollbacks).",
            get(&self.plugin_swaps),
        );
        counter(
            &mut o,
            "nexuspipe_plugin_folder_idle_checks_total",
            "Times the plugins folder watcher looked and found nothing left to load.",
            get(&self.folder_idle_checks),
        );
        counter(
            &mut o,
            "nexuspipe_checkpoints_total",
            "Checkpoints of plugin state committed.",
            get(&self.checkpoints),
        );
        let wal = &self.wal;
        for (name, help, v) in [
            (
                "nexuspipe_wal_appends_total",
                "Batches appended to the write-ahead log.",
                &wal.appends,
            ),
            (
                "nexuspipe_wal_syncs_total",
                "fdatasync calls on the write-ahead log (one per group commit).",
                &wal.syncs,
            ),
            (
                "nexuspipe_wal_replayed_events_total",
                "Events replayed from the write-ahead log at start.",
                &wal.replayed,
            ),
            (
                "nexuspipe_wal_torn_bytes_total",
                "Bytes of a torn write cut off the write-ahead log at start.",
                &wal.torn_bytes,
            ),
        ] {
            counter(&mut o, name, help, get(v));
        }
        counter(
            &mut o,
            "nexuspipe_plugin_swaps_failed_total",
            "Uploads and folder loads refused; the running version stayed.",
            get(&self.plugin_swaps_failed),
        );
        let st = &self.store;
        for (name, kind, help, v) in [
            (
                "nexuspipe_store_series",
                "gauge",
                "Series in the metric store.",
                &st.series,
            ),
            (
                "nexuspipe_store_bytes",
                "gauge",
                "Bytes the metric store holds in memory (estimated).",
                &st.bytes,
            ),
            (
                "nexuspipe_store_points_total",
                "counter",
                "Points stored.",
                &st.points,
            ),
            (
                "nexuspipe_store_series_refused_total",
                "counter",
                "Points not stored because max_series series exist.",
                &st.series_refused,
            ),
            (
                "nexuspipe_store_early_rollups_total",
                "counter",
                "Times raw points were rolled up before their retention to stay in the memory budget.",
                &st.early_rollups,
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                get(v)
            );
        }
        self.render_sinks(&mut o);
        self.processor.render(&mut o);
        let plugins = self.plugins.lock().expect("metrics lock").clone();
        if !plugins.is_empty() {
            let families: [(&str, &str, StatFn); 7] = [
                (
                    "nexuspipe_plugin_calls_total",
                    "Calls into the plugin.",
                    |s| s.calls,
                ),
                (
                    "nexuspipe_plugin_events_in_total",
                    "Events sent to the plugin.",
                    |s| s.events_in,
                ),
                (
                    "nexuspipe_plugin_events_out_total",
                    "Events, points or alerts the plugin returned.",
                    |s| s.events_out,
                ),
                (
                    "nexuspipe_plugin_failures_total",
                    "Failed calls (trap, deadline, memory cap, bad output).",
                    |s| s.failures,
                ),
                (
                    "nexuspipe_plugin_retries_total",
                    "Batches tried once more on a fresh instance after running past the deadline.",
                    |s| s.retries,
                ),
                (
                    "nexuspipe_plugin_dead_lettered_total",
                    "Events dead-lettered because of the plugin.",
                    |s| s.dead_lettered,
                ),
                (
                    "nexuspipe_plugin_log_dropped_total",
                    "Log lines dropped by the per-call limit (max_log_lines).",
                    |s| s.log_dropped,
                ),
            ];
            for (name, help, f) in families {
                let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
                for p in &plugins {
                    let _ = writeln!(o, "{name}{{plugin=\"{}\"}} {}", p.name, f(&p.stats));
                }
            }
            let _ = writeln!(
                o,
                "# HELP nexuspipe_plugin_breaker_open 1 when the plugin is disabled by its circuit breaker.\n# TYPE nexuspipe_plugin_breaker_open gauge"
            );
            for p in &plugins {
                let open = u8::from(p.breaker == crate::runtime::BreakerState::Open);
                let _ = writeln!(
                    o,
                    "nexuspipe_plugin_breaker_open{{plugin=\"{}\"}} {open}",
                    p.name
                );
            }
            let _ = writeln!(
                o,
                "# HELP nexuspipe_plugin_call_seconds Time per call into the plugin.\n# TYPE nexuspipe_plugin_call_seconds histogram"
            );
            for p in &plugins {
                p.stats.latency.render(
                    &mut o,
                    "nexuspipe_plugin_call_seconds",
                    &format!("plugin=\"{}\"", p.name),
                );
            }
        }
        o
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
