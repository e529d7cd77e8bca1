//! A plugin can fail; the host never does, and never loses an event because of it.

use crate::support::{event, guest, load_plugin};
use nexuspipe::engine::offline;
use nexuspipe::runtime::{
    BreakerState, Capabilities, Event, FailureKind, HostSettings, Limits, Plugin, PluginError,
    PluginOutput, Runtime, Value, World,
};
use std::time::{Duration, Instant};

fn runtime() -> Runtime {
    Runtime::new(None).unwrap()
}

fn plugin(krate: &str, limits: Limits) -> Plugin {
    load_plugin(&runtime(), krate, "", limits)
}

fn seen(e: &Event) -> bool {
    e.properties
        .iter()
        .any(|p| p.key == "seen" && p.value == Value::Boolean(true))
}

/// Runs one batch through an enricher; returns the surviving events, the output and the time taken.
fn enrich(p: &mut Plugin, events: Vec<Event>) -> (Vec<Event>, PluginOutput, Duration) {
    let mut batch = events;
    let mut out = PluginOutput::default();
    let t = Instant::now();
    p.process(&mut batch, 0, &mut out);
    (batch, out, t.elapsed())
}

#[test]
fn endless_loop_is_stopped_by_the_deadline_and_the_host_goes_on() {
    let mut p = plugin("hostile", Limits::default());
    let deadline = Limits::default().deadline();
    let (batch, out, took) = enrich(&mut p, vec![event("ok", 1, "a"), event("spin", 2, "b")]);
    assert!(
        took < deadline * 2,
        "a loop must be stopped within twice the deadline, took {took:?}"
    );
    assert!(batch.is_empty(), "failed events leave the stream");
    assert_eq!(out.dead.len(), 1);
    assert_eq!(out.dead[0].kind, FailureKind::Deadline);
    assert_eq!(
        out.dead[0].events.len(),
        2,
        "the whole batch is dead-lettered"
    );
    assert!(
        out.dead[0].error.contains("deadline of 200 ms"),
        "{}",
        out.dead[0].error
    );

    // The host goes on with a fresh instance.
    let (batch, out, _) = enrich(&mut p, vec![event("ok", 3, "c")]);
    assert!(out.dead.is_empty());
    assert!(seen(&batch[0]));
    assert_eq!(p.breaker(), BreakerState::Closed);
}

#[test]
fn memory_bomb_stops_at_the_cap() {
    let limits = Limits {
        memory_mib: 16,
        ..Limits::default()
    };
    let mut p = plugin("hostile", limits);
    let (_, out, took) = enrich(&mut p, vec![event("bomb", 1, "a")]);
    assert_eq!(out.dead.len(), 1);
    assert_eq!(
        out.dead[0].kind,
        FailureKind::MemoryCap,
        "{}",
        out.dead[0].error
    );
    assert!(
        out.dead[0].error.contains("16 MiB"),
        "{}",
        out.dead[0].error
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let (batch, out, _) = enrich(&mut p, vec![event("ok", 2, "b")]);
    assert!(out.dead.is_empty() && seen(&batch[0]));
}

#[test]
fn trap_dead_letters_the_batch_with_the_panic_message() {
    let mut p = plugin("hostile", Limits::default());
    let (batch, out, _) = enrich(
        &mut p,
        vec![event("ok", 1, "first"), event("trap", 2, "poison")],
    );
    assert!(batch.is_empty());
    let dead = &out.dead[0];
    assert_eq!(dead.kind, FailureKind::Trap);
    assert!(
        dead.error
            .contains("hostile plugin told to trap by event poison"),
        "the guest's panic message is kept: {}",
        dead.error
    );
    let ids: Vec<&str> = dead.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["first", "poison"]);
}

#[test]
fn breaker_trips_after_repeated_failures() {
    let mut p = plugin("hostile", Limits::default());
    for i in 0..5 {
        assert_eq!(
            p.breaker(),
            BreakerState::Closed,
            "still closed before failure {i}"
        );
        let (_, out, _) = enrich(&mut p, vec![event("trap", i, "t")]);
        assert_eq!(out.dead[0].kind, FailureKind::Trap);
    }
    assert_eq!(p.breaker(), BreakerState::Open);
    // Disabled: events are dead-lettered (not lost) without calling the plugin.
    let (batch, out, _) = enrich(&mut p, vec![event("ok", 9, "after")]);
    assert!(batch.is_empty());
    assert_eq!(out.dead[0].kind, FailureKind::Disabled);
    assert_eq!(out.dead[0].events[0].id, "after");
    assert_eq!(p.stats().failures, 5);
}

