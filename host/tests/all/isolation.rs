//! A plugin can fail; the host never does, and never loses an event because of it.

use crate::support::{event, guest, load_plugin};
use nexuspipe::engine::offline;
use nexuspipe::runtime::{
    BreakerState, Capabilities, DirGrant, Event, FailureKind, HostSettings, Limits, Plugin,
    PluginError, PluginOutput, Runtime, Value, World,
};
use std::time::{Duration, Instant};

fn runtime() -> Runtime {
    Runtime::new(None).unwrap()
}

fn plugin(krate: &str, limits: Limits) -> Plugin {
    load_plugin(&runtime(), krate, "", limits)
}

/// A plugin with capabilities, or why it did not start.
fn plugin_with(
    krate: &str,
    config: &str,
    limits: Limits,
    caps: Capabilities,
) -> Result<Plugin, PluginError> {
    let settings = HostSettings {
        allowed_lateness: 0,
        downstream_properties: None,
    };
    let component = runtime().load_file(&guest(krate)).unwrap();
    Plugin::new(krate, component, config, settings, limits, caps)
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
    // The failure kind below says the deadline stopped it; the bound only
    // says it did so promptly. It ran twice (the second try has five
    // deadlines); twenty leave room for a loaded 2-core machine running the
    // other tests (one deadline took 450 ms there once), while a loop nothing
    // stopped would not end at all.
    assert!(
        took < deadline * 20,
        "a loop must be stopped within twenty deadlines, took {took:?}"
    );
    assert_eq!(p.stats().retries, 1, "tried once more before giving up");
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

/// A call that runs past its deadline once (a machine that stalls, not a
/// plugin that loops) is tried again on a fresh instance: its batch is
/// counted once, nothing is dead-lettered and the state from before stays.
#[test]
fn a_call_stalled_once_is_tried_again_and_loses_nothing() {
    let stall = tempfile::tempdir().unwrap();
    let caps = Capabilities {
        dirs: vec![DirGrant {
            host: stall.path().to_path_buf(),
            guest: "/stall".into(),
            writable: true,
        }],
        ..Capabilities::default()
    };
    let mut p = plugin_with("counter", "", Limits::default(), caps).unwrap();
    let mut events: Vec<Event> = (0..10).map(|i| event("click", i * 1000, "c")).collect();
    events.push(event("stall-once", 10_500, "slow"));
    events.extend((11..20).map(|i| event("click", i * 1000, "c")));
    // Batches of 5: the stall is in the third, after two that are only in
    // the replay log (no snapshot yet).
    let run = offline::run(&mut p, events, 5, 5_000);
    assert!(
        stall.path().join("slow").exists(),
        "the plugin stalled on its first try"
    );
    assert!(run.output.dead.is_empty(), "{:?}", run.output.dead);
    assert_eq!(p.stats().retries, 1);
    assert_eq!(p.stats().failures, 0, "a retry that succeeds is no failure");
    assert_eq!(p.breaker(), BreakerState::Closed);
    let mut counts: Vec<(String, i64, Value)> = run
        .points
        .iter()
        .map(|p| (p.tags[0].1.clone(), p.timestamp, p.fields[0].1.clone()))
        .collect();
    counts.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        counts,
        vec![
            ("click".to_string(), 0, Value::Int(19)),
            ("stall-once".to_string(), 0, Value::Int(1)),
        ]
    );
}

