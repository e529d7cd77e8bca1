//! `nexuspipe run` through its real HTTP server and real Wasm plugins.

use crate::support::{Server, final_points, guest, wait_until};
use serde_json::{Value, json};
use std::io::Write;

fn counter_config(engine: &str, window_ms: i64) -> String {
    format!(
        "[engine]\n{engine}\n[[plugins]]\nname = \"counter\"\npath = {:?}\nconfig = '{{\"window_ms\": {window_ms}}}'\n",
        guest("counter").display().to_string()
    )
}

fn clicks(ts: &[i64]) -> Value {
    Value::Array(
        ts.iter()
            .map(|t| json!({"event_type": "click", "timestamp": t, "user_id": "u1"}))
            .collect(),
    )
}

fn accepted(s: &Server, body: &Value) {
    let (status, resp) = s.post(body);
    assert_eq!(status, 202, "{resp}");
}

/// Final count per window start of `counts,event_type=<t>`.
fn counts(s: &Server, event_type: &str) -> Vec<(i64, i64)> {
    let series = format!("counts,event_type={event_type}");
    final_points(&s.read("metrics.lp"))
        .into_iter()
        .filter(|((name, _), _)| *name == series)
        .map(|((_, ts), fields)| {
            let n = fields
                .strip_prefix("count=")
                .and_then(|f| f.strip_suffix('i'))
                .unwrap();
            (ts, n.parse().unwrap())
        })
        .collect()
}

#[test]
fn event_time_windows_watermark_and_lateness() {
    let s = Server::start(&counter_config(
        "out_of_orderness = \"5s\"\nidle_timeout = \"1h\"\nallowed_lateness = \"10s\"",
        60_000,
    ));
    // In order, with one at exactly 60 000: that one belongs to the next window.
    accepted(&s, &clicks(&[1_000, 59_999, 60_000]));
    // Out of order but within the 5 s bound: still counted in [0, 60 000).
    accepted(&s, &clicks(&[58_000]));
    s.wait_idle();
    assert!(
        s.read("metrics.lp").is_empty(),
        "nothing fires before the watermark reaches 60 000"
    );
    // 65 000 moves the watermark to 60 000: [0, 60 000) fires.
    accepted(&s, &clicks(&[65_000]));
    wait_until(10, "the first window", || {
        counts(&s, "click") == vec![(0, 3)]
    });

    // Late but within allowed lateness: the window is emitted again, in full.
    accepted(&s, &clicks(&[30_000]));
    wait_until(10, "the re-emitted window", || {
        counts(&s, "click") == vec![(0, 4)]
    });
    let lines: Vec<String> = s.read("metrics.lp").lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [
            "counts,event_type=click count=3i 0",
            "counts,event_type=click count=4i 0"
        ],
        "same series and timestamp: the sink overwrites instead of double-counting"
    );

    // 75 000 moves the watermark to 70 000 = end + lateness: [0, 60 000) is gone.
    accepted(&s, &clicks(&[75_000]));
    accepted(&s, &clicks(&[20_000]));
    wait_until(10, "the late event", || {
        s.read("late.jsonl").contains("\"timestamp\":20000")
    });
    let late: Value = serde_json::from_str(s.read("late.jsonl").lines().next().unwrap()).unwrap();
    assert_eq!(late["plugin"], "counter");
    assert_eq!(late["event"]["timestamp"], 20_000);
    assert_eq!(s.metric("nexuspipe_events_late_total"), 1.0);

    accepted(&s, &clicks(&[125_000]));
    wait_until(10, "the second window", || counts(&s, "click").len() == 2);
    assert_eq!(counts(&s, "click"), vec![(0, 4), (60_000, 3)]);
}

#[test]
fn idle_stream_still_closes_windows() {
    let s = Server::start(&counter_config(
        "out_of_orderness = \"1s\"\nidle_timeout = \"300ms\"",
        1_000,
    ));
    accepted(&s, &clicks(&[10_000, 10_500]));
    // No further event: after the idle timeout event time follows the clock.
    wait_until(10, "the idle advance to close [10 000, 11 000)", || {
        counts(&s, "click") == vec![(10_000, 2)]
    });
}

