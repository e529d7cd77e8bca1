//! Plugins in Python, JavaScript and C (`examples/plugins/`), built by
//! `examples/plugins/build.sh`, through `nexuspipe plugin run` and through
//! `nexuspipe run` with HTTP ingest. Each is also run beside its Rust (SDK)
//! twin on the same input: same logic, same output.
//!
//! The build needs the toolchains of `.ci/install-plugin-toolchains.sh`; a
//! missing one fails these tests, it never skips them.

use crate::support::{
    Server, event_json, final_points, parse_ndjson, wait_until, workspace_root, write_ndjson,
};
use nexuspipe::event::format_timestamp;
use nexuspipe::runtime::{MetricPoint, Value};
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The examples compiled by `plugin run` and `run` share this cache with the
/// server tests, so each component is compiled once per machine.
fn cache_dir() -> PathBuf {
    workspace_root().join("target/test-cache")
}

/// Path of an example's component, running `examples/plugins/build.sh` once.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = workspace_root();
        let status = Command::new("bash")
            .arg(root.join("examples/plugins/build.sh"))
            .current_dir(&root)
            // The outer cargo's flags are for the host target, not wasm.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("running examples/plugins/build.sh");
        assert!(
            status.success(),
            "examples/plugins/build.sh failed; install the toolchains with \
             .ci/install-plugin-toolchains.sh"
        );
        let dir = root.join("target/examples");
        // Compile each component into the shared cache now, one at a time,
        // instead of in several tests (and servers) at once.
        for n in ["python-bot-filter", "js-scroll-depth", "c-error-spike"] {
            let out = nexuspipe(
                &[
                    "plugin",
                    "check",
                    dir.join(format!("{n}.wasm")).to_str().unwrap(),
                ],
                &root,
            );
            assert!(out.status.success(), "plugin check {n}: {}", stderr(&out));
        }
        dir
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

