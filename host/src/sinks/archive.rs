//! The event archive: every event the pipeline took, as Apache Parquet files
//! partitioned by event-time hour (`date=2026-12-01/hour=10/part-….parquet`),
//! zstd-compressed, for DuckDB, pandas/pyarrow or Spark to read as one table.
//!
//! A part is written aside (`.part-….tmp`) and renamed when complete, so a
//! reader never sees half a file. Parts close at every checkpoint (as
//! Flink's file sink does with bulk formats), and also by size and age in
//! between. Each part's name carries the write-ahead-log position of its
//! last event: a part never spans a checkpoint, so on recovery the parts
//! after the restored checkpoint are removed and the replayed log writes
//! their events again, once.

use crate::runtime::{Event, Value};
use crate::telemetry::Metrics;
use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, MapBuilder, MapFieldNames, StringBuilder,
    StructBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

/// Settings of `[archive]`.
#[derive(Debug, Clone)]
pub struct ArchiveSettings {
    pub dir: PathBuf,
    /// The events as received, not as the enrichers left them.
    pub raw: bool,
    /// A part closes once this many bytes are written.
    pub max_file_size: u64,
    /// A part closes once it is this old.
    pub flush_interval: Duration,
    /// Partitions whose hour ended longer ago than this are removed.
    pub keep: Option<Duration>,
    /// Object storage: parts are written in `dir` (staging) and put there.
    pub remote: Option<RemoteSettings>,
}

/// `url = "s3://bucket/prefix"` and the store's options (credentials,
/// endpoint, region; the environment's `AWS_*` variables otherwise).
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub url: String,
    pub options: Vec<(String, String)>,
}

/// The bucket side of an archive on object storage. A put is atomic, so a
/// reader never sees half a part there either.
struct Remote {
    store: Box<dyn object_store::ObjectStore>,
    prefix: String,
    rt: tokio::runtime::Runtime,
    /// `archive.url`, as `/readyz` names the bucket.
    url: String,
}

