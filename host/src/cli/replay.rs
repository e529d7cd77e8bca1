//! `nexuspipe replay`: the configured pipeline over events from a file, as
//! fast as the engine takes them, then a summary. For reprocessing history
//! after a rule changed, or a backfill into a data dir of its own.

use super::run::{describe, engine_settings, load_config, pipeline, start_pipeline};
use anyhow::{Context, Result, bail};
use nexuspipe::config::Durability;
use nexuspipe::dataflow::line::ROUND_CHUNKS;
use nexuspipe::engine::Engine;
use nexuspipe::event::{EventDefaults, Keep, from_json, parse_event_kept, parse_timestamp};
use nexuspipe::runtime::{Event, Plugin};
use nexuspipe::sinks::Outputs;
use nexuspipe::sinks::archive;
use nexuspipe::telemetry::Metrics;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Events to replay: an NDJSON file of canonical events (`.gz` for gzip),
    /// as `nexuspipe gen --output` writes or an export holds; a Parquet
    /// file of the archive's schema; or an archive folder (`[archive]`),
    /// read hour by hour.
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// Only events at or after this event time (RFC 3339 or epoch ms).
    #[arg(long, value_name = "TIME")]
    start: Option<String>,
    /// Only events before this event time (RFC 3339 or epoch ms).
    #[arg(long, value_name = "TIME")]
    end: Option<String>,
    /// Config file (TOML): the pipeline, its plugins' configs and the sinks;
    /// without it, the default pipeline.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write the outputs (metrics.lp, alerts.jsonl, checkpoints) here only:
    /// the configured InfluxDB, webhooks and Kafka are left out. Without it,
    /// a new `replay-<time>` dir inside the configured data dir, and the
    /// configured sinks.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Only these plugins of the pipeline, in its order (comma-separated
    /// names): say, `alerts` to try a changed rule over last week.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    plugins: Vec<String>,
    /// When the input ends, run event time to its end, as `run --source`
    /// does: every open window is emitted and every timer fires, so the
    /// outputs of a bounded input are complete. Without it they stay open,
    /// as in the live run the events came from.
    #[arg(long)]
    close: bool,
}

fn time_arg(flag: &str, v: &Option<String>) -> Result<Option<i64>> {
    v.as_ref()
        .map(|s| {
            parse_timestamp(&serde_json::Value::String(s.clone()))
                .map_err(|e| anyhow::anyhow!("--{flag} {s:?}: {e}"))
        })
        .transpose()
}

/// Counts the bytes read from the file (for the progress line's share).
struct Counted<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

