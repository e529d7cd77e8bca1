//! Early results: an open window is emitted each time event time passes a
//! multiple of `early`, with exactly the events before that instant,
//! whatever the batching, and again when it closes.

use nexuspipe_sdk::Event;
use nexuspipe_sdk::testing::AggregatorHarness;

const CONFIG: &str = r#"{"metrics": [{"measurement": "day", "window": {"type": "tumbling", "size": "1d"},
  "early": "1m", "aggregates": [{"fn": "unique", "field": "user_id", "as": "users"},
                                {"fn": "count", "as": "n"}]}]}"#;

const MIN: i64 = 60_000;

/// (timestamp, users, n) of each point, in order.
fn run(batches: Vec<Vec<Event>>) -> Vec<(i64, i64, i64)> {
    let mut h = AggregatorHarness::<funnel::Funnel>::with_settings(
        CONFIG,
        nexuspipe_sdk::testing::default_settings(),
        0,
    );
    let out = h.run(batches);
    out.items
        .iter()
        .map(|p| {
            let f = |k: &str| {
                p.fields
                    .iter()
                    .find(|(n, _)| n == k)
                    .unwrap()
                    .1
                    .as_i64()
                    .unwrap()
            };
            (p.timestamp, f("users"), f("n"))
        })
        .collect()
}

fn ev(ts: i64, user: &str) -> Event {
    Event::new("x", ts).with_user(user)
}

#[test]
fn an_open_day_is_emitted_every_minute_with_the_events_before_it() {
    let events = vec![
        ev(10_000, "a"),
        ev(50_000, "b"),
        ev(MIN + 5_000, "a"), // after the first minute: not in its early result
        ev(3 * MIN + 1, "c"), // the watermark passes 2 min and 3 min: one result each? only 1 min has changes before 2 min
    ];
    // By hand: at 1 min, {a, b} (2 users, 2 events); at 2 min, a again
    // (2 users, 3 events); 3 min has no new events before it; the final
    // flush closes the day with every event: 3 users, 4 events.
    let want = vec![(0, 2, 2), (0, 2, 3), (0, 3, 4)];
    assert_eq!(run(vec![events.clone()]), want, "one batch");
    assert_eq!(
        run(events.into_iter().map(|e| vec![e]).collect()),
        want,
        "one event per batch"
    );
}