#[test]
fn restart_keeps_open_windows_and_totals() {
    let mut s = Server::start(&counter_config(
        "out_of_orderness = \"1s\"\nidle_timeout = \"1h\"\ncheckpoint_interval = \"1h\"",
        1_000,
    ));
    // N = 50 clicks, 10 per second of event time; [3000, 5000) is still open at shutdown.
    let before: Vec<i64> = (0..50).map(|i| i * 100).collect();
    accepted(&s, &clicks(&before));
    wait_until(10, "windows before the restart", || {
        counts(&s, "click").len() == 3
    });
    s.restart();
    // M = 30 more, from 4000: they join the window that was open.
    let after: Vec<i64> = (40..70).map(|i| i * 100).collect();
    accepted(&s, &clicks(&after));
    accepted(&s, &json!({"event_type": "flush", "timestamp": 100_000}));
    wait_until(10, "every window after the restart", || {
        counts(&s, "click").len() == 7
    });
    let c = counts(&s, "click");
    assert_eq!(c.iter().map(|(_, n)| n).sum::<i64>(), 80, "N + M: {c:?}");
    assert_eq!(
        c[4],
        (4_000, 20),
        "the window open at shutdown was completed after restart"
    );
    let status = s.stop();
    assert!(status.success());
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let s = Server::start(&format!(
        "[http]\nmax_body = \"4KiB\"\ncors_origins = [\"https://shop.example\"]\n{}",
        counter_config("idle_timeout = \"1h\"", 60_000)
    ));
    let (st, r) = s.post_raw("/v1/events", "application/json", b"{\"event_type\": ", None);
    assert_eq!(st, 400);
    assert!(
        r["error"].as_str().unwrap().contains("malformed JSON"),
        "{r}"
    );

    let (st, r) = s.post(&json!([{"event_type": "a"}, {"event_type": 5}]));
    assert_eq!(st, 400);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("event 1 field `event_type`: expected a string"),
        "{r}"
    );
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("whole batch was rejected"),
        "{r}"
    );
    assert_eq!(r["rejected"][0]["index"], 1);

    let ndjson =
        b"{\"event_type\":\"a\",\"timestamp\":1}\n{\"timestamp\":\"2026-01-01T00:00:00Z\"}\n";
    let (st, r) = s.post_raw("/v1/events", "application/x-ndjson", ndjson, None);
    assert_eq!(st, 400);
    assert_eq!(
        r["error"],
        "line 2 field `event_type`: is required (the whole batch was rejected; use ?partial=true to accept the valid events)"
    );

    let (st, r) = s.post_raw(
        "/v1/events?partial=true",
        "application/x-ndjson",
        ndjson,
        None,
    );
    assert_eq!(st, 202, "{r}");
    assert_eq!(r["accepted"], 1);
    assert_eq!(r["rejected"][0]["line"], 2);

    let (st, r) = s.post(&json!({"event_type": "a", "timestamp": "soon"}));
    assert_eq!(st, 400);
    assert!(
        r["error"].as_str().unwrap().contains("field `timestamp`"),
        "{r}"
    );

    let big = json!([{"event_type": "a", "properties": {"blob": "x".repeat(5000)}}]);
    let (st, r) = s.post(&big);
    assert_eq!(st, 413, "{r}");
    assert!(r["error"].as_str().unwrap().contains("4096 bytes"), "{r}");

    // gzip: accepted; and a gzip bomb is measured after decompression.
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let body = json!([{"event_type": "a"}, {"event_type": "b"}]).to_string();
    let (st, r) = s.post_raw(
        "/v1/events",
        "application/json",
        &gz(body.as_bytes()),
        Some("gzip"),
    );
    assert_eq!((st, r["accepted"].clone()), (202, json!(2)));
    let bomb = gz(big.to_string().as_bytes());
    assert!(bomb.len() < 4096);
    let (st, _) = s.post_raw("/v1/events", "application/json", &bomb, Some("gzip"));
    assert_eq!(st, 413);
    let (st, r) = s.post_raw("/v1/events", "application/json", b"x", Some("br"));
    assert_eq!(st, 415);
    assert!(r["error"].as_str().unwrap().contains("`br`"), "{r}");

    // Existing trackers' payloads on /event.
    for body in [
        json!({"event":"add_to_cart","userId":"user-delta","url":"/products/widget-pro-max-0001"}),
        json!({"site_id":"site123","event_type":"page_view","path":"/home","user_id":"user1"}),
    ] {
        let (st, r) = s.post_raw(
            "/event",
            "application/json",
            body.to_string().as_bytes(),
            None,
        );
        assert_eq!((st, r["accepted"].clone()), (202, json!(1)), "{body}");
    }
    let (st, r) = s.post_raw("/event", "application/json", b"{\"userId\":\"u\"}", None);
    assert_eq!(st, 400);
    assert!(r["error"].as_str().unwrap().contains("`event_type`"), "{r}");

    // CORS for browser trackers.
    let pre = ureq::request("OPTIONS", &s.url("/v1/events"))
        .set("Origin", "https://shop.example")
        .set("Access-Control-Request-Method", "POST")
        .call()
        .unwrap();
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("https://shop.example")
    );

    assert!(s.metric("nexuspipe_events_rejected_total{reason=\"invalid_event\"}") >= 5.0);
    assert_eq!(
        s.metric("nexuspipe_events_rejected_total{reason=\"body_too_large\"}"),
        2.0
    );
}

