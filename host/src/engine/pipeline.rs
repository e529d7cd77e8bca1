//! The engine: one thread that owns the plugins, pulls accepted batches from
//! a bounded queue, keeps event time (watermark, idle advance), runs the
//! pipeline, writes outputs to the embedded sinks and checkpoints state.
//!
//! One owner on purpose: plugins are single-threaded instances, batches keep
//! the boundary cheap, and ordering per input is trivially kept; pipeline
//! changes apply between rounds. Within a round of several batches the
//! pipeline's stages (the enrichers, then each stateful plugin) run on
//! threads of their own, each a batch ahead of the next (see
//! [`line`]). The HTTP side only parses and enqueues.

use super::checkpoint::{Checkpoints, Snapshot};
use super::shadow::{self, Shadow};
use super::wal::{self, Fsync, Seq, Wal};
use crate::dataflow::dedupe::Dedupe;
use crate::dataflow::line::{self, ROUND_CHUNKS};
use crate::dataflow::watermark::{batches, split_at_late};
use crate::dataflow::{Handover, Outcome, SwapError, Watermark, handover, insert_position};
use crate::hub::{Hub, Sampler};
use crate::runtime::{Catchup, Event, Plugin, PluginOutput, refresh_downstream};
use crate::sinks::archive::Archive;
use crate::sinks::{Mark, Outputs};
use crate::telemetry::{Metrics, PluginFigures};
use anyhow::Context as _;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant};

/// Event-time and batching settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub out_of_orderness: Duration,
    pub idle_timeout: Duration,
    pub checkpoint_interval: Duration,
    pub queue_capacity: usize,
    pub batch_size: usize,
    pub data_dir: std::path::PathBuf,
    /// Event ids remembered (see [`crate::dataflow::dedupe`]); 0: off.
    pub dedupe_max_ids: usize,
    /// How long late events still count (for the ids' horizon).
    pub allowed_lateness: Duration,
    /// The write-ahead log's sync policy; `None`: no log (`durability = "memory"`).
    pub wal: Option<Fsync>,
    /// `[archive]`: every event to Parquet files.
    pub archive: Option<crate::sinks::archive::ArchiveSettings>,
}

/// Segments of the write-ahead log are closed at this size, so the ones a
/// checkpoint covers can be removed whole.
const WAL_SEGMENT_BYTES: u64 = 64 << 20;

/// Checkpoints taken and waiting for the sinks to settle, at most: each
/// holds every plugin's state in memory.
const MAX_PENDING: usize = 4;

/// How long a shutdown waits for the sinks to settle the last checkpoint
/// (else the next start replays the log from the one before).
const SETTLE_PATIENCE: Duration = Duration::from_secs(5);

/// A batch accepted over HTTP, with its place in the write-ahead log (0 without one).
type Accepted = (Vec<Event>, Instant, Seq);

enum Msg {
    Batch {
        events: Vec<Event>,
        received: Instant,
        seq: Seq,
    },
    Control(Control),
    /// A new version asks what it needs to catch up with the running one.
    Catchup {
        name: String,
        since: Option<u64>,
        reply: tokio::sync::oneshot::Sender<Option<Catchup>>,
    },
    /// Drain, checkpoint and stop; with `end_of_input`, event time first
    /// runs to its end (the input is over: every window and timer fires).
    Shutdown {
        end_of_input: bool,
    },
}

/// A change to the pipeline. The engine applies it between two rounds, so
/// every event is processed exactly once, by the old version or the new one.
pub struct Control {
    pub op: ControlOp,
    pub reply: tokio::sync::oneshot::Sender<Result<Swapped, SwapError>>,
}

pub enum ControlOp {
    /// Put `plugin` in place of the plugin of the same name, handing over the
    /// old instance's state (unless `reset_state`), or add it to the pipeline:
    /// a new enricher after the last enricher, anything else at the end.
    Deploy {
        plugin: Box<Plugin>,
        reset_state: bool,
        /// The new version already caught up to this batch of the running
        /// one (see [`EngineHandle::catchup`]): only later batches are
        /// replayed in the pause. `None`: snapshot and restore in the pause.
        caught_up: Option<u64>,
    },
    /// Take a plugin out of the pipeline; its state is discarded.
    Remove { name: String },
}

/// A control operation that took effect.
#[derive(Debug, Clone)]
pub struct Swapped {
    pub handover: Handover,
    /// Size of the state handed over (0 unless `Kept`).
    pub state_bytes: usize,
    /// The new version had caught up before the pause (only the last batches
    /// were replayed in it); otherwise a `Kept` state went by snapshot and restore.
    pub caught_up: bool,
    /// How long the engine held events back to apply it.
    pub pause: Duration,
    /// With `Kept`: what the new version took over of the state, part by
    /// part (metrics, rules), as its `restore` reported it.
    pub parts: Option<crate::runtime::Restored>,
}

/// A control operation's result and the instance it retired.
type Applied = (Result<Outcome, SwapError>, Option<Plugin>);