pub fn run(args: ReplayArgs) -> Result<()> {
    let mut config = load_config(args.config.as_deref())?;
    let start = time_arg("start", &args.start)?;
    let end = time_arg("end", &args.end)?;
    if let (Some(s), Some(e)) = (start, end)
        && s >= e
    {
        bail!("--start must be before --end");
    }
    if !args.plugins.is_empty() {
        let all = pipeline(&config);
        for name in &args.plugins {
            if !all.iter().any(|p| &p.name == name) {
                bail!(
                    "--plugins: no plugin {name:?} in the pipeline (it has {})",
                    all.iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        config.plugins = all
            .into_iter()
            .filter(|p| args.plugins.contains(&p.name))
            .collect();
    }
    match &args.data_dir {
        Some(dir) => {
            config.engine.data_dir = dir.clone();
            config.influxdb = None;
            config.webhooks.clear();
        }
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            config.engine.data_dir = config.engine.data_dir.join(format!("replay-{stamp}"));
        }
    }
    // The input is the file: a replay that stops is run again, so no log.
    config.engine.durability = Durability::Memory;
    config.kafka = None;
    // `--from s3://…` reads with the config's archive options (credentials,
    // endpoint), before they are cleared for the replay's own archive.
    let bucket = bucket_options(&config);
    // A replay's archive goes in its own data dir, never into the live one
    // (folder or bucket), which holds these events already.
    if let Some(a) = &mut config.archive {
        a.url = None;
        a.options.clear();
        a.path = PathBuf::from("archive");
    }
    let summary = job(config, &args.from, (start, end), args.close, bucket)?;
    println!("{summary}");
    Ok(())
}

/// `nexuspipe run --source file://…`: a one-shot job over a file with the
/// config's data dir and sinks; when the file ends, event time runs to its
/// end (every window closes), then the engine stops.
pub fn run_source(mut config: nexuspipe::config::Config, source: &str) -> Result<()> {
    let path = source.strip_prefix("file://").unwrap_or(source);
    if config.kafka.is_some() {
        bail!("--source runs the embedded engine: a config with [kafka] reads its topic instead");
    }
    // The input is the file: a job that stops is run again, so no log.
    config.engine.durability = Durability::Memory;
    let bucket = bucket_options(&config);
    let summary = job(
        config,
        std::path::Path::new(path),
        (None, None),
        true,
        bucket,
    )?;
    println!("{summary}");
    Ok(())
}

/// Runs the pipeline of `config` over the events of `from` in `range`, then
/// stops the engine (after running event time to its end if `to_the_end`);
/// returns the summary.
fn job(
    config: nexuspipe::config::Config,
    from: &std::path::Path,
    (start, end): (Option<i64>, Option<i64>),
    to_the_end: bool,
    bucket: Vec<(String, String)>,
) -> Result<serde_json::Value> {
    let data_dir = config.engine.data_dir.clone();
    let read = Arc::new(AtomicU64::new(0));
    let defaults = EventDefaults {
        now_ms: nexuspipe::event::now_ms(),
        ip_address: None,
        user_agent: None,
        // History: no bound ahead of now.
        max_future_ms: None,
    };
    let metrics = Arc::new(Metrics::new());
    let (_manager, plugins) = start_pipeline(&config, metrics.clone())?;
    let keep = reads_of(&config, &plugins);
    let (items, size) = open_source(
        from,
        (start, end),
        defaults.clone(),
        read.clone(),
        bucket,
        keep,
    )?;
    let outputs = Outputs::open(&config, metrics.clone())?;
    let stopper = outputs.stopper();
    let batch_size = config.engine.batch_size;
    // Spent batches come back to be filled again (see `Engine::recycle_into`);
    // a few rounds' worth at most.
    let (spent_tx, spent) = std::sync::mpsc::sync_channel(2 * ROUND_CHUNKS);
    let engine = Engine::new(engine_settings(&config), plugins, metrics.clone(), outputs)
        .with_context(|| format!("starting the engine in {}", data_dir.display()))?
        .recycle_into(spent_tx);
    eprintln!(
        "running {} through {} into {}",
        from.display(),
        describe(engine.plugins()),
        data_dir.display()
    );
    let (handle, engine_thread) = engine.spawn().context("starting the engine")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_progress = Instant::now();
    let (mut sent, mut outside, mut invalid) = (0u64, 0u64, 0u64);
    let mut reached = i64::MIN;
    let fresh = || match spent.try_recv() {
        Ok(mut batch) => {
            batch.clear();
            batch
        }
        Err(_) => Vec::with_capacity(batch_size),
    };
    let mut batch: Vec<Event> = fresh();
    let capacity = config.engine.queue_capacity;
    let submit = |batch: Vec<Event>| -> Result<()> {
        // Back-pressure: wait for room rather than be refused (the replay
        // is the queue's only client, so the room stays).
        while handle.room() < batch.len().min(capacity) {
            std::thread::sleep(Duration::from_millis(1));
        }
        rt.block_on(handle.submit(batch, Instant::now()))
            .map_err(|e| anyhow::anyhow!("the engine did not take the events: {e}"))
    };
    for item in items {
        let event = match item? {
            Parsed::Event(e) => e,
            Parsed::Invalid { at, why } => {
                invalid += 1;
                if invalid <= 10 {
                    eprintln!("{}: {at}: skipped: {why}", from.display());
                }
                continue;
            }
        };
        if start.is_some_and(|s| event.timestamp < s) || end.is_some_and(|e| event.timestamp >= e) {
            outside += 1;
            continue;
        }
        reached = reached.max(event.timestamp);
        batch.push(event);
        if batch.len() >= batch_size {
            sent += batch.len() as u64;
            submit(std::mem::replace(&mut batch, fresh()))?;
        }
        if tty && last_progress.elapsed() >= Duration::from_millis(250) {
            last_progress = Instant::now();
            progress(sent, started, reached, read.load(Ordering::Relaxed), size);
        }
    }
    if !batch.is_empty() {
        sent += batch.len() as u64;
        submit(batch)?;
    }
    // Until the engine has run everything through the pipeline.
    while metrics.events_processed.load(Ordering::Relaxed) < sent {
        std::thread::sleep(Duration::from_millis(5));
        if tty && last_progress.elapsed() >= Duration::from_millis(250) {
            last_progress = Instant::now();
            progress(sent, started, reached, size, size);
        }
    }
    if tty {
        eprintln!();
    }
    stopper.stop();
    if to_the_end {
        handle.finish();
    } else {
        handle.shutdown();
    }
    drop(handle);
    if engine_thread.join().is_err() {
        bail!("the engine thread panicked");
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "events": sent,
        "outside_range": outside,
        "invalid": invalid,
        "duplicates": metrics.events_duplicate.load(Ordering::Relaxed),
        "seconds": (secs * 1000.0).round() / 1000.0,
        "events_per_second": (sent as f64 / secs.max(1e-9)).round(),
        "event_time_reached": (reached != i64::MIN).then(|| nexuspipe::event::format_timestamp(reached)),
        "points": metrics.points_written.load(Ordering::Relaxed),
        "alerts": metrics.alerts_written.load(Ordering::Relaxed),
        "data_dir": data_dir.display().to_string(),
    }))
}

