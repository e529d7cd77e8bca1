//! The browser tracker (`GET /tracker.js`, built from host/tracker) and the
//! React package (examples/react-tracker) in Chromium, driven by
//! host/tests/browser/tracker.test.mjs against this server with the default
//! pipeline; this side starts and stops the server when the script asks.
//! Also: the script's size, and that the served file is what its sources build.

use crate::support::{Server, free_port, workspace_root};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

fn npm(dir: &std::path::Path, script: &str) {
    let out = Command::new("npm")
        .args(["run", "--silent", script])
        .current_dir(dir)
        .output()
        .expect("npm (the tracker tests need Node.js and `make browser`)");
    assert!(
        out.status.success(),
        "npm run {script} in {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_tracker_delivers_every_event_once_from_chromium_and_react() {
    let root = workspace_root();
    let react = root.join("examples/react-tracker");
    // The React package's declared types, checked by tsc against a use of
    // each; then the test app bundled.
    npm(&react, "typecheck");
    npm(&react, "build:test");
    let page_port = free_port();
    let mut s = Server::start(&format!(
        "[http]\ncors_origins = [\"http://127.0.0.1:{page_port}\"]\n\
         [engine]\nidle_timeout = \"1s\"\nout_of_orderness = \"0s\"\nallowed_lateness = \"1h\"\n"
    ));
    let mut node = Command::new("node")
        .arg(root.join("host/tests/browser/tracker.test.mjs"))
        .env("UPSTREAM", s.port.to_string())
        .env("PAGE_PORT", page_port.to_string())
        .env("APP", react.join("test/dist/app.js"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node (the tracker test needs Node.js and `make browser`)");
    let mut to_node = node.stdin.take().unwrap();
    for line in BufReader::new(node.stdout.take().unwrap()).lines() {
        match line.unwrap().as_str() {
            "stop" => {
                let status = s.stop();
                assert!(status.success(), "clean exit on SIGTERM: {status}");
                writeln!(to_node, "stopped").unwrap();
            }
            "start" => {
                s.start_again();
                writeln!(to_node, "started {}", s.port).unwrap();
            }
            other => eprintln!("{other}"),
        }
    }
    let status = node.wait().unwrap();
    assert!(
        status.success(),
        "the tracker's browser test failed ({status}); server log:\n{}",
        s.log()
    );
}

/// At most 2 KB gzipped (as a server sends it), served as built from its
/// sources by host/tracker/build.sh.
#[test]
fn the_tracker_is_under_2_kb_gzipped_and_built_from_its_sources() {
    let root = workspace_root();
    let out = Command::new(root.join("host/tracker/build.sh"))
        .arg("--check")
        .output()
        .expect("host/tracker/build.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = std::fs::read(root.join("host/tracker/tracker.min.js")).unwrap();
    let s = Server::start("");
    let r = ureq::get(&s.url("/tracker.js")).call().unwrap();
    assert_eq!(r.content_type(), "text/javascript");
    let mut served = Vec::new();
    r.into_reader().read_to_end(&mut served).unwrap();
    assert!(
        served == built,
        "GET /tracker.js is not host/tracker/tracker.min.js"
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&served).unwrap();
    let size = gz.finish().unwrap().len();
    assert!(size <= 2048, "tracker.js is {size} bytes gzipped");
    eprintln!("tracker.js: {} bytes, {size} gzipped", served.len());
}
