//! An aggregator: keeps state across batches and emits metric points as
//! event time (the watermark) passes. This one counts events per type in
//! one-minute tumbling windows.

wit_bindgen::generate!({ path: "wit", world: "aggregator" });

use exports::nexuspipe::plugin::aggregate::Guest;
use nexuspipe::plugin::host::log;
use nexuspipe::plugin::types::{
    AggregateOutput, ConfigError, Event, EventFields, HostSettings, Interest, Level,
    MetadataFields, MetricPoint, Restored, StateError, Value,
};
use std::collections::BTreeMap;
use std::sync::Mutex;

const WINDOW_MS: i64 = 60_000;

/// Open windows: (window start, event type) -> events counted.
#[derive(Default)]
struct State {
    windows: BTreeMap<(i64, String), i64>,
    /// The highest watermark seen: windows ending at or before it are out.
    watermark: Option<i64>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn with_state<T>(f: impl FnOnce(&mut State) -> T) -> T {
    f(STATE.lock().unwrap().get_or_insert_with(State::default))
}

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
        *STATE.lock().unwrap() = Some(State::default());
        log(Level::Info, "ready", &[]);
        // Every event type; no properties, metadata or ids are needed.
        Ok(Interest {
            event_types: vec![],
            properties: Some(vec![]),
            metadata: MetadataFields::empty(),
            fields: EventFields::empty(),
        })
    }

    fn process(events: Vec<Event>, watermark: i64) -> AggregateOutput {
        with_state(|s| {
            let mut late = Vec::new();
            for (i, e) in events.iter().enumerate() {
                let start = e.timestamp - e.timestamp.rem_euclid(WINDOW_MS);
                // Its window was emitted already: the host records it as late.
                if s.watermark.is_some_and(|w| start + WINDOW_MS <= w) {
                    late.push(i as u32);
                    continue;
                }
                // Your logic here.
                *s.windows.entry((start, e.event_type.clone())).or_insert(0) += 1;
            }
            s.watermark = Some(s.watermark.map_or(watermark, |w| w.max(watermark)));
            // Windows that event time has passed, in (start, type) order.
            let mut points = Vec::new();
            while let Some(entry) = s.windows.first_entry() {
                let (start, _) = entry.key();
                if start + WINDOW_MS > watermark {
                    break;
                }
                let ((start, event_type), count) = entry.remove_entry();
                points.push(MetricPoint {
                    measurement: "events_per_minute".into(),
                    tags: vec![("event_type".into(), event_type)],
                    fields: vec![("count".into(), Value::Int(count))],
                    timestamp: start,
                });
            }
            AggregateOutput { points, late }
        })
    }

    /// The state as bytes, for checkpoints and new versions: one line per
    /// window (`start<TAB>count<TAB>type`), the watermark first.
    fn snapshot() -> Vec<u8> {
        with_state(|s| {
            let mut out = format!("{}\n", s.watermark.map_or(String::new(), |w| w.to_string()));
            for ((start, event_type), count) in &s.windows {
                out.push_str(&format!("{start}\t{count}\t{event_type}\n"));
            }
            out.into_bytes()
        })
    }

    fn restore(state: Vec<u8>) -> Result<Restored, StateError> {
        let bad = |m: &str| StateError {
            message: format!("unreadable state: {m}"),
        };
        let text = String::from_utf8(state).map_err(|_| bad("not UTF-8"))?;
        let mut lines = text.lines();
        let mut s = State::default();
        if let Some(w) = lines.next().filter(|w| !w.is_empty()) {
            s.watermark = Some(w.parse().map_err(|_| bad("watermark"))?);
        }
        for line in lines {
            let mut parts = line.splitn(3, '\t');
            let (Some(start), Some(count), Some(event_type)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(line));
            };
            let start = start.parse().map_err(|_| bad(line))?;
            let count = count.parse().map_err(|_| bad(line))?;
            s.windows.insert((start, event_type.to_string()), count);
        }
        *STATE.lock().unwrap() = Some(s);
        Ok(Restored {
            kept: vec![],
            reset: vec![],
            dropped: vec![],
            added: vec![],
        })
    }
}

export!(Plugin);
