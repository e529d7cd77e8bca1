//! The plugin author's kit through the real binary: for every language and
//! world, `plugin new`, `build`, `test` and `deploy` to a running server, in
//! a temp dir outside the repository. Each step's time goes to
//! `target/kit-timings.ndjson` (the table in docs/writing-plugins.md).
//!
//! A binary of its own: its builds (cargo, componentize-py, jco, clang, and
//! the engine's compile of 12 to 18 MB components) keep both cores busy for
//! minutes, and cargo runs test binaries one after another, so the other
//! integration tests' waits do not share the machine with them.

#[path = "../support/mod.rs"]
mod support;

use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;
use support::{Server, workspace_root};

const TOKEN: &str = "kit-admin-token";

/// `GET /v1/plugins` of a server.
fn plugins(s: &Server) -> serde_json::Value {
    let text = ureq::get(&s.url("/v1/plugins"))
        .call()
        .expect("GET /v1/plugins")
        .into_string()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `nexuspipe plugin <args>` in `cwd`, with the toolchains this machine has
/// (.ci/install-plugin-toolchains.sh): PATH for the C tools and jco,
/// NEXUSPIPE_TOOLS for componentize-py, one cargo target dir for the Rust
/// projects (wit-bindgen is compiled once).
fn plugin(args: &[&str], cwd: &Path) -> Output {
    let root = workspace_root();
    let mut path = vec![
        root.join(".tools/bin"),
        root.join("examples/plugins/js-scroll-depth/node_modules/.bin"),
    ];
    if let Some(home) = std::env::var_os("HOME") {
        path.push(Path::new(&home).join(".cargo/bin"));
    }
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .arg("plugin")
        .args(args)
        .current_dir(cwd)
        .env("PATH", std::env::join_paths(path).unwrap())
        .env("NEXUSPIPE_TOOLS", root.join(".tools"))
        .env("CARGO_TARGET_DIR", root.join("target/kit"))
        .env("NEXUSPIPE_CACHE_DIR", root.join("target/test-cache"))
        .output()
        .expect("running nexuspipe plugin")
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Records how long a step took.
fn timed<T>(lang: &str, world: &str, step: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let r = f();
    let line = json!({"lang": lang, "world": world, "step": step,
                      "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0});
    // One append per line: tests run at once.
    let path = workspace_root().join("target/kit-timings.ndjson");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes());
    }
    r
}

/// Every world of `lang`: new, build, test, deploy; and, for the first, a
/// changed expectation that `test` shows as a diff and `--bless` takes.
fn every_world(lang: &str) {
    let server = Server::start(&format!("[http]\nadmin_token = \"{TOKEN}\"\n"));
    let home = tempfile::tempdir().unwrap();
    for (i, world) in ["enricher", "aggregator", "alerter"].iter().enumerate() {
        let name = format!("my-{lang}-{world}");
        let out = timed(lang, world, "new", || {
            plugin(
                &["new", &name, "--lang", lang, "--world", world],
                home.path(),
            )
        });
        ok(&out, "plugin new");
        let dir = home.path().join(&name);
        assert!(dir.join("wit/plugin.wit").is_file());
        assert!(dir.join("README.md").is_file());
        let out = timed(lang, world, "build", || plugin(&["build"], &dir));
        let said = ok(&out, &format!("plugin build ({lang} {world})"));
        assert!(
            said.contains(&format!("build/{name}.wasm ({world}")),
            "{said}"
        );
        let out = timed(lang, world, "test", || plugin(&["test"], &dir));
        let said = ok(&out, &format!("plugin test ({lang} {world})"));
        assert!(said.contains("1 cases passed"), "{said}");
        if i == 0 {
            // A wrong expectation fails with a readable diff; --bless takes the outputs.
            let expected = dir.join("tests/sample.expected.ndjson");
            let right = std::fs::read_to_string(&expected).unwrap();
            std::fs::write(&expected, right.replacen("true", "false", 1)).unwrap();
            let out = plugin(&["test"], &dir);
            assert!(!out.status.success());
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                said.contains("FAIL sample") && said.contains("output 1:"),
                "{said}"
            );
            assert!(said.contains("- {") && said.contains("+ {"), "{said}");
            // No expected file: a failure that says how to make one.
            std::fs::remove_file(&expected).unwrap();
            let out = plugin(&["test"], &dir);
            assert!(!out.status.success());
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                said.contains("FAIL sample: no ") && said.contains("--bless"),
                "{said}"
            );
            ok(&plugin(&["test", "--bless"], &dir), "plugin test --bless");
            ok(&plugin(&["test"], &dir), "plugin test after --bless");
            assert_eq!(
                std::fs::read_to_string(&expected).unwrap().lines().count(),
                right.lines().count()
            );
            if *lang == *"rust" {
                // A plugin that traps fails the case, naming the failure.
                let lib = dir.join("src/lib.rs");
                let code = std::fs::read_to_string(&lib).unwrap();
                let broken = code.replacen("// Your logic here.", "panic!(\"boom\");", 1);
                assert_ne!(broken, code);
                std::fs::write(&lib, &broken).unwrap();
                ok(
                    &plugin(&["build"], &dir),
                    "plugin build (a plugin that traps)",
                );
                let out = plugin(&["test"], &dir);
                assert!(!out.status.success());
                let said = String::from_utf8_lossy(&out.stdout);
                assert!(
                    said.contains("the plugin failed 1 batch(es) (5 events)")
                        && said.contains("boom"),
                    "{said}"
                );
                std::fs::write(&lib, &code).unwrap();
                ok(&plugin(&["build"], &dir), "plugin build");
            }
            // Cases in the project's own folder count too.
            for ext in ["input", "expected"] {
                std::fs::copy(
                    dir.join(format!("tests/sample.{ext}.ndjson")),
                    dir.join(format!("top.{ext}.ndjson")),
                )
                .unwrap();
            }
            let said = ok(
                &plugin(&["test"], &dir),
                "plugin test with a case beside the code",
            );
            assert!(
                said.contains("ok   top") && said.contains("2 cases passed"),
                "{said}"
            );
        }
        let url = server.url("");
        let out = timed(lang, world, "deploy", || {
            plugin(&["deploy", ".", "--server", &url, "--token", TOKEN], &dir)
        });
        let said = ok(&out, &format!("plugin deploy ({lang} {world})"));
        let answer: serde_json::Value = serde_json::from_str(&said).unwrap();
        assert_eq!(answer["name"], name.as_str(), "{answer}");
        assert_eq!(answer["world"], *world, "{answer}");
        let list = plugins(&server);
        let listed = list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} not listed: {list}"));
        assert_eq!(listed["world"], *world, "{listed}");
    }
    // The deployed plugins take events with the rest of the pipeline.
    let input = include_str!("../../templates/common/input.ndjson");
    let (status, v) = server.post_raw("/v1/events", "application/x-ndjson", input.as_bytes(), None);
    assert_eq!(status, 202, "{v}");
    server.wait_idle();
    assert!(server.metric("nexuspipe_events_processed_total") >= 5.0);
}

