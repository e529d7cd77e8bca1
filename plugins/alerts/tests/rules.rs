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
/// The plugin with these rules, as the host drives it with no
/// out-of-orderness: the watermark is the newest event time.
fn harness(rules: &[serde_json::Value]) -> AlerterHarness<Alerts> {
    let config = json!({ "rules": rules }).to_string();
    AlerterHarness::with_settings(&config, nexuspipe_sdk::testing::default_settings(), 0)
}

fn run(rule: serde_json::Value, events: Vec<Event>) -> Vec<Seen> {
    let mut h = harness(&[rule]);
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
    // A count is the sum of ones.
    let ones: Vec<(i64, String, Option<f64>)> = events
        .iter()
        .map(|(t, k)| (*t, k.clone(), Some(1.0)))
        .collect();
    sum_model(&ones, window, above as f64, for_ms, cooldown)
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
    let mut h = harness(before);
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

// ---- threshold over a summed field (`sum`) ----

/// Runs `events` through one rule like `run`, but in time order (a stable
/// sort, so they can be listed per key), checking that none was late.
/// Returns the alerts and their summaries, sorted.
fn run_timed(rule: serde_json::Value, mut events: Vec<Event>) -> Vec<(Seen, String)> {
    events.sort_by_key(|e| e.timestamp);
    let mut h = harness(&[rule]);
    let out = h.run(events.into_iter().map(|e| vec![e]));
    assert!(out.late.is_empty(), "late events: {:?}", out.late);
    let mut v: Vec<(Seen, String)> = out
        .items
        .iter()
        .map(|a| (seen(std::slice::from_ref(a)).remove(0), a.summary.clone()))
        .collect();
    v.sort();
    v
}

fn run_sum(rule: serde_json::Value, events: Vec<Event>) -> Vec<Seen> {
    run_timed(rule, events)
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

/// A threshold rule on the sum of `amount` over `buy` events per user.
fn spend(window: i64, above: f64, for_ms: i64, cooldown: i64) -> serde_json::Value {
    json!({"id": "spend", "type": "threshold", "summary": "{count} {value}", "key": "user_id",
           "filter": {"event_type": "buy"}, "sum": "amount", "window": window, "above": above,
           "for": for_ms, "cooldown": cooldown})
}

/// A `buy` by `user` at `ts` with an integer `amount`.
fn buy(ts: i64, user: &str, amount: i64) -> Event {
    buy_as(ts, user, amount)
}

/// A `buy` with any `amount`: a float, a string, a boolean...
fn buy_as(ts: i64, user: &str, amount: impl nexuspipe_sdk::IntoValue) -> Event {
    ev("buy", ts, user).with_property("amount", amount)
}

#[test]
fn sum_threshold_fires_strictly_above_the_sum_not_the_count() {
    // Window 1000, above 100: the sum over (t - 1000, t] must exceed 100.
    let events = vec![
        // a: exactly 100 is not above.
        buy(0, "a", 40),
        buy(500, "a", 60),
        // b: 100.5 at 600 is; at 1000 the 40 leaves (60.5): resolved.
        buy(0, "b", 40),
        buy(500, "b", 60),
        buy_as(600, "b", 0.5),
        // c: one event alone can be enough (a count above 100 would need 101).
        buy(100, "c", 101),
        // d: many events, small sum: the count does not matter.
        buy(0, "d", 1),
        buy_as(1, "d", 2.5),
        buy(2, "d", 0),
        buy(3, "d", 0),
        buy_as(4, "d", 96.5),
        // Other event types do not add, whatever their amount.
        ev("view", 10, "d").with_property("amount", 1000_i64),
    ];
    assert_eq!(
        run_sum(spend(1000, 100.0, 0, 0), events),
        [
            firing("b", 600),
            resolved("b", 600, 1000),
            firing("c", 100),
            resolved("c", 100, 1100),
        ]
    );
}

#[test]
fn sum_threshold_events_leave_the_window_one_window_after_they_happen() {
    let events = vec![
        // a: the 60 leaves at 1000 exactly as the 50 comes: 50 at 1000.
        buy(0, "a", 60),
        buy(1000, "a", 50),
        // b: 110 at 999; the 60 leaves at 1000: resolved at 1000.
        buy(0, "b", 60),
        buy(999, "b", 50),
        // c: 110 from 100; 150 at 500; the 30 leaves at 1000 (120, still
        // above: no resolution); the 80 leaves at 1100 (40): resolved.
        buy(0, "c", 30),
        buy(100, "c", 80),
        buy(500, "c", 40),
        // d: 110 at 500, 50 at 1000 (resolved), 80 at 1200: nothing more.
        buy(0, "d", 60),
        buy(500, "d", 50),
        buy(1200, "d", 30),
    ];
    assert_eq!(
        run_sum(spend(1000, 100.0, 0, 0), events),
        [
            firing("b", 999),
            resolved("b", 999, 1000),
            firing("c", 100),
            resolved("c", 100, 1100),
            firing("d", 500),
            resolved("d", 500, 1000),
        ]
    );
}

#[test]
fn sum_threshold_skips_events_without_a_numeric_amount() {
    // Undocumented in the README; a user would expect an event whose amount
    // is missing or not a number to add nothing (and not to count in
    // `{count}`), and a numeric string ("12.50", as trackers send) to add
    // its number: the SDK's `Value::as_f64` reads numeric strings.
    let events = vec![
        buy(0, "a", 60),
        ev("buy", 10, "a"), // no amount
        buy_as(20, "a", "abc"),
        buy_as(30, "a", true),
        buy_as(40, "a", ""),
        buy_as(100, "a", " 45.5 "), // 105.5: fires
        // b: only 60 + 30 count: never above 100.
        buy(0, "b", 60),
        buy_as(10, "b", "lots"),
        buy_as(20, "b", false),
        ev("buy", 30, "b"),
        buy_as(40, "b", 30.0),
    ];
    let got = run_timed(spend(1000, 100.0, 0, 0), events);
    // `{count}` counts the summed events, `{value}` is the sum (two
    // decimals when fractional); at the resolution the 60 has left.
    assert_eq!(
        got,
        [
            (firing("a", 100), "2 105.50".to_string()),
            (resolved("a", 100, 1000), "1 45.50".to_string()),
        ]
    );
}

#[test]
fn sum_threshold_treats_nan_and_infinity_as_not_a_number() {
    // Rust parses "NaN" and "inf" as floats; an amount that is not a finite
    // number must not poison the key's sum (NaN compares false both ways,
    // so the rule would neither fire nor resolve until the window emptied).
    let events = vec![
        // a: 60 + 50 = 110 at 200 once the "NaN" is skipped; 50 at 1000.
        buy(0, "a", 60),
        buy_as(100, "a", "NaN"),
        buy(200, "a", 50),
        // b: "inf" and f64::INFINITY add nothing: 90 is not above 100.
        buy_as(0, "b", "inf"),
        buy_as(10, "b", f64::INFINITY),
        buy_as(20, "b", "-infinity"),
        buy_as(30, "b", f64::NAN),
        buy(40, "b", 90),
    ];
    assert_eq!(
        run_sum(spend(1000, 100.0, 0, 0), events),
        [firing("a", 200), resolved("a", 200, 1000)]
    );
}

#[test]
fn threshold_counts_an_event_at_the_watermark_at_that_instant() {
    // Another key's event moves the watermark to 1000 first; an event at
    // exactly the watermark is not late (only older ones are), so it still
    // counts at 1000: the sum over (0, 1000] stays above, and the episode
    // ends at 1010 when the event at 10 leaves, not at 1000.
    let events = vec![
        buy(0, "a", 60),
        buy(10, "a", 30),
        buy(20, "a", 20), // 110: fires at 20
        buy(1000, "b", 1),
        buy(1000, "a", 60), // the 60 at 0 leaves as this one comes: 110
    ];
    assert_eq!(
        run_sum(spend(1000, 100.0, 0, 0), events),
        [firing("a", 20), resolved("a", 20, 1010)]
    );
    // The same for a count.
    let events = vec![
        ev("fail", 0, "a"),
        ev("fail", 10, "a"),
        ev("fail", 20, "a"),
        ev("fail", 1000, "b"),
        ev("fail", 1000, "a"),
    ];
    assert_eq!(
        run(threshold(1000, 2.0, 0, 0), events),
        [firing("a", 20), resolved("a", 20, 1010)]
    );
}

/// A count crossing its threshold at the newest instant (the watermark
/// itself) fires in that call: more events at that instant could only add
/// to it. A live burst is alerted at once, not at the next event or idle
/// advance. (Resolutions at the watermark wait: an event at that instant may
/// still come.)
#[test]
fn a_count_fires_at_the_newest_instant_without_waiting() {
    let mut h = harness(&[threshold(1000, 2.0, 0, 0)]);
    assert!(
        h.push(vec![ev("fail", 100, "a"), ev("fail", 101, "a")])
            .items
            .is_empty()
    );
    // The third, alone: the watermark is its own time.
    let out = h.push(vec![ev("fail", 102, "a")]);
    assert_eq!(h.watermark(), 102);
    assert_eq!(seen(&out.items), [firing("a", 102)]);
    // A sum is decided once the instant is complete (a refund at 102 could
    // still come): the watermark has to pass it.
    let mut h = harness(&[spend(1000, 100.0, 0, 0)]);
    assert!(h.push(vec![buy(100, "a", 150)]).items.is_empty());
    assert_eq!(seen(&h.advance(101)), [firing("a", 100)]);
}

#[test]
fn sum_threshold_with_for_fires_only_if_the_sum_stays_above_that_long() {
    // 110 from 100; 150 at 900; the 30 leaves at 1000 (120: still above, the
    // `for` does not restart); the 80 leaves at 1100 (40): held 100..1100.
    let held = |for_ms: i64| {
        run_sum(
            spend(1000, 100.0, for_ms, 0),
            vec![
                buy(0, "a", 30),
                buy(100, "a", 80),
                buy(900, "a", 40),
                buy(5000, "z", 1), // moves event time on
            ],
        )
    };
    assert_eq!(held(950), [firing("a", 100), resolved("a", 100, 1100)]);
    // Held exactly `for`: it ends when `for` would be met: no alert.
    assert_eq!(held(1000), []);
    // A dip below restarts the wait: 110 over 100..1000, then 50, then 110
    // from 1050 until the 50 leaves at 1100.
    let dipped = |for_ms: i64| {
        run_sum(
            spend(1000, 100.0, for_ms, 0),
            vec![buy(0, "a", 60), buy(100, "a", 50), buy(1050, "a", 60)],
        )
    };
    assert_eq!(dipped(850), [firing("a", 100), resolved("a", 100, 1000)]);
    assert_eq!(dipped(900), []);
}

#[test]
fn sum_threshold_cooldown_suppresses_a_repeat_and_its_resolution() {
    let events = vec![
        buy(0, "a", 60),
        buy(10, "a", 50), // 110: fires at 10; the 60 leaves at 1000
        buy(2000, "a", 60),
        buy(2010, "a", 50), // would fire at 2010: 2000 ms after 10
        buy(9000, "a", 60),
        buy(9010, "a", 50), // 9000 ms after 10: fires again
        buy(0, "b", 200),   // b has its own cooldown
    ];
    assert_eq!(
        run_sum(spend(1000, 100.0, 0, 5000), events),
        [
            firing("a", 10),
            firing("a", 9010),
            resolved("a", 10, 1000),
            resolved("a", 9010, 10000),
            firing("b", 0),
            resolved("b", 0, 1000),
        ]
    );
}

#[test]
fn sum_threshold_sums_per_key() {
    // a and b together pass 100 at 100 (120); a alone only at 300 (110).
    let events = vec![
        buy(0, "a", 60),
        buy(100, "b", 60),
        buy(200, "a", 30),
        buy(300, "a", 20),
        // No user, no key: skipped, it adds to no one's sum.
        Event::new("buy", 400).with_property("amount", 500_i64),
    ];
    assert_eq!(
        run_sum(spend(1000, 100.0, 0, 0), events),
        [firing("a", 300), resolved("a", 300, 1000)]
    );
}

#[test]
fn sum_threshold_decides_when_a_negative_amount_leaves() {
    // Window 1000, above 4. a: -3 at 0, 5 at 100 (2); the -3 leaves at 1000:
    // 5, above; the 5 leaves at 1100: 0, resolved.
    let a = || vec![buy(0, "a", -3), buy(100, "a", 5)];
    assert_eq!(
        run_sum(spend(1000, 4.0, 0, 0), a()),
        [firing("a", 1000), resolved("a", 1000, 1100)]
    );
    // With `for`, the wait starts when the -3 leaves: held 1000..1100.
    assert_eq!(
        run_sum(spend(1000, 4.0, 50, 0), a()),
        [firing("a", 1000), resolved("a", 1000, 1100)]
    );
    assert_eq!(run_sum(spend(1000, 4.0, 100, 0), a()), []);
    // b: 10 fires at 0; a refund that comes resolves (3 at 300); the 10
    // leaves at 1000 (-7), a 6 comes at 1200 (-1); the refund leaves at
    // 1300 (6): fires again; the 6 leaves at 2200 (0): resolved.
    let b = vec![buy(0, "b", 10), buy(300, "b", -7), buy(1200, "b", 6)];
    assert_eq!(
        run_sum(spend(1000, 4.0, 0, 0), b),
        [
            firing("b", 0),
            firing("b", 1300),
            resolved("b", 0, 300),
            resolved("b", 1300, 2200),
        ]
    );
}

#[test]
fn sum_threshold_decides_the_events_of_one_instant_together() {
    // +10 and -8 at one instant is +2: never above 5, whatever their order.
    let events = vec![
        buy(0, "a", 10),
        buy(0, "a", -8),
        buy(0, "b", -8),
        buy(0, "b", 10),
    ];
    assert_eq!(run_sum(spend(1000, 5.0, 0, 0), events), []);
    // Three events leave at 1000 as three come: the count stays 3, one
    // episode from 0 to 2000 (not resolved and fired again at 1000).
    let events = vec![
        ev("fail", 0, "a"),
        ev("fail", 0, "a"),
        ev("fail", 0, "a"),
        ev("fail", 1000, "a"),
        ev("fail", 1000, "a"),
        ev("fail", 1000, "a"),
    ];
    assert_eq!(
        run(threshold(1000, 2.0, 0, 0), events),
        [firing("a", 0), resolved("a", 0, 2000)]
    );
}

#[test]
fn sum_threshold_does_not_drift_with_decimal_amounts() {
    // 0.1 + 0.2 + 0.3 is 0.6 at 200, above 0.5; at 1000 the 0.1 leaves and
    // the sum of the doubles 0.2 and 0.3 is exactly 0.5: not above. A sum
    // kept by adding and subtracting would hold 0.5000000000000001 and
    // resolve only at 1100.
    let events = vec![
        buy_as(0, "a", 0.1),
        buy_as(100, "a", 0.2),
        buy_as(200, "a", 0.3),
    ];
    assert_eq!(
        run_timed(spend(1000, 0.5, 0, 0), events),
        [
            (firing("a", 200), "3 0.60".to_string()),
            (resolved("a", 200, 1000), "2 0.50".to_string()),
        ]
    );
    // A large amount that leaves does not take small ones with it: beside
    // 1e16 a 1 is below the last bit (1e16 + 1 + 1 rounds to 1e16), yet
    // once the 1e16 leaves at 1000 the window holds 2, above 1.5, until the
    // first 1 leaves at 1100.
    let events = vec![buy_as(0, "b", 1e16), buy(100, "b", 1), buy(200, "b", 1)];
    assert_eq!(
        run_sum(spend(1000, 1.5, 0, 0), events),
        [firing("b", 0), resolved("b", 0, 1100)]
    );
}

/// Amounts as trackers send them: decimals whose doubles are inexact, so
/// the order of a float sum changes its last bit (0.1 + 0.2 + 0.3 is
/// 0.6000000000000001 left to right, 0.6 right to left), refunds (negative:
/// one that leaves the window raises the sum), whole numbers.
const AMOUNTS: [f64; 16] = [
    0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 2.5, 3.0, 0.0, -0.1, -0.2, -0.3, -1.0, -2.5,
];

/// An amount as an event may carry it: the model sees `Some(number)` for
/// the numeric ones and `None` for the rest.
fn amount(rng: &mut Rng) -> (Option<nexuspipe_sdk::Value>, Option<f64>) {
    use nexuspipe_sdk::Value;
    let v = AMOUNTS[rng.next(AMOUNTS.len() as u64) as usize];
    match rng.next(8) {
        0 => (None, None),
        1 => (Some(Value::Str("n/a".into())), None),
        2 => (Some(Value::Boolean(true)), None),
        3 => (Some(Value::Str(format!("{v}"))), Some(v)),
        4 | 5 if v.fract() == 0.0 => (Some(Value::Int(v as i64)), Some(v)),
        _ => (Some(Value::Float(v)), Some(v)),
    }
}

/// The exact sum of `amounts` rounded once to a double, as a fresh sum of
/// the window's events would be without rounding errors of its own. Float
/// sums depend on their order (see `AMOUNTS`), so a model that summed
/// left to right would disagree with any other correct order in the last
/// bit, exactly where `above` is hit, and need a tolerance there; summing
/// exactly needs none. The amounts here are multiples of 2^-60 far below
/// 2^60: as integers in units of 2^-60 they sum exactly, and the cast back
/// rounds to nearest.
fn exact_sum(amounts: impl Iterator<Item = f64>) -> f64 {
    const UNIT: f64 = (1u64 << 60) as f64;
    let units: i128 = amounts
        .map(|v| {
            let u = v * UNIT; // exact: a power of two
            assert!(u.fract() == 0.0 && u.abs() < 2f64.powi(100), "{v}");
            u as i128
        })
        .sum();
    units as f64 / UNIT
}

/// The summed threshold by recomputation: the sum at time t is the exact
/// sum of the amounts of the numeric events with t - window < ts <= t. It
/// changes only at event times and at `ts + window`, and is compared at
/// each such instant with all that happens there in, whether events come
/// or leave. Episodes (maximal runs with sum > above), `for` and cooldown
/// as in `threshold_model`.
fn sum_model(
    events: &[(i64, String, Option<f64>)],
    window: i64,
    above: f64,
    for_ms: i64,
    cooldown: i64,
) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut keys: Vec<&String> = events.iter().map(|(_, k, _)| k).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let mine: Vec<(i64, f64)> = events
            .iter()
            .filter(|(_, k, _)| k == key)
            .filter_map(|(t, _, v)| Some((*t, (*v)?)))
            .collect();
        let mut points: Vec<i64> = mine.iter().flat_map(|(t, _)| [*t, t + window]).collect();
        points.sort();
        points.dedup();
        let sum = |t: i64| -> f64 {
            exact_sum(
                mine.iter()
                    .filter(|(e, _)| t - window < *e && *e <= t)
                    .map(|(_, v)| *v),
            )
        };
        let mut last_sent: Option<i64> = None;
        let mut start: Option<i64> = None;
        for &t in &points {
            let on = sum(t) > above;
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

#[test]
fn sum_threshold_matches_the_reference_model_on_random_streams() {
    let mut rng = Rng(0xd1b5_4a32_d192_ed03);
    // Thresholds that sums of `AMOUNTS` hit exactly or by a last bit
    // (0.1 + 0.2 is 0.30000000000000004; 0.2 + 0.3 is 0.5). Not negative:
    // an empty window (0) would be above it.
    let aboves = [0.0, 0.1, 0.3, 0.4, 0.5, 0.6, 1.0, 1.5, 2.0, 3.0];
    for round in 0..400 {
        let window = 100 + 10 * rng.next(90) as i64;
        let above = aboves[rng.next(aboves.len() as u64) as usize];
        let for_ms = [0, 0, 50, 100, 300][rng.next(5) as usize];
        let cooldown = [0, 0, 200, 2000][rng.next(4) as usize];
        let mut t = 0;
        let mut events: Vec<(i64, String, Option<f64>)> = Vec::new();
        let mut stream: Vec<Event> = Vec::new();
        for _ in 0..40 {
            // Non-decreasing times on a 10 ms grid, like the window and
            // `for`: events at one instant, events that leave exactly as
            // others come, conditions that hold exactly `for`.
            t += 10 * rng.next(12) as i64;
            let key = format!("k{}", rng.next(3));
            let (value, number) = amount(&mut rng);
            let mut e = ev("buy", t, &key);
            if let Some(v) = value {
                e = e.with_property("amount", v);
            }
            stream.push(e);
            events.push((t, key, number));
        }
        let got = run_sum(spend(window, above, for_ms, cooldown), stream);
        let want = sum_model(&events, window, above, for_ms, cooldown);
        assert_eq!(
            got, want,
            "round {round}: window {window} above {above} for {for_ms} cooldown {cooldown}"
        );
    }
}

// ---- anomaly rules ----

const MINUTE: i64 = 60_000;

/// An `anomaly` rule on `error` events per `service`, with one-minute windows.
fn anomaly(extra: serde_json::Value) -> serde_json::Value {
    let mut rule = json!({"id": "error_spike", "type": "anomaly", "summary": "{value} vs {baseline}",
                          "key": "service", "filter": {"event_type": "error"}, "window": "1m"});
    rule.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    rule
}

/// `counts[i]` errors of `service` spread over minute `i` (one batch per minute).
fn per_minute(service: &str, counts: &[u32]) -> Vec<Vec<Event>> {
    counts
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n)
                .map(|j| {
                    let t = i as i64 * MINUTE + j as i64 * (MINUTE / n as i64);
                    Event::new("error", t).with_property("service", service)
                })
                .collect()
        })
        .collect()
}