#[test]
fn full_queue_answers_429_and_loses_nothing() {
    let s = Server::start(&format!(
        "[engine]\nqueue_capacity = 5\nidle_timeout = \"1h\"\n[[plugins]]\nname = \"hostile\"\npath = {:?}\n[plugins.limits]\ndeadline_ms = 1000\n",
        guest("hostile").display().to_string()
    ));
    // The spin keeps the engine busy for 6 s: its 1 s deadline, then the 5 s
    // of the second try.
    accepted(
        &s,
        &json!([{"event_type": "spin"}, {"event_type": "a"}, {"event_type": "b"}]),
    );
    let (st, r) = s.post(&json!([{"event_type": "c"}, {"event_type": "d"}, {"event_type": "e"}]));
    assert_eq!(st, 429, "{r}");
    assert_eq!(r["retry_after_header"], "1");
    assert!(
        r["error"].as_str().unwrap().contains("queue is full"),
        "{r}"
    );
    // Once the engine is free, the retry goes through.
    wait_until(20, "room in the queue", || {
        s.post(&json!({"event_type": "c"})).0 == 202
    });
    wait_until(10, "everything accepted processed", || {
        s.metric("nexuspipe_events_processed_total") == s.metric("nexuspipe_events_accepted_total")
    });
    let dead = s.read("dead-letter.jsonl");
    assert!(dead.contains("\"kind\":\"deadline\""), "{dead}");
    assert_eq!(s.metric("nexuspipe_events_dead_lettered_total"), 3.0);
}

/// How the engine cuts its queue into plugin calls (and the pipeline's
/// stages, enrich-geo, funnel and alerts, each running on a thread of its own
/// a call ahead of the next, which happens once a round holds two or more
/// calls) does not change the output.
#[test]
fn outputs_do_not_depend_on_how_the_engine_batches() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    // 3 000 events over 300 s of event time, a few out of order.
    let generated = std::process::Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args([
            "gen",
            "--rate",
            "3000",
            "--duration",
            "1s",
            "--event-rate",
            "10",
        ])
        .args(["--seed", "11", "--start-ms", "1767225600000", "--output"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3000);
    let run = |batch_size: usize| {
        let mut s = Server::start(&format!("[engine]\nbatch_size = {batch_size}\n"));
        for chunk in lines.chunks(500) {
            let body = chunk.join("\n");
            let (st, r) = s.post_raw("/v1/events", "application/x-ndjson", body.as_bytes(), None);
            assert_eq!(st, 202, "{r}");
        }
        wait_until(30, "every event processed", || {
            s.metric("nexuspipe_events_processed_total") >= 3000.0
        });
        assert!(s.stop().success(), "{}", s.log());
        let sorted = |file: &str| {
            let mut l: Vec<String> = s.read(file).lines().map(str::to_string).collect();
            l.sort();
            l
        };
        (
            sorted("metrics.lp"),
            sorted("alerts.jsonl"),
            sorted("late.jsonl"),
        )
    };
    // One call per request, versus 32 calls per request through the stages.
    let whole = run(4096);
    let pipelined = run(16);
    assert!(whole.0.len() > 20, "windows closed: {:?}", whole.0);
    assert!(!whole.1.is_empty(), "the login bursts raised alerts");
    assert_eq!(whole, pipelined);
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib << 10
}

