//! The Prometheus-compatible API against a reference, not against itself:
//! the same points go to VictoriaMetrics (through the InfluxDB v2 sink) and
//! into the store, and both answer the same PromQL.

use crate::sinks::{Db, influx_config};
use crate::support::{Server, wait_until};
use serde_json::Value;
use std::collections::BTreeMap;

/// 2026-01-01T00:00:00Z.
const START: i64 = 1_767_225_600_000;

fn gen_lines() -> Vec<String> {
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
        .args(["--seed", "9", "--start-ms", &START.to_string(), "--output"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn get(url: &str) -> Value {
    let text = match ureq::get(url).call() {
        Ok(r) => r.into_string().unwrap(),
        Err(ureq::Error::Status(_, r)) => r.into_string().unwrap(),
        Err(e) => panic!("{url}: {e}"),
    };
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"))
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A result as a comparable map: labels -> [(seconds, value)].
fn shape(v: &Value) -> BTreeMap<String, Vec<(f64, f64)>> {
    assert_eq!(v["status"], "success", "{v}");
    let mut out = BTreeMap::new();
    for r in v["data"]["result"].as_array().unwrap() {
        let labels = r["metric"].to_string();
        let points: Vec<(f64, f64)> = match r.get("values") {
            Some(vs) => vs.as_array().unwrap().iter().map(pair).collect(),
            None => vec![pair(&r["value"])],
        };
        out.insert(labels, points);
    }
    out
}

fn pair(p: &Value) -> (f64, f64) {
    (
        p[0].as_f64().unwrap(),
        p[1].as_str().unwrap().parse().unwrap(),
    )
}

fn same(a: &BTreeMap<String, Vec<(f64, f64)>>, b: &BTreeMap<String, Vec<(f64, f64)>>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((la, pa), (lb, pb))| {
            la == lb
                && pa.len() == pb.len()
                && pa
                    .iter()
                    .zip(pb)
                    .all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() <= 1e-9 * x.1.abs().max(1.0))
        })
}

#[test]
fn promql_answers_as_victoria_metrics_does() {
    let vm = Db::victoria_metrics();
    let s = Server::start(&influx_config(vm.port, "v2", ""));
    let lines = gen_lines();
    for chunk in lines.chunks(500) {
        let (st, r) = s.post_raw(
            "/v1/events",
            "application/x-ndjson",
            chunk.join("\n").as_bytes(),
            None,
        );
        assert_eq!(st, 202, "{r}");
    }
    let last = START + 1_500_000;
    let tick = format!(
        "{{\"event_type\":\"tick\",\"timestamp\":{}}}",
        last + 180_000
    );
    s.post_raw("/v1/events", "application/json", tick.as_bytes(), None);
    s.wait_idle();
    wait_until(
        30,
        "every point in VictoriaMetrics and in the store",
        || {
            let written = s.metric("nexuspipe_points_written_total");
            s.metric("nexuspipe_sink_delivered_total{sink=\"influxdb\",kind=\"influxdb\"}")
                >= written
                && s.metric("nexuspipe_store_points_total") >= written
        },
    );
    let ours = |path: &str| get(&s.url(&format!("/prometheus{path}")));
    let theirs = |path: &str| get(&vm.url(path));
    // VictoriaMetrics makes new samples searchable within a second or two,
    // or at once after a forced flush.
    vm.force_flush();
    let probe = format!(
        "/api/v1/query_range?query=events_count&start={}&end={}&step=60",
        START / 1000,
        last / 1000
    );
    wait_until(30, "VictoriaMetrics to answer every series", || {
        shape(&theirs(&probe)).len() == shape(&ours(&probe)).len()
    });
    let (a, b) = (START / 1000, last / 1000);
    let ranges = [
        // Starts ten minutes before the first point; steps between samples.
        (a - 600 + 30, b + 600, 60),
        (a + 17, b, 120),
        (a + 30, b, 30),
    ];
    let exprs = [
        "events_count",
        "sum by (event_type) (events_count)",
        "sum(events_count)",
        "events_count{event_type=~\"page_.*|click\"}",
        "events_count{event_type!=\"page_view\"}",
        "events_count{event_type!~\"login.*\"}",
        "count(events_count)",
        "avg by (currency) (revenue_total)",
        "max(revenue_total)",
        "min without (currency) (revenue_avg)",
        // Sparse: a path is not viewed every minute, so its series has gaps.
        "page_views_count{path=~\"/category/.*\"}",
        "sum by (path) (page_views_count)",
        "unique_users_users",
        // A string field: its samples are 0, as VictoriaMetrics stores them.
        "top_products_product_id",
    ];
    let mut compared = 0;
    for e in exprs {
        for (start, end, step) in ranges {
            let path = format!(
                "/api/v1/query_range?query={}&start={start}&end={end}&step={step}",
                enc(e)
            );
            let (want, got) = (shape(&theirs(&path)), shape(&ours(&path)));
            assert!(!want.is_empty(), "{e}: VictoriaMetrics has no data");
            assert!(
                same(&got, &want),
                "{e} {start}..{end} step {step}\n ours {got:?}\n vm   {want:?}"
            );
            compared += 1;
        }
        for t in [a + 90, a + 610, b - 30, b + 200] {
            let path = format!("/api/v1/query?query={}&time={t}", enc(e));
            let (want, got) = (shape(&theirs(&path)), shape(&ours(&path)));
            assert!(
                same(&got, &want),
                "{e} at {t}\n ours {got:?}\n vm   {want:?}"
            );
        }
    }
    assert_eq!(compared, exprs.len() * ranges.len());
    // Label APIs: the same names and values.
    let strip = |v: Value| -> Vec<String> {
        let mut l: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        l.sort();
        l
    };
    let vm_names: Vec<String> = strip(theirs("/api/v1/label/__name__/values"));
    let our_names: Vec<String> = strip(ours("/api/v1/label/__name__/values"));
    assert_eq!(our_names, vm_names);
    assert_eq!(
        strip(ours("/api/v1/label/event_type/values")),
        strip(theirs("/api/v1/label/event_type/values"))
    );
    assert_eq!(
        strip(ours("/api/v1/labels")),
        strip(theirs("/api/v1/labels"))
    );
    let series = |v: Value| -> Vec<String> {
        let mut l: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.to_string())
            .collect();
        l.sort();
        l
    };
    let m = enc("revenue_total{currency=~\"E.*\"}");
    assert_eq!(
        series(ours(&format!("/api/v1/series?match[]={m}"))),
        series(theirs(&format!(
            "/api/v1/series?match[]={m}&start={a}&end={}",
            b + 600
        )))
    );
    // A form POST, as Grafana sends it.
    let form = ureq::post(&s.url("/prometheus/api/v1/query_range"))
        .send_form(&[
            ("query", "sum(events_count)"),
            ("start", &a.to_string()),
            ("end", &b.to_string()),
            ("step", "60"),
        ])
        .unwrap()
        .into_string()
        .unwrap();
    let path = format!(
        "/api/v1/query_range?query={}&start={a}&end={b}&step=60",
        enc("sum(events_count)")
    );
    assert!(same(
        &shape(&serde_json::from_str(&form).unwrap()),
        &shape(&theirs(&path))
    ));
    // Outside the subset: Prometheus's error shape, naming what.
    for (q, says) in [
        ("rate(events_count[5m])", "functions are not supported"),
        ("events_count + 1", "binary expressions"),
        ("topk(3, events_count)", "`topk` is not supported"),
        ("events_count offset 5m", "`offset`"),
        ("events_count{", "cannot parse"),
    ] {
        let v = ours(&format!("/api/v1/query?query={}&time={b}", enc(q)));
        assert_eq!(v["status"], "error", "{q}: {v}");
        assert_eq!(v["errorType"], "bad_data", "{q}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{q}: {v}");
    }
    let info = ours("/api/v1/status/buildinfo");
    assert_eq!(info["status"], "success");
}
