//! Plugin output validation with arbitrary outputs: what passes validation
//! applies to its batch without panicking, and what is applied stays within
//! the limits: events out per event in, event types never empty, and, for
//! every event of the batch, the properties set on it by all of the call's
//! patches together at most `max_properties` (many small patches to one
//! event add up to one big one).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nexuspipe::fuzzing::{aggregate_output, enrich_output};
use nexuspipe::runtime::{Change, EventPatch, Limits, Metadata, Property};
use nexuspipe_fuzz::{AEvent, APoint, AValue};

#[derive(Debug, Arbitrary)]
enum AChange {
    Patch {
        index: u32,
        event_type: Option<String>,
        set: Vec<(String, AValue)>,
        remove: Vec<String>,
        url: Option<String>,
    },
    Drop(u32),
    Emit(AEvent),
}

#[derive(Debug, Arbitrary)]
struct Input {
    batch: Vec<AEvent>,
    changes: Vec<AChange>,
    points: Vec<APoint>,
    late: Vec<u32>,
}

fuzz_target!(|input: Input| {
    // Small limits, so the fuzzer reaches every one of them.
    let limits = Limits {
        max_events_factor: 3,
        max_points: 8,
        max_string_bytes: 64,
        max_key_bytes: 16,
        max_properties: 6,
        ..Limits::default()
    };
    // Events as ingest admits them: with a type.
    let batch: Vec<_> = input
        .batch
        .into_iter()
        .map(|e| {
            let mut e = e.into_event();
            if e.event_type.is_empty() {
                e.event_type = "x".into();
            }
            e
        })
        .collect();
    let n = batch.len();
    let changes: Vec<Change> = input
        .changes
        .into_iter()
        .map(|c| match c {
            AChange::Patch {
                index,
                event_type,
                set,
                remove,
                url,
            } => Change::Patch(EventPatch {
                index,
                event_type,
                user_id: None,
                session_id: None,
                set_properties: set
                    .into_iter()
                    .map(|(key, v)| Property {
                        key,
                        value: v.into_value(),
                    })
                    .collect(),
                remove_properties: remove,
                metadata: url.map(|url| Metadata {
                    ip_address: None,
                    user_agent: None,
                    platform: None,
                    url: Some(url),
                    referrer: None,
                }),
            }),
            AChange::Drop(i) => Change::Drop(i),
            AChange::Emit(e) => Change::Emit(e.into_event()),
        })
        .collect();
    // Properties set per event index, summed over all patches of this call.
    let mut set_per_index = vec![0usize; n];
    for c in &changes {
        if let Change::Patch(p) = c
            && let Some(total) = set_per_index.get_mut(p.index as usize)
        {
            *total += p.set_properties.len();
        }
    }
    if let Ok(out) = enrich_output(changes, batch, &limits) {
        for (i, &total) in set_per_index.iter().enumerate() {
            assert!(
                total <= limits.max_properties,
                "{total} properties set on event {i} in one call, more than max_properties ({})",
                limits.max_properties
            );
        }
        assert!(
            out.len() <= n * limits.max_events_factor,
            "{} out of {n}",
            out.len()
        );
        assert!(out.iter().all(|e| !e.event_type.is_empty()));
    }
    let points = input.points.into_iter().map(APoint::into_point).collect();
    let _ = aggregate_output(points, input.late, n, &limits);
});
