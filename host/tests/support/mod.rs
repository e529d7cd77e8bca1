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
    "hostile-aggregator",
    "hostile-alerter",
    "counter",
    "counter-v2",
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
        // Copy under the crate names (cargo writes `enrich_geo.wasm`), as
        // `make plugins` does, so the dir works as a plugin dir.
        let built = target_dir.join("wasm32-wasip2/plugin");
        let out = target_dir.join("components");
        std::fs::create_dir_all(&out).unwrap();
        for g in GUESTS {
            let src = built.join(format!("{}.wasm", g.replace('-', "_")));
            let src = if src.exists() {
                src
            } else {
                built.join(format!("{g}.wasm"))
            };
            std::fs::copy(&src, out.join(format!("{g}.wasm")))
                .unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
        }
        out
    });
    dir.join(format!("{krate}.wasm"))
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

/// A `nexuspipe run` process on a free loopback port, with its own data dir.
pub struct Server {
    pub child: std::process::Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    config: String,
    /// Extra `nexuspipe run` arguments (e.g. `--role processor`).
    args: Vec<String>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts the server with `[http] listen` and `[engine] data_dir` set,
    /// plus the given config body; waits until `/readyz` answers 200.
    pub fn start(config: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Server {
        Self::start_with(dir, config, &[])
    }

    /// Starts `nexuspipe run --role <role>`.
    pub fn start_role(config: &str, role: &str) -> Server {
        Self::start_with(tempfile::tempdir().unwrap(), config, &["--role", role])
    }

    /// Starts a server in a role without waiting for it to be ready (for a
    /// server expected to fail).
    pub fn launch_role(config: &str, role: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let args = vec!["--role".to_string(), role.to_string()];
        Server {
            child: Self::spawn(dir.path(), port, config, &args),
            port,
            dir,
            config: config.to_string(),
            args,
        }
    }

    fn start_with(dir: tempfile::TempDir, config: &str, args: &[&str]) -> Server {
        let port = free_port();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut s = Server {
            child: Self::spawn(dir.path(), port, config, &args),
            port,
            dir,
            config: config.to_string(),
            args,
        };
        s.wait_ready();
        s
    }

    fn spawn(dir: &Path, port: u16, config: &str, args: &[String]) -> std::process::Child {
        // `listen` and `data_dir` are merged into the caller's [http]/[engine] tables.
        let mut text = config.to_string();
        let http = format!("listen = \"127.0.0.1:{port}\"\n");
        let data = format!("data_dir = {:?}\n", dir.join("data").display().to_string());
        for (table, line) in [("[http]\n", http), ("[engine]\n", data)] {
            if let Some(i) = text.find(table) {
                text.insert_str(i + table.len(), &line);
            } else {
                text = format!("{table}{line}{text}");
            }
        }
        let path = dir.join("nexuspipe.toml");
        std::fs::write(&path, text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
            .args(["run", "--config", path.to_str().unwrap()])
            .args(args)
            .env(
                "NEXUSPIPE_CACHE_DIR",
                workspace_root().join("target/test-cache"),
            )
            .env("NEXUSPIPE_PLUGIN_DIR", plugin_dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
            .spawn()
            .expect("starting nexuspipe run")
    }

    fn wait_ready(&mut self) {
        self.wait_ready_on(false)
    }

    /// Waits for `/readyz`. A port taken between `free_port` and the
    /// server's bind (another test's process got it first) is chosen again,
    /// or, with `same_port`, tried again shortly.
    fn wait_ready_on(&mut self, same_port: bool) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut tries = 0;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = self.log();
                if log.contains("Address already in use") && tries < 5 {
                    tries += 1;
                    if same_port {
                        std::thread::sleep(std::time::Duration::from_millis(200));
                    } else {
                        self.port = free_port();
                    }
                    self.child = Self::spawn(self.dir.path(), self.port, &self.config, &self.args);
                    continue;
                }
                panic!("server exited early ({status}): {log}");
            }
            if let Ok(r) = ureq::get(&self.url("/readyz")).call()
                && r.status() == 200
            {
                return;
            }
            assert!(
                std::time::Instant::now() < until,
                "server not ready: {}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn data(&self, file: &str) -> PathBuf {
        self.dir.path().join("data").join(file)
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.data(file)).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Posts a JSON body to `/v1/events`; returns status and body.
    pub fn post(&self, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.post_raw(
            "/v1/events",
            "application/json",
            body.to_string().as_bytes(),
            None,
        )
    }

    pub fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
        encoding: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut req = ureq::post(&self.url(path)).set("Content-Type", content_type);
        if let Some(e) = encoding {
            req = req.set("Content-Encoding", e);
        }
        let (status, resp) = match req.send_bytes(body) {
            Ok(r) => (r.status(), r),
            Err(ureq::Error::Status(code, r)) => (code, r),
            Err(e) => panic!("request failed: {e}"),
        };
        let retry_after = resp.header("Retry-After").map(str::to_string);
        let text = resp.into_string().unwrap_or_default();
        let mut v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::json!({"raw": text}));
        if let Some(r) = retry_after {
            v["retry_after_header"] = serde_json::json!(r);
        }
        (status, v)
    }