/// What the pipeline reads of an event: an NDJSON input is parsed into
/// that alone (every line is still checked whole), which spares a
/// string per field nobody reads. With `[archive]`, events stay whole.
fn reads_of(config: &nexuspipe::config::Config, plugins: &[Plugin]) -> Keep {
    if config.archive.is_some() {
        return Keep::all();
    }
    let mut keep = Keep::none();
    for p in plugins {
        let i = p.interest();
        keep.add(i.properties.as_deref(), i.metadata, i.fields);
    }
    keep
}

/// An event of the input, or a line that is not one.
enum Parsed {
    Event(Event),
    Invalid { at: String, why: String },
}

type Items = Box<dyn Iterator<Item = Result<Parsed>>>;

/// The events of `from`: an NDJSON file (gzipped if `.gz`), a Parquet file,
/// or an archive folder (its parts by hour, only the hours `range` can
/// hold). Also the input's size in bytes; `read` counts what is done.
fn open_source(
    from: &Path,
    range: (Option<i64>, Option<i64>),
    defaults: EventDefaults<'static>,
    read: Arc<AtomicU64>,
    bucket: Vec<(String, String)>,
    keep: Keep,
) -> Result<(Items, u64)> {
    if let Some(url) = from.to_str().filter(|u| u.starts_with("s3://")) {
        let reader = Arc::new(
            archive::BucketReader::open(url, bucket)
                .with_context(|| format!("opening the archive at {url}"))?,
        );
        let parts = reader
            .parts(range)
            .with_context(|| format!("listing the archive at {url}"))?
            .into_iter()
            .map(|rel| Part::Object(reader.clone(), rel))
            .collect();
        // Sizes are not listed: the progress line shows no share.
        return Ok((archive_items(parts, read), 0));
    }
    let parquet = from.extension().is_some_and(|x| x == "parquet");
    if from.is_dir() || parquet {
        let files = if parquet {
            vec![from.to_path_buf()]
        } else {
            archive::parts(from, range)
                .with_context(|| format!("reading the archive {}", from.display()))?
        };
        let size = files
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .sum();
        let parts = files.into_iter().map(Part::File).collect();
        return Ok((archive_items(parts, read), size));
    }
    let file = std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let counted = Counted { inner: file, read };
    let reader: Box<dyn BufRead> = if from.extension().is_some_and(|x| x == "gz") {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(
            BufReader::new(counted),
        )))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, counted))
    };
    let name = from.display().to_string();
    let mut lines = Lines {
        reader,
        spill: Vec::new(),
    };
    let mut n = 0usize;
    let items = std::iter::from_fn(move || {
        loop {
            n += 1;
            let parsed = lines.next(|raw| {
                let text = match std::str::from_utf8(raw) {
                    Ok(text) => text.trim_end_matches(['\n', '\r']),
                    Err(e) => {
                        return Some(Parsed::Invalid {
                            at: format!("line {n}"),
                            why: format!("not UTF-8: {e}"),
                        });
                    }
                };
                if text.trim().is_empty() {
                    return None;
                }
                Some(match parse_event_kept(text, &defaults, &keep) {
                    Some(event) => Parsed::Event(event),
                    // The value path names what is wrong.
                    None => match serde_json::from_str(text)
                        .map_err(|e| e.to_string())
                        .and_then(|v| {
                            from_json(v, &defaults)
                                .map_err(|e| format!("{}: {}", e.field, e.message))
                        }) {
                        Ok(e) => Parsed::Event(e),
                        Err(why) => Parsed::Invalid {
                            at: format!("line {n}"),
                            why,
                        },
                    },
                })
            });
            match parsed {
                None => return None,
                Some(Err(e)) => return Some(Err(anyhow::anyhow!("reading {name}: {e}"))),
                Some(Ok(None)) => continue,
                Some(Ok(Some(p))) => return Some(Ok(p)),
            }
        }
    });
    Ok((Box::new(items), size))
}