fn run_batches(rules: &[serde_json::Value], batches: Vec<Vec<Event>>) -> Vec<Alert> {
    harness(rules).run(batches).items
}

/// Worked out by hand. The baseline of 10 windows of [10, 11, 9, 10, 12] twice:
/// median 10, absolute deviations [0,1,1,0,2] twice, so MAD 1 and a deviation
/// of 1.4826: beyond above 10 + 3 × 1.4826 = 14.45. A spike of 50 then 55
/// (each beyond its baseline, which the 50 moves little) fires with `for` 2
/// at the second window, starting at the first; the next window of 10 resolves
/// it, ending where the spike ended.
#[test]
fn anomaly_fires_on_a_spike_after_for_windows_and_resolves_when_back_within() {
    let normal = [10, 11, 9, 10, 12];
    let mut counts: Vec<u32> = normal.iter().cycle().take(20).copied().collect();
    counts.extend([50, 55, 10, 11, 9]);
    let rule = anomaly(json!({"for": 2}));
    let alerts = run_batches(&[rule], per_minute("api", &counts));
    assert_eq!(
        seen(&alerts),
        [
            firing("api", 20 * MINUTE),
            resolved("api", 20 * MINUTE, 22 * MINUTE)
        ]
    );
    // Its baseline, windows 11 to 20, holds the 50: median (10 + 11) / 2.
    let fired = alerts.iter().find(|a| a.ends_at.is_none()).unwrap();
    assert_eq!(fired.summary, "55 vs 10.50");
    // With `for` 1 it fires at the first window of the spike.
    let alerts = run_batches(&[anomaly(json!({}))], per_minute("api", &counts));
    assert_eq!(
        seen(&alerts),
        [
            firing("api", 20 * MINUTE),
            resolved("api", 20 * MINUTE, 22 * MINUTE)
        ]
    );
    assert_eq!(alerts[0].summary, "50 vs 10", "fired at the first window");
}

