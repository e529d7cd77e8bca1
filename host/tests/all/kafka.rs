//! Kafka roles against a real broker (tansu, `scripts/tansu.sh`) and
//! InfluxDB 1.x (`scripts/influxdb.sh`): collectors produce, processors in
//! one consumer group share the work, results stay exact through crashes.
//!
//! The expected results come from the embedded engine (one host, no Kafka)
//! running the same pipeline on the same stream.

use crate::archive::{Moto, archived_ids, read_archive_at};
use crate::live::{TOKEN, admin};
use crate::sinks::{Db, expected_points, known_stream, post_all};
use crate::support::{
    Server, free_port, guest, parse_ndjson, plugin_dir, terminate, wait_until, workspace_root,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// A tansu broker on a free port, in memory.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start() -> Broker {
        let port = free_port();
        let child = Command::new(workspace_root().join("scripts/tansu.sh"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("scripts/tansu.sh (install tansu: see DEVELOPERS.md)");
        wait_until(30, "tansu to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Broker { child, port }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// IP rules keyed by IP, the cart rule keyed by user: two instances of the
/// alerts plugin, each repartitioned by its own key.
const IP_RULES: &str = r#"{"rules": [
  {"id": "failed_login_burst", "type": "threshold", "severity": "warning",
   "summary": "{count} failed logins from {key} within {window}", "key": "metadata.ip_address",
   "filter": {"event_type": "login_failed"}, "window": "1m", "above": 5, "cooldown": "5m"},
  {"id": "credential_stuffing", "type": "sequence", "severity": "critical",
   "summary": "{count} failed logins then a success from {key} within {window}", "key": "metadata.ip_address",
   "first": {"event_type": "login_failed"}, "count": 5, "then": {"event_type": "login_success"}, "within": "10m"}
]}"#;
const USER_RULES: &str = r#"{"rules": [
  {"id": "cart_abandoned", "type": "absence", "severity": "info",
   "summary": "{key} added to cart but did not buy within {window}", "key": "user_id",
   "first": {"event_type": "add_to_cart"}, "then": {"event_type": "purchase"}, "within": "3m"}
]}"#;

/// The pipeline under test; `keyed` adds each plugin's `partition_by`.
fn pipeline(keyed: bool) -> String {
    let dir = plugin_dir();
    let plugin = |name: &str, file: &str, config: Option<&str>, by: Option<&str>| {
        let mut t = format!(
            "[[plugins]]\nname = \"{name}\"\npath = {:?}\n",
            dir.join(format!("{file}.wasm")).display().to_string()
        );
        if let Some(c) = config {
            t.push_str(&format!("config = '''{c}'''\n"));
        }
        if let (true, Some(by)) = (keyed, by) {
            t.push_str(&format!("partition_by = \"{by}\"\n"));
        }
        t
    };
    [
        plugin("enrich-geo", "enrich-geo", None, None),
        plugin("funnel", "funnel", None, None),
        plugin(
            "alerts-ip",
            "alerts",
            Some(IP_RULES),
            Some("metadata.ip_address"),
        ),
        plugin("alerts-user", "alerts", Some(USER_RULES), Some("user_id")),
    ]
    .concat()
}

fn influx(port: u16) -> String {
    format!(
        "[influxdb]\nurl = \"http://127.0.0.1:{port}\"\napi = \"v1\"\ndatabase = \"np\"\nflush_interval = \"200ms\"\nretry_initial = \"100ms\"\nretry_max = \"1s\"\n"
    )
}

/// A deployment's config: the broker, InfluxDB, short timeouts for the tests.
fn kafka_config(broker: &Broker, db: &Db, group: &str) -> String {
    kafka_config_with(broker, db, group, &pipeline(true))
}

fn kafka_config_with(broker: &Broker, db: &Db, group: &str, plugins: &str) -> String {
    format!(
        "[engine]\nidle_timeout = \"20s\"\ncheckpoint_interval = \"1s\"\n\
         [kafka]\nbrokers = \"127.0.0.1:{}\"\ntopic = \"events\"\ngroup = \"{group}\"\npartitions = 4\nresume = \"scan\"\n\
         [kafka.options]\n\"session.timeout.ms\" = \"15000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\
         {}{}",
        broker.port,
        influx(db.port),
        plugins
    )
}

/// An alert as the tests compare them.
type AlertKey = (String, String, String, String);

fn alerts(text: &str) -> Vec<AlertKey> {
    parse_ndjson(text)
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
            (s("rule_id"), s("key"), s("status"), s("fingerprint"))
        })
        .collect()
}

/// What one host computes for the stream: final points and alerts.
struct Expected {
    points: BTreeMap<(String, i64), BTreeMap<String, Value>>,
    alerts: BTreeSet<AlertKey>,
}

const SEED: u64 = 21;

/// The embedded engine on the same pipeline and stream (computed once).
fn expected(events: &[Value]) -> &'static Expected {
    static EXPECTED: OnceLock<Expected> = OnceLock::new();
    EXPECTED.get_or_init(|| reference(&pipeline(false), events))
}