fn nexuspipe(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args(args)
        .current_dir(cwd)
        .env("NEXUSPIPE_CACHE_DIR", cache_dir())
        .output()
        .expect("running nexuspipe")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `nexuspipe plugin run <example> --input <input> --data-dir <dir>/<name>-data [extra...]`;
/// returns the NDJSON outputs, panicking if the run fails.
fn plugin_run(dir: &Path, name: &str, input: &Path, extra: &[&str]) -> Vec<Json> {
    let out = plugin_run_raw(dir, name, input, extra);
    assert!(out.status.success(), "plugin run {name}: {}", stderr(&out));
    parse_ndjson(&String::from_utf8(out.stdout).unwrap())
}

fn plugin_run_raw(dir: &Path, name: &str, input: &Path, extra: &[&str]) -> Output {
    let plugin = example(name);
    let data = dir.join(format!("{name}-data"));
    let mut args = vec![
        "plugin",
        "run",
        plugin.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    nexuspipe(&args, dir)
}

/// Event ids in `<dir>/<name>-data/late.jsonl`.
fn late_ids(dir: &Path, name: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(dir.join(format!("{name}-data/late.jsonl"))).unwrap_or_default();
    parse_ndjson(&text)
        .iter()
        .map(|l| {
            assert_eq!(l["plugin"], name);
            l["event"]["event_id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// 2026-01-01T00:00:00Z: a minute boundary.
const T0: i64 = 1_767_225_600_000;
const MINUTE: i64 = 60_000;

fn window_start(ts: i64) -> i64 {
    ts - ts.rem_euclid(MINUTE)
}

// ---------------------------------------------------------------- python-bot-filter

/// User agents and the part of them a default pattern matches (lowercased);
/// `None` for browsers used by people.
const USER_AGENTS: &[(&str, Option<&str>)] = &[
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
        None,
    ),
    (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        Some("bot"),
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/126.0 Safari/537.36",
        Some("headless"),
    ),
    ("curl/8.5.0", Some("curl/")),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        None,
    ),
    ("python-requests/2.32.3", Some("python-requests")),
    (
        "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
        Some("bot"),
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
        None,
    ),
    ("Scrapy/2.11 (+https://scrapy.org)", Some("scrapy")),
    (
        "Mozilla/5.0 (compatible; Lighthouse) Chrome/126.0",
        Some("lighthouse"),
    ),
];

/// An in-house uptime probe: a bot only with the extra pattern of the config.
const PROBE_UA: &str = "nexuspipe-probe/1.0";

/// One page view per user agent, the probe, then one without a user agent.
fn bot_input() -> Vec<Json> {
    let mut events: Vec<Json> = USER_AGENTS
        .iter()
        .map(|(ua, _)| *ua)
        .chain([PROBE_UA])
        .enumerate()
        .map(|(i, ua)| {
            event_json(
                "page_view",
                T0 + i as i64 * 1_000,
                json!({"event_id": format!("e{i}"), "properties": {"path": "/"},
                       "metadata": {"user_agent": ua}}),
            )
        })
        .collect();
    events.push(event_json(
        "click",
        T0 + 60_000,
        json!({"event_id": "no-ua", "properties": {"path": "/"}}),
    ));
    events
}

/// An input event as `plugin run` prints it (canonical JSON), plus `set` properties.
fn canonical(e: &Json, set: &[(&str, Json)]) -> Json {
    let mut out = e.clone();
    out.as_object_mut()
        .unwrap()
        .entry("metadata")
        .or_insert_with(|| json!({}));
    for (k, v) in set {
        out["properties"][*k] = v.clone();
    }
    out
}

#[test]
fn python_bot_filter_drops_or_tags_bots() {
    let dir = tempfile::tempdir().unwrap();
    let events = bot_input();
    let input = dir.path().join("in.ndjson");
    write_ndjson(&input, &events);
    let bot_match = |e: &Json| -> Option<String> {
        let ua = e["metadata"]["user_agent"].as_str()?;
        if ua == PROBE_UA {
            return Some("nexuspipe-probe/".into());
        }
        let (_, m) = USER_AGENTS.iter().find(|(u, _)| *u == ua).unwrap();
        m.map(str::to_string)
    };

    // Default config: bots dropped; the probe and the event without a user agent kept.
    let expected: Vec<Json> = events
        .iter()
        .filter(|e| e["metadata"]["user_agent"] == PROBE_UA || bot_match(e).is_none())
        .map(|e| canonical(e, &[]))
        .collect();
    assert_eq!(expected.len(), 5, "3 browsers, the probe, no user agent");
    let out = plugin_run(dir.path(), "python-bot-filter", &input, &[]);
    assert_eq!(out, expected);
    assert_eq!(
        out,
        plugin_run(dir.path(), "rust-bot-filter", &input, &[]),
        "the Rust twin agrees"
    );

    // Tagging, an extra pattern, and events without a user agent dropped.
    let config = write_file(
        dir.path(),
        "tag.json",
        r#"{"action": "tag", "extra_patterns": ["^nexuspipe-probe/"], "drop_missing": true}"#,
    );
    let expected: Vec<Json> = events
        .iter()
        .filter(|e| e["metadata"]["user_agent"].is_string())
        .map(|e| match bot_match(e) {
            Some(m) => canonical(e, &[("is_bot", json!(true)), ("bot_match", json!(m))]),
            None => canonical(e, &[]),
        })
        .collect();
    let args = ["--config", config.to_str().unwrap()];
    let out = plugin_run(dir.path(), "python-bot-filter", &input, &args);
    assert_eq!(out, expected);
    assert_eq!(
        out,
        plugin_run(dir.path(), "rust-bot-filter", &input, &args)
    );

    // A bad pattern is refused at init, naming it.
    let bad = write_file(
        dir.path(),
        "bad.json",
        r#"{"patterns": ["bot", "(unclosed"]}"#,
    );
    let out = plugin_run_raw(
        dir.path(),
        "python-bot-filter",
        &input,
        &["--config", bad.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("patterns[1]"), "{}", stderr(&out));
}

// ---------------------------------------------------------------- js-scroll-depth

/// Scroll events over four minutes on three pages (one page named by its URL
/// only), with events the plugin must ignore, then one event for the first
/// minute long after it closed.
fn scroll_input() -> Vec<Json> {
    let pages = ["/", "/pricing", "/blog/wasm-plugins"];
    let mut events = Vec::new();
    for i in 0..40i64 {
        let ts = T0 + 1_000 + i * 5_900;
        let id = format!("s{i}");
        // Integers and floats: both are numbers.
        let depth = if i % 3 == 0 {
            json!((i * 37 % 100) as f64 + 0.5)
        } else {
            json!(i * 37 % 101)
        };
        let e = if i % 5 == 4 {
            // No path property: the page comes from the URL, query and fragment cut off.
            json!({"event_id": id, "properties": {"depth": depth},
                   "metadata": {"url": "https://shop.example/checkout?step=2#pay"}})
        } else {
            json!({"event_id": id, "properties": {"path": pages[i as usize % 3], "depth": depth}})
        };
        events.push(event_json("scroll", ts, e));
        if i % 7 == 0 {
            // Ignored: another event type, a scroll without a numeric depth.
            events.push(event_json(
                "click",
                ts,
                json!({"event_id": format!("c{i}"), "properties": {"path": "/", "depth": 10}}),
            ));
            events.push(event_json(
                "scroll",
                ts,
                json!({"event_id": format!("x{i}"), "properties": {"path": "/", "depth": "deep"}}),
            ));
        }
    }
    events.push(event_json(
        "scroll",
        T0 + 2_000,
        json!({"event_id": "late", "properties": {"path": "/pricing", "depth": 100}}),
    ));
    events
}

fn scroll_page(e: &Json) -> String {
    match e["properties"]["path"].as_str() {
        Some(p) => p.to_string(),
        None => "/checkout".into(),
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Depth {
    sum: f64,
    max: f64,
    count: i64,
}

/// The usable scroll events of `events`, split into accepted and late as the
/// host's watermark (newest event time - `bound`, per event) and `lateness` decide.
fn scroll_windows(
    events: &[Json],
    bound: i64,
    lateness: i64,
) -> (BTreeMap<(i64, String), Depth>, Vec<String>) {
    let mut windows: BTreeMap<(i64, String), Depth> = BTreeMap::new();
    let mut late = Vec::new();
    let mut max_ts = i64::MIN;
    for e in events {
        let ts = e["timestamp"].as_i64().unwrap();
        let watermark = max_ts.saturating_sub(bound);
        max_ts = max_ts.max(ts);
        let Some(depth) = e["properties"]["depth"].as_f64() else {
            continue;
        };
        if e["event_type"] != "scroll" {
            continue;
        }
        if window_start(ts) + MINUTE + lateness <= watermark {
            late.push(e["event_id"].as_str().unwrap().to_string());
            continue;
        }
        let w = windows
            .entry((window_start(ts), scroll_page(e)))
            .or_default();
        w.max = if w.count == 0 {
            depth
        } else {
            w.max.max(depth)
        };
        w.sum += depth;
        w.count += 1;
    }
    (windows, late)
}

fn depth_point(start: i64, page: &str, d: &Depth) -> Json {
    json!({
        "measurement": "scroll_depth",
        "tags": {"page": page},
        "fields": {"avg": d.sum / d.count as f64, "max": d.max, "count": d.count},
        "timestamp": start,
    })
}

#[test]
fn js_scroll_depth_averages_per_page_and_minute() {
    let dir = tempfile::tempdir().unwrap();
    let events = scroll_input();
    let input = dir.path().join("in.ndjson");
    write_ndjson(&input, &events);

    // No allowed lateness: the last event's minute closed long ago.
    let (windows, late) = scroll_windows(&events, 5_000, 0);
    assert_eq!(late, ["late"]);
    assert_eq!(windows.len(), 16, "4 minutes x 4 pages");
    let expected: Vec<Json> = windows
        .iter()
        .map(|((start, page), d)| depth_point(*start, page, d))
        .collect();
    let out = plugin_run(dir.path(), "js-scroll-depth", &input, &[]);
    assert_eq!(out, expected);
    assert_eq!(late_ids(dir.path(), "js-scroll-depth"), late);
    assert_eq!(
        out,
        plugin_run(dir.path(), "rust-scroll-depth", &input, &[])
    );

    // Within allowed lateness the late event updates its closed window, which
    // is emitted again in full (same series and timestamp: the sink overwrites).
    let lateness = "240000";
    let (windows, late) = scroll_windows(&events, 5_000, 240_000);
    assert!(late.is_empty());
    let args = ["--allowed-lateness", lateness];
    let out = plugin_run(dir.path(), "js-scroll-depth", &input, &args);
    let mut last: BTreeMap<(i64, String), Json> = BTreeMap::new();
    let mut emitted: BTreeMap<(i64, String), usize> = BTreeMap::new();
    for p in &out {
        let key = (
            p["timestamp"].as_i64().unwrap(),
            p["tags"]["page"].as_str().unwrap().to_string(),
        );
        *emitted.entry(key.clone()).or_default() += 1;
        last.insert(key, p.clone());
    }
    let expected: BTreeMap<(i64, String), Json> = windows
        .iter()
        .map(|((start, page), d)| ((*start, page.clone()), depth_point(*start, page, d)))
        .collect();
    assert_eq!(last, expected);
    let late_window = (T0, "/pricing".to_string());
    assert_eq!(emitted[&late_window], 2, "emitted when closed, then again");
    assert_eq!(
        emitted.values().sum::<usize>(),
        windows.len() + 1,
        "every other window once"
    );
    assert_eq!(
        out,
        plugin_run(dir.path(), "rust-scroll-depth", &input, &args)
    );
}

// ---------------------------------------------------------------- c-error-spike

const THRESHOLD: i64 = 3;

/// Errors per service per minute (`None`: events without a `service`).
const ERRORS: &[(Option<&str>, [i64; 5])] = &[
    (Some("payments"), [6, 5, 0, 0, 7]),
    (Some("search"), [2, 4, 1, 0, 0]),
    (Some("auth"), [3, 3, 3, 3, 3]),
    (None, [0, 0, 0, 9, 0]),
];

/// The errors of [`ERRORS`] in event-time order, then one for minute 0 that
/// arrives after that minute closed for good.
fn error_input() -> Vec<Json> {
    let mut events = Vec::new();
    for minute in 0..5 {
        for k in 0..10 {
            for (service, counts) in ERRORS {
                if k < counts[minute] {
                    let ts = T0 + minute as i64 * MINUTE + 1_000 + k * 5_000;
                    let mut e = json!({"event_id": format!("err{}", events.len())});
                    if let Some(s) = service {
                        e["properties"] = json!({"service": s});
                    }
                    events.push(event_json("error", ts, e));
                }
            }
        }
    }
    events.push(event_json(
        "error",
        T0 + 2_000,
        json!({"event_id": "late", "properties": {"service": "payments"}}),
    ));
    events
}

/// FNV-1a (64 bits) of rule, 0, key, 0, starts_at (little endian): the
/// fingerprint scheme of the bundled alerts plugin.
fn fnv_fingerprint(rule: &str, key: &str, starts_at: i64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut bytes = rule.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(key.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&starts_at.to_le_bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn spike_alert(key: &str, starts_at: i64, count: i64, ends_at: Option<i64>) -> Json {
    let (status, summary) = match ends_at {
        None => (
            "firing",
            format!("{count} error events for {key} in 1m (threshold {THRESHOLD})"),
        ),
        Some(_) => (
            "resolved",
            format!("error events for {key} back to at most {THRESHOLD} per 1m"),
        ),
    };
    json!({
        "rule_id": "error_spike",
        "key": key,
        "status": status,
        "severity": "critical",
        "summary": summary,
        "labels": {"rule": "error_spike", "service": key},
        "starts_at": format_timestamp(starts_at),
        "ends_at": ends_at.map(format_timestamp),
        "fingerprint": fnv_fingerprint("error_spike", key, starts_at),
    })
}

/// Per service, each run of consecutive minutes over the threshold is one
/// episode: firing from its first minute, resolved at the end of its last.
fn expected_spikes(errors: &[(Option<&str>, [i64; 5])]) -> Vec<Json> {
    let mut out = Vec::new();
    for (service, counts) in errors {
        let key = service.unwrap_or("unknown");
        let mut minute = 0;
        while minute < counts.len() {
            if counts[minute] <= THRESHOLD {
                minute += 1;
                continue;
            }
            let first = minute;
            while minute < counts.len() && counts[minute] > THRESHOLD {
                minute += 1;
            }
            let starts_at = T0 + first as i64 * MINUTE;
            out.push(spike_alert(key, starts_at, counts[first], None));
            out.push(spike_alert(
                key,
                starts_at,
                0,
                Some(T0 + minute as i64 * MINUTE),
            ));
        }
    }
    out
}

/// Alerts in a stable order for comparison: by start, key, firing first.
fn sorted(mut alerts: Vec<Json>) -> Vec<Json> {
    alerts.sort_by_key(|a| {
        (
            a["starts_at"].as_str().unwrap().to_string(),
            a["key"].as_str().unwrap().to_string(),
            a["status"] != "firing",
        )
    });
    alerts
}

#[test]
fn c_error_spike_fires_and_resolves_per_service() {
    let dir = tempfile::tempdir().unwrap();
    let events = error_input();
    let input = dir.path().join("in.ndjson");
    write_ndjson(&input, &events);
    let config = write_file(
        dir.path(),
        "spike.conf",
        &format!("threshold={THRESHOLD}, window=1m\nseverity=critical"),
    );
    let args = ["--config", config.to_str().unwrap()];

    let out = plugin_run(dir.path(), "c-error-spike", &input, &args);
    let expected = expected_spikes(ERRORS);
    // payments twice (minutes 0-1 and 4), search once (minute 1), the events
    // without a service once (minute 3); auth never exceeds 3.
    assert_eq!(expected.len(), 8);
    assert_eq!(sorted(out.clone()), sorted(expected));
    assert_eq!(late_ids(dir.path(), "c-error-spike"), ["late"]);
    assert_eq!(
        out,
        plugin_run(dir.path(), "rust-error-spike", &input, &args),
        "the Rust twin agrees, in the same order"
    );

    // A bad value is refused at init, naming the key.
    let bad = write_file(dir.path(), "bad.conf", "threshold=many");
    let out = plugin_run_raw(
        dir.path(),
        "c-error-spike",
        &input,
        &["--config", bad.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("threshold: expected a non-negative integer"),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------- nexuspipe run

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const CRAWLER: &str = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)";

/// A scroll (`depth` set) or error (`service` set) event from a browser or a crawler.
fn http_event(ts: i64, id: &str, ua: &str, props: Json) -> Json {
    let event_type = if props.get("depth").is_some() {
        "scroll"
    } else {
        "error"
    };
    json!({"event_id": id, "event_type": event_type, "timestamp": ts, "properties": props,
           "metadata": {"user_agent": ua}})
}

fn post_ok(s: &Server, body: &Json) {
    let (status, resp) = s.post(body);
    assert_eq!(status, 202, "{resp}");
}

#[test]
fn three_languages_in_one_pipeline_over_http_across_a_restart() {
    let config = format!(
        "[engine]\nout_of_orderness = \"5s\"\nidle_timeout = \"1h\"\ncheckpoint_interval = \"1h\"\n\
         [[plugins]]\nname = \"bots\"\npath = {:?}\n\
         [[plugins]]\nname = \"scroll\"\npath = {:?}\n\
         [[plugins]]\nname = \"spikes\"\npath = {:?}\nconfig = \"threshold={THRESHOLD} severity=critical\"\n",
        example("python-bot-filter").display().to_string(),
        example("js-scroll-depth").display().to_string(),
        example("c-error-spike").display().to_string(),
    );
    let mut s = Server::start(&config);

    // Minute 0, before the restart: people and a crawler scroll and fail.
    let mut before = Vec::new();
    for i in 0..6i64 {
        let ts = T0 + 1_000 + i * 4_000;
        let page = if i % 2 == 0 { "/" } else { "/pricing" };
        before.push(http_event(
            ts,
            &format!("b{i}"),
            BROWSER,
            json!({"path": page, "depth": 10 * (i + 1)}),
        ));
        before.push(http_event(
            ts,
            &format!("bc{i}"),
            CRAWLER,
            json!({"path": page, "depth": 100}),
        ));
    }
    for i in 0..3i64 {
        let ts = T0 + 2_000 + i * 5_000;
        before.push(http_event(
            ts,
            &format!("be{i}"),
            BROWSER,
            json!({"service": "payments"}),
        ));
        before.push(http_event(
            ts,
            &format!("bce{i}"),
            CRAWLER,
            json!({"service": "search"}),
        ));
    }
    before.sort_by_key(|e| e["timestamp"].as_i64().unwrap());
    post_ok(&s, &Json::Array(before.clone()));

    // SIGTERM drains the queue and checkpoints; the new process restores the
    // open windows and counts through each plugin's snapshot and restore.
    s.restart();

    // Minute 0 continues; minute 1 starts; then an event that closes both.
    let mut after = Vec::new();
    for i in 0..4i64 {
        let ts = T0 + 40_000 + i * 5_000;
        let page = if i % 2 == 0 { "/" } else { "/docs" };
        after.push(http_event(
            ts,
            &format!("a{i}"),
            BROWSER,
            json!({"path": page, "depth": 7 * (i + 3)}),
        ));
    }
    after.push(http_event(
        T0 + 50_000,
        "ae0",
        BROWSER,
        json!({"service": "payments"}),
    ));
    after.push(http_event(
        T0 + 51_000,
        "ace0",
        CRAWLER,
        json!({"service": "search"}),
    ));
    for i in 0..3i64 {
        after.push(http_event(
            T0 + MINUTE + 3_000 + i * 1_000,
            &format!("a1-{i}"),
            BROWSER,
            json!({"path": "/", "depth": 33 + i}),
        ));
    }
    post_ok(&s, &Json::Array(after.clone()));
    let closer = T0 + 10 * MINUTE;
    post_ok(
        &s,
        &json!({"event_type": "tick", "timestamp": closer, "metadata": {"user_agent": BROWSER}}),
    );

    // Expected: what the crawler sent is gone before scroll-depth and error-spike see it.
    let people: Vec<&Json> = before
        .iter()
        .chain(&after)
        .filter(|e| e["metadata"]["user_agent"] == BROWSER)
        .collect();
    let mut windows: BTreeMap<(i64, String), Depth> = BTreeMap::new();
    let mut errors: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for e in &people {
        let start = window_start(e["timestamp"].as_i64().unwrap());
        if let Some(depth) = e["properties"]["depth"].as_f64() {
            let w = windows.entry((start, scroll_page(e))).or_default();
            w.max = if w.count == 0 {
                depth
            } else {
                w.max.max(depth)
            };
            w.sum += depth;
            w.count += 1;
        } else {
            let service = e["properties"]["service"].as_str().unwrap().to_string();
            *errors.entry((start, service)).or_default() += 1;
        }
    }
    let expected_lp: String = windows
        .iter()
        .map(|((start, page), d)| {
            nexuspipe::lineproto::to_line(&MetricPoint {
                measurement: "scroll_depth".into(),
                tags: vec![("page".into(), page.clone())],
                fields: vec![
                    ("avg".into(), Value::Float(d.sum / d.count as f64)),
                    ("max".into(), Value::Float(d.max)),
                    ("count".into(), Value::Int(d.count)),
                ],
                timestamp: *start,
            })
        })
        .collect();
    let expected_points = final_points(&expected_lp);
    // 3 pages in minute 0 (/ and /pricing before the restart, /docs after), / in minute 1.
    assert_eq!(expected_points.len(), 4);
    // payments: 3 errors before the restart + 1 after = 4 > 3 in minute 0.
    assert_eq!(errors, BTreeMap::from([((T0, "payments".to_string()), 4)]));
    let expected_alerts = vec![
        spike_alert("payments", T0, 4, None),
        spike_alert("payments", T0, 0, Some(T0 + MINUTE)),
    ];

    wait_until(20, "the closed windows and the alerts", || {
        final_points(&s.read("metrics.lp")).len() == expected_points.len()
            && s.read("alerts.jsonl").lines().count() == expected_alerts.len()
    });
    assert_eq!(
        final_points(&s.read("metrics.lp")),
        expected_points,
        "{}",
        s.log()
    );
    assert_eq!(parse_ndjson(&s.read("alerts.jsonl")), expected_alerts);
    assert_eq!(s.read("late.jsonl"), "");
    assert_eq!(s.read("dead-letter.jsonl"), "", "{}", s.log());
    let status = s.stop();
    assert!(status.success(), "{}", s.log());
}
