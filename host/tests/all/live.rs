//! Live plugins: uploads over HTTP, the plugins folder, state across versions,
//! all through a real `nexuspipe run` and real components.

use crate::support::{Server, final_points, guest, parse_ndjson, wait_until, workspace_root};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub(crate) const TOKEN: &str = "s3cret-admin-token";

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The binary, with the compile cache the test servers use.
fn nexuspipe(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nexuspipe"));
    c.args(args).env(
        "NEXUSPIPE_CACHE_DIR",
        workspace_root().join("target/test-cache"),
    );
    c
}

/// An admin request; returns status and JSON body.
pub(crate) fn admin(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> (u16, Value) {
    let mut req = ureq::request(method, &s.url(path));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let result = match body {
        Some(b) => req.set("Content-Type", "application/wasm").send_bytes(b),
        None => req.call(),
    };
    let (status, resp) = match result {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(code, r)) => (code, r),
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let text = resp.into_string().unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    (status, v)
}

fn upload(s: &Server, name_and_query: &str, component: &Path) -> (u16, Value) {
    let bytes = std::fs::read(component).unwrap();
    admin(
        s,
        "PUT",
        &format!("/v1/plugins/{name_and_query}"),
        Some(TOKEN),
        Some(&bytes),
    )
}

fn plugin_info(s: &Server, name: &str) -> Value {
    let (status, v) = admin(s, "GET", &format!("/v1/plugins/{name}"), Some(TOKEN), None);
    assert_eq!(status, 200, "{v}");
    v
}

/// The plugin names of `GET /v1/plugins`, in pipeline order.
fn pipeline(s: &Server) -> Vec<String> {
    let (status, list) = admin(s, "GET", "/v1/plugins", Some(TOKEN), None);
    assert_eq!(status, 200, "{list}");
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

fn counter_config(extra_engine: &str) -> String {
    format!(
        "[http]\nadmin_token = \"{TOKEN}\"\n[engine]\n{extra_engine}\n[[plugins]]\nname = \"counter\"\npath = {:?}\nconfig = '{{\"window_ms\": 5000}}'\n",
        guest("counter").display().to_string()
    )
}

/// (window start, event type) -> count, from line protocol or from
/// `plugin run`'s JSON points. The version field is ignored.
fn lp_counts(lp: &str) -> BTreeMap<(i64, String), i64> {
    final_points(lp)
        .into_iter()
        .filter_map(|((series, ts), fields)| {
            let t = series.strip_prefix("counts,event_type=")?.to_string();
            let n = fields
                .split(',')
                .find_map(|f| f.strip_prefix("count="))?
                .trim_end_matches('i')
                .parse()
                .unwrap();
            Some(((ts, t), n))
        })
        .collect()
}

fn json_counts(points: &[Value]) -> BTreeMap<(i64, String), i64> {
    points
        .iter()
        .map(|p| {
            (
                (
                    p["timestamp"].as_i64().unwrap(),
                    p["tags"]["event_type"].as_str().unwrap().to_string(),
                ),
                p["fields"]["count"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn late_ids(text: &str) -> Vec<String> {
    let mut ids: Vec<String> = parse_ndjson(text)
        .iter()
        .map(|l| l["event"]["event_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// The acceptance test of a swap under load: `nexuspipe gen` sends a stream
/// while `nexuspipe plugin deploy` swaps `counter` for `counter-v2`. Every
/// window must equal what one uninterrupted run of the same events gives,
/// including the windows open during the swap, which v2 emits.
#[test]
fn upload_under_load_swaps_without_loss_or_duplication() {
    let s = Server::start(&counter_config(
        "out_of_orderness = \"1s\"\nidle_timeout = \"2s\"",
    ));
    let v2 = guest("counter-v2");
    // Warm the compile cache, so the swap happens while gen still runs.
    assert!(
        nexuspipe(&["plugin", "check", v2.to_str().unwrap()])
            .output()
            .unwrap()
            .status
            .success()
    );
    let start_ms = 1_700_000_000_000i64;
    let (rate, secs, batch) = ("2000", "8s", "50");
    let common = [
        "--rate",
        rate,
        "--seed",
        "42",
        "--batch",
        batch,
        "--start-ms",
    ];
    let start = start_ms.to_string();
    let mut gen_args = vec!["gen"];
    gen_args.extend_from_slice(&common);
    let target = s.url("");
    gen_args.extend_from_slice(&[&start, "--duration", secs, "--connections", "1"]);
    gen_args.extend_from_slice(&["--target", &target]);
    let gen_run = nexuspipe(&gen_args).stdout(Stdio::piped()).spawn().unwrap();

    wait_until(30, "the stream to start", || {
        s.metric("nexuspipe_events_processed_total") >= 1_000.0
    });
    let out = nexuspipe(&[
        "plugin",
        "deploy",
        v2.to_str().unwrap(),
        "--name",
        "counter",
        "--server",
        &s.url(""),
        "--token",
        TOKEN,
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "deploy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let processed_at_swap = s.metric("nexuspipe_events_processed_total");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["state"], "kept", "{report}");
    assert_eq!(report["caught_up"], true, "{report}");
    assert_eq!(report["version"], sha256(&v2));
    assert_eq!(report["previous_version"], sha256(&guest("counter")));
    assert!(report["swap_pause_us"].as_u64().is_some(), "{report}");

    let gen_out = gen_run.wait_with_output().unwrap();
    assert!(gen_out.status.success(), "gen failed");
    let gen_report: Value = serde_json::from_slice(&gen_out.stdout).unwrap();
    let accepted = gen_report["events_accepted"].as_u64().unwrap();
    assert!(
        (processed_at_swap as u64) < accepted,
        "the swap happened mid-stream ({processed_at_swap} of {accepted} processed)"
    );

    // The same events, written instead of sent, run through v1 alone.
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all.ndjson");
    let mut args = vec!["gen"];
    args.extend_from_slice(&common);
    let path = all.to_str().unwrap();
    args.extend_from_slice(&[&start, "--duration", "12s", "--output", path]);
    assert!(nexuspipe(&args).output().unwrap().status.success());
    let text = std::fs::read_to_string(&all).unwrap();
    let sent: Vec<&str> = text.lines().take(accepted as usize).collect();
    assert_eq!(sent.len() as u64, accepted);
    let input = dir.path().join("sent.ndjson");
    std::fs::write(&input, sent.join("\n") + "\n").unwrap();
    let config = dir.path().join("counter.json");
    std::fs::write(&config, r#"{"window_ms": 5000}"#).unwrap();
    let expected = nexuspipe(&[
        "plugin",
        "run",
        guest("counter").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--out-of-orderness",
        "1000",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(expected.status.success());
    let expected_counts = json_counts(&parse_ndjson(&String::from_utf8_lossy(&expected.stdout)));
    let expected_late =
        late_ids(&std::fs::read_to_string(dir.path().join("data/late.jsonl")).unwrap_or_default());
    let expected_total: i64 = expected_counts.values().sum::<i64>() + expected_late.len() as i64;
    assert_eq!(expected_total as u64, accepted);

    // The server closes its last windows once the stream has been idle.
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while lp_counts(&s.read("metrics.lp")) != expected_counts {
        if std::time::Instant::now() > until {
            let got = lp_counts(&s.read("metrics.lp"));
            let diff: Vec<_> = expected_counts
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(*v))
                .map(|(k, v)| format!("{k:?}: expected {v}, got {:?}", got.get(k)))
                .chain(
                    got.keys()
                        .filter(|k| !expected_counts.contains_key(*k))
                        .map(|k| format!("{k:?}: unexpected")),
                )
                .collect();
            panic!(
                "windows differ from an uninterrupted run:\n{}\nlate: {} here, {} expected",
                diff.join("\n"),
                late_ids(&s.read("late.jsonl")).len(),
                expected_late.len()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(late_ids(&s.read("late.jsonl")), expected_late);
    assert_eq!(s.read("dead-letter.jsonl"), "", "no failed batch");
    // v2 emitted the windows that were open at the swap, from v1's state.
    let lp = s.read("metrics.lp");
    let first_v2 = lp
        .lines()
        .find(|l| l.contains("version=2i"))
        .expect("v2 emitted windows");
    let (_, ts) = first_v2.rsplit_once(' ').unwrap();
    let window = ts.parse::<i64>().unwrap();
    let before_swap: i64 = sent
        .iter()
        .take(processed_at_swap as usize)
        .filter(|l| {
            let t = serde_json::from_str::<Value>(l).unwrap()["timestamp"]
                .as_i64()
                .unwrap();
            t >= window && t < window + 5_000
        })
        .count() as i64;
    assert!(
        before_swap > 0,
        "the first window v2 emitted was open before the swap"
    );
    let info = plugin_info(&s, "counter");
    assert_eq!(info["version"], sha256(&v2));
    assert_eq!(info["source"], "upload");
    assert_eq!(info["events_in"].as_u64().unwrap(), accepted);
}

fn alerts_config() -> String {
    format!(
        "[http]\nadmin_token = \"{TOKEN}\"\n[engine]\nidle_timeout = \"1h\"\n[[plugins]]\nname = \"alerts\"\npath = {:?}\n",
        guest("alerts").display().to_string()
    )
}

fn post_events(s: &Server, events: Value) {
    let (status, resp) = s.post(&events);
    assert_eq!(status, 202, "{resp}");
}

fn abandoned(s: &Server, user: &str) -> Vec<Value> {
    parse_ndjson(&s.read("alerts.jsonl"))
        .into_iter()
        .filter(|a| a["rule_id"] == "cart_abandoned" && a["key"] == user)
        .collect()
}

/// A new version of the rule set: the abandoned-cart rule as before, plus one.
fn rules_v2() -> String {
    json!({"rules": [
        {
            "id": "cart_abandoned", "type": "absence", "severity": "info",
            "summary": "{key} added to cart but did not buy within {window}",
            "key": "user_id",
            "first": {"event_type": "add_to_cart"},
            "then": {"event_type": "purchase"},
            "within": "30m"
        },
        {
            "id": "error_burst", "type": "threshold", "severity": "error",
            "summary": "{count} errors", "key": "event_type",
            "filter": {"event_type": "error"}, "window": "1m", "above": 10
        }
    ]})
    .to_string()
}

#[test]
fn swapping_the_alerts_plugin_keeps_a_pending_absence_timer() {
    let s = Server::start(&alerts_config());
    let minute = 60_000i64;
    let t0 = 1_700_000_000_000i64;
    let view = |ts: i64| json!({"event_type": "page_view", "timestamp": ts, "user_id": "someone"});
    let cart = |ts: i64, user: &str| json!({"event_type": "add_to_cart", "timestamp": ts, "user_id": user});
    post_events(&s, json!([cart(t0, "u-kept")]));

    // A new build with the same rules: the new version catches up off the
    // event path (last snapshot + the batches since), then swaps.
    let (status, swap) = upload(&s, "alerts", &guest("alerts"));
    assert_eq!(status, 200, "{swap}");
    assert_eq!(swap["state"], "kept");
    assert_eq!(swap["caught_up"], true);
    // A new version of the rules (they read other events, so the state is
    // handed over by snapshot and restore), config as a query parameter.
    post_events(&s, json!([view(t0 + minute)]));
    let config = rules_v2();
    let q: String = url_encode(&config);
    let (status, swap) = upload(&s, &format!("alerts?config={q}"), &guest("alerts"));
    assert_eq!(status, 200, "{swap}");
    assert_eq!(swap["state"], "kept");
    assert_eq!(
        swap["caught_up"], false,
        "other interest: snapshot and restore"
    );
    assert!(swap["state_bytes"].as_u64().unwrap() > 0);

    // On time: not before the 30 minutes are up (watermark = newest - 5 s)...
    post_events(&s, json!([view(t0 + 30 * minute)]));
    s.wait_idle();
    assert!(abandoned(&s, "u-kept").is_empty(), "fired early");
    // ...and as soon as the watermark passes them.
    post_events(&s, json!([view(t0 + 30 * minute + 5_000)]));
    wait_until(10, "the absence alert", || {
        !abandoned(&s, "u-kept").is_empty()
    });
    let fired = abandoned(&s, "u-kept");
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0]["starts_at"], "2023-11-14T22:13:20Z");
    // The new rule is live too.
    let errors: Vec<Value> = (0..11)
        .map(|i| json!({"event_type": "error", "timestamp": t0 + 31 * minute + i}))
        .collect();
    post_events(&s, Value::Array(errors));
    post_events(&s, json!([view(t0 + 32 * minute)]));
    wait_until(10, "the new rule's alert", || {
        parse_ndjson(&s.read("alerts.jsonl"))
            .iter()
            .any(|a| a["rule_id"] == "error_burst")
    });

    // The control: with reset_state the pending timer is gone, as documented.
    post_events(&s, json!([cart(t0 + 40 * minute, "u-reset")]));
    let (status, swap) = upload(&s, "alerts?reset_state=true", &guest("alerts"));
    assert_eq!(status, 200, "{swap}");
    assert_eq!(swap["state"], "reset");
    post_events(&s, json!([view(t0 + 80 * minute)]));
    post_events(&s, json!([cart(t0 + 81 * minute, "u-after")]));
    post_events(&s, json!([view(t0 + 120 * minute)]));
    wait_until(10, "the alert of a timer set after the reset", || {
        !abandoned(&s, "u-after").is_empty()
    });
    s.wait_idle();
    assert!(abandoned(&s, "u-reset").is_empty());
}

/// Enrichers compute only what the plugins after them read, and adapt when
/// an upload changes that: enrich-geo's fields in the funnel's points and in
/// the late output, before and after a new funnel config.
#[test]
fn enrichers_compute_what_the_pipeline_reads_and_follow_uploads() {
    let geo = tempfile::tempdir().unwrap();
    enrich_geo::testdb::write(geo.path()).unwrap();
    let by = |measurement: &str, tag: &str, field: &str| {
        json!({"metrics": [{"measurement": measurement,
            "window": {"type": "tumbling", "size": "1m"},
            "group_by": [{"tag": tag, "from": field}],
            "aggregates": [{"fn": "count", "as": "count"}]}]})
        .to_string()
    };
    let config = format!(
        "[http]\nadmin_token = \"{TOKEN}\"\n[engine]\nidle_timeout = \"1h\"\n\
         [[plugins]]\nname = \"enrich-geo\"\npath = {:?}\n\
         config = '{{\"city_db\": \"/geo/city.mmdb\", \"asn_db\": \"/geo/asn.mmdb\"}}'\n\
         [plugins.capabilities]\ndirs = [{{ host = {:?}, guest = \"/geo\" }}]\n\
         [[plugins]]\nname = \"funnel\"\npath = {:?}\nconfig = '{}'\n",
        guest("enrich-geo").display().to_string(),
        geo.path().display().to_string(),
        guest("funnel").display().to_string(),
        by("by_country", "country", "properties.geo.country_code"),
    );
    let s = Server::start(&config);
    let desktop = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";
    let phone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
    let t0 = 1_700_000_040_000i64; // a minute's start
    let view = |id: &str, ts: i64, ip: &str, ua: &str| {
        json!({"event_id": id, "event_type": "page_view", "timestamp": ts,
               "metadata": {"ip_address": ip, "user_agent": ua, "url": "https://shop.example/a?utm_source=x"}})
    };
    // Counts per tag value of one measurement's points.
    let counts = |measurement: &str, tag: &str| -> BTreeMap<String, String> {
        final_points(&s.read("metrics.lp"))
            .into_iter()
            .filter_map(|((series, _), fields)| {
                let value = series
                    .strip_prefix(&format!("{measurement},{tag}="))?
                    .to_string();
                Some((value, fields))
            })
            .collect()
    };
    let late = |id: &str| -> Value {
        wait_until(10, "the late event", || s.read("late.jsonl").contains(id));
        parse_ndjson(&s.read("late.jsonl"))
            .into_iter()
            .find(|l| l["event"]["event_id"] == id)
            .unwrap()["event"]["properties"]
            .clone()
    };

    // Posts a minute of events plus one that closes it (watermark = newest
    // - 5 s), then expects these counts per tag value of the measurement.
    let minute =
        |at: i64, uas: [&str; 3], measurement: &str, tag: &str, want: [(&str, &str); 2]| {
            post_events(
                &s,
                json!([
                    view(&format!("{at}-1"), at, "81.2.69.160", uas[0]),
                    view(&format!("{at}-2"), at + 1, "81.2.69.161", uas[1]),
                    view(&format!("{at}-3"), at + 2, "2001:218::1", uas[2]),
                    view(&format!("{at}-4"), at + 120_000, "10.0.0.1", desktop),
                ]),
            );
            wait_until(10, "the points", || !counts(measurement, tag).is_empty());
            let want: BTreeMap<String, String> = want
                .iter()
                .map(|(v, n)| (v.to_string(), format!("count={n}i")))
                .collect();
            assert_eq!(counts(measurement, tag), want, "{measurement}");
        };
    minute(
        t0,
        [desktop, phone, desktop],
        "by_country",
        "country",
        [("GB", "2"), ("JP", "1")],
    );
    // The late output shows the enriched event: the one field read, nothing else.
    post_events(&s, json!([view("late-1", t0 + 3, "81.2.69.160", desktop)]));
    assert_eq!(late("late-1"), json!({"geo.country_code": "GB"}));

    // A funnel that reads the device instead: enrich-geo follows.
    let q = url_encode(&by("by_device", "device", "properties.ua.device"));
    let (status, swap) = upload(
        &s,
        &format!("funnel?reset_state=true&config={q}"),
        &guest("funnel"),
    );
    assert_eq!(status, 200, "{swap}");
    let t1 = t0 + 180_000;
    minute(
        t1,
        [desktop, phone, desktop],
        "by_device",
        "device",
        [("desktop", "2"), ("mobile", "1")],
    );
    post_events(&s, json!([view("late-2", t1 + 3, "81.2.69.160", phone)]));
    assert_eq!(late("late-2"), json!({"ua.device": "mobile"}));
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn bad_uploads_are_refused_and_the_running_version_stays() {
    let s = Server::start(&format!(
        "[http]\nmax_plugin_size = \"3MiB\"\n{}",
        counter_config("idle_timeout = \"1h\"").replace("[http]\n", "")
    ));
    let v1 = sha256(&guest("counter"));
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not wasm at all").unwrap();
    let big = dir.path().join("big.wasm");
    std::fs::write(&big, vec![0u8; 4 << 20]).unwrap();
    let counter = std::fs::read(guest("counter")).unwrap();

    // (what, the answer, expected status, reason, part of the message)
    type Case<'a> = (&'a str, (u16, Value), u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no token",
            admin(&s, "PUT", "/v1/plugins/counter", None, Some(&counter)),
            401,
            "unauthorized",
            "Authorization",
        ),
        (
            "wrong token",
            admin(
                &s,
                "PUT",
                "/v1/plugins/counter",
                Some("guess"),
                Some(&counter),
            ),
            403,
            "forbidden",
            "wrong",
        ),
        (
            "../ in the name",
            upload(&s, "..%2Fcounter", &guest("counter")),
            400,
            "invalid_name",
            "invalid plugin name",
        ),
        (
            "not Wasm",
            upload(&s, "counter", &text),
            415,
            "not_a_component",
            "not a WebAssembly file",
        ),
        (
            "too large",
            upload(&s, "counter", &big),
            413,
            "too_large",
            "max_plugin_size",
        ),
        (
            "wrong world",
            upload(&s, "counter", &guest("alerts")),
            409,
            "world_mismatch",
            "is an aggregator; the new version is an alerter",
        ),
        (
            "no world",
            upload(&s, "counter", &guest("not-a-plugin")),
            422,
            "unknown_world",
            "implements no NexusPipe world",
        ),
        (
            "config that fails init",
            upload(
                &s,
                "counter?config=%7B%22window_ms%22%3A-1%7D",
                &guest("counter-v2"),
            ),
            422,
            "config_rejected",
            "window_ms: must be a positive integer",
        ),
        (
            "state the new version rejects",
            upload(&s, "counter?config=", &guest("funnel")),
            409,
            "state_rejected",
            "rejected the running version's state",
        ),
        (
            "unknown query key",
            upload(&s, "counter?reset=true", &guest("counter-v2")),
            400,
            "bad_request",
            "reset",
        ),
    ];
    for (what, (status, body), want_status, reason, message) in cases {
        assert_eq!(status, want_status, "{what}: {body}");
        assert_eq!(body["reason"], reason, "{what}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{what}: {error}");
    }
    assert_eq!(
        s.metric("nexuspipe_plugin_swaps_failed_total"),
        5.0,
        "the five that reached validation are counted"
    );

    // The old version still runs and counts.
    assert_eq!(plugin_info(&s, "counter")["version"], v1);
    post_events(
        &s,
        json!([{"event_type": "click", "timestamp": 1_000}, {"event_type": "click", "timestamp": 2_000}]),
    );
    post_events(&s, json!([{"event_type": "click", "timestamp": 20_000}]));
    wait_until(10, "the old version's window", || {
        lp_counts(&s.read("metrics.lp")).get(&(0, "click".into())) == Some(&2)
    });

    // A breaking version goes in with reset_state; rollback brings v1 back;
    // DELETE takes it out; all of it survives a restart.
    let (status, r) = upload(&s, "counter?reset_state=true&config=", &guest("funnel"));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["state"], "reset");
    let (status, r) = admin(
        &s,
        "POST",
        "/v1/plugins/counter/rollback",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 409, "funnel's state is not the counter's: {r}");
    assert_eq!(r["reason"], "state_rejected");
    let (status, r) = admin(
        &s,
        "POST",
        "/v1/plugins/counter/rollback?reset_state=true",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["version"], v1);
    let (status, r) = upload(&s, "extra", &guest("counter-v2"));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["state"], "new");
    assert_eq!(pipeline(&s), ["counter", "extra"]);
    let (status, r) = admin(&s, "DELETE", "/v1/plugins/counter", Some(TOKEN), None);
    assert_eq!(status, 200, "{r}");
    let (status, _) = admin(&s, "GET", "/v1/plugins/counter", Some(TOKEN), None);
    assert_eq!(status, 404);

    let mut s = s;
    s.restart();
    let (_, list) = admin(&s, "GET", "/v1/plugins", Some(TOKEN), None);
    let plugins = list["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 1, "{list}");
    assert_eq!(plugins[0]["name"], "extra");
    assert_eq!(plugins[0]["version"], sha256(&guest("counter-v2")));
}

#[test]
fn the_admin_api_is_disabled_without_a_token() {
    let s = Server::start(&counter_config("").replace(&format!("admin_token = \"{TOKEN}\"\n"), ""));
    let (status, body) = upload(&s, "counter", &guest("counter-v2"));
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["reason"], "admin_disabled");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("NEXUSPIPE_ADMIN_TOKEN")
    );
}

/// A component copied slowly into the folder (chunks well inside the
/// debounce time) is loaded once, complete; deleting it unloads it.
#[test]
fn the_plugins_folder_loads_a_slowly_copied_component_once() {
    let folder = tempfile::tempdir().unwrap();
    let s = Server::start(&format!(
        "[http]\nadmin_token = \"{TOKEN}\"\n[plugin_folder]\ndir = {:?}\ndebounce = \"400ms\"\n[engine]\nidle_timeout = \"1h\"\n[[plugins]]\nname = \"counter\"\npath = {:?}\n",
        folder.path().display().to_string(),
        guest("counter").display().to_string()
    ));
    // The largest component we have, in 20 chunks 100 ms apart (2 s in all).
    let source = guest("enrich-geo");
    let bytes = std::fs::read(&source).unwrap();
    let target = folder.path().join("geo.wasm");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&target).unwrap();
        for chunk in bytes.chunks(bytes.len().div_ceil(20)) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    wait_until(30, "the folder plugin", || {
        admin(&s, "GET", "/v1/plugins/geo", Some(TOKEN), None).0 == 200
    });
    let info = plugin_info(&s, "geo");
    assert_eq!(info["version"], sha256(&source));
    assert_eq!(info["source"], "folder");
    assert_eq!(info["world"], "enricher");
    // Two debounce times of the watcher looking and finding nothing new.
    let checks = s.metric("nexuspipe_plugin_folder_idle_checks_total");
    wait_until(30, "the watcher to look again", || {
        s.metric("nexuspipe_plugin_folder_idle_checks_total") >= checks + 10.0
    });
    assert_eq!(s.metric("nexuspipe_plugin_swaps_total"), 1.0, "loaded once");
    assert_eq!(
        s.metric("nexuspipe_plugin_swaps_failed_total"),
        0.0,
        "never half-written"
    );
    // The enricher went before the aggregator.
    assert_eq!(pipeline(&s), ["geo", "counter"]);

    // A sidecar with a config the plugin refuses: logged, the running version stays.
    std::fs::write(folder.path().join("geo.toml"), "config = '{\"nope\": 1}'\n").unwrap();
    wait_until(10, "the refused config", || {
        s.metric("nexuspipe_plugin_swaps_failed_total") == 1.0
    });
    assert!(
        s.log().contains("not loaded from the plugins folder"),
        "{}",
        s.log()
    );
    assert_eq!(plugin_info(&s, "geo")["version"], sha256(&source));

    std::fs::remove_file(&target).unwrap();
    wait_until(10, "the unload", || {
        admin(&s, "GET", "/v1/plugins/geo", Some(TOKEN), None).0 == 404
    });
    assert_eq!(plugin_info(&s, "counter")["source"], "config");
}

/// A deploy with a new config never relabels old state: a metric that kept
/// its name and definition goes on with its open window (reordered or not),
/// a renamed or changed one starts empty, and the answer says which; the
/// same for the alert rules.
#[test]
fn a_new_config_keeps_only_the_state_that_still_matches() {
    let metric = |measurement: &str, size: &str, tag: &str, from: &str| {
        json!({"measurement": measurement, "window": {"type": "tumbling", "size": size},
               "group_by": [{"tag": tag, "from": from}],
               "aggregates": [{"fn": "count", "as": "n"}]})
    };
    let v1 = json!({"metrics": [
        metric("events", "1m", "event_type", "event_type"),
        metric("by_path", "1m", "path", "properties.path"),
        metric("sized", "1m", "event_type", "event_type"),
        metric("per_type", "1m", "event_type", "event_type"),
    ]});
    let rule = |id: &str, on: &str, window: &str| {
        json!({"id": id, "type": "threshold", "summary": "{count}", "key": "user_id",
               "filter": {"event_type": on}, "window": window, "above": 2})
    };
    // The first rule counts other events than the rest: a state matched
    // by position would move its empty count onto a rule that moved up.
    let rules_v1 = json!({"rules": [
        rule("views", "view", "1m"),
        rule("kept_burst", "click", "1m"),
        rule("burst", "click", "1m"),
        rule("gone", "click", "1m"),
        rule("old_name", "click", "1m"),
    ]});
    let s = Server::start(&format!(
        "[http]\nadmin_token = \"{TOKEN}\"\n[engine]\nidle_timeout = \"1h\"\nout_of_orderness = \"0s\"\n\
         [[plugins]]\nname = \"funnel\"\npath = {:?}\nconfig = '{}'\n\
         [[plugins]]\nname = \"alerts\"\npath = {:?}\nconfig = '{}'\n",
        guest("funnel").display().to_string(),
        v1,
        guest("alerts").display().to_string(),
        rules_v1,
    ));
    let click = |ts: i64| json!({"event_type": "click", "timestamp": ts, "user_id": "u", "properties": {"path": "/a"}});
    post_events(&s, json!([click(1_000), click(2_000)]));
    // The config of the report that found the bug (a new metric in place of
    // the first, one with another window size), and more: a kept metric
    // that moves up, one renamed with the same definition.
    let v2 = json!({"metrics": [
        metric("by_path", "1m", "path", "properties.path"),
        metric("sized", "5m", "event_type", "event_type"),
        metric("weekend_events", "1m", "is_weekend", "properties.is_weekend"),
        metric("type_count", "1m", "event_type", "event_type"),
    ]});
    let (status, swap) = upload(
        &s,
        &format!("funnel?config={}", url_encode(&v2.to_string())),
        &guest("funnel"),
    );
    assert_eq!(status, 200, "{swap}");
    assert_eq!(swap["state"], "kept", "{swap}");
    assert_eq!(swap["parts"]["kept"], json!(["metric:by_path"]), "{swap}");
    assert_eq!(swap["parts"]["reset"], json!(["metric:sized"]), "{swap}");
    assert_eq!(
        swap["parts"]["dropped"],
        json!(["metric:events", "metric:per_type"]),
        "{swap}"
    );
    assert_eq!(
        swap["parts"]["added"],
        json!(["metric:weekend_events", "metric:type_count"]),
        "{swap}"
    );
    // Moved, changed, renamed, added, removed.
    let rules_v2 = json!({"rules": [
        rule("kept_burst", "click", "1m"),
        rule("burst", "click", "2m"),
        rule("new_name", "click", "1m"),
        rule("fresh", "click", "1m"),
    ]});
    let (status, swap) = upload(
        &s,
        &format!("alerts?config={}", url_encode(&rules_v2.to_string())),
        &guest("alerts"),
    );
    assert_eq!(status, 200, "{swap}");
    assert_eq!(swap["parts"]["kept"], json!(["kept_burst"]), "{swap}");
    assert_eq!(swap["parts"]["reset"], json!(["burst"]), "{swap}");
    // The alerts plugin lists rules by id.
    assert_eq!(
        swap["parts"]["added"],
        json!(["fresh", "new_name"]),
        "{swap}"
    );
    assert_eq!(
        swap["parts"]["dropped"],
        json!(["gone", "old_name", "views"]),
        "{swap}"
    );
    assert!(
        s.log().contains("reset=metric:sized"),
        "the log says which: {}",
        s.log()
    );
    // A third click and a later event that closes every window.
    post_events(
        &s,
        json!([click(3_000), {"event_type": "tick", "timestamp": 600_000}]),
    );
    wait_until(20, "the windows", || {
        final_counts(&s.read("metrics.lp")).contains_key("by_path,path=/a 0")
    });
    s.wait_idle();
    let lp = s.read("metrics.lp");
    let counts = final_counts(&lp);
    assert_eq!(
        counts.get("by_path,path=/a 0"),
        Some(&3),
        "kept across the swap, though it moved: {lp}"
    );
    assert_eq!(
        counts.get("sized,event_type=click 0"),
        Some(&1),
        "started empty: {lp}"
    );
    assert_eq!(
        counts.get("weekend_events 0"),
        Some(&1),
        "only what came after: {lp}"
    );
    assert_eq!(
        counts.get("type_count,event_type=click 0"),
        Some(&1),
        "a new name starts empty: {lp}"
    );
    assert!(
        !lp.contains("weekend_events,"),
        "no old tag under the new name: {lp}"
    );
    for gone in ["events,event_type=click", "per_type"] {
        assert!(!lp.contains(gone), "a dropped metric emits nothing: {lp}");
    }
    let fired: Vec<String> = parse_ndjson(&s.read("alerts.jsonl"))
        .iter()
        .filter(|a| a["status"] == "firing")
        .map(|a| a["rule_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        fired,
        ["kept_burst"],
        "the moved rule kept its count; changed, renamed and new ones started over"
    );
}

/// `series timestamp` -> the `n` field of its last line.
fn final_counts(lp: &str) -> BTreeMap<String, i64> {
    crate::support::final_points(lp)
        .into_iter()
        .map(|((series, ts), fields)| {
            let n = fields
                .split(',')
                .find_map(|f| f.strip_prefix("n="))
                .map_or(-1, |n| n.trim_end_matches('i').parse().unwrap());
            (format!("{series} {ts}"), n)
        })
        .collect()
}

/// A `multipart/form-data` PUT with only a `config` part (as the dashboard's
/// rule form sends it).
fn put_config(s: &Server, name_and_query: &str, config: &str) -> (u16, Value) {
    let body = format!(
        "--b0undary\r\nContent-Disposition: form-data; name=\"config\"\r\n\r\n{config}\r\n--b0undary--\r\n"
    );
    let r = ureq::put(&s.url(&format!("/v1/plugins/{name_and_query}")))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .set("Content-Type", "multipart/form-data; boundary=b0undary")
        .send_bytes(body.as_bytes());
    let resp = match r {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = resp.status();
    (
        status,
        serde_json::from_str(&resp.into_string().unwrap()).unwrap(),
    )
}

/// The pipeline is a read (the read token sees it, an alerter's rules
/// included); a config alone is checked by `dry_run` with the plugin's own
/// message and changes nothing, then deploys on the running component.
#[test]
fn a_config_alone_is_checked_by_a_dry_run_then_deployed_on_the_running_component() {
    let s = Server::start(&format!(
        "[http]\nadmin_token = \"{TOKEN}\"\nread_token = \"reader\"\n\
         [[plugins]]\nname = \"alerts\"\npath = {:?}\n",
        guest("alerts").display().to_string()
    ));
    let (status, _) = admin(&s, "GET", "/v1/plugins", None, None);
    assert_eq!(status, 401, "the pipeline is behind the read token");
    let (status, list) = admin(&s, "GET", "/v1/plugins", Some("reader"), None);
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["plugins"][0]["name"], "alerts");
    assert_eq!(
        list["plugins"][0]["config"], "",
        "an alerter's rules are readable"
    );
    let version = plugin_info(&s, "alerts")["version"].clone();
    let rules = |window: &str| {
        json!({"rules": [{"id": "r", "type": "threshold", "summary": "{count}", "key": "user_id",
                          "filter": {"event_type": "x"}, "window": window, "above": 1}]})
        .to_string()
    };
    let (status, v) = put_config(&s, "alerts?dry_run=true", &rules("0s"));
    assert_eq!(
        (status, &v["reason"]),
        (422, &json!("config_rejected")),
        "{v}"
    );
    assert!(
        v["error"].as_str().unwrap().contains("rules[0].window"),
        "{v}"
    );
    let (status, v) = put_config(&s, "alerts?dry_run=true", &rules("1m"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["version"], version);
    assert_eq!(
        plugin_info(&s, "alerts")["config"],
        "",
        "a dry run changes nothing"
    );
    let (status, v) = put_config(&s, "alerts", &rules("1m"));
    assert_eq!(status, 200, "{v}");
    let now = plugin_info(&s, "alerts");
    assert_eq!(now["version"], version, "the running component");
    assert_eq!(now["config"], rules("1m"));
    assert_eq!(now["source"], "upload");
}
