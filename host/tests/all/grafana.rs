//! The Grafana dashboards in `examples/grafana/`: every query of the
//! Prometheus one runs against NexusPipe, every query of the InfluxQL one
//! against the real InfluxDB 1.x after the sink wrote the same stream, and
//! each returns the series it should (worked out from `metrics.lp`).

use crate::sinks::{Db, influx_config, parse_line};
use crate::support::{Server, wait_until, workspace_root};
use serde_json::Value;
use std::collections::BTreeSet;

const START: i64 = 1_767_225_600_000;

/// What a panel shows: its title, its measurement, the tag it draws a line
/// per value of (none: one line), and a tag filter.
type Panel = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<(&'static str, &'static str)>,
);

const PANELS: [Panel; 6] = [
    (
        "Events per minute by type",
        "events",
        Some("event_type"),
        None,
    ),
    ("Page views by path", "page_views", Some("path"), None),
    ("Unique users per minute", "unique_users", None, None),
    (
        "Revenue per minute by currency",
        "revenue",
        Some("currency"),
        None,
    ),
    (
        "Top products (views, 5-minute window)",
        "top_products",
        Some("rank"),
        None,
    ),
    (
        "Checkout funnel (users per step)",
        "funnel",
        Some("step_name"),
        Some(("funnel", "checkout")),
    ),
];

fn dashboard(name: &str) -> Vec<(String, Value)> {
    let path = workspace_root().join("examples/grafana").join(name);
    let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["title"].as_str().unwrap().to_string(),
                p["targets"][0].clone(),
            )
        })
        .collect()
}

/// The values the panel's tag takes in the final points (one empty value
/// for a single-line panel).
fn expected(
    lp: &str,
    measurement: &str,
    tag: Option<&str>,
    filter: Option<(&str, &str)>,
) -> BTreeSet<String> {
    lp.lines()
        .map(parse_line)
        .filter(|(m, tags, ..)| {
            m == measurement
                && filter.is_none_or(|(k, v)| tags.get(k).map(String::as_str) == Some(v))
        })
        .map(|(_, tags, ..)| {
            tag.map_or(String::new(), |t| tags.get(t).cloned().unwrap_or_default())
        })
        .collect()
}

#[test]
fn every_dashboard_query_returns_its_series() {
    let db = Db::influxdb();
    let s = Server::start(&influx_config(db.port, "v1", ""));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args([
            "gen",
            "--rate",
            "3000",
            "--duration",
            "1s",
            "--event-rate",
            "2",
        ])
        .args(["--seed", "4", "--start-ms", &START.to_string(), "--output"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for chunk in lines.chunks(500) {
        let (st, r) = s.post_raw(
            "/v1/events",
            "application/x-ndjson",
            chunk.join("\n").as_bytes(),
            None,
        );
        assert_eq!(st, 202, "{r}");
    }
    let end = START + 2 * 3_600_000;
    let tick = format!("{{\"event_type\":\"tick\",\"timestamp\":{end}}}");
    s.post_raw("/v1/events", "application/json", tick.as_bytes(), None);
    s.wait_idle();
    wait_until(30, "every point in InfluxDB and in the store", || {
        let written = s.metric("nexuspipe_points_written_total");
        s.metric("nexuspipe_sink_delivered_total{sink=\"influxdb\",kind=\"influxdb\"}") >= written
            && s.metric("nexuspipe_store_points_total") >= written
    });
    let lp = s.read("metrics.lp");
    let panel = |title: &str| {
        PANELS
            .iter()
            .find(|p| p.0 == title)
            .unwrap_or_else(|| panic!("no expectation for panel `{title}`: add it to PANELS"))
    };
    let prom = dashboard("nexuspipe-prometheus.json");
    let influx = dashboard("nexuspipe-influxql.json");
    assert_eq!(prom.len(), PANELS.len());
    assert_eq!(influx.len(), PANELS.len());
    for (title, target) in prom {
        let (_, m, tag, filter) = panel(&title);
        let want = expected(&lp, m, *tag, *filter);
        assert!(!want.is_empty(), "{title}: the stream has no {m}");
        let expr = target["expr"].as_str().unwrap();
        let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let url = s.url(&format!(
            "/prometheus/api/v1/query_range?query={q}&start={}&end={}&step=60",
            START / 1000,
            end / 1000
        ));
        let v: Value =
            serde_json::from_str(&ureq::get(&url).call().unwrap().into_string().unwrap()).unwrap();
        assert_eq!(v["status"], "success", "{title}: {v}");
        let result = v["data"]["result"].as_array().unwrap();
        assert!(
            result
                .iter()
                .all(|r| !r["values"].as_array().unwrap().is_empty())
        );
        let got: BTreeSet<String> = result
            .iter()
            .map(|r| {
                tag.map_or(String::new(), |t| {
                    r["metric"][t].as_str().unwrap_or("").to_string()
                })
            })
            .collect();
        assert_eq!(got, want, "{title}: {expr}");
    }
    for (title, target) in influx {
        let (_, m, tag, filter) = panel(&title);
        let want = expected(&lp, m, *tag, *filter);
        let q = target["query"]
            .as_str()
            .unwrap()
            .replace(
                "$timeFilter",
                &format!("time >= {START}ms AND time < {end}ms"),
            )
            .replace("$__interval", "1m");
        let v = db.query(&q);
        let series = v["results"][0]["series"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: {q}: {v}"));
        let got: BTreeSet<String> = series
            .iter()
            .map(|r| {
                tag.map_or(String::new(), |t| {
                    r["tags"][t].as_str().unwrap_or("").to_string()
                })
            })
            .collect();
        assert_eq!(got, want, "{title}: {q}");
        assert!(
            series
                .iter()
                .all(|r| !r["values"].as_array().unwrap().is_empty())
        );
    }
}