    /// The whole `/metrics` text.
    pub fn metrics_text(&self) -> String {
        ureq::get(&self.url("/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }

    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }

    /// Waits until the engine has processed every event it accepted, so an
    /// absence asserted next is not just something that has not happened yet.
    pub fn wait_idle(&self) {
        wait_until(30, "every accepted event processed", || {
            self.metric("nexuspipe_events_processed_total")
                >= self.metric("nexuspipe_events_accepted_total")
        });
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }

    /// The config the next start uses (the same data dir).
    pub fn set_config(&mut self, config: &str) {
        self.config = config.to_string();
    }

    /// Starts a stopped server again on the same data dir and config.
    pub fn start_again(&mut self) {
        self.port = free_port();
        self.child = Self::spawn(self.dir.path(), self.port, &self.config, &self.args);
        self.wait_ready();
    }

    /// Stops (SIGTERM) and starts again on the same port, data dir and
    /// config: what a client that reconnects by itself sees.
    pub fn restart_in_place(&mut self) {
        let status = self.stop();
        assert!(status.success(), "clean exit on SIGTERM: {status}");
        self.child = Self::spawn(self.dir.path(), self.port, &self.config, &self.args);
        self.wait_ready_on(true);
    }

    /// Stops (SIGTERM) and starts again on the same data dir and config.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "clean exit on SIGTERM: {status}: {}",
            self.log()
        );
        self.start_again();
    }
}

/// SIGTERM to a child process, then waits for it to exit.
pub fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the test guests are, for `NEXUSPIPE_PLUGIN_DIR` and configs.
pub fn plugin_dir() -> PathBuf {
    guest("funnel").parent().unwrap().to_path_buf()
}

/// Polls `cond` until it holds or `secs` pass; panics with `what` otherwise.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// Final values of line-protocol points: the last line per (series, timestamp)
/// wins, as in InfluxDB.
pub fn final_points(lp: &str) -> std::collections::BTreeMap<(String, i64), String> {
    let mut out = std::collections::BTreeMap::new();
    for line in lp.lines().filter(|l| !l.is_empty()) {
        let (rest, ts) = line.rsplit_once(' ').unwrap();
        let (series, fields) = rest.split_once(' ').unwrap();
        out.insert(
            (series.to_string(), ts.parse().unwrap()),
            fields.to_string(),
        );
    }
    out
}

/// A bare event for in-process plugin tests.
pub fn event(event_type: &str, ts: i64, id: &str) -> nexuspipe::runtime::Event {
    nexuspipe::runtime::Event {
        id: id.into(),
        event_type: event_type.into(),
        timestamp: ts,
        user_id: None,
        session_id: None,
        properties: Vec::new(),
        metadata: nexuspipe::runtime::Metadata {
            ip_address: None,
            user_agent: None,
            platform: None,
            url: None,
            referrer: None,
        },
    }
}

/// A guest loaded as a supervised plugin with `config` and `limits`, no
/// capabilities and no allowed lateness.
pub fn load_plugin(
    rt: &nexuspipe::runtime::Runtime,
    krate: &str,
    config: &str,
    limits: nexuspipe::runtime::Limits,
) -> nexuspipe::runtime::Plugin {
    use nexuspipe::runtime::{Capabilities, HostSettings, Plugin};
    let component = rt.load_file(&guest(krate)).unwrap();
    let settings = HostSettings {
        allowed_lateness: 0,
        downstream_properties: None,
    };
    Plugin::new(
        krate,
        component,
        config,
        settings,
        limits,
        Capabilities::default(),
    )
    .unwrap()
}

/// A TCP proxy on a free port to a server on `target`, which a test can cut
/// (open connections closed, new ones closed at once) and mend: a server out
/// of reach without stopping it (moto, say, keeps its buckets in memory).
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut held = o.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Proxy { port, cut, open }
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn mend(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
