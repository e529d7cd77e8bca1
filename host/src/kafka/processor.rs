//! A processor: one member of the consumer group that shares the events
//! topic and the keyed stages' repartition topics.
//!
//! Two stages, as Kafka Streams does when a grouping key differs from the
//! partitioning key:
//! - **Source stage** (events topic, keyed by user): records are parsed (bad
//!   ones go to the dead-letter file with topic, partition and offset), the
//!   enrichers run on the batch, and each event is produced to the
//!   repartition topic of every stateful plugin that wants it, keyed by that
//!   plugin's `partition_by` field. A plugin without `partition_by` has a
//!   one-partition topic: one instance sees every event (global aggregates).
//! - **Keyed stage** (one task per repartition-topic partition): a plugin
//!   instance with its own event time, fed what its partition holds.
//!
//! Guarantees:
//! - Source offsets are committed once the repartitioned records are
//!   acknowledged (idempotent producer, acks=all). Records re-produced after
//!   a crash carry the same source partition, offset and index, and a keyed
//!   task skips those it has already taken in, so each event counts once.
//! - A keyed task's offset is committed only after the outputs it produced
//!   before it were settled by every sink and its snapshot was written to
//!   the compacted checkpoints topic. A restart (here or on another host)
//!   restores that snapshot and replays from there; points are deterministic,
//!   so replays overwrite.
//! - Event time: a task's watermark is the minimum over the source partitions
//!   of their highest event time minus the bound, leaving out a partition idle
//!   for `idle_timeout`; when every input is idle, it advances with
//!   processing time (as on one host).
//! - Revocation: the task is flushed, checkpointed and committed before its
//!   partition goes. Assignment: restore, then consume.

use super::checkpoint::{self, Header};
use super::internal::{self, Writer};
use super::plugins::{self as live, Apply, GroupClock, PluginStatus, Status};
use super::{KafkaError, Topics, client_config, client_error, field_value};
use crate::config::{KafkaConfig, Resume};
use crate::dataflow::dedupe::Dedupe;
use crate::dataflow::line;
use crate::dataflow::watermark::{Clock, Inputs, batches};
use crate::dataflow::{Handover, SwapError, handover, insert_position};
use crate::event::{EventDefaults, from_json, now_ms, parse_events};
use crate::runtime::{
    BreakerState, Catchup, Event, Interest, Plugin, PluginError, PluginOutput, PluginStats,
};
use crate::sinks::archive::Archive;
use crate::sinks::{Mark, Outputs};
use crate::telemetry::{Metrics, PluginFigures, RejectReason};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// At most this many payload bytes are taken per wake-up (with at most
/// `batch_size` records of each kind, times [`SOURCE_ROUND_CHUNKS`] from sources), so memory stays bounded however big records are.
const MAX_POLL_BYTES: usize = 16 << 20;

/// Batches a round of the source side takes at most (fewer than the
/// embedded engine's [`line::ROUND_CHUNKS`]: a round here also waits for
/// its partitions' records, and the Kafka figures were measured with 8).
const SOURCE_ROUND_CHUNKS: usize = 8;

/// Checkpoints waiting for their outputs, per task, at most: beyond, a task
/// skips a snapshot until older ones are written.
const MAX_PENDING: usize = 4;

/// A stateful plugin of the pipeline and the field its state is keyed by.
pub struct Keyed {
    pub template: Plugin,
    pub partition_by: Option<String>,
}

/// A step of the pipeline, in config order: an enricher runs in the source
/// stage; a stateful plugin is a keyed stage, fed the events as the steps
/// before it left them (as on one host).
pub enum Step {
    Enrich(Plugin),
    Keyed(Keyed),
}

/// The source stage's walk over the pipeline.
enum Flow {
    Enrich(Box<Plugin>),
    /// Repartition the batch as it is now to this keyed stage.
    Stage(usize),
}

impl Flow {
    /// The step's plugin: an enricher, or a keyed stage's template.
    fn plugin<'a>(&'a self, stages: &'a [Stage]) -> &'a Plugin {
        match self {
            Flow::Enrich(p) => p,
            Flow::Stage(s) => &stages[*s].template,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    pub out_of_orderness: Duration,
    pub idle_timeout: Duration,
    pub checkpoint_interval: Duration,
    pub batch_size: usize,
    /// How far ahead of its record's timestamp an event's time may be.
    pub max_future: Duration,
    /// Event ids each keyed task remembers (see [`crate::dataflow::dedupe`]); 0: off.
    pub dedupe_max_ids: usize,
    /// How far behind its watermark a task remembers an id, in event time.
    pub dedupe_horizon_ms: i64,
    /// `[archive]`: the events of this processor's source partitions, after
    /// its enrichers (or as received), in parts per source partition.
    pub archive: Option<crate::sinks::archive::ArchiveSettings>,
}

/// The topics a pipeline needs: the events topic and, per stateful plugin,
/// its repartition topic (one partition unless keyed); the checkpoints topic.
pub fn topics_for(k: &KafkaConfig, keyed: &[(String, bool)]) -> Vec<(String, i32, bool)> {
    let t = Topics::new(k);
    let mut out = vec![(t.events.clone(), k.partitions, false)];
    for (name, partitioned) in keyed {
        let n = if *partitioned { k.partitions } else { 1 };
        out.push((t.repartition(name), n, false));
    }
    out.push((t.checkpoints(), 1, true));
    out
}

/// A running processor; [`ProcessorHandle::stop`] flushes, checkpoints,
/// commits and leaves the group.
pub struct ProcessorHandle {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), KafkaError>>,
}

impl ProcessorHandle {
    pub fn stop(self) -> Result<(), KafkaError> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(KafkaError::Other("the processor thread panicked".into())))
    }

    /// Whether the processor stopped on its own (a fatal error).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// What ties a processor to the rest of its group (see [`super::plugins`]).
pub struct Live {
    /// Plugin changes from the plugins topic, instantiated by the host.
    pub changes: Receiver<Apply>,
    /// The group's source partitions in event time.
    pub clock: Arc<GroupClock>,
}

/// Creates the topics, joins the group and starts consuming on a thread of its own.
pub fn start(
    k: &KafkaConfig,
    settings: ProcessorSettings,
    pipeline: Vec<Step>,
    outputs: Outputs,
    metrics: Arc<Metrics>,
    live: Option<Live>,
) -> Result<ProcessorHandle, KafkaError> {
    let (changes, group) = match live {
        Some(l) => (Some(l.changes), Some(l.clock)),
        None => (None, None),
    };
    let mut flow = Vec::with_capacity(pipeline.len());
    let mut keyed = Vec::new();
    for step in pipeline {
        match step {
            Step::Enrich(p) => flow.push(Flow::Enrich(Box::new(p))),
            Step::Keyed(k) => {
                flow.push(Flow::Stage(keyed.len()));
                keyed.push(k);
            }
        }
    }
    let templates: Vec<&Plugin> = keyed.iter().map(|k| &k.template).collect();
    let archive_all = settings.archive.as_ref().is_some_and(|a| !a.raw);
    refresh_enrichers(&mut flow, &templates, archive_all);
    let archive = settings
        .archive
        .clone()
        .map(|a| Archive::open(a, 0, false, metrics.clone()))
        .transpose()
        .map_err(|e| KafkaError::Other(format!("opening the archive: {e}")))?;
    let topics = Topics::new(k);
    let names: Vec<(String, bool)> = keyed
        .iter()
        .map(|p| (p.template.name().to_string(), p.partition_by.is_some()))
        .collect();
    super::ensure_topics(k, &topics_for(k, &names))?;
    let producer: ThreadedProducer<Delivery> = client_config(
        k,
        &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
            // Retried until written: a failure is fatal, never a silent loss.
            ("message.timeout.ms", "0"),
            ("message.max.bytes", "100000000"),
        ],
    )
    .create_with_context(Delivery::default())
    .map_err(client_error("creating the processor's producer"))?;
    let stages: Vec<Stage> = keyed
        .into_iter()
        .map(|p| Stage {
            active: true,
            topic: topics.repartition(p.template.name()),
            partitions: if p.partition_by.is_some() {
                k.partitions
            } else {
                1
            },
            template: p.template,
            partition_by: p.partition_by,
        })
        .collect();
    let subscribed = subscription(&topics, &stages);
    let status = flow
        .iter()
        .map(|f| {
            let p = f.plugin(&stages);
            (p.name().to_string(), running(p))
        })
        .collect();
    let state = Proc {
        id: format!("{}-{}", k.group, uuid::Uuid::now_v7().simple()),
        changes,
        waiting: VecDeque::new(),
        preparing: None,
        paused: Duration::ZERO,
        group,
        held: BTreeSet::new(),
        caught_up: BTreeSet::new(),
        status,
        status_due: Instant::now(),
        status_sent: Instant::now(),
        kafka: k.clone(),
        topics,
        settings: settings.clone(),
        flow,
        stages,
        sources: BTreeMap::new(),
        source_epochs: BTreeMap::new(),
        epochs: 0,
        source_partitions: k.partitions,
        tasks: BTreeMap::new(),
        clocks: HashMap::new(),
        floors: HashMap::new(),
        rescan: HashMap::new(),
        buffer: Vec::new(),
        producer,
        outputs: Some(outputs),
        metrics: metrics.clone(),
        fatal: None,
        next_checkpoint: Instant::now() + settings.checkpoint_interval,
        archive,
        archived_ids: HashMap::new(),
    };
    let consumer: BaseConsumer<Ctx> = client_config(
        k,
        &[
            ("group.id", &k.group),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            // Incremental: a member joining or leaving moves only the
            // partitions that change hands.
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("enable.partition.eof", "false"),
            // Events cross Kafka twice (events topic, then repartition
            // topic): a fetch that waits out the default 500 ms at a
            // partition's end held the keyed stage back by that much at
            // every hop. Measured: a 300 000-event backlog went from 2.3 s
            // to 1.7 s, the keyed stage starting at 0.1 s instead of 0.9 s.
            ("fetch.wait.max.ms", "10"),
            // Per-partition lag for `/metrics` (see `Ctx::stats`).
            ("statistics.interval.ms", "1000"),
        ],
    )
    .create_with_context(Ctx {
        state: Mutex::new(state),
        metrics: metrics.clone(),
    })
    .map_err(client_error("creating the processor's consumer"))?;
    let topics: Vec<&str> = subscribed.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(client_error(format!(
        "subscribing to {}",
        topics.join(", ")
    )))?;
    tracing::info!(topics = %subscribed.join(", "), group = %k.group, "processor joining the consumer group");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("nexuspipe-processor".into())
        .spawn(move || {
            // A consumer loop that dies (an error, or a panic in a stage)
            // leaves the process without work: say why, so `/readyz` turns
            // 503 and the process exits instead of running headless.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(consumer, s)))
                .unwrap_or_else(|panic| {
                    let why = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("a panic");
                    Err(KafkaError::Other(format!(
                        "the processor thread panicked: {why}"
                    )))
                });
            if let Err(e) = &r {
                tracing::error!(error = %e, "the processor stopped");
                metrics.set_fatal(format!("the processor stopped: {e}"));
            }
            r
        })
        .map_err(|e| KafkaError::Other(format!("starting the processor thread: {e}")))?;
    Ok(ProcessorHandle { stop, thread })
}

