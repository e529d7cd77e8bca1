//! A hostile enricher for the host's isolation tests. Each event type is a
//! command: `trap` panics, `spin` loops forever, `bomb` allocates until the
//! memory cap stops it, `slow:<ms>` busy-waits; anything else gets `seen=true`.
//! Config `reject` fails init.

use nexuspipe_sdk::prelude::*;

pub struct Hostile;

impl Enricher for Hostile {
    fn init(config: &str, _settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        if config.trim() == "reject" {
            return Err(ConfigError::at(
                "mode",
                "this config is rejected on purpose",
            ));
        }
        Ok((Hostile, Interest::all()))
    }

    fn process(&mut self, events: Vec<Event>) -> Vec<Change> {
        let mut changes = Vec::new();
        for (i, e) in events.iter().enumerate() {
            match e.event_type.as_str() {
                "trap" => panic!("hostile plugin told to trap by event {}", e.id),
                "spin" => spin_forever(),
                "bomb" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                _ => changes.push(EventPatch::new(i).set("seen", true).into()),
            }
        }
        changes
    }
}

#[inline(never)]
fn spin_forever() -> ! {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

nexuspipe_sdk::export_enricher!(Hostile);
