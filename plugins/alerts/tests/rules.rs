//! The rule engine against expectations worked out independently of it:
//! by hand for each rule type's boundaries, cooldown and `for`, and by a
//! separate, deliberately simple reference model (interval counting, list
//! filtering) over random streams.

use alerts::Alerts;
use nexuspipe_sdk::testing::AlerterHarness;
use nexuspipe_sdk::{Alert, AlertStatus, Event};
use serde_json::json;

/// (key, status, starts_at, ends_at): what a test compares.
type Seen = (String, &'static str, i64, Option<i64>);

fn seen(alerts: &[Alert]) -> Vec<Seen> {
    let mut v: Vec<Seen> = alerts
        .iter()
        .map(|a| {
            let status = match a.status {
                AlertStatus::Firing => "firing",
                AlertStatus::Resolved => "resolved",
            };
            (a.key.clone(), status, a.starts_at, a.ends_at)
        })
        .collect();
    v.sort();
    v
}

/// Runs `events` (one batch each, in order) through one rule, then flushes.
fn run(rule: serde_json::Value, events: Vec<Event>) -> Vec<Seen> {
    let config = json!({ "rules": [rule] }).to_string();
    // No out-of-orderness: the watermark is the newest event time.
    let mut h = AlerterHarness::<Alerts>::with_settings(
        &config,
        nexuspipe_sdk::testing::default_settings(),
        0,
    );
    let out = h.run(events.into_iter().map(|e| vec![e]));
    seen(&out.items)
}

fn ev(t: &str, ts: i64, user: &str) -> Event {
    Event::new(t, ts).with_user(user)
}

fn threshold(window: i64, above: f64, for_ms: i64, cooldown: i64) -> serde_json::Value {
    json!({"id": "burst", "type": "threshold", "summary": "{count}", "key": "user_id",
           "filter": {"event_type": "fail"}, "window": window, "above": above,
           "for": for_ms, "cooldown": cooldown})
}

fn firing(key: &str, start: i64) -> Seen {
    (key.into(), "firing", start, None)
}

fn resolved(key: &str, start: i64, end: i64) -> Seen {
    (key.into(), "resolved", start, Some(end))
}

#[test]
fn threshold_fires_above_the_count_and_resolves_when_events_leave_the_window() {
    // Window 1000 ms, above 2: three events within (t - 1000, t] fire at the third.
    let events = vec![
        ev("fail", 0, "a"),
        ev("fail", 400, "a"),
        ev("fail", 999, "a"),
    ];
    // Count at t: events in (t - 1000, t]. The event at 0 leaves at 1000, the
    // count drops to 2: resolved, ends at 1000.
    assert_eq!(
        run(threshold(1000, 2.0, 0, 0), events),
        [firing("a", 999), resolved("a", 999, 1000)]
    );
    // The third event exactly one window after the first: the first has left.
    let events = vec![
        ev("fail", 0, "a"),
        ev("fail", 400, "a"),
        ev("fail", 1000, "a"),
    ];
    assert_eq!(run(threshold(1000, 2.0, 0, 0), events), []);
    // Other keys and other event types do not count.
    let events = vec![
        ev("fail", 0, "a"),
        ev("fail", 10, "b"),
        ev("ok", 20, "a"),
        ev("fail", 30, "a"),
    ];
    assert_eq!(run(threshold(1000, 2.0, 0, 0), events), []);
}

#[test]
fn threshold_with_for_fires_only_if_the_condition_holds_that_long() {
    let burst = |extra: i64| {
        vec![
            ev("fail", 0, "a"),
            ev("fail", 100, "a"),
            ev("fail", 200, "a"),
            // Moves event time on (a different key).
            ev("fail", extra, "z"),
        ]
    };
    // Condition true from 200 until 1000 (the event at 0 leaves): 800 ms.
    // for = 700: fires at 900 with starts_at 200, resolves at 1000.
    assert_eq!(
        run(threshold(1000, 2.0, 700, 0), burst(5000)),
        [firing("a", 200), resolved("a", 200, 1000)]
    );
    // for = 800: at 1000 the condition ends exactly when `for` would be met: no alert.
    assert_eq!(run(threshold(1000, 2.0, 800, 0), burst(5000)), []);
}

#[test]
fn threshold_cooldown_suppresses_a_repeat_and_its_resolution() {
    let events = vec![
        ev("fail", 0, "a"),
        ev("fail", 10, "a"),
        ev("fail", 20, "a"), // fires at 20, resolves at 1000
        ev("fail", 2000, "a"),
        ev("fail", 2010, "a"),
        ev("fail", 2020, "a"), // would fire at 2020: 2000 ms after 20
        ev("fail", 9000, "a"),
        ev("fail", 9010, "a"),
        ev("fail", 9020, "a"), // 9000 ms after 20: fires again
    ];
    assert_eq!(
        run(threshold(1000, 2.0, 0, 5000), events),
        [
            firing("a", 20),
            firing("a", 9020),
            resolved("a", 20, 1000),
            resolved("a", 9020, 10000),
        ]
    );
}

fn sequence(count: usize, within: i64, cooldown: i64) -> serde_json::Value {
    json!({"id": "stuffing", "type": "sequence", "summary": "{count}", "key": "user_id",
           "first": {"event_type": "fail"}, "count": count,
           "then": {"event_type": "ok"}, "within": within, "cooldown": cooldown})
}

#[test]
fn sequence_needs_the_firsts_then_the_then_strictly_within() {
    let events = vec![ev("fail", 0, "a"), ev("fail", 100, "a"), ev("ok", 999, "a")];
    assert_eq!(run(sequence(2, 1000, 0), events), [firing("a", 0)]);
    // B at exactly start + within is too late; the later first alone is not enough.
    let events = vec![
        ev("fail", 0, "a"),
        ev("fail", 100, "a"),
        ev("ok", 1000, "a"),
    ];
    assert_eq!(run(sequence(2, 1000, 0), events), []);
    // Other events between are fine (relaxed contiguity); a then before
    // enough firsts does nothing.
    let events = vec![
        ev("fail", 0, "a"),
        ev("ok", 50, "a"),
        ev("view", 60, "a"),
        ev("fail", 100, "a"),
        ev("ok", 200, "a"),
    ];
    assert_eq!(run(sequence(2, 1000, 0), events), [firing("a", 0)]);
}

#[test]
fn sequence_cooldown_is_per_key() {
    let events = vec![
        ev("fail", 0, "a"),
        ev("ok", 10, "a"), // fires for a at 0
        ev("fail", 20, "b"),
        ev("ok", 30, "b"), // fires for b: its own cooldown
        ev("fail", 100, "a"),
        ev("ok", 110, "a"), // a again within its cooldown: suppressed
        ev("fail", 600, "a"),
        ev("ok", 610, "a"), // 600 ms after 0: fires
    ];
    assert_eq!(
        run(sequence(1, 1000, 500), events),
        [firing("a", 0), firing("a", 600), firing("b", 20)]
    );
}

fn absence(within: i64, cooldown: i64) -> serde_json::Value {
    json!({"id": "abandoned", "type": "absence", "summary": "{key}", "key": "user_id",
           "first": {"event_type": "cart"}, "then": {"event_type": "buy"},
           "within": within, "cooldown": cooldown})
}

#[test]
fn absence_fires_when_event_time_passes_the_deadline_without_the_then() {
    // Bought in time: nothing. Bought at exactly start + within: too late.
    let events = vec![
        ev("cart", 0, "a"),
        ev("cart", 0, "b"),
        ev("cart", 0, "c"),
        ev("buy", 999, "a"),
        ev("buy", 1000, "b"),
        ev("tick", 5000, "x"),
    ];
    assert_eq!(
        run(absence(1000, 0), events),
        [firing("b", 0), firing("c", 0)]
    );
    // A repeated first does not restart the wait.
    let events = vec![
        ev("cart", 0, "a"),
        ev("cart", 800, "a"),
        ev("tick", 1000, "x"),
    ];
    assert_eq!(run(absence(1000, 0), events), [firing("a", 0)]);
    // Cooldown: a second wait that ends within it is suppressed.
    let events = vec![
        ev("cart", 0, "a"),
        ev("cart", 1500, "a"),
        ev("cart", 6000, "a"),
        ev("tick", 20_000, "x"),
    ];
    assert_eq!(
        run(absence(1000, 5000), events),
        [firing("a", 0), firing("a", 6000)]
    );
}

// ---- a reference model over random streams ----

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The threshold rule by interval counting: the count at time t is the
/// number of events with t - window < ts <= t. It changes only at event
/// times and at `ts + window`; between changes it is constant. An episode
/// is a maximal run of times where count > above; it fires if it lasts more
/// than `for` (or at once with `for` = 0), at its start, and resolves at its
/// end, unless within `cooldown` of the last sent alert's start.
fn threshold_model(
    events: &[(i64, String)],
    window: i64,
    above: usize,
    for_ms: i64,
    cooldown: i64,
) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut keys: Vec<&String> = events.iter().map(|(_, k)| k).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let ts: Vec<i64> = events
            .iter()
            .filter(|(_, k)| k == key)
            .map(|(t, _)| *t)
            .collect();
        let mut points: Vec<i64> = ts.iter().flat_map(|t| [*t, t + window]).collect();
        points.sort();
        points.dedup();
        let count = |t: i64| ts.iter().filter(|&&e| t - window < e && e <= t).count();
        let mut last_sent: Option<i64> = None;
        let mut start: Option<i64> = None;
        for &t in &points {
            let on = count(t) > above;
            match (start, on) {
                (None, true) => start = Some(t),
                (Some(h), false) => {
                    start = None;
                    let long_enough = for_ms == 0 || t - h > for_ms;
                    let cooled = last_sent.is_none_or(|l| h - l >= cooldown);
                    if long_enough && cooled {
                        last_sent = Some(h);
                        out.push((key.clone(), "firing", h, None));
                        out.push((key.clone(), "resolved", h, Some(t)));
                    }
                }
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// The sequence rule by list filtering: at each `then`, the firsts since the
/// last alert (or the start) that are less than `within` before it; if there
/// are `count` or more, it fires at the earliest of them, and they are used up.
fn sequence_model(
    events: &[(i64, String, bool)],
    count: usize,
    within: i64,
    cooldown: i64,
) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut keys: Vec<&String> = events.iter().map(|(_, k, _)| k).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let mut used_until = i64::MIN; // firsts at or before this are used up
        let mut last_sent: Option<i64> = None;
        for (t, k, is_then) in events {
            if k != key || !is_then {
                continue;
            }
            let firsts: Vec<i64> = events
                .iter()
                .filter(|(ft, fk, then)| {
                    fk == key && !then && *ft > used_until && ft <= t && t - ft < within
                })
                .map(|(ft, _, _)| *ft)
                .collect();
            if firsts.len() >= count {
                let start = firsts[0];
                used_until = *t;
                if last_sent.is_none_or(|l| start - l >= cooldown) {
                    last_sent = Some(start);
                    out.push((key.clone(), "firing", start, None));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn threshold_matches_the_reference_model_on_random_streams() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let window = 100 + rng.next(900) as i64;
        let above = rng.next(4) as usize;
        let for_ms = [0, 0, 50, 300][rng.next(4) as usize];
        let cooldown = [0, 0, 200, 2000][rng.next(4) as usize];
        let mut t = 0;
        let events: Vec<(i64, String)> = (0..40)
            .map(|_| {
                t += rng.next(120) as i64 + 1; // distinct, increasing times
                (t, format!("k{}", rng.next(3)))
            })
            .collect();
        let stream: Vec<Event> = events.iter().map(|(t, k)| ev("fail", *t, k)).collect();
        let got = run(threshold(window, above as f64, for_ms, cooldown), stream);
        let want = threshold_model(&events, window, above, for_ms, cooldown);
        assert_eq!(
            got, want,
            "round {round}: window {window} above {above} for {for_ms} cooldown {cooldown}"
        );
    }
}

#[test]
fn sequence_matches_the_reference_model_on_random_streams() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..300 {
        let count = 1 + rng.next(3) as usize;
        let within = 100 + rng.next(600) as i64;
        let cooldown = [0, 0, 150, 1000][rng.next(4) as usize];
        let mut t = 0;
        let events: Vec<(i64, String, bool)> = (0..40)
            .map(|_| {
                t += rng.next(80) as i64 + 1;
                (t, format!("k{}", rng.next(2)), rng.next(3) == 0)
            })
            .collect();
        let stream: Vec<Event> = events
            .iter()
            .map(|(t, k, then)| ev(if *then { "ok" } else { "fail" }, *t, k))
            .collect();
        let got = run(sequence(count, within, cooldown), stream);
        let want = sequence_model(&events, count, within, cooldown);
        assert_eq!(
            got, want,
            "round {round}: count {count} within {within} cooldown {cooldown}"
        );
    }
}

// ---- a new config never relabels old state ----

fn swap(
    before: &[serde_json::Value],
    after: &[serde_json::Value],
    tail: Vec<Event>,
) -> (nexuspipe_sdk::Restored, Vec<Seen>) {
    let cfg = |r: &[serde_json::Value]| json!({ "rules": r }).to_string();
    let mut h = AlerterHarness::<Alerts>::with_settings(
        &cfg(before),
        nexuspipe_sdk::testing::default_settings(),
        0,
    );
    // Two failures for `a`: one short of firing a rule above 2.
    let out = h.push(vec![ev("fail", 0, "a"), ev("fail", 10, "a")]);
    assert!(out.items.is_empty());
    let report = h.restart(&cfg(after));
    let out = h.run(tail.into_iter().map(|e| vec![e]));
    (report, seen(&out.items))
}

fn renamed(mut rule: serde_json::Value, id: &str) -> serde_json::Value {
    rule["id"] = json!(id);
    rule
}

#[test]
fn rules_are_matched_by_id_and_definition() {
    let burst = threshold(1000, 2.0, 0, 0);
    let third = || vec![ev("fail", 20, "a")];
    // Same rule: the third failure completes the burst.
    let (report, got) = swap(
        std::slice::from_ref(&burst),
        std::slice::from_ref(&burst),
        third(),
    );
    assert_eq!(report.kept, ["burst"]);
    assert_eq!(got, [firing("a", 20), resolved("a", 20, 1000)]);
    // Reordered beside another rule: still kept.
    let other = absence(1000, 0);
    let (report, got) = swap(
        &[burst.clone(), other.clone()],
        &[other, burst.clone()],
        third(),
    );
    assert_eq!(report.kept, ["abandoned", "burst"]);
    assert_eq!(got, [firing("a", 20), resolved("a", 20, 1000)]);
    // A changed window: the rule starts empty, one failure is not a burst.
    let (report, got) = swap(
        std::slice::from_ref(&burst),
        &[threshold(2000, 2.0, 0, 0)],
        third(),
    );
    assert_eq!(report.reset, ["burst"]);
    assert_eq!(got, []);
    // Renamed: the old id is dropped, the new one starts empty.
    let (report, got) = swap(
        std::slice::from_ref(&burst),
        &[renamed(burst.clone(), "burst2")],
        third(),
    );
    assert_eq!(
        (report.dropped, report.added),
        (vec!["burst".to_string()], vec!["burst2".to_string()])
    );
    assert_eq!(got, []);
    // Removed, and another added.
    let (report, got) = swap(
        &[burst],
        &[sequence(1, 1000, 0)],
        vec![ev("fail", 20, "a"), ev("ok", 30, "a")],
    );
    assert_eq!(report.dropped, ["burst"]);
    assert_eq!(report.added, ["stuffing"]);
    assert_eq!(got, [firing("a", 20)]);
}
