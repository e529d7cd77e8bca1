//! `nexuspipe replay`: the configured pipeline over a file of events gives
//! what the live server gave for the same events; `--plugins`, `--start`
//! and `--end` narrow it.

use crate::durability::alert_set;
use crate::sinks::{expected_points, known_stream, post_all, wait_processed};
use crate::support::{Server, plugin_dir, workspace_root, write_ndjson};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs `nexuspipe <args>` (a replay or a one-shot job) to its end, which
/// must be a success; its summary (the JSON line on stdout).
pub(crate) fn summary(args: &[&std::ffi::OsStr]) -> Value {
    summary_and_stderr(args).0
}

/// As [`summary`], with what the command wrote on stderr.
fn summary_and_stderr(args: &[&std::ffi::OsStr]) -> (Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args(args)
        .env(
            "NEXUSPIPE_CACHE_DIR",
            workspace_root().join("target/test-cache"),
        )
        .env("NEXUSPIPE_PLUGIN_DIR", plugin_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nexuspipe {args:?} failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summary = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("summary: {e}: {stdout} {stderr}"));
    (summary, stderr.into_owned())
}

/// `nexuspipe replay <args>`: its summary.
fn replay(args: &[&std::ffi::OsStr]) -> Value {
    summary(&[&["replay".as_ref()], args].concat())
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

#[test]
fn a_replay_of_the_live_events_gives_the_live_points_and_alerts() {
    let events = known_stream(31);
    let config = "[engine]\nidle_timeout = \"1h\"\ndurability = \"memory\"\n";
    let mut live = Server::start(config);
    post_all(&live, &events, 500, Duration::ZERO);
    wait_processed(&live, events.len());
    assert!(live.stop().success());
    let want_points = expected_points(&live.read("metrics.lp"));
    let want_alerts = alert_set(&live.read("alerts.jsonl"));
    assert!(!want_points.is_empty() && !want_alerts.is_empty());

    // The same events, gzipped NDJSON, through the same pipeline.
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("events.ndjson");
    write_ndjson(&plain, &events);
    let gz = dir.path().join("events.ndjson.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(&std::fs::read(&plain).unwrap()).unwrap();
    enc.finish().unwrap();
    let cfg = dir.path().join("nexuspipe.toml");
    std::fs::write(&cfg, "[engine]\nidle_timeout = \"1h\"\n").unwrap();
    let out = dir.path().join("out");
    let summary = replay(&[
        "--from".as_ref(),
        gz.as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--data-dir".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(summary["events"], events.len(), "{summary}");
    assert_eq!(summary["invalid"], 0, "{summary}");
    assert_eq!(expected_points(&read(&out, "metrics.lp")), want_points);
    assert_eq!(alert_set(&read(&out, "alerts.jsonl")), want_alerts);

    // Only the alerts plugin, over the middle of the stream's event time.
    let ts: Vec<i64> = events
        .iter()
        .map(|e| e["timestamp"].as_i64().unwrap())
        .collect();
    let (from, to) = (ts[ts.len() / 3], ts[2 * ts.len() / 3]);
    let inside = ts.iter().filter(|&&t| t >= from && t < to).count();
    let narrow = dir.path().join("narrow");
    let summary = replay(&[
        "--from".as_ref(),
        plain.as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--data-dir".as_ref(),
        narrow.as_os_str(),
        "--plugins".as_ref(),
        "alerts".as_ref(),
        "--start".as_ref(),
        from.to_string().as_ref(),
        "--end".as_ref(),
        to.to_string().as_ref(),
    ]);
    assert_eq!(summary["events"], inside, "{summary}");
    assert_eq!(summary["outside_range"], events.len() - inside, "{summary}");
    // No aggregator ran: no points, while alerts of that span came.
    assert_eq!(read(&narrow, "metrics.lp"), "");
    assert!(summary["alerts"].as_u64().unwrap() > 0, "{summary}");

    // A plugin the pipeline does not have is named, with those it has.
    let bad = Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args(["replay", "--plugins", "nope", "--from"])
        .arg(&plain)
        .env("NEXUSPIPE_PLUGIN_DIR", plugin_dir())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("\"nope\"") && err.contains("enrich-geo, funnel, alerts"),
        "{err}"
    );
}

/// `run --source`: a one-shot job over a file closes every window when the
/// file ends, then exits. Counts worked out by hand: the last minute's
/// window closes only because the input ended.
#[test]
fn a_job_over_a_file_closes_every_window_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    let at = |ms: i64, t: &str| serde_json::json!({"event_type": t, "timestamp": t0 + ms});
    let events = [
        at(1_000, "page_view"),
        at(2_000, "page_view"),
        at(3_000, "page_view"),
        at(61_000, "click"),
        at(62_000, "click"),
        at(121_000, "purchase"),
    ];
    let file = dir.path().join("events.ndjson");
    write_ndjson(&file, &events);
    let data = dir.path().join("data");
    let cfg = dir.path().join("job.toml");
    std::fs::write(
        &cfg,
        format!(
            "[engine]\ndata_dir = {:?}\nout_of_orderness = \"0s\"\nidle_timeout = \"1h\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let source = format!("file://{}", file.display());
    let job = summary(&[
        "run".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--source".as_ref(),
        source.as_ref(),
    ]);
    // The last value of each (event type, window) of the `events` measurement.
    let counts = |data: &Path| {
        let mut got = std::collections::BTreeMap::new();
        for line in read(data, "metrics.lp").lines() {
            let Some(rest) = line.strip_prefix("events,event_type=") else {
                continue;
            };
            let mut parts = rest.split(' ');
            let (t, count, ts) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            let count: i64 = count
                .strip_prefix("count=")
                .unwrap()
                .trim_end_matches('i')
                .parse()
                .unwrap();
            got.insert((t.to_string(), ts.parse::<i64>().unwrap() - t0), count);
        }
        got
    };
    let mut want: std::collections::BTreeMap<(String, i64), i64> = [
        (("page_view".to_string(), 0), 3),
        (("click".to_string(), 60_000), 2),
        (("purchase".to_string(), 120_000), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts(&data), want, "{job}");

    // `replay --close` does the same; a replay without it leaves the last
    // window open, as the live run the events came from would.
    for (close, dir_name) in [(true, "closed"), (false, "open")] {
        let out = dir.path().join(dir_name);
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--from".as_ref(),
            file.as_os_str(),
            "--config".as_ref(),
            cfg.as_os_str(),
            "--data-dir".as_ref(),
            out.as_os_str(),
        ];
        if close {
            args.push("--close".as_ref());
        } else {
            want.remove(&("purchase".to_string(), 120_000));
        }
        let summary = replay(&args);
        assert_eq!(counts(&out), want, "close: {close}: {summary}");
    }
}

/// A file of 20 000 events (over 8 MiB) with three bad lines, one near its
/// start and two far past it (one not UTF-8): every valid event is
/// replayed, and each bad line is skipped and named by its number in the file.
#[test]
fn a_replay_names_bad_lines_and_reads_every_other_one() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("gen.ndjson");
    let status = Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args(["gen", "--rate", "2000", "--duration", "10s", "--seed", "5"])
        .args(["--start-ms", "1767225600000", "--output"])
        .arg(&generated)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mut lines: Vec<String> = std::fs::read_to_string(&generated)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let valid = lines.len();
    // Lines 2, 10 000 and 15 000 of the file.
    lines.insert(1, "{\"event_type\": 7}".to_string());
    lines.insert(9_999, "NOT-UTF-8".to_string());
    lines.insert(14_999, "not json".to_string());
    let file = dir.path().join("events.ndjson");
    let mut bytes = Vec::new();
    for line in &lines {
        if line == "NOT-UTF-8" {
            bytes.extend_from_slice(b"{\"event_type\": \"caf\xe9\"}");
        } else {
            bytes.extend_from_slice(line.as_bytes());
        }
        bytes.push(b'\n');
    }
    std::fs::write(&file, bytes).unwrap();
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size > 8 << 20, "{size} bytes");
    let out = dir.path().join("out");
    let (summary, stderr) = summary_and_stderr(&[
        "replay".as_ref(),
        "--from".as_ref(),
        file.as_os_str(),
        "--data-dir".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(summary["events"], valid, "{summary}");
    assert_eq!(summary["invalid"], 3, "{summary}");
    assert!(stderr.contains("line 2: skipped: event_type"), "{stderr}");
    assert!(
        stderr.contains("line 10000: skipped: not UTF-8"),
        "{stderr}"
    );
    assert!(stderr.contains("line 15000: skipped:"), "{stderr}");
}