/// A steady ramp (10, 12, 14, ...) without seasonality: the baseline of the
/// last 10 values has its median 9 below the newest, and absolute deviations
/// 9, 7, 5, 3, 1, 1, 3, 5, 7, 9 (MAD 5, deviation 7.41); the next value is 11
/// above the median, under 3 × 7.41. It never fires, in either direction.
#[test]
fn anomaly_does_not_fire_on_a_ramp() {
    let counts: Vec<u32> = (0..60).map(|i| 10 + 2 * i).collect();
    let alerts = run_batches(
        &[anomaly(json!({"direction": "both"}))],
        per_minute("api", &counts),
    );
    assert_eq!(seen(&alerts), []);
}

/// No alert before `baseline` windows were seen (the warm-up), however wild
/// the first windows are.
#[test]
fn anomaly_needs_a_warm_up() {
    let counts = [1, 1, 1, 90, 1, 1, 1, 1, 1, 1];
    let alerts = run_batches(&[anomaly(json!({}))], per_minute("api", &counts));
    assert_eq!(seen(&alerts), []);
    // One window more, with a baseline of 9 ones and the 90 (median 1, MAD 0,
    // so the deviation is `min_deviation`, 1 for a count: beyond above 4).
    let mut counts = counts.to_vec();
    counts.extend([5, 1]);
    let alerts = run_batches(&[anomaly(json!({}))], per_minute("api", &counts));
    assert_eq!(
        seen(&alerts),
        [
            firing("api", 10 * MINUTE),
            resolved("api", 10 * MINUTE, 11 * MINUTE)
        ]
    );
}