fn run(consumer: BaseConsumer<Ctx>, stop: Arc<AtomicBool>) -> Result<(), KafkaError> {
    let consumer = Arc::new(consumer);
    let batch = consumer.context().lock().settings.batch_size;
    let mut sources = SourceQueues {
        queues: BTreeMap::new(),
        align_wait: consumer.context().lock().kafka.align_wait,
        synced: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        // Source partitions first, from their own queues, oldest record first.
        sources.sync(&consumer);
        // After `sync` made their queues anew: what is fetched from here on
        // lands in the new queues.
        consumer.context().lock().seek_kept(&consumer);
        let held = consumer.context().lock().held.clone();
        let now = Instant::now();
        // Chunks enough for the source side's assembly line, as a round of
        // the embedded engine takes.
        let taken = sources.take(batch, MAX_POLL_BYTES, now, &held);
        let from_sources = !taken.is_empty();
        {
            let mut p = consumer.context().lock();
            p.buffer.extend(taken);
            p.caught_up = sources.caught_up(now);
        }
        // Then the consumer's queue: rebalances, the repartition topics, and
        // source records fetched before their partition got its own queue.
        // Gather up to a batch of its own, whatever the sources gave: the
        // keyed stage works on it while the source stage works on theirs (a
        // shared budget starved the keyed stage for as long as a backlog
        // lasted). The buffer lives in the shared state, so a revocation
        // inside `poll` processes what was taken before it. No waiting
        // while source records are coming.
        let (mut n, mut bytes) = (0, 0);
        let wait = if from_sources {
            Duration::ZERO
        } else {
            IDLE_POLL
        };
        let deadline = Instant::now() + wait;
        // A repartition record holds many events: the bytes bound a wake-up too.
        while n < batch && bytes < MAX_POLL_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            match consumer.poll(left) {
                Some(Ok(m)) => {
                    bytes += m.payload_len();
                    consumer.context().lock().buffer.push(Record::from(&m));
                    n += 1;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    break;
                }
                // Past the deadline `poll` waits no more: this takes what
                // is already fetched. (It stopped after one record, which
                // held the keyed stage to one record a round while a
                // source backlog lasted.)
                None => break,
            }
        }
        let mut p = consumer.context().lock();
        p.process_buffer();
        p.tick(&consumer);
        // Between two batches: every task runs the same version of a plugin.
        p.apply_changes(&consumer);
        if let Some(e) = p.fatal.take() {
            return Err(e);
        }
    }
    // Leave cleanly: everything processed is flushed, checkpointed and committed.
    {
        let mut p = consumer.context().lock();
        p.process_buffer();
        p.checkpoint(&consumer, true);
        p.tasks.clear();
        p.sources.clear();
        p.leave();
    }
    // Closing the consumer revokes what is left (nothing) and leaves the group.
    // Records taken off a partition queue and not processed are not
    // committed: the partition's next owner reads them.
    drop(sources);
    let ctx = consumer.context().clone();
    // The last reference now that the partition queues are gone.
    drop(consumer);
    let outputs = ctx.lock().outputs.take();
    if let Some(o) = outputs {
        o.close();
    }
    tracing::info!("processor left the group");
    Ok(())
}

/// Counts failed deliveries of the processor's producer: with endless
/// retries, only fatal errors fail, and they stop the processor.
#[derive(Default)]
struct Delivery {
    failed: AtomicU64,
    last: Mutex<Option<String>>,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            self.failed.fetch_add(1, Ordering::Relaxed);
            *self.last.lock().expect("delivery lock") = Some(e.to_string());
        }
    }
}

/// The consumer's context: the processor's state, also reached by the
/// rebalance callback (which runs inside `poll`, on the processor thread).
struct Ctx {
    state: Mutex<Proc>,
    /// Reached without the state's lock (statistics, commits).
    metrics: Arc<Metrics>,
}

impl Ctx {
    fn lock(&self) -> std::sync::MutexGuard<'_, Proc> {
        self.state.lock().expect("processor lock")
    }
}

impl ClientContext for Ctx {
    /// librdkafka's statistics, every `statistics.interval.ms`: the lag of
    /// each partition this member consumes.
    fn stats(&self, stats: rdkafka::Statistics) {
        let lag = stats
            .topics
            .iter()
            .flat_map(|(topic, t)| {
                t.partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.desired && p.consumer_lag >= 0)
                    .map(move |p| ((topic.clone(), p.partition), p.consumer_lag))
            })
            .collect();
        *self.metrics.processor.lag.lock().expect("metrics lock") = lag;
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.metrics
            .processor
            .rebalances
            .fetch_add(1, Ordering::Relaxed);
        let mut p = self.lock();
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                p.keep(tpl);
                if let Err(e) = p.assign(consumer, tpl) {
                    tracing::error!(error = %e, "restoring the assigned partitions failed");
                    p.fatal = Some(e);
                }
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "assigning partitions failed");
                }
                // Source partitions wait until `run` gives each its own
                // queue (see `SourceQueues`), which it resumes: fetched
                // before, a backlog would fill the consumer's queue a
                // partition at a time.
                let mut sources = TopicPartitionList::new();
                for e in tpl.elements() {
                    if e.topic() == p.topics.events {
                        let _ = sources.add_partition(e.topic(), e.partition());
                    }
                }
                if sources.count() > 0
                    && let Err(e) = consumer.pause(&sources)
                {
                    tracing::warn!(error = %e, "pausing new source partitions failed");
                }
            }
            _ => {
                p.revoke(consumer, tpl);
                p.keep(tpl);
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "unassigning partitions failed");
                }
            }
        }
    }
}

/// How long `run` waits on the consumer's queue when no source partition
/// had a record: the latency a record that arrives then can get.
const IDLE_POLL: Duration = Duration::from_millis(5);

/// Per topic and partition, an offset (see `Proc::floors`, `Proc::rescan`).
type Offsets = HashMap<String, HashMap<i32, i64>>;

/// How long `seek_kept` waits for librdkafka to take a seek.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// A source partition's own queue (see [`SourceQueues`]).
struct SourceQueue {
    /// Its assignment (`Proc::source_epochs`).
    epoch: u64,
    /// `None` if librdkafka gave none: its records come through the consumer's queue.
    queue: Option<PartitionQueue<Ctx>>,
    /// The next record, taken off the queue and not handed over yet.
    head: Option<Record>,
    /// Timestamp of the last record handed over.
    last: Option<i64>,
    /// Since when the queue has had nothing.
    empty_since: Option<Instant>,
}

/// The owned source partitions' records, each partition from a queue of its
/// own, handed over oldest record first across them (by the record's
/// timestamp, as Kafka Streams picks among its partitions), and waiting up
/// to `kafka.align_wait` for a partition whose queue is empty while it may hold
/// older records. Taken from one shared queue, a backlog comes a partition
/// at a time: the keyed tasks' event time (the minimum over the source
/// partitions) then waits for the slowest while the others' events pile up
/// in the plugins' event-time buffers, past a funnel's memory cap.
/// librdkafka's prefetch bounds what each queue holds.
struct SourceQueues {
    queues: BTreeMap<i32, SourceQueue>,
    /// `kafka.align_wait`.
    align_wait: Duration,
    /// `Proc::epochs` when last synced.
    synced: u64,
}

impl SourceQueues {
    /// Gives each newly assigned source partition its queue, then resumes it
    /// (paused at assignment), and drops the queues of revoked ones with
    /// their next record, which was not processed.
    fn sync(&mut self, consumer: &Arc<BaseConsumer<Ctx>>) {
        let (topic, epochs) = {
            let p = consumer.context().lock();
            if p.epochs == self.synced && p.source_epochs.len() == self.queues.len() {
                return;
            }
            self.synced = p.epochs;
            (p.topics.events.clone(), p.source_epochs.clone())
        };
        self.queues.retain(|p, q| epochs.get(p) == Some(&q.epoch));
        let mut new = TopicPartitionList::new();
        for (p, epoch) in epochs {
            if self.queues.contains_key(&p) {
                continue;
            }
            let queue = consumer.split_partition_queue(&topic, p);
            if queue.is_none() {
                tracing::warn!(topic = %topic, partition = p, "no queue of its own for a source partition");
            }
            self.queues.insert(
                p,
                SourceQueue {
                    epoch,
                    queue,
                    head: None,
                    last: None,
                    empty_since: Some(Instant::now()),
                },
            );
            let _ = new.add_partition(&topic, p);
        }
        if new.count() > 0
            && let Err(e) = consumer.resume(&new)
        {
            tracing::warn!(error = %e, "resuming source partitions failed");
        }
    }

    /// Partitions with nothing to read since `align_wait` at least.
    fn caught_up(&self, now: Instant) -> BTreeSet<i32> {
        self.queues
            .iter()
            .filter(|(_, q)| {
                q.head.is_none()
                    && q.empty_since
                        .is_some_and(|t| now.duration_since(t) >= self.align_wait)
            })
            .map(|(p, _)| *p)
            .collect()
    }

    /// Up to `batch` records times [`SOURCE_ROUND_CHUNKS`] (and about
    /// `max_bytes`), oldest first, none of the `held` partitions: a round
    /// for the source side's assembly line while every partition has
    /// records waiting, one batch once one has run dry (else the others
    /// would run a round ahead of it, and its records would come late).
    fn take(
        &mut self,
        batch: usize,
        max_bytes: usize,
        now: Instant,
        held: &BTreeSet<i32>,
    ) -> Vec<Record> {
        let mut out = Vec::new();
        let mut bytes = 0;
        // A queue found empty is not asked again within one call.
        let mut empty: Vec<i32> = Vec::new();
        let max = batch * SOURCE_ROUND_CHUNKS;
        while out.len() < max && bytes < max_bytes && (out.len() < batch || empty.is_empty()) {
            for (p, q) in self.queues.iter_mut() {
                let Some(queue) = &q.queue else { continue };
                if q.head.is_some() || empty.contains(p) {
                    continue;
                }
                match queue.poll(Duration::ZERO) {
                    Some(Ok(m)) => {
                        q.head = Some(Record::from(&m));
                        q.empty_since = None;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, partition = p, "kafka consumer error");
                        empty.push(*p);
                    }
                    None => {
                        q.empty_since.get_or_insert(now);
                        empty.push(*p);
                    }
                }
            }
            let Some((p, next)) = self
                .queues
                .iter()
                .filter(|(p, _)| !held.contains(p))
                .filter_map(|(p, q)| Some((*p, q.head.as_ref()?.timestamp.unwrap_or(i64::MIN))))
                .min_by_key(|(_, t)| *t)
            else {
                break;
            };
            // An empty queue that may still bring older records holds the
            // others back, for a while.
            let waiting = self.queues.values().any(|q| {
                q.queue.is_some()
                    && q.head.is_none()
                    && q.last.is_none_or(|l| l < next)
                    && q.empty_since
                        .is_some_and(|t| now.duration_since(t) < self.align_wait)
            });
            if waiting {
                break;
            }
            let q = self.queues.get_mut(&p).expect("found above");
            let r = q.head.take().expect("found by its head");
            q.last = Some(next);
            bytes += r.len();
            out.push(r);
        }
        out
    }
}

/// A record taken off a partition.
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    payload: Option<Vec<u8>>,
    /// The record's timestamp (create or log-append time), ms.
    timestamp: Option<i64>,
}

impl Record {
    fn len(&self) -> usize {
        self.payload.as_ref().map_or(0, Vec::len)
    }

    fn from(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
        Record {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp: m.timestamp().to_millis(),
        }
    }
}

/// What a keyed task reads: events, and watermark markers of a source partition.
#[allow(
    clippy::large_enum_variant,
    reason = "nearly every item is an event; boxing them would cost an allocation each"
)]
enum Item {
    Event(Event, i32),
    /// `None`: the partition is idle.
    Marker(i32, Option<i64>),
}

struct Stage {
    /// False once the plugin was removed (kept so stage indices stay put).
    active: bool,
    template: Plugin,
    partition_by: Option<String>,
    topic: String,
    partitions: i32,
}

/// Whether a plugin of this interest takes this event.
fn interested(i: &Interest, e: &Event) -> bool {
    i.event_types.is_empty() || i.event_types.contains(&e.event_type)
}