/// Why the engine did not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Back-pressure: try again later.
    #[error("the engine queue is full ({capacity} events waiting)")]
    QueueFull { capacity: usize },
    /// The engine has stopped (shutting down): nothing can be accepted.
    #[error("the engine has stopped")]
    Stopped,
    /// The write-ahead log could not take the batch (a full or failing disk).
    #[error(transparent)]
    Log(#[from] wal::WalError),
}

/// The HTTP side's handle on the engine. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Msg>,
    /// Accepted batches go through the log, which hands them to the engine.
    wal: Option<Wal<(Vec<Event>, Instant)>>,
    wal_dir: std::path::PathBuf,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl EngineHandle {
    /// Hands a batch to the engine, or refuses it if that would exceed the
    /// queue's capacity (memory stays bounded; the client retries). With a
    /// write-ahead log, returns once the batch is in it.
    pub async fn submit(&self, events: Vec<Event>, received: Instant) -> Result<(), SubmitError> {
        let n = events.len();
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if before + n > self.capacity && before > 0 {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(SubmitError::QueueFull {
                capacity: self.capacity,
            });
        }
        self.metrics
            .queue_depth
            .store((before + n) as u64, Ordering::Relaxed);
        if let Some(wal) = &self.wal {
            let mut payload = Vec::with_capacity(crate::runtime::replay::encoded_len(&events));
            crate::runtime::replay::encode(&events, &mut payload);
            // The writer hands the batch to the engine, in log order.
            let appended = wal.append(n as u32, payload, (events, received)).await;
            let m = &self.metrics;
            return match appended {
                Ok(_) => {
                    if m.wal.failing.swap(false, Ordering::Relaxed) {
                        m.storage_result(&self.wal_dir, Ok(()), 0);
                    }
                    Ok(())
                }
                Err(wal::WalError::Stopped) => {
                    self.queued.fetch_sub(n, Ordering::AcqRel);
                    Err(SubmitError::Stopped)
                }
                Err(e) => {
                    self.queued.fetch_sub(n, Ordering::AcqRel);
                    // `/readyz` names the log until an append succeeds again.
                    m.wal.failing.store(true, Ordering::Relaxed);
                    m.storage_result(&self.wal_dir, Err(std::io::Error::other(e.to_string())), 0);
                    Err(SubmitError::Log(e))
                }
            };
        }
        let batch = Msg::Batch {
            events,
            received,
            seq: 0,
        };
        if self.tx.send(batch).is_err() {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(SubmitError::Stopped);
        }
        Ok(())
    }

    /// Events the queue takes before it refuses (what a lone submitter,
    /// such as a replay, waits for instead of being refused).
    pub fn room(&self) -> usize {
        self.capacity
            .saturating_sub(self.queued.load(Ordering::Acquire))
    }

    /// Whether the queue has room (for `/readyz`).
    pub fn has_room(&self) -> bool {
        self.queued.load(Ordering::Relaxed) < self.capacity
    }

    /// Sends a pipeline change to the engine; the answer arrives once it is applied.
    pub fn control(
        &self,
        op: ControlOp,
    ) -> tokio::sync::oneshot::Receiver<Result<Swapped, SwapError>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if let Err(std::sync::mpsc::SendError(Msg::Control(c))) =
            self.tx.send(Msg::Control(Control { op, reply }))
        {
            let _ = c.reply.send(Err(SwapError::Stopped));
        }
        rx
    }

    /// What plugin `name`'s new version needs to catch up with it (after
    /// batch `since`, if given); `None` if there is no such plugin.
    pub fn catchup(&self, name: &str, since: Option<u64>) -> Option<Catchup> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let msg = Msg::Catchup {
            name: name.to_string(),
            since,
            reply,
        };
        self.tx.send(msg).ok()?;
        rx.blocking_recv().ok().flatten()
    }

    /// Asks the engine to drain, checkpoint and stop.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown {
            end_of_input: false,
        });
    }

    /// The end of a one-shot job's input: the engine processes what it
    /// holds, runs event time to its end (every open window closes, every
    /// timer fires), then drains, checkpoints and stops.
    pub fn finish(&self) {
        let _ = self.tx.send(Msg::Shutdown { end_of_input: true });
    }
}