/// What one host computes for `plugins` on `events`.
fn reference(plugins: &str, events: &[Value]) -> Expected {
    let s = Server::start(&format!("[engine]\nidle_timeout = \"1h\"\n{plugins}"));
    post_all(&s, events, 500, Duration::ZERO);
    wait_until(60, "the reference run", || {
        s.metric("nexuspipe_events_processed_total") == events.len() as f64
    });
    let all = alerts(&s.read("alerts.jsonl"));
    let set: BTreeSet<AlertKey> = all.iter().cloned().collect();
    assert_eq!(set.len(), all.len(), "each alert once");
    Expected {
        points: expected_points(&s.read("metrics.lp")),
        alerts: set,
    }
}

/// The stream, with an idle gap's worth of quiet at its end handled by the
/// processors' idle advance (the sentinel closes the reference's windows).
fn stream() -> Vec<Value> {
    known_stream(SEED)
}

/// Points equal, floats to 1e-9 relative: sums over events that reached a
/// task in another order may differ in the last bits.
fn same_points(
    got: &BTreeMap<(String, i64), BTreeMap<String, Value>>,
    want: &BTreeMap<(String, i64), BTreeMap<String, Value>>,
) -> Result<(), String> {
    // The reference never closes the sentinel's own window; processors do
    // once their inputs are idle.
    let got: BTreeMap<_, _> = got
        .iter()
        .filter(|((series, _), _)| !series.contains("sentinel"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if got.keys().ne(want.keys()) {
        let extra: Vec<_> = got
            .keys()
            .filter(|k| !want.contains_key(*k))
            .take(5)
            .collect();
        let missing: Vec<_> = want
            .keys()
            .filter(|k| !got.contains_key(*k))
            .take(5)
            .collect();
        return Err(format!(
            "{} points, want {}; extra {extra:?}, missing {missing:?}",
            got.len(),
            want.len()
        ));
    }
    for (k, fields) in want {
        let g = &got[k];
        for (f, v) in fields {
            let ok = match (g.get(f), v) {
                (Some(Value::Number(a)), Value::Number(b)) => {
                    let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                    (a - b).abs() <= b.abs() * 1e-9
                }
                (x, y) => x == Some(y),
            };
            if !ok {
                return Err(format!("{k:?}.{f}: got {:?}, want {v}", g.get(f)));
            }
        }
    }
    Ok(())
}

/// Waits until InfluxDB holds exactly the expected points.
fn wait_points(db: &Db, want: &Expected, what: &str, logs: &[&Server]) {
    let mut last = String::new();
    let done = (0..180).any(|_| {
        match same_points(&db.influx_points(), &want.points) {
            Ok(()) => return true,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(500));
        false
    });
    if !done {
        let logs: Vec<String> = logs.iter().map(|s| s.log()).collect();
        panic!("{what}: {last}\n{}", logs.join("\n-----\n"));
    }
}

/// The alerts all processors wrote, as a set; each (rule, key, status,
/// fingerprint) may repeat only as a replay the fingerprint deduplicates.
fn alert_set(processors: &[&Server]) -> BTreeSet<AlertKey> {
    processors
        .iter()
        .flat_map(|p| alerts(&p.read("alerts.jsonl")))
        .collect()
}

fn assert_alerts(processors: &[&Server], want: &Expected) {
    let ok = (0..60).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        alert_set(processors) == want.alerts
    });
    let got = alert_set(processors);
    assert!(
        ok,
        "alerts: extra {:?}\nmissing {:?}",
        got.difference(&want.alerts).collect::<Vec<_>>(),
        want.alerts.difference(&got).collect::<Vec<_>>()
    );
    assert!(
        want.alerts.iter().any(|a| a.0 == "failed_login_burst"),
        "the per-IP rule fired: {:?}",
        want.alerts
    );
}