/// A plugin returning 4096 strings that all point at one 1 MiB buffer of its
/// memory (4 GiB for the host to copy) fails its call under the host's copy
/// limit, again and again, and the server's memory stays flat.
#[test]
fn hostile_outputs_leave_the_servers_memory_flat() {
    let s = Server::start(&format!(
        "[engine]\nidle_timeout = \"1h\"\n[[plugins]]\nname = \"hostile\"\npath = {:?}\n[plugins.limits]\nbreaker_failures = 1000\n",
        guest("hostile").display().to_string()
    ));
    let pid = s.child.id();
    // One call each: every post is processed before the next is sent.
    let round = |n: usize| {
        for _ in 0..n {
            accepted(&s, &json!([{"event_type": "alias"}]));
            s.wait_idle();
        }
    };
    round(5);
    let before = rss(pid);
    round(40);
    let after = rss(pid);
    assert_eq!(
        s.metric("nexuspipe_plugin_failures_total{plugin=\"hostile\"}"),
        45.0
    );
    assert_eq!(s.metric("nexuspipe_events_dead_lettered_total"), 45.0);
    assert!(
        s.read("dead-letter.jsonl").contains("max_output_bytes"),
        "the cause names the limit"
    );
    assert!(
        after < before + (48 << 20),
        "RSS grew from {} MiB to {} MiB over 40 hostile calls",
        before >> 20,
        after >> 20
    );
}

