//! The event archive (`[archive]`): every event the pipeline took, once, as
//! Parquet files by event-time hour, read back with nothing but the path by
//! pyarrow and DuckDB (`make readers` puts them in target/venv-readers).

use crate::durability::{alert_set, kill_9};
use crate::sinks::{
    Db, SmallDisk, expected_points, influx_config, known_stream, post_all, wait_processed,
};
use crate::support::{Server, wait_until, workspace_root};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// What host/tests/archive_read.py makes of the archive.
fn read_archive(dir: &Path) -> Value {
    read_archive_at(dir.as_os_str(), None)
}

/// As [`read_archive`], for a folder or an `s3://` URL (with the S3
/// endpoint it is at).
pub(crate) fn read_archive_at(target: &std::ffi::OsStr, s3_endpoint: Option<&str>) -> Value {
    let py = workspace_root().join("target/venv-readers/bin/python");
    assert!(
        py.exists(),
        "the archive's readers are missing: run `make readers`"
    );
    let mut reader = Command::new(py);
    reader
        .arg(workspace_root().join("host/tests/archive_read.py"))
        .arg(target);
    if let Some(e) = s3_endpoint {
        reader.env("S3_ENDPOINT", e);
    }
    let out = reader.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The event ids [`read_archive_at`] found, as a set.
pub(crate) fn archived_ids(got: &Value) -> BTreeSet<&str> {
    got["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

/// `date=YYYY-MM-DD/hour=HH` of an event time, worked out here.
fn partition(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).unwrap();
    format!(
        "date={:04}-{:02}-{:02}/hour={:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour()
    )
}

fn files_named(dir: &Path, suffix: &str) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                n += 1;
            }
        }
    }
    n
}