/// A service that stops erring: windows without events count 0. Below a
/// baseline of 10 ones (MAD 0, deviation 1, so beyond under 1 - 3 × 1 < 0)
/// nothing is beyond; with `min_deviation` 0.2, a 0 is (1 - 0.6 = 0.4).
#[test]
fn anomaly_below_counts_empty_windows() {
    let mut batches = per_minute("api", &[1; 10]);
    // Minutes 10 and 11 are empty; minute 12 has one error again.
    batches.push(vec![
        Event::new("error", 12 * MINUTE).with_property("service", "api"),
    ]);
    let below = |extra: serde_json::Value| {
        let rule = anomaly(extra);
        seen(&run_batches(&[rule], batches.clone()))
    };
    assert_eq!(below(json!({"direction": "below"})), []);
    assert_eq!(
        below(json!({"direction": "below", "min_deviation": 0.2})),
        [
            firing("api", 10 * MINUTE),
            resolved("api", 10 * MINUTE, 12 * MINUTE)
        ]
    );
}

/// Snapshot and restore keep the baseline: a restart in the middle of a
/// stream (the same config) gives the alerts of an uninterrupted run; a
/// changed rule starts over, with a warm-up.
#[test]
fn anomaly_baseline_survives_a_restart() {
    let mut counts: Vec<u32> = [10, 11, 9, 10, 12]
        .iter()
        .cycle()
        .take(20)
        .copied()
        .collect();
    counts.extend([50, 10]);
    let config = json!({"rules": [anomaly(json!({}))]}).to_string();
    let batches = per_minute("api", &counts);
    let uninterrupted = seen(&harness(&[anomaly(json!({}))]).run(batches.clone()).items);
    assert_eq!(uninterrupted.len(), 2, "{uninterrupted:?}");
    let (before, after) = batches.split_at(15);
    let first_half = |h: &mut AlerterHarness<Alerts>| {
        let mut alerts = Vec::new();
        for batch in before {
            alerts.extend(h.push(batch.clone()).items);
        }
        alerts
    };
    let mut h = harness(&[anomaly(json!({}))]);
    let mut alerts = first_half(&mut h);
    let report = h.restart(&config);
    assert_eq!(report.kept, ["error_spike"]);
    alerts.extend(h.run(after.to_vec()).items);
    assert_eq!(seen(&alerts), uninterrupted);
    // Another `k`: the rule's state is reset, and 7 windows after the
    // restart are too few for a baseline of 10.
    let mut h = harness(&[anomaly(json!({}))]);
    first_half(&mut h);
    let report = h.restart(&json!({"rules": [anomaly(json!({"k": 2.5}))]}).to_string());
    assert_eq!(report.reset, ["error_spike"]);
    assert_eq!(seen(&h.run(after.to_vec()).items), []);
}

