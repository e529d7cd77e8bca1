//! Shared by the integration tests and the benchmarks: builds the Wasm
//! components they need (never skips because one is missing) and small helpers.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Every guest crate the tests and benchmarks load.
const GUESTS: &[&str] = &[
    "enrich-geo",
    "funnel",
    "alerts",
    "hostile",
    "counter",
    "not-a-plugin",
];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Path of a guest crate's component, building all guests on first use.
/// They share `target/wasm` with `make plugins`, so this is incremental.
pub fn guest(krate: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    assert!(GUESTS.contains(&krate), "unknown guest crate {krate}");
    let dir = BUILT.get_or_init(|| {
        let root = workspace_root();
        let target_dir = root.join("target/wasm");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&root).args([
            "build",
            "--profile",
            "plugin",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ]);
        cmd.arg(&target_dir);
        for g in GUESTS {
            cmd.args(["-p", g]);
        }
        // The outer cargo's flags are for the host target, not wasm.
        cmd.env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
        let status = cmd
            .status()
            .expect("running cargo to build the test guests");
        assert!(status.success(), "building the test guests failed");
        target_dir.join("wasm32-wasip2/plugin")
    });
    let path = dir.join(format!("{}.wasm", krate.replace('-', "_")));
    let path = if path.exists() {
        path
    } else {
        dir.join(format!("{krate}.wasm"))
    };
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A canonical JSON event line.
pub fn event_json(event_type: &str, ts: i64, extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({"event_type": event_type, "timestamp": ts});
    if let serde_json::Value::Object(m) = extra {
        v.as_object_mut().unwrap().extend(m);
    }
    v
}

/// Writes values as an NDJSON file.
pub fn write_ndjson(path: &Path, values: &[serde_json::Value]) {
    let mut s = String::new();
    for v in values {
        s.push_str(&v.to_string());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// Reads an NDJSON file or output.
pub fn parse_ndjson(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line {l:?}: {e}")))
        .collect()
}