/// One partition of a repartition topic: a plugin instance and its event time.
struct Task {
    plugin: Plugin,
    wm: Inputs,
    /// Per source partition, the last (offset, index) taken in.
    seen: BTreeMap<i32, (i64, u32)>,
    /// The event ids taken: a client's retried copy (a new record with the
    /// same event_id, which `seen` cannot tell) is dropped.
    ids: Dedupe,
    next_offset: i64,
    /// Processed something since the last snapshot.
    changed: bool,
    /// Snapshots waiting for their outputs to settle, oldest first.
    pending: Vec<(Mark, i64, Vec<u8>)>,
}

impl Clock<Item> for Inputs {
    fn current(&self) -> i64 {
        self.current
    }
    fn observe(&mut self, item: &Item) {
        match item {
            Item::Event(e, source) => self.observe_source(*source, Some(e.timestamp)),
            Item::Marker(source, ts) => self.observe_source(*source, *ts),
        }
    }
    fn time(item: &Item) -> i64 {
        match item {
            Item::Event(e, _) => e.timestamp,
            Item::Marker(..) => i64::MAX, // never late
        }
    }
    fn counts(item: &Item) -> bool {
        matches!(item, Item::Event(..))
    }
}

/// An owned source partition's event time, as broadcast to the keyed tasks.
struct SourceClock {
    max: i64,
    last_record: Instant,
    last_idle_marker: Option<Instant>,
}

struct Proc {
    /// This processor in the group's status topic.
    id: String,
    /// Plugin changes from the plugins topic (see [`super::plugins`]).
    changes: Option<Receiver<Apply>>,
    /// Changes taken from `changes` and not applied yet, in order.
    waiting: VecDeque<Apply>,
    /// A keyed plugin's new version catching up with its tasks.
    preparing: Option<Preparing>,
    /// How long the last applied change held the events back.
    paused: Duration,
    /// The group's source partitions in event time.
    group: Option<Arc<GroupClock>>,
    /// Own source partitions held back: too far ahead of the group's least
    /// advanced one (`[kafka] max_drift`).
    held: BTreeSet<i32>,
    /// Own source partitions with nothing left to read for now: they do
    /// not hold the group back.
    caught_up: BTreeSet<i32>,
    /// What this processor runs, per plugin, as published.
    status: BTreeMap<String, PluginStatus>,
    status_due: Instant,
    status_sent: Instant,
    kafka: KafkaConfig,
    topics: Topics,
    settings: ProcessorSettings,
    /// The pipeline in config order (enrichers, and where each keyed stage is fed).
    flow: Vec<Flow>,
    stages: Vec<Stage>,
    /// Assigned partitions of the events topic -> next offset to commit.
    sources: BTreeMap<i32, i64>,
    /// When each owned source partition was last assigned (a count of
    /// assignments): its own queue in `run` is made again after a new one.
    source_epochs: BTreeMap<i32, u64>,
    epochs: u64,
    source_partitions: i32,
    tasks: BTreeMap<(usize, i32), Task>,
    /// Owned source partitions' event time (see [`WATERMARK_HEADER`]).
    clocks: HashMap<i32, SourceClock>,
    /// With `resume = "scan"`: records below these offsets were processed
    /// before the partition was assigned here, and are skipped.
    floors: Offsets,
    /// With `resume = "scan"`: partitions kept through a rebalance, to read
    /// again from their start (see [`Proc::keep`]), each with its first
    /// offset not taken in. Until then, what they deliver from there on is
    /// dropped.
    rescan: Offsets,
    buffer: Vec<Record>,
    producer: ThreadedProducer<Delivery>,
    /// Taken at shutdown.
    outputs: Option<Outputs>,
    metrics: Arc<Metrics>,
    fatal: Option<KafkaError>,
    next_checkpoint: Instant,
    /// `[archive]`: sealed at every checkpoint before the source offsets
    /// are committed.
    archive: Option<Archive>,
    /// With `[archive]`: per owned source partition, the event ids taken,
    /// so a copy a client sent again is archived once, as on one host (the
    /// keyed stages drop copies later, after the archive).
    archived_ids: HashMap<i32, Dedupe>,
}

impl Proc {
    fn outputs(&mut self) -> &mut Outputs {
        self.outputs.as_mut().expect("outputs live until shutdown")
    }