/// With allowed lateness, a key's next events can come before its quiet
/// windows are decided: forgetting the key keeps them, and it warms up again
/// from their window. Windows of 1 minute, decided 30 s after their end;
/// `api` has 1 error in minutes 0 to 2, none in 3 to 5, then 1 in each of
/// minutes 6 to 8 (the one in minute 6 comes before minute 5 is decided) and
/// 10 in minute 9: minutes 6 to 8 are the new baseline (median 1, MAD 0,
/// deviation 1), and 10 > 1 + 3 fires.
#[test]
fn anomaly_keeps_events_that_come_before_a_quiet_key_is_forgotten() {
    let config = json!({"rules": [anomaly(json!({"baseline": 3}))]}).to_string();
    let settings = nexuspipe_sdk::HostSettings {
        allowed_lateness: 30_000,
        downstream_properties: None,
    };
    let mut h = AlerterHarness::<Alerts>::with_settings(&config, settings, 0);
    let counts = [1, 1, 1, 0, 0, 0, 1, 1, 1, 10];
    let out = h.run(per_minute("api", &counts));
    assert_eq!(seen(&out.items), [firing("api", 9 * MINUTE)]);
    assert!(out.late.is_empty());
}

#[test]
fn anomaly_config_errors_name_the_rule_and_key() {
    for (extra, message) in [
        (json!({"for": "2m"}), "`for` counts windows"),
        (json!({"direction": "up"}), "unknown direction `up`"),
        (json!({"baseline": 2}), "rules[0].baseline"),
        (json!({"sum": "a", "avg": "b"}), "`sum` or `avg`, not both"),
        (json!({"above": 3}), "does not use `above`"),
        (json!({"k": 0}), "rules[0].k"),
    ] {
        let config = json!({"rules": [anomaly(extra.clone())]}).to_string();
        let err = match alerts::Config::parse(&config) {
            Ok(_) => panic!("{extra} was accepted"),
            Err(e) => format!("{:?}: {}", e.field, e.message),
        };
        assert!(err.contains(message), "{extra}: {err}");
        assert!(
            err.contains("error_spike") || err.contains("rules[0]"),
            "{err}"
        );
    }
}

