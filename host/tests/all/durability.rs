//! Durability of the embedded default: with the write-ahead log, `202`
//! means on disk, and a `kill -9` at any moment loses and doubles nothing.

use crate::sinks::{
    Db, SmallDisk, expected_points, influx_config, known_stream, post_all, wait_processed,
};
use crate::support::{Server, final_points, guest, parse_ndjson, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

/// Every (fingerprint, status) of an alerts file: a repeat after a replay
/// carries the same fingerprint, so the set is what was alerted.
pub(crate) fn alert_set(text: &str) -> BTreeSet<(String, String)> {
    parse_ndjson(text)
        .iter()
        .map(|a| {
            (
                a["fingerprint"].as_str().unwrap().to_string(),
                a["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Posts a chunk; `None` when the server is gone (killed mid-request).
fn try_post(url: &str, chunk: &[Value]) -> Option<u16> {
    match ureq::post(url)
        .set("Content-Type", "application/json")
        .send_string(&Value::Array(chunk.to_vec()).to_string())
    {
        Ok(r) => Some(r.status()),
        Err(ureq::Error::Status(code, _)) => Some(code),
        Err(_) => None,
    }
}

pub(crate) fn kill_9(s: &mut Server) {
    s.child.kill().unwrap();
    s.child.wait().unwrap();
}

/// A small deterministic generator, so a failing run can be repeated.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// How each kill is timed.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// Right after a `202`: the events are in the log, maybe not processed.
    AfterAnswer,
    /// While a request is in flight (its client retries on the next run).
    MidRequest,
    /// Once everything is processed, a random moment later: checkpoints
    /// run every 100 ms, so some kills fall in one.
    Settled,
    /// With InfluxDB down and the sink retrying: points are in its buffer
    /// and the checkpoint after them is not complete.
    SinkRetrying,
}

type Points = std::collections::BTreeMap<(String, i64), std::collections::BTreeMap<String, Value>>;

/// Waits until `read` gives `want`; if it never does, fails naming the
/// points that are missing, extra or different.
fn wait_for_points(place: &str, want: &Points, read: impl Fn() -> Points) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut got = read();
    while &got != want && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        got = read();
    }
    if &got == want {
        return;
    }
    let differ = |a: &Points, b: &Points| -> Vec<String> {
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .take(10)
            .map(|(k, v)| format!("{k:?} {v:?}"))
            .collect()
    };
    panic!(
        "{place} never held the points of the uninterrupted run ({} points, want {}):\n\
         not as wanted: {:#?}\nwanted: {:#?}",
        got.len(),
        want.len(),
        differ(&got, want),
        differ(want, &got)
    );
}

/// Under load, `kill -9` at 10 moments and a restart each time: every
/// event answered `202` is counted once in the final points (in InfluxDB and
/// in `metrics.lp`), and every alert is there, as in an uninterrupted run.
#[test]
fn kill_9_at_ten_moments_loses_and_doubles_nothing() {
    let events = known_stream(17);
    let reference = Server::start("[engine]\nidle_timeout = \"1h\"\ndurability = \"memory\"\n");
    post_all(&reference, &events, 500, Duration::ZERO);
    wait_processed(&reference, events.len());
    assert_eq!(
        reference.read("dead-letter.jsonl"),
        "",
        "the reference run left no event out"
    );
    let want_points = expected_points(&reference.read("metrics.lp"));
    let want_alerts = alert_set(&reference.read("alerts.jsonl"));
    assert!(!want_alerts.is_empty(), "the stream raises alerts");

    let mut influx = Db::influxdb();
    let config = influx_config(influx.port, "v1", "").replacen(
        "[engine]\n",
        "[engine]\ndurability = \"wal\"\ncheckpoint_interval = \"100ms\"\n",
        1,
    );
    let mut s = Server::start(&config);
    let seed = 0x5eed_u64;
    let mut rng = Lcg(seed);
    let chunks: Vec<&[Value]> = events.chunks(100).collect();
    // Ten kills at chunks spread over the stream, each timed another way.
    let moments = [
        Moment::AfterAnswer,
        Moment::MidRequest,
        Moment::Settled,
        Moment::SinkRetrying,
    ];
    let mut kills: Vec<(usize, Moment)> = (0..10)
        .map(|i| {
            let at = (i * chunks.len()) / 10 + rng.below(chunks.len() as u64 / 10) as usize;
            (at, moments[i % moments.len()])
        })
        .collect();
    kills.sort_by_key(|k| k.0);
    let mut next_kill = kills.iter().peekable();
    let mut replayed = 0.0;
    let mut i = 0;
    while i < chunks.len() {
        let kill = next_kill.next_if(|k| k.0 == i).map(|k| k.1);
        let url = s.url("/v1/events");
        match kill {
            None => match try_post(&url, chunks[i]) {
                Some(202) => i += 1,
                Some(429) => std::thread::sleep(Duration::from_millis(50)),
                other => panic!("chunk {i}: {other:?}: {}", s.log()),
            },
            Some(Moment::AfterAnswer) => {
                assert_eq!(try_post(&url, chunks[i]), Some(202));
                i += 1;
            }
            Some(Moment::MidRequest) => {
                let body = chunks[i].to_vec();
                let poster = std::thread::spawn(move || try_post(&url, &body));
                std::thread::sleep(Duration::from_micros(rng.below(3_000)));
                kill_9(&mut s);
                // Answered: done. Not answered: the client sends it again
                // (the event ids make a second copy a duplicate).
                if poster.join().unwrap() == Some(202) {
                    i += 1;
                }
            }
            Some(Moment::Settled) => {
                assert_eq!(try_post(&url, chunks[i]), Some(202));
                i += 1;
                s.wait_idle();
                std::thread::sleep(Duration::from_millis(rng.below(300)));
            }
            Some(Moment::SinkRetrying) => {
                influx.stop();
                let retries = |s: &Server| {
                    s.metric("nexuspipe_sink_retries_total{sink=\"influxdb\",kind=\"influxdb\"}")
                };
                let before = retries(&s);
                // Until a window closes and its points meet the outage.
                while retries(&s) == before && i < chunks.len() {
                    assert_eq!(try_post(&url, chunks[i]), Some(202));
                    i += 1;
                    s.wait_idle();
                    std::thread::sleep(Duration::from_millis(300));
                }
                assert!(retries(&s) > before, "the InfluxDB sink retried");
            }
        }
        if let Some(m) = kill {
            if !matches!(m, Moment::MidRequest) {
                kill_9(&mut s);
            }
            if matches!(m, Moment::SinkRetrying) {
                influx.start_again();
            }
            s.start_again();
            replayed += s.metric("nexuspipe_wal_replayed_events_total");
        }
    }
    // Every event once, whatever was replayed or posted twice.
    wait_until(60, "every accepted event processed", || {
        s.metric("nexuspipe_events_processed_total")
            == s.metric("nexuspipe_events_accepted_total")
                + s.metric("nexuspipe_wal_replayed_events_total")
    });
    wait_for_points("metrics.lp", &want_points, || {
        expected_points(&s.read("metrics.lp"))
    });
    wait_for_points("InfluxDB", &want_points, || influx.influx_points());
    assert_eq!(alert_set(&s.read("alerts.jsonl")), want_alerts);
    assert!(
        replayed > 0.0,
        "some kills left events to replay (seed {seed:#x})"
    );
    assert!(s.stop().success());
}

/// A start with `durability = "memory"` on a data dir whose log still
/// holds events (a crash with the log on) replays them, so switching the
/// setting strands no accepted event; the log goes once a checkpoint covers
/// it.
#[test]
fn a_start_without_the_log_replays_one_it_finds() {
    let events = known_stream(23);
    let memory = "[engine]\nidle_timeout = \"1h\"\ndurability = \"memory\"\n";
    let reference = Server::start(memory);
    post_all(&reference, &events, 500, Duration::ZERO);
    wait_processed(&reference, events.len());
    let want = expected_points(&reference.read("metrics.lp"));

    // No checkpoint in this run: what it took is only in the log.
    let mut s = Server::start(
        "[engine]\nidle_timeout = \"1h\"\ndurability = \"wal\"\ncheckpoint_interval = \"1h\"\n",
    );
    post_all(&s, &events, 500, Duration::ZERO);
    wait_processed(&s, events.len());
    kill_9(&mut s);
    let segments = |s: &Server| {
        std::fs::read_dir(s.data("wal"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "wal")
            })
            .count()
    };
    assert!(segments(&s) > 0, "the log holds the events");
    s.set_config(&format!("{memory}checkpoint_interval = \"100ms\"\n"));
    s.start_again();
    // Ready once the replay is done.
    assert_eq!(
        s.metric("nexuspipe_wal_replayed_events_total"),
        events.len() as f64,
        "{}",
        s.log()
    );
    wait_until(30, "the points of the uninterrupted run", || {
        expected_points(&s.read("metrics.lp")) == want
    });
    wait_until(30, "the log removed once a checkpoint covered it", || {
        segments(&s) == 0
    });
    assert!(s.stop().success());
}

/// A full disk under the log: ingest answers `503` with `Retry-After`
/// naming the log and the cause, `/readyz` names it, and once space returns
/// the refused events are taken; each accepted event is counted once.
#[test]
fn a_full_disk_refuses_events_until_the_log_can_take_them() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path().join("data"), "2m");
    let config = format!(
        "[engine]\nidle_timeout = \"1h\"\nout_of_orderness = \"0s\"\n\
         [[plugins]]\nname = \"counter\"\npath = {:?}\nconfig = '{{\"window_ms\": 1000}}'\n",
        guest("counter").display().to_string(),
    );
    let s = Server::start_in(dir, &config);
    let clicks = |from: i64, n: i64| -> Value {
        Value::Array(
            (from..from + n)
                .map(|i| json!({"event_type": "click", "timestamp": i * 10, "user_id": "u1"}))
                .collect(),
        )
    };
    assert_eq!(s.post(&clicks(0, 100)).0, 202);
    let filler = disk.fill();
    // The log's last page may still take a little: post until refused.
    let mut sent = 100;
    let refused = loop {
        let (status, resp) = s.post(&clicks(sent, 100));
        match status {
            202 => sent += 100,
            503 => break resp,
            _ => panic!("{status}: {resp}"),
        }
        assert!(sent < 10_000, "the full disk never refused an append");
    };
    let message = refused["error"].as_str().unwrap();
    assert!(
        message.contains("write-ahead log") && message.contains("No space left"),
        "{refused}"
    );
    assert!(refused["retry_after_header"].is_string(), "{refused}");
    let (status, ready) = {
        let r = ureq::get(&s.url("/readyz")).call();
        let r = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{e}"),
        };
        (
            r.status(),
            serde_json::from_str::<Value>(&r.into_string().unwrap()).unwrap(),
        )
    };
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["storage"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"].as_str().unwrap().ends_with("/wal")),
        "{ready}"
    );
    // Space returns: the refused batch is sent again and taken, and the rest.
    std::fs::remove_file(filler).unwrap();
    for from in (sent..sent + 300).step_by(100) {
        let (status, resp) = s.post(&clicks(from, 100));
        assert_eq!(status, 202, "{resp}");
    }
    sent += 300;
    let (status, resp) = s.post(&json!({"event_type": "flush", "timestamp": 1_000_000}));
    assert_eq!(status, 202, "{resp}");
    wait_processed(&s, sent as usize + 1);
    let counted: i64 = final_points(&s.read("metrics.lp"))
        .iter()
        .filter(|((series, _), _)| series == "counts,event_type=click")
        .map(|(_, f)| f["count=".len()..f.len() - 1].parse::<i64>().unwrap())
        .sum();
    assert_eq!(counted, sent, "each accepted click counted once");
    wait_until(10, "/readyz ready again", || {
        ureq::get(&s.url("/readyz")).call().is_ok()
    });
}