    fn stage_of(&self, topic: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.topic == topic)
    }

    /// Restores the tasks of newly assigned repartition partitions and points
    /// their offsets at their checkpoints.
    fn assign(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        tpl: &mut TopicPartitionList,
    ) -> Result<(), KafkaError> {
        let assigned: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let keyed: Vec<(usize, i32)> = assigned
            .iter()
            .filter_map(|(t, p)| Some((self.stage_of(t)?, *p)))
            .collect();
        let saved = if keyed.is_empty() {
            HashMap::new()
        } else {
            checkpoint::load_all(&self.kafka, &self.topics.checkpoints())?
        };
        let mut resume_at: Vec<(String, i32, Option<i64>)> = Vec::new();
        let mut sources = TopicPartitionList::new();
        for (topic, p) in &assigned {
            if *topic == self.topics.events {
                let _ = sources.add_partition(topic, *p);
            }
        }
        if sources.count() > 0 {
            let committed = consumer
                .committed_offsets(sources, Duration::from_secs(30))
                .map_err(client_error("reading the committed offsets"))?;
            for e in committed.elements() {
                let at = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                self.sources.insert(e.partition(), at.unwrap_or(-1));
                // Parts sealed past the commit (a crash between a seal and
                // its commit, here or on another processor) go: this
                // processor reads and archives those events again.
                if let Some(a) = &self.archive {
                    a.forget(e.partition(), at.unwrap_or(0).max(0) as u64)
                        .map_err(|e| KafkaError::Other(format!("archive: {e}")))?;
                }
                self.epochs += 1;
                self.source_epochs.insert(e.partition(), self.epochs);
                self.clocks.insert(
                    e.partition(),
                    SourceClock {
                        max: i64::MIN,
                        last_record: Instant::now(),
                        last_idle_marker: None,
                    },
                );
                resume_at.push((e.topic().to_string(), e.partition(), at));
            }
        }
        for (stage, p) in keyed {
            let s = &self.stages[stage];
            let name = s.template.name().to_string();
            let mut plugin = s.template.fresh().map_err(|e| {
                KafkaError::Other(format!("starting plugin `{name}` for partition {p}: {e}"))
            })?;
            let mut wm = Inputs::new(
                self.settings.out_of_orderness.as_millis() as i64,
                self.settings.idle_timeout,
                self.source_partitions,
            );
            let mut seen = BTreeMap::new();
            let mut ids = Dedupe::new(
                self.settings.dedupe_max_ids,
                self.settings.dedupe_horizon_ms,
            );
            let mut next_offset = 0;
            let offset = match saved.get(&checkpoint::key(&name, p)) {
                Some(bytes) => {
                    let (h, state) = checkpoint::decode(bytes).map_err(|e| {
                        KafkaError::Other(format!(
                            "the checkpoint of `{name}` partition {p} is unreadable: {e}"
                        ))
                    })?;
                    let (taken, state) = state.split_at(h.ids.min(state.len()));
                    if !taken.is_empty() {
                        ids.restore(taken).map_err(|e| {
                            KafkaError::Other(format!(
                                "the event ids in the checkpoint of `{name}` partition {p} are unreadable: {e}"
                            ))
                        })?;
                    }
                    if !state.is_empty() {
                        plugin.restore(state).map_err(|e| {
                            KafkaError::Other(format!(
                                "plugin `{name}` rejected its checkpoint for partition {p} (written by version {}): {e}",
                                h.version
                            ))
                        })?;
                    }
                    for (src, max) in &h.inputs {
                        wm.inputs.insert(*src, (*max, false));
                    }
                    wm.current = h.watermark;
                    seen = h.seen;
                    next_offset = h.next_offset;
                    tracing::info!(plugin = %name, partition = p, offset = h.next_offset, bytes = state.len(), "restored from checkpoint");
                    Some(h.next_offset)
                }
                None => None,
            };
            resume_at.push((self.stages[stage].topic.clone(), p, offset));
            let task = Task {
                plugin,
                wm,
                seen,
                ids,
                next_offset,
                changed: false,
                pending: Vec::new(),
            };
            self.tasks.insert((stage, p), task);
        }
        for (topic, p, at) in resume_at {
            let offset = match (at, self.kafka.resume) {
                (Some(o), Resume::Offset) => Offset::Offset(o),
                (Some(o), Resume::Scan) => {
                    self.floors.entry(topic.clone()).or_default().insert(p, o);
                    Offset::Beginning
                }
                (None, _) => Offset::Beginning,
            };
            tpl.set_partition_offset(&topic, p, offset)
                .map_err(client_error("setting the start offset"))?;
        }
        tracing::info!(
            new = ?assigned,
            sources = ?self.sources.keys().collect::<Vec<_>>(),
            tasks = ?self.tasks.keys().map(|(s, p)| format!("{}/{p}", self.stages[*s].template.name())).collect::<Vec<_>>(),
            "partitions assigned"
        );
        Ok(())
    }

    /// Before partitions go: process what was taken, flush, checkpoint, commit.
    fn revoke(&mut self, consumer: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) {
        self.process_buffer();
        self.checkpoint(consumer, true);
        let revoked: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        for (topic, p) in &revoked {
            if *topic == self.topics.events {
                self.sources.remove(p);
                self.source_epochs.remove(p);
                self.clocks.remove(p);
                self.archived_ids.remove(p);
            } else if let Some(stage) = self.stage_of(topic) {
                self.tasks.remove(&(stage, *p));
            }
            if let Some(f) = self.floors.get_mut(topic) {
                f.remove(p);
            }
        }
        tracing::info!(partitions = ?revoked, "partitions revoked after a checkpoint");
    }

    /// With `resume = "scan"`, at a rebalance (`changed`: the partitions it
    /// assigns or revokes): marks the partitions this processor keeps, to be
    /// read again from their first record not taken in. librdkafka pauses
    /// them during the rebalance and fetches them again from the last record
    /// it handed over; a broker that cannot fetch from inside a record batch
    /// answers that from the next batch, and the rest of the batch was never
    /// read (measured: 50 to 300 events of a backlog). Against a broker
    /// that can (`resume = "offset"`), nothing is needed.
    fn keep(&mut self, changed: &TopicPartitionList) {
        if self.kafka.resume != Resume::Scan {
            return;
        }
        // The first offset not taken in: past what was processed and what
        // waits in the buffer (taken before the rebalance, processed after).
        let mut next: Offsets = HashMap::new();
        let events = next.entry(self.topics.events.clone()).or_default();
        events.extend(self.sources.iter().map(|(p, n)| (*p, (*n).max(0))));
        for ((stage, p), t) in &self.tasks {
            let topic = &self.stages[*stage].topic;
            next.entry(topic.clone())
                .or_default()
                .insert(*p, t.next_offset);
        }
        for r in &self.buffer {
            if let Some(n) = next.get_mut(&r.topic).and_then(|f| f.get_mut(&r.partition)) {
                *n = (*n).max(r.offset + 1);
            }
        }
        for e in changed.elements() {
            if let Some(f) = next.get_mut(e.topic()) {
                f.remove(&e.partition());
            }
        }
        for (topic, parts) in next {
            for (p, n) in parts {
                if topic == self.topics.events {
                    // Its queue is made anew (its head, not taken in, dropped).
                    self.epochs += 1;
                    self.source_epochs.insert(p, self.epochs);
                }
                // A second rebalance before the seek: the first one's offset holds.
                self.rescan
                    .entry(topic.clone())
                    .or_default()
                    .entry(p)
                    .or_insert(n);
            }
        }
    }

    /// Reads the partitions [`Proc::keep`] marked again from their start,
    /// skipping what was taken in.
    fn seek_kept(&mut self, consumer: &BaseConsumer<Ctx>) {
        if self.rescan.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        // Those revoked since are left out: their next owner reads them.
        let mut pending: Vec<(String, i32, i64)> = Vec::new();
        for (topic, parts) in std::mem::take(&mut self.rescan) {
            let stage = self.stage_of(&topic);
            for (p, next) in parts {
                let owned = if topic == self.topics.events {
                    self.sources.contains_key(&p)
                } else {
                    stage.is_some_and(|s| self.tasks.contains_key(&(s, p)))
                };
                if owned {
                    let _ = tpl.add_partition_offset(&topic, p, Offset::Beginning);
                    pending.push((topic.clone(), p, next));
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        let failed: BTreeSet<(String, i32)> = match consumer.seek_partitions(tpl, SEEK_TIMEOUT) {
            Ok(done) => done
                .elements()
                .iter()
                .filter_map(|e| {
                    let err = e.error().err()?;
                    tracing::warn!(topic = e.topic(), partition = e.partition(), error = %err, "seeking a kept partition failed; trying again");
                    Some((e.topic().to_string(), e.partition()))
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "seeking the kept partitions failed; trying again");
                pending.iter().map(|(t, p, _)| (t.clone(), *p)).collect()
            }
        };
        let mut sought = Vec::new();
        for (topic, p, next) in pending {
            let to = if failed.contains(&(topic.clone(), p)) {
                &mut self.rescan
            } else {
                sought.push(format!("{topic}/{p}@{next}"));
                &mut self.floors
            };
            to.entry(topic).or_default().insert(p, next);
        }
        tracing::info!(partitions = ?sought, "kept partitions read again from their start, skipping what was taken in");
    }

    fn process_buffer(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let mut records = std::mem::take(&mut self.buffer);
        if !self.floors.is_empty() || !self.rescan.is_empty() {
            // Below its floor: processed before. At or past a pending
            // rescan's offset: read again once the partition is sought.
            let at = |m: &Offsets, r: &Record| m.get(&r.topic)?.get(&r.partition).copied();
            records.retain(|r| {
                at(&self.floors, r).is_none_or(|floor| r.offset >= floor)
                    && at(&self.rescan, r).is_none_or(|next| r.offset < next)
            });
        }
        let (source, keyed): (Vec<Record>, Vec<Record>) = records
            .into_iter()
            .partition(|r| r.topic == self.topics.events);
        self.metrics.processor.took("source", source.len() as u64);
        // The two stages touch different parts of the processor (the source
        // side its enrichers and source clocks, the keyed side its tasks):
        // as on one host, they run at once, each on a batch of its own.
        let Proc {
            flow,
            stages,
            sources,
            clocks,
            settings,
            metrics,
            tasks,
            archived_ids,
            ..
        } = self;
        let mut source_side = SourceSide {
            flow,
            stages,
            sources,
            clocks,
            settings,
            metrics,
            archived_ids,
        };

        let mut keyed_side = KeyedSide {
            tasks,
            stages: stages
                .iter()
                .map(|s| (s.topic.as_str(), s.active, s.template.interest()))
                .collect(),
            settings,
        };
        let (from_source, from_keyed) = match (source.is_empty(), keyed.is_empty()) {
            (true, true) => (None, None),
            (false, true) => (Some(source_side.run(source)), None),
            (true, false) => (None, Some(keyed_side.run(keyed))),
            (false, false) => std::thread::scope(|sc| {
                let k = sc.spawn(move || keyed_side.run(keyed));
                let s = source_side.run(source);
                let k = k.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                (Some(s), Some(k))
            }),
        };
        if let Some(d) = from_source {
            if let Some(a) = &self.archive {
                for (src, (events, next)) in d.archived {
                    a.write_source(events, src, next.max(0) as u64);
                }
            }
            self.produce(d.records);
            self.outputs().write(&d.out);
            self.outputs().dead_records(&d.dead);
            self.metrics
                .events_received
                .fetch_add(d.received, Ordering::Relaxed);
        }
        if let Some(d) = from_keyed {
            for (s, n) in d.taken.into_iter().enumerate().filter(|(_, n)| *n > 0) {
                let name = self.stages[s].template.name();
                self.metrics.processor.took(name, n);
            }
            self.outputs().dead_records(&d.dead);
            self.outputs().write(&d.out);
            self.metrics
                .events_processed
                .fetch_add(d.processed, Ordering::Relaxed);
            self.metrics
                .events_duplicate
                .fetch_add(d.duplicates, Ordering::Relaxed);
            self.publish();
        }
    }

    /// Produces repartition records (stage, partition, bytes), in order.
    fn produce(&mut self, records: Vec<(usize, i32, Vec<u8>)>) {
        for (s, p, bytes) in records {
            let record = BaseRecord::<(), [u8]>::to(&self.stages[s].topic)
                .partition(p)
                .payload(&bytes);
            if let Err(e) = send_waiting(&self.producer, record) {
                tracing::error!(error = %e, "producing repartitioned events failed");
                self.fatal = Some(e);
                return;
            }
        }
    }

    /// Tells every keyed task that source partition `src` is idle.
    fn send_idle(&mut self, src: i32) {
        let mut records = Vec::new();
        for (s, stage) in self.stages.iter().enumerate().filter(|(_, s)| s.active) {
            for p in 0..stage.partitions {
                let mut w = Writer::default();
                w.marker(src, None);
                records.push((s, p, w.finish()));
            }
        }
        self.produce(records);
    }

    /// Between batches: event time on quiet inputs, checkpoints.
    fn tick(&mut self, consumer: &BaseConsumer<Ctx>) {
        let now = Instant::now();
        let mut out = PluginOutput::default();
        for task in self.tasks.values_mut() {
            let before = task.wm.current;
            let wm = task.wm.idle_advance(now);
            if wm > before {
                task.plugin.process(&mut Vec::new(), wm, &mut out);
                task.changed = true;
            }
        }
        self.outputs().write(&out);
        // Quiet source partitions: tell the keyed tasks (again every idle timeout).
        let idle = self.settings.idle_timeout;
        let quiet: Vec<i32> = self
            .clocks
            .iter_mut()
            .filter(|(_, c)| {
                now.duration_since(c.last_record) >= idle
                    && c.last_idle_marker
                        .is_none_or(|t| now.duration_since(t) >= idle)
            })
            .map(|(s, c)| {
                c.last_idle_marker = Some(now);
                *s
            })
            .collect();
        for s in quiet {
            self.send_idle(s);
        }
        let active = self.active_sources();
        self.align(&active);
        if now >= self.next_checkpoint {
            self.checkpoint(consumer, false);
            self.next_checkpoint = Instant::now() + self.settings.checkpoint_interval;
        }
        self.complete(consumer);
        // Every heartbeat; while its sources are read, often enough for the
        // group's alignment.
        let reading = !active.is_empty();
        if now >= self.status_due
            || (reading && now.duration_since(self.status_sent) >= live::CLOCK_EVERY)
        {
            self.send_status();
        }
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        if failed > 0 && self.fatal.is_none() {
            let last = self
                .producer
                .context()
                .last
                .lock()
                .expect("delivery lock")
                .clone();
            self.fatal = Some(KafkaError::Other(format!(
                "{failed} repartitioned records could not be written ({}); stopping without committing them",
                last.unwrap_or_default()
            )));
        }
        self.publish();
    }

    /// Commits the source offsets whose records are acknowledged, and
    /// snapshots the keyed tasks; their offsets are committed once their
    /// outputs settle (see [`Proc::complete`]). `wait`: settle now (revocation, shutdown).
    fn checkpoint(&mut self, consumer: &BaseConsumer<Ctx>, wait: bool) {
        if let Err(e) = self.producer.flush(Duration::from_secs(30)) {
            tracing::warn!(error = %e, "repartitioned records not acknowledged yet; no commit this time");
            return;
        }
        if self.producer.context().failed.load(Ordering::Relaxed) > 0 {
            return; // fatal, reported by tick: nothing more is committed
        }
        // The archive's parts hold events up to the offsets about to be
        // committed: in place first, or nothing is committed this time.
        if let Some(a) = &self.archive
            && let Err(e) = a.seal(0)
        {
            tracing::warn!(error = %e, "archive parts not closed; no commit this time");
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (&p, &next) in &self.sources {
            if next >= 0 {
                let _ = tpl.add_partition_offset(&self.topics.events, p, Offset::Offset(next));
            }
        }
        commit(consumer, &tpl);
        let outputs = self.outputs.as_mut().expect("outputs live until shutdown");
        outputs.sync();
        let mark = outputs.mark();
        for ((_, p), task) in &mut self.tasks {
            if !task.changed || task.pending.len() >= MAX_PENDING {
                continue;
            }
            let state = match task.plugin.checkpoint() {
                Ok(s) => s,
                Err(f) => {
                    tracing::error!(plugin = task.plugin.name(), partition = p, error = %f, "snapshot failed; keeping the previous checkpoint");
                    continue;
                }
            };
            // The ids, then the plugin's state, in one record.
            let ids = if task.ids.is_empty() {
                Vec::new()
            } else {
                task.ids.snapshot()
            };
            let h = Header {
                ids: ids.len(),
                plugin: task.plugin.name().to_string(),
                partition: *p,
                version: task.plugin.component().hash.clone(),
                next_offset: task.next_offset,
                watermark: task.wm.current,
                inputs: task.wm.inputs.iter().map(|(s, (m, _))| (*s, *m)).collect(),
                seen: task.seen.clone(),
            };
            task.pending.push((
                mark.clone(),
                task.next_offset,
                checkpoint::encode(&h, &[&ids, state.as_deref().unwrap_or_default()]),
            ));
            task.changed = false;
        }
        if wait {
            let outputs = self.outputs.as_ref().expect("outputs live until shutdown");
            outputs.hurry(&mark);
            let deadline = Instant::now() + Duration::from_secs(30);
            while !outputs.settled(&mark) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !outputs.settled(&mark) {
                tracing::warn!(
                    "sinks did not settle in 30 s; leaving the last checkpoints in force (the next owner replays from them)"
                );
            }
            self.complete(consumer);
        }
    }

    /// Writes the snapshots whose outputs have settled, then commits their offsets.
    fn complete(&mut self, consumer: &BaseConsumer<Ctx>) {
        let outputs = self.outputs.as_ref().expect("outputs live until shutdown");
        let topic = self.topics.checkpoints();
        let mut commits = Vec::new();
        for ((stage, p), task) in &mut self.tasks {
            let ready = task
                .pending
                .iter()
                .rposition(|(mark, _, _)| outputs.settled(mark));
            let Some(i) = ready else { continue };
            // The newest settled snapshot supersedes older ones.
            let (_, offset, record) = task.pending.drain(..=i).next_back().expect("non-empty");
            let key = checkpoint::key(task.plugin.name(), *p);
            self.metrics
                .processor
                .checkpoint_bytes
                .lock()
                .expect("metrics lock")
                .insert((task.plugin.name().to_string(), *p), record.len() as u64);
            let r = BaseRecord::to(&topic).key(&key).payload(&record);
            if let Err((e, _)) = self.producer.send(r) {
                tracing::warn!(error = %e, "writing a checkpoint failed; retrying at the next one");
                continue;
            }
            commits.push((self.stages[*stage].topic.clone(), *p, offset));
        }
        if commits.is_empty() {
            return;
        }
        if let Err(e) = self.producer.flush(Duration::from_secs(30)) {
            tracing::warn!(error = %e, "checkpoints not acknowledged; their offsets are not committed");
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in commits {
            let _ = tpl.add_partition_offset(&t, p, Offset::Offset(o));
        }
        commit(consumer, &tpl);
        // Task state checkpointed and its offsets committed.
        self.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies the plugin changes that arrived since the last batch: every
    /// task of a plugin takes the new version, its state handed over as on
    /// one host, or none does (the change is refused here, visibly).
    fn apply_changes(&mut self, consumer: &BaseConsumer<Ctx>) {
        if let Some(rx) = &self.changes {
            self.waiting.extend(rx.try_iter());
        }
        // A new version that was catching up: swapped in once every task's
        // copy has caught up; later changes wait for it, in order.
        if let Some(p) = &self.preparing {
            if !p.ready() {
                return;
            }
            let mut p = self.preparing.take().expect("checked above");
            let (name, change) = (p.plugin.name().to_string(), p.change.clone());
            let r = match p.join() {
                Ok(copies) => {
                    // What each copy has still to replay: what its task
                    // processed during the round (a task revoked since drops
                    // its copy).
                    let rests: Vec<Rest> = copies
                        .into_iter()
                        .filter_map(|(key, copy, since)| {
                            let rest = self.tasks.get(&key)?.plugin.catchup(Some(since));
                            Some((key, copy, rest))
                        })
                        .collect();
                    if p.close_enough(&rests) {
                        let started = Instant::now();
                        let r = self.finish(p, rests);
                        self.paused = started.elapsed();
                        r
                    } else {
                        // Another round, off the event path.
                        let more = rests.into_iter().map(|(key, copy, c)| (key, Ok(copy), c));
                        match p.start(more) {
                            Ok(()) => {
                                self.preparing = Some(p);
                                return;
                            }
                            Err(e) => Err(e),
                        }
                    }
                }
                Err(e) => Err(e),
            };
            self.report(name, change, r, true);
        }
        while let Some(a) = self.waiting.pop_front() {
            let (name, change, result) = match a {
                Apply::Deploy {
                    change,
                    plugin,
                    reset_state,
                    partition_by,
                } => {
                    let name = plugin.name().to_string();
                    if self.runs(&plugin) {
                        // The version running already (a change put back after
                        // this processor refused it): nothing to do, and the
                        // refusal stays in its status.
                        continue;
                    }
                    let plugin = match self.prepare(&change, plugin, reset_state) {
                        Ok(()) => return, // answered when it has caught up
                        Err(plugin) => plugin,
                    };
                    let started = Instant::now();
                    let r = self.deploy(consumer, *plugin, reset_state, partition_by);
                    self.paused = started.elapsed();
                    (name, change, r)
                }
                Apply::Remove { change, name } => {
                    let r = self.remove(consumer, &name);
                    (name, change, r)
                }
                Apply::Refused {
                    change,
                    name,
                    error,
                } => (name, change, Err(error)),
            };
            self.report(name, change, result, false);
        }
    }

    /// Logs a change's result and says it in the status topic.
    fn report(
        &mut self,
        name: String,
        change: String,
        result: Result<Handover, String>,
        caught_up: bool,
    ) {
        match &result {
            Ok(h) => {
                tracing::info!(plugin = %name, change = %change, state = ?h, caught_up, "plugin change applied at a batch boundary")
            }
            Err(e) => {
                tracing::error!(plugin = %name, change = %change, error = %e, "plugin change refused on this processor; the running version stays")
            }
        }
        let running = self.running_status(&name);
        let entry = match (running, &result) {
            (Some(s), _) => Some(s),
            (None, Ok(Handover::Removed)) => None,
            (None, _) => Some(PluginStatus {
                name: name.clone(),
                version: String::new(),
                change: None,
                handover: None,
                caught_up: false,
                pause_us: None,
                error: None,
            }),
        };
        match entry {
            Some(mut st) => {
                st.change = Some(change);
                match result {
                    Ok(h) => {
                        st.handover = Some(h);
                        st.caught_up = caught_up;
                        st.pause_us = Some(self.paused.as_micros() as u64);
                    }
                    Err(e) => st.error = Some(e),
                }
                self.status.insert(name, st);
            }
            None => {
                self.status.remove(&name);
            }
        }
        self.send_status();
        self.publish();
    }

    /// Starts a keyed plugin's new version catching up with every task of
    /// its stage here, off the event path: each task's copy restores the
    /// task's last snapshot and replays the batches since, on a thread of
    /// its own, while the running version goes on (as the embedded swap
    /// does). Gives the plugin back when that does not fit: not a keyed
    /// stage here, no task, `reset_state`, another interest or config
    /// (whose state goes over by snapshot and restore instead).
    fn prepare(
        &mut self,
        change: &str,
        plugin: Box<Plugin>,
        reset_state: bool,
    ) -> Result<(), Box<Plugin>> {
        let stage = match self.step_of(plugin.name()).map(|i| &self.flow[i]) {
            Some(Flow::Stage(s)) => *s,
            _ => return Err(plugin),
        };
        let tasks: Vec<(usize, i32)> = self
            .tasks
            .keys()
            .filter(|(st, _)| *st == stage)
            .copied()
            .collect();
        let fits = |t: &Task| t.plugin.catchup(None).fits(&plugin);
        if reset_state
            || tasks.is_empty()
            || self.stages[stage].template.world() != plugin.world()
            || !tasks.iter().all(|k| fits(&self.tasks[k]))
        {
            return Err(plugin);
        }
        let work: Vec<_> = tasks
            .into_iter()
            .map(|key| {
                let task = &self.tasks[&key].plugin;
                (key, plugin.fresh(), task.catchup(None))
            })
            .collect();
        let mut p = Preparing {
            change: change.to_string(),
            stage,
            plugin: *plugin,
            threads: Vec::new(),
            rounds: 0,
        };
        if let Err(e) = p.start(work.into_iter()) {
            tracing::warn!(error = %e, "the state goes over by snapshot and restore");
            return Err(Box::new(p.plugin));
        }
        tracing::info!(plugin = %p.plugin.name(), change, tasks = p.threads.len(), "new version catching up with the running one");
        self.preparing = Some(p);
        Ok(())
    }

    /// Swaps in a new version that caught up (see [`Proc::prepare`]): each
    /// task's copy replays what the task processed since, then replaces it;
    /// a task assigned since gets its state by snapshot and restore. All
    /// tasks or none: a refusal leaves every task as it was.
    fn finish(&mut self, p: Preparing, rests: Vec<Rest>) -> Result<Handover, String> {
        let mut ready: BTreeMap<(usize, i32), (Plugin, Catchup)> = rests
            .into_iter()
            .map(|(key, copy, rest)| (key, (copy, rest)))
            .collect();
        let mut next = Vec::new();
        for (key, task) in self.tasks.iter_mut().filter(|(k, _)| k.0 == p.stage) {
            let new = match ready.remove(key) {
                Some((mut new, rest)) => {
                    new.catch_up(&rest)
                        .map_err(|e| format!("partition {}: {}", key.1, refusal(e)))?;
                    new.carry_over(&task.plugin);
                    new
                }
                None => {
                    let mut new = p.plugin.fresh().map_err(|e| e.to_string())?;
                    handover(&mut task.plugin, &mut new, false)
                        .map_err(|e| format!("partition {}: {e}", key.1))?;
                    new
                }
            };
            next.push((*key, new));
        }
        for (key, new) in next {
            let task = self.tasks.get_mut(&key).expect("taken above");
            task.plugin = new;
            task.changed = true;
        }
        self.stages[p.stage].template = p.plugin;
        self.refresh();
        Ok(Handover::Kept)
    }

    /// Whether this processor runs this version (component and config) already.
    fn runs(&self, plugin: &Plugin) -> bool {
        self.flow.iter().any(|f| {
            let p = f.plugin(&self.stages);
            p.name() == plugin.name()
                && p.component().hash == plugin.component().hash
                && p.config_text() == plugin.config_text()
        })
    }

    /// What this processor runs of `name`, if anything.
    fn running_status(&self, name: &str) -> Option<PluginStatus> {
        self.step_of(name)
            .map(|i| running(self.flow[i].plugin(&self.stages)))
    }

    /// Where the plugin `name` is in the pipeline.
    fn step_of(&self, name: &str) -> Option<usize> {
        self.flow
            .iter()
            .position(|f| f.plugin(&self.stages).name() == name)
    }

    fn deploy(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        mut plugin: Plugin,
        reset_state: bool,
        partition_by: Option<String>,
    ) -> Result<Handover, String> {
        let name = plugin.name().to_string();
        let at = self.step_of(&name);
        let handover = match at.map(|i| &mut self.flow[i]) {
            Some(Flow::Enrich(old)) => {
                let h = handover(old, &mut plugin, reset_state).map_err(|e| e.to_string())?;
                **old = plugin;
                h.handover
            }
            Some(Flow::Stage(s)) => {
                let s = *s;
                // Every task's new instance first: a refusal leaves all as they were.
                let mut next = Vec::new();
                let mut h = Handover::Kept;
                for ((stage, p), task) in self.tasks.iter_mut().filter(|((st, _), _)| *st == s) {
                    let mut new = plugin.fresh().map_err(|e| e.to_string())?;
                    h = handover(&mut task.plugin, &mut new, reset_state)
                        .map_err(|e| format!("partition {p}: {e}"))?
                        .handover;
                    next.push(((*stage, *p), new));
                }
                if next.is_empty() {
                    // No task here: the new version's world must still match.
                    let old = &self.stages[s].template;
                    if old.world() != plugin.world() {
                        return Err(format!(
                            "plugin `{name}` is an {}; the new version is an {}",
                            old.world(),
                            plugin.world()
                        ));
                    }
                    h = if reset_state {
                        Handover::Reset
                    } else {
                        Handover::Kept
                    };
                }
                for (key, new) in next {
                    let task = self.tasks.get_mut(&key).expect("taken above");
                    task.plugin = new;
                    task.changed = true;
                }
                self.stages[s].template = plugin;
                h
            }
            None if !plugin.world().is_stateful() => {
                let worlds = self.flow_worlds();
                let at = insert_position(worlds.into_iter(), plugin.world());
                self.flow.insert(at, Flow::Enrich(Box::new(plugin)));
                Handover::New
            }
            None => {
                let topic = self.topics.repartition(&name);
                let partitions = if partition_by.is_some() {
                    self.kafka.partitions
                } else {
                    1
                };
                super::ensure_topics(&self.kafka, &[(topic.clone(), partitions, false)])
                    .map_err(|e| e.to_string())?;
                let s = match self.stages.iter().position(|st| st.topic == topic) {
                    Some(s) => {
                        self.stages[s].template = plugin;
                        self.stages[s].active = true;
                        s
                    }
                    None => {
                        self.stages.push(Stage {
                            active: true,
                            template: plugin,
                            partition_by,
                            topic,
                            partitions,
                        });
                        self.stages.len() - 1
                    }
                };
                self.flow.push(Flow::Stage(s));
                self.resubscribe(consumer)?;
                Handover::New
            }
        };
        self.refresh();
        Ok(handover)
    }

    fn remove(&mut self, consumer: &BaseConsumer<Ctx>, name: &str) -> Result<Handover, String> {
        let Some(i) = self.step_of(name) else {
            return Ok(Handover::Removed);
        };
        if let Flow::Stage(s) = self.flow.remove(i) {
            self.stages[s].active = false;
            // Its state goes: a plugin added again under this name starts empty.
            let topic = self.topics.checkpoints();
            let keys: Vec<String> = self
                .tasks
                .keys()
                .filter(|(st, _)| *st == s)
                .map(|(_, p)| checkpoint::key(name, *p))
                .collect();
            for key in keys {
                let r = BaseRecord::<str, [u8]>::to(&topic).key(&key);
                if let Err((e, _)) = self.producer.send(r) {
                    tracing::warn!(plugin = name, error = %e, "removing a checkpoint failed");
                }
            }
            self.tasks.retain(|(st, _), _| *st != s);
            self.resubscribe(consumer)?;
        }
        self.refresh();
        Ok(Handover::Removed)
    }

    fn flow_worlds(&self) -> Vec<crate::runtime::World> {
        self.flow
            .iter()
            .map(|f| f.plugin(&self.stages).world())
            .collect()
    }

    /// Enrichers compute only what the steps after them read.
    fn refresh(&mut self) {
        let archive_all = self.settings.archive.as_ref().is_some_and(|a| !a.raw);
        let Proc { flow, stages, .. } = self;
        let templates: Vec<&Plugin> = stages.iter().map(|s| &s.template).collect();
        refresh_enrichers(flow, &templates, archive_all);
    }

    /// Subscribes to the events topic and the active stages' topics.
    fn resubscribe(&self, consumer: &BaseConsumer<Ctx>) -> Result<(), String> {
        let topics = subscription(&self.topics, &self.stages);
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| format!("subscribing to {}: {e}", names.join(", ")))
    }

    /// Own source partitions that still have records to give, and the
    /// event time each reached: `i64::MIN` for one that has given none yet
    /// (resuming, or scanning up to its offset), which holds the group's
    /// other partitions back until it does.
    fn active_sources(&self) -> BTreeMap<i32, i64> {
        self.clocks
            .iter()
            .filter(|(p, c)| c.last_idle_marker.is_none() && !self.caught_up.contains(p))
            .map(|(p, c)| (*p, c.max))
            .collect()
    }

    /// Measures the skew of the source partitions, and holds back those
    /// more than `max_drift` ahead of the group's least advanced one.
    fn align(&mut self, own: &BTreeMap<i32, i64>) {
        let lo = own.values().min().copied();
        let hi = own.values().max().copied();
        let known_lo = own.values().filter(|t| **t != i64::MIN).min().copied();
        let owned: BTreeSet<i32> = self.clocks.keys().copied().collect();
        let group = self
            .group
            .as_ref()
            .and_then(|g| g.minimum(&owned, now_ms().max(0) as u64));
        let least = lo.into_iter().chain(group).min();
        let known_least = known_lo
            .into_iter()
            .chain(group.filter(|g| *g != i64::MIN))
            .min();
        let skew = match (known_least, hi) {
            (Some(l), Some(h)) if h > l => h - l,
            _ => 0,
        };
        self.metrics
            .processor
            .source_skew_ms
            .store(skew, Ordering::Relaxed);
        let drift = self.kafka.max_drift.as_millis() as i64;
        let held: BTreeSet<i32> = match least {
            Some(l) => own
                .iter()
                .filter(|(_, t)| **t > l.saturating_add(drift))
                .map(|(p, _)| *p)
                .collect(),
            None => BTreeSet::new(),
        };
        if held != self.held {
            tracing::debug!(held = ?held, least = ?least, "source partitions held back for the group's slowest");
            self.held = held;
        }
    }

    /// Says what this processor runs, in the status topic.
    fn send_status(&mut self) {
        self.status_sent = Instant::now();
        self.status_due = self.status_sent + live::HEARTBEAT;
        if self.changes.is_none() {
            return;
        }
        let status = Status {
            processor: self.id.clone(),
            at_ms: now_ms().max(0) as u64,
            plugins: self.status.values().cloned().collect(),
            sources: self.active_sources(),
            quiet: self
                .clocks
                .iter()
                .filter(|(p, c)| c.last_idle_marker.is_some() || self.caught_up.contains(p))
                .map(|(p, _)| *p)
                .collect(),
        };
        let json = serde_json::to_vec(&status).expect("a status serializes");
        let topic = self.topics.status();
        let r = BaseRecord::<str, [u8]>::to(&topic)
            .key(&self.id)
            .payload(&json);
        if let Err((e, _)) = self.producer.send(r) {
            tracing::debug!(error = %e, "publishing the processor's status");
        }
    }

    /// Leaving the group: this processor's status goes.
    fn leave(&mut self) {
        if self.changes.is_some() {
            let topic = self.topics.status();
            let r = BaseRecord::<str, [u8]>::to(&topic).key(&self.id);
            let _ = self.producer.send(r);
            let _ = self.producer.flush(Duration::from_secs(5));
        }
    }

    fn publish(&self) {
        let wm = self.tasks.values().map(|t| t.wm.current).min();
        if let Some(wm) = wm {
            self.metrics.watermark_ms.store(wm, Ordering::Relaxed);
        }
        // Per plugin, in pipeline order: an enricher's one instance, a keyed
        // plugin's tasks on this processor added up (its breaker open if
        // any task's is).
        let mut figures: Vec<PluginFigures> = Vec::with_capacity(self.flow.len());
        for step in &self.flow {
            let (template, instances): (&Plugin, Vec<&Plugin>) = match step {
                Flow::Enrich(p) => (&**p, vec![&**p]),
                Flow::Stage(s) => (
                    &self.stages[*s].template,
                    self.tasks
                        .iter()
                        .filter(|((stage, _), _)| stage == s)
                        .map(|(_, t)| &t.plugin)
                        .collect(),
                ),
            };
            let mut stats = PluginStats::default();
            let mut breaker = BreakerState::Closed;
            for p in instances {
                stats.merge(p.stats());
                if p.breaker() == BreakerState::Open {
                    breaker = BreakerState::Open;
                }
            }
            figures.push(PluginFigures {
                name: template.name().to_string(),
                world: template.world(),
                version: template.component().hash.clone(),
                stats,
                breaker,
            });
        }
        *self.metrics.plugins.lock().expect("metrics lock") = figures;
    }
}

/// The source stage's part of the processor (see [`Proc::process_buffer`]).
struct SourceSide<'a> {
    flow: &'a mut Vec<Flow>,
    stages: &'a [Stage],
    sources: &'a mut BTreeMap<i32, i64>,
    clocks: &'a mut HashMap<i32, SourceClock>,
    settings: &'a ProcessorSettings,
    metrics: &'a Metrics,
    archived_ids: &'a mut HashMap<i32, Dedupe>,
}

/// What a source batch gave: repartition records to produce, outputs.
struct SourceDone {
    records: Vec<(usize, i32, Vec<u8>)>,
    /// With `[archive]`: per source partition, its events (after the
    /// enrichers, or as parsed) and the offset after the last of them.
    archived: BTreeMap<i32, (Vec<Event>, i64)>,
    out: PluginOutput,
    dead: Vec<serde_json::Value>,
    received: u64,
}

impl SourceSide<'_> {
    /// Parses a batch of the events topic and walks the pipeline in config
    /// order on the assembly line (see [`line`]), in chunks of `batch_size`
    /// records: an enricher changes a chunk, a keyed stage is sent the
    /// events it wants as they are at that point.
    fn run(&mut self, records: Vec<Record>) -> SourceDone {
        let received = records.len() as u64;
        let size = self.settings.batch_size.max(1);
        let mut chunks = Vec::with_capacity(records.len().div_ceil(size));
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            chunks.push(SourceChunk {
                records: records.by_ref().take(size).collect(),
                ..SourceChunk::default()
            });
        }
        let stages = self.stages;
        let mut steps = Vec::with_capacity(self.flow.len() + 1);
        let archive = self.settings.archive.as_ref().map(|a| a.raw);
        steps.push(SourceStep::Parse(Parser {
            sources: self.sources,
            clocks: self.clocks,
            metrics: self.metrics,
            max_future: self.settings.max_future.as_millis() as i64,
            now: Instant::now(),
            times: BTreeMap::new(),
            dead: Vec::new(),
            raw: (archive == Some(true)).then(Vec::new),
        }));
        for f in self.flow.iter_mut() {
            steps.push(match f {
                Flow::Enrich(p) => SourceStep::Enrich(p),
                Flow::Stage(s) => SourceStep::Route(Router {
                    stage: *s,
                    interest: stages[*s].template.interest(),
                    partition_by: stages[*s].partition_by.as_deref(),
                    partitions: stages[*s].partitions,
                    writers: BTreeMap::new(),
                    full: Vec::new(),
                }),
            });
        }
        let mut out = PluginOutput::default();
        // The events at the end of the line, as the enrichers left them.
        let mut archived: BTreeMap<i32, (Vec<Event>, i64)> = BTreeMap::new();
        let (max_ids, horizon) = (
            self.settings.dedupe_max_ids,
            self.settings.dedupe_horizon_ms,
        );
        let ids = &mut *self.archived_ids;
        let mut keep = |events: Vec<Event>, origins: &[(i32, i64)]| {
            for (e, &(src, off)) in events.into_iter().zip(origins) {
                let (list, next) = archived.entry(src).or_insert_with(|| (Vec::new(), 0));
                // The offset counts even for a copy: it is taken.
                *next = (*next).max(off + 1);
                let seen = ids
                    .entry(src)
                    .or_insert_with(|| Dedupe::new(max_ids, horizon));
                if seen.first(&e.id, e.timestamp) {
                    list.push(e);
                }
            }
        };
        if archive == Some(false) {
            line::run(&mut steps, chunks, &mut out, &mut |c: SourceChunk| {
                keep(c.events, &c.origins)
            });
        } else {
            line::run(&mut steps, chunks, &mut out, &mut drop);
        }
        let (mut times, mut dead) = (BTreeMap::new(), Vec::new());
        let mut writers: BTreeMap<(usize, i32), Writer> = BTreeMap::new();
        let mut full: Vec<(usize, i32, Vec<u8>)> = Vec::new();
        for step in steps {
            match step {
                SourceStep::Parse(p) => {
                    (times, dead) = (p.times, p.dead);
                    if let Some(raw) = p.raw {
                        let (origins, events): (Vec<_>, Vec<_>) = raw.into_iter().unzip();
                        keep(events, &origins);
                    }
                }
                SourceStep::Enrich(_) => {}
                SourceStep::Route(r) => {
                    full.extend(r.full.into_iter().map(|(p, b)| (r.stage, p, b)));
                    writers.extend(r.writers.into_iter().map(|(p, w)| ((r.stage, p), w)));
                }
            }
        }
        for (src, seen) in self.archived_ids.iter_mut() {
            if let Some(c) = self.clocks.get(src) {
                seen.expire(
                    c.max
                        .saturating_sub(self.settings.out_of_orderness.as_millis() as i64),
                );
            }
        }
        // Event time of the source partitions: a marker after their events
        // in every partition of every repartition topic (as Flink broadcasts
        // watermarks), so a task that gets few events still sees time pass.
        for (src, ts) in times {
            let advanced = self.clocks.get_mut(&src).is_some_and(|c| {
                let up = ts > c.max;
                c.max = c.max.max(ts);
                up
            });
            if advanced {
                for (s, stage) in self.stages.iter().enumerate().filter(|(_, s)| s.active) {
                    for p in 0..stage.partitions {
                        writers.entry((s, p)).or_default().marker(src, Some(ts));
                    }
                }
            }
        }
        let rest = writers
            .into_iter()
            .filter(|(_, w)| !w.is_empty())
            .map(|((s, p), mut w)| (s, p, w.finish()));
        SourceDone {
            records: full.into_iter().chain(rest).collect(),
            archived,
            out,
            dead,
            received,
        }
    }
}

/// Source records on their way along the source side's line.
#[derive(Default)]
struct SourceChunk {
    /// Until parsed.
    records: Vec<Record>,
    events: Vec<Event>,
    /// Each event's source record (partition, offset).
    origins: Vec<(i32, i64)>,
    /// The events encoded for the repartition topics, and where each ends:
    /// once per point of the pipeline (until the next enricher).
    encoded: Option<(Vec<u8>, Vec<usize>)>,
}

/// The source side's steps: parsing, then the pipeline in config order.
enum SourceStep<'a> {
    Parse(Parser<'a>),
    Enrich(&'a mut Plugin),
    Route(Router<'a>),
}

impl line::Step for SourceStep<'_> {
    type Chunk = SourceChunk;

    fn run(&mut self, c: &mut SourceChunk, out: &mut PluginOutput) {
        match self {
            SourceStep::Parse(p) => p.parse(c),
            SourceStep::Enrich(p) => {
                let n = c.events.len();
                let ids: Vec<String> = c.events.iter().map(|e| e.id.clone()).collect();
                p.process(&mut c.events, i64::MIN, out);
                c.encoded = None;
                c.origins = reorigin(&c.events, n, &ids, std::mem::take(&mut c.origins));
                // Without an origin (nothing came in) an event cannot be placed.
                c.events.truncate(c.origins.len());
            }
            SourceStep::Route(r) => r.route(c),
        }
    }

    /// Parsing, enriching and encoding for the keyed stages each on a
    /// thread: the source side's three kinds of work, about equal in cost.
    fn splits(&self, before: &Self) -> bool {
        std::mem::discriminant(self) != std::mem::discriminant(before)
    }

    fn name(&self) -> &str {
        match self {
            SourceStep::Parse(_) => "parse",
            SourceStep::Enrich(p) => p.name(),
            SourceStep::Route(_) => "route",
        }
    }
}

/// Parses source records into events, noting where each came from.
struct Parser<'a> {
    sources: &'a mut BTreeMap<i32, i64>,
    clocks: &'a mut HashMap<i32, SourceClock>,
    metrics: &'a Metrics,
    max_future: i64,
    now: Instant,
    /// Per source partition, the highest event time parsed.
    times: BTreeMap<i32, i64>,
    dead: Vec<serde_json::Value>,
    /// With `[archive] stage = "raw"`: each event as parsed, with its
    /// source record.
    raw: Option<Vec<((i32, i64), Event)>>,
}

impl Parser<'_> {
    fn parse(&mut self, c: &mut SourceChunk) {
        let records = std::mem::take(&mut c.records);
        c.events.reserve_exact(records.len());
        c.origins.reserve_exact(records.len());
        for r in &records {
            if let Some(next) = self.sources.get_mut(&r.partition) {
                *next = (*next).max(r.offset + 1);
            }
            if let Some(clock) = self.clocks.get_mut(&r.partition) {
                clock.last_record = self.now;
                clock.last_idle_marker = None;
            }
            match parse(r.payload.as_deref(), r.timestamp, Some(self.max_future)) {
                Ok(e) => {
                    if let Some(raw) = &mut self.raw {
                        raw.push(((r.partition, r.offset), e.clone()));
                    }
                    c.origins.push((r.partition, r.offset));
                    let t = self.times.entry(r.partition).or_insert(i64::MIN);
                    *t = (*t).max(e.timestamp);
                    c.events.push(e);
                }
                Err((why, reason)) => {
                    // Counted as ingest counts refusals, by reason.
                    self.metrics.reject(why, 1);
                    self.dead.push(bad_record(r, &reason));
                }
            }
        }
    }
}

