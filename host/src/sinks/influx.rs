//! The InfluxDB sink: metric points as line protocol, batched by count and
//! time, gzipped, written through the v2 (`/api/v2/write`) or the v1
//! (`/write`) API, retried with backoff until written.
//!
//! Nothing is dropped. While InfluxDB is slow or down, points wait in memory
//! (`buffer_points`), then optionally in spool files in the data dir
//! (`spill_max`); when both are full, [`InfluxSink::push`] blocks the engine
//! thread, the engine queue fills and ingest answers 429: back-pressure
//! reaches the source. Order is kept (a re-emitted window must overwrite the
//! earlier one, not the reverse): spooled points are sent before newer ones.
//! At shutdown, what could not be delivered within `drain_timeout` goes to the
//! spool and is sent after the restart. A point the server refuses as bad
//! data (400/422) goes to the dead-letter file with the server's message; the
//! rest of its batch is written (the batch is split until the bad line is
//! alone). Points are deterministic, so a batch re-sent after a timeout
//! overwrites itself rather than duplicating.

use super::files::{AppendFile, SharedFile};
use super::retry::{Backoff, Failure};
use crate::config::{InfluxApi, InfluxConfig};
use crate::telemetry::{Metrics, SinkStats};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Spool segments are closed at this size, so one is loaded back at a time.
const SEGMENT_BYTES: u64 = 4 << 20;
/// Segment numbers start high so that a shutdown can put its unsent points
/// in a segment numbered before the oldest one.
const FIRST_SEGMENT: u64 = 1 << 40;

/// The number a spool segment's file is named by.
fn segment_number(path: &Path) -> Option<u64> {
    path.file_stem()?.to_str()?.parse().ok()
}

/// Points spooled to disk, oldest segment first.
struct Spool {
    dir: PathBuf,
    /// (number, lines, bytes), oldest first; the last may be open for appends.
    segments: VecDeque<(u64, usize, u64)>,
    writer: Option<File>,
    bytes: u64,
    /// The segment whose lines were loaded into memory, and how many of them
    /// are still unsent: the file is deleted once they are all written.
    loaded: Option<(PathBuf, usize)>,
}

