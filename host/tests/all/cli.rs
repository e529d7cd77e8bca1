//! The plugin author's tools, through the real binary.

use crate::support::{event_json, guest, parse_ndjson, write_ndjson};
use serde_json::json;
use std::process::{Command, Output};

fn nexuspipe(args: &[&str], cwd: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args(args)
        .current_dir(cwd)
        .env("NEXUSPIPE_CACHE_DIR", cwd.join("cache"))
        .output()
        .expect("running nexuspipe")
}

/// `nexuspipe plugin run <guest> --input <input> [extra...]` in `dir`.
fn plugin_run(
    dir: &std::path::Path,
    krate: &str,
    input: &std::path::Path,
    extra: &[&str],
) -> Output {
    let plugin = guest(krate);
    let mut args = vec![
        "plugin",
        "run",
        plugin.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    nexuspipe(&args, dir)
}

#[test]
fn plugin_run_enriches_ndjson() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    write_ndjson(
        &input,
        &[
            event_json(
                "page_view",
                1000,
                json!({"event_id": "e1", "user_id": "u1", "properties": {"path": "/a"}}),
            ),
            event_json(
                "click",
                2000,
                json!({"event_id": "e2", "metadata": {"ip_address": "10.1.2.3"}}),
            ),
        ],
    );
    let out = plugin_run(dir.path(), "hostile", &input, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = parse_ndjson(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(
        lines,
        vec![
            json!({"event_id": "e1", "event_type": "page_view", "timestamp": 1000, "user_id": "u1",
                   "properties": {"path": "/a", "seen": true}, "metadata": {}}),
            json!({"event_id": "e2", "event_type": "click", "timestamp": 2000,
                   "properties": {"seen": true}, "metadata": {"ip_address": "10.1.2.3"}}),
        ]
    );
}

#[test]
fn plugin_run_writes_failed_batches_to_the_dead_letter_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    write_ndjson(
        &input,
        &[
            event_json("ok", 1, json!({"event_id": "a"})),
            event_json("trap", 2, json!({"event_id": "b"})),
        ],
    );
    let out = plugin_run(dir.path(), "hostile", &input, &["--data-dir", "data"]);
    assert!(
        out.status.success(),
        "the host survives: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "nothing passed the failed enricher");
    let dead =
        parse_ndjson(&std::fs::read_to_string(dir.path().join("data/dead-letter.jsonl")).unwrap());
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["plugin"], "hostile");
    assert_eq!(dead[0]["kind"], "trap");
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap()
            .contains("told to trap by event b")
    );
    let ids: Vec<&str> = dead[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

#[test]
fn plugin_check_reports_world_interest_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = guest("alerts");
    let out = nexuspipe(&["plugin", "check", plugin.to_str().unwrap()], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["world"], "alerter");
    assert_eq!(
        report["exports"],
        json!(["nexuspipe:plugin/alerting@0.4.0"])
    );
    assert_eq!(report["version"].as_str().unwrap().len(), 64);
    assert!(report["interest"]["event_types"].is_array());
    // The default rules key on the IP and the user: the user is asked for,
    // the event id and session are not.
    assert_eq!(report["interest"]["fields"], json!(["user_id"]));
    assert_eq!(report["interest"]["metadata"], json!(["ip_address"]));
}

/// `nexuspipe plugin check x.wasm | head`: the closed pipe ends the command
/// quietly (by SIGPIPE, as for `cat`), without a panic and its backtrace.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args(["plugin", "check", guest("alerts").to_str().unwrap()])
        .env("NEXUSPIPE_CACHE_DIR", dir.path().join("cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the component is even loaded, so the first write fails.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.signal() == Some(libc::SIGPIPE) || out.status.success(),
        "{:?}: {stderr}",
        out.status
    );
}

/// `--config <FILE>` and `--config-text <TEXT>` give the plugin the same
/// config; a config the plugin refuses fails either way; not both at once.
#[test]
fn a_plugin_config_comes_from_a_file_or_inline() {
    let dir = tempfile::tempdir().unwrap();
    let alerts = guest("alerts");
    let alerts = alerts.to_str().unwrap();
    let good = crate::support::workspace_root().join("plugins/alerts/default-config.json");
    let text = std::fs::read_to_string(&good).unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"rules\": 7}").unwrap();
    let from_file = nexuspipe(
        &[
            "plugin",
            "check",
            alerts,
            "--config",
            good.to_str().unwrap(),
        ],
        dir.path(),
    );
    let inline = nexuspipe(
        &["plugin", "check", alerts, "--config-text", &text],
        dir.path(),
    );
    assert!(from_file.status.success() && inline.status.success());
    assert_eq!(from_file.stdout, inline.stdout);
    let refused_file = nexuspipe(
        &["plugin", "check", alerts, "--config", bad.to_str().unwrap()],
        dir.path(),
    );
    let refused_inline = nexuspipe(
        &["plugin", "check", alerts, "--config-text", "{\"rules\": 7}"],
        dir.path(),
    );
    assert!(!refused_file.status.success() && !refused_inline.status.success());
    assert_eq!(refused_file.stderr, refused_inline.stderr);
    let both = nexuspipe(
        &[
            "plugin",
            "check",
            alerts,
            "--config",
            "x",
            "--config-text",
            "{}",
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn plugin_check_refuses_non_wasm_and_unknown_worlds() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "just text").unwrap();
    let out = nexuspipe(&["plugin", "check", text.to_str().unwrap()], dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("notes.wasm is not a usable plugin"), "{err}");
    assert!(err.contains("not a WebAssembly file"), "{err}");

    let cmd = guest("not-a-plugin");
    let out = nexuspipe(&["plugin", "check", cmd.to_str().unwrap()], dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("implements no NexusPipe world"), "{err}");
    assert!(
        err.contains("`nexuspipe:plugin/aggregate@0.4.0` (aggregator)"),
        "{err}"
    );
    assert!(err.contains("wasi:cli/run"), "{err}");
}

#[test]
fn plugin_run_reports_bad_input_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(
        &input,
        "{\"event_type\":\"a\",\"timestamp\":1}\n{\"timestamp\":2}\n",
    )
    .unwrap();
    let out = plugin_run(dir.path(), "hostile", &input, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in.ndjson:2: invalid event: event_type: is required"),
        "{err}"
    );
}

/// `gen --event-rate` sets how fast event time runs, apart from the send rate.
#[test]
fn gen_event_time_follows_the_event_rate() {
    let dir = tempfile::tempdir().unwrap();
    let span = |extra: &[&str]| {
        let file = dir.path().join("events.ndjson");
        let mut args = vec!["gen", "--rate", "200", "--duration", "1s"];
        args.extend_from_slice(&["--start-ms", "1767225600000", "--output"]);
        args.push(file.to_str().unwrap());
        args.extend_from_slice(extra);
        let out = nexuspipe(&args, dir.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let events = parse_ndjson(&std::fs::read_to_string(&file).unwrap());
        assert_eq!(events.len(), 200);
        let times: Vec<i64> = events
            .iter()
            .map(|e| e["timestamp"].as_i64().unwrap())
            .collect();
        times.iter().max().unwrap() - times.iter().min().unwrap()
    };
    // 200 events: one second of event time at the send rate, twenty at 10/s
    // (give or take the generator's out-of-order events).
    let at_send_rate = span(&[]);
    let slow = span(&["--event-rate", "10"]);
    assert!((500..=6_000).contains(&at_send_rate), "{at_send_rate} ms");
    assert!((15_000..=25_000).contains(&slow), "{slow} ms");
}