/// The anomaly rule by windows, written the simple way: each key's windows
/// from its first event's on, values recomputed from lists, the baseline's
/// median and MAD by sorting copies. `events` are (time, key, value) in time
/// order; the watermark passed the windows ending at or before the last
/// event; the final flush closes each key's windows up to its last event.
#[allow(clippy::too_many_arguments)]
fn anomaly_model(
    events: &[(i64, String, f64)],
    window: i64,
    aggregate: &str,
    k: f64,
    direction: &str,
    baseline: usize,
    min_deviation: f64,
    for_windows: u32,
) -> Vec<Seen> {
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let last_closed = events.last().map_or(-1, |e| e.0.div_euclid(window) - 1);
    let mut keys: Vec<&String> = events.iter().map(|e| &e.1).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for key in keys {
        let mine: Vec<(i64, f64)> = events
            .iter()
            .filter(|e| &e.1 == key)
            .map(|e| (e.0.div_euclid(window), e.2))
            .collect();
        let last = mine.last().unwrap().0.max(last_closed);
        let mut w = mine[0].0;
        let (mut history, mut quiet, mut streak) = (Vec::<f64>::new(), 0usize, 0u32);
        // The first window of the streak (an average skips empty windows).
        let mut since = 0;
        let mut open: Option<i64> = None;
        while w <= last {
            let values: Vec<f64> = mine.iter().filter(|e| e.0 == w).map(|e| e.1).collect();
            quiet = if values.is_empty() { quiet + 1 } else { 0 };
            let value = match aggregate {
                "count" => Some(values.len() as f64),
                "sum" => Some(values.iter().sum()),
                _ => (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64),
            };
            if let Some(x) = value {
                let beyond = history.len() >= baseline && {
                    let m = median(&history);
                    let devs: Vec<f64> = history.iter().map(|h| (h - m).abs()).collect();
                    let d = (1.4826 * median(&devs)).max(min_deviation);
                    match direction {
                        "above" => x - m > k * d,
                        "below" => m - x > k * d,
                        _ => (x - m).abs() > k * d,
                    }
                };
                history.push(x);
                if history.len() > baseline {
                    history.remove(0);
                }
                if beyond {
                    streak += 1;
                    if streak == 1 {
                        since = w * window;
                    }
                    if streak == for_windows {
                        let start = since;
                        open = Some(start);
                        out.push((key.clone(), "firing", start, None));
                    }
                } else {
                    streak = 0;
                    if let Some(s) = open.take() {
                        out.push((key.clone(), "resolved", s, Some(w * window)));
                    }
                }
            }
            if quiet >= baseline {
                // Forgotten: an open alert resolves; the key starts over at
                // its next event.
                if let Some(s) = open.take() {
                    out.push((key.clone(), "resolved", s, Some((w + 1) * window)));
                }
                history.clear();
                streak = 0;
                quiet = 0;
                match mine.iter().find(|e| e.0 > w) {
                    Some(e) => w = e.0,
                    None => break,
                }
                continue;
            }
            w += 1;
        }
    }
    out.sort();
    out
}