/// Writes the events a keyed stage wants to its repartition topic's
/// partitions, keyed by its `partition_by` field.
struct Router<'a> {
    stage: usize,
    interest: &'a Interest,
    partition_by: Option<&'a str>,
    partitions: i32,
    writers: BTreeMap<i32, Writer>,
    /// Records completed along the way, in order.
    full: Vec<(i32, Vec<u8>)>,
}

impl Router<'_> {
    fn route(&mut self, c: &mut SourceChunk) {
        // Per source record, the index of each event it became here (a
        // record's events are all in one chunk).
        let mut index: HashMap<(i32, i64), u32> = HashMap::new();
        let (bytes, ends) = c
            .encoded
            .get_or_insert_with(|| internal::encode_each(&c.events));
        for (i, (e, &(src, off))) in c.events.iter().zip(&c.origins).enumerate() {
            if !interested(self.interest, e) {
                continue;
            }
            let k = index.entry((src, off)).or_insert(0);
            let idx = *k;
            *k += 1;
            let key = self
                .partition_by
                .map_or_else(String::new, |f| field_value(e, f));
            let p = internal::partition_for(&key, self.partitions);
            let start = if i == 0 { 0 } else { ends[i - 1] };
            let w = self.writers.entry(p).or_default();
            w.event(src, off, idx, e, &key, &bytes[start..ends[i]]);
            if w.len_bytes() >= internal::MAX_RECORD_BYTES {
                self.full.push((p, w.finish()));
            }
        }
    }
}