impl Remote {
    fn open(s: &RemoteSettings) -> Result<Remote, ArchiveError> {
        let store_error = |what: &str, e: object_store::Error| ArchiveError::Store {
            what: format!("{what} ({})", s.url),
            source: e,
        };
        let Some(rest) = s.url.strip_prefix("s3://") else {
            return Err(ArchiveError::Config(format!(
                "archive.url {:?}: only s3:// (and S3-compatible stores) for now",
                s.url
            )));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // object_store's own retries stay short (its default waits up to 3
        // minutes before it reports anything): the writer tries again for
        // as long as it takes, and /readyz says so meanwhile.
        let retry = object_store::RetryConfig {
            backoff: Default::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
        };
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry);
        for (k, v) in &s.options {
            let key = k
                .parse()
                .map_err(|e| store_error(&format!("archive.options.{k}"), e))?;
            builder = builder.with_config(key, v);
        }
        let store = builder
            .build()
            .map_err(|e| store_error("opening the bucket", e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io(Path::new("tokio runtime")))?;
        Ok(Remote {
            store: Box::new(store),
            prefix: prefix.trim_matches('/').to_string(),
            rt,
            url: s.url.trim_end_matches('/').to_string(),
        })
    }

    fn path(&self, rel: &str) -> object_store::path::Path {
        if self.prefix.is_empty() {
            object_store::path::Path::from(rel)
        } else {
            object_store::path::Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn put(&self, rel: &str, file: &Path) -> Result<(), ArchiveError> {
        use object_store::ObjectStoreExt;
        let bytes = std::fs::read(file).map_err(io(file))?;
        let at = self.path(rel);
        self.rt
            .block_on(self.store.put(&at, bytes.into()))
            .map_err(|e| ArchiveError::Store {
                what: format!("putting {at}"),
                source: e,
            })?;
        Ok(())
    }

    /// Every part in the bucket, as (path below the prefix, object path).
    fn parts(&self) -> Result<Vec<(String, object_store::path::Path)>, ArchiveError> {
        use futures_util::TryStreamExt;
        let prefix = (!self.prefix.is_empty()).then(|| self.path(""));
        let listed: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.store.list(prefix.as_ref()).try_collect())
            .map_err(|e| ArchiveError::Store {
                what: "listing the archive".into(),
                source: e,
            })?;
        let skip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        Ok(listed
            .into_iter()
            .map(|m| {
                (
                    m.location.as_ref().get(skip..).unwrap_or("").to_string(),
                    m.location,
                )
            })
            .collect())
    }

    /// Deletes the parts whose name `doomed` picks; returns how many.
    fn delete_parts(&self, doomed: impl Fn(&str) -> bool) -> Result<usize, ArchiveError> {
        let mut removed = 0;
        for (rel, at) in self.parts()? {
            if doomed(rel.rsplit('/').next().unwrap_or("")) {
                self.delete(&at)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn delete(&self, at: &object_store::path::Path) -> Result<(), ArchiveError> {
        use object_store::ObjectStoreExt;
        self.rt
            .block_on(self.store.delete(at))
            .map_err(|e| ArchiveError::Store {
                what: format!("deleting {at}"),
                source: e,
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("archive {path}: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("archive: {what}: {source}")]
    Store {
        what: String,
        source: object_store::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("the archive writer stopped")]
    Stopped,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Retries what failed on a full disk or an unreachable bucket until it
/// succeeds or the archive stops: the writer waits, the bounded channel to
/// it fills, and the engine is held back (ingest answers 429 once its queue
/// is full) instead of events being left out. `/readyz` names the file or
/// bucket meanwhile. On stop the error is returned: what was not written is
/// in the write-ahead log, which the next start replays.
#[derive(Clone)]
struct Patience {
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
}

impl Patience {
    fn retry<T>(
        &self,
        what: &Path,
        mut op: impl FnMut() -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let mut wait = Duration::from_millis(20);
        let mut failing = false;
        loop {
            match op() {
                Ok(v) => {
                    if failing {
                        self.metrics.storage_result(what, Ok(()), 0);
                    }
                    return Ok(v);
                }
                Err(e) if self.stop.load(Ordering::Relaxed) => return Err(e),
                Err(e) => {
                    failing = true;
                    self.metrics.storage_result(what, Err(e), 0);
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// A part's file, written with [`Patience`]. A `write` that fails wrote
/// nothing (a regular file's `write(2)` either writes some bytes or fails),
/// so trying the same bytes again is safe.
struct PatientFile {
    file: std::fs::File,
    path: PathBuf,
    patience: Patience,
}

impl Write for PatientFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let file = &mut self.file;
        self.patience.retry(&self.path, || file.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let file = &mut self.file;
        self.patience.retry(&self.path, || file.flush())
    }
}

/// The columns: the core fields and metadata typed, properties as a map
/// from name to a value of one of four types (the others null).
pub fn schema() -> SchemaRef {
    let text = |name: &str| Field::new(name, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        text("user_id"),
        text("session_id"),
        Field::new(
            "properties",
            DataType::Map(
                Arc::new(Field::new(
                    "entries",
                    DataType::Struct(Fields::from(vec![
                        Field::new("key", DataType::Utf8, false),
                        Field::new("value", DataType::Struct(value_fields()), true),
                    ])),
                    false,
                )),
                false,
            ),
            false,
        ),
        text("ip_address"),
        text("user_agent"),
        text("platform"),
        text("url"),
        text("referrer"),
    ]))
}

fn value_fields() -> Fields {
    Fields::from(vec![
        Field::new("string", DataType::Utf8, true),
        Field::new("int", DataType::Int64, true),
        Field::new("float", DataType::Float64, true),
        Field::new("bool", DataType::Boolean, true),
    ])
}

/// Events as one record batch of [`schema`].
pub fn to_batch(events: &[&Event]) -> RecordBatch {
    let n = events.len();
    let mut id = StringBuilder::with_capacity(n, n * 36);
    let mut ty = StringBuilder::with_capacity(n, n * 12);
    let mut ts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut text: Vec<StringBuilder> = (0..7).map(|_| StringBuilder::new()).collect();
    let values = StructBuilder::new(
        value_fields(),
        vec![
            Box::new(StringBuilder::new()),
            Box::new(Int64Builder::new()),
            Box::new(Float64Builder::new()),
            Box::new(BooleanBuilder::new()),
        ],
    );
    let names = MapFieldNames {
        entry: "entries".into(),
        key: "key".into(),
        value: "value".into(),
    };
    let mut props = MapBuilder::new(Some(names), StringBuilder::new(), values);
    for e in events {
        id.append_value(&e.id);
        ty.append_value(&e.event_type);
        ts.append_value(e.timestamp);
        let m = &e.metadata;
        for (b, v) in text.iter_mut().zip([
            &e.user_id,
            &e.session_id,
            &m.ip_address,
            &m.user_agent,
            &m.platform,
            &m.url,
            &m.referrer,
        ]) {
            b.append_option(v.as_deref());
        }
        for p in &e.properties {
            props.keys().append_value(&p.key);
            let v = props.values();
            let (s, i, f, b) = match &p.value {
                Value::Str(s) => (Some(s.as_str()), None, None, None),
                Value::Int(i) => (None, Some(*i), None, None),
                Value::Float(f) => (None, None, Some(*f), None),
                Value::Boolean(b) => (None, None, None, Some(*b)),
            };
            v.field_builder::<StringBuilder>(0)
                .expect("string field")
                .append_option(s);
            v.field_builder::<Int64Builder>(1)
                .expect("int field")
                .append_option(i);
            v.field_builder::<Float64Builder>(2)
                .expect("float field")
                .append_option(f);
            v.field_builder::<BooleanBuilder>(3)
                .expect("bool field")
                .append_option(b);
            v.append(true);
        }
        props.append(true).expect("keys and values in step");
    }
    let mut text = text
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let mut next = || text.next().expect("seven text columns");
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(ty.finish()),
        Arc::new(ts.finish()),
        next(),
        next(),
        Arc::new(props.finish()),
        next(),
        next(),
        next(),
        next(),
        next(),
    ];
    RecordBatch::try_new(schema(), columns).expect("columns match the schema")
}

/// The partition of an event time: `date=YYYY-MM-DD/hour=HH`.
pub fn partition(ts: i64) -> String {
    let hour = ts.div_euclid(3_600_000);
    let t = time::OffsetDateTime::from_unix_timestamp(hour * 3600)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "date={:04}-{:02}-{:02}/hour={:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour()
    )
}

/// A part being written.
struct Part {
    tmp: PathBuf,
    partition: String,
    /// A Kafka processor's: the source partition of its events, and the
    /// offset after the last of them (see [`Archive::write_source`]).
    source: Option<(i32, u64)>,
    writer: ArrowWriter<PatientFile>,
    opened: Instant,
}

/// What the engine tells the writer.
enum Msg {
    /// Events after the pipeline, the last of them at log position `seq`;
    /// on a Kafka processor, from `source` partition, `seq` the offset
    /// after the last of them.
    Events {
        events: Vec<Event>,
        seq: u64,
        source: Option<i32>,
    },
    /// A processor took `source` partition, committed at offset `next`:
    /// its parts past that are removed (the partition is read again from
    /// there, and those events archived again); answered with how many.
    Forget {
        source: i32,
        next: u64,
        reply: SyncSender<Result<usize, String>>,
    },
    /// Close every part (a checkpoint at log position `seq`); answered once
    /// they are renamed and synced.
    Seal {
        seq: u64,
        reply: SyncSender<Result<(), String>>,
    },
}

/// How often retention (`keep`) runs, at most.
const RETAIN_EVERY: Duration = Duration::from_secs(60);

/// The engine's side: sends events and seals to the writer thread over a
/// bounded channel, so a slow disk holds the pipeline back.
pub struct Archive {
    tx: SyncSender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Ends the writer's retries (see [`Patience`]).
    stop: Arc<AtomicBool>,
}

impl Archive {
    /// Opens the archive: removes parts left half-written and, after a
    /// restore at log position `restored` with the log on (`replays`), the
    /// parts past it (the log writes their events again); then starts the
    /// writer.
    pub fn open(
        settings: ArchiveSettings,
        restored: u64,
        replays: bool,
        metrics: Arc<Metrics>,
    ) -> Result<Archive, ArchiveError> {
        std::fs::create_dir_all(&settings.dir).map_err(io(&settings.dir))?;
        let remote = settings.remote.as_ref().map(Remote::open).transpose()?;
        let after = replays.then_some(restored);
        let mut removed = clean(&settings.dir, after)?;
        if let (Some(r), Some(after)) = (&remote, after) {
            removed += r.delete_parts(|name| part_seq(name).is_some_and(|s| s > after))?;
        }
        if removed > 0 {
            tracing::info!(
                parts = removed,
                dir = %settings.dir.display(),
                "archive: removed parts after the restored checkpoint (the log replays their events)"
            );
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let stop = Arc::new(AtomicBool::new(false));
        let patience = Patience {
            metrics,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("nexuspipe-archive".into())
            .spawn(move || writer(settings, remote, rx, patience))
            .map_err(|e| ArchiveError::Io {
                path: PathBuf::new(),
                source: e,
            })?;
        Ok(Archive {
            tx,
            thread: Some(thread),
            stop,
        })
    }

    /// Hands events on (blocks while the writer is behind).
    pub fn write(&self, events: Vec<Event>, seq: u64) {
        if events.is_empty() {
            return;
        }
        let _ = self.tx.send(Msg::Events {
            events,
            seq,
            source: None,
        });
    }

    /// A Kafka processor's events from `source` partition, `next` the
    /// offset after the last of them. Its parts hold one source partition
    /// each, named `part-s<source>-<next>-<unique>.parquet`, so whichever
    /// processor takes the partition over knows which are committed.
    pub fn write_source(&self, events: Vec<Event>, source: i32, next: u64) {
        if events.is_empty() {
            return;
        }
        let _ = self.tx.send(Msg::Events {
            events,
            seq: next,
            source: Some(source),
        });
    }

    /// A processor took `source` partition, committed at offset `next`
    /// (0: nothing committed): removes its parts past that, which were
    /// written but never committed (a crash between a checkpoint's seal and
    /// its commit); reading on from `next` archives those events again.
    pub fn forget(&self, source: i32, next: u64) -> Result<usize, ArchiveError> {
        self.ask(|reply| Msg::Forget {
            source,
            next,
            reply,
        })
    }

    /// Closes every part (a checkpoint): returns once they are in place.
    pub fn seal(&self, seq: u64) -> Result<(), ArchiveError> {
        self.ask(|reply| Msg::Seal { seq, reply })
    }

    /// Sends the writer a message that carries its reply, and waits for it.
    fn ask<T>(
        &self,
        msg: impl FnOnce(SyncSender<Result<T, String>>) -> Msg,
    ) -> Result<T, ArchiveError> {
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        self.tx
            .send(msg(reply))
            .map_err(|_| ArchiveError::Stopped)?;
        rx.recv()
            .map_err(|_| ArchiveError::Stopped)?
            .map_err(|e| ArchiveError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(e),
            })
    }
}

impl Drop for Archive {
    fn drop(&mut self) {
        // The writer ends with the channel (and stops retrying); what it
        // held is sealed by the last checkpoint, or written again from the log.
        self.stop.store(true, Ordering::Relaxed);
        let (tx, _) = std::sync::mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A processor's part name: its source partition and the offset after its
/// last event.
fn source_part(name: &str) -> Option<(i32, u64)> {
    let mut it = name.strip_prefix("part-s")?.split('-');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Removes a source partition's parts past offset `next`, here or in the
/// bucket; returns how many.
fn forget(
    settings: &ArchiveSettings,
    remote: Option<&Remote>,
    source: i32,
    next: u64,
) -> Result<usize, ArchiveError> {
    let past = |name: &str| source_part(name).is_some_and(|(s, n)| s == source && n > next);
    match remote {
        Some(r) => r.delete_parts(past),
        None => remove_files(&settings.dir, past),
    }
}

/// The log position in a part's name, if it is one.
fn part_seq(name: &str) -> Option<u64> {
    name.strip_prefix("part-")?.split('-').next()?.parse().ok()
}

/// Removes `.tmp` files, and parts past `after`; returns how many.
fn clean(dir: &Path, after: Option<u64>) -> Result<usize, ArchiveError> {
    remove_files(dir, |name| {
        name.ends_with(".tmp") || after.is_some_and(|a| part_seq(name).is_some_and(|s| s > a))
    })
}

/// Removes the files under `dir` whose name `doomed` picks; returns how many.
fn remove_files(dir: &Path, doomed: impl Fn(&str) -> bool) -> Result<usize, ArchiveError> {
    let mut removed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let entry = entry.map_err(io(&d))?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if doomed(&entry.file_name().to_string_lossy()) {
                std::fs::remove_file(&path).map_err(io(&path))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

fn writer(
    settings: ArchiveSettings,
    remote: Option<Remote>,
    rx: Receiver<Msg>,
    patience: Patience,
) {
    let remote = remote.as_ref();
    // By hour partition and, on a processor, source partition.
    let mut parts: HashMap<(String, Option<i32>), Part> = HashMap::new();
    let mut seq = 0u64;
    // A write that failed left events out of a part: no seal may count
    // them as archived, so checkpoints wait and a restart replays the log.
    let mut failed: Option<String> = None;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let tick = settings.flush_interval.min(Duration::from_secs(1));
    // Retention walks (or lists) the whole archive: once a minute at most,
    // not at every checkpoint.
    let mut retained: Option<Instant> = None;
    loop {
        let msg = match rx.recv_timeout(tick) {
            Ok(m) => Some(m),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        match msg {
            Some(Msg::Events {
                events,
                seq: s,
                source,
            }) => {
                if source.is_none() {
                    seq = seq.max(s);
                }
                let mut by_partition: HashMap<String, Vec<&Event>> = HashMap::new();
                for e in &events {
                    by_partition
                        .entry(partition(e.timestamp))
                        .or_default()
                        .push(e);
                }
                for (p, rows) in by_partition {
                    let at = source.map(|src| (src, s));
                    if let Err(e) = append(
                        &settings,
                        &mut parts,
                        &props,
                        (&p, at),
                        &rows,
                        seq,
                        &patience,
                    ) {
                        tracing::error!(error = %e, partition = %p, "archive write failed: checkpoints wait until a restart writes the events again from the log");
                        failed.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            Some(Msg::Seal { seq: s, reply }) => {
                seq = seq.max(s);
                let r = match &failed {
                    Some(e) => Err(format!("an earlier write failed: {e}")),
                    None => {
                        let r = seal_all(&mut parts, seq, remote, &patience);
                        if r.is_ok() && retained.is_none_or(|t| t.elapsed() >= RETAIN_EVERY) {
                            retained = Some(Instant::now());
                            // Old hours left for a while are no reason to
                            // hold checkpoints back: the next pass removes them.
                            if let Err(e) = retain(&settings, remote) {
                                tracing::warn!(error = %e, "archive: removing old hours failed; trying again in a minute");
                            }
                        }
                        r.map_err(|e| e.to_string())
                    }
                };
                let _ = reply.send(r);
            }
            Some(Msg::Forget {
                source,
                next,
                reply,
            }) => {
                // Open parts of it (none, unless a seal failed) go too.
                let open: Vec<_> = parts
                    .keys()
                    .filter(|(_, s)| *s == Some(source))
                    .cloned()
                    .collect();
                for k in open {
                    if let Some(p) = parts.remove(&k) {
                        drop(p.writer);
                        let _ = std::fs::remove_file(&p.tmp);
                    }
                }
                let r = forget(&settings, remote, source, next);
                if let Ok(n) = &r
                    && *n > 0
                {
                    tracing::info!(
                        partition = source,
                        offset = next,
                        parts = n,
                        "archive: removed a partition's parts past its committed offset (they are read and archived again)"
                    );
                }
                let _ = reply.send(r.map_err(|e| e.to_string()));
            }
            None => {}
        }
        // Age and size: close what is due.
        let due: Vec<(String, Option<i32>)> = parts
            .iter()
            .filter(|(_, p)| {
                p.opened.elapsed() >= settings.flush_interval
                    || p.writer.bytes_written() as u64 + p.writer.in_progress_size() as u64
                        >= settings.max_file_size
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            let part = parts.remove(&k).expect("due part");
            if let Err(e) = seal(part, seq, remote, &patience) {
                tracing::error!(error = %e, "archive: closing a part failed");
                failed.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

fn append(
    settings: &ArchiveSettings,
    parts: &mut HashMap<(String, Option<i32>), Part>,
    props: &WriterProperties,
    (partition, from): (&str, Option<(i32, u64)>),
    rows: &[&Event],
    seq: u64,
    patience: &Patience,
) -> Result<(), ArchiveError> {
    let key = (partition.to_string(), from.map(|(s, _)| s));
    if !parts.contains_key(&key) {
        let dir = settings.dir.join(partition);
        patience
            .retry(&dir, || std::fs::create_dir_all(&dir))
            .map_err(io(&dir))?;
        // Unique across runs: a process id repeats (always 1 in a container),
        // and a part of an earlier run must never be overwritten.
        let tag = from.map_or_else(|| seq.to_string(), |(s, _)| format!("s{s}"));
        let tmp = dir.join(format!(".part-{tag}-{}.tmp", uuid::Uuid::now_v7().simple()));
        let file = patience
            .retry(&tmp, || std::fs::File::create(&tmp))
            .map_err(io(&tmp))?;
        let file = PatientFile {
            file,
            path: tmp.clone(),
            patience: patience.clone(),
        };
        let writer =
            ArrowWriter::try_new(file, schema(), Some(props.clone())).map_err(|source| {
                ArchiveError::Parquet {
                    path: tmp.clone(),
                    source,
                }
            })?;
        parts.insert(
            key.clone(),
            Part {
                tmp,
                partition: partition.to_string(),
                source: from,
                writer,
                opened: Instant::now(),
            },
        );
    }
    let part = parts.get_mut(&key).expect("open part");
    if let (Some(at), Some((_, next))) = (&mut part.source, from) {
        at.1 = at.1.max(next);
    }
    part.writer
        .write(&to_batch(rows))
        .map_err(|source| ArchiveError::Parquet {
            path: part.tmp.clone(),
            source,
        })
}

fn seal_all(
    parts: &mut HashMap<(String, Option<i32>), Part>,
    seq: u64,
    remote: Option<&Remote>,
    patience: &Patience,
) -> Result<(), ArchiveError> {
    for (_, part) in parts.drain() {
        seal(part, seq, remote, patience)?;
    }
    Ok(())
}

/// Finishes a part and moves it into place: `part-<seq>-<unique>.parquet`.
/// On object storage the finished file is put there, then removed here.
fn seal(
    part: Part,
    seq: u64,
    remote: Option<&Remote>,
    patience: &Patience,
) -> Result<(), ArchiveError> {
    let Part {
        tmp,
        writer,
        partition,
        source,
        ..
    } = part;
    let file = writer
        .into_inner()
        .map_err(|source| ArchiveError::Parquet {
            path: tmp.clone(),
            source,
        })?;
    let file = file.file;
    patience.retry(&tmp, || file.sync_all()).map_err(io(&tmp))?;
    let name = tmp
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(".part-"))
        .and_then(|n| n.strip_suffix(".tmp"))
        .unwrap_or("x");
    // The unique tail of the name stays; the position is the part's last.
    let unique = name.split_once('-').map_or(name, |(_, rest)| rest);
    let done_name = match source {
        None => format!("part-{seq:020}-{unique}.parquet"),
        Some((src, next)) => format!("part-s{src}-{next:020}-{unique}.parquet"),
    };
    if let Some(r) = remote {
        // The finished part waits in staging while the bucket is out of reach.
        let rel = format!("{partition}/{done_name}");
        let url = PathBuf::from(format!("{}/{rel}", r.url));
        patience
            .retry(&url, || {
                r.put(&rel, &tmp)
                    .map_err(|e| std::io::Error::other(e.to_string()))
            })
            .map_err(io(&url))?;
        return std::fs::remove_file(&tmp).map_err(io(&tmp));
    }
    let done = tmp.with_file_name(done_name);
    patience
        .retry(&tmp, || std::fs::rename(&tmp, &done))
        .map_err(io(&tmp))?;
    if let Some(dir) = done.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Removes partitions whose hour ended more than `keep` ago.
fn retain(settings: &ArchiveSettings, remote: Option<&Remote>) -> Result<(), ArchiveError> {
    let Some(keep) = settings.keep else {
        return Ok(());
    };
    let now = crate::event::now_ms();
    let cutoff = now - keep.as_millis() as i64;
    if let Some(r) = remote {
        for (rel, at) in r.parts()? {
            let mut it = rel.split('/');
            let (Some(day), Some(h)) = (
                it.next().and_then(|d| d.strip_prefix("date=")),
                it.next().and_then(|h| h.strip_prefix("hour=")),
            ) else {
                continue;
            };
            if hour_start(day, h).is_some_and(|start| start + 3_600_000 <= cutoff) {
                r.delete(&at)?;
            }
        }
        return Ok(());
    }
    let Ok(dates) = std::fs::read_dir(&settings.dir) else {
        return Ok(());
    };
    for date in dates.flatten() {
        let date_name = date.file_name().to_string_lossy().into_owned();
        let Some(day) = date_name.strip_prefix("date=") else {
            continue;
        };
        let Ok(hours) = std::fs::read_dir(date.path()) else {
            continue;
        };
        for hour in hours.flatten() {
            let hour_name = hour.file_name().to_string_lossy().into_owned();
            let Some(h) = hour_name.strip_prefix("hour=") else {
                continue;
            };
            if hour_start(day, h).is_some_and(|start| start + 3_600_000 <= cutoff) {
                std::fs::remove_dir_all(hour.path()).map_err(io(&hour.path()))?;
                tracing::info!(partition = %format!("{date_name}/{hour_name}"), "archive: partition past `keep` removed");
            }
        }
        // An emptied day goes too.
        let _ = std::fs::remove_dir(date.path());
    }
    Ok(())
}

/// The events of a record batch of [`schema`] (what [`to_batch`] wrote):
/// the way back, for replays from the archive.
pub fn from_batch(batch: &RecordBatch) -> Result<Vec<Event>, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
    use arrow_array::{Array, StringArray};
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| format!("no column `{name}`"))
    };
    let text = |name: &str| -> Result<&StringArray, String> {
        col(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| format!("column `{name}` is not a string column"))
    };
    let id = text("event_id")?;
    let ty = text("event_type")?;
    let ts = col("timestamp")?
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or("column `timestamp` is not a timestamp in milliseconds")?;
    let [user, session, ip, ua, platform, url, referrer] = [
        "user_id",
        "session_id",
        "ip_address",
        "user_agent",
        "platform",
        "url",
        "referrer",
    ]
    .map(text);
    let (user, session, ip, ua, platform, url, referrer) =
        (user?, session?, ip?, ua?, platform?, url?, referrer?);
    let props = col("properties")?
        .as_map_opt()
        .ok_or("column `properties` is not a map")?;
    let keys = props
        .keys()
        .as_string_opt::<i32>()
        .ok_or("properties' keys are not strings")?;
    let values = props.values().as_struct();
    let (s, i, f, b) = (
        values.column(0).as_string::<i32>(),
        values.column(1).as_primitive::<Int64Type>(),
        values.column(2).as_primitive::<Float64Type>(),
        values.column(3).as_boolean(),
    );
    let opt = |a: &StringArray, row: usize| (!a.is_null(row)).then(|| a.value(row).to_string());
    let offsets = props.value_offsets();
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut properties = Vec::new();
        for k in offsets[row] as usize..offsets[row + 1] as usize {
            let value = if !s.is_null(k) {
                Value::Str(s.value(k).to_string())
            } else if !i.is_null(k) {
                Value::Int(i.value(k))
            } else if !f.is_null(k) {
                Value::Float(f.value(k))
            } else if !b.is_null(k) {
                Value::Boolean(b.value(k))
            } else {
                continue;
            };
            properties.push(crate::runtime::Property {
                key: keys.value(k).to_string(),
                value,
            });
        }
        out.push(Event {
            id: id.value(row).to_string(),
            event_type: ty.value(row).to_string(),
            timestamp: ts.value(row),
            user_id: opt(user, row),
            session_id: opt(session, row),
            properties,
            metadata: crate::runtime::Metadata {
                ip_address: opt(ip, row),
                user_agent: opt(ua, row),
                platform: opt(platform, row),
                url: opt(url, row),
                referrer: opt(referrer, row),
            },
        });
    }
    Ok(out)
}

/// Where the parts of one source come from: a processor's source
/// partition (`part-s<p>-…`), or `None` for the embedded engine's log.
/// Parts of one source follow each other in order; parts of several
/// sources in one hour overlap in event time.
pub fn part_source(name: &str) -> Option<i32> {
    source_part(name).map(|(s, _)| s)
}

/// The hour a partition folder (`date=YYYY-MM-DD/hour=HH`) starts at.
fn hour_start(day: &str, hour: &str) -> Option<i64> {
    crate::event::parse_timestamp(&serde_json::Value::String(format!("{day}T{hour}:00:00Z"))).ok()
}

/// Whether the hour starting at `start` can hold events in `range`.
fn in_range(start: i64, (from, to): (Option<i64>, Option<i64>)) -> bool {
    !(from.is_some_and(|f| start + 3_600_000 <= f) || to.is_some_and(|t| start >= t))
}

/// An archive in a bucket, read back (`nexuspipe replay --from s3://…`).
pub struct BucketReader(Remote);

impl BucketReader {
    /// `url` is `s3://bucket/prefix`; `options` are object_store's keys (the
    /// `AWS_*` environment otherwise).
    pub fn open(url: &str, options: Vec<(String, String)>) -> Result<BucketReader, ArchiveError> {
        Remote::open(&RemoteSettings {
            url: url.to_string(),
            options,
        })
        .map(BucketReader)
    }

    /// Its parts in order, as paths below the prefix: hours in order, then
    /// parts by name. With `range`, only the hours that can hold events in it.
    pub fn parts(&self, range: (Option<i64>, Option<i64>)) -> Result<Vec<String>, ArchiveError> {
        let mut out: Vec<(i64, String)> = Vec::new();
        for (rel, _) in self.0.parts()? {
            let mut it = rel.split('/');
            let (Some(day), Some(h), Some(name)) = (
                it.next().and_then(|d| d.strip_prefix("date=")),
                it.next().and_then(|h| h.strip_prefix("hour=")),
                it.next(),
            ) else {
                continue;
            };
            if !(name.starts_with("part-") && name.ends_with(".parquet")) {
                continue;
            }
            if let Some(start) = hour_start(day, h).filter(|s| in_range(*s, range)) {
                out.push((start, rel.clone()));
            }
        }
        out.sort();
        Ok(out.into_iter().map(|(_, rel)| rel).collect())
    }

    /// One part's bytes.
    pub fn get(&self, rel: &str) -> Result<bytes::Bytes, ArchiveError> {
        use object_store::ObjectStoreExt;
        let at = self.0.path(rel);
        let store_error = |source| ArchiveError::Store {
            what: format!("reading {at}"),
            source,
        };
        self.0.rt.block_on(async {
            self.0
                .store
                .get(&at)
                .await
                .map_err(store_error)?
                .bytes()
                .await
                .map_err(store_error)
        })
    }
}

/// The archive's parts in order: partitions by hour, then parts by log
/// position. With `range`, only the hours that can hold events in it.
pub fn parts(dir: &Path, range: (Option<i64>, Option<i64>)) -> std::io::Result<Vec<PathBuf>> {
    let mut hours = Vec::new();
    for date in std::fs::read_dir(dir)?.flatten() {
        let d = date.file_name().to_string_lossy().into_owned();
        let Some(day) = d.strip_prefix("date=") else {
            continue;
        };
        for hour in std::fs::read_dir(date.path())?.flatten() {
            let h = hour.file_name().to_string_lossy().into_owned();
            let Some(hh) = h.strip_prefix("hour=") else {
                continue;
            };
            let Some(start) = hour_start(day, hh).filter(|s| in_range(*s, range)) else {
                continue;
            };
            hours.push((start, hour.path()));
        }
    }
    hours.sort();
    let mut out = Vec::new();
    for (_, h) in hours {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&h)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("part-") && n.ends_with(".parquet"))
            })
            .collect();
        files.sort();
        out.extend(files);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_utc_hours_of_event_time() {
        assert_eq!(partition(0), "date=1970-01-01/hour=00");
        // 2026-12-01T10:59:59.999Z and the next millisecond.
        assert_eq!(partition(1_796_122_799_999), "date=2026-12-01/hour=10");
        assert_eq!(partition(1_796_122_800_000), "date=2026-12-01/hour=11");
        assert_eq!(part_seq("part-00000000000000000042-7-1.parquet"), Some(42));
        assert_eq!(part_seq(".part-1-2-3.tmp"), None);
    }

    #[test]
    fn retention_removes_hours_that_ended_before_keep() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::event::now_ms();
        let old = dir.path().join(partition(now - 3 * 86_400_000));
        let recent = dir.path().join(partition(now - 3_600_000));
        for d in [&old, &recent] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("part-1-x.parquet"), b"").unwrap();
        }
        let settings = ArchiveSettings {
            dir: dir.path().to_path_buf(),
            raw: false,
            max_file_size: 1 << 20,
            flush_interval: Duration::from_secs(60),
            keep: Some(Duration::from_secs(2 * 86_400)),
            remote: None,
        };
        retain(&settings, None).unwrap();
        assert!(!old.exists(), "a partition older than keep stayed");
        assert!(!old.parent().unwrap().exists(), "its emptied day stayed");
        assert!(recent.join("part-1-x.parquet").exists());
    }

    #[test]
    fn a_batch_reads_back_as_the_events_written() {
        let e = crate::event::from_json(
            serde_json::json!({
                "event_id": "e1", "event_type": "purchase", "timestamp": 1_767_225_600_123i64,
                "user_id": "u1", "properties": {"amount": 12.5, "n": 3, "ok": false, "s": "x"},
                "metadata": {"ip_address": "10.0.0.1", "url": "https://x/y"}
            }),
            &crate::event::EventDefaults::default(),
        )
        .unwrap();
        let bare = crate::event::from_json(
            serde_json::json!({"event_id": "e2", "event_type": "tick", "timestamp": 5}),
            &crate::event::EventDefaults::default(),
        )
        .unwrap();
        let batch = to_batch(&[&e, &bare]);
        assert_eq!(from_batch(&batch).unwrap(), vec![e, bare]);
    }

    /// Parts close at `max_file_size`: with a size every write passes, each
    /// batch is a part of its own, complete before any checkpoint; and a
    /// processor's parts carry their source partition and next offset.
    #[test]
    fn parts_close_at_max_file_size() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ArchiveSettings {
            dir: dir.path().to_path_buf(),
            raw: false,
            max_file_size: 1,
            flush_interval: Duration::from_secs(3600),
            keep: None,
            remote: None,
        };
        let archive = Archive::open(settings, 0, false, Arc::new(Metrics::new())).unwrap();
        let click = |i: i64| {
            crate::event::from_json(
                serde_json::json!({"event_id": format!("e{i}"), "event_type": "click",
                    "timestamp": 1_767_225_600_000i64 + i}),
                &crate::event::EventDefaults::default(),
            )
            .unwrap()
        };
        for i in 0..3 {
            archive.write_source(vec![click(i)], 2, 10 + i as u64);
        }
        let hour = dir.path().join(partition(1_767_225_600_000));
        let parts = || -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&hour)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.ends_with(".parquet"))
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while parts().len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let got: Vec<Option<(i32, u64)>> = parts().iter().map(|n| source_part(n)).collect();
        assert_eq!(got, vec![Some((2, 10)), Some((2, 11)), Some((2, 12))]);
        // A processor taking partition 2 over, committed at offset 11: the
        // parts whose events end before it stay, the last goes.
        assert_eq!(archive.forget(2, 11).unwrap(), 1);
        let kept: Vec<Option<(i32, u64)>> = parts().iter().map(|n| source_part(n)).collect();
        assert_eq!(kept, vec![Some((2, 10)), Some((2, 11))]);
    }
}
