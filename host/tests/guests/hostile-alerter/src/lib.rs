//! A hostile alerter for the host's output-limit tests. Event types are
//! commands: `alerts-flood` returns 20 000 alerts (more than `max_alerts`),
//! `long-summary` an alert whose summary is 100 KiB (more than
//! `max_string_bytes`); any other event gives one `ok` alert.

use nexuspipe_sdk::prelude::*;

pub struct Flood {
    state: (),
}

fn alert(key: String, summary: String) -> Alert {
    Alert {
        rule_id: "flood".into(),
        fingerprint: format!("flood-{key}"),
        key,
        status: AlertStatus::Firing,
        severity: Severity::Info,
        summary,
        labels: Vec::new(),
        starts_at: 0,
        ends_at: None,
    }
}

impl Alerter for Flood {
    type State = ();

    fn init(_config: &str, _settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        Ok((Flood { state: () }, Interest::all()))
    }

    fn process(&mut self, events: Vec<Event>, _watermark: i64) -> AlertOutput {
        let mut alerts = Vec::new();
        for e in &events {
            match e.event_type.as_str() {
                "alerts-flood" => {
                    alerts.extend((0..20_000).map(|i| alert(i.to_string(), "flood".into())))
                }
                "long-summary" => alerts.push(alert("long".into(), "s".repeat(100 << 10))),
                _ => alerts.push(alert(e.id.clone(), "ok".into())),
            }
        }
        AlertOutput {
            alerts,
            late: Vec::new(),
        }
    }

    fn state(&self) -> &() {
        &self.state
    }

    fn state_mut(&mut self) -> &mut () {
        &mut self.state
    }
}

nexuspipe_sdk::export_alerter!(Flood);