/// Why a new version could not catch up, worded as the embedded swap words it.
fn refusal(e: PluginError) -> String {
    match e {
        PluginError::State(m) => SwapError::StateRejected(m).to_string(),
        other => other.to_string(),
    }
}

/// A task's copy of a new version catching up: the copy and the sequence
/// number of the first batch it has not replayed.
type CatchingUp = std::thread::JoinHandle<Result<(Plugin, u64), String>>;

/// A keyed plugin's new version catching up with the running tasks (see
/// [`Proc::prepare`]).
struct Preparing {
    change: String,
    stage: usize,
    /// The new version, the stage's template once swapped in.
    plugin: Plugin,
    /// Per task, the thread catching its copy up.
    threads: Vec<((usize, i32), CatchingUp)>,
    /// Catch-up rounds started.
    rounds: u32,
}

/// A task's caught-up copy of the new version, and the sequence number of
/// the first batch it has not replayed.
type Copy = ((usize, i32), Plugin, u64);

/// A task's copy of the new version, and what it has still to replay.
type Rest = ((usize, i32), Plugin, Catchup);

impl Preparing {
    fn ready(&self) -> bool {
        self.threads.iter().all(|(_, t)| t.is_finished())
    }

    /// Whether what is left is little enough to replay in the pause (or
    /// enough rounds were run).
    fn close_enough(&self, rests: &[Rest]) -> bool {
        // Each round replays what came during the previous one, much faster
        // than it came, so a few rounds leave little (as on one host).
        const ROUNDS: u32 = 8;
        const CLOSE_ENOUGH: usize = 256;
        self.rounds >= ROUNDS
            || rests
                .iter()
                .all(|(_, _, c)| !c.from_base && c.events() <= CLOSE_ENOUGH)
    }

