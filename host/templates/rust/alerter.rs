//! An alerter: sees events with the watermark and returns alerts. This one
//! fires an alert for every `error` event.

wit_bindgen::generate!({ path: "wit", world: "alerter" });

use exports::nexuspipe::plugin::alerting::Guest;
use nexuspipe::plugin::host::log;
use nexuspipe::plugin::types::{
    Alert, AlertOutput, AlertStatus, ConfigError, Event, EventFields, HostSettings, Interest,
    Level, MetadataFields, Restored, Severity, StateError,
};

struct Plugin;

impl Guest for Plugin {
    /// Called once with the plugin's config text. Parse it here.
    fn init(config: String, _settings: HostSettings) -> Result<Interest, ConfigError> {
        if !config.trim().is_empty() {
            return Err(ConfigError {
                field: None,
                message: "this plugin takes no config yet".into(),
            });
        }
        log(Level::Info, "ready", &[]);
        // Only `error` events, with their id and user.
        Ok(Interest {
            event_types: vec!["error".into()],
            properties: Some(vec![]),
            metadata: MetadataFields::empty(),
            fields: EventFields::ID | EventFields::USER_ID,
        })
    }

    fn process(events: Vec<Event>, _watermark: i64) -> AlertOutput {
        let mut alerts = Vec::new();
        for e in events.iter().filter(|e| e.event_type == "error") {
            // Your logic here: a rule over events (and state, across calls).
            let key = e.user_id.clone().unwrap_or_else(|| "anonymous".into());
            alerts.push(Alert {
                rule_id: "error_event".into(),
                summary: format!("an error from {key}"),
                key,
                status: AlertStatus::Firing,
                severity: Severity::Warning,
                labels: vec![("rule".into(), "error_event".into())],
                starts_at: e.timestamp,
                ends_at: None,
                // Stable across replays, so receivers deduplicate.
                fingerprint: e.id.clone(),
            });
        }
        AlertOutput {
            alerts,
            late: vec![],
        }
    }

    /// Nothing is kept between calls yet; state you add goes here.
    fn snapshot() -> Vec<u8> {
        Vec::new()
    }

    fn restore(_state: Vec<u8>) -> Result<Restored, StateError> {
        Ok(Restored {
            kept: vec![],
            reset: vec![],
            dropped: vec![],
            added: vec![],
        })
    }
}

export!(Plugin);