impl Spool {
    fn open(dir: PathBuf) -> std::io::Result<Spool> {
        std::fs::create_dir_all(&dir)?;
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(n) =
                segment_number(&path).filter(|_| path.extension().is_some_and(|e| e == "lp"))
            else {
                continue;
            };
            let bytes = std::fs::metadata(&path)?.len();
            let lines = BufReader::new(File::open(&path)?).lines().count();
            segments.push((n, lines, bytes));
        }
        segments.sort();
        let bytes = segments.iter().map(|s| s.2).sum();
        Ok(Spool {
            dir,
            segments: segments.into(),
            writer: None,
            bytes,
            loaded: None,
        })
    }

    fn path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{n:020}.lp"))
    }

    fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    fn lines(&self) -> usize {
        self.segments.iter().map(|s| s.1).sum()
    }

    /// Appends lines to the newest segment (a new one if it is closed or
    /// full), all or nothing: on an error (a full disk) the segment is cut
    /// back to where it was, so a retry of the same lines writes each once.
    fn append<'a>(&mut self, lines: impl Iterator<Item = &'a str>) -> std::io::Result<()> {
        let full = self.segments.back().is_none_or(|s| s.2 >= SEGMENT_BYTES);
        if self.writer.is_none() || full {
            self.close_writer()?;
            // After the newest segment, and after the one being sent (its
            // file is deleted once sent: a new segment must not share it).
            let loaded = self.loaded.as_ref().and_then(|(p, _)| segment_number(p));
            let n = self
                .segments
                .back()
                .map(|s| s.0)
                .max(loaded)
                .map_or(FIRST_SEGMENT, |n| n + 1);
            let f = File::options()
                .create(true)
                .append(true)
                .open(self.path(n))?;
            self.writer = Some(f);
            self.segments.push_back((n, 0, 0));
        }
        let mut text = Vec::new();
        let mut count = 0;
        for line in lines {
            text.extend_from_slice(line.as_bytes());
            text.push(b'\n');
            count += 1;
        }
        let f = self.writer.as_mut().expect("opened above");
        let seg = self.segments.back_mut().expect("pushed above");
        if let Err(e) = f.write_all(&text) {
            // Part of the lines may have reached the file: drop them. A
            // segment this failed write opened goes with its file, so no
            // empty segment is ever taken for sending.
            if seg.1 == 0 {
                let n = seg.0;
                self.segments.pop_back();
                self.writer = None;
                let _ = std::fs::remove_file(self.path(n));
            } else {
                let _ = f.set_len(seg.2);
            }
            return Err(e);
        }
        seg.1 += count;
        seg.2 += text.len() as u64;
        self.bytes += text.len() as u64;
        Ok(())
    }

    fn close_writer(&mut self) -> std::io::Result<()> {
        if let Some(w) = self.writer.take() {
            w.sync_data()?;
        }
        Ok(())
    }

    /// Removes the oldest segment and returns its lines.
    fn take_oldest(&mut self) -> std::io::Result<Option<Vec<String>>> {
        let Some(&(n, _, bytes)) = self.segments.front() else {
            return Ok(None);
        };
        if self.segments.len() == 1 {
            self.close_writer()?;
        }
        let path = self.path(n);
        let lines: Vec<String> = BufReader::new(File::open(&path)?)
            .lines()
            .collect::<Result<_, _>>()?;
        self.segments.pop_front();
        self.bytes -= bytes;
        if lines.is_empty() {
            // Nothing to send, so nothing would ever delete it.
            std::fs::remove_file(&path)?;
        } else {
            self.loaded = Some((path, lines.len()));
        }
        Ok(Some(lines))
    }

    /// `n` lines of the loaded segment were written: delete it once all were.
    fn sent(&mut self, n: usize) {
        if let Some((path, left)) = &mut self.loaded {
            *left = left.saturating_sub(n);
            if *left == 0 {
                if let Err(e) = std::fs::remove_file(&*path) {
                    tracing::warn!(error = %e, file = %path.display(), "removing a sent spool segment failed");
                }
                self.loaded = None;
            }
        }
    }

    /// Writes lines older than everything spooled (the unsent memory buffer at
    /// shutdown) into a segment numbered before the oldest.
    fn prepend(&mut self, lines: &[String]) -> std::io::Result<()> {
        self.close_writer()?;
        // The loaded segment's unsent lines are among `lines`: its file is
        // rewritten with them all. Otherwise a segment before the oldest.
        let n = match self.loaded.take() {
            Some((path, _)) => segment_number(&path).expect("spool segments are named by number"),
            None => self.segments.front().map_or(FIRST_SEGMENT, |s| s.0 - 1),
        };
        let text = lines.join("\n") + "\n";
        crate::fsutil::write_atomic(&self.path(n), text.as_bytes())?;
        self.segments
            .push_front((n, lines.len(), text.len() as u64));
        self.bytes += text.len() as u64;
        Ok(())
    }
}

struct Backlog {
    /// Lines (without newline) with the time they were handed over, oldest first.
    mem: VecDeque<(String, Instant)>,
    /// Lines at the front of `mem` being written now.
    in_flight: usize,
    spool: Spool,
    /// Set by [`InfluxSink::close`]: deliver until this deadline, then spool.
    closing: Option<Instant>,
    /// Set by [`Stopper::stop`] at shutdown: a full buffer no longer holds
    /// the engine back, points go to the spool whatever its size.
    stopping: bool,
    /// Deliver without waiting for a full batch until `stats.settled` reaches
    /// this (a Kafka commit is waiting for these points).
    hurry_until: u64,
}