    /// Starts a round: per task, a thread replays `c` into its copy.
    fn start(
        &mut self,
        work: impl Iterator<Item = ((usize, i32), Result<Plugin, PluginError>, Catchup)>,
    ) -> Result<(), String> {
        self.rounds += 1;
        for (key, copy, c) in work {
            let run = move || -> Result<(Plugin, u64), String> {
                let mut new = copy.map_err(|e| e.to_string())?;
                new.catch_up(&c).map_err(refusal)?;
                Ok((new, c.next))
            };
            let t = std::thread::Builder::new()
                .name("nexuspipe-catchup".into())
                .spawn(run)
                .map_err(|e| format!("could not start a catch-up thread: {e}"))?;
            self.threads.push((key, t));
        }
        Ok(())
    }

    /// The copies of the finished round; a refusal refuses the change.
    fn join(&mut self) -> Result<Vec<Copy>, String> {
        let mut copies = Vec::with_capacity(self.threads.len());
        for (key, t) in self.threads.drain(..) {
            let done = t
                .join()
                .unwrap_or_else(|_| Err("the catch-up thread panicked".into()));
            let (copy, since) = done.map_err(|e| format!("partition {}: {e}", key.1))?;
            copies.push((key, copy, since));
        }
        Ok(copies)
    }
}

/// The keyed stage's part of the processor (see [`Proc::process_buffer`]).
struct KeyedSide<'a> {
    tasks: &'a mut BTreeMap<(usize, i32), Task>,
    /// Per stage: its topic, whether it is active, what its plugin takes
    /// (not the plugins: a template stays on the processor's thread).
    stages: Vec<(&'a str, bool, &'a Interest)>,
    settings: &'a ProcessorSettings,
}

/// What a keyed batch gave.
struct KeyedDone {
    out: PluginOutput,
    dead: Vec<serde_json::Value>,
    processed: u64,
    duplicates: u64,
    /// Records taken per stage.
    taken: Vec<u64>,
}

impl KeyedSide<'_> {
    /// Runs each keyed task on the records its partition delivered.
    fn run(&mut self, records: Vec<Record>) -> KeyedDone {
        let mut taken = vec![0u64; self.stages.len()];
        // Each task's records, in order. Decoding and de-duplicating them is
        // the task's own work, so it happens on the task's thread: done here
        // for every stage, it was as long as running the plugins.
        let mut per_task: BTreeMap<(usize, i32), Vec<Record>> = BTreeMap::new();
        for r in records {
            let Some(stage) = self.stages.iter().position(|s| s.0 == r.topic) else {
                continue;
            };
            taken[stage] += 1;
            let Some(task) = self.tasks.get_mut(&(stage, r.partition)) else {
                continue; // not ours any more
            };
            task.next_offset = task.next_offset.max(r.offset + 1);
            task.changed = true;
            per_task.entry((stage, r.partition)).or_default().push(r);
        }
        // The stages' tasks run at once, a stage's tasks on one thread (as
        // the embedded assembly line runs each stateful plugin on a thread
        // of its own). Measured on the default pipeline: 0.55x of the
        // embedded engine with the funnel's and the alerts' tasks one after
        // the other, 0.60x at once.
        let stages: BTreeSet<usize> = per_task.keys().map(|(s, _)| *s).collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(stages.len())
            .max(1);
        let mut groups: Vec<Vec<(usize, &mut Task, Vec<Record>)>> =
            (0..threads).map(|_| Vec::new()).collect();
        for (key, task) in self.tasks.iter_mut() {
            if let Some(records) = per_task.remove(key) {
                let g = stages.iter().position(|s| *s == key.0).unwrap_or(0) % threads;
                groups[g].push((key.0, task, records));
            }
        }
        let size = self.settings.batch_size;
        let all = &self.stages[..];
        let mut groups = groups.into_iter();
        let first = groups.next().unwrap_or_default();
        std::thread::scope(|sc| {
            let others: Vec<_> = groups
                .map(|g| sc.spawn(move || run_tasks(g, all, size)))
                .collect();
            let mut done = run_tasks(first, all, size);
            for t in others {
                let d = t.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                done.out.append(d.out);
                done.dead.extend(d.dead);
                done.processed += d.processed;
                done.duplicates += d.duplicates;
            }
            done.taken = taken;
            done
        })
    }
}

/// The events of a task's records that it has not taken in before, in
/// order, with the idle markers; a record that does not decode is a dead
/// letter. Returns the items and how many duplicates this stage counts.
fn take_in(
    task: &mut Task,
    stage: usize,
    records: &[Record],
    stages: &[(&str, bool, &Interest)],
    dead: &mut Vec<serde_json::Value>,
) -> (Vec<Item>, u64) {
    let mut batch = Vec::new();
    let mut duplicates = 0u64;
    // What this task's plugin reads (its version, should a deploy be under way).
    let wanted = task.plugin.interest();
    for r in records {
        let decoded = r
            .payload
            .as_deref()
            .map(|b| internal::decode_wanted(b, Some(wanted)));
        let items = match decoded {
            Some(Ok(items)) => items,
            Some(Err(reason)) => {
                dead.push(bad_record(r, &reason));
                continue;
            }
            None => {
                dead.push(bad_record(r, "the record has no value"));
                continue;
            }
        };
        batch.reserve(items.len());
        for item in items {
            let (src, off, idx, e) = match item {
                internal::Item::Marker(src, ts) => {
                    batch.push(Item::Marker(src, ts));
                    continue;
                }
                internal::Item::Event {
                    src,
                    offset,
                    index,
                    event,
                } => (src, offset, index, event),
            };
            if task.seen.get(&src).is_some_and(|&last| (off, idx) <= last) {
                continue; // a replayed copy of an event already taken in
            }
            task.seen.insert(src, (off, idx));
            if task.ids.first(&e.id, e.timestamp) {
                batch.push(Item::Event(e, src));
            } else {
                // Every interested stage drops its copy; the first counts it.
                let first = stages
                    .iter()
                    .position(|(_, active, i)| *active && interested(i, &e));
                duplicates += u64::from(first == Some(stage));
            }
        }
    }
    (batch, duplicates)
}

