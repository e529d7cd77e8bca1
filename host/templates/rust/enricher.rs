//! An enricher: sees each batch of events and returns changes to them
//! (patch, drop, emit). This one sets `is_mobile` from the user agent.

wit_bindgen::generate!({ path: "wit", world: "enricher" });

use exports::nexuspipe::plugin::enrich::Guest;
use nexuspipe::plugin::host::log;
use nexuspipe::plugin::types::{
    Change, ConfigError, Event, EventFields, EventPatch, HostSettings, Interest, Level,
    MetadataFields, Property, Value,
};

struct Plugin;

impl Guest for Plugin {
    /// Called once with the plugin's config text (`--config`, `[[plugins]]
    /// config`, `?config=`). Parse it here; an error names the field.
    fn init(config: String, _settings: HostSettings) -> Result<Interest, ConfigError> {
        if !config.trim().is_empty() {
            return Err(ConfigError {
                field: None,
                message: "this plugin takes no config yet".into(),
            });
        }
        log(Level::Info, "ready", &[]);
        // What the plugin reads: the host sends only this (every event
        // type, no properties, the user agent), which keeps calls cheap.
        Ok(Interest {
            event_types: vec![],
            properties: Some(vec![]),
            metadata: MetadataFields::USER_AGENT,
            fields: EventFields::empty(),
        })
    }

    /// One call per batch; `index` in a change is the event's position.
    fn process(events: Vec<Event>) -> Vec<Change> {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                // Your logic here.
                let mobile = e
                    .metadata
                    .user_agent
                    .as_deref()
                    .is_some_and(|ua| ua.contains("Mobile"));
                Change::Patch(EventPatch {
                    index: i as u32,
                    event_type: None,
                    user_id: None,
                    session_id: None,
                    set_properties: vec![Property {
                        key: "is_mobile".into(),
                        value: Value::Boolean(mobile),
                    }],
                    remove_properties: vec![],
                    metadata: None,
                })
            })
            .collect()
    }
}

export!(Plugin);
