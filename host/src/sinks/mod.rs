//! Where plugin outputs go: metric points to InfluxDB or `metrics.lp`,
//! alerts to `alerts.jsonl`, the log and webhook receivers, late events and
//! dead letters to their files.

pub mod archive;
pub mod files;
pub mod influx;
pub mod retry;
pub mod webhook;

use crate::config::Config;
pub use crate::event::point_to_json;
use crate::event::{format_timestamp, to_json};
use crate::lineproto;
use crate::runtime::DeadLetter;
use crate::runtime::{Alert, AlertStatus, PluginOutput, Severity};
use crate::telemetry::{Metrics, SinkStats};
use files::{AppendFile, SharedFile};
use influx::InfluxSink;
use serde_json::{Map, Value as Json, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use webhook::WebhookSink;

/// Every output of the engine: the embedded files and the external sinks.
pub struct Outputs {
    /// `metrics.lp`: without `[influxdb]`, or with `metrics_file = true`.
    metrics_lp: Option<AppendFile>,
    influx: Option<InfluxSink>,
    webhooks: Vec<WebhookSink>,
    /// The metric store behind the query API (`[store] enabled`).
    store: Option<crate::store::StoreWriter>,
    /// Live push to WebSocket and SSE clients.
    hub: Arc<crate::hub::Hub>,
    alerts: AppendFile,
    dead: SharedFile,
    late: AppendFile,
    metrics: Arc<Metrics>,
    /// Set at shutdown: see [`Stopper`].
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Alerts logged this second, and those left out of the log.
    alert_log: (std::time::Instant, u32, u64),
}

/// Alerts logged a second, at most: a noisy rule (thousands a second under
/// attack) would fill the log; every alert is in `alerts.jsonl` anyway.
const ALERT_LOG_PER_SECOND: u32 = 20;

impl Outputs {
    /// Opens the files in the data dir and starts the configured sinks.
    pub fn open(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Outputs> {
        let dir = config.engine.data_dir.clone();
        std::fs::create_dir_all(&dir)?;
        let dead = AppendFile::shared(dir.join("dead-letter.jsonl"));
        let mut stats = Vec::new();
        let influx = match &config.influxdb {
            Some(c) => {
                let s = SinkStats::new("influxdb", "influxdb", c.buffer_points);
                stats.push(s.clone());
                Some(
                    InfluxSink::start(c, &dir, dead.clone(), s, metrics.clone()).map_err(|e| {
                        anyhow::anyhow!("starting the InfluxDB sink ({}): {e}", c.url)
                    })?,
                )
            }
            None => None,
        };
        let mut webhooks = Vec::new();
        for (i, c) in config.webhooks.iter().enumerate() {
            let name = config.webhook_name(i);
            let s = SinkStats::new(name.clone(), "webhook", c.queue_capacity);
            stats.push(s.clone());
            webhooks.push(
                WebhookSink::start(&name, c, &dir, dead.clone(), s)
                    .map_err(|e| anyhow::anyhow!("starting webhook `{name}` ({}): {e}", c.url))?,
            );
        }
        let store = if config.store.enabled {
            let s = SinkStats::new("store", "store", 256);
            stats.push(s.clone());
            Some(
                crate::store::StoreWriter::open(
                    dir.join("store"),
                    crate::store::StoreSettings::from(&config.store),
                    metrics.clone(),
                    s,
                )
                .map_err(|e| {
                    anyhow::anyhow!("opening the metric store in {}: {e}", dir.display())
                })?,
            )
        } else {
            None
        };
        *metrics.sinks.lock().expect("metrics lock") = stats;
        let keep_file = config.influxdb.as_ref().is_none_or(|c| c.metrics_file);
        Ok(Outputs {
            metrics_lp: keep_file.then(|| AppendFile::new(dir.join("metrics.lp"))),
            influx,
            webhooks,
            store,
            hub: crate::hub::Hub::start(config.stream.clone(), metrics.clone())?,
            alerts: AppendFile::new(dir.join("alerts.jsonl")),
            dead,
            late: AppendFile::new(dir.join("late.jsonl")),
            metrics,
            stopping: Arc::default(),
            alert_log: (std::time::Instant::now(), 0, 0),
        })
    }

    /// Writes a round's outputs, each sink on its own, so one that fails
    /// (a full disk under `metrics.lp`) never keeps the others from theirs
    /// (InfluxDB, webhooks, the other files). Blocks while the InfluxDB
    /// backlog is full, and while a file cannot take its records (see
    /// [`Outputs::hold_until_written`]): that is the back-pressure.
    pub fn write(&mut self, out: &PluginOutput) {
        let m = &self.metrics;
        if !out.points.is_empty() {
            if let Some(f) = &mut self.metrics_lp {
                let mut text = String::with_capacity(out.points.len() * 64);
                for p in &out.points {
                    lineproto::write_point(&mut text, p);
                }
                f.write_str(&text);
            }
            if let Some(influx) = &self.influx {
                influx.push(out.points.iter().map(lineproto::to_line_bare).collect());
            }
            m.points_written
                .fetch_add(out.points.len() as u64, Ordering::Relaxed);
        }
        let mut records = Vec::with_capacity(out.alerts.len());
        for a in &out.alerts {
            log_alert(&mut self.alert_log, a);
            let record = Arc::new(alert_to_json(a));
            if !self.webhooks.is_empty() {
                let id = webhook::message_id(a);
                for w in &self.webhooks {
                    w.push(a, &id, &record);
                }
            }
            self.alerts.write_json(&record);
            records.push(record);
        }
        match &self.store {
            // Pushed live once a query can see them (see `StoreWriter::push`).
            Some(store) => {
                let hub = self.hub.clone();
                store.push(
                    out.points.clone(),
                    records,
                    Some(Box::new(move |points, alerts| hub.publish(points, alerts))),
                );
            }
            None => self.hub.publish(&out.points, &records),
        }
        m.alerts_written
            .fetch_add(out.alerts.len() as u64, Ordering::Relaxed);
        if !out.dead.is_empty() {
            let mut dead = self.dead.lock().expect("dead-letter file lock");
            for d in &out.dead {
                dead.write_json(&dead_letter_to_json(d));
                m.events_dead_lettered
                    .fetch_add(d.events.len() as u64, Ordering::Relaxed);
            }
        }
        for (plugin, e) in &out.late {
            self.late.write_json(&late_to_json(plugin, e));
        }
        m.events_late
            .fetch_add(out.late.len() as u64, Ordering::Relaxed);
        self.hold_until_written();
    }

    /// Writes what the files hold (dead letters always to disk, the rest with
    /// `durable`), each on its own; records a failure (and a recovery) for
    /// `/readyz` and the log. True when nothing is left pending.
    pub fn flush_files(&mut self, durable: bool) -> bool {
        let m = &self.metrics;
        let mut ok = true;
        for f in [
            self.metrics_lp.as_mut(),
            Some(&mut self.alerts),
            Some(&mut self.late),
        ]
        .into_iter()
        .flatten()
        {
            let r = f.flush(durable);
            ok &= m.storage_result(f.path(), r, f.pending());
        }
        let mut dead = self.dead.lock().expect("dead-letter file lock");
        let r = dead.flush(true);
        ok &= m.storage_result(dead.path(), r, dead.pending());
        ok
    }

    /// Writes records that never became events (bad Kafka records) to the
    /// dead-letter file; blocks as [`Outputs::write`] does.
    pub fn dead_records(&mut self, records: &[Json]) {
        if records.is_empty() {
            return;
        }
        {
            let mut dead = self.dead.lock().expect("dead-letter file lock");
            for r in records {
                dead.write_json(r);
            }
        }
        self.metrics
            .events_dead_lettered
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.hold_until_written();
    }

    /// Syncs the files and the store to disk (at each checkpoint); false if
    /// a file failed (its records stay pending and the failure shows in `/readyz`).
    pub fn sync(&mut self) -> bool {
        if let Some(s) = &self.store {
            s.sync();
        }
        self.flush_files(true)
    }

    /// The live push hub, for the stream API and the engine's event sample.
    pub fn hub(&self) -> Option<Arc<crate::hub::Hub>> {
        Some(self.hub.clone())
    }

    /// The metric store, for the query API.
    pub fn store(&self) -> Option<Arc<crate::store::Store>> {
        self.store.as_ref().map(crate::store::StoreWriter::store)
    }

    /// Waits until the files have taken what they hold: the pipeline stops
    /// here while a disk is full (the engine's queue fills, ingest answers
    /// 429) and goes on once space returns. At shutdown it gives up after
    /// `STOP_PATIENCE`, logging what could not be written.
    fn hold_until_written(&mut self) {
        let started = std::time::Instant::now();
        let mut wait = std::time::Duration::from_millis(20);
        while !self.flush_files(false) {
            if self.stopping.load(Ordering::Relaxed) && started.elapsed() > STOP_PATIENCE {
                tracing::error!(
                    pending = ?self.pending(),
                    "shutting down with outputs the disk would not take; they are lost"
                );
                return;
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(std::time::Duration::from_secs(1));
        }
    }

    /// Bytes each file still holds in memory.
    fn pending(&self) -> Vec<(String, usize)> {
        let dead = self.dead.lock().expect("dead-letter file lock");
        [
            self.metrics_lp.as_ref(),
            Some(&self.alerts),
            Some(&self.late),
            Some(&*dead),
        ]
        .into_iter()
        .flatten()
        .filter(|f| f.pending() > 0)
        .map(|f| (f.path().display().to_string(), f.pending()))
        .collect()
    }

    /// Ends sink back-pressure at shutdown (call before asking the engine to stop).
    /// The dead-letter file, for what ingest dead-letters (schemas).
    pub fn dead_letters(&self) -> SharedFile {
        self.dead.clone()
    }

    pub fn stopper(&self) -> Stopper {
        Stopper {
            influx: self
                .influx
                .as_ref()
                .map_or_else(influx::Stopper::default, InfluxSink::stopper),
            files: self.stopping.clone(),
        }
    }

    /// How far each external sink's hand-overs go now (see [`SinkStats::handed`]).
    pub fn mark(&self) -> Mark {
        Mark(
            self.stats()
                .map(|s| s.handed.load(Ordering::Relaxed))
                .collect(),
        )
    }

    /// Whether everything handed over before `mark` is settled.
    pub fn settled(&self, mark: &Mark) -> bool {
        self.stats()
            .zip(&mark.0)
            .all(|(s, &m)| s.settled.load(Ordering::Relaxed) >= m)
    }

    /// Asks InfluxDB's delivery to send what `mark` covers now.
    pub fn hurry(&self, mark: &Mark) {
        if let (Some(i), Some(&m)) = (&self.influx, mark.0.first()) {
            i.hurry(m);
        }
    }

    /// The external sinks' figures, InfluxDB first.
    fn stats(&self) -> impl Iterator<Item = &SinkStats> {
        self.influx
            .iter()
            .map(InfluxSink::stats)
            .chain(self.webhooks.iter().map(WebhookSink::stats))
            .chain(self.store.iter().map(crate::store::StoreWriter::stats))
    }

    /// Points handed to InfluxDB and not yet written.
    pub fn influx_backlog(&self) -> usize {
        self.influx.as_ref().map_or(0, InfluxSink::backlog)
    }

    /// Drains the sinks (each within its drain timeout; the rest is spooled
    /// for the next run) and syncs the files.
    pub fn close(mut self) {
        self.hold_until_written();
        self.sync();
        // Receivers drain in parallel: one dead receiver costs its timeout once.
        let closing: Vec<_> = std::mem::take(&mut self.webhooks)
            .into_iter()
            .map(|w| std::thread::spawn(move || w.close()))
            .collect();
        if let Some(i) = self.influx.take() {
            i.close();
        }
        if let Some(s) = self.store.take() {
            s.close();
        }
        for c in closing {
            let _ = c.join();
        }
    }
}

/// Logs an alert, at most `ALERT_LOG_PER_SECOND` a second; then how many
/// were left out.
fn log_alert(state: &mut (std::time::Instant, u32, u64), a: &Alert) {
    let (since, logged, left_out) = state;
    if since.elapsed() >= std::time::Duration::from_secs(1) {
        if *left_out > 0 {
            tracing::warn!(
                alerts = *left_out,
                "alerts not logged in the last second (too many; all are in alerts.jsonl)"
            );
        }
        *since = std::time::Instant::now();
        (*logged, *left_out) = (0, 0);
    }
    if *logged < ALERT_LOG_PER_SECOND {
        *logged += 1;
        tracing::warn!(rule = %a.rule_id, key = %a.key, status = status_name(a.status), severity = severity_name(a.severity), "alert: {}", a.summary);
    } else {
        *left_out += 1;
    }
}

/// How long a shutdown waits for a full disk before giving up on what it holds.
const STOP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Ends the sinks' back-pressure at shutdown: the InfluxDB buffer spills
/// whatever its size, and a full disk is waited for at most `STOP_PATIENCE`.
#[derive(Clone)]
pub struct Stopper {
    influx: influx::Stopper,
    files: Arc<std::sync::atomic::AtomicBool>,
}

impl Stopper {
    pub fn stop(&self) {
        self.files.store(true, Ordering::Relaxed);
        self.influx.stop();
    }
}

/// A position in the sinks' hand-overs (see [`Outputs::mark`]).
#[derive(Debug, Clone, Default)]
pub struct Mark(Vec<u64>);

/// An alert as a JSON record (`alerts.jsonl`, `plugin run`).
pub fn alert_to_json(a: &Alert) -> Json {
    let labels: Map<String, Json> = a
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Json::String(v.clone())))
        .collect();
    json!({
        "rule_id": a.rule_id,
        "key": a.key,
        "status": status_name(a.status),
        "severity": severity_name(a.severity),
        "summary": a.summary,
        "labels": labels,
        "starts_at": format_timestamp(a.starts_at),
        "ends_at": a.ends_at.map(format_timestamp),
        "fingerprint": a.fingerprint,
    })
}

pub fn status_name(s: AlertStatus) -> &'static str {
    match s {
        AlertStatus::Firing => "firing",
        AlertStatus::Resolved => "resolved",
    }
}

pub fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "error",
        Severity::Critical => "critical",
    }
}

/// A dead-letter record: the failed batch with the plugin and the error.
pub fn dead_letter_to_json(d: &DeadLetter) -> Json {
    json!({
        "at": format_timestamp(crate::event::now_ms()),
        "plugin": d.plugin,
        "kind": d.kind,
        "error": d.error,
        "events": d.events.iter().map(to_json).collect::<Vec<_>>(),
    })
}

/// A late event record: the event and the plugin whose window had closed.
pub fn late_to_json(plugin: &str, e: &crate::runtime::Event) -> Json {
    json!({ "plugin": plugin, "event": to_json(e) })
}
