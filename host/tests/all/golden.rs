//! The bundled plugins' golden cases (`examples/<plugin>/`) through the real
//! Wasm components and `nexuspipe plugin run`. The plugins' own tests run the
//! same files natively, so both must agree with the documented outputs.
//! `NEXUSPIPE_BLESS=1` rewrites the outputs (then review the diff).

use crate::support::{event, guest, parse_ndjson, workspace_root};
use std::process::Command;

fn run_cases(plugin: &str) {
    let dir = workspace_root().join("examples").join(plugin);
    let tmp = tempfile::tempdir().unwrap();
    let geo = tmp.path().join("geo");
    std::fs::create_dir_all(&geo).unwrap();
    enrich_geo::testdb::write(&geo).unwrap();
    let mut cases: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|f| {
            f.ok()?
                .file_name()
                .into_string()
                .ok()?
                .strip_suffix(".input.ndjson")
                .map(str::to_string)
        })
        .collect();
    cases.sort();
    assert!(!cases.is_empty());
    let bless = std::env::var_os("NEXUSPIPE_BLESS").is_some();
    for case in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nexuspipe"));
        cmd.args(["plugin", "run"])
            .arg(guest(plugin))
            .arg("--input")
            .arg(dir.join(format!("{case}.input.ndjson")))
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .arg("--dir")
            .arg(format!("{}:/geo", geo.display()))
            .env(
                "NEXUSPIPE_CACHE_DIR",
                workspace_root().join("target/test-cache"),
            );
        let config = dir.join(format!("{case}.config.json"));
        if config.exists() {
            // Databases are granted at /geo inside the plugin.
            let text = std::fs::read_to_string(&config)
                .unwrap()
                .replace("{geo}", "/geo");
            let path = tmp.path().join(format!("{case}.config.json"));
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{plugin}/{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected_path = dir.join(format!("{case}.output.ndjson"));
        if bless {
            std::fs::write(&expected_path, &out.stdout).unwrap();
            continue;
        }
        let expected = parse_ndjson(&std::fs::read_to_string(&expected_path).unwrap());
        let got = parse_ndjson(&String::from_utf8(out.stdout).unwrap());
        assert_eq!(
            got,
            expected,
            "{plugin}/{case} through Wasm differs from {}",
            expected_path.display()
        );
    }
}

#[test]
fn enrich_geo_examples() {
    run_cases("enrich-geo");
}

#[test]
fn funnel_examples() {
    run_cases("funnel");
}

#[test]
fn alerts_examples() {
    run_cases("alerts");
}

#[test]
fn unique_users_sketch_stays_within_two_percent_in_wasm() {
    use nexuspipe::engine::offline;
    use nexuspipe::runtime::{Event, Limits, Runtime, Value};
    let rt = Runtime::new(None).unwrap();
    let config = r#"{"metrics": [{"measurement": "u", "window": {"type": "tumbling", "size": "1h"},
        "aggregates": [{"fn": "unique", "field": "user_id", "as": "users"}]}]}"#;
    let mut p = crate::support::load_plugin(&rt, "funnel", config, Limits::default());
    let n = 50_000i64;
    let events: Vec<Event> = (0..n)
        .map(|i| {
            let mut e = event("x", i % 3_600_000, "");
            e.user_id = Some(format!("user-{i}"));
            e
        })
        .collect();
    let run = offline::run(&mut p, events, 1024, 5_000);
    let Value::Int(est) = run.points[0].fields[0].1 else {
        panic!("users is an integer")
    };
    let err = (est - n).abs() as f64 / n as f64;
    assert!(err < 0.02, "{est} for {n}");
}
