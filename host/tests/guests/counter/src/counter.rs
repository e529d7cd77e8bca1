// The counter's logic, shared by `counter` and `counter-v2` (tests of live swaps).

use nexuspipe_sdk::prelude::*;

pub struct Counter {
    window: Tumbling,
    state: WindowStore<String, i64>,
}

impl Aggregator for Counter {
    type State = WindowStore<String, i64>;

    fn init(config: &str, settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        let mut window_ms = 60_000;
        if !config.trim().is_empty() {
            let v: serde_json::Value = serde_json::from_str(config).map_err(ConfigError::parse)?;
            window_ms = v["window_ms"]
                .as_i64()
                .filter(|w| *w > 0)
                .ok_or_else(|| ConfigError::at("window_ms", "must be a positive integer"))?;
            // A slow start, for the host's deadline tests (real time needs
            // the clock capability).
            if let Some(ms) = v["init_ms"].as_u64() {
                let started = std::time::Instant::now();
                while started.elapsed() < std::time::Duration::from_millis(ms) {
                    std::hint::spin_loop();
                }
            }
        }
        Ok((
            Counter {
                window: Tumbling::new(window_ms),
                state: WindowStore::new(settings.allowed_lateness),
            },
            Interest::all(),
        ))
    }

    fn process(&mut self, events: Vec<Event>, watermark: i64) -> AggregateOutput {
        let mut late = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if e.event_type == "trap" {
                panic!("counter told to trap by event {}", e.id);
            }
            if e.event_type == "stall-once" {
                stall_once(&e.id);
            }
            match self
                .state
                .get_mut(self.window.assign(e.timestamp), &e.event_type)
            {
                Some(n) => *n += 1,
                None => late.push(i as u32),
            }
        }
        let mut points = Vec::new();
        self.state.advance(watermark, |w, t, n| {
            let mut p = MetricPoint::new("counts", w.start)
                .tag("event_type", t.clone())
                .field("count", *n);
            if VERSION > 1 {
                p = p.field("version", VERSION);
            }
            points.push(p)
        });
        AggregateOutput { points, late }
    }

    fn state(&self) -> &Self::State {
        &self.state
    }

    fn state_mut(&mut self) -> &mut Self::State {
        &mut self.state
    }
}


/// Loops forever unless `/stall/<id>` exists, which it creates first: a call
/// that stalls once, as on a machine that stalls (needs `/stall` granted
/// writable).
fn stall_once(id: &str) {
    let marker = format!("/stall/{id}");
    if std::fs::metadata(&marker).is_ok() {
        return;
    }
    std::fs::write(&marker, b"stalled").expect("writing to the /stall directory");
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}
