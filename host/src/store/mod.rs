//! The embedded metric store: every point an aggregator emits and every
//! alert, kept under the data dir and answered by the query API.
//!
//! Why this shape (see the README's "Querying" for what it answers): the
//! queries are scans of a few series over a time range, grouped into
//! buckets, at interactive speed, so the data lives in memory, columnar per
//! series and field (a 24-hour query of 1 000 per-minute series touches
//! 1.4 million values in sorted arrays), with a snapshot and an append log
//! of its own on disk (`data.rs`, `file.rs`). An embedded database would
//! store the same and answer slower: each value a row to decode.
//!
//! Writes run on the store's own thread, never on the engine's: the engine
//! hands each round's points and alerts to a bounded queue, and waits only
//! when that queue is full (back-pressure, counted like a sink's).

mod data;
mod file;
pub mod promql;
pub mod query;

pub use data::{Refused, Val};
pub use query::{Agg, CatalogEntry, MetricQuery, QueryError, SeriesOut, Values};

use crate::runtime::MetricPoint;
use crate::telemetry::{Metrics, SinkStats, StoreFigures};
use data::Data;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

/// Bounds of the store (`[store]`), in milliseconds of event time and bytes.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Raw points older than this (behind the newest point) are rolled up.
    pub retention: i64,
    /// The rollups' bucket size...
    pub rollup_resolution: i64,
    /// ...and how long they are kept.
    pub rollup_retention: i64,
    /// New series beyond this many are refused (counted and logged).
    pub max_series: usize,
    /// Past this, the oldest raw points are rolled up before their retention.
    pub memory_budget: usize,
    /// Alerts kept at most; the oldest are forgotten first.
    pub max_alerts: usize,
}

/// The bounds `[store]` sets, durations in milliseconds.
impl From<&crate::config::StoreConfig> for StoreSettings {
    fn from(c: &crate::config::StoreConfig) -> Self {
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        StoreSettings {
            retention: ms(c.retention),
            rollup_resolution: ms(c.rollup_resolution).max(1),
            rollup_retention: ms(c.rollup_retention),
            max_series: c.max_series,
            memory_budget: c.memory_budget,
            max_alerts: c.max_alerts,
        }
    }
}

/// The store, shared by its writer thread and the query API.
pub struct Store {
    data: RwLock<Data>,
    settings: StoreSettings,
    pub figures: Arc<StoreFigures>,
    dir: PathBuf,
}

impl Store {
    /// The contents, for a query (a read lock: writes wait meanwhile).
    pub fn read(&self) -> RwLockReadGuard<'_, Data> {
        self.data.read().expect("store lock")
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

pub use data::Data as StoreData;

/// Called with a write's points and alerts once a query can see them.
pub type Queryable = Box<dyn FnOnce(&[MetricPoint], &[Arc<serde_json::Value>]) + Send>;

enum Msg {
    Write {
        points: Vec<MetricPoint>,
        alerts: Vec<Arc<serde_json::Value>>,
        then: Option<Queryable>,
    },
    /// Make what was written durable (at the engine's checkpoints).
    Sync,
}

/// The engine's side of the store: hands writes to its thread.
pub struct StoreWriter {
    tx: Option<SyncSender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
    store: Arc<Store>,
    stats: Arc<SinkStats>,
}

/// Compact the log into a new snapshot once it is this large.
const COMPACT_LOG_BYTES: u64 = 64 << 20;
/// Batches (a round's points and alerts each) waiting for the store thread.
const QUEUE: usize = 256;

impl StoreWriter {
    /// Loads the store from `dir` (snapshot, then log; a torn log tail is
    /// cut off and reported) and starts its thread.
    pub fn open(
        dir: PathBuf,
        settings: StoreSettings,
        metrics: Arc<Metrics>,
        stats: Arc<SinkStats>,
    ) -> anyhow::Result<StoreWriter> {
        std::fs::create_dir_all(&dir)?;
        let snapshot = dir.join("snapshot.bin");
        let log_path = dir.join("log.bin");
        let mut data = Data::new();
        let t = Instant::now();
        let snap = file::read_into(&snapshot, &mut data)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", snapshot.display()))?;
        if let Some(d) = snap.damage {
            anyhow::bail!(
                "the store snapshot {} is damaged: {d}; move it away to start with what the log holds",
                snapshot.display()
            );
        }
        let log = file::read_into(&log_path, &mut data)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", log_path.display()))?;
        if let Some(d) = &log.damage {
            tracing::warn!(file = %log_path.display(), damage = %d, kept_bytes = log.good, "the store log ends in a damaged record (a crash mid-write); it is cut off there");
        }
        if snap.records + log.records > 0 {
            tracing::info!(
                records = snap.records + log.records,
                series = data.series_count,
                took_ms = t.elapsed().as_millis() as u64,
                "store loaded"
            );
        }
        data.maintain(&settings);
        let log = file::Log::open(log_path, log.good)?;
        let figures = metrics.store.clone();
        let store = Arc::new(Store {
            data: RwLock::new(data),
            settings,
            figures,
            dir,
        });
        publish(&store);
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let s = store.clone();
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("nexuspipe-store".into())
            .spawn(move || run(s, rx, log, snapshot, metrics, st))?;
        Ok(StoreWriter {
            tx: Some(tx),
            thread: Some(thread),
            store,
            stats,
        })
    }

    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    pub fn stats(&self) -> &SinkStats {
        &self.stats
    }