/// Random keys with noisy levels, spikes, drops and gaps longer than a
/// baseline, for each aggregate and direction, against the model.
#[test]
fn anomaly_matches_the_reference_model_on_random_streams() {
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let window = 1000;
    let (mut fired, mut rounds_with_alerts) = (0, 0);
    for round in 0..200 {
        let aggregate = ["count", "sum", "avg"][rng.next(3) as usize];
        let direction = ["above", "below", "both"][rng.next(3) as usize];
        let baseline = 3 + rng.next(8) as usize;
        let k = [1.0, 2.0, 3.0][rng.next(3) as usize];
        let min_deviation = [0.0, 0.5, 1.0][rng.next(3) as usize];
        let for_windows = 1 + rng.next(3) as u32;
        let mut events: Vec<(i64, String, f64)> = Vec::new();
        let mut level = [5u64, 5, 5];
        // s0 is silent for longer than any baseline, then comes back.
        let gone = 20 + rng.next(10) as i64;
        let back = gone + 12 + rng.next(10) as i64;
        for w in 0..60i64 {
            for (i, level) in level.iter_mut().enumerate() {
                if i == 0 && (gone..back).contains(&w) {
                    continue;
                }
                match rng.next(20) {
                    0 => *level = 1 + rng.next(20), // a new level
                    1 => continue,                  // a quiet window
                    _ => {}
                }
                let spike = if rng.next(15) == 0 { 4 } else { 1 };
                let n = (*level + rng.next(3)) * spike;
                for j in 0..n {
                    let t = w * window + (j as i64 * 997 + i as i64 * 13) % window;
                    events.push((t, format!("s{i}"), rng.next(50) as f64));
                }
            }
        }
        events.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut rule = json!({"k": k, "direction": direction, "baseline": baseline,
                              "min_deviation": min_deviation, "for": for_windows, "window": window});
        if aggregate != "count" {
            rule[aggregate] = json!("amount");
        }
        let batches: Vec<Vec<Event>> = events
            .chunk_by(|a, b| a.0.div_euclid(window) == b.0.div_euclid(window))
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|(t, key, v)| {
                        Event::new("error", *t)
                            .with_property("service", key.as_str())
                            .with_property("amount", *v)
                    })
                    .collect()
            })
            .collect();
        let got = seen(&run_batches(&[anomaly(rule.clone())], batches));
        let want = anomaly_model(
            &events,
            window,
            aggregate,
            k,
            direction,
            baseline,
            min_deviation,
            for_windows,
        );
        assert_eq!(got, want, "round {round}: {rule} ({aggregate})");
        fired += got.iter().filter(|a| a.1 == "firing").count();
        rounds_with_alerts += usize::from(!got.is_empty());
    }
    // The streams do make the rule fire (and not in every round).
    assert!(
        fired > 200 && (100..200).contains(&rounds_with_alerts),
        "{fired} {rounds_with_alerts}"
    );
}
