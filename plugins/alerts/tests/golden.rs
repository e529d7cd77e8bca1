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