/// Posts a known stream through a server with `archive` (an `[archive]`
/// table), the log and checkpoints every 100 ms, with a `kill -9` while
/// InfluxDB is down: checkpoints are taken (and the archive's parts closed)
/// but none completes, since the sink has not settled. Returns the stopped
/// server and the events.
fn crash_while_a_sink_holds_checkpoints(seed: u64, archive: &str) -> (Server, Vec<Value>) {
    let events = known_stream(seed);
    let mut influx = Db::influxdb();
    let config = influx_config(influx.port, "v1", archive).replacen(
        "[engine]\n",
        "[engine]\ncheckpoint_interval = \"100ms\"\n",
        1,
    );
    let mut s = Server::start(&config);
    let first = events.len() / 2;
    post_all(&s, &events[..first], 500, Duration::ZERO);
    s.wait_idle();
    let committed = || s.metric("nexuspipe_checkpoints_total");
    let before = committed();
    wait_until(10, "a checkpoint with the sink up", || committed() > before);
    influx.stop();
    let retries =
        |s: &Server| s.metric("nexuspipe_sink_retries_total{sink=\"influxdb\",kind=\"influxdb\"}");
    let (retried, mut i) = (retries(&s), first);
    // Until a window's points meet the outage (the sink now holds them).
    while retries(&s) == retried && i < events.len() {
        post_all(&s, &events[i..i + 100], 100, Duration::ZERO);
        i += 100;
        s.wait_idle();
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(retries(&s) > retried, "the InfluxDB sink retried");
    kill_9(&mut s);
    influx.start_again();
    s.start_again();
    assert!(
        s.metric("nexuspipe_wal_replayed_events_total") > 0.0,
        "the crash left events after the last complete checkpoint"
    );
    post_all(&s, &events[i..], 500, Duration::ZERO);
    wait_until(60, "every accepted event processed", || {
        s.metric("nexuspipe_events_processed_total")
            >= s.metric("nexuspipe_events_accepted_total")
                + s.metric("nexuspipe_wal_replayed_events_total")
    });
    assert!(s.stop().success());
    (s, events)
}

/// With the write-ahead log and checkpoints every 100 ms, a `kill -9`
/// while InfluxDB is down: checkpoints are taken (and the archive's parts
/// closed) but none completes, since the sink has not settled. After the
/// restart, the archive holds every posted event exactly once (the parts
/// past the restored checkpoint go, the replayed log writes them again), in
/// the partitions of their hours, with their fields and typed properties,
/// and pyarrow and DuckDB agree.
#[test]
fn every_event_is_archived_once_through_a_kill_9() {
    let (s, events) =
        crash_while_a_sink_holds_checkpoints(41, "[archive]\nflush_interval = \"1h\"\n");

    let dir = s.data("archive");
    assert_eq!(files_named(&dir, ".tmp"), 0, "a half-written part is left");
    let got = read_archive(&dir);
    assert_eq!(got["rows"], events.len(), "rows: {}", got["rows"]);
    assert_eq!(got["duckdb_rows"], events.len());
    let ids: Vec<&str> = got["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "an event archived twice"
    );
    let mut want_types = BTreeMap::new();
    let mut want_partitions = BTreeSet::new();
    for e in &events {
        *want_types
            .entry(e["event_type"].as_str().unwrap().to_string())
            .or_insert(0u64) += 1;
        want_partitions.insert(partition(e["timestamp"].as_i64().unwrap()));
    }
    let by_type: BTreeMap<String, u64> = serde_json::from_value(got["by_type"].clone()).unwrap();
    assert_eq!(by_type, want_types);
    let partitions: BTreeSet<String> = serde_json::from_value(got["partitions"].clone()).unwrap();
    assert_eq!(partitions, want_partitions);
    // Every posted event's fields, and its properties with their types.
    let archived = &got["events"];
    for e in events.iter().filter(|e| e.get("event_id").is_some()) {
        let a = &archived[e["event_id"].as_str().unwrap()];
        assert_eq!(a["event_type"], e["event_type"], "{e}");
        assert_eq!(a["timestamp"], e["timestamp"], "{e}");
        assert_eq!(
            a["user_id"],
            e.get("user_id").cloned().unwrap_or(Value::Null),
            "{e}"
        );
        for (k, v) in e["properties"].as_object().into_iter().flatten() {
            assert_eq!(&a["properties"][k], v, "property {k} of {e}");
        }
        // After the enrichers: the user agent's device is there.
        if e["metadata"]["user_agent"].is_string() {
            assert!(
                a["properties"]["ua.device"].is_string(),
                "not enriched: {a}"
            );
        }
    }
    let purchase = events
        .iter()
        .filter(|e| e["event_type"] == "purchase")
        .min_by_key(|e| e["event_id"].as_str().unwrap().to_string())
        .unwrap();
    assert_eq!(
        got["duckdb_purchase"],
        serde_json::json!([
            purchase["event_id"],
            purchase["timestamp"],
            purchase["properties"]["amount"].as_f64()
        ])
    );
}

/// `stage = "raw"`: the events as received, without what the enrichers add.
#[test]
fn the_raw_stage_archives_events_as_received() {
    let s = Server::start("[archive]\nstage = \"raw\"\n");
    let ua =
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148";
    let events: Vec<Value> = (0..3)
        .map(|i| {
            serde_json::json!({
                "event_id": format!("raw-{i}"), "event_type": "page_view",
                "timestamp": 1_767_225_600_000i64 + i * 1000,
                "properties": {"path": "/p", "n": i, "ok": true},
                "metadata": {"user_agent": ua, "url": "https://shop.example/p?utm_source=x"}
            })
        })
        .collect();
    assert_eq!(s.post(&Value::Array(events.clone())).0, 202);
    let mut s = s;
    s.wait_idle();
    assert!(s.stop().success());
    let got = read_archive(&s.data("archive"));
    assert_eq!(got["rows"], 3);
    assert_eq!(
        got["partitions"],
        serde_json::json!(["date=2026-01-01/hour=00"])
    );
    for e in &events {
        let a = &got["events"][e["event_id"].as_str().unwrap()];
        assert_eq!(a["properties"], e["properties"], "{a}");
    }
}

/// A live run with the archive, then a replay of its archive into another
/// data dir: the same points and alerts.
#[test]
fn a_replay_of_the_archive_gives_the_live_points_and_alerts() {
    let events = known_stream(43);
    let mut live = Server::start("[engine]\nidle_timeout = \"1h\"\n[archive]\n");
    post_all(&live, &events, 500, Duration::ZERO);
    live.wait_idle();
    assert!(live.stop().success());
    let want_points = expected_points(&live.read("metrics.lp"));
    let want_alerts = alert_set(&live.read("alerts.jsonl"));
    assert!(!want_points.is_empty() && !want_alerts.is_empty());

    // The live config's archive (the very folder replayed): the replay's
    // own goes in its data dir instead.
    let live_parts = files_named(&live.data("archive"), ".parquet");
    let out = tempfile::tempdir().unwrap();
    let cfg = out.path().join("nexuspipe.toml");
    std::fs::write(
        &cfg,
        format!(
            "[engine]\nidle_timeout = \"1h\"\n[archive]\npath = {:?}\n",
            live.data("archive").display().to_string()
        ),
    )
    .unwrap();
    let data = out.path().join("data");
    let summary = crate::replay::summary(&[
        "replay".as_ref(),
        "--from".as_ref(),
        live.data("archive").as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    assert_eq!(summary["events"], events.len(), "{summary}");
    let read = |f: &str| std::fs::read_to_string(out.path().join("data").join(f)).unwrap();
    assert_eq!(expected_points(&read("metrics.lp")), want_points);
    assert_eq!(alert_set(&read("alerts.jsonl")), want_alerts);
    assert_eq!(files_named(&live.data("archive"), ".parquet"), live_parts);
    assert_eq!(
        read_archive(&out.path().join("data/archive"))["rows"],
        events.len()
    );
}

/// moto's S3 server on a free port, stopped when dropped.
pub(crate) struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Moto {
    pub(crate) fn start() -> Moto {
        let bin = workspace_root().join("target/venv-readers/bin/moto_server");
        assert!(bin.exists(), "moto is missing: run `make readers`");
        let port = crate::support::free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        wait_until(30, "moto's S3 server", || ureq::get(&url).call().is_ok());
        Moto { child, port }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A new bucket, made as any S3 client makes one, and the `[archive]`
    /// table that writes under `events/` in it.
    pub(crate) fn archive_in(&self, bucket: &str) -> String {
        let endpoint = self.endpoint();
        ureq::put(&format!("{endpoint}/{bucket}")).call().unwrap();
        format!(
            "[archive]\nurl = \"s3://{bucket}/events\"\n\
             [archive.options]\naws_endpoint = \"{endpoint}\"\naws_access_key_id = \"test\"\n\
             aws_secret_access_key = \"test\"\naws_region = \"us-east-1\"\naws_allow_http = \"true\"\n"
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `url = "s3://bucket/prefix"` against a real S3 API (moto, on loopback):
/// through the same crash (the parts put after the restored checkpoint are
/// deleted from the bucket), every posted event is in the bucket once,
/// under the prefix and the hour partitions, and pyarrow reads it there.
#[test]
fn the_archive_on_s3_holds_every_event_once() {
    let moto = Moto::start();
    let endpoint = moto.endpoint();
    let archive = moto.archive_in("np-archive");
    let (s, events) = crash_while_a_sink_holds_checkpoints(47, &archive);
    assert_eq!(files_named(&s.data("archive-staging"), ".tmp"), 0);

    let got = read_archive_at("s3://np-archive/events".as_ref(), Some(&endpoint));
    assert_eq!(got["rows"], events.len(), "rows: {}", got["rows"]);
    let ids = archived_ids(&got);
    assert_eq!(ids.len(), events.len(), "an event archived twice");
    let want: BTreeSet<String> = events
        .iter()
        .map(|e| partition(e["timestamp"].as_i64().unwrap()))
        .collect();
    let partitions: BTreeSet<String> = serde_json::from_value(got["partitions"].clone()).unwrap();
    assert_eq!(partitions, want);
}

/// A full disk under the archive holds the pipeline back, and drops
/// nothing: the writer waits with its part, the engine stops taking from its
/// queue, ingest answers `429` once the queue is full, and `/readyz` names
/// the archive. Once space returns, the refused events are sent again, and
/// every accepted event is archived once.
#[test]
fn a_full_disk_under_the_archive_holds_the_pipeline_back() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path().join("archive-disk"), "1m");
    let archive = dir.path().join("archive-disk/archive");
    let config = format!(
        "{HELD}[archive]\npath = {:?}\n",
        archive.display().to_string()
    );
    let s = Server::start_in(dir, &config);
    let filler = std::cell::RefCell::new(None);
    let sent = held_back_then_resumed(
        &s,
        || *filler.borrow_mut() = Some(disk.fill()),
        "archive-disk/archive",
        || std::fs::remove_file(filler.take().unwrap()).unwrap(),
    );
    wait_until(30, "every accepted event in the archive", || {
        read_archive(&archive)["rows"] == sent
    });
    assert_archived_once(&read_archive(&archive), sent);
}

/// A bucket out of reach (a proxy in front of moto, cut) holds the pipeline
/// back as a full disk does: the finished part waits in staging, `/readyz`
/// names the bucket, and once it is reachable every accepted event is put
/// there once.
#[test]
fn an_unreachable_bucket_holds_the_pipeline_back() {
    let moto = Moto::start();
    let proxy = crate::support::Proxy::start(moto.port);
    let archive = moto.archive_in("np-outage").replace(
        &moto.endpoint(),
        &format!("http://127.0.0.1:{}", proxy.port),
    );
    let s = Server::start(&format!("{HELD}{archive}"));
    let sent = held_back_then_resumed(&s, || proxy.cut(), "s3://np-outage/events", || proxy.mend());
    let read = || read_archive_at("s3://np-outage/events".as_ref(), Some(&moto.endpoint()));
    wait_until(30, "every accepted event in the bucket", || {
        read()["rows"] == sent
    });
    assert_archived_once(&read(), sent);
}

/// A small queue, and parts closed at checkpoints every 200 ms.
const HELD: &str = "[engine]\nqueue_capacity = 2000\ncheckpoint_interval = \"200ms\"\n";

/// Clicks `c-<from>` to `c-<from + n - 1>`, 10 ms apart.
fn clicks(from: usize, n: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| {
                serde_json::json!({"event_id": format!("c-{i}"), "event_type": "click",
                    "timestamp": 1_767_225_600_000i64 + i as i64 * 10, "user_id": format!("u{}", i % 50)})
            })
            .collect(),
    )
}

/// Posts clicks, breaks the archive's storage (`fail`), posts until ingest
/// refuses (`429`) and `/readyz` names `fault`, mends it (`mend`), sends
/// the refused batch again and a few more; returns how many were accepted,
/// all processed.
fn held_back_then_resumed(
    s: &Server,
    fail: impl FnOnce(),
    fault: &str,
    mend: impl FnOnce(),
) -> usize {
    assert_eq!(s.post(&clicks(0, 100)).0, 202);
    wait_processed(s, 100);
    fail();
    // The engine goes on until the archive's next write or put fails, then
    // its queue fills: post until refused.
    let mut sent = 100;
    loop {
        let (status, resp) = s.post(&clicks(sent, 100));
        match status {
            202 => sent += 100,
            429 => break,
            _ => panic!("{status}: {resp}"),
        }
        assert!(sent < 200_000, "the archive never held ingest back");
    }
    let ready = wait_for_readyz(s, |r| {
        r["storage"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"].as_str().unwrap().contains(fault))
    });
    assert_eq!(ready["ready"], false, "{ready}");
    mend();
    for from in (sent..sent + 500).step_by(100) {
        let mut tries = 0;
        loop {
            let (status, resp) = s.post(&clicks(from, 100));
            if status == 202 {
                break;
            }
            assert_eq!(status, 429, "{resp}");
            tries += 1;
            assert!(tries < 600, "still refused once mended: {resp}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    sent += 500;
    wait_processed(s, sent);
    wait_for_readyz(s, |r| r["ready"] == true);
    sent
}

/// The archive holds clicks `c-0` to `c-<sent - 1>`, each once.
fn assert_archived_once(got: &Value, sent: usize) {
    assert_eq!(got["rows"], sent, "rows");
    let ids = archived_ids(got);
    let want: BTreeSet<String> = (0..sent).map(|i| format!("c-{i}")).collect();
    assert_eq!(ids.len(), sent, "an event archived twice");
    assert!(ids.iter().all(|id| want.contains(*id)), "an event not sent");
}

/// `/readyz`'s body, once `ok` holds of it.
fn wait_for_readyz(s: &Server, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let done = (0..300).any(|_| {
        let r = match ureq::get(&s.url("/readyz")).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{e}"),
        };
        last = serde_json::from_str(&r.into_string().unwrap()).unwrap();
        ok(&last) || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    });
    assert!(done, "/readyz never got there: {last}");
    last
}
