//! The query API through the real server and plugins, against what the
//! test computes itself from `metrics.lp` of the same run.

use crate::sinks::{Line, parse_line};
use crate::support::{Server, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const HOUR: i64 = 3_600_000;
/// 2026-01-01T00:40:00Z: the stream crosses two hour boundaries.
const START: i64 = 1_767_228_000_000;

/// `n` events of `gen` traffic from two sites, one per second of event time from START.
fn traffic(n: usize) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args([
            "gen",
            "--rate",
            &n.to_string(),
            "--duration",
            "1s",
            "--event-rate",
            "1",
        ])
        .args([
            "--seed",
            "3",
            "--sites",
            "2",
            "--start-ms",
            &START.to_string(),
            "--output",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn post_lines(s: &Server, lines: &[String]) {
    for chunk in lines.chunks(500) {
        loop {
            let (st, r) = s.post_raw(
                "/v1/events",
                "application/x-ndjson",
                chunk.join("\n").as_bytes(),
                None,
            );
            match st {
                202 => break,
                429 => std::thread::sleep(std::time::Duration::from_millis(50)),
                _ => panic!("{st}: {r}"),
            }
        }
    }
}

fn get(s: &Server, path: &str) -> (u16, Value) {
    let (status, r) = match ureq::get(&s.url(path)).call() {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(c, r)) => (c, r),
        Err(e) => panic!("{path}: {e}"),
    };
    (
        status,
        serde_json::from_str(&r.into_string().unwrap()).unwrap(),
    )
}

fn ok(s: &Server, path: &str) -> Value {
    let (st, v) = get(s, path);
    assert_eq!(st, 200, "{path}: {v}");
    v
}

/// The final points of metrics.lp (the last line of a series and timestamp wins).
fn final_lines(lp: &str) -> Vec<Line> {
    let mut last: BTreeMap<(String, String, i64), Line> = BTreeMap::new();
    for l in lp.lines().filter(|l| !l.is_empty()) {
        let line = parse_line(l);
        let key = (line.0.clone(), format!("{:?}", line.1), line.3);
        last.insert(key, line);
    }
    last.into_values().collect()
}

/// Waits until the store has every point the engine wrote.
fn stored(s: &Server) {
    s.wait_idle();
    wait_until(20, "the store to hold every point", || {
        s.metric("nexuspipe_store_points_total") + s.metric("nexuspipe_store_series_refused_total")
            >= s.metric("nexuspipe_points_written_total")
    });
}

/// The reference answer of a windowed query: buckets of `w` over the final
/// points of `measurement` in `[start, end)` with `filter` tags, grouped by
/// `group`, one aggregate of `field`.
fn reference(
    lines: &[Line],
    measurement: &str,
    field: &str,
    filter: &[(&str, &str)],
    group: &[&str],
    (start, end, w): (i64, i64, i64),
    agg: &str,
) -> Reference {
    type Group = Vec<(String, String)>;
    let mut values: BTreeMap<Group, BTreeMap<i64, Vec<(i64, f64)>>> = BTreeMap::new();
    for (m, tags, fields, ts) in lines {
        if m != measurement || *ts < start || *ts >= end {
            continue;
        }
        if !filter
            .iter()
            .all(|(k, v)| tags.get(*k).map(String::as_str) == Some(v))
        {
            continue;
        }
        let Some(v) = fields.get(field).and_then(Value::as_f64) else {
            continue;
        };
        let key: Vec<(String, String)> = group
            .iter()
            .filter_map(|g| tags.get(*g).map(|v| (g.to_string(), v.clone())))
            .collect();
        let b = ts - ts.rem_euclid(w);
        values
            .entry(key)
            .or_default()
            .entry(b)
            .or_default()
            .push((*ts, v));
    }
    values
        .into_iter()
        .map(|(k, buckets)| {
            let out = buckets
                .into_iter()
                .map(|(b, vs)| {
                    let x = match agg {
                        "sum" => vs.iter().map(|v| v.1).sum(),
                        "count" => vs.len() as f64,
                        "min" => vs.iter().map(|v| v.1).fold(f64::INFINITY, f64::min),
                        "max" => vs.iter().map(|v| v.1).fold(f64::NEG_INFINITY, f64::max),
                        "avg" => vs.iter().map(|v| v.1).sum::<f64>() / vs.len() as f64,
                        "last" => vs.iter().max_by_key(|v| v.0).unwrap().1,
                        _ => unreachable!(),
                    };
                    (b, x)
                })
                .collect();
            (k, out)
        })
        .collect()
}

/// An answer in the reference's shape.
fn answer(v: &Value, field: &str) -> Reference {
    v["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let tags: Vec<(String, String)> = s["tags"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let ts = s["timestamps"].as_array().unwrap();
            let vals = s["fields"][field].as_array().unwrap();
            let points = ts
                .iter()
                .zip(vals)
                .filter_map(|(t, v)| Some((t.as_i64().unwrap(), v.as_f64()?)))
                .collect();
            (tags, points)
        })
        .collect()
}

fn close(a: &Reference, b: &Reference) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
            ka == kb
                && va.len() == vb.len()
                && va.iter().zip(vb).all(|((ta, xa), (tb, xb))| {
                    ta == tb && (xa - xb).abs() <= 1e-9 * xa.abs().max(1.0)
                })
        })
}