#[test]
fn stateful_plugin_keeps_its_state_across_a_trap() {
    let mut p = plugin("counter", Limits::default());
    let mut events: Vec<Event> = (0..10).map(|i| event("click", i * 1000, "c")).collect();
    events.push(event("trap", 10_500, "boom"));
    events.extend((11..20).map(|i| event("click", i * 1000, "c")));
    // Batches of 5: the trap is in the third batch, which is dead-lettered.
    let run = offline::run(&mut p, events, 5, 5_000);
    assert_eq!(run.output.dead.len(), 1);
    let dead_ids: Vec<&str> = run.output.dead[0]
        .events
        .iter()
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(dead_ids, ["boom", "c", "c", "c", "c"]);
    let counts: Vec<(i64, Option<i64>)> = run
        .points
        .iter()
        .map(|p| {
            (
                p.timestamp,
                match p.fields[0].1 {
                    Value::Int(n) => Some(n),
                    _ => None,
                },
            )
        })
        .collect();
    // 19 clicks minus the 4 in the dead-lettered batch; the 10 before the trap
    // survived the instance being replaced.
    assert_eq!(counts, vec![(0, Some(15))]);
}

#[test]
fn config_rejected_by_init_names_the_field() {
    let component = runtime().load_file(&guest("hostile")).unwrap();
    let err = Plugin::new(
        "hostile",
        component,
        "reject",
        HostSettings {
            allowed_lateness: 0,
            downstream_properties: None,
        },
        Limits::default(),
        Capabilities::default(),
    )
    .err()
    .expect("init must fail");
    assert!(matches!(err, PluginError::Config(_)));
    assert_eq!(
        err.to_string(),
        "config rejected by the plugin: mode: this config is rejected on purpose"
    );
}

#[test]
fn worlds_are_detected_and_strangers_refused() {
    let rt = runtime();
    for (krate, world) in [
        ("enrich-geo", World::Enricher),
        ("funnel", World::Aggregator),
        ("alerts", World::Alerter),
    ] {
        assert_eq!(rt.load_file(&guest(krate)).unwrap().world, world);
    }
    let err = rt.load_file(&guest("not-a-plugin")).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, PluginError::UnknownWorld { .. }));
    assert!(msg.contains("nexuspipe:plugin/enrich@0.3.0"), "{msg}");
    assert!(
        msg.contains("wasi:cli/run@0.2"),
        "lists what it exports: {msg}"
    );
    let err = rt.load(b"hello, not wasm").err().unwrap();
    assert!(matches!(err, PluginError::NotWasm), "{err}");
    // A core module is not a component.
    let err = rt.load(b"\0asm\x01\0\0\0").err().unwrap();
    assert!(matches!(err, PluginError::CoreModule), "{err}");
}

#[test]
fn compiled_components_are_cached_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(guest("funnel")).unwrap();
    let cold = Runtime::new(Some(dir.path().to_path_buf())).unwrap();
    let a = cold.load(&bytes).unwrap();
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "one cache entry per component");
    let name = entries[0]
        .as_ref()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    assert!(name.starts_with(&a.hash), "keyed by content hash: {name}");
    // A new runtime (a restart) loads from the cache and the plugin works.
    let warm = Runtime::new(Some(dir.path().to_path_buf())).unwrap();
    let b = warm.load(&bytes).unwrap();
    assert_eq!(a.hash, b.hash);
    let mut p = Plugin::new(
        "funnel",
        b,
        "",
        HostSettings {
            allowed_lateness: 0,
            downstream_properties: None,
        },
        Limits::default(),
        Capabilities::default(),
    )
    .unwrap();
    let run = offline::run(&mut p, vec![event("x", 1, "a")], 10, 0);
    assert_eq!(run.points.len(), 1);
}