/// The lines of an NDJSON input, each handed over where it lies in the
/// reader's buffer; only a line split across two reads is copied (copying
/// every line out was a tenth of a replay's work on its busiest thread).
struct Lines {
    reader: Box<dyn BufRead>,
    /// The start of a line whose end is not read yet.
    spill: Vec<u8>,
}

impl Lines {
    /// `f` of the next line, without its `\n`; `None` at the end.
    fn next<T>(&mut self, f: impl FnOnce(&[u8]) -> T) -> Option<std::io::Result<T>> {
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Some(Err(e)),
            };
            if buf.is_empty() {
                // The end: a last line without its `\n`, if any.
                if self.spill.is_empty() {
                    return None;
                }
                let out = f(&self.spill);
                self.spill.clear();
                return Some(Ok(out));
            }
            match memchr::memchr(b'\n', buf) {
                Some(i) if self.spill.is_empty() => {
                    let out = f(&buf[..i]);
                    self.reader.consume(i + 1);
                    return Some(Ok(out));
                }
                Some(i) => {
                    self.spill.extend_from_slice(&buf[..i]);
                    self.reader.consume(i + 1);
                    let out = f(&self.spill);
                    self.spill.clear();
                    return Some(Ok(out));
                }
                None => {
                    let len = buf.len();
                    self.spill.extend_from_slice(buf);
                    self.reader.consume(len);
                }
            }
        }
    }
}

/// The config's `[archive.options]`, for reading a bucket.
fn bucket_options(config: &nexuspipe::config::Config) -> Vec<(String, String)> {
    config
        .archive
        .as_ref()
        .map(|a| a.options.clone().into_iter().collect())
        .unwrap_or_default()
}

/// A part of the archive: a file, or an object in a bucket.
enum Part {
    File(PathBuf),
    Object(Arc<archive::BucketReader>, String),
}

impl Part {
    /// Its hour folder and its name.
    fn place(&self) -> (String, String) {
        let path = match self {
            Part::File(p) => p.to_string_lossy().into_owned(),
            Part::Object(_, rel) => rel.clone(),
        };
        match path.rsplit_once('/') {
            Some((dir, name)) => (dir.to_string(), name.to_string()),
            None => (String::new(), path),
        }
    }

    /// Its events, and its size in bytes.
    fn read(&self) -> Result<(Vec<Event>, u64)> {
        match self {
            Part::File(path) => {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let size = file.metadata().map_or(0, |m| m.len());
                Ok((events_of(file, &path.display().to_string())?, size))
            }
            Part::Object(bucket, rel) => {
                let bytes = bucket.get(rel).with_context(|| format!("reading {rel}"))?;
                let size = bytes.len() as u64;
                Ok((events_of(bytes, rel)?, size))
            }
        }
    }
}

/// Every event of one Parquet file of the archive's schema.
fn events_of<R: parquet::file::reader::ChunkReader + 'static>(
    source: R,
    what: &str,
) -> Result<Vec<Event>> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(source)
        .and_then(|b| b.build())
        .with_context(|| format!("reading {what}"))?;
    let mut events = Vec::new();
    for batch in reader {
        let batch = batch.with_context(|| format!("reading {what}"))?;
        events.extend(archive::from_batch(&batch).map_err(|e| anyhow::anyhow!("{what}: {e}"))?);
    }
    Ok(events)
}

