//! Where plugin outputs go: metric points to InfluxDB or `metrics.lp`,
//! alerts to `alerts.jsonl`, the log and webhook receivers, late events and
//! dead letters to their files.

pub mod files;
pub mod influx;
pub mod lineproto;
pub mod retry;
pub mod webhook;

use crate::config::Config;
use crate::event::{format_timestamp, to_json, value_to_json};
use crate::runtime::DeadLetter;
use crate::runtime::{Alert, AlertStatus, MetricPoint, PluginOutput, Severity};
use crate::telemetry::{Metrics, SinkStats};
use files::{AppendFile, SharedFile};
use influx::InfluxSink;
use serde_json::{Map, Value as Json, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use webhook::WebhookSink;

/// Every output of the engine: the embedded files and the external sinks.
pub struct Outputs {
    /// `metrics.lp`: without `[influxdb]`, or with `metrics_file = true`.
    metrics_lp: Option<AppendFile>,
    influx: Option<InfluxSink>,
    webhooks: Vec<WebhookSink>,
    alerts: AppendFile,
    dead: SharedFile,
    late: AppendFile,
    metrics: Arc<Metrics>,
    data_dir: PathBuf,
}

impl Outputs {
    /// Opens the files in the data dir and starts the configured sinks.
    pub fn open(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Outputs> {
        let dir = config.engine.data_dir.clone();
        std::fs::create_dir_all(&dir)?;
        let dead = AppendFile::shared(dir.join("dead-letter.jsonl"));
        let mut stats = Vec::new();
        let influx =
            match &config.influxdb {
                Some(c) => {
                    let s = SinkStats::new("influxdb", "influxdb", c.buffer_points);
                    stats.push(s.clone());
                    Some(InfluxSink::start(c, &dir, dead.clone(), s).map_err(|e| {
                        anyhow::anyhow!("starting the InfluxDB sink ({}): {e}", c.url)
                    })?)
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
        *metrics.sinks.lock().expect("metrics lock") = stats;
        let keep_file = config.influxdb.as_ref().is_none_or(|c| c.metrics_file);
        Ok(Outputs {
            metrics_lp: keep_file.then(|| AppendFile::new(dir.join("metrics.lp"))),
            influx,
            webhooks,
            alerts: AppendFile::new(dir.join("alerts.jsonl")),
            dead,
            late: AppendFile::new(dir.join("late.jsonl")),
            metrics,
            data_dir: dir,
        })
    }

    /// Writes a round's outputs. Blocks while the InfluxDB backlog is full.
    pub fn write(&mut self, out: &PluginOutput) {
        if let Err(e) = self.try_write(out) {
            tracing::error!(error = %e, dir = %self.data_dir.display(), "writing outputs to the data dir failed");
        }
    }

    fn try_write(&mut self, out: &PluginOutput) -> std::io::Result<()> {
        let m = &self.metrics;
        if !out.points.is_empty() {
            if let Some(f) = &mut self.metrics_lp {
                let mut text = String::with_capacity(out.points.len() * 64);
                for p in &out.points {
                    lineproto::write_point(&mut text, p);
                }
                f.write_str(&text)?;
                f.flush(false)?;
            }
            if let Some(influx) = &self.influx {
                influx.push(out.points.iter().map(lineproto::to_line_bare).collect());
            }
            m.points_written
                .fetch_add(out.points.len() as u64, Ordering::Relaxed);
        }
        for a in &out.alerts {
            tracing::warn!(rule = %a.rule_id, key = %a.key, status = status_name(a.status), severity = severity_name(a.severity), "alert: {}", a.summary);
            let record = alert_to_json(a);
            self.alerts.write_json(&record)?;
            if !self.webhooks.is_empty() {
                let id = webhook::message_id(a);
                for w in &self.webhooks {
                    w.push(a, &id, &record);
                }
            }
        }
        if !out.alerts.is_empty() {
            self.alerts.flush(false)?;
            m.alerts_written
                .fetch_add(out.alerts.len() as u64, Ordering::Relaxed);
        }
        if !out.dead.is_empty() {
            let mut dead = self.dead.lock().expect("dead-letter file lock");
            for d in &out.dead {
                dead.write_json(&dead_letter_to_json(d))?;
                m.events_dead_lettered
                    .fetch_add(d.events.len() as u64, Ordering::Relaxed);
            }
            dead.flush(true)?;
        }
        for (plugin, e) in &out.late {
            self.late.write_json(&late_to_json(plugin, e))?;
        }
        if !out.late.is_empty() {
            self.late.flush(false)?;
            m.events_late
                .fetch_add(out.late.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes records that never became events (bad Kafka records) to the
    /// dead-letter file.
    pub fn dead_records(&mut self, records: &[Json]) {
        if records.is_empty() {
            return;
        }
        let mut dead = self.dead.lock().expect("dead-letter file lock");
        let r = records
            .iter()
            .try_for_each(|r| dead.write_json(r))
            .and_then(|()| dead.flush(true));
        if let Err(e) = r {
            tracing::error!(error = %e, "writing the dead-letter file failed");
        }
        self.metrics
            .events_dead_lettered
            .fetch_add(records.len() as u64, Ordering::Relaxed);
    }

    /// Syncs the files to disk (at each checkpoint).
    pub fn sync(&mut self) {
        let files = [
            self.metrics_lp.as_mut(),
            Some(&mut self.alerts),
            Some(&mut self.late),
        ];
        for f in files.into_iter().flatten() {
            if let Err(e) = f.flush(true) {
                tracing::error!(error = %e, file = %f.path().display(), "flushing an output failed");
            }
        }
    }

    /// Ends sink back-pressure at shutdown (call before asking the engine to stop).
    pub fn stopper(&self) -> influx::Stopper {
        self.influx
            .as_ref()
            .map_or_else(influx::Stopper::default, InfluxSink::stopper)
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
    }

    /// Points handed to InfluxDB and not yet written.
    pub fn influx_backlog(&self) -> usize {
        self.influx.as_ref().map_or(0, InfluxSink::backlog)
    }

    /// Drains the sinks (each within its drain timeout; the rest is spooled
    /// for the next run) and syncs the files.
    pub fn close(mut self) {
        self.sync();
        // Receivers drain in parallel: one dead receiver costs its timeout once.
        let closing: Vec<_> = std::mem::take(&mut self.webhooks)
            .into_iter()
            .map(|w| std::thread::spawn(move || w.close()))
            .collect();
        if let Some(i) = self.influx.take() {
            i.close();
        }
        for c in closing {
            let _ = c.join();
        }
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

/// A metric point as a JSON record (`plugin run`), with its line-protocol form.
pub fn point_to_json(p: &MetricPoint) -> Json {
    let tags: Map<String, Json> = p
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), Json::String(v.clone())))
        .collect();
    let fields: Map<String, Json> = p
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect();
    json!({
        "measurement": p.measurement,
        "tags": tags,
        "fields": fields,
        "timestamp": p.timestamp,
    })
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