struct Shared {
    state: Mutex<Backlog>,
    /// The engine waits here for room.
    room: Condvar,
    /// The delivery thread waits here for points.
    wake: tokio::sync::Notify,
    stats: Arc<SinkStats>,
    /// Where a spool that cannot be written shows (`/readyz`'s `storage`).
    metrics: Arc<Metrics>,
    dead: SharedFile,
    capacity: usize,
    spill_max: u64,
    batch_size: usize,
    flush_interval: Duration,
    backoff: Backoff,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Backlog> {
        self.state.lock().expect("influx backlog lock")
    }

    fn publish(&self, b: &Backlog) {
        self.stats
            .backlog
            .store((b.mem.len() + b.spool.lines()) as u64, Ordering::Relaxed);
        self.stats
            .spilled_bytes
            .store(b.spool.bytes, Ordering::Relaxed);
    }
}

/// How points reach the server: `POST /api/v2/write` (org, bucket, token)
/// or `POST /write` (database), both with `precision=ms`. Spoken with reqwest
/// directly so that an error answer's body is read only up to a bound.
struct Writer {
    http: reqwest::Client,
    url: reqwest::Url,
    /// `Authorization` header (v2 token), or basic auth (v1 user, password).
    token: Option<String>,
    basic: Option<(String, Option<String>)>,
}

impl Writer {
    fn new(c: &InfluxConfig) -> Result<Writer, reqwest::Error> {
        let mut headers = reqwest::header::HeaderMap::new();
        if c.gzip {
            headers.insert(
                reqwest::header::CONTENT_ENCODING,
                reqwest::header::HeaderValue::from_static("gzip"),
            );
        }
        let http = reqwest::Client::builder()
            .timeout(c.timeout)
            .default_headers(headers)
            .build()?;
        let mut url = reqwest::Url::parse(&c.url).expect("validated with the config");
        let mut token = None;
        let mut basic = None;
        match c.api {
            InfluxApi::V2 => {
                url.path_segments_mut()
                    .expect("http URL")
                    .pop_if_empty()
                    .extend(["api", "v2", "write"]);
                url.query_pairs_mut()
                    .append_pair("org", &c.org)
                    .append_pair("bucket", &c.bucket)
                    .append_pair("precision", "ms");
                token = Some(format!("Token {}", c.token));
            }
            InfluxApi::V1 => {
                url.path_segments_mut()
                    .expect("http URL")
                    .pop_if_empty()
                    .push("write");
                url.query_pairs_mut()
                    .append_pair("db", &c.database)
                    .append_pair("precision", "ms");
                if let Some(rp) = &c.retention_policy {
                    url.query_pairs_mut().append_pair("rp", rp);
                }
                basic = c.username.clone().map(|u| (u, c.password.clone()));
            }
        }
        Ok(Writer {
            http,
            url,
            token,
            basic,
        })
    }