/// Also archived as received (`stage = "raw"`, in moto's S3): each event
/// once, though the collector took every one twice.
#[test]
fn a_stream_through_the_collector_lands_exactly_in_influxdb() {
    let events = stream();
    let want = expected(&events);
    let broker = Broker::start();
    let db = Db::influxdb();
    let moto = Moto::start();
    let archive =
        moto.archive_in("np-e2e")
            .replacen("[archive]\n", "[archive]\nstage = \"raw\"\n", 1);
    let config = format!("{}{archive}", kafka_config(&broker, &db, "e2e"));
    let processor = Server::start_role(&config, "processor");
    let collector = Server::start_role(&config, "collector");
    // Every batch is sent twice, as by a client retrying after a lost
    // answer: the processors drop the copies (same event_id), so the points
    // are those of the stream sent once. The sentinel has no id: once.
    let (body, sentinel) = events.split_at(events.len() - 1);
    let middle = body.len() / 1000;
    for (i, c) in body.chunks(500).enumerate() {
        post_all(&collector, c, 500, Duration::ZERO);
        post_all(&collector, c, 500, Duration::ZERO);
        if i == middle {
            // Amid the stream, records from a producer that skips the
            // collector's checks: a time months ahead of the record's would
            // close every window if taken, one past what RFC 3339 holds has
            // its own reason. Neither changes an output.
            produce_raw(
                broker.port,
                "events",
                br#"{"event_type":"page_view","timestamp":"2100-01-01T00:00:00Z","user_id":"u"}"#,
            );
            produce_raw(
                broker.port,
                "events",
                br#"{"event_type":"page_view","timestamp":9000000000000000}"#,
            );
        }
    }
    post_all(&collector, sentinel, 1, Duration::ZERO);
    assert_eq!(
        collector.metric("nexuspipe_events_accepted_total"),
        (2 * body.len() + 1) as f64,
        "every event acknowledged"
    );
    wait_points(&db, want, "points through Kafka", &[&processor]);
    wait_until(30, "every copy counted as a duplicate", || {
        processor.metric("nexuspipe_events_duplicate_total") == body.len() as f64
    });
    // Parts are put at each checkpoint (every second).
    let read = || read_archive_at("s3://np-e2e/events".as_ref(), Some(&moto.endpoint()));
    let mut got = Value::Null;
    wait_until(30, "the stream in the bucket", || {
        got = read();
        got["rows"].as_u64() >= Some(events.len() as u64)
    });
    assert_eq!(got["rows"], events.len(), "a copy archived");
    for e in body {
        let id = e["event_id"].as_str().unwrap();
        let props = &got["events"][id]["properties"];
        assert!(props.is_object(), "{id} not archived");
        // As received: nothing the enricher would add.
        assert!(props.get("geo.ip_type").is_none(), "{id}: {props}");
    }
    // `replay --from s3://…` (credentials from the config's archive
    // options) merges the source partitions' parts by event time: the same
    // points and alerts as a replay of the stream's own file.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("replay.toml");
    std::fs::write(&cfg, &config).unwrap();
    let file = dir.path().join("events.ndjson");
    crate::support::write_ndjson(&file, &events);
    let replay_into = |from: &std::ffi::OsStr, out: &str| {
        let out = dir.path().join(out);
        let summary = crate::replay::summary(&[
            "replay".as_ref(),
            "--from".as_ref(),
            from,
            "--config".as_ref(),
            cfg.as_os_str(),
            "--data-dir".as_ref(),
            out.as_os_str(),
            "--close".as_ref(),
        ]);
        assert_eq!(summary["events"], events.len(), "{summary}");
        let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
        (
            crate::sinks::expected_points(&read("metrics.lp")),
            crate::durability::alert_set(&read("alerts.jsonl")),
        )
    };
    let (points, fired_again) = replay_into("s3://np-e2e/events".as_ref(), "from-bucket");
    let (want_points, want_alerts) = replay_into(file.as_os_str(), "from-file");
    assert!(!want_points.is_empty());
    assert_eq!(points, want_points, "points of the bucket's replay");
    assert_eq!(fired_again, want_alerts, "alerts of the bucket's replay");
    assert_alerts(&[&processor], want);
    let fired = alerts(&processor.read("alerts.jsonl"));
    assert_eq!(fired.len(), want.alerts.len(), "each alert fired once");
    let dead = parse_ndjson(&processor.read("dead-letter.jsonl"));
    let reasons: Vec<(&str, &str)> = dead
        .iter()
        .map(|d| (d["kind"].as_str().unwrap(), d["error"].as_str().unwrap()))
        .collect();
    assert_eq!(reasons.len(), 2, "{dead:?}");
    assert!(
        reasons.iter().all(|(k, _)| *k == "kafka_bad_record"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(_, e)| e.contains("ahead of the receive time")),
        "{reasons:?}"
    );
    // The processor's own figures: every partition read to its end, its
    // records counted per stage, commits and checkpoint sizes.
    wait_until(30, "no lag on the events topic", || {
        let text = processor.metrics_text();
        let lags: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("nexuspipe_kafka_consumer_lag{topic=\"events\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        !lags.is_empty() && lags.iter().all(|&n| n == 0.0)
    });
    // Each copy of each batch, the sentinel and the two bad records.
    assert_eq!(
        processor.metric("nexuspipe_kafka_records_total{stage=\"source\"}"),
        (2 * body.len() + 3) as f64
    );
    assert!(processor.metric("nexuspipe_kafka_records_total{stage=\"funnel\"}") > 0.0);
    assert!(processor.metric("nexuspipe_kafka_rebalances_total") >= 1.0);
    assert!(processor.metric("nexuspipe_kafka_commits_total") >= 1.0);
    assert!(
        processor.metric("nexuspipe_kafka_checkpoint_bytes{plugin=\"funnel\",partition=\"0\"}")
            > 0.0
    );
    for reason in ["timestamp_too_far_ahead", "timestamp_out_of_range"] {
        assert_eq!(
            processor.metric(&format!(
                "nexuspipe_events_rejected_total{{reason=\"{reason}\"}}"
            )),
            1.0,
            "{reason}"
        );
    }

    // A bad record (not JSON) goes to the dead-letter file, and the partition goes on.
    let status = Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args([
            "gen",
            "--rate",
            "0",
            "--duration",
            "1s",
            "--seed",
            "3",
            "--batch",
            "50",
        ])
        .args([
            "--target",
            &format!("kafka://127.0.0.1:{}/events", broker.port),
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "gen --target kafka://");
    // Like a collector, gen creates a topic that is not there yet.
    let out = Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args(["gen", "--rate", "100", "--duration", "1s", "--target"])
        .arg(format!("kafka://127.0.0.1:{}/fresh", broker.port))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["events_accepted"], 100, "{report}");
    produce_raw(broker.port, "events", b"{not json");
    wait_until(30, "the bad record in the dead-letter file", || {
        processor.read("dead-letter.jsonl").contains("{not json")
    });
    let dead = parse_ndjson(&processor.read("dead-letter.jsonl"));
    let bad = dead.last().unwrap();
    assert_eq!(bad["topic"], "events");
    assert_eq!(bad["value"], "{not json");
    assert!(
        bad["error"].as_str().unwrap().starts_with("not JSON"),
        "{bad}"
    );
    assert_eq!(
        processor.metric("nexuspipe_events_rejected_total{reason=\"malformed_json\"}"),
        1.0
    );
}

/// Writes one raw record, as a misbehaving producer would.
fn produce_raw(port: u16, topic: &str, value: &[u8]) {
    produce_keyed(port, topic, None, value);
}

fn produce_keyed(port: u16, topic: &str, key: Option<&[u8]>, value: &[u8]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .create()
        .unwrap();
    let mut r = BaseRecord::<[u8], [u8]>::to(topic).payload(value);
    if let Some(k) = key {
        r = r.key(k);
    }
    p.send(r).map_err(|(e, _)| e).unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
}

/// A processor that cannot go on (here: a task's checkpoint it cannot
/// read) does not run headless: `/readyz` answers 503 with the cause, and
/// the process exits non-zero after logging it, for a supervisor to see.
#[test]
fn a_processor_that_cannot_restore_its_state_says_why_and_exits() {
    let broker = Broker::start();
    let db = Db::influxdb();
    let config = kafka_config(&broker, &db, "broken");
    // A first run creates the topics, then leaves cleanly.
    let mut first = Server::start_role(&config, "processor");
    wait_until(60, "the first assignment", || {
        first.log().contains("partitions assigned")
    });
    assert!(first.stop().success(), "{}", first.log());
    produce_keyed(
        broker.port,
        "events.broken.checkpoints",
        Some(b"funnel/0"),
        b"not a checkpoint",
    );
    let mut s = Server::launch_role(&config, "processor");
    let mut cause = String::new();
    wait_until(
        60,
        "/readyz to say why it cannot go on",
        || match ureq::get(&s.url("/readyz")).call() {
            Err(ureq::Error::Status(503, r)) => {
                let r: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
                cause = r["fatal"].as_str().unwrap_or_default().to_string();
                !cause.is_empty()
            }
            _ => false,
        },
    );
    assert!(
        cause.contains("the checkpoint of `funnel` partition 0 is unreadable"),
        "{cause}"
    );
    let mut status = None;
    wait_until(30, "the process to exit", || {
        status = s.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(!status.unwrap().success(), "a non-zero exit: {}", s.log());
    assert!(
        s.log().contains("partition 0 is unreadable"),
        "logged: {}",
        s.log()
    );
}

#[test]
fn a_processor_killed_mid_stream_resumes_exactly_on_another_disk() {
    let events = stream();
    let want = expected(&events);
    let broker = Broker::start();
    let db = Db::influxdb();
    let config = kafka_config(&broker, &db, "crash");
    let collector = Server::start_role(&config, "collector");
    let mut first = Server::start_role(&config, "processor");
    let half = events.len() / 2;
    post_all(&collector, &events[..half], 250, Duration::from_millis(50));
    wait_until(60, "the first processor to make progress", || {
        first.metric("nexuspipe_events_processed_total") > 1000.0
    });
    // Task state checkpointed before the crash.
    wait_until(30, "a checkpoint", || {
        first.metric("nexuspipe_checkpoints_total") >= 1.0
    });
    first.child.kill().unwrap(); // kill -9
    first.child.wait().unwrap();
    post_all(&collector, &events[half..], 250, Duration::ZERO);
    // A new host, with an empty data dir: state comes from the checkpoints topic.
    let second = Server::start_role(&config, "processor");
    wait_points(&db, want, "points after the crash", &[&second]);
    assert!(
        second.log().contains("restored from checkpoint"),
        "{}",
        second.log()
    );
    assert_alerts(&[&first, &second], want);
}

/// `[archive]` on processors (in a bucket: moto's S3 API on loopback):
/// through a `kill -9` and a new processor taking over, every event is in
/// the bucket once, as the enrichers left it. The first processor puts
/// parts (they close every 200 ms) and never commits (checkpoints every
/// hour): the second removes them all and archives those events again.
#[test]
fn a_processor_killed_with_parts_past_its_commit_archives_every_event_once() {
    let moto = Moto::start();
    let events = stream();
    let want = expected(&events);
    let broker = Broker::start();
    let db = Db::influxdb();
    let archive = moto.archive_in("np-kafka").replacen(
        "[archive]\n",
        "[archive]\nflush_interval = \"200ms\"\n",
        1,
    );
    let config = format!("{}{archive}", kafka_config(&broker, &db, "archived")).replacen(
        "checkpoint_interval = \"1s\"",
        "checkpoint_interval = \"1h\"",
        1,
    );
    let collector = Server::start_role(&config, "collector");
    let mut first = Server::start_role(&config, "processor");
    let half = events.len() / 2;
    post_all(&collector, &events[..half], 250, Duration::from_millis(50));
    let read = || read_archive_at("s3://np-kafka/events".as_ref(), Some(&moto.endpoint()));
    wait_until(60, "the first half in the bucket", || {
        read()["rows"].as_u64() >= Some(half as u64)
    });
    assert_eq!(first.metric("nexuspipe_checkpoints_total"), 0.0);
    first.child.kill().unwrap(); // kill -9
    first.child.wait().unwrap();
    post_all(&collector, &events[half..], 250, Duration::ZERO);
    let second = Server::start_role(&config, "processor");
    wait_points(&db, want, "points after the crash", &[&second]);
    let mut got = Value::Null;
    wait_until(30, "every event in the bucket", || {
        got = read();
        got["rows"].as_u64() >= Some(events.len() as u64)
    });
    assert_eq!(got["rows"], events.len(), "an event archived twice");
    assert!(
        second.log().contains("past its committed offset"),
        "{}",
        second.log()
    );
    let ids = archived_ids(&got);
    assert_eq!(ids.len(), events.len(), "an event archived twice");
    for e in &events {
        if let Some(id) = e["event_id"].as_str() {
            assert!(ids.contains(id), "{id} not archived");
            // After enrich-geo: what it sets from the address is there.
            let props = &got["events"][id]["properties"];
            assert!(props.get("geo.ip_type").is_some(), "{id}: {props}");
        }
    }
}

#[test]
fn two_processors_share_the_work_and_the_survivor_takes_over() {
    let events = stream();
    let want = expected(&events);
    let broker = Broker::start();
    let db = Db::influxdb();
    let config = kafka_config(&broker, &db, "pair");
    let collector = Server::start_role(&config, "collector");
    let a = Server::start_role(&config, "processor");
    wait_until(30, "the first processor's assignment", || {
        a.log().contains("partitions assigned")
    });
    let mut b = Server::start_role(&config, "processor");
    wait_until(60, "the second processor's share", || {
        b.log()
            .lines()
            .any(|l| l.contains("partitions assigned") && !l.contains("sources=[] tasks=[]"))
    });
    let third = events.len() / 3;
    post_all(&collector, &events[..third], 250, Duration::from_millis(30));
    wait_until(60, "both processors to work", || {
        a.metric("nexuspipe_events_processed_total") > 0.0
            && b.metric("nexuspipe_events_processed_total") > 0.0
    });
    wait_until(30, "a checkpoint on the second processor", || {
        b.metric("nexuspipe_checkpoints_total") >= 1.0
    });
    b.child.kill().unwrap(); // kill -9
    b.child.wait().unwrap();
    post_all(&collector, &events[third..], 250, Duration::ZERO);
    wait_points(&db, want, "points after the takeover", &[&a]);
    assert_alerts(&[&a, &b], want);
}

/// Fills the events topic with `rate` events/s for `duration` (a thousand
/// events per second of event time); returns how many the broker took.
fn backlog(broker: &Broker, rate: u32, duration: &str, seed: u32) -> f64 {
    let out = Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args(["gen", "--rate", &rate.to_string(), "--duration", duration])
        .args([
            "--event-rate",
            "1000",
            "--seed",
            &seed.to_string(),
            "--batch",
            "100",
        ])
        .arg("--target")
        .arg(format!("kafka://127.0.0.1:{}/events", broker.port))
        .output()
        .unwrap();
    assert!(out.status.success(), "gen --target kafka://");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["events_accepted"].as_f64().unwrap()
}

/// The funnel alone, its memory capped at `mib`.
fn capped_funnel(mib: u32) -> String {
    format!(
        "[[plugins]]\nname = \"funnel\"\npath = {:?}\n[plugins.limits]\nmemory_mib = {mib}\n",
        plugin_dir().join("funnel.wasm").display().to_string()
    )
}

/// A backlog read partition by partition would hold the keyed tasks' event
/// time at the slowest source partition while the others' events pile up in
/// the funnel's event-time buffer. The processor reads its source
/// partitions oldest record first, so a funnel capped at 16 MiB takes a
/// backlog of 60 000 events (a minute of event time) without failing.
#[test]
fn a_backlog_is_read_evenly_across_source_partitions() {
    let broker = Broker::start();
    let db = Db::influxdb();
    let sent = backlog(&broker, 60_000, "1s", 5);
    let funnel = capped_funnel(16);
    let config = kafka_config_with(&broker, &db, "backlog", &funnel)
        .replace("[kafka]\n", "[kafka]\nalign_wait = \"300ms\"\n");
    let processor = Server::start_role(&config, "processor");
    let mut skew: f64 = 0.0;
    wait_until(120, "the backlog through the funnel", || {
        let name = "nexuspipe_kafka_source_skew_seconds ";
        let text = processor.metrics_text();
        if let Some(v) = text.lines().find_map(|l| l.strip_prefix(name)) {
            skew = skew.max(v.parse().unwrap());
        }
        processor.metric("nexuspipe_events_processed_total") >= sent
    });
    // Read partition by partition, one would run the whole minute ahead.
    assert!(skew < 20.0, "source partitions {skew} s apart");
    // A failed funnel call dead-letters its batch.
    assert_eq!(
        processor.metric("nexuspipe_events_dead_lettered_total"),
        0.0,
        "{}",
        processor.log()
    );
    assert!(
        !processor.log().contains("memory cap"),
        "{}",
        processor.log()
    );
    // The funnel's figures, summed over its tasks on this processor.
    assert!(processor.metric("nexuspipe_plugin_calls_total{plugin=\"funnel\"}") > 0.0);
    assert_eq!(
        processor.metric("nexuspipe_plugin_failures_total{plugin=\"funnel\"}"),
        0.0
    );
}

/// Two processors reading a backlog each at its own pace: the funnel's task
/// (on one of them) waits for the slower one's partitions, while the faster
/// one's events pile up in its buffer. Each processor holds back its
/// partitions that run more than `max_drift` ahead of the group's least
/// advanced one, so a funnel capped at 32 MiB takes 200 000 events (over
/// three minutes of event time) without failing; with `max_drift = "1h"`
/// (no alignment) the same run hits the cap. The rebalance in the middle
/// of the backlog loses nothing (before the partitions a processor keeps
/// were read again after a rebalance, up to 0.15 % of the events never were).
fn two_processors_backlog(max_drift: &str) -> (Vec<Server>, f64) {
    let broker = Broker::start();
    let db = Db::influxdb();
    let sent = backlog(&broker, 100_000, "2s", 9);
    let funnel = capped_funnel(32);
    let config = kafka_config_with(&broker, &db, "drift", &funnel).replace(
        "[kafka]\n",
        &format!("[kafka]\nmax_drift = \"{max_drift}\"\n"),
    );
    let processors = vec![
        Server::start_role(&config, "processor"),
        Server::start_role(&config, "processor"),
    ];
    // Until every source partition is read to its end (the keyed tasks
    // hold what they took), or the funnel failed.
    let read = |p: &Server| p.metric("nexuspipe_events_received_total");
    let failed = |p: &Server| p.metric("nexuspipe_events_dead_lettered_total") > 0.0;
    let mut last = (0.0, std::time::Instant::now());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let total: f64 = processors.iter().map(read).sum();
        if total != last.0 {
            last = (total, std::time::Instant::now());
        }
        let lag = processors.iter().any(|p| {
            p.metrics_text().lines().any(|l| {
                l.starts_with("nexuspipe_kafka_consumer_lag{topic=\"events\"") && !l.ends_with(" 0")
            })
        });
        let quiet = last.1.elapsed() > Duration::from_secs(2);
        if processors.iter().any(failed) || (total >= sent && quiet && !lag) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backlog ({sent} events) was not read in 120 s: {total}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (processors, sent)
}

#[test]
fn two_processors_read_a_backlog_in_step() {
    let (processors, sent) = two_processors_backlog("10s");
    let logs = || {
        let logs: Vec<String> = processors.iter().map(|p| p.log()).collect();
        logs.join("\n-----\n")
    };
    for p in &processors {
        // A failed funnel call dead-letters its batch.
        assert_eq!(
            p.metric("nexuspipe_events_dead_lettered_total"),
            0.0,
            "{}",
            logs()
        );
        assert!(!p.log().contains("memory cap"), "{}", logs());
    }
    // Both read their share (the funnel's task on one, fed by both), and
    // every event once, though two partitions changed hands mid-backlog.
    let read: Vec<f64> = processors
        .iter()
        .map(|p| p.metric("nexuspipe_events_received_total"))
        .collect();
    assert!(read.iter().all(|n| *n > 0.0), "{read:?}");
    assert_eq!(read.iter().sum::<f64>(), sent, "{}", logs());
    wait_until(30, "every event through the funnel", || {
        processors
            .iter()
            .map(|p| p.metric("nexuspipe_events_processed_total"))
            .sum::<f64>()
            >= sent
    });
}

/// The same rule twice, once before the geo enricher and once after it.
fn geo_rule(id: &str) -> String {
    format!(
        r#"{{"rules": [{{"id": "{id}", "type": "threshold", "severity": "info",
  "summary": "{{count}} located {{key}} events within {{window}}", "key": "event_type",
  "filter": {{"where": [{{"field": "properties.geo.ip_type", "op": "exists"}}]}},
  "window": "1m", "above": 20, "cooldown": "1m"}}]}}"#
    )
}