type Reference = BTreeMap<Vec<(String, String)>, BTreeMap<i64, f64>>;

/// Every windowed query the tests check: (what, path, field, reference).
fn windowed_cases(
    lines: &[Line],
    range: (i64, i64),
) -> Vec<(String, String, &'static str, Reference)> {
    let (start, end) = range;
    let mut cases = Vec::new();
    for agg in ["sum", "count", "min", "max", "avg", "last"] {
        cases.push((
            format!("revenue total per hour by currency, {agg}"),
            format!("/v1/metrics?metric=revenue&field=total&group_by=currency&window=1h&agg={agg}&start_time={start}&end_time={end}"),
            "total",
            reference(lines, "revenue", "total", &[], &["currency"], (start, end, HOUR), agg),
        ));
    }
    cases.push((
        "page views per 10 minutes of one site".into(),
        format!("/v1/metrics?metric=page_views&field=count&site_id=site-1&window=10m&agg=sum&start_time={start}&end_time={end}"),
        "count",
        reference(lines, "page_views", "count", &[("site_id", "site-1")], &[], (start, end, 600_000), "sum"),
    ));
    cases.push((
        "events per hour by type and site".into(),
        format!("/v1/metrics?metric=events&field=count&group_by=event_type,site_id&window=1h&agg=sum&start_time={start}&end_time={end}"),
        "count",
        reference(lines, "events", "count", &[], &["event_type", "site_id"], (start, end, HOUR), "sum"),
    ));
    cases
}

fn check_windowed(s: &Server, lines: &[Line], range: (i64, i64)) {
    for (what, path, field, want) in windowed_cases(lines, range) {
        assert!(!want.is_empty(), "{what}: the reference is empty");
        let got = answer(&ok(s, &path), field);
        assert!(close(&got, &want), "{what}:\n got {got:?}\nwant {want:?}");
    }
}

