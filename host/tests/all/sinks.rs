//! Sinks against real servers on loopback, started by the project's scripts:
//! InfluxDB 1.x (`scripts/influxdb.sh`), VictoriaMetrics speaking the
//! InfluxDB v2 write API (`scripts/victoria-metrics.sh`), and webhook
//! receivers (one in this file, one the example in `examples/webhook-receiver`).

use crate::support::{
    Server, free_port, guest, parse_ndjson, terminate, wait_until, workspace_root,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A database server run by one of the project's scripts.
pub(crate) struct Db {
    child: Child,
    pub(crate) port: u16,
    rpc_port: u16,
    dir: tempfile::TempDir,
    kind: &'static str,
}

impl Db {
    pub(crate) fn influxdb() -> Db {
        Self::start_on(
            "influxdb",
            free_port(),
            free_port(),
            tempfile::tempdir().unwrap(),
        )
    }

    pub(crate) fn victoria_metrics() -> Db {
        Self::start_on(
            "victoria-metrics",
            free_port(),
            0,
            tempfile::tempdir().unwrap(),
        )
    }

    /// Makes every sample VictoriaMetrics took searchable now.
    pub(crate) fn force_flush(&self) {
        assert_eq!(self.kind, "victoria-metrics");
        ureq::get(&self.url("/internal/force_flush"))
            .call()
            .expect("force_flush");
    }

    fn start_on(kind: &'static str, port: u16, rpc_port: u16, dir: tempfile::TempDir) -> Db {
        let child = Self::spawn(kind, dir.path(), port, rpc_port);
        let db = Db {
            child,
            port,
            rpc_port,
            dir,
            kind,
        };
        db.wait_up();
        if kind == "influxdb" {
            db.query("CREATE DATABASE np");
        }
        db
    }

    fn spawn(kind: &str, dir: &Path, port: u16, rpc_port: u16) -> Child {
        let script = workspace_root().join(format!("scripts/{kind}.sh"));
        let mut c = Command::new(script);
        c.arg(dir.join("db")).arg(port.to_string());
        if kind == "influxdb" {
            c.arg(rpc_port.to_string());
        }
        c.stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("db.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {kind}: {e} (run .ci/install-servers.sh)"))
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn wait_up(&self) {
        let path = if self.kind == "influxdb" {
            "/ping"
        } else {
            "/health"
        };
        wait_until(60, &format!("{} to answer", self.kind), || {
            ureq::get(&self.url(path)).call().is_ok()
        });
    }

    /// Stops the server (SIGTERM) and waits for it to exit.
    pub(crate) fn stop(&mut self) {
        terminate(&mut self.child);
    }

    /// Starts the server again on the same port and data.
    pub(crate) fn start_again(&mut self) {
        self.child = Self::spawn(self.kind, self.dir.path(), self.port, self.rpc_port);
        self.wait_up();
    }

    /// An InfluxQL query on database `np`; the JSON answer.
    pub(crate) fn query(&self, q: &str) -> Value {
        let text = ureq::post(&self.url("/query"))
            .query("db", "np")
            .query("epoch", "ms")
            .send_form(&[("q", q)])
            .unwrap_or_else(|e| panic!("InfluxQL {q}: {e}"))
            .into_string()
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Every point in InfluxDB database `np`: (series, timestamp) -> fields.
    pub(crate) fn influx_points(&self) -> BTreeMap<(String, i64), BTreeMap<String, Value>> {
        let mut out = BTreeMap::new();
        let m = self.query("SHOW MEASUREMENTS");
        let names: Vec<String> = m["results"][0]["series"][0]["values"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|r| r[0].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        for name in names {
            let r = self.query(&format!("SELECT * FROM \"{name}\" GROUP BY *"));
            // A measurement can be listed a moment before its points are
            // readable: no series yet reads as no points (callers wait or
            // compare against what they sent).
            let none = Vec::new();
            for series in r["results"][0]["series"].as_array().unwrap_or(&none) {
                let tags: BTreeMap<String, String> = series["tags"]
                    .as_object()
                    .map(|t| {
                        t.iter()
                            .filter(|(_, v)| v.as_str().is_some_and(|s| !s.is_empty()))
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let cols: Vec<&str> = series["columns"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap())
                    .collect();
                for row in series["values"].as_array().unwrap() {
                    let ts = row[0].as_i64().unwrap();
                    let fields = cols[1..]
                        .iter()
                        .zip(&row.as_array().unwrap()[1..])
                        .filter(|(_, v)| !v.is_null())
                        .map(|(c, v)| (c.to_string(), normalize(v)))
                        .collect();
                    out.insert((series_key(&name, &tags), ts), fields);
                }
            }
        }
        out
    }

    /// Every sample in VictoriaMetrics: (metric{labels}, timestamp) -> values
    /// (a list, so a duplicate write would show).
    fn vm_samples(&self) -> BTreeMap<(String, i64), Vec<f64>> {
        let text = ureq::get(&self.url("/api/v1/export"))
            .query("match[]", "{__name__=~\".+\"}")
            .query("start", "0")
            .query("end", "4102444800")
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        let mut out: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
        for s in parse_ndjson(&text) {
            let mut labels: BTreeMap<String, String> = s["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let name = labels.remove("__name__").unwrap();
            let key = series_key(&name, &labels);
            let values = s["values"].as_array().unwrap();
            for (ts, v) in s["timestamps"].as_array().unwrap().iter().zip(values) {
                out.entry((key.clone(), ts.as_i64().unwrap()))
                    .or_default()
                    .push(v.as_f64().unwrap());
            }
        }
        out
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn series_key(measurement: &str, tags: &BTreeMap<String, String>) -> String {
    let mut k = measurement.to_string();
    for (t, v) in tags {
        k.push_str(&format!(",{t}={v}"));
    }
    k
}

/// Numbers compared as f64 (InfluxQL's JSON writes 3.0 as 3).
fn normalize(v: &Value) -> Value {
    match v.as_f64() {
        Some(f) => json!(f),
        None => v.clone(),
    }
}

/// Splits at `sep` outside quotes, honouring backslash escapes.
fn split_lp(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let (mut quoted, mut escaped) = (false, false);
    for c in s.chars() {
        if escaped {
            parts.last_mut().unwrap().push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
            parts.last_mut().unwrap().push(c);
        } else if c == '"' {
            quoted = !quoted;
            parts.last_mut().unwrap().push(c);
        } else if c == sep && !quoted {
            parts.push(String::new());
        } else {
            parts.last_mut().unwrap().push(c);
        }
    }
    parts
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        out.push(if c == '\\' {
            it.next().unwrap_or('\\')
        } else {
            c
        });
    }
    out
}

/// One line of line protocol: (measurement, tags, fields, timestamp).
pub(crate) type Line = (
    String,
    BTreeMap<String, String>,
    BTreeMap<String, Value>,
    i64,
);

pub(crate) fn parse_line(line: &str) -> Line {
    let parts = split_lp(line, ' ');
    assert_eq!(parts.len(), 3, "line protocol: {line}");
    let mut series = split_lp(&parts[0], ',').into_iter();
    let measurement = unescape(&series.next().unwrap());
    let tags = series
        .map(|t| {
            let kv = split_lp(&t, '=');
            (unescape(&kv[0]), unescape(&kv[1]))
        })
        .collect();
    let fields = split_lp(&parts[1], ',')
        .into_iter()
        .map(|f| {
            let (k, v) = f.split_once('=').unwrap();
            let v = if let Some(i) = v.strip_suffix('i') {
                json!(i.parse::<i64>().unwrap() as f64)
            } else if v == "true" || v == "false" {
                json!(v == "true")
            } else if v.starts_with('"') {
                json!(unescape(&v[1..v.len() - 1]))
            } else {
                json!(v.parse::<f64>().unwrap())
            };
            (unescape(k), v)
        })
        .collect();
    (measurement, tags, fields, parts[2].parse().unwrap())
}

/// The final points of `metrics.lp`, keyed like [`Db::influx_points`]: the
/// last write of a (series, timestamp) wins, as in InfluxDB.
pub(crate) fn expected_points(lp: &str) -> BTreeMap<(String, i64), BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for line in lp.lines().filter(|l| !l.is_empty()) {
        let (m, tags, fields, ts) = parse_line(line);
        out.insert((series_key(&m, &tags), ts), fields);
    }
    out
}

pub(crate) const START_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// A reproducible stream from `nexuspipe gen` (5 minutes of event time),
/// sorted by time so no event is late, then one event 10 minutes later that
/// closes every window of the stream.
pub(crate) fn known_stream(seed: u64) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let status = Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args(["gen", "--rate", "20", "--duration", "5m", "--seed"])
        .arg(seed.to_string())
        .args(["--start-ms", &START_MS.to_string(), "--output"])
        .arg(&file)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mut events = parse_ndjson(&std::fs::read_to_string(&file).unwrap());
    events.sort_by_key(|e| e["timestamp"].as_i64().unwrap());
    let last = events.last().unwrap()["timestamp"].as_i64().unwrap();
    events.push(json!({"event_type": "sentinel", "timestamp": last + 600_000}));
    events
}

/// Waits until the server has processed `n` events (so its outputs are final).
pub(crate) fn wait_processed(s: &Server, n: usize) {
    wait_until(60, "the events to be processed", || {
        s.metric("nexuspipe_events_processed_total") == n as f64
    });
}

pub(crate) fn post_all(s: &Server, events: &[Value], chunk: usize, pause: Duration) {
    for c in events.chunks(chunk) {
        loop {
            let (status, resp) = s.post(&Value::Array(c.to_vec()));
            match status {
                202 => break,
                429 => std::thread::sleep(Duration::from_millis(100)),
                _ => panic!("{status}: {resp}"),
            }
        }
        std::thread::sleep(pause);
    }
}

/// Page views per (1-minute window, path) counted from the stream itself.
fn page_views(events: &[Value]) -> BTreeMap<(i64, String), f64> {
    let mut out = BTreeMap::new();
    for e in events.iter().filter(|e| e["event_type"] == "page_view") {
        let ts = e["timestamp"].as_i64().unwrap();
        let url = e["metadata"]["url"].as_str().unwrap();
        let path = e["properties"]["path"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                let after = url.split_once("://").map_or(url, |x| x.1);
                let p = after.find('/').map_or("/", |i| &after[i..]);
                p.split(['?', '#']).next().unwrap().to_string()
            });
        *out.entry((ts - ts.rem_euclid(60_000), path)).or_insert(0.0) += 1.0;
    }
    out
}

pub(crate) fn influx_config(port: u16, api: &str, extra: &str) -> String {
    let target = if api == "v1" {
        "database = \"np\"".to_string()
    } else {
        "org = \"acme\"\nbucket = \"np\"\ntoken = \"t0ken\"".to_string()
    };
    format!(
        "[engine]\nidle_timeout = \"1h\"\n[influxdb]\nurl = \"http://127.0.0.1:{port}\"\napi = \"{api}\"\n{target}\nmetrics_file = true\nflush_interval = \"200ms\"\nretry_initial = \"100ms\"\nretry_max = \"1s\"\n{extra}"
    )
}

fn readyz(s: &Server) -> (u16, Value) {
    let (status, r) = match ureq::get(&s.url("/readyz")).call() {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(c, r)) => (c, r),
        Err(e) => panic!("{e}"),
    };
    (
        status,
        serde_json::from_str(&r.into_string().unwrap()).unwrap(),
    )
}

#[test]
fn points_reach_influxdb_v1_and_victoria_metrics_v2_exactly() {
    let influx = Db::influxdb();
    let vm = Db::victoria_metrics();
    let events = known_stream(7);
    let s1 = Server::start(&influx_config(influx.port, "v1", ""));
    let s2 = Server::start(&influx_config(vm.port, "v2", ""));
    for s in [&s1, &s2] {
        post_all(s, &events, 500, Duration::ZERO);
        wait_processed(s, events.len());
    }

    // Both servers computed the same points, and they are what the stream says.
    let expected = expected_points(&s1.read("metrics.lp"));
    wait_until(30, "the second server's points", || {
        expected_points(&s2.read("metrics.lp")) == expected
    });
    let views = page_views(&events[..events.len() - 1]);
    let got_views: BTreeMap<(i64, String), f64> = expected
        .iter()
        .filter(|((series, _), _)| series.starts_with("page_views,"))
        .map(|((series, ts), f)| {
            let path = series.split_once(",path=").unwrap().1.to_string();
            ((*ts, path), f["count"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(got_views, views, "page views per minute and path");
    assert!(
        expected.len() > 50,
        "a real stream: {} points",
        expected.len()
    );

    // InfluxDB 1.x, read back with InfluxQL.
    wait_until(30, "every point in InfluxDB", || {
        influx.influx_points().len() >= expected.len()
    });
    assert_eq!(influx.influx_points(), expected);

    // VictoriaMetrics, read back with its export API: one sample per field
    // (`measurement_field`), each exactly once. It keeps 12 significant
    // digits of a float and has no string values (it stores 0 for them).
    let mut want: BTreeMap<(String, i64), Option<f64>> = BTreeMap::new();
    for ((series, ts), fields) in &expected {
        let (m, tags) = series.split_once(',').unwrap_or((series, ""));
        for (f, v) in fields {
            let key = if tags.is_empty() {
                format!("{m}_{f}")
            } else {
                format!("{m}_{f},{tags}")
            };
            want.insert((key, *ts), v.as_f64());
        }
    }
    wait_until(30, "every sample in VictoriaMetrics", || {
        vm.vm_samples().len() >= want.len()
    });
    let got = vm.vm_samples();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, values) in &got {
        // A metric with early results (daily_users) is written again as its
        // day goes on; InfluxDB overwrites, VictoriaMetrics keeps each sample.
        // Its final value is among them. Every other point is written once.
        if k.0.starts_with("daily_users_") {
            if let Some(x) = want[k] {
                assert!(values.contains(&x), "{k:?}: {values:?} lacks {x}");
            }
            continue;
        }
        assert_eq!(values.len(), 1, "{k:?} written once: {values:?}");
        if let Some(x) = want[k] {
            assert!(
                (values[0] - x).abs() <= x.abs() * 1e-11,
                "{k:?}: {values:?} != {x}"
            );
        }
    }

    for s in [&s1, &s2] {
        let (status, r) = readyz(s);
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["sinks"][0]["state"], "ok", "{r}");
        assert_eq!(r["sinks"][0]["backlog"], 0, "{r}");
        assert_eq!(
            s.metric("nexuspipe_sink_dead_lettered_total{sink=\"influxdb\",kind=\"influxdb\"}"),
            0.0
        );
    }
}

#[test]
fn an_influxdb_outage_of_30_seconds_loses_and_duplicates_nothing() {
    let mut influx = Db::influxdb();
    let events = known_stream(11);
    // A small memory buffer, so the outage spills points to the data dir.
    let s = Server::start(&influx_config(
        influx.port,
        "v1",
        "buffer_points = 20\nspill_max = \"64MiB\"\nbatch_size = 50\n",
    ));
    let stream = std::thread::scope(|scope| {
        let poster = scope.spawn(|| post_all(&s, &events, 50, Duration::from_millis(400)));
        wait_until(30, "the first points in InfluxDB", || {
            !influx.influx_points().is_empty()
        });
        influx.stop();
        let down = Instant::now();
        let mut saw_retrying = false;
        let mut max_spilled = 0.0f64;
        while down.elapsed() < Duration::from_secs(30) {
            let (_, r) = readyz(&s);
            saw_retrying |= r["sinks"][0]["state"] == "retrying";
            max_spilled = max_spilled.max(r["sinks"][0]["spilled_bytes"].as_f64().unwrap());
            std::thread::sleep(Duration::from_millis(250));
        }
        influx.start_again();
        poster.join().unwrap();
        (saw_retrying, max_spilled)
    });
    assert!(
        stream.0,
        "/readyz showed the sink retrying during the outage"
    );
    assert!(
        stream.1 > 0.0,
        "points spilled to the data dir during the outage"
    );

    let expected = expected_points(&s.read("metrics.lp"));
    wait_until(60, "the backlog to drain", || {
        s.metric("nexuspipe_sink_backlog{sink=\"influxdb\",kind=\"influxdb\"}") == 0.0
            && s.metric("nexuspipe_events_processed_total") == events.len() as f64
    });
    assert!(s.metric("nexuspipe_sink_retries_total{sink=\"influxdb\",kind=\"influxdb\"}") > 0.0);
    let expected_after = expected_points(&s.read("metrics.lp"));
    assert!(expected_after.len() >= expected.len());
    // Every point, once (a point is unique per series and timestamp; the
    // count check makes sure no stray series appeared either).
    assert_eq!(influx.influx_points(), expected_after);
    let spool = s.data("spool/influxdb");
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "spool emptied"
    );
}

#[test]
fn a_full_backlog_holds_ingest_back_and_nothing_is_lost() {
    // InfluxDB is not running yet: the sink retries, its 40-point buffer
    // fills, the engine waits, the queue fills, ingest answers 429.
    let port = free_port();
    let rpc = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = influx_config(port, "v1", "buffer_points = 40\n")
        .replace("[engine]\n", "[engine]\nqueue_capacity = 200\n");
    let mut s = Server::start(&config);
    let events = known_stream(3);
    let mut accepted = 0;
    let mut refused = false;
    for c in events.chunks(100) {
        let (status, resp) = s.post(&Value::Array(c.to_vec()));
        match status {
            202 => accepted += c.len(),
            429 => {
                refused = true;
                assert!(resp["retry_after_header"].is_string(), "{resp}");
                break;
            }
            _ => panic!("{status}: {resp}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(refused, "ingest answered 429 once the sink was full");
    let (status, r) = readyz(&s);
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["sinks"][0]["state"], "full", "{r}");
    assert!(
        r["sinks"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("onnect"),
        "{r}"
    );

    // A shutdown while InfluxDB is still down: the engine drains its queue
    // (the points that no longer fit go to the spool) and exits cleanly.
    let status = s.stop();
    assert!(status.success(), "clean exit: {}", s.log());
    let spooled = std::fs::read_dir(s.data("spool/influxdb")).unwrap().count();
    assert!(spooled > 0, "undelivered points spooled");

    // InfluxDB comes up and NexusPipe restarts: everything accepted arrives.
    let influx = Db::start_on("influxdb", port, rpc, dir);
    s.start_again();
    // An event an hour later closes every window: the `events` counts of all
    // windows then add up to every event accepted before the shutdown.
    let (status, resp) =
        s.post(&json!({"event_type": "sentinel", "timestamp": START_MS + 3_600_000}));
    assert_eq!(status, 202, "{resp}");
    // The last checkpoint waited for InfluxDB in vain, so the start
    // replayed the log after the one before: its points come again, the
    // same values (InfluxDB overwrites).
    let replayed = s.metric("nexuspipe_wal_replayed_events_total") as usize;
    wait_processed(&s, replayed + 1);
    wait_until(60, "the spool to drain", || {
        s.metric("nexuspipe_sink_backlog{sink=\"influxdb\",kind=\"influxdb\"}") == 0.0
    });
    let counted: f64 = influx
        .influx_points()
        .iter()
        .filter(|((series, _), _)| series.starts_with("events,"))
        .map(|(_, f)| f["count"].as_f64().unwrap())
        .sum();
    assert_eq!(counted, accepted as f64, "every accepted event is counted");
    let expected = expected_points(&s.read("metrics.lp"));
    assert!(!expected.is_empty());
    wait_until(10, "every point in InfluxDB", || {
        influx.influx_points() == expected
    });
    assert_eq!(
        std::fs::read_dir(s.data("spool/influxdb")).unwrap().count(),
        0
    );
    let (status, r) = readyz(&s);
    assert_eq!(status, 200, "{r}");
}

#[test]
fn points_influxdb_rejects_are_dead_lettered_and_the_rest_arrives() {
    let influx = Db::influxdb();
    // `count` of page_views is already a string in this shard: InfluxDB
    // refuses every page_views point the pipeline writes (400, type conflict).
    let w = ureq::post(&influx.url("/write"))
        .query("db", "np")
        .query("precision", "ms")
        .send_string(&format!("page_views,path=/seed count=\"text\" {START_MS}"));
    assert!(w.is_ok(), "{w:?}");
    let s = Server::start(&influx_config(influx.port, "v1", "batch_size = 64\n"));
    let events = known_stream(5);
    post_all(&s, &events, 500, Duration::ZERO);
    wait_processed(&s, events.len());

    let lp = s.read("metrics.lp");
    let rejected: Vec<&str> = lp
        .lines()
        .filter(|l| l.starts_with("page_views,"))
        .collect();
    assert!(rejected.len() > 5);
    // Each rejected batch is bisected until the bad lines stand alone.
    wait_until(90, "the rejected points in the dead-letter file", || {
        s.metric("nexuspipe_sink_dead_lettered_total{sink=\"influxdb\",kind=\"influxdb\"}")
            == rejected.len() as f64
    });
    let dead = parse_ndjson(&s.read("dead-letter.jsonl"));
    let lines: Vec<&str> = dead.iter().map(|d| d["line"].as_str().unwrap()).collect();
    assert_eq!(lines, rejected);
    for d in &dead {
        assert_eq!(d["kind"], "influxdb_rejected");
        assert_eq!(d["status"], 400);
        assert!(
            d["error"].as_str().unwrap().contains("field type conflict"),
            "{d}"
        );
    }
    let mut expected = expected_points(&lp);
    expected.retain(|(series, _), _| !series.starts_with("page_views,"));
    let mut got = influx.influx_points();
    got.retain(|(series, _), _| !series.starts_with("page_views,"));
    wait_until(30, "the other points", || {
        got = influx.influx_points();
        got.retain(|(series, _), _| !series.starts_with("page_views,"));
        got == expected
    });
}

// ---- webhooks ----

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Request {
    headers: HashMap<String, String>,
    body: String,
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// 500 for the first `n` tries of each webhook-id, then 200.
    FailFirst(usize),
    /// Reads the request and never answers.
    Hang,
}

/// A webhook receiver on a free port, recording every request.
struct Receiver {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start(behaviour: Behaviour) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let r = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let r = r.clone();
                std::thread::spawn(move || serve(conn, behaviour, &r));
            }
        });
        Receiver { port, requests }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, behaviour: Behaviour, log: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let len: usize = headers
            .get("content-length")
            .map_or(0, |l| l.parse().unwrap());
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let id = headers.get("webhook-id").cloned().unwrap_or_default();
        let tries = {
            let mut log = log.lock().unwrap();
            log.push(Request {
                headers,
                body: String::from_utf8(body).unwrap(),
            });
            log.iter()
                .filter(|r| r.headers.get("webhook-id") == Some(&id))
                .count()
        };
        let status = match behaviour {
            Behaviour::Hang => {
                std::thread::sleep(Duration::from_secs(120));
                return;
            }
            Behaviour::FailFirst(n) if tries <= n => "500 Internal Server Error",
            Behaviour::FailFirst(_) => "200 OK",
        };
        let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn verify(r: &Request, key: &[u8]) -> bool {
    use base64::Engine as _;
    use hmac::Mac;
    let id = &r.headers["webhook-id"];
    let ts = &r.headers["webhook-timestamp"];
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.{}", r.body).as_bytes());
    let want = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    r.headers["webhook-signature"].split(' ').any(|s| s == want)
}

/// The example receiver, verifying signatures with `secret`; its stdout lines.
struct ExampleReceiver {
    child: Child,
    port: u16,
    out: Arc<Mutex<Vec<Value>>>,
}

impl ExampleReceiver {
    fn start(secret: &str) -> ExampleReceiver {
        let port = free_port();
        let script: PathBuf = workspace_root().join("examples/webhook-receiver/receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string()])
            .env("WEBHOOK_SECRET", secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                o.lock().unwrap().push(serde_json::from_str(&line).unwrap());
            }
        });
        wait_until(20, "the example receiver", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        ExampleReceiver { child, port, out }
    }

    fn lines(&self) -> Vec<Value> {
        self.out.lock().unwrap().clone()
    }
}

impl Drop for ExampleReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rules() -> String {
    json!({"rules": [
        {
            "id": "login_burst", "type": "threshold", "severity": "critical",
            "summary": "{count} failed logins for {key}", "key": "user_id",
            "filter": {"event_type": "login_failed"}, "window": "1m", "above": 2
        },
        {
            "id": "error_seen", "type": "threshold", "severity": "warning",
            "summary": "{count} errors", "key": "event_type",
            "filter": {"event_type": "error"}, "window": "1m", "above": 0
        }
    ]})
    .to_string()
}

#[test]
fn webhooks_are_signed_retried_in_order_and_independent() {
    let flaky = Receiver::start(Behaviour::FailFirst(3));
    let dead = Receiver::start(Behaviour::Hang);
    let slack = Receiver::start(Behaviour::FailFirst(0));
    let example = ExampleReceiver::start("a plain-text secret");
    let config = format!(
        r#"[engine]
idle_timeout = "1h"
[[plugins]]
name = "alerts"
path = {alerts:?}
config = {rules:?}

[[webhooks]]
name = "flaky"
url = "{flaky}"
secret = "{SECRET}"
retry_initial = "20ms"
retry_max = "100ms"
max_attempts = 5

[[webhooks]]
name = "dead"
url = "{dead}"
timeout = "1s"
max_attempts = 2
retry_initial = "10ms"
retry_max = "10ms"

[[webhooks]]
name = "example"
url = "http://127.0.0.1:{example_port}/"
secret = "a plain-text secret"

[[webhooks]]
name = "chat"
url = "{slack}"
format = "slack"
rules = ["error_seen"]
headers = {{ Authorization = "Bearer chat-token" }}
"#,
        alerts = crate::support::guest("alerts").display().to_string(),
        rules = rules(),
        flaky = flaky.url(),
        dead = dead.url(),
        example_port = example.port,
        slack = slack.url(),
    );
    let s = Server::start(&config);
    let t0 = 1_767_225_600_000i64;
    let mut events = Vec::new();
    for u in 0..5 {
        for i in 0..3 {
            events.push(json!({"event_type": "login_failed", "user_id": format!("user-{u}"), "timestamp": t0 + u * 1000 + i}));
        }
    }
    events.push(json!({"event_type": "error", "timestamp": t0 + 30_000}));
    // Closes the first minute.
    events.push(json!({"event_type": "page_view", "timestamp": t0 + 120_000}));
    let (status, resp) = s.post(&Value::Array(events));
    assert_eq!(status, 202, "{resp}");

    // Six alerts fire (five users, one error); all resolve as the later
    // event slides their windows past.
    let n = 12;
    wait_until(20, "the alerts to fire and resolve", || {
        parse_ndjson(&s.read("alerts.jsonl")).len() >= n
    });
    let alerts = parse_ndjson(&s.read("alerts.jsonl"));
    assert_eq!(alerts.len(), n, "{alerts:?}");
    // The example receiver (signature verified) and the flaky one (after
    // three 500s each) get every alert while the dead one still hangs on
    // its first tries: a dead receiver delays no one.
    wait_until(20, "the example receiver and the flaky one", || {
        example.lines().len() >= n && flaky.requests().len() >= 4 * n
    });
    assert!(
        dead.requests().len() < 2 * n,
        "the dead receiver is still being tried: {}",
        dead.requests().len()
    );
    let fingerprints: Vec<&Value> = alerts.iter().map(|a| &a["fingerprint"]).collect();

    let got = example.lines();
    assert_eq!(got.len(), n, "{got:?}");
    assert!(got.iter().all(|l| l["verified"] == true), "{got:?}");
    let in_order: Vec<&Value> = got.iter().map(|l| &l["fingerprint"]).collect();
    assert_eq!(in_order, fingerprints, "in the order they fired");

    let key = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        SECRET.trim_start_matches("whsec_"),
    )
    .unwrap();
    let reqs = flaky.requests();
    assert_eq!(reqs.len(), 4 * n);
    let mut ids = Vec::new();
    for try_ in reqs.chunks(4) {
        // In order: an alert's four tries, then the next alert's.
        let id = &try_[0].headers["webhook-id"];
        assert!(
            try_.iter().all(|r| &r.headers["webhook-id"] == id),
            "same id on every try"
        );
        assert!(try_.iter().all(|r| r.body == try_[0].body));
        assert!(try_.iter().all(|r| verify(r, &key)), "signature verifies");
        assert!(!verify(&try_[0], b"another key"));
        let body: Value = serde_json::from_str(&try_[0].body).unwrap();
        assert_eq!(body["version"], "4");
        assert_eq!(body["receiver"], "flaky");
        assert_eq!(body["alerts"][0]["fingerprint"], *fingerprints[ids.len()]);
        assert_eq!(
            body["alerts"][0]["labels"]["alertname"],
            alerts[ids.len()]["rule_id"]
        );
        ids.push(id.clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), n, "one id per alert");

    // Slack format, only the rule it asked for, with its extra header.
    wait_until(10, "the chat receiver", || slack.requests().len() >= 2);
    let chat = slack.requests();
    assert_eq!(chat.len(), 2, "{chat:?}");
    for (r, status) in chat
        .iter()
        .zip(["[FIRING] error_seen", "[RESOLVED] error_seen"])
    {
        assert_eq!(r.headers["authorization"], "Bearer chat-token");
        assert!(
            !r.headers.contains_key("webhook-signature"),
            "no secret, no signature"
        );
        let text: Value = serde_json::from_str(&r.body).unwrap();
        assert!(text["text"].as_str().unwrap().contains(status), "{text}");
    }

    // The dead receiver: two tries per alert, then the dead-letter file.
    wait_until(60, "the dead receiver's alerts to be dead-lettered", || {
        parse_ndjson(&s.read("dead-letter.jsonl")).len() >= n
    });
    let dl = parse_ndjson(&s.read("dead-letter.jsonl"));
    assert_eq!(dl.len(), n);
    for (d, a) in dl.iter().zip(&alerts) {
        assert_eq!(d["kind"], "webhook_undelivered");
        assert_eq!(d["sink"], "dead");
        assert_eq!(d["attempts"], 2);
        assert_eq!(d["alert"], *a);
    }
    assert_eq!(dead.requests().len(), 2 * n);
    // The example receiver refuses a forged request.
    let forged = ureq::post(&format!("http://127.0.0.1:{}/", example.port))
        .set("webhook-id", "msg_x")
        .set("webhook-timestamp", &unix_now().to_string())
        .set("webhook-signature", "v1,AAAA")
        .send_string("{}");
    assert!(
        matches!(forged, Err(ureq::Error::Status(401, _))),
        "{forged:?}"
    );
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A small filesystem of its own for a data dir (a tmpfs with a size limit;
/// the tests run as root), unmounted on drop.
pub(crate) struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    pub(crate) fn mount(path: std::path::PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path }
    }

    /// Fills what is free with one file; returns its path.
    pub(crate) fn fill(&self) -> std::path::PathBuf {
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        // Whatever the last partial block left.
        while f.write_all(&[0]).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A full disk under the data dir is back-pressure, not loss: the webhook
/// still gets its alerts while `metrics.lp` and `alerts.jsonl` cannot be
/// written, `/readyz` names the file and the cause, ingest answers 429 once
/// the queue is full, and when space returns everything held is written,
/// each record once.
#[test]
fn a_full_disk_holds_the_pipeline_back_and_loses_nothing() {
    // The outputs' files alone (a full disk under the write-ahead log
    // refuses events instead: see `durability`).
    let hook = Receiver::start(Behaviour::FailFirst(0));
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path().join("data"), "2m");
    let config = format!(
        "[engine]\nidle_timeout = \"1h\"\nout_of_orderness = \"0s\"\nqueue_capacity = 20\n\
         durability = \"memory\"\n\
         [[plugins]]\nname = \"counter\"\npath = {:?}\nconfig = '{{\"window_ms\": 1000}}'\n\
         [[plugins]]\nname = \"alerts\"\npath = {:?}\nconfig = '{}'\n\
         [[webhooks]]\nurl = \"{}\"\nretry_initial = \"50ms\"\n",
        guest("counter").display().to_string(),
        guest("alerts").display().to_string(),
        rules(),
        hook.url(),
    );
    let s = Server::start_in(dir, &config);
    let login = |ts: i64| json!({"event_type": "login_failed", "timestamp": ts, "user_id": "u1"});
    // A first window, written while there is room.
    post_all(
        &s,
        &[
            login(100),
            json!({"event_type": "click", "timestamp": 1_500}),
        ],
        10,
        Duration::ZERO,
    );
    wait_until(10, "the first window", || {
        s.read("metrics.lp").contains("count=1i 0")
    });
    let filler = disk.fill();
    // Three failed logins (the rule fires above 2) and a click that closes the next windows.
    post_all(&s, &[login(2_100), login(2_200)], 10, Duration::ZERO);
    post_all(
        &s,
        &[json!({"event_type": "click", "timestamp": 4_000})],
        10,
        Duration::ZERO,
    );
    wait_until(
        20,
        "the alert at the webhook while the disk is full",
        || {
            hook.requests()
                .iter()
                .any(|r| r.body.contains("login_burst"))
        },
    );
    wait_until(20, "/readyz to name the file it cannot write", || {
        let (st, r) = readyz(&s);
        st == 503
            && r["storage"].as_array().is_some_and(|f| {
                f.iter()
                    .any(|f| f["error"].as_str().unwrap_or("").contains("No space left"))
            })
    });
    let (_, r) = readyz(&s);
    let files: Vec<String> = r["storage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("metrics.lp") || f.ends_with("alerts.jsonl")),
        "{r}"
    );
    assert!(s.log().contains("No space left"), "logged: {}", s.log());
    // The engine waits: the queue fills and ingest pushes back.
    let mut more = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let e = json!({"event_type": "click", "timestamp": 5_000 + i * 100});
        let (st, _) = s.post(&json!([e.clone()]));
        match st {
            202 => more.push(e),
            429 => refused += 1,
            other => panic!("{other}"),
        }
    }
    assert!(refused > 0, "a full queue answers 429");
    // Some records may still fit in the last page of a file (tmpfs gives
    // whole pages), but no file holds part of one.
    for file in ["metrics.lp", "alerts.jsonl"] {
        let text = s.read(file);
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{file} ends in half a record: {text:?}"
        );
    }
    // Space returns: everything held is written.
    std::fs::remove_file(filler).unwrap();
    let accepted = s.metric("nexuspipe_events_accepted_total");
    wait_until(30, "everything accepted processed", || {
        s.metric("nexuspipe_events_processed_total") == accepted
    });
    wait_until(20, "/readyz ready again", || readyz(&s).0 == 200);
    post_all(
        &s,
        &[json!({"event_type": "flush", "timestamp": 60_000})],
        10,
        Duration::ZERO,
    );
    // Counts per window, worked out from what was accepted.
    let mut want: BTreeMap<(String, i64), i64> = BTreeMap::new();
    let accepted_events = [
        login(100),
        json!({"event_type": "click", "timestamp": 1_500}),
        login(2_100),
        login(2_200),
        json!({"event_type": "click", "timestamp": 4_000}),
    ]
    .into_iter()
    .chain(more);
    for e in accepted_events {
        let ts = e["timestamp"].as_i64().unwrap();
        *want
            .entry((
                e["event_type"].as_str().unwrap().to_string(),
                ts - ts % 1000,
            ))
            .or_default() += 1;
    }
    let got = || -> BTreeMap<(String, i64), i64> {
        crate::support::final_points(&s.read("metrics.lp"))
            .into_iter()
            .map(|((series, ts), fields)| {
                let t = series
                    .strip_prefix("counts,event_type=")
                    .unwrap()
                    .to_string();
                let n = fields
                    .strip_prefix("count=")
                    .unwrap()
                    .trim_end_matches('i')
                    .parse()
                    .unwrap();
                ((t, ts), n)
            })
            .collect()
    };
    wait_until(20, "every window before the flush", || got() == want);
    let lines = s.read("metrics.lp");
    let mut seen = std::collections::HashSet::new();
    for l in lines.lines() {
        assert!(seen.insert(l), "written once: {l}\n{lines}");
    }
    let alerts = s.read("alerts.jsonl");
    assert_eq!(
        alerts.matches("\"rule_id\":\"login_burst\"").count(),
        1,
        "{alerts}"
    );
}

/// The InfluxDB sink's spool on a full disk: points that no longer fit in
/// memory wait for room (`/readyz` names the spool and the cause), a
/// spill that failed halfway is not left half written, and once there is
/// space and InfluxDB is back every point arrives, each once.
#[test]
fn a_full_disk_under_the_spool_holds_points_until_there_is_room() {
    let (port, rpc) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path().join("data"), "2m");
    // InfluxDB is down: 40 points fit in memory, the rest spill (up to 1
    // MiB). Only points (no alerts file to fill first): a count per event
    // type and second.
    let config = influx_config(
        port,
        "v1",
        &format!(
            "buffer_points = 40\nspill_max = \"1MiB\"\n\
             [[plugins]]\nname = \"counter\"\npath = {:?}\nconfig = '{{\"window_ms\": 1000}}'\n",
            guest("counter").display().to_string()
        ),
    )
    .replace("metrics_file = true", "metrics_file = false")
    // No write-ahead log: on the full disk it would refuse the events.
    .replace(
        "[engine]\n",
        "[engine]\nqueue_capacity = 200\ndurability = \"memory\"\n",
    );
    let s = Server::start_in(dir, &config);
    let filler = disk.fill();
    let events = known_stream(3);
    let mut accepted = 0;
    for c in events.chunks(100) {
        let (status, resp) = s.post(&Value::Array(c.to_vec()));
        match status {
            202 => accepted += c.len(),
            429 => break,
            _ => panic!("{status}: {resp}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let spool = |r: &Value| -> Option<String> {
        r["storage"].as_array()?.iter().find_map(|f| {
            let path = f["path"].as_str()?;
            path.ends_with("spool/influxdb")
                .then(|| f["error"].as_str().unwrap_or("").to_string())
        })
    };
    wait_until(30, "/readyz to name the spool it cannot write", || {
        let (st, r) = readyz(&s);
        st == 503 && spool(&r).is_some_and(|e| e.contains("No space left"))
    });
    assert!(s.log().contains("No space left"), "logged: {}", s.log());
    // Nothing of a failed spill stays on disk.
    for entry in std::fs::read_dir(s.data("spool/influxdb")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
    }
    // Space returns: the spool takes the points and the fault clears.
    std::fs::remove_file(filler).unwrap();
    wait_until(30, "the spool to be written", || {
        spool(&readyz(&s).1).is_none()
    });
    // InfluxDB comes up; an event an hour later closes every window.
    let influx = Db::start_on("influxdb", port, rpc, tempfile::tempdir().unwrap());
    for c in events[accepted..].chunks(100) {
        post_all(&s, c, 100, Duration::ZERO);
        accepted += c.len();
    }
    let (status, resp) =
        s.post(&json!({"event_type": "sentinel", "timestamp": START_MS + 3_600_000}));
    assert_eq!(status, 202, "{resp}");
    wait_processed(&s, accepted + 1);
    wait_until(60, "the backlog to drain", || {
        s.metric("nexuspipe_sink_backlog{sink=\"influxdb\",kind=\"influxdb\"}") == 0.0
    });
    let counted: f64 = influx
        .influx_points()
        .iter()
        .filter(|((series, _), _)| series.starts_with("counts,"))
        .map(|(_, f)| f["count"].as_f64().unwrap())
        .sum();
    assert_eq!(counted, accepted as f64, "every accepted event is counted");
    // InfluxDB keeps one point per series and time, so a point spooled
    // twice would not show there: each point was delivered once.
    assert_eq!(
        s.metric("nexuspipe_sink_delivered_total{sink=\"influxdb\",kind=\"influxdb\"}"),
        s.metric("nexuspipe_points_written_total"),
    );
    wait_until(10, "/readyz ready again", || readyz(&s).0 == 200);
}