/// An enricher after an aggregator and an alerter: the plugins before it
/// see the events without its fields, those after it with them, on one host
/// and on many.
fn enricher_after_stateful() -> String {
    let dir = plugin_dir();
    let plugin = |name: &str, file: &str, config: Option<String>| {
        let mut t = format!(
            "[[plugins]]\nname = \"{name}\"\npath = {:?}\n",
            dir.join(format!("{file}.wasm")).display().to_string()
        );
        if let Some(c) = config {
            t.push_str(&format!("config = '''{c}'''\n"));
        }
        t
    };
    [
        plugin("funnel", "funnel", None),
        plugin("alerts-before", "alerts", Some(geo_rule("geo_before"))),
        plugin("enrich-geo", "enrich-geo", None),
        plugin("alerts-after", "alerts", Some(geo_rule("geo_after"))),
    ]
    .concat()
}

#[test]
fn an_enricher_after_an_aggregator_means_the_same_on_one_host_and_on_two() {
    let events = stream();
    let plugins = enricher_after_stateful();
    let want = reference(&plugins, &events);
    // The order matters: only the alerter after the enricher sees geo fields.
    assert!(
        want.alerts.iter().any(|a| a.0 == "geo_after"),
        "{:?}",
        want.alerts
    );
    assert!(
        !want.alerts.iter().any(|a| a.0 == "geo_before"),
        "{:?}",
        want.alerts
    );
    let broker = Broker::start();
    let db = Db::influxdb();
    let config = kafka_config_with(&broker, &db, "order", &plugins);
    let collector = Server::start_role(&config, "collector");
    let a = Server::start_role(&config, "processor");
    let b = Server::start_role(&config, "processor");
    wait_until(60, "both processors to hold partitions", || {
        [&a, &b].iter().all(|p| {
            p.log()
                .lines()
                .any(|l| l.contains("partitions assigned") && !l.contains("sources=[] tasks=[]"))
        })
    });
    post_all(&collector, &events, 250, Duration::ZERO);
    wait_points(
        &db,
        &want,
        "points with the enricher after the aggregator",
        &[&a, &b],
    );
    let ok = (0..60).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        alert_set(&[&a, &b]) == want.alerts
    });
    let got = alert_set(&[&a, &b]);
    assert!(
        ok,
        "alerts: extra {:?}\nmissing {:?}",
        got.difference(&want.alerts).collect::<Vec<_>>(),
        want.alerts.difference(&got).collect::<Vec<_>>()
    );
}