/// The engine thread's state.
pub struct Engine {
    settings: EngineSettings,
    plugins: Vec<Plugin>,
    watermark: Watermark,
    last_arrival: Option<Instant>,
    metrics: Arc<Metrics>,
    queued: Arc<AtomicUsize>,
    checkpoints: Checkpoints,
    outputs: Outputs,
    /// A new version replaying in the background until it can take over.
    shadow: Option<Shadow>,
    /// Replaced instances, freed on a thread of their own.
    retire: Sender<Plugin>,
    /// Live push: the event sample goes here (points and alerts go through
    /// the outputs).
    hub: Option<Arc<Hub>>,
    sampler: Option<Sampler>,
    /// Whether enrichers keep the sample's columns for event-stream clients.
    sampling: bool,
    /// Event ids already taken: a retried event is not processed again.
    dedupe: Dedupe,
    /// The opened log, until the writer starts (see [`Engine::spawn`]).
    opened: Option<wal::Opened>,
    /// The last log record processed (in the plugins' state from here on).
    wal_seq: Seq,
    /// Whether a log is to be replayed at the start.
    replay_log: bool,
    /// A log found by a start with `durability = "memory"`: replayed, then
    /// removed once a checkpoint covers it (nothing appends to it).
    log_found: bool,
    /// Checkpoints waiting for the sinks to settle what came before them.
    pending: VecDeque<(Mark, Snapshot)>,
    /// A one-shot job's input is over (see [`EngineHandle::finish`]).
    end_of_input: bool,
    /// `[archive]`: where every event goes, as Parquet.
    archive: Option<Archive>,
    /// Where spent batches go back to their producer (see [`Engine::recycle_into`]).
    spent: Option<SyncSender<Vec<Event>>>,
}

/// Sets what every enricher's downstream reads, with `[stream]
/// sample_properties` while some client watches the event sample.
/// With `archive_all`, every property: the archive keeps the events as the
/// enrichers leave them, whole.
fn refresh_reads(plugins: &mut [Plugin], sample: &[String], archive_all: bool) {
    let reads = |properties| crate::runtime::Interest {
        event_types: Vec::new(),
        properties,
        metadata: crate::runtime::MetadataFields::empty(),
        fields: crate::runtime::EventFields::empty(),
    };
    let sample = (!sample.is_empty()).then(|| reads(Some(sample.to_vec())));
    let archive = archive_all.then(|| reads(None));
    refresh_downstream(
        plugins,
        &sample.iter().chain(archive.iter()).collect::<Vec<_>>(),
    );
}

/// A thread that drops the plugin instances it is sent.
fn retirer() -> std::io::Result<Sender<Plugin>> {
    let (tx, rx) = std::sync::mpsc::channel::<Plugin>();
    std::thread::Builder::new()
        .name("nexuspipe-retire".into())
        .spawn(move || rx.into_iter().for_each(drop))?;
    Ok(tx)
}

/// How long a shadow may trail the live version before the engine waits for
/// it (a pause) rather than let the upload wait on.
const SHADOW_PATIENCE: Duration = Duration::from_secs(10);

impl Engine {
    /// Builds the engine and restores plugin state and event time from the
    /// data dir's last checkpoint.
    pub fn new(
        settings: EngineSettings,
        mut plugins: Vec<Plugin>,
        metrics: Arc<Metrics>,
        outputs: Outputs,
    ) -> anyhow::Result<Self> {
        let dir = &settings.data_dir;
        std::fs::create_dir_all(dir)?;
        let outputs_hub = outputs.hub();
        let mut checkpoints = Checkpoints::new(dir.join("checkpoints"));
        let mut watermark = Watermark::new(settings.out_of_orderness.as_millis() as i64);
        let horizon = (settings.out_of_orderness + settings.allowed_lateness).as_millis() as i64
            + crate::dataflow::dedupe::EXTRA_HORIZON_MS;
        let mut dedupe = Dedupe::new(settings.dedupe_max_ids, horizon);
        let mut wal_seq = 0;
        if let Some(r) = checkpoints.restore(&mut plugins, &mut dedupe)? {
            watermark.observe(r.max_event_time);
            watermark.advance_to(r.watermark);
            wal_seq = r.wal_seq;
        }
        // A log left by a run with the log is replayed whatever the setting
        // now: its events were answered 202.
        let log_found = settings.wal.is_none() && wal::exists(&dir.join("wal"))?;
        if log_found {
            tracing::info!(
                dir = %dir.join("wal").display(),
                "durability = \"memory\", and the data dir holds a write-ahead log: replaying it, then removing it once a checkpoint covers it"
            );
        }
        let opened = if settings.wal.is_some() || log_found {
            let mut opened = wal::open(&dir.join("wal"))?;
            metrics.wal.replaying.store(true, Ordering::Relaxed);
            if let Some(t) = &opened.torn {
                metrics.wal.torn_bytes.fetch_add(t.bytes, Ordering::Relaxed);
            }
            // Numbering goes on after the checkpoint even if the log was moved away.
            opened.next = opened.next.max(wal_seq + 1);
            Some(opened)
        } else {
            None
        };
        let replay_log = opened.is_some();
        let archive_all = settings.archive.as_ref().is_some_and(|a| !a.raw);
        refresh_reads(&mut plugins, &[], archive_all);
        let archive = match settings.archive.clone() {
            Some(a) => Some(
                Archive::open(a, wal_seq, replay_log, metrics.clone())
                    .context("opening the archive")?,
            ),
            None => None,
        };
        Ok(Engine {
            outputs,
            settings,
            plugins,
            watermark,
            last_arrival: None,
            metrics,
            queued: Arc::new(AtomicUsize::new(0)),
            checkpoints,
            shadow: None,
            retire: retirer()?,
            hub: outputs_hub,
            sampler: None,
            sampling: false,
            dedupe,
            opened,
            wal_seq,
            replay_log,
            log_found,
            pending: VecDeque::new(),
            end_of_input: false,
            archive,
            spent: None,
        })
    }

