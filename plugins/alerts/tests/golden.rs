//! Golden cases in `examples/alerts/`, run natively through the SDK harness.
//! The host's tests run the same files through the Wasm component.

use nexuspipe_sdk::testing::{AlerterHarness, alert_to_json, golden_cases, golden_outputs};
use std::path::Path;

#[test]
fn examples_match_their_documented_outputs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/alerts");
    for (case, expected) in golden_cases(&dir) {
        let got = golden_outputs(&dir, &case, &[], |config, events| {
            let mut h = AlerterHarness::<alerts::Alerts>::new(config);
            h.run([events]).items.iter().map(alert_to_json).collect()
        });
        assert_eq!(got, expected, "case {case}");
    }
}

#[test]
fn a_pending_absence_survives_a_restart() {
    use nexuspipe_sdk::Event;
    let mut h = AlerterHarness::<alerts::Alerts>::new("");
    h.push(vec![Event::new("add_to_cart", 0).with_user("ann")]);
    h.restart("");
    let out = h.run([vec![Event::new("page_view", 31 * 60_000).with_user("zed")]]);
    assert_eq!(out.items.len(), 1);
    assert_eq!(out.items[0].key, "ann");
}

/// An add_to_cart per (time, user).
fn carts(users: impl IntoIterator<Item = (i64, String)>) -> Vec<nexuspipe_sdk::Event> {
    users
        .into_iter()
        .map(|(t, user)| nexuspipe_sdk::Event::new("add_to_cart", t).with_user(user))
        .collect()
}

/// The keys of alerts, in order.
fn keys(alerts: Vec<nexuspipe_sdk::Alert>) -> Vec<String> {
    alerts.into_iter().map(|a| a.key).collect()
}

/// Deadlines fire when the watermark passes them, no earlier and no later,
/// in key order within a call; keys with nothing left are forgotten, so the
/// state does not grow with every key ever seen.
#[test]
fn deadlines_fire_on_time_and_idle_keys_are_forgotten() {
    use nexuspipe_sdk::Event;
    use nexuspipe_sdk::testing::Stateful;
    const MIN: i64 = 60_000;
    let mut h = AlerterHarness::<alerts::Alerts>::new("");
    // Users u9..u0 add to cart one minute apart (u9 first); u3 buys.
    let mut events = carts((0..10).map(|i| (i * MIN, format!("u{}", 9 - i))));
    events.push(Event::new("purchase", 10 * MIN).with_user("u3"));
    h.push(events);
    // u9's wait ends at 30 min, u5's at 34 min.
    assert_eq!(keys(h.advance(30 * MIN - 1)), Vec::<String>::new());
    assert_eq!(keys(h.advance(34 * MIN)), ["u5", "u6", "u7", "u8", "u9"]);
    assert_eq!(keys(h.advance(34 * MIN + 1)), Vec::<String>::new());
    assert_eq!(keys(h.advance(40 * MIN)), ["u0", "u1", "u2", "u4"]);
    let state = String::from_utf8(h.plugin.snapshot()).unwrap();
    assert!(
        !state.contains("\"u"),
        "forgotten keys are still in {state}"
    );
}

/// As above with many keys and few due per call, the path that looks up the
/// due keys instead of passing over all of them.
#[test]
fn a_few_due_keys_among_many_fire_on_time_in_key_order() {
    const SEC: i64 = 1_000;
    let mut h = AlerterHarness::<alerts::Alerts>::new("");
    // 200 users, one second apart, named so that time order is reverse key order.
    h.push(carts(
        (0..200).map(|i| (i * SEC, format!("u{:03}", 199 - i))),
    ));
    let mut fired = 0;
    for step in 0..20 {
        let wm = 30 * 60 * SEC + step * 10 * SEC + 9 * SEC;
        let keys = keys(h.advance(wm));
        let expected: Vec<String> = (step * 10..step * 10 + 10)
            .rev()
            .map(|i| format!("u{:03}", 199 - i))
            .collect();
        assert_eq!(keys, expected, "watermark {wm}");
        fired += keys.len();
    }
    assert_eq!(fired, 200);
}