/// The same component under another version (another hash): its bytes with
/// a custom section appended, which changes nothing it does.
fn another_version(file: &std::path::Path, tag: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(file).unwrap();
    let name = b"nexuspipe-test";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    bytes.push(0); // a custom section, then its size in LEB128
    let mut n = payload.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            bytes.push(b);
            break;
        }
        bytes.push(b | 0x80);
    }
    bytes.extend(payload);
    bytes
}

fn put(host: &Server, name: &str, component: &[u8]) -> (u16, Value) {
    admin(
        host,
        "PUT",
        &format!("/v1/plugins/{name}"),
        Some(TOKEN),
        Some(component),
    )
}

/// `GET /v1/plugins/{name}` on `host`.
fn plugin_on(host: &Server, name: &str) -> Value {
    let (status, v) = admin(
        host,
        "GET",
        &format!("/v1/plugins/{name}"),
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 200, "{v}");
    v
}

/// The version of `name` each live processor of the group runs, as `host` sees it.
fn versions_on(host: &Server, name: &str) -> BTreeMap<String, String> {
    plugin_on(host, name)["processors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                    (s("processor"), s("version"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn holds_partitions(p: &Server) -> bool {
    p.log()
        .lines()
        .any(|l| l.contains("partitions assigned") && !l.contains("sources=[] tasks=[]"))
}

/// Live plugins across hosts: a version uploaded to the collector swaps on
/// both processors under load; a version that rejects the state is refused
/// everywhere and the old one keeps running; a swap during a rebalance (a
/// third processor joins, one is killed) loses and repeats nothing; a
/// restarted processor runs the deployed version. Every window equals the
/// uninterrupted one-host run of the same stream.
#[test]
fn plugin_changes_on_any_host_reach_every_processor() {
    let events = stream();
    let want = expected(&events);
    let broker = Broker::start();
    let db = Db::influxdb();
    let config = format!(
        "[http]\nadmin_token = \"{TOKEN}\"\n{}",
        kafka_config(&broker, &db, "live")
    );
    let collector = Server::start_role(&config, "collector");
    let a = Server::start_role(&config, "processor");
    wait_until(30, "the first processor's assignment", || {
        a.log().contains("partitions assigned")
    });
    let mut b = Server::start_role(&config, "processor");
    wait_until(60, "both processors to hold partitions", || {
        holds_partitions(&a) && holds_partitions(&b)
    });
    wait_until(30, "both processors' status", || {
        versions_on(&collector, "funnel").len() == 2
    });
    let funnel = plugin_dir().join("funnel.wasm");
    let q = events.len() / 4;
    post_all(&collector, &events[..q], 250, Duration::ZERO);

    // 1. An upload on the collector, while events flow.
    let (status, body) = std::thread::scope(|sc| {
        let load = sc.spawn(|| {
            post_all(
                &collector,
                &events[q..2 * q],
                100,
                Duration::from_millis(20),
            )
        });
        let r = put(&collector, "funnel", &another_version(&funnel, "v2"));
        load.join().unwrap();
        r
    });
    assert_eq!(status, 200, "{body}");
    let v2 = body["version"].as_str().unwrap().to_string();
    let answered = body["processors"].as_array().unwrap();
    assert_eq!(answered.len(), 2, "both processors answered: {body}");
    for p in answered {
        assert_eq!(p["version"], v2.as_str(), "{body}");
        assert_eq!(p["state"], "kept", "{body}");
    }
    // The funnel has one task (it is not keyed): the processor running it
    // caught the new version up with it before the swap (same interest and
    // config); the other had no state to hand over.
    let caught_up: Vec<&Value> = answered.iter().filter(|p| p["caught_up"] == true).collect();
    assert_eq!(caught_up.len(), 1, "{body}");
    assert!(caught_up[0]["swap_pause_us"].is_u64(), "{body}");
    eprintln!(
        "upload on the collector to both processors running it: {} ms; pause of the one that caught up: {} µs",
        body["upload_to_active_ms"], caught_up[0]["swap_pause_us"]
    );
    for host in [&collector, &a, &b] {
        wait_until(
            10,
            "every host to see both processors on the new version",
            || {
                let v = versions_on(host, "funnel");
                v.len() == 2 && v.values().all(|h| *h == v2)
            },
        );
    }

    // 2. A version that rejects the running state: refused on every host.
    let counter = std::fs::read(guest("counter")).unwrap();
    let (status, body) = put(&a, "funnel", &counter);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["reason"], "state_rejected", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("refused by"),
        "{body}"
    );
    for host in [&collector, &a, &b] {
        wait_until(10, "the old version on every processor", || {
            let v = versions_on(host, "funnel");
            v.len() == 2 && v.values().all(|h| *h == v2)
        });
        assert_eq!(plugin_on(host, "funnel")["version"], v2.as_str());
    }
    // The processor holding the funnel's task says why, in the API and its log.
    let refusals: Vec<String> = plugin_on(&collector, "funnel")["processors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["error"].as_str().map(str::to_string))
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(refusals[0].contains("rejected"), "{refusals:?}");
    assert!(
        [&a, &b]
            .iter()
            .any(|p| p.log().contains("plugin change refused on this processor")),
        "logged"
    );

    // 3. A swap during rebalances: a third processor joins, a new version is
    // uploaded on a processor, and another is killed while it swaps.
    let mut c = Server::start_role(&config, "processor");
    let (status, body) = std::thread::scope(|sc| {
        let load = sc.spawn(|| {
            post_all(
                &collector,
                &events[2 * q..3 * q],
                100,
                Duration::from_millis(20),
            )
        });
        wait_until(60, "the third processor to join", || {
            c.log().contains("partitions assigned")
        });
        let upload = sc.spawn(|| put(&a, "funnel", &another_version(&funnel, "v3")));
        b.child.kill().unwrap(); // kill -9
        b.child.wait().unwrap();
        load.join().unwrap();
        upload.join().unwrap()
    });
    assert_eq!(status, 200, "{body}");
    let v3 = body["version"].as_str().unwrap().to_string();
    post_all(&collector, &events[3 * q..], 250, Duration::ZERO);
    wait_points(
        &db,
        want,
        "points through three swaps and a rebalance",
        &[&a, &c],
    );
    assert_alerts(&[&a, &b, &c], want);

    // 4. A restarted processor runs the deployed version, not the configured one.
    c.restart();
    wait_until(30, "the restarted processor's pipeline", || {
        plugin_on(&c, "funnel")["version"] == v3.as_str()
    });
    assert_eq!(
        plugin_on(&collector, "funnel")["previous_version"],
        v2.as_str()
    );

    // 5. Rollback and delete work from any host too.
    let (status, body) = admin(&c, "POST", "/v1/plugins/funnel/rollback", Some(TOKEN), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], v2.as_str(), "{body}");
    let (status, body) = admin(
        &collector,
        "DELETE",
        "/v1/plugins/alerts-user",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 200, "{body}");
    for p in [&a, &c] {
        wait_until(
            10,
            "the rollback and the removal on every processor",
            || {
                let (_, list) = admin(p, "GET", "/v1/plugins", Some(TOKEN), None);
                let names: Vec<&str> = list["plugins"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                !names.contains(&"alerts-user") && plugin_on(p, "funnel")["version"] == v2.as_str()
            },
        );
    }
}

/// An event schema put on any host reaches every host of the group through
/// the plugins topic: a collector started later reads it at start, a running
/// one takes the next version as it comes.
#[test]
fn a_schema_put_on_one_collector_checks_events_on_every_collector() {
    let broker = Broker::start();
    let config = format!(
        "[http]\nadmin_token = \"{TOKEN}\"\n\
         [kafka]\nbrokers = \"127.0.0.1:{}\"\ntopic = \"events\"\ngroup = \"schemas\"\npartitions = 2\n",
        broker.port
    );
    let a = Server::start_role(&config, "collector");
    let schema = serde_json::json!({"type": "object", "required": ["amount"],
        "properties": {"amount": {"type": "number", "minimum": 0}}});
    let put = |host: &Server, schema: &Value| {
        admin(
            host,
            "PUT",
            "/v1/schemas/purchase",
            Some(TOKEN),
            Some(schema.to_string().as_bytes()),
        )
    };
    let (status, v) = put(&a, &schema);
    assert_eq!(status, 201, "{v}");
    let purchase = |amount: i64| serde_json::json!({"event_type": "purchase", "properties": {"amount": amount}});
    let b = Server::start_role(&config, "collector");
    let (status, v) = b.post(&purchase(-1));
    assert_eq!(status, 400, "a collector started later checks with it: {v}");
    assert_eq!(v["rejected"][0]["rule"], "minimum");
    let mut v2 = schema.clone();
    v2["properties"]["amount"]["maximum"] = serde_json::json!(100);
    let (status, v) = put(&b, &v2);
    assert_eq!((status, v["version"].as_u64()), (201, Some(2)), "{v}");
    wait_until(30, "the running collector to take version 2", || {
        admin(&a, "GET", "/v1/schemas/purchase", None, None).1["version"] == 2
    });
    let (status, v) = a.post(&purchase(500));
    assert_eq!(
        (status, v["rejected"][0]["rule"].as_str()),
        (400, Some("maximum")),
        "{v}"
    );
    assert_eq!(
        a.post(&purchase(50)).0,
        202,
        "valid events are still produced"
    );
    let (_, versions) = admin(&a, "GET", "/v1/schemas/purchase/versions", None, None);
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(2));
}