    /// Sends each batch the pipeline is done with to `spent` (while it has
    /// room) rather than freeing it here: a producer on another thread
    /// (the replay's reader) fills it again, so its events' memory is
    /// reused, hot, by the thread that made it. Freeing it here cost the
    /// engine thread a tenth of its time (frees across threads), and the
    /// reader as much again in fresh pages.
    pub fn recycle_into(mut self, spent: SyncSender<Vec<Event>>) -> Self {
        self.spent = Some(spent);
        self
    }

    pub fn plugins(&self) -> &[Plugin] {
        &self.plugins
    }

    /// Starts the engine thread (and the log's writer); returns the handle
    /// and the thread to join.
    pub fn spawn(mut self) -> anyhow::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let wal = match (self.opened.take(), self.settings.wal) {
            (Some(opened), Some(fsync)) => {
                let to_engine = tx.clone();
                Some(Wal::start(
                    opened,
                    fsync,
                    WAL_SEGMENT_BYTES,
                    self.metrics.wal.clone(),
                    move |seq, (events, received)| {
                        // A stopped engine leaves it in the log: the next start replays it.
                        let _ = to_engine.send(Msg::Batch {
                            events,
                            received,
                            seq,
                        });
                    },
                )?)
            }
            _ => None,
        };
        let handle = EngineHandle {
            tx,
            wal,
            wal_dir: self.settings.data_dir.join("wal"),
            queued: self.queued.clone(),
            capacity: self.settings.queue_capacity,
            metrics: self.metrics.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("nexuspipe-engine".into())
            .spawn(move || self.run(rx))?;
        Ok((handle, thread))
    }

    /// Replays what the log holds after the restored checkpoint, in rounds,
    /// before anything accepted since the start.
    fn recover(&mut self) -> Result<(), wal::WalError> {
        if !self.replay_log {
            return Ok(());
        }
        let dir = self.settings.data_dir.join("wal");
        let limit = self.settings.batch_size * ROUND_CHUNKS;
        let mut round = Vec::new();
        let mut n = 0;
        let mut events = 0u64;
        let started = Instant::now();
        wal::replay_each(&dir, self.wal_seq, |r| {
            match crate::runtime::replay::decode(&r.payload, r.events as usize) {
                Ok(batch) => {
                    n += batch.len();
                    round.push((batch, Instant::now(), r.seq));
                }
                // The checksum held, so this is a bug, not a torn write: say so, go on.
                Err(e) => {
                    tracing::error!(seq = r.seq, error = %e, "a write-ahead log record does not decode; skipped")
                }
            }
            if n >= limit {
                events += self.replay_round(std::mem::take(&mut round));
                n = 0;
            }
        })?;
        events += self.replay_round(round);
        if events > 0 {
            self.metrics
                .wal
                .replayed
                .fetch_add(events, Ordering::Relaxed);
            tracing::info!(
                events,
                after = self.wal_seq,
                secs = started.elapsed().as_secs_f64(),
                "replayed the write-ahead log after the last checkpoint"
            );
        }
        Ok(())
    }

    /// Runs replayed batches as a round (counted as queued, as accepted
    /// ones are); returns how many events they held.
    fn replay_round(&mut self, round: Vec<Accepted>) -> u64 {
        let n: usize = round.iter().map(|(e, _, _)| e.len()).sum();
        if n > 0 {
            self.queued.fetch_add(n, Ordering::AcqRel);
            self.round(round);
        }
        n as u64
    }