    /// Hands a round's points and alerts over; waits only while the queue
    /// is full. `then` runs once a query can see them (live push goes then,
    /// so a client that asks on a push finds what it was told about).
    pub fn push(
        &self,
        points: Vec<MetricPoint>,
        alerts: Vec<Arc<serde_json::Value>>,
        then: Option<Queryable>,
    ) {
        if points.is_empty() && alerts.is_empty() {
            return;
        }
        let n = (points.len() + alerts.len()) as u64;
        self.stats.handed.fetch_add(n, Ordering::Relaxed);
        self.stats.backlog.fetch_add(n, Ordering::Relaxed);
        self.send(Msg::Write {
            points,
            alerts,
            then,
        });
    }

    fn send(&self, msg: Msg) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(msg)) => {
                self.stats.full.store(true, Ordering::Relaxed);
                let _ = tx.send(msg);
                self.stats.full.store(false, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("the store thread has stopped; points are no longer stored");
            }
        }
    }

    /// Asks for what was written to be made durable.
    pub fn sync(&self) {
        self.send(Msg::Sync);
    }

    /// Writes what is queued, syncs and stops the thread.
    pub fn close(mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the store thread panicked");
        }
    }
}

fn publish(store: &Store) {
    let d = store.read();
    let f = &store.figures;
    f.series.store(d.series_count as u64, Ordering::Relaxed);
    f.bytes.store(d.weight as u64, Ordering::Relaxed);
    f.early_rollups.store(d.early_rollups, Ordering::Relaxed);
}

/// The store thread: applies writes, appends them to the log (waiting while
/// the disk refuses, which is back-pressure), keeps retention, compacts.
fn run(
    store: Arc<Store>,
    rx: Receiver<Msg>,
    mut log: file::Log,
    snapshot: PathBuf,
    metrics: Arc<Metrics>,
    stats: Arc<SinkStats>,
) {
    let mut last_maintain = Instant::now();
    let mut refused_logged: Option<Instant> = None;
    let mut buf = Vec::new();
    let sync = |log: &mut file::Log| {
        let r = log.sync();
        metrics.storage_result(log.path(), r, 0)
    };
    for msg in rx {
        match msg {
            Msg::Write {
                points,
                alerts,
                then,
            } => {
                let n = (points.len() + alerts.len()) as u64;
                buf.clear();
                let mut refused = 0u64;
                let told = then.map(|f| (f, alerts.clone()));
                {
                    let mut d = store.data.write().expect("store lock");
                    for p in &points {
                        match d.put(p, store.settings.max_series) {
                            Ok(()) => file::encode_point(&mut buf, p),
                            Err(Refused::TooManySeries) => refused += 1,
                        }
                    }
                    for a in alerts {
                        file::encode_alert(&mut buf, &a);
                        d.put_alert(a);
                    }
                }
                if let Some((f, alerts)) = told {
                    f(&points, &alerts);
                }
                if refused > 0 {
                    store
                        .figures
                        .series_refused
                        .fetch_add(refused, Ordering::Relaxed);
                    if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        refused_logged = Some(Instant::now());
                        tracing::warn!(
                            points = refused,
                            max_series = store.settings.max_series,
                            "the store holds max_series series: points of new series are not stored (counted in nexuspipe_store_series_refused_total)"
                        );
                    }
                }
                store
                    .figures
                    .points
                    .fetch_add(points.len() as u64 - refused, Ordering::Relaxed);
                // The disk must take the records before the next write:
                // the queue fills meanwhile, and the engine waits.
                let mut wait = Duration::from_millis(20);
                loop {
                    let r = log.append(&buf);
                    if metrics.storage_result(log.path(), r, buf.len()) {
                        break;
                    }
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                stats.backlog.fetch_sub(n, Ordering::Relaxed);
                stats.settled.fetch_add(n, Ordering::Relaxed);
                stats.delivered(n);
            }
            Msg::Sync => {
                sync(&mut log);
            }
        }
        if last_maintain.elapsed() >= Duration::from_secs(1) {
            last_maintain = Instant::now();
            store
                .data
                .write()
                .expect("store lock")
                .maintain(&store.settings);
            publish(&store);
            if log.bytes > COMPACT_LOG_BYTES {
                compact(&store, &mut log, &snapshot, &metrics);
            }
        }
    }
    sync(&mut log);
    compact(&store, &mut log, &snapshot, &metrics);
}

/// Folds the log into a new snapshot.
fn compact(store: &Store, log: &mut file::Log, snapshot: &Path, metrics: &Metrics) {
    let t = Instant::now();
    let written = {
        let d = store.read();
        file::write_snapshot(snapshot, &d)
    };
    let r = written.and_then(|bytes| {
        log.reset()?;
        Ok(bytes)
    });
    match r {
        Ok(bytes) => {
            metrics.storage_result(snapshot, Ok(()), 0);
            tracing::debug!(
                bytes,
                took_ms = t.elapsed().as_millis() as u64,
                "store snapshot written"
            );
        }
        // The log still holds everything: nothing is lost, compaction waits.
        Err(e) => {
            metrics.storage_result(snapshot, Err(e), 0);
        }
    }
}