/// `init` runs on a cold instance, often when the machine is busiest (a
/// start, a recovery), so it gets ten call deadlines, not one; a plugin
/// whose init never ends is still stopped.
#[test]
fn init_gets_more_time_than_a_call() {
    let limits = Limits {
        deadline_ms: 100,
        ..Limits::default()
    };
    let caps = Capabilities {
        clock: true,
        ..Capabilities::default()
    };
    let start = |init_ms: u64| {
        plugin_with(
            "counter",
            &format!(r#"{{"window_ms": 60000, "init_ms": {init_ms}}}"#),
            limits.clone(),
            caps.clone(),
        )
    };
    // Three call deadlines: more than a call may take, well within ten
    // (700 ms to spare for a machine that stalls).
    let mut p = start(300).unwrap();
    let run = offline::run(&mut p, vec![event("click", 1_000, "a")], 10, 0);
    assert_eq!(run.points.len(), 1);
    // Far past ten deadlines (1 s): refused, naming the deadline.
    let err = start(5_000).err().expect("an init past its deadline fails");
    assert!(err.to_string().contains("deadline"), "{err}");
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
    assert!(msg.contains("nexuspipe:plugin/enrich@0.4.0"), "{msg}");
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
    let counts = |rt: &Runtime| {
        let s = rt.cache_stats().unwrap();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        (get(&s.hits), get(&s.compiled), get(&s.refused))
    };
    let cold = Runtime::new(Some(dir.path().to_path_buf())).unwrap();
    let a = cold.load(&bytes).unwrap();
    assert_eq!(counts(&cold), (0, 1, 0), "compiled once");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "one entry and its digest: {names:?}");
    assert!(
        names[0].starts_with(&a.hash),
        "keyed by content hash: {names:?}"
    );
    assert!(names[0].ends_with(".cwasm") && names[1].ends_with(".cwasm.sha256"));
    let entry = dir.path().join(&names[0]);
    // A new runtime (a restart) loads from the cache, not by compiling again.
    let warm = Runtime::new(Some(dir.path().to_path_buf())).unwrap();
    let b = warm.load(&bytes).unwrap();
    assert_eq!(
        counts(&warm),
        (1, 0, 0),
        "a cache hit, not a silent recompile"
    );
    assert_eq!(a.hash, b.hash);
    // A cache file that is not the one written (one byte changed, or its
    // digest missing) is refused before it is loaded, and compiled over.
    let mut tampered = std::fs::read(&entry).unwrap();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0xff;
    std::fs::write(&entry, &tampered).unwrap();
    let third = Runtime::new(Some(dir.path().to_path_buf())).unwrap();
    let c = third.load(&bytes).unwrap();
    assert_eq!(counts(&third), (0, 1, 1), "refused and recompiled");
    assert_ne!(std::fs::read(&entry).unwrap(), tampered, "rewritten");
    std::fs::remove_file(dir.path().join(&names[1])).unwrap();
    let fourth = Runtime::new(Some(dir.path().to_path_buf())).unwrap();
    fourth.load(&bytes).unwrap();
    assert_eq!(counts(&fourth), (0, 1, 1), "no digest: refused");
    for component in [b, c] {
        let mut p = Plugin::new(
            "funnel",
            component,
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
}

/// One call of `krate` on a batch of events of type `command`, with limits.
fn one_call(krate: &str, command: &str, limits: Limits) -> (Plugin, Vec<Event>, PluginOutput) {
    let mut p = plugin(krate, limits);
    let mut batch = vec![event(command, 1_000, "a"), event("ok", 2_000, "b")];
    let mut out = PluginOutput::default();
    p.process(&mut batch, 10_000, &mut out);
    (p, batch, out)
}

/// What a plugin returns is bounded on the host too: each breach is a
/// failure like a trap (the batch is dead-lettered with a cause naming the
/// limit, the instance recovers), never a host allocation the guest chose.
#[test]
fn outputs_beyond_the_limits_are_plugin_failures() {
    for (krate, command, limit) in [
        // 4096 patches all pointing at one 1 MiB guest string: 4 GiB to copy.
        ("hostile", "alias", "max_output_bytes"),
        ("hostile", "emit-flood", "max_events_factor"),
        ("hostile", "long-string", "max_string_bytes"),
        ("hostile", "long-key", "max_key_bytes"),
        ("hostile", "many-props", "max_properties"),
        ("hostile", "split-props", "max_properties"),
        ("hostile-aggregator", "points-flood", "max_points"),
        ("hostile-aggregator", "long-measurement", "max_key_bytes"),
        ("hostile-alerter", "alerts-flood", "max_alerts"),
        ("hostile-alerter", "long-summary", "max_string_bytes"),
    ] {
        // Building 200 000 points takes a while on a busy machine: the
        // deadline is not what is tested here.
        let limits = Limits {
            deadline_ms: 10_000,
            ..Limits::default()
        };
        let (mut p, batch, out) = one_call(krate, command, limits);
        assert_eq!(out.dead.len(), 1, "{command}: dead-lettered");
        let dead = &out.dead[0];
        assert_eq!(
            dead.kind,
            FailureKind::OutputLimit,
            "{command}: {}",
            dead.error
        );
        assert!(
            dead.error.contains(limit),
            "{command} names {limit}: {}",
            dead.error
        );
        assert_eq!(dead.events.len(), 2, "{command}: the whole batch");
        assert!(
            out.points.is_empty() && out.alerts.is_empty(),
            "{command}: nothing of it kept"
        );
        assert_eq!(p.stats().failures, 1, "{command}: counted by the breaker");
        if p.world() == World::Enricher {
            assert!(
                batch.is_empty(),
                "{command}: failed events leave the stream"
            );
        }
        // The instance recovered: the next batch goes through.
        let mut next = vec![event("ok", 3_000, "c")];
        let mut out = PluginOutput::default();
        p.process(&mut next, 20_000, &mut out);
        assert!(out.dead.is_empty(), "{command}: recovered: {:?}", out.dead);
    }
    // The same outputs within raised limits are taken.
    let raised = Limits {
        max_points: 300_000,
        deadline_ms: 10_000,
        ..Limits::default()
    };
    let (_, _, out) = one_call("hostile-aggregator", "points-flood", raised);
    assert!(out.dead.is_empty(), "{:?}", out.dead);
    assert_eq!(out.points.len(), 200_001);
}

#[test]
fn a_patch_cannot_set_an_empty_event_type() {
    let (_, _, out) = one_call("hostile", "empty-type", Limits::default());
    assert_eq!(out.dead.len(), 1);
    assert_eq!(out.dead[0].kind, FailureKind::BadOutput);
    assert!(
        out.dead[0].error.contains("empty event_type"),
        "{}",
        out.dead[0].error
    );
}

#[test]
fn log_lines_are_rate_limited_per_call_and_counted() {
    let limits = Limits {
        max_log_lines: 50,
        ..Limits::default()
    };
    let (p, batch, out) = one_call("hostile", "log-flood", limits);
    assert!(out.dead.is_empty(), "a chatty plugin is not a failing one");
    assert!(seen(&batch[0]), "its output is kept");
    assert_eq!(p.stats().log_dropped, 10_000 - 50);
}