    /// One write of a (possibly gzipped) body of lines; timestamps are in ms.
    async fn write(&self, body: Vec<u8>) -> Result<(), Failure> {
        let mut req = self.http.post(self.url.clone()).body(body);
        if let Some(t) = &self.token {
            req = req.header(reqwest::header::AUTHORIZATION, t);
        }
        if let Some((user, password)) = &self.basic {
            req = req.basic_auth(user, password.as_ref());
        }
        let resp = req.send().await.map_err(|e| Failure::from_reqwest(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = super::retry::answer_text(resp).await;
        Err(Failure::from_status(status.as_u16(), &text))
    }
}

fn encode(lines: &[(String, Instant)], gzip: bool) -> Vec<u8> {
    let size: usize = lines.iter().map(|(l, _)| l.len() + 1).sum();
    let mut text = Vec::with_capacity(size);
    for (l, _) in lines {
        text.extend_from_slice(l.as_bytes());
        text.push(b'\n');
    }
    if !gzip {
        return text;
    }
    // Fast compression: line protocol shrinks ~10x even at level 1, and the
    // sink thread must keep up with the pipeline.
    let mut enc =
        flate2::write::GzEncoder::new(Vec::with_capacity(size / 8), flate2::Compression::fast());
    enc.write_all(&text).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

/// The sink: a delivery thread and the backlog the engine hands points to.
pub struct InfluxSink {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    drain_timeout: Duration,
}

impl InfluxSink {
    /// Starts the delivery thread. Points spooled by an earlier run are sent first.
    pub fn start(
        config: &InfluxConfig,
        data_dir: &Path,
        dead: SharedFile,
        stats: Arc<SinkStats>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<InfluxSink> {
        let spool = Spool::open(data_dir.join("spool").join("influxdb"))?;
        if !spool.is_empty() {
            tracing::info!(
                points = spool.lines(),
                dir = %spool.dir.display(),
                "sending points spooled by the last run first"
            );
        }
        let writer = Writer::new(config)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(Backlog {
                mem: VecDeque::new(),
                in_flight: 0,
                spool,
                closing: None,
                stopping: false,
                hurry_until: 0,
            }),
            room: Condvar::new(),
            wake: tokio::sync::Notify::new(),
            stats,
            metrics,
            dead,
            capacity: config.buffer_points,
            spill_max: config.spill_max as u64,
            batch_size: config.batch_size,
            flush_interval: config.flush_interval,
            backoff: Backoff {
                initial: config.retry_initial,
                max: config.retry_max,
            },
        });
        shared.publish(&shared.lock());
        // Spooled points come first: they count as handed over.
        let spooled = shared.lock().spool.lines() as u64;
        shared.stats.handed.store(spooled, Ordering::Relaxed);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let s = shared.clone();
        let gzip = config.gzip;
        let thread = std::thread::Builder::new()
            .name("nexuspipe-influxdb".into())
            .spawn(move || rt.block_on(deliver_all(s, writer, gzip)))?;
        Ok(InfluxSink {
            shared,
            thread: Some(thread),
            drain_timeout: config.drain_timeout,
        })
    }

    /// Hands lines over (each one point, no newline). Blocks while memory and
    /// spool are full: that is the back-pressure.
    pub fn push(&self, lines: Vec<String>) {
        if lines.is_empty() {
            return;
        }
        let s = &self.shared;
        let now = Instant::now();
        let bytes: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
        let mut b = s.lock();
        let mut since = Instant::now();
        loop {
            // Order: once points are spooled, newer ones queue behind them on disk.
            let fits_mem =
                b.spool.is_empty() && (b.mem.len() + lines.len() <= s.capacity || b.mem.is_empty());
            let n = lines.len() as u64;
            if fits_mem {
                b.mem.extend(lines.into_iter().map(|l| (l, now)));
                s.stats.handed.fetch_add(n, Ordering::Relaxed);
                break;
            }
            let spill = b.stopping
                || (s.spill_max > 0
                    && (b.spool.bytes + bytes <= s.spill_max || b.spool.is_empty()));
            if spill {
                let r = b.spool.append(lines.iter().map(String::as_str));
                let ok = r.is_ok();
                if let Err(e) = &r {
                    *s.stats.last_error.lock().expect("sink stats lock") =
                        Some(format!("spilling to {}: {e}", b.spool.dir.display()));
                }
                // Logged (when it starts and ends) and shown in `/readyz` as any
                // file under the data dir that cannot be written.
                s.metrics.storage_result(&b.spool.dir, r, bytes as usize);
                if ok {
                    s.stats.handed.fetch_add(n, Ordering::Relaxed);
                    break;
                }
            }
            if !s.stats.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    backlog = b.mem.len() + b.spool.lines(),
                    "InfluxDB backlog full: the pipeline waits (ingest answers 429) until points are written"
                );
            }
            b = s
                .room
                .wait_timeout(b, Duration::from_millis(500))
                .expect("influx backlog lock")
                .0;
            if since.elapsed() > Duration::from_secs(30) {
                since = Instant::now();
                tracing::warn!(
                    backlog = b.mem.len() + b.spool.lines(),
                    error = ?*s.stats.last_error.lock().expect("sink stats lock"),
                    "still waiting for InfluxDB"
                );
            }
        }
        s.stats.full.store(false, Ordering::Relaxed);
        s.publish(&b);
        drop(b);
        s.wake.notify_one();
    }