    fn run(mut self, rx: Receiver<Msg>) {
        self.publish();
        if let Err(e) = self.recover() {
            // Nothing replayed is lost: the log stays until a checkpoint covers it.
            self.log_found = false;
            tracing::error!(error = %e, "replaying the write-ahead log failed; events after the last checkpoint are not processed in this run");
        }
        self.metrics.wal.replaying.store(false, Ordering::Relaxed);
        let mut next_checkpoint = Instant::now() + self.settings.checkpoint_interval;
        // How often a quiet engine wakes up to advance idle time and checkpoint.
        let tick =
            Duration::from_millis(50).min(self.settings.idle_timeout.max(Duration::from_millis(1)));
        loop {
            let msg = rx.recv_timeout(tick);
            let mut stop = false;
            match msg {
                Ok(Msg::Batch {
                    events,
                    received,
                    seq,
                }) => {
                    let mut pending = vec![(events, received, seq)];
                    let mut n = pending[0].0.len();
                    let mut control = None;
                    // Coalesce what is already queued into one round of calls;
                    // a control message ends the round, so it applies between rounds.
                    while n < self.settings.batch_size * ROUND_CHUNKS {
                        match rx.try_recv() {
                            Ok(Msg::Batch {
                                events,
                                received,
                                seq,
                            }) => {
                                n += events.len();
                                pending.push((events, received, seq));
                            }
                            Ok(Msg::Control(c)) => {
                                control = Some(c);
                                break;
                            }
                            Ok(Msg::Catchup { name, since, reply }) => {
                                self.catchup(&name, since, reply)
                            }
                            Ok(Msg::Shutdown { end_of_input }) => {
                                stop = true;
                                self.end_of_input |= end_of_input;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.round(pending);
                    if let Some(c) = control {
                        self.control(c);
                    }
                }
                Ok(Msg::Control(c)) => self.control(c),
                Ok(Msg::Catchup { name, since, reply }) => self.catchup(&name, since, reply),
                Ok(Msg::Shutdown { end_of_input }) => {
                    stop = true;
                    self.end_of_input |= end_of_input;
                }
                Err(RecvTimeoutError::Disconnected) => stop = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.advance_shadow(stop);
            if stop {
                // Drain what was accepted before the shutdown request, in order.
                let mut rest = Vec::new();
                while let Ok(m) = rx.try_recv() {
                    match m {
                        Msg::Batch {
                            events,
                            received,
                            seq,
                        } => rest.push((events, received, seq)),
                        Msg::Control(c) => {
                            if !rest.is_empty() {
                                self.round(std::mem::take(&mut rest));
                            }
                            self.control(c);
                        }
                        Msg::Catchup { name, since, reply } => self.catchup(&name, since, reply),
                        Msg::Shutdown { end_of_input } => self.end_of_input |= end_of_input,
                    }
                }
                if !rest.is_empty() {
                    self.round(rest);
                }
                if self.end_of_input {
                    self.run_to_end_of_time();
                }
                self.checkpoint();
                self.settle_pending();
                tracing::info!("engine drained and checkpointed");
                let backlog = self.outputs.influx_backlog();
                if backlog > 0 {
                    tracing::info!(
                        points = backlog,
                        "delivering the InfluxDB backlog before exit"
                    );
                }
                self.outputs.close();
                return;
            }
            self.idle_advance();
            self.complete_checkpoints();
            if Instant::now() >= next_checkpoint {
                self.checkpoint();
                next_checkpoint = Instant::now() + self.settings.checkpoint_interval;
            }
        }
    }

    /// Whether the archive keeps the events as the enrichers leave them.
    fn archive_all(&self) -> bool {
        self.settings.archive.as_ref().is_some_and(|a| !a.raw)
    }

    /// What enrichers keep for the event sample now (nothing when no client watches).
    fn sample_properties(&self) -> &[String] {
        match &self.hub {
            Some(h) if self.sampling => &h.settings.sample_properties,
            _ => &[],
        }
    }

    /// One round: the pending batches through the whole pipeline, outputs written.
    fn round(&mut self, pending: Vec<Accepted>) {
        let now = Instant::now();
        self.last_arrival = Some(now);
        let total: usize = pending.iter().map(|(e, _, _)| e.len()).sum();
        let size = self.settings.batch_size;
        let mut received = Vec::with_capacity(pending.len());
        for (batch, at, seq) in &pending {
            self.wal_seq = self.wal_seq.max(*seq);
            received.push((*at, batch.len()));
        }
        let mut out = PluginOutput::default();
        let mut sampled = Vec::new();
        let sampling = self.hub.as_ref().is_some_and(|h| h.wants_events());
        if sampling != self.sampling {
            self.sampling = sampling;
            let sample = self.sample_properties().to_vec();
            let all = self.archive_all();
            refresh_reads(&mut self.plugins, &sample, all);
        }
        // The archive takes the events as received (`raw`), or as they leave
        // the line, moved rather than copied.
        let archive = self.archive.as_ref().map(|a| (a, self.archive_all()));
        let (raw, enriched) = match archive {
            Some((_, all)) => (!all, all),
            None => (false, false),
        };
        let mut duplicates = 0;
        let mut received_raw: Vec<Event> = Vec::new();
        let (dedupe, wm) = (&mut self.dedupe, &mut self.watermark);
        let mut first = |mut batch: Vec<Event>| {
            duplicates += dedupe.retain_first(&mut batch, |e| (&e.id, e.timestamp));
            batch
        };
        // Batches of `size` already (a replay's) go as they are, each
        // de-duplicated and cut as the line asks for it (see `line::run`);
        // requests' batches are regrouped into chunks of `size` first, each
        // event moved once.
        let chunks: Box<dyn Iterator<Item = (Vec<Event>, i64)> + '_> =
            if pending.iter().all(|(b, _, _)| b.len() == size) {
                Box::new(
                    pending
                        .into_iter()
                        .flat_map(move |(b, _, _)| split_at_late(first(b), wm)),
                )
            } else {
                let kept: Vec<Vec<Event>> = pending.into_iter().map(|(b, _, _)| first(b)).collect();
                let n = kept.iter().map(Vec::len).sum();
                Box::new(batches(kept.into_iter().flatten(), n, size, wm).into_iter())
            };
        let chunks = chunks.inspect(|(b, _)| {
            if raw {
                received_raw.extend(b.iter().cloned());
            }
        });
        let mut archived: Vec<Event> = Vec::new();
        let mut sampler = match (&self.hub, &mut self.sampler) {
            (Some(hub), sampler) if sampling => {
                Some(sampler.get_or_insert_with(|| Sampler::new(hub.settings.sample_rate)))
            }
            _ => None,
        };
        let spent = self.spent.as_ref();
        let mut tap = |(batch, _): (Vec<Event>, i64)| {
            if let Some(sampler) = sampler.as_mut() {
                sampled.extend(
                    sampler
                        .sample(&batch)
                        .into_iter()
                        .map(crate::event::to_json),
                );
            }
            if enriched {
                archived.extend(batch);
            } else if let Some(spent) = spent {
                // Full: freed here after all.
                let _ = spent.try_send(batch);
            }
        };
        line::run(&mut self.plugins, chunks, &mut out, &mut tap);
        if duplicates > 0 {
            self.metrics
                .events_duplicate
                .fetch_add(duplicates as u64, Ordering::Relaxed);
        }
        self.dedupe.expire(self.watermark.current());
        if let Some((a, _)) = archive {
            a.write(if raw { received_raw } else { archived }, self.wal_seq);
        }
        if let Some(hub) = &self.hub {
            hub.publish_events(sampled);
        }
        self.write(out);
        let done = Instant::now();
        {
            let mut h = self.metrics.ingest_to_output.lock().expect("metrics lock");
            for (at, n) in received {
                h.record_n(done.duration_since(at), n as u64);
            }
        }
        // Plugin figures first: once `events_processed` counts a round, its
        // failures and dead letters are visible too.
        self.publish();
        let left = self.queued.fetch_sub(total, Ordering::AcqRel) - total;
        self.metrics
            .queue_depth
            .store(left as u64, Ordering::Relaxed);
        self.metrics
            .events_processed
            .fetch_add(total as u64, Ordering::Relaxed);
    }

    /// Applies a pipeline change and answers it. A caught-up new version goes
    /// to a shadow thread first (see [`shadow`]); the pause (events held back)
    /// is then the handoff. Without catch-up it covers the old instance's
    /// snapshot and the new one's restore. Compiling, initialising and
    /// catching up happen off this thread.
    fn control(&mut self, c: Control) {
        let started = Instant::now();
        let outcome = match c.op {
            ControlOp::Deploy {
                plugin,
                reset_state,
                caught_up,
            } => {
                let plugin = match (reset_state, caught_up) {
                    (false, Some(n)) => match self.shadow_or_back(*plugin, n, c.reply) {
                        None => return, // answered when the shadow takes over
                        Some((plugin, reply)) => {
                            let outcome = self.deploy(plugin, false, Some(n));
                            return self.complete(reply, started, outcome);
                        }
                    },
                    _ => *plugin,
                };
                self.deploy(plugin, reset_state, caught_up)
            }
            ControlOp::Remove { name } => {
                match self.plugins.iter().position(|p| p.name() == name) {
                    Some(i) => (
                        Ok(Outcome::plain(Handover::Removed)),
                        Some(self.plugins.remove(i)),
                    ),
                    None => (Err(SwapError::NotFound(name)), None),
                }
            }
        };
        self.complete(c.reply, started, outcome);
    }

    /// Hands a caught-up new version to a shadow thread, which keeps
    /// replaying what the live version processes until it can take over.
    /// Gives the plugin back when a shadow is not possible (a new plugin,
    /// another interest, a shadow already running): the swap then happens now.
    fn shadow_or_back(
        &mut self,
        plugin: Plugin,
        caught_up: u64,
        reply: shadow::Reply,
    ) -> Option<(Plugin, shadow::Reply)> {
        let catchup = self
            .plugins
            .iter()
            .find(|p| p.name() == plugin.name() && p.world() == plugin.world())
            .map(|old| old.catchup(Some(caught_up)));
        match catchup {
            Some(c) if self.shadow.is_none() && c.fits(&plugin) => {
                match Shadow::start(plugin, caught_up, reply) {
                    Ok(mut sh) => {
                        sh.feed(&c);
                        self.shadow = Some(sh);
                        None
                    }
                    Err(back) => Some(*back),
                }
            }
            _ => Some((plugin, reply)),
        }
    }

    /// After a round: sends the shadow what the live version just processed,
    /// and swaps once the shadow has replayed all of it (or waits for it when
    /// it trails too long, or `force`, at shutdown).
    fn advance_shadow(&mut self, force: bool) {
        if self.shadow.is_none() {
            return;
        }
        let in_step = self.feed_shadow();
        let sh = self.shadow.as_mut().expect("checked above");
        let ready = sh.caught_up() || sh.failed();
        if in_step && !ready && !force && sh.started.elapsed() < SHADOW_PATIENCE {
            return;
        }
        let started = Instant::now();
        let sh = self.shadow.take().expect("checked above");
        if in_step && !ready {
            tracing::info!(plugin = %sh.name, shadowed_ms = sh.started.elapsed().as_millis() as u64, "the new version trails the live one; waiting for it to catch up");
        }
        let next = sh.next();
        let (plugin, replayed, reply) = sh.finish();
        let outcome = match replayed {
            Err(e) => (Err(SwapError::StateRejected(e.to_string())), Some(plugin)),
            // In step: nothing left to replay. Otherwise the swap snapshots and restores.
            Ok(()) => self.deploy(plugin, false, in_step.then_some(next)),
        };
        self.complete(reply, started, outcome);
    }

    /// Sends the shadow what the live version processed since the last feed
    /// (with the snapshot, if it took one meanwhile). False if the plugin is gone.
    fn feed_shadow(&mut self) -> bool {
        let Some(sh) = self.shadow.as_mut() else {
            return true;
        };
        match self.plugins.iter().find(|p| p.name() == sh.name) {
            Some(old) => {
                sh.feed(&old.catchup(Some(sh.next())));
                true
            }
            None => false,
        }
    }

    /// Retires the old instance, records the pause and answers the change.
    fn complete(&mut self, reply: shadow::Reply, started: Instant, (result, retired): Applied) {
        if let Some(old) = retired {
            // Freeing an instance unmaps its linear memory: milliseconds for a
            // big state, which the events need not wait for.
            if let Err(std::sync::mpsc::SendError(old)) = self.retire.send(old) {
                drop(old);
            }
        }
        if result.is_ok() {
            // What the pipeline reads may have changed: enrichers adapt now,
            // between rounds, so every event sees one consistent pipeline.
            let sample = self.sample_properties().to_vec();
            let all = self.archive_all();
            refresh_reads(&mut self.plugins, &sample, all);
        }
        let pause = started.elapsed();
        let result = result.map(|o| {
            self.metrics
                .swap_pause
                .lock()
                .expect("metrics lock")
                .record(pause);
            Swapped {
                handover: o.handover,
                state_bytes: o.state_bytes,
                caught_up: o.caught_up,
                pause,
                parts: o.parts,
            }
        });
        if matches!(&result, Ok(s) if s.handover == Handover::Reset) {
            // The last checkpoint holds the old version's state, which this
            // version may not understand: replace it before a restart needs it
            // (with the log, once the sinks have settled it; the snapshots
            // waiting for that hold the old state too).
            self.pending.clear();
            self.checkpoint();
            self.settle_pending();
        }
        self.publish();
        let _ = reply.send(result);
    }

    /// Swaps `new` in; returns the outcome and the retired instance (dropped by the caller).
    fn deploy(&mut self, mut new: Plugin, reset_state: bool, caught_up: Option<u64>) -> Applied {
        let Some(i) = self.plugins.iter().position(|p| p.name() == new.name()) else {
            let at = insert_position(self.plugins.iter().map(Plugin::world), new.world());
            self.plugins.insert(at, new);
            return (Ok(Outcome::plain(Handover::New)), None);
        };
        let old = &mut self.plugins[i];
        // The common case: the new version caught up before the pause, so
        // only the batches since are replayed here, whatever the state's size.
        let caught = caught_up
            .filter(|_| old.world() == new.world() && old.world().is_stateful() && !reset_state)
            .map(|n| old.catchup(Some(n)))
            .filter(|c| !c.from_base && c.fits(&new));
        let outcome = if let Some(c) = caught {
            let t = Instant::now();
            let r = new.catch_up(&c);
            tracing::debug!(
                plugin = new.name(),
                events = c.events(),
                batches = c.batches.len(),
                took_us = t.elapsed().as_micros() as u64,
                "replayed the last batches in the pause"
            );
            match r {
                Ok(()) => {
                    new.carry_over(old);
                    Outcome {
                        handover: Handover::Kept,
                        state_bytes: 0,
                        caught_up: true,
                        // Reported by the restore of the catch-up's snapshot.
                        parts: new.restored().cloned(),
                    }
                }
                Err(e) => return (Err(SwapError::StateRejected(e.to_string())), Some(new)),
            }
        } else {
            match handover(old, &mut new, reset_state) {
                Ok(o) => o,
                Err(e) => return (Err(e), Some(new)),
            }
        };
        let old = std::mem::replace(&mut self.plugins[i], new);
        (Ok(outcome), Some(old))
    }

    fn catchup(
        &self,
        name: &str,
        since: Option<u64>,
        reply: tokio::sync::oneshot::Sender<Option<Catchup>>,
    ) {
        let c = self
            .plugins
            .iter()
            .find(|p| p.name() == name)
            .map(|p| p.catchup(since));
        let _ = reply.send(c);
    }

    /// On a quiet stream, event time advances with processing time once the
    /// idle timeout has passed, so windows close and absence rules fire.
    fn idle_advance(&mut self) {
        let Some(last) = self.last_arrival else {
            return;
        };
        let before = self.watermark.current();
        let wm = self
            .watermark
            .idle_advance(last.elapsed(), self.settings.idle_timeout);
        if wm > before {
            self.run_to(wm);
        }
    }

    /// The input is over: event time runs to its end through the pipeline.
    fn run_to_end_of_time(&mut self) {
        let wm = self.watermark.advance_to(i64::MAX);
        self.run_to(wm);
        tracing::info!("end of input: every window closed");
    }

    /// Takes the pipeline to watermark `wm` without events (windows close,
    /// timers fire) and writes what that emits.
    fn run_to(&mut self, wm: i64) {
        let mut out = PluginOutput::default();
        line::run(
            &mut self.plugins,
            vec![(Vec::new(), wm)],
            &mut out,
            &mut |_| {},
        );
        self.write(out);
        self.publish();
    }

    /// Writes a round's outputs (see [`Outputs::write`]).
    fn write(&mut self, out: PluginOutput) {
        self.outputs.write(&out);
    }

    fn checkpoint(&mut self) {
        // The checkpoint folds the replay log into a snapshot: a shadow gets
        // its batches first (else it would restart from the snapshot).
        self.feed_shadow();
        // The archive's parts up to here go in place first; if they cannot,
        // no checkpoint counts them (a restart writes them again).
        if let Some(a) = &self.archive
            && let Err(e) = a.seal(self.wal_seq)
        {
            tracing::error!(error = %e, "archive: checkpoint skipped, its parts are not in place");
            return;
        }
        if self.settings.wal.is_none() {
            // Nothing to replay after a crash: waiting for the sinks gains nothing.
            let saved = self.checkpoints.save(
                &mut self.plugins,
                &self.watermark,
                &self.dedupe,
                self.wal_seq,
            );
            if self.committed(saved) && self.log_found {
                // Everything the found log held is in this checkpoint.
                let dir = self.settings.data_dir.join("wal");
                match wal::remove_all(&dir) {
                    Ok(n) => {
                        self.log_found = false;
                        tracing::info!(segments = n, dir = %dir.display(), "the write-ahead log found at the start is replayed and checkpointed: removed");
                    }
                    Err(e) => tracing::warn!(error = %e, "removing the replayed write-ahead log"),
                }
            }
            self.outputs.sync();
            return;
        }
        // With the log, a checkpoint is complete only once the sinks have
        // settled what was emitted before it: until then a restart restores
        // the one before and replays the log, emitting it again.
        self.outputs.sync();
        self.complete_checkpoints();
        if self.pending.len() >= MAX_PENDING {
            return;
        }
        let mark = self.outputs.mark();
        self.outputs.hurry(&mark);
        let snap = Checkpoints::take(
            &mut self.plugins,
            &self.watermark,
            &self.dedupe,
            self.wal_seq,
        );
        self.pending.push_back((mark, snap));
        self.complete_checkpoints();
    }

    /// Commits the newest pending checkpoint the sinks have settled (older
    /// ones are superseded), then removes the log segments it covers.
    fn complete_checkpoints(&mut self) {
        let Some(i) = self
            .pending
            .iter()
            .rposition(|(mark, _)| self.outputs.settled(mark))
        else {
            return;
        };
        let (_, snap) = self.pending.drain(..=i).next_back().expect("non-empty");
        let covered = snap.wal_seq;
        let saved = self.checkpoints.commit(snap, &self.plugins);
        if self.committed(saved) {
            let dir = self.settings.data_dir.join("wal");
            if let Err(e) = wal::remove_covered(&dir, covered) {
                tracing::warn!(error = %e, "removing write-ahead log segments a checkpoint covers");
            }
        }
    }

    /// Counts a committed checkpoint, or reports why it failed (the previous
    /// one stays in force).
    fn committed(&self, saved: anyhow::Result<()>) -> bool {
        let dir = self.settings.data_dir.join("checkpoints");
        let ok = saved.is_ok();
        if ok {
            self.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        let io = saved.map_err(|e| std::io::Error::other(format!("checkpoint failed: {e:#}")));
        self.metrics.storage_result(&dir, io, 0);
        ok
    }

    /// Waits (a while) for the sinks to settle the last checkpoint taken and
    /// commits it (at shutdown, so the next start need not replay the log).
    fn settle_pending(&mut self) {
        let Some((mark, _)) = self.pending.back() else {
            return;
        };
        let mark = mark.clone();
        self.outputs.hurry(&mark);
        let deadline = Instant::now() + SETTLE_PATIENCE;
        while !self.outputs.settled(&mark) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.complete_checkpoints();
        if !self.pending.is_empty() {
            tracing::warn!(
                "the sinks did not settle the last checkpoint in {SETTLE_PATIENCE:?}; the next start replays the write-ahead log from the one before"
            );
        }
    }

    fn publish(&self) {
        self.metrics
            .watermark_ms
            .store(self.watermark.current(), Ordering::Relaxed);
        self.metrics
            .max_event_ms
            .store(self.watermark.max_event_time(), Ordering::Relaxed);
        let figures = self
            .plugins
            .iter()
            .map(|p| PluginFigures {
                name: p.name().to_string(),
                world: p.world(),
                version: p.component().hash.clone(),
                stats: p.stats().clone(),
                breaker: p.breaker(),
            })
            .collect();
        *self.metrics.plugins.lock().expect("metrics lock") = figures;
    }
}
