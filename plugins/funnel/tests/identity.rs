//! A new config takes over a metric's or funnel's state only where its name
//! and definition are unchanged: state is never relabeled.

use nexuspipe_sdk::testing::AggregatorHarness;
use nexuspipe_sdk::{Event, MetricPoint};
use serde_json::{Value, json};

fn events_metric(measurement: &str, size: &str) -> Value {
    json!({"measurement": measurement, "window": {"type": "tumbling", "size": size},
           "group_by": [{"tag": "event_type", "from": "event_type"}],
           "aggregates": [{"fn": "count", "as": "n"}]})
}

fn config(metrics: &[Value]) -> String {
    json!({ "metrics": metrics }).to_string()
}

/// (measurement, tags, n) of each point, sorted.
fn counts(points: &[MetricPoint]) -> Vec<(String, String, i64, i64)> {
    let mut v: Vec<_> = points
        .iter()
        .map(|p| {
            let tags: Vec<String> = p.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (
                p.measurement.clone(),
                tags.join(","),
                p.timestamp,
                p.fields[0].1.as_i64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Two clicks and a view in the first minute (still open), a config swap,
/// then a click in the same minute and a flush.
fn swap(before: &str, after: &str) -> (nexuspipe_sdk::Restored, Vec<(String, String, i64, i64)>) {
    let mut h = AggregatorHarness::<funnel::Funnel>::new(before);
    let first = h.push(vec![
        Event::new("click", 1_000),
        Event::new("click", 2_000),
        Event::new("view", 3_000),
    ]);
    assert!(first.items.is_empty(), "the minute is still open");
    let report = h.restart(after);
    let out = h.run([vec![Event::new("click", 4_000)]]);
    (report, counts(&out.items))
}

fn names(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn the_issue_case_a_new_metric_never_gets_an_old_window() {
    // The config of the report: only `weekend_events`, grouped by is_weekend.
    let weekend = json!({"measurement": "weekend_events", "window": {"type": "tumbling", "size": "1m"},
        "group_by": [{"tag": "is_weekend", "from": "properties.is_weekend"}],
        "aggregates": [{"fn": "count", "as": "n"}]});
    let (report, points) = swap(
        &config(&[events_metric("events", "1m")]),
        &config(&[weekend]),
    );
    assert_eq!(names(&report.dropped), ["metric:events"]);
    assert_eq!(names(&report.added), ["metric:weekend_events"]);
    assert!(report.kept.is_empty() && report.reset.is_empty());
    // Only the click after the swap counts, without a tag (no is_weekend).
    assert_eq!(points, [("weekend_events".into(), String::new(), 0, 1)]);
}

#[test]
fn reordered_metrics_keep_their_own_state() {
    let a = events_metric("a", "1m");
    let b = events_metric("b", "1m");
    let (report, points) = swap(&config(&[a.clone(), b.clone()]), &config(&[b, a]));
    assert_eq!(names(&report.kept), ["metric:b", "metric:a"]);
    let want: Vec<(String, String, i64, i64)> = ["a", "b"]
        .iter()
        .flat_map(|m| {
            [
                (m.to_string(), "event_type=click".to_string(), 0, 3),
                (m.to_string(), "event_type=view".to_string(), 0, 1),
            ]
        })
        .collect();
    assert_eq!(points, want, "as if there had been no swap");
}

#[test]
fn a_renamed_metric_starts_empty_and_the_old_name_is_dropped() {
    let (report, points) = swap(
        &config(&[events_metric("events", "1m")]),
        &config(&[events_metric("actions", "1m")]),
    );
    assert_eq!(names(&report.dropped), ["metric:events"]);
    assert_eq!(names(&report.added), ["metric:actions"]);
    assert_eq!(
        points,
        [("actions".into(), "event_type=click".into(), 0, 1)]
    );
}

#[test]
fn a_changed_window_size_starts_empty() {
    let (report, points) = swap(
        &config(&[events_metric("events", "1m")]),
        &config(&[events_metric("events", "5m")]),
    );
    assert_eq!(names(&report.reset), ["metric:events"]);
    assert_eq!(points, [("events".into(), "event_type=click".into(), 0, 1)]);
}

#[test]
fn removed_and_added_metrics_beside_a_kept_one() {
    let kept = events_metric("kept", "1m");
    let (report, points) = swap(
        &config(&[kept.clone(), events_metric("gone", "1m")]),
        &config(&[events_metric("new", "1m"), kept]),
    );
    assert_eq!(names(&report.kept), ["metric:kept"]);
    assert_eq!(names(&report.dropped), ["metric:gone"]);
    assert_eq!(names(&report.added), ["metric:new"]);
    assert_eq!(
        points,
        [
            ("kept".into(), "event_type=click".into(), 0, 3),
            ("kept".into(), "event_type=view".into(), 0, 1),
            ("new".into(), "event_type=click".into(), 0, 1),
        ]
    );
}

#[test]
fn funnels_are_matched_by_name_and_steps() {
    let funnel = |name: &str, last: &str| {
        json!({"name": name, "within": "1h", "window": "1h",
               "steps": [{"name": "view", "filter": {"event_type": "view"}},
                         {"name": last, "filter": {"event_type": last}}]})
    };
    let cfg = |f: Value| json!({"funnels": [f]}).to_string();
    let run = |before: &str, after: &str| {
        let mut h = AggregatorHarness::<funnel::Funnel>::new(before);
        h.push(vec![Event::new("view", 1_000).with_user("u")]);
        let report = h.restart(after);
        let out = h.run([vec![Event::new("buy", 2_000).with_user("u")]]);
        let step2: Vec<i64> = out
            .items
            .iter()
            .filter(|p| p.tags.iter().any(|(k, v)| k == "step" && v == "2"))
            .map(|p| p.fields[0].1.as_i64().unwrap())
            .collect();
        (report, step2)
    };
    // Same name and steps: the view before the swap and the buy after convert.
    let (report, step2) = run(&cfg(funnel("f", "buy")), &cfg(funnel("f", "buy")));
    assert_eq!(names(&report.kept), ["funnel:f"]);
    assert_eq!(step2.last(), Some(&1));
    // Other steps: the old progress is not carried into the new definition.
    let (report, step2) = run(&cfg(funnel("f", "pay")), &cfg(funnel("f", "buy")));
    assert_eq!(names(&report.reset), ["funnel:f"]);
    assert!(step2.iter().all(|&n| n == 0), "{step2:?}");
}