    pub fn stats(&self) -> &SinkStats {
        &self.shared.stats
    }

    /// A handle that ends the back-pressure at shutdown (see [`Stopper`]).
    pub fn stopper(&self) -> Stopper {
        Stopper(Some(self.shared.clone()))
    }

    /// Asks for the points handed over so far to be sent now, without
    /// waiting for a full batch or the flush interval.
    pub fn hurry(&self, until: u64) {
        let mut b = self.shared.lock();
        b.hurry_until = b.hurry_until.max(until);
        drop(b);
        self.shared.wake.notify_one();
    }

    /// Points handed over and not yet written (memory and spool).
    pub fn backlog(&self) -> usize {
        let b = self.shared.lock();
        b.mem.len() + b.spool.lines()
    }

    /// Delivers the backlog for up to `drain_timeout`, spools the rest, and
    /// stops the delivery thread.
    pub fn close(mut self) {
        self.shared.lock().closing = Some(Instant::now() + self.drain_timeout);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the InfluxDB delivery thread panicked");
        }
    }
}

/// Ends the back-pressure at shutdown: the engine, perhaps waiting for room
/// while InfluxDB is down, must drain its queue and checkpoint; from now on
/// points that do not fit go to the spool (and are sent after the restart).
#[derive(Clone, Default)]
pub struct Stopper(Option<Arc<Shared>>);

impl Stopper {
    pub fn stop(&self) {
        if let Some(s) = &self.0 {
            s.lock().stopping = true;
            s.room.notify_all();
        }
    }
}

/// What `deliver` achieved.
enum Delivered {
    All,
    /// Shutting down and the drain deadline passed.
    GaveUp,
}

async fn deliver_all(s: Arc<Shared>, writer: Writer, gzip: bool) {
    while let Some(batch) = next_batch(&s).await {
        match deliver(&s, &writer, &batch, gzip).await {
            Delivered::All => {
                let mut b = s.lock();
                let n = batch.len();
                b.mem.drain(..n);
                b.in_flight = 0;
                b.spool.sent(n);
                s.stats.settled.fetch_add(n as u64, Ordering::Relaxed);
                s.publish(&b);
                drop(b);
                s.room.notify_all();
            }
            Delivered::GaveUp => break,
        }
    }
    // Whatever is left (shutdown with InfluxDB unreachable) waits on disk.
    let mut b = s.lock();
    b.in_flight = 0;
    if !b.mem.is_empty() {
        let lines: Vec<String> = b.mem.drain(..).map(|(l, _)| l).collect();
        let n = lines.len();
        match b.spool.prepend(&lines) {
            Ok(()) => {
                tracing::warn!(points = n, dir = %b.spool.dir.display(), "InfluxDB did not take every point before shutdown; the rest is spooled and sent after the restart")
            }
            Err(e) => {
                tracing::error!(points = n, error = %e, "spooling unsent points failed: they are lost")
            }
        }
    }
    if let Err(e) = b.spool.close_writer() {
        tracing::error!(error = %e, "closing the spool failed");
    }
    s.publish(&b);
}

/// Waits for a batch: `batch_size` points, or the oldest waiting
/// `flush_interval`, or shutdown. `None` once closed and empty.
async fn next_batch(s: &Shared) -> Option<Vec<(String, Instant)>> {
    loop {
        let wait = {
            let mut b = s.lock();
            if b.mem.is_empty() && !b.spool.is_empty() {
                match b.spool.take_oldest() {
                    Ok(Some(lines)) => {
                        let now = Instant::now();
                        b.mem.extend(lines.into_iter().map(|l| (l, now)));
                        s.room.notify_all();
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %e, dir = %b.spool.dir.display(), "reading spooled points failed; retrying");
                    }
                }
            }
            let closing = b.closing.is_some();
            match b.mem.front() {
                None if closing && b.spool.is_empty() => return None,
                None => s.flush_interval.max(Duration::from_millis(100)),
                Some((_, at)) => {
                    let age = at.elapsed();
                    let hurry = s.stats.settled.load(Ordering::Relaxed) < b.hurry_until;
                    if b.mem.len() >= s.batch_size || closing || hurry || age >= s.flush_interval {
                        let n = b.mem.len().min(s.batch_size);
                        b.in_flight = n;
                        return Some(b.mem.iter().take(n).cloned().collect());
                    }
                    s.flush_interval - age
                }
            }
        };
        let _ = tokio::time::timeout(wait, s.wake.notified()).await;
    }
}

