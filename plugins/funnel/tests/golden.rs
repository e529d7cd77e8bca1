//! Golden cases in `examples/funnel/`, run natively through the SDK harness.
//! The host's tests run the same files through the Wasm component.

use nexuspipe_sdk::testing::{AggregatorHarness, golden_cases, golden_outputs, point_to_json};
use std::path::Path;

#[test]
fn examples_match_their_documented_outputs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/funnel");
    for (case, expected) in golden_cases(&dir) {
        let got = golden_outputs(&dir, &case, &[], |config, events| {
            let mut h = AggregatorHarness::<funnel::Funnel>::new(config);
            h.run([events]).items.iter().map(point_to_json).collect()
        });
        assert_eq!(got, expected, "case {case}");
    }
}

#[test]
fn distinct_users_past_the_exact_limit_stay_within_two_percent() {
    use nexuspipe_sdk::Event;
    let config = r#"{"metrics": [{"measurement": "u", "window": {"type": "tumbling", "size": "1h"},
        "aggregates": [{"fn": "unique", "field": "user_id", "as": "users"}]}]}"#;
    let mut h = AggregatorHarness::<funnel::Funnel>::new(config);
    let n = 50_000;
    let events: Vec<Event> = (0..n)
        .map(|i| Event::new("x", i % 3_600_000).with_user(format!("user-{i}")))
        .collect();
    let out = h.run([events]);
    let est = out.items[0].fields[0].1.as_i64().unwrap();
    let err = (est - n).abs() as f64 / n as f64;
    assert!(err < 0.02, "{est} for {n}");
}

/// A conversion window that ended before the watermark is closed, even while
/// its user is still in memory between sweeps: a late step inside the
/// window's time no longer counts, exactly as when the user was removed.
#[test]
fn a_late_step_after_the_window_closed_does_not_count_between_sweeps() {
    use nexuspipe_sdk::{Event, HostSettings};
    const MIN: i64 = 60_000;
    let config = r#"{"funnels": [{"name": "f", "within": "10m", "window": "1h",
        "steps": [{"name": "view", "filter": {"event_type": "page_view"}},
                  {"name": "cart", "filter": {"event_type": "add_to_cart"}}]}]}"#;
    let settings = HostSettings {
        allowed_lateness: 30 * MIN,
        downstream_properties: None,
    };
    let mut h = AggregatorHarness::<funnel::Funnel>::with_settings(config, settings, 5_000);
    let at = |t: i64, kind: &str, user: &str| Event::new(kind, t).with_user(user);
    // u1 opens at 0; the watermark reaches 8 min (a sweep), then 10.2 min
    // (no sweep yet, u1's window ended at 10 min).
    h.push(vec![
        at(0, "page_view", "u1"),
        at(8 * MIN + 5_000, "page_view", "u9"),
    ]);
    h.push(vec![at(10 * MIN + 17_000, "page_view", "u9")]);
    // Late, within the allowed lateness, inside u1's 10 minutes by its own time.
    h.push(vec![at(9 * MIN, "add_to_cart", "u1")]);
    let out = h.run([]);
    let users = |step: &str| {
        let p = out
            .items
            .iter()
            .rfind(|p| p.tags.iter().any(|(k, v)| k == "step" && v == step));
        p.unwrap().fields[0].1.as_i64().unwrap()
    };
    assert_eq!((users("1"), users("2")), (2, 0));
}