/// One event from the far future must not move event time for everyone:
/// it is refused (with the rest of its batch kept under `?partial=true`),
/// and every output equals that of the stream without it.
#[test]
fn a_far_future_event_changes_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let generated = std::process::Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args([
            "gen",
            "--rate",
            "2000",
            "--duration",
            "1s",
            "--event-rate",
            "10",
        ])
        .args(["--seed", "5", "--start-ms", "1767225600000", "--output"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let poison = [
        r#"{"event_type":"page_view","timestamp":9e15,"user_id":"u-far"}"#,
        r#"{"event_type":"page_view","timestamp":"9999-12-31T23:59:59Z","user_id":"u-far"}"#,
        r#"{"event_type":"page_view","timestamp":-5,"user_id":"u-far"}"#,
        r#"{"event_type":"page_view","timestamp":"99999999999999999999","user_id":"u-far"}"#,
    ];
    let run = |with_poison: bool| {
        let mut s = Server::start("[engine]\nidle_timeout = \"1h\"\n");
        for (i, chunk) in lines.chunks(250).enumerate() {
            let mut body: Vec<&str> = chunk.to_vec();
            if with_poison && i == 3 {
                body.splice(100..100, poison);
            }
            let (st, r) = s.post_raw(
                "/v1/events?partial=true",
                "application/x-ndjson",
                body.join("\n").as_bytes(),
                None,
            );
            assert_eq!(st, 202, "{r}");
            assert_eq!(r["accepted"], chunk.len(), "{r}");
            if with_poison && i == 3 {
                let rejected = r["rejected"].as_array().unwrap();
                assert_eq!(rejected.len(), 4, "{r}");
                for (k, rej) in rejected.iter().enumerate() {
                    assert_eq!(rej["line"], 101 + k, "{r}");
                    assert_eq!(rej["field"], "timestamp", "{r}");
                }
                let msg = |k: usize| rejected[k]["message"].as_str().unwrap().to_string();
                assert!(
                    msg(0).contains("after 9999-12-31T23:59:59.999Z"),
                    "{}",
                    msg(0)
                );
                assert!(msg(1).contains("engine.max_future"), "{}", msg(1));
                assert!(msg(2).contains("before 1970"), "{}", msg(2));
                assert!(msg(3).contains("does not fit in 64-bit"), "{}", msg(3));
            }
        }
        wait_until(30, "every event processed", || {
            s.metric("nexuspipe_events_processed_total") >= lines.len() as f64
        });
        if with_poison {
            assert_eq!(
                s.metric("nexuspipe_events_rejected_total{reason=\"timestamp_too_far_ahead\"}"),
                1.0
            );
            assert_eq!(
                s.metric("nexuspipe_events_rejected_total{reason=\"timestamp_out_of_range\"}"),
                3.0
            );
        }
        assert!(s.stop().success(), "{}", s.log());
        let sorted = |file: &str| {
            let mut l: Vec<String> = s.read(file).lines().map(str::to_string).collect();
            l.sort();
            l
        };
        (
            sorted("metrics.lp"),
            sorted("alerts.jsonl"),
            sorted("late.jsonl"),
        )
    };
    let clean = run(false);
    assert!(clean.0.len() > 20, "windows closed: {:?}", clean.0);
    assert_eq!(run(true), clean);
    // A whole batch is refused without `?partial=true`, naming the line.
    let s = Server::start("");
    let (st, r) = s.post_raw(
        "/v1/events",
        "application/x-ndjson",
        format!("{}\n{}", lines[0], poison[0]).as_bytes(),
        None,
    );
    assert_eq!(st, 400, "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("line 2 field `timestamp`"),
        "{r}"
    );
}

/// What the browser tracker relies on: a batch sent again (its answer was
/// lost) is acknowledged and not counted again, before and after a restart;
/// `text/plain` bodies (a CORS simple request) hold JSON as well.
#[test]
fn a_retried_event_is_counted_once_through_restarts() {
    let mut s = Server::start(&counter_config(
        "out_of_orderness = \"1s\"\nidle_timeout = \"1h\"\ncheckpoint_interval = \"1h\"",
        1_000,
    ));
    let with_ids = |range: std::ops::Range<i64>| {
        Value::Array(
            range
                .map(|i| json!({"event_id": format!("e{i}"), "event_type": "click", "timestamp": i * 100}))
                .collect(),
        )
    };
    let plain = |s: &Server, body: &Value| {
        let (status, resp) = s.post_raw(
            "/v1/events",
            "text/plain;charset=UTF-8",
            body.to_string().as_bytes(),
            None,
        );
        assert_eq!(status, 202, "{resp}");
    };
    // Ten events, then the same ten again; three without ids, twice.
    plain(&s, &with_ids(0..10));
    plain(&s, &with_ids(0..10));
    let anonymous = clicks(&[2_000, 2_100, 2_200]);
    plain(&s, &anonymous);
    plain(&s, &anonymous);
    s.wait_idle();
    assert_eq!(s.metric("nexuspipe_events_duplicate_total"), 10.0);
    assert_eq!(s.metric("nexuspipe_events_accepted_total"), 26.0);
    s.restart();
    // The first ten once more after the restart, and five new ones.
    plain(&s, &with_ids(0..15));
    accepted(&s, &json!({"event_type": "flush", "timestamp": 100_000}));
    s.wait_idle();
    assert_eq!(s.metric("nexuspipe_events_duplicate_total"), 10.0);
    wait_until(10, "every window", || counts(&s, "click").len() == 3);
    assert_eq!(
        counts(&s, "click"),
        vec![(0, 10), (1_000, 5), (2_000, 6)],
        "each id once; events without an id are all counted"
    );
    assert!(s.stop().success());
}