#[test]
fn queries_answer_what_the_sink_wrote_through_restarts() {
    let mut s = Server::start("[engine]\nidle_timeout = \"1h\"\nallowed_lateness = \"2m\"\n");
    let lines = traffic(4_000);
    post_lines(&s, &lines);
    // A late page view (within allowed lateness) re-emits a closed window.
    let late_ts = START + 3_900_000;
    let late = json!({"event_type": "page_view", "timestamp": late_ts, "user_id": "late", "properties": {"path": "/late", "site_id": "site-1"}});
    post_lines(
        &s,
        &[json!({"event_type": "tick", "timestamp": START + 3_960_000}).to_string()],
    );
    post_lines(&s, &[late.to_string()]);
    post_lines(
        &s,
        &[json!({"event_type": "tick", "timestamp": START + 2 * HOUR}).to_string()],
    );
    stored(&s);
    let lp = s.read("metrics.lp");
    assert!(lp.contains("path=/late"), "the late event was taken");
    let lines = final_lines(&lp);
    let range = (START + 30_000, START + 4_000_000); // cuts the first window
    // Raw points: exactly the final points of page_views in the range.
    let check_raw = |s: &Server| {
        let v = ok(
            s,
            &format!(
                "/v1/metrics?metric=page_views&start_time={}&end_time={}",
                range.0, range.1
            ),
        );
        let mut got: Vec<(String, i64, f64)> = Vec::new();
        for series in v["series"].as_array().unwrap() {
            let tags: Vec<String> = series["tags"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                .collect();
            for (t, n) in series["timestamps"]
                .as_array()
                .unwrap()
                .iter()
                .zip(series["fields"]["count"].as_array().unwrap())
            {
                got.push((tags.join(","), t.as_i64().unwrap(), n.as_f64().unwrap()));
            }
        }
        got.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mut want: Vec<(String, i64, f64)> = lines
            .iter()
            .filter(|(m, _, _, ts)| m == "page_views" && *ts >= range.0 && *ts < range.1)
            .map(|(_, tags, f, ts)| {
                let t: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                (t.join(","), *ts, f["count"].as_f64().unwrap())
            })
            .collect();
        want.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert!(!want.is_empty());
        assert_eq!(got, want, "raw points");
        // The re-emitted window holds the late event, once.
        assert!(
            got.iter()
                .any(|(t, _, n)| t.contains("path=/late") && *n == 1.0)
        );
    };
    check_raw(&s);
    check_windowed(&s, &lines, range);
    // A clean restart, then a kill -9: the store answers the same.
    s.restart();
    check_raw(&s);
    check_windowed(&s, &lines, range);
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    s.start_again();
    check_raw(&s);
    check_windowed(&s, &lines, range);
}

#[test]
fn retention_rolls_up_what_raw_answered_and_max_series_refuses() {
    let s = Server::start(
        "[engine]\nidle_timeout = \"1h\"\n[store]\nretention = \"30m\"\nmax_series = 40\n",
    );
    let lines = traffic(4_000);
    post_lines(&s, &lines);
    post_lines(
        &s,
        &[json!({"event_type": "tick", "timestamp": START + 70 * 60_000}).to_string()],
    );
    stored(&s);
    // The first full hour, answered from raw points...
    let range = (START + 20 * 60_000, START + 80 * 60_000); // 01:00 to 02:00
    let cases: Vec<(String, Value)> = ["sum", "count", "min", "max", "avg", "last"]
        .iter()
        .map(|agg| {
            let path = format!("/v1/metrics?metric=events&field=count&group_by=event_type&window=1h&agg={agg}&start_time={}&end_time={}", range.0, range.1);
            let v = ok(&s, &path);
            (path, v["series"].clone())
        })
        .collect();
    let raw = format!(
        "/v1/metrics?metric=events&start_time={}&end_time={}",
        range.0, range.1
    );
    assert!(!ok(&s, &raw)["series"].as_array().unwrap().is_empty());
    // ...then, once event time is far enough, from the rollups only.
    // Two ticks: the first one's window closes, and its point is the
    // newest the store holds (retention follows the points' event time).
    for ts in [START + 5 * HOUR, START + 5 * HOUR + 120_000] {
        post_lines(
            &s,
            &[json!({"event_type": "tick", "timestamp": ts}).to_string()],
        );
    }
    stored(&s);
    wait_until(20, "the raw points of that hour to be rolled up", || {
        ok(&s, &raw)["series"].as_array().unwrap().is_empty()
    });
    for (path, before) in cases {
        assert_eq!(ok(&s, &path)["series"], before, "{path}");
    }
    // max_series: 40 series, the rest refused, counted and logged.
    let catalog = ok(&s, "/v1/metrics");
    assert_eq!(catalog["series"], 40, "{catalog}");
    assert!(s.metric("nexuspipe_store_series_refused_total") > 0.0);
    assert!(s.log().contains("max_series"), "{}", s.log());
}

#[test]
fn stats_and_bad_parameters() {
    let s = Server::start("[engine]\nidle_timeout = \"1h\"\n");
    let lines = traffic(2_000);
    post_lines(&s, &lines);
    post_lines(
        &s,
        &[json!({"event_type": "tick", "timestamp": START + 2 * HOUR}).to_string()],
    );
    stored(&s);
    // Worked out from the events themselves: site-2 over the day.
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let site: Vec<&Value> = events
        .iter()
        .filter(|e| e["properties"]["site_id"] == "site-2")
        .collect();
    let mut by_type: BTreeMap<String, i64> = BTreeMap::new();
    let mut pages: BTreeMap<String, i64> = BTreeMap::new();
    let mut users = std::collections::BTreeSet::new();
    for e in &site {
        *by_type
            .entry(e["event_type"].as_str().unwrap().to_string())
            .or_default() += 1;
        if e["event_type"] == "page_view" {
            let url = e["metadata"]["url"].as_str().unwrap();
            let path = e["properties"]["path"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| {
                    let after = url.split_once("://").map_or(url, |x| x.1);
                    let p = after.find('/').map_or("/", |i| &after[i..]);
                    p.split(['?', '#']).next().unwrap().to_string()
                });
            *pages.entry(path).or_default() += 1;
        }
        users.insert(e["user_id"].as_str().unwrap().to_string());
    }
    let day = START - START.rem_euclid(86_400_000);
    let v = ok(
        &s,
        &format!(
            "/stats?site_id=site-2&start_time={day}&end_time={}",
            day + 86_400_000
        ),
    );
    assert_eq!(v["events"], json!(by_type), "{v}");
    assert_eq!(
        v["page_views"],
        by_type.get("page_view").copied().unwrap_or(0),
        "{v}"
    );
    assert_eq!(v["unique_users"], users.len(), "{v}");
    let mut top: Vec<(String, i64)> = pages.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(10);
    let want: Vec<Value> = top
        .into_iter()
        .map(|(p, n)| json!({"path": p, "views": n}))
        .collect();
    assert_eq!(v["top_pages"], json!(want), "{v}");
    // The default range is the current UTC day of event time.
    assert_eq!(
        ok(&s, "/stats?site_id=site-2")["page_views"],
        v["page_views"]
    );

    for (path, parameter, says) in [
        ("/v1/metrics?metric=nope", "metric", "no measurement `nope`"),
        (
            "/v1/metrics?metric=revenue&field=nope",
            "field",
            "no field `nope`",
        ),
        (
            "/v1/metrics?metric=revenue&planet=mars&window=1h&agg=sum",
            "planet",
            "no tag `planet`",
        ),
        (
            "/v1/metrics?metric=revenue&window=1h",
            "agg",
            "window needs agg",
        ),
        (
            "/v1/metrics?metric=revenue&window=1h&agg=median",
            "agg",
            "not an aggregate",
        ),
        (
            "/v1/metrics?metric=revenue&window=soon&agg=sum",
            "window",
            "not a duration",
        ),
        (
            "/v1/metrics?metric=revenue&group_by=currency",
            "group_by",
            "give window and agg",
        ),
        (
            "/v1/metrics?metric=revenue&start_time=yesterday",
            "start_time",
            "neither RFC 3339",
        ),
        (
            "/v1/metrics?metric=revenue&start_time=2000&end_time=1000",
            "start_time",
            "must be before",
        ),
        ("/v1/alerts?status=maybe", "status", "not one"),
        ("/stats", "site_id", "required"),
    ] {
        let (st, v) = get(&s, path);
        assert_eq!(st, 400, "{path}: {v}");
        assert_eq!(v["parameter"], parameter, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{path}: {v}");
    }
    let (_, v) = get(&s, "/v1/metrics?metric=nope");
    assert!(
        v["allowed"].as_array().unwrap().contains(&json!("revenue")),
        "{v}"
    );
    let (_, v) = get(&s, "/v1/metrics?metric=revenue&window=1h&agg=median");
    assert_eq!(
        v["allowed"],
        json!(["sum", "count", "min", "max", "avg", "last"])
    );
    // The alias of the stream-analytics API spec answers the same.
    let q = format!(
        "metric=revenue&group_by=currency&start_time={}&end_time={}&window=1h&agg=sum",
        START,
        START + 2 * HOUR
    );
    assert_eq!(
        ok(&s, &format!("/api/v1/metrics?{q}")),
        ok(&s, &format!("/v1/metrics?{q}"))
    );
}

#[test]
fn a_read_token_guards_the_read_side() {
    let s = Server::start("[http]\nread_token = \"r3ad\"\nadmin_token = \"adm1n\"\n");
    let call = |token: Option<&str>| {
        let mut req = ureq::get(&s.url("/v1/metrics"));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        match req.call() {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(c, _)) => c,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(call(None), 401);
    assert_eq!(call(Some("wrong")), 401);
    assert_eq!(call(Some("r3ad")), 200);
    assert_eq!(call(Some("adm1n")), 200, "the admin token reads too");
}