#[test]
fn rust_plugins_from_new_to_deployed() {
    every_world("rust");
}

#[test]
fn python_plugins_from_new_to_deployed() {
    every_world("python");
}

#[test]
fn js_plugins_from_new_to_deployed() {
    every_world("js");
}

#[test]
fn c_plugins_from_new_to_deployed() {
    every_world("c");
}

/// A missing tool is named, with how to install it.
#[test]
fn a_missing_toolchain_is_named_with_how_to_install_it() {
    let home = tempfile::tempdir().unwrap();
    for (lang, missing, install) in [
        ("c", "wit-bindgen", "cargo install wit-bindgen-cli"),
        ("python", "componentize-py", "pip install componentize-py"),
        ("js", "jco", "npm install"),
    ] {
        let name = format!("bare-{lang}");
        ok(
            &plugin(
                &["new", &name, "--lang", lang, "--world", "enricher"],
                home.path(),
            ),
            "plugin new",
        );
        // Only the system's own tools: no ~/.cargo/bin, .tools or node_modules.
        let out = Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
            .args(["plugin", "build"])
            .current_dir(home.path().join(&name))
            .env("PATH", "/usr/bin:/bin")
            .env_remove("NEXUSPIPE_TOOLS")
            .env_remove("PYTHONPATH")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{lang}: built without {missing}?");
        assert!(
            err.contains(missing) && err.contains(install),
            "{lang}: {err}"
        );
    }
}