/// The events of the archive's parts, hour by hour. The parts of one
/// source (the engine's log, or one source partition of a Kafka archive)
/// follow each other; an hour with several sources has them merged by
/// event time, as they were processed live, so a replay of a Kafka archive
/// finds no event late that was not late there. Each source holds one part
/// in memory at a time.
fn archive_items(parts: Vec<Part>, read: Arc<AtomicU64>) -> Items {
    let mut hours: Vec<(String, BySource)> = Vec::new();
    for part in parts {
        let (hour, name) = part.place();
        if hours.last().is_none_or(|(h, _)| *h != hour) {
            hours.push((hour, Default::default()));
        }
        let sources = &mut hours.last_mut().expect("pushed").1;
        sources
            .entry(archive::part_source(&name))
            .or_default()
            .push(part);
    }
    Box::new(hours.into_iter().flat_map(move |(_, sources)| {
        let mut streams: Vec<Source> = sources
            .into_values()
            .map(|parts| Source {
                parts: parts.into_iter(),
                events: Vec::new().into_iter(),
            })
            .collect();
        let read = read.clone();
        let mut heads: Vec<Option<Event>> = Vec::new();
        let mut started = false;
        std::iter::from_fn(move || {
            if !started {
                started = true;
                for s in &mut streams {
                    match s.next(&read) {
                        Some(Ok(e)) => heads.push(Some(e)),
                        Some(Err(e)) => return Some(Err(e)),
                        None => heads.push(None),
                    }
                }
            }
            // The oldest head; on a tie, the first source.
            let i = heads
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.as_ref().map(|e| (e.timestamp, i)))
                .min()?
                .1;
            let event = heads[i].take().expect("a head");
            match streams[i].next(&read) {
                Some(Ok(e)) => heads[i] = Some(e),
                Some(Err(e)) => return Some(Err(e)),
                None => {}
            }
            Some(Ok(Parsed::Event(event)))
        })
    }))
}

/// An hour's parts by source (see [`archive::part_source`]).
type BySource = std::collections::BTreeMap<Option<i32>, Vec<Part>>;

/// One source's parts, read one at a time.
struct Source {
    parts: std::vec::IntoIter<Part>,
    events: std::vec::IntoIter<Event>,
}

impl Source {
    fn next(&mut self, read: &AtomicU64) -> Option<Result<Event>> {
        loop {
            if let Some(e) = self.events.next() {
                return Some(Ok(e));
            }
            match self.parts.next()?.read() {
                Ok((events, size)) => {
                    read.fetch_add(size, Ordering::Relaxed);
                    self.events = events.into_iter();
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// One line, redrawn: events, rate, event time reached, share and ETA.
fn progress(sent: u64, started: Instant, reached: i64, read: u64, size: u64) {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let share = if size > 0 {
        (read as f64 / size as f64).min(1.0)
    } else {
        0.0
    };
    let eta = if share > 0.0 {
        format!("{:.0} s", secs * (1.0 - share) / share)
    } else {
        "?".into()
    };
    let time = if reached == i64::MIN {
        "-".to_string()
    } else {
        nexuspipe::event::format_timestamp(reached)
    };
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\r{sent} events  {:.0}/s  event time {time}  {:.0} %  ETA {eta}   ",
        sent as f64 / secs,
        share * 100.0
    );
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::Lines;
    use std::io::{BufReader, Cursor};

    /// Every line of `text` read through a `cap`-byte buffer.
    fn lines(text: &[u8], cap: usize) -> Vec<Vec<u8>> {
        let mut lines = Lines {
            reader: Box::new(BufReader::with_capacity(cap, Cursor::new(text.to_vec()))),
            spill: Vec::new(),
        };
        let mut out = Vec::new();
        while let Some(line) = lines.next(<[u8]>::to_vec) {
            out.push(line.unwrap());
        }
        out
    }

    #[test]
    fn lines_come_whole_whatever_the_buffer_cuts() {
        let text = b"{\"a\":1}\r\n\n{\"bb\":22}\nlast without newline";
        let want: Vec<Vec<u8>> = vec![
            b"{\"a\":1}\r".to_vec(),
            b"".to_vec(),
            b"{\"bb\":22}".to_vec(),
            b"last without newline".to_vec(),
        ];
        // Buffers smaller than a line, cutting at every place, and larger
        // than the whole input.
        for cap in [1, 2, 3, 5, 7, 8, 9, 64] {
            assert_eq!(lines(text, cap), want, "buffer of {cap} bytes");
        }
        assert_eq!(lines(b"", 8), Vec::<Vec<u8>>::new());
        assert_eq!(lines(b"x\n", 8), vec![b"x".to_vec()]);
    }
}
