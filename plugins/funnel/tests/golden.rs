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