/// Runs tasks on what their partitions delivered, in chunks of `size`.
fn run_tasks(
    work: Vec<(usize, &mut Task, Vec<Record>)>,
    stages: &[(&str, bool, &Interest)],
    size: usize,
) -> KeyedDone {
    let mut done = KeyedDone {
        out: PluginOutput::default(),
        dead: Vec::new(),
        processed: 0,
        duplicates: 0,
        taken: Vec::new(),
    };
    for (stage, task, records) in work {
        let (items, duplicates) = take_in(task, stage, &records, stages, &mut done.dead);
        done.duplicates += duplicates;
        let (late, failed) = (done.out.late.len(), done.out.dead.len());
        let n = items.len();
        for (batch, wm) in batches(items, n, size, &mut task.wm) {
            let mut events: Vec<Event> = batch
                .into_iter()
                .filter_map(|i| match i {
                    Item::Event(e, _) => Some(e),
                    Item::Marker(..) => None,
                })
                .collect();
            done.processed += events.len() as u64;
            task.plugin.process(&mut events, wm, &mut done.out);
        }
        task.ids.expire(task.wm.current);
        let out = &mut done.out;
        if out.late.len() > late || out.dead.len() > failed {
            whole_again(
                &records,
                out.late[late..].iter_mut().map(|(_, e)| e),
                out.dead[failed..]
                    .iter_mut()
                    .flat_map(|d| d.events.iter_mut()),
            );
        }
    }
    done
}

/// Late and dead-lettered events leave the processor whole (into
/// `late.jsonl` and the dead letters), though the task decoded only what its
/// plugin reads: they are decoded again from their records, by event id (a
/// task takes each id once). Rare, so this does not weigh on the rest.
fn whole_again<'a>(
    records: &[Record],
    late: impl Iterator<Item = &'a mut Event>,
    dead: impl Iterator<Item = &'a mut Event>,
) {
    let mut whole: HashMap<String, Event> = HashMap::new();
    for b in records.iter().filter_map(|r| r.payload.as_deref()) {
        for item in internal::decode(b).unwrap_or_default() {
            if let internal::Item::Event { event, .. } = item {
                whole.insert(event.id.clone(), event);
            }
        }
    }
    for e in late.chain(dead) {
        if let Some(w) = whole.get(&e.id) {
            *e = w.clone();
        }
    }
}

/// The topics a processor consumes: the events topic and the active stages'.
fn subscription(topics: &Topics, stages: &[Stage]) -> Vec<String> {
    let mut out = vec![topics.events.clone()];
    out.extend(stages.iter().filter(|s| s.active).map(|s| s.topic.clone()));
    out
}

/// What a processor says it runs of a plugin.
fn running(p: &Plugin) -> PluginStatus {
    PluginStatus {
        name: p.name().to_string(),
        version: p.component().hash.clone(),
        change: None,
        handover: None,
        caught_up: false,
        pause_us: None,
        error: None,
    }
}

/// Enriched events travel to the keyed stages through Kafka: only what the
/// steps after an enricher read is computed and carried.
/// What each enricher must leave for the plugins after it; with the
/// archive at its enriched stage (`archive_all`), every property.
fn refresh_enrichers(flow: &mut [Flow], stages: &[&Plugin], archive_all: bool) {
    let everything = archive_all.then(|| crate::runtime::Interest {
        event_types: Vec::new(),
        properties: None,
        metadata: crate::runtime::MetadataFields::empty(),
        fields: crate::runtime::EventFields::empty(),
    });
    let interests: Vec<crate::runtime::Interest> = flow
        .iter()
        .map(|f| match f {
            Flow::Enrich(p) => p.interest().clone(),
            Flow::Stage(s) => stages[*s].interest().clone(),
        })
        .collect();
    for (i, f) in flow.iter_mut().enumerate() {
        if let Flow::Enrich(p) = f {
            let after: Vec<&crate::runtime::Interest> =
                interests[i + 1..].iter().chain(everything.iter()).collect();
            crate::runtime::refresh_downstream(std::slice::from_mut(p), &after);
        }
    }
}

fn commit(consumer: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) {
    if tpl.count() == 0 {
        return;
    }
    match consumer.commit(tpl, CommitMode::Sync) {
        Ok(()) => {
            let c = &consumer.context().metrics.processor.commits;
            c.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::warn!(error = %e, "committing offsets failed; they are committed at the next checkpoint");
        }
    }
}

pub(super) fn is_queue_full(e: &rdkafka::error::KafkaError) -> bool {
    matches!(
        e,
        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
    )
}

/// Sends a record, waiting while the producer's local queue is full (the
/// back-pressure); any other error is returned.
fn send_waiting<K, P>(
    producer: &ThreadedProducer<Delivery>,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((err, back)) if is_queue_full(&err) => {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((err, back)) => {
                return Err(KafkaError::Other(format!(
                    "producing to `{}`: {err}",
                    back.topic
                )));
            }
        }
    }
}

/// A record's payload as a canonical event. Its time is checked against the
/// record's timestamp (the default time of an event without one), else now.
/// Valid events go straight from the bytes to the event; the slower path
/// through a JSON value is taken only to name what is wrong.
fn parse(
    payload: Option<&[u8]>,
    record_time: Option<i64>,
    max_future_ms: Option<i64>,
) -> Result<Event, (RejectReason, String)> {
    let bytes = payload.ok_or((RejectReason::InvalidEvent, "the record has no value".into()))?;
    let d = EventDefaults {
        now_ms: record_time.unwrap_or_else(now_ms),
        max_future_ms,
        ..EventDefaults::default()
    };
    if bytes.trim_ascii_start().first() == Some(&b'{')
        && let Some(mut one) = parse_events(bytes, false, &d)
        && one.len() == 1
    {
        return Ok(one.pop().expect("one event"));
    }
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| (RejectReason::MalformedJson, format!("not JSON: {e}")))?;
    from_json(v, &d).map_err(|e| (RejectReason::of(e.kind), format!("not a valid event: {e}")))
}

/// The origin (source partition, offset) of each event an enricher passed
/// on: by position when it kept the batch's shape (the usual case), else by
/// event id (events it emits count as the batch's last record).
fn reorigin(
    events: &[Event],
    n: usize,
    ids: &[String],
    origins: Vec<(i32, i64)>,
) -> Vec<(i32, i64)> {
    if events.len() == n && events.iter().zip(ids).all(|(e, id)| e.id == *id) {
        return origins;
    }
    let by_id: HashMap<&str, (i32, i64)> = ids
        .iter()
        .map(String::as_str)
        .zip(origins.iter().copied())
        .collect();
    let last = origins.last().copied();
    events
        .iter()
        .filter_map(|e| by_id.get(e.id.as_str()).copied().or(last))
        .collect()
}

/// A record that cannot be processed, for the dead-letter file: where it
/// is, why, and its value.
fn bad_record(r: &Record, reason: &str) -> serde_json::Value {
    tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, error = reason, "bad record; it goes to the dead-letter file");
    serde_json::json!({
        "at": crate::event::format_timestamp(now_ms()),
        "kind": "kafka_bad_record",
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "error": reason,
        "value": r.payload.as_deref().map(String::from_utf8_lossy),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: i64) -> Event {
        let mut e = crate::event::from_json(
            serde_json::json!({"event_type": "x", "timestamp": ts}),
            &EventDefaults::default(),
        )
        .unwrap();
        e.timestamp = ts;
        e
    }

    #[test]
    fn late_and_dead_events_leave_whole_though_decoded_in_part() {
        let full = |id: &str, ua: &str| {
            let mut e = crate::event::from_json(
                serde_json::json!({"event_id": id, "event_type": "page_view",
                    "timestamp": "2026-12-01T10:00:00Z", "user_id": "u1",
                    "metadata": {"user_agent": ua},
                    "properties": {"path": "/a", "plan": "pro"}}),
                &EventDefaults::default(),
            )
            .unwrap();
            e.metadata.url = Some("https://shop.example/a".into());
            e
        };
        let events = vec![full("e1", "agent one"), full("e2", "agent two")];
        let (bytes, ends) = internal::encode_each(&events);
        let mut w = Writer::default();
        for (i, e) in events.iter().enumerate() {
            let start = if i == 0 { 0 } else { ends[i - 1] };
            w.event(0, 7, i as u32, e, "u1", &bytes[start..ends[i]]);
        }
        let records = vec![Record {
            topic: "t".into(),
            partition: 0,
            offset: 3,
            payload: Some(w.finish()),
            timestamp: None,
        }];
        // A stage that reads only the `path` property: what its task decodes.
        let interest = Interest {
            event_types: Vec::new(),
            properties: Some(vec!["path".into()]),
            metadata: crate::runtime::MetadataFields::empty(),
            fields: crate::runtime::EventFields::empty(),
        };
        let part: Vec<Event> =
            internal::decode_wanted(&records[0].payload.clone().unwrap(), Some(&interest))
                .unwrap()
                .into_iter()
                .filter_map(|i| match i {
                    internal::Item::Event { event, .. } => Some(event),
                    internal::Item::Marker(..) => None,
                })
                .collect();
        assert_eq!(part[0].metadata.user_agent, None, "not decoded");
        assert_eq!(part[0].user_id, None, "not decoded");
        assert_eq!(part[0].properties.len(), 1, "only `path`");
        let (mut late, mut dead) = (vec![part[1].clone()], vec![part[0].clone()]);
        whole_again(&records, late.iter_mut(), dead.iter_mut());
        assert_eq!(late, vec![events[1].clone()]);
        assert_eq!(dead, vec![events[0].clone()]);
    }

    #[test]
    fn a_task_is_called_with_batches_of_the_configured_size() {
        let items: Vec<Item> = (0..7)
            .flat_map(|i| [Item::Event(ev(i), 0), Item::Marker(1, Some(i))])
            .collect();
        let mut wm = Inputs::new(0, Duration::from_secs(1), 2);
        let sizes: Vec<(usize, usize)> = batches(items, 14, 3, &mut wm)
            .iter()
            .map(|(c, _)| {
                let events = c.iter().filter(|i| matches!(i, Item::Event(..))).count();
                (events, c.len())
            })
            .collect();
        assert_eq!(sizes, vec![(3, 5), (3, 6), (1, 3)]);
    }

    #[test]
    fn the_watermark_waits_for_every_source_until_it_is_idle() {
        let mut w = Inputs::new(1_000, Duration::from_millis(200), 2);
        w.observe(&Item::Event(ev(10_000), 0));
        assert_eq!(w.current, i64::MIN, "source 1 has not delivered yet");
        w.observe(&Item::Marker(1, Some(5_000)));
        assert_eq!(w.current, 4_000, "the minimum over both sources");
        w.observe(&Item::Event(ev(20_000), 0));
        assert_eq!(w.current, 4_000, "source 1 holds it back while active");
        w.observe(&Item::Marker(1, None));
        assert_eq!(w.current, 19_000, "source 1 is idle: left out");
        w.observe(&Item::Event(ev(6_000), 1));
        assert_eq!(w.current, 19_000, "rejoining never moves it back");
        assert_eq!(
            w.idle_advance(Instant::now()),
            19_000,
            "not every input is idle"
        );
        w.observe(&Item::Marker(0, None));
        w.observe(&Item::Marker(1, None));
        assert!(
            w.idle_advance(Instant::now()) >= 19_200,
            "all idle: processing time"
        );
    }
}
