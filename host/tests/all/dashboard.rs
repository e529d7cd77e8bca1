//! The dashboard at `GET /` in a real browser: Debian's Chromium driven by
//! playwright-core (host/tests/browser/dashboard.test.mjs, which asserts what
//! the page shows), against this server with the bundled plugins. This side
//! starts the servers, restarts one when the script asks, and checks the
//! page's weight.

use crate::support::{Server, guest, workspace_root};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

const TOKEN: &str = "dash-admin";
const READ: &str = "dash-read";

fn pipeline(geo: &std::path::Path, extra: &str) -> String {
    format!(
        "[http]\nadmin_token = \"{TOKEN}\"\n{extra}\n\
         [engine]\nidle_timeout = \"1h\"\nout_of_orderness = \"0s\"\n\
         [stream]\nsample_rate = 1000\nsample_properties = [\"geo.country_code\", \"ua.device\"]\n\
         [[plugins]]\nname = \"enrich-geo\"\npath = {:?}\n\
         config = '{{\"city_db\": \"/geo/city.mmdb\"}}'\n\
         [plugins.capabilities]\ndirs = [{{ host = {:?}, guest = \"/geo\" }}]\n\
         [[plugins]]\nname = \"funnel\"\npath = {:?}\n\
         [[plugins]]\nname = \"alerts\"\npath = {:?}\n",
        guest("enrich-geo").display().to_string(),
        geo.display().to_string(),
        guest("funnel").display().to_string(),
        guest("alerts").display().to_string(),
    )
}

#[test]
fn the_dashboard_shows_the_stream_metrics_alerts_and_plugins_in_chromium() {
    let geo = tempfile::tempdir().unwrap();
    enrich_geo::testdb::write(geo.path()).unwrap();
    let mut s = Server::start(&pipeline(geo.path(), ""));
    let guarded = Server::start(&pipeline(geo.path(), &format!("read_token = \"{READ}\"")));
    // A minute of event time ten minutes back: inside max_future, clear of now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = (now / 60_000 - 10) * 60_000;
    let root = workspace_root();
    let shots = root.join("target/screenshots");
    let mut node = Command::new("node")
        .arg(root.join("host/tests/browser/dashboard.test.mjs"))
        .env("BASE", format!("http://127.0.0.1:{}", s.port))
        .env("BASE_READ", format!("http://127.0.0.1:{}", guarded.port))
        .env("ADMIN_TOKEN", TOKEN)
        .env("READ_TOKEN", READ)
        .env("SHOTS", &shots)
        .env("COUNTER", guest("counter"))
        .env("COUNTER_V2", guest("counter-v2"))
        .env("T0", t0.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node (the dashboard test needs Node.js and `make browser`)");
    let mut to_node = node.stdin.take().unwrap();
    for line in BufReader::new(node.stdout.take().unwrap()).lines() {
        if line.unwrap() == "restart" {
            s.restart_in_place();
            writeln!(to_node, "restarted").unwrap();
        }
    }
    let status = node.wait().unwrap();
    assert!(
        status.success(),
        "the browser test failed ({status}); server log:\n{}",
        s.log()
    );
    assert!(shots.join("dashboard-desktop.png").exists());
    assert!(shots.join("dashboard-phone.png").exists());
}

/// Everything the page loads, gzipped as a server would send it, within
/// 200 KB; and every file is served from the binary (no CDN).
#[test]
fn the_page_weighs_under_200_kb_gzipped_and_loads_nothing_from_elsewhere() {
    let s = Server::start("");
    let page = ureq::get(&s.url("/"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let mut files = vec![("/".to_string(), page.clone().into_bytes())];
    for part in page.split(['"', '\'']) {
        if part.starts_with("/dashboard/") {
            let mut body = Vec::new();
            ureq::get(&s.url(part))
                .call()
                .unwrap()
                .into_reader()
                .read_to_end(&mut body)
                .unwrap();
            files.push((part.to_string(), body));
        }
        assert!(!part.starts_with("http"), "the page loads {part}");
    }
    assert!(files.len() >= 5, "page, script, styles, uPlot: {files:?}");
    let gz: usize = files
        .iter()
        .map(|(_, b)| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(b).unwrap();
            e.finish().unwrap().len()
        })
        .sum();
    assert!(gz <= 200 * 1024, "the page is {gz} bytes gzipped");
    eprintln!("dashboard: {} files, {gz} bytes gzipped", files.len());
}