/// Writes a batch, retrying transient failures (forever, unless shutting
/// down past the deadline) and splitting around lines the server rejects.
async fn deliver(s: &Shared, w: &Writer, batch: &[(String, Instant)], gzip: bool) -> Delivered {
    // Ranges still to write, the next one last; halves keep the batch's order.
    let mut todo = vec![(0, batch.len())];
    let mut attempt = 0;
    while let Some(&(a, z)) = todo.last() {
        let part = &batch[a..z];
        match w.write(encode(part, gzip)).await {
            Ok(()) => {
                todo.pop();
                if !s.stats.up.load(Ordering::Relaxed) {
                    tracing::info!("InfluxDB writes succeed again");
                }
                s.stats.delivered(part.len() as u64);
                let now = Instant::now();
                let mut h = s.stats.latency.lock().expect("sink stats lock");
                for (_, at) in part {
                    h.record(now.duration_since(*at));
                }
                attempt = 0;
            }
            Err(Failure::Rejected { .. }) if part.len() > 1 => {
                todo.pop();
                let mid = a + part.len() / 2;
                todo.push((mid, z));
                todo.push((a, mid));
            }
            Err(Failure::Rejected { status, message }) => {
                todo.pop();
                tracing::warn!(status, error = %message, line = %part[0].0, "InfluxDB rejected a point; it goes to the dead-letter file");
                s.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                let record = serde_json::json!({
                    "at": crate::event::format_timestamp(crate::event::now_ms()),
                    "kind": "influxdb_rejected",
                    "sink": "influxdb",
                    "status": status,
                    "error": message,
                    "line": part[0].0,
                });
                AppendFile::write_shared(&s.dead, &record);
            }
            Err(f) => {
                if s.stats.up.load(Ordering::Relaxed) || attempt % 10 == 9 {
                    tracing::warn!(error = %f.message(), attempt = attempt + 1, points = batch.len(), "InfluxDB write failed; retrying with backoff (points are kept)");
                }
                s.stats.failed(f.message());
                let delay = s.backoff.delay(attempt);
                attempt = attempt.saturating_add(1);
                let deadline = s.lock().closing;
                match deadline {
                    Some(d) if Instant::now() + delay > d => return Delivered::GaveUp,
                    _ => tokio::time::sleep(delay).await,
                }
            }
        }
    }
    Delivered::All
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spool_keeps_order_across_segments_and_a_prepend() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path().join("s")).unwrap();
        let big = "x".repeat(1024);
        for i in 0..5000 {
            spool
                .append(std::iter::once(format!("m{i} {big}").as_str()))
                .unwrap();
        }
        assert!(spool.segments.len() > 1, "rolled into several segments");
        spool.prepend(&["first".to_string()]).unwrap();
        spool.close_writer().unwrap();
        let on_disk: u64 = std::fs::read_dir(dir.path().join("s"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(spool.bytes, on_disk, "the spilled size counts the prepend");
        // A new run finds the same points, in the same order.
        let mut again = Spool::open(dir.path().join("s")).unwrap();
        assert_eq!(again.lines(), 5001);
        let mut all = Vec::new();
        while let Some(lines) = again.take_oldest().unwrap() {
            let n = lines.len();
            all.extend(lines);
            again.sent(n);
        }
        assert_eq!(all[0], "first");
        assert!(all[1].starts_with("m0 "));
        assert!(all[5000].starts_with("m4999 "));
        assert_eq!(std::fs::read_dir(dir.path().join("s")).unwrap().count(), 0);
    }
}
