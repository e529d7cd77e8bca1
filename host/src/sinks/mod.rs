//! Where plugin outputs go: line protocol for metric points, JSON records for
//! alerts, late events and dead letters.

pub mod files;
pub mod lineproto;

use crate::event::{format_timestamp, to_json, value_to_json};
use crate::runtime::DeadLetter;
use crate::runtime::{Alert, AlertStatus, MetricPoint, Severity};
use serde_json::{Map, Value as Json, json};

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
