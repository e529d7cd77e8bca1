//! Sink benchmark (`make bench-sinks`): points per second into InfluxDB 1.x
//! (v1 API) and VictoriaMetrics (v2 API), with
//! and without gzip, and webhook alert delivery latency, signed and not.
//!
//! The servers are the real ones, started by the project's scripts on
//! loopback. Each figure is the median of several runs (the machine is
//! shared and noisy). A run pushes points as the engine does (one chunk per
//! round) and ends when the last one is acknowledged.

use nexuspipe::config::{InfluxConfig, WebhookConfig};
use nexuspipe::runtime::{Alert, AlertStatus, Severity};
use nexuspipe::sinks::files::AppendFile;
use nexuspipe::sinks::influx::InfluxSink;
use nexuspipe::sinks::webhook::WebhookSink;
use nexuspipe::telemetry::SinkStats;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const POINTS: usize = 200_000;
const CHUNK: usize = 1_000;
const RUNS: usize = 5;
const ALERTS: usize = 500;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(script: &str, args: &[String], dir: &Path, probe: &str) -> Proc {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let child = Command::new(root.join("scripts").join(script))
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{script}.log"))).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{script}: {e} (make servers)"));
    let until = Instant::now() + Duration::from_secs(60);
    while ureq::get(probe).call().is_err() {
        assert!(Instant::now() < until, "{script} did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    Proc(child)
}

/// Realistic points: a few measurements, tags, two fields, minute timestamps.
fn lines(run: usize) -> Vec<String> {
    (0..POINTS)
        .map(|i| {
            let m = ["page_views", "events", "revenue", "unique_users"][i % 4];
            let path = i % 500;
            let ts = 1_767_225_600_000i64 + ((i / 2000) as i64 + run as i64 * 1000) * 60_000;
            format!(
                "{m},path=/products/item-{path},site=shop count={i}i,avg={}.5 {ts}",
                i % 97
            )
        })
        .collect()
}

/// Points per second of one run into `config`'s server.
fn points_per_second(config: &str, dir: &Path, run: usize) -> f64 {
    let c: InfluxConfig = toml::from_str(config).unwrap();
    let data = dir.join(format!("run-{run}"));
    let stats = SinkStats::new("influxdb", "influxdb", c.buffer_points);
    let dead = AppendFile::shared(data.join("dead-letter.jsonl"));
    let sink = InfluxSink::start(&c, &data, dead, stats.clone(), Default::default()).unwrap();
    let all = lines(run);
    let t = Instant::now();
    for chunk in all.chunks(CHUNK) {
        sink.push(chunk.to_vec());
    }
    while stats.delivered.load(std::sync::atomic::Ordering::Relaxed) < POINTS as u64 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = t.elapsed().as_secs_f64();
    sink.close();
    assert_eq!(
        stats
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    POINTS as f64 / secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

fn alert(i: usize) -> Alert {
    let key = format!("user-{i}");
    Alert {
        rule_id: "login_burst".into(),
        key: key.clone(),
        status: AlertStatus::Firing,
        severity: Severity::Critical,
        summary: format!("5 failed logins for {key}"),
        labels: vec![("team".into(), "security".into())],
        starts_at: 1_767_225_600_000 + i as i64,
        ends_at: None,
        fingerprint: format!("{i:016x}"),
    }
}

/// Per-alert latency (ms) from hand-over to the receiver reading the request.
fn alert_latencies(secret: Option<&str>, dir: &Path) -> Vec<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let arrived: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let a = arrived.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let a = a.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let (mut len, mut id) = (0, String::new());
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        let h = h.trim_end().to_ascii_lowercase();
                        if h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        if let Some(v) = h.strip_prefix("webhook-id:") {
                            id = v.trim().to_string();
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    a.lock().unwrap().push((id, Instant::now()));
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    let mut text = format!("url = \"http://127.0.0.1:{port}/\"\n");
    if let Some(s) = secret {
        text.push_str(&format!("secret = \"{s}\"\n"));
    }
    let c: WebhookConfig = toml::from_str(&text).unwrap();
    let stats = SinkStats::new("bench", "webhook", c.queue_capacity);
    let dead = AppendFile::shared(dir.join("dead-letter.jsonl"));
    let sink = WebhookSink::start("bench", &c, dir, dead, stats).unwrap();
    let mut sent = Vec::new();
    // Alerts come a few at a time: one every 2 ms, so the figure is delivery, not queueing.
    for i in 0..ALERTS {
        let a = alert(i);
        let id = nexuspipe::sinks::webhook::message_id(&a);
        sent.push((id.clone(), Instant::now()));
        sink.push(&a, &id, &nexuspipe::sinks::alert_to_json(&a));
        std::thread::sleep(Duration::from_millis(2));
    }
    let until = Instant::now() + Duration::from_secs(30);
    while arrived.lock().unwrap().len() < ALERTS {
        assert!(Instant::now() < until, "alerts did not all arrive");
        std::thread::sleep(Duration::from_millis(5));
    }
    sink.close();
    let arrived = arrived.lock().unwrap();
    let at: std::collections::HashMap<&str, Instant> =
        arrived.iter().map(|(id, t)| (id.as_str(), *t)).collect();
    sent.iter()
        .map(|(id, t)| at[id.as_str()].duration_since(*t).as_secs_f64() * 1000.0)
        .collect()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs bench
    // binaries without it, and the sink tests already cover this path.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (influx_port, rpc_port, vm_port) = (free_port(), free_port(), free_port());
    let _influx = start(
        "influxdb.sh",
        &[
            dir.path().join("influxdb").display().to_string(),
            influx_port.to_string(),
            rpc_port.to_string(),
        ],
        dir.path(),
        &format!("http://127.0.0.1:{influx_port}/ping"),
    );
    ureq::post(&format!("http://127.0.0.1:{influx_port}/query"))
        .send_form(&[("q", "CREATE DATABASE bench")])
        .unwrap();
    let _vm = start(
        "victoria-metrics.sh",
        &[
            dir.path().join("vm").display().to_string(),
            vm_port.to_string(),
        ],
        dir.path(),
        &format!("http://127.0.0.1:{vm_port}/health"),
    );
    println!(
        "sink benchmark: {POINTS} points per run in chunks of {CHUNK}, batch 5000, median of {RUNS} runs"
    );
    for (name, base) in [
        (
            "InfluxDB 1.x (v1 /write)",
            format!(
                "url = \"http://127.0.0.1:{influx_port}\"\napi = \"v1\"\ndatabase = \"bench\"\n"
            ),
        ),
        (
            "VictoriaMetrics (v2 /api/v2/write)",
            format!(
                "url = \"http://127.0.0.1:{vm_port}\"\napi = \"v2\"\norg = \"o\"\nbucket = \"bench\"\n"
            ),
        ),
    ] {
        for gzip in [true, false] {
            let config = format!("{base}gzip = {gzip}\nbuffer_points = 1000000\n");
            let runs: Vec<f64> = (0..RUNS)
                .map(|r| points_per_second(&config, dir.path(), r + usize::from(!gzip) * RUNS))
                .collect();
            println!(
                "  {name}, gzip {gzip}: median {:.0} points/s (runs: {})",
                median(runs.clone()),
                runs.iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    println!(
        "webhook delivery latency, {ALERTS} alerts, hand-over to the receiver reading the request:"
    );
    for (name, secret) in [
        ("unsigned", None),
        (
            "signed (Standard Webhooks)",
            Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ),
    ] {
        let sub = dir.path().join(name.split(' ').next().unwrap());
        std::fs::create_dir_all(&sub).unwrap();
        let mut l = alert_latencies(secret, &sub);
        println!(
            "  {name}: p50 {:.3} ms, p99 {:.3} ms",
            quantile(&mut l, 0.5),
            quantile(&mut l, 0.99)
        );
    }
}
