//! A hostile enricher for the host's isolation tests. Each event type is a
//! command: `trap` panics, `spin` loops forever, `bomb` allocates until the
//! memory cap stops it; the output floods test the host's output limits:
//! `alias` returns 4096 patches whose values all point at one 1 MiB string
//! in guest memory (4 GiB for the host to copy), `emit-flood` emits 100
//! events, `long-string` a 100 KiB value, `long-key` a 1000-byte key,
//! `many-props` 1000 properties, `split-props` the same as 1000 patches of
//! one property each, `empty-type` an empty event type, `log-flood` writes
//! 10 000 log lines. Anything else gets `seen=true`.
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
                "alias" => return aliased(i),
                "emit-flood" => {
                    for k in 0..100 {
                        let mut copy = e.clone();
                        copy.id = format!("{}-{k}", e.id);
                        copy.event_type = "flooded".into();
                        changes.push(Change::Emit(copy));
                    }
                }
                "long-string" => {
                    changes.push(EventPatch::new(i).set("blob", "x".repeat(100 << 10)).into())
                }
                "long-key" => changes.push(EventPatch::new(i).set("k".repeat(1000), 1i64).into()),
                "many-props" => {
                    let mut p = EventPatch::new(i);
                    for k in 0..1000 {
                        p = p.set(format!("p{k}"), k as i64);
                    }
                    changes.push(p.into());
                }
                "split-props" => {
                    // The same 1000 properties, one patch each: each patch
                    // is small, the event they make is not.
                    for k in 0..1000 {
                        changes.push(EventPatch::new(i).set(format!("p{k}"), k as i64).into());
                    }
                }
                "empty-type" => changes.push(EventPatch::new(i).event_type("").into()),
                "log-flood" => {
                    for k in 0..10_000 {
                        log(Level::Info, "flooding the log", &[("line", &k.to_string())]);
                    }
                    changes.push(EventPatch::new(i).set("seen", true).into());
                }
                _ => changes.push(EventPatch::new(i).set("seen", true).into()),
            }
        }
        changes
    }
}

/// Patches whose string values all share one buffer: the guest holds 1 MiB,
/// the host would copy 4096 times that.
fn aliased(index: usize) -> Vec<Change> {
    let blob = "x".repeat(1 << 20);
    let (ptr, len) = (blob.as_ptr() as *mut u8, blob.len());
    std::mem::forget(blob);
    (0..4096)
        .map(|_| {
            // SAFETY: none; this guest exists to hand the host aliased
            // strings. The host refuses to copy them out, so they are never
            // freed twice (the instance is thrown away).
            let alias = unsafe { String::from_raw_parts(ptr, len, len) };
            EventPatch::new(index).set("blob", alias).into()
        })
        .collect()
}

#[inline(never)]
fn spin_forever() -> ! {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

nexuspipe_sdk::export_enricher!(Hostile);
