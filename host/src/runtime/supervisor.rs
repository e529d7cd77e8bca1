//! Supervises one plugin: sends it only what it declared interest in, checks
//! what it returns, and survives whatever it does. A failed call (trap,
//! deadline, memory cap, bad output) sends its batch to the dead-letter output,
//! replaces the instance, restores the last recovery snapshot and replays the
//! batches since, so the plugin's state loses nothing. A call past its
//! deadline is first tried once more on the recovered instance: the deadline
//! is wall time, which a stalled machine stretches. Repeated failures trip a
//! circuit breaker instead of looping.

use super::bindings::types::{
    Alert, Change, Event, EventFields, HostSettings, Interest, Metadata, MetadataFields,
    MetricPoint, Restored, Value,
};
use super::error::chain;
use super::instance::{Exports, Instance};
use super::{PluginComponent, PluginError, World};
use crate::config::{Capabilities, Limits};
use crate::event::empty_metadata;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The call ran past its deadline.
    Deadline,
    /// The plugin tried to grow its memory past the cap.
    MemoryCap,
    /// The plugin trapped (a panic, an unreachable, a bad access...).
    Trap,
    /// The plugin returned something the host cannot accept.
    BadOutput,
    /// The plugin returned more than its limits allow (`max_output_bytes`,
    /// `max_points`, `max_string_bytes`...).
    OutputLimit,
    /// The circuit breaker is open: the plugin is disabled.
    Disabled,
}

/// A failed call, with the plugin's name and the cause.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin `{plugin}` failed ({kind:?}): {message}")]
pub struct Failure {
    pub plugin: String,
    pub kind: FailureKind,
    pub message: String,
}

/// A batch that could not be processed, kept so nothing is lost.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub plugin: String,
    pub kind: FailureKind,
    pub error: String,
    pub events: Vec<Event>,
}

/// Everything a pipeline stage produced besides the events it passes on.
#[derive(Debug, Default)]
pub struct PluginOutput {
    pub points: Vec<MetricPoint>,
    pub alerts: Vec<Alert>,
    /// Events that arrived after their window closed for good, by plugin.
    pub late: Vec<(String, Event)>,
    pub dead: Vec<DeadLetter>,
}

impl PluginOutput {
    /// Appends everything `other` holds (destructured, so a new field cannot
    /// be forgotten here).
    pub fn append(&mut self, other: PluginOutput) {
        let PluginOutput {
            points,
            alerts,
            late,
            dead,
        } = other;
        self.points.extend(points);
        self.alerts.extend(alerts);
        self.late.extend(late);
        self.dead.extend(dead);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    /// Disabled after repeated failures, until the plugin is reloaded.
    Open,
}

/// Counters for `/metrics` and `GET /v1/plugins`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PluginStats {
    pub calls: u64,
    pub events_in: u64,
    pub events_out: u64,
    pub failures: u64,
    /// Batches tried once more after running past the deadline (each also
    /// counts in `failures` if the second try failed too).
    pub retries: u64,
    pub dead_lettered: u64,
    pub late: u64,
    /// Log lines dropped by the per-call rate limit (`max_log_lines`).
    pub log_dropped: u64,
    pub last_error: Option<String>,
    /// Total time inside the plugin.
    pub busy: Duration,
    /// Time per call.
    pub latency: crate::histogram::Histogram,
}

impl PluginStats {
    /// Adds another instance's counters (a processor's tasks of one plugin).
    pub fn merge(&mut self, other: &PluginStats) {
        self.calls += other.calls;
        self.events_in += other.events_in;
        self.events_out += other.events_out;
        self.failures += other.failures;
        self.retries += other.retries;
        self.dead_lettered += other.dead_lettered;
        self.late += other.late;
        self.log_dropped += other.log_dropped;
        if other.last_error.is_some() {
            self.last_error.clone_from(&other.last_error);
        }
        self.busy += other.busy;
        self.latency.merge(&other.latency);
    }
}

struct Breaker {
    recent: VecDeque<Instant>,
    threshold: u32,
    window: Duration,
    open: bool,
}

impl Breaker {
    /// Records a failure; true when this one trips the breaker.
    fn record(&mut self, now: Instant) -> bool {
        self.recent.push_back(now);
        while let Some(&t) = self.recent.front() {
            if now.duration_since(t) > self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if !self.open && self.recent.len() >= self.threshold as usize {
            self.open = true;
            return true;
        }
        false
    }
}

/// A supervised plugin instance.
pub struct Plugin {
    name: String,
    component: PluginComponent,
    config: String,
    settings: HostSettings,
    limits: Limits,
    caps: Capabilities,
    instance: Option<Instance>,
    interest: Interest,
    /// State to recover from, and the batches processed since it was taken.
    recovery: Option<Arc<Vec<u8>>>,
    replay: Vec<Arc<Remembered>>,
    replay_events: usize,
    /// Sequence number of `replay[0]`: batches are numbered from the start,
    /// so a new version can ask for "everything after n" (see [`Catchup`]).
    replay_start: u64,
    watermark: i64,
    breaker: Breaker,
    stats: PluginStats,
    /// What the last `restore` took over, part by part (for the deploy answer).
    restored: Option<Restored>,
    /// What [`project`] set aside during a call, kept between calls: a
    /// stage thread is new each round, and a fresh buffer per call meant
    /// fresh pages to zero.
    hidden: Vec<Hidden>,
}

/// Fields moved out of an event while the plugin sees a projection of it.
struct Hidden {
    /// Properties the plugin does not read, with their positions.
    properties: Vec<(usize, super::Property)>,
    metadata: Metadata,
    /// The id, if the plugin does not read it (empty otherwise).
    id: String,
    user_id: Option<String>,
    session_id: Option<String>,
}

fn empty_event() -> Event {
    Event {
        id: String::new(),
        event_type: String::new(),
        timestamp: 0,
        user_id: None,
        session_id: None,
        properties: Vec::new(),
        metadata: empty_metadata(),
    }
}

impl Plugin {
    /// Instantiates and initialises a plugin; a config error is returned as is.
    pub fn new(
        name: &str,
        component: PluginComponent,
        config: &str,
        settings: HostSettings,
        limits: Limits,
        caps: Capabilities,
    ) -> Result<Self, PluginError> {
        let mut plugin = Plugin {
            name: name.to_string(),
            breaker: Breaker {
                recent: VecDeque::new(),
                threshold: limits.breaker_failures.max(1),
                window: Duration::from_secs(limits.breaker_window_secs),
                open: false,
            },
            component,
            config: config.to_string(),
            settings,
            limits,
            caps,
            instance: None,
            interest: Interest {
                event_types: Vec::new(),
                properties: None,
                metadata: MetadataFields::empty(),
                fields: EventFields::empty(),
            },
            recovery: None,
            replay: Vec::new(),
            replay_events: 0,
            replay_start: 0,
            watermark: i64::MIN,
            stats: PluginStats::default(),
            restored: None,
            hidden: Vec::new(),
        };
        plugin.start()?;
        Ok(plugin)
    }

    /// A fresh instance, initialised with the config.
    fn start(&mut self) -> Result<(), PluginError> {
        let mut instance = Instance::new(&self.name, &self.component, &self.limits, &self.caps)?;
        match instance.init(&self.config, &self.settings) {
            Ok(Ok(interest)) => self.interest = interest,
            Ok(Err(e)) => {
                let at = e.field.map(|f| format!("{f}: ")).unwrap_or_default();
                return Err(PluginError::Config(format!("{at}{}", e.message)));
            }
            Err(e) => return Err(self.failure(&instance, &e).into()),
        }
        self.instance = Some(instance);
        Ok(())
    }

    /// Another instance of the same plugin (same component, config and
    /// limits), with empty state: one per partition of a keyed stage.
    pub fn fresh(&self) -> Result<Plugin, PluginError> {
        Plugin::new(
            &self.name,
            self.component.clone(),
            &self.config,
            self.settings.clone(),
            self.limits.clone(),
            self.caps.clone(),
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's own config, as its `init` was given it.
    pub fn config_text(&self) -> &str {
        &self.config
    }

    /// Tells an enricher which properties the plugins after it read
    /// (`host-settings.downstream-properties`): when that changed, it starts
    /// again with the new list. Enrichers hold no state, so nothing is lost;
    /// if the new start fails, the running instance stays.
    pub fn set_downstream(&mut self, reads: Option<Vec<String>>) {
        if self.world() != World::Enricher || self.settings.downstream_properties == reads {
            return;
        }
        let before = std::mem::replace(&mut self.settings.downstream_properties, reads);
        if self.breaker.open {
            return; // started only by a reload, which builds a new plugin
        }
        let old = self.instance.take();
        match self.start() {
            Ok(()) => {
                tracing::debug!(plugin = %self.name, reads = ?self.settings.downstream_properties, "enricher restarted for what its downstream reads")
            }
            Err(e) => {
                tracing::error!(plugin = %self.name, error = %e, "could not restart the enricher for what its downstream reads; the running instance stays");
                self.settings.downstream_properties = before;
                self.instance = old;
            }
        }
    }

    pub fn world(&self) -> World {
        self.component.world
    }

    pub fn component(&self) -> &PluginComponent {
        &self.component
    }

    pub fn interest(&self) -> &Interest {
        &self.interest
    }

    /// What the last restore of a saved state took over (`None` if the
    /// instance never restored one).
    pub fn restored(&self) -> Option<&Restored> {
        self.restored.as_ref()
    }

    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    pub fn breaker(&self) -> BreakerState {
        if self.breaker.open {
            BreakerState::Open
        } else {
            BreakerState::Closed
        }
    }

    /// Processes one batch in place: enrichers change `batch`; aggregators and
    /// alerters add to `out`. `watermark` is event-time progress after the batch.
    pub fn process(&mut self, batch: &mut Vec<Event>, watermark: i64, out: &mut PluginOutput) {
        let wanted: Vec<usize> = (0..batch.len())
            .filter(|&i| self.interest_wants(&batch[i].event_type))
            .collect();
        let advances = watermark > self.watermark;
        if wanted.is_empty() && !(self.component.world.is_stateful() && advances) {
            return;
        }
        if self.breaker.open {
            self.reject(batch, &wanted, FailureKind::Disabled, "disabled by the circuit breaker after repeated failures; reload the plugin to re-enable it".into(), out);
            return;
        }

        let (mut result, mut replay_copy) = self.run_wanted(batch, &wanted, watermark, 1);
        if let Err(f) = &result
            && f.kind == FailureKind::Deadline
        {
            // Every other failure is deterministic: the same state and batch
            // fail the same way again. A deadline is wall time, and a machine
            // that stalls (a cold page cache, a noisy neighbour) can stretch a
            // healthy call past it; dead-lettering that batch would leave its
            // events out of every aggregate. So once more, on a fresh instance
            // with the state as before the call, and more time; a plugin that
            // loops overruns this too and is treated as failed.
            tracing::warn!(plugin = %self.name, error = %f.message, events = wanted.len(), "call ran past its deadline; trying the batch once more on a fresh instance");
            self.stats.retries += 1;
            self.recover();
            if self.instance.is_some() {
                (result, replay_copy) =
                    self.run_wanted(batch, &wanted, watermark, RETRY_DEADLINE_FACTOR);
            }
        }

        match result.and_then(|r| self.validate(r, wanted.len())) {
            Ok(r) => {
                self.watermark = self.watermark.max(watermark);
                self.apply(r, batch, &wanted, out);
                if let Some(batch) = replay_copy {
                    self.remember(batch);
                }
            }
            Err(failure) => {
                tracing::error!(plugin = %self.name, kind = ?failure.kind, error = %failure.message, events = wanted.len(), "plugin failed; batch sent to the dead-letter output");
                self.reject(batch, &wanted, failure.kind, failure.message.clone(), out);
                self.failed(&failure);
            }
        }
    }

    /// [`Plugin::run`] on the events of `batch` at `wanted`, left in place.
    fn run_wanted(
        &mut self,
        batch: &mut [Event],
        wanted: &[usize],
        watermark: i64,
        leniency: u64,
    ) -> (Result<CallResult, Failure>, Option<Remembered>) {
        if wanted.len() == batch.len() {
            // Every event is wanted (the common case): no moves at all.
            return self.run(batch, watermark, leniency);
        }
        // Move the wanted events out (a move, not a copy of their strings) and back.
        let mut sub: Vec<Event> = wanted
            .iter()
            .map(|&i| std::mem::replace(&mut batch[i], empty_event()))
            .collect();
        let r = self.run(&mut sub, watermark, leniency);
        for (&i, e) in wanted.iter().zip(sub) {
            batch[i] = e;
        }
        r
    }

    /// Calls the plugin on `events` with `leniency` times its deadline,
    /// hiding what it does not read for the call; for a stateful plugin that
    /// succeeded, also the batch to keep for replay (as the plugin saw it).
    fn run(
        &mut self,
        events: &mut [Event],
        watermark: i64,
        leniency: u64,
    ) -> (Result<CallResult, Failure>, Option<Remembered>) {
        let mut hidden = std::mem::take(&mut self.hidden);
        hidden.extend(events.iter_mut().map(|e| project(&self.interest, e)));
        let started = Instant::now();
        let result = self.call(events, watermark, leniency);
        let took = started.elapsed();
        self.stats.busy += took;
        self.stats.latency.record(took);
        self.stats.calls += 1;
        self.stats.events_in += events.len() as u64;
        let replay_copy = match &result {
            Ok(_) if self.component.world.is_stateful() => Some(Remembered::new(events, watermark)),
            _ => None,
        };
        for (e, h) in events.iter_mut().zip(hidden.drain(..)) {
            unproject(e, h);
        }
        self.hidden = hidden;
        (result, replay_copy)
    }

    /// Counts a failure, then replaces the instance (a trapped instance cannot
    /// be entered again) or, on repeated failures, opens the breaker.
    fn failed(&mut self, failure: &Failure) {
        self.stats.failures += 1;
        self.stats.last_error = Some(failure.message.clone());
        if self.breaker.record(Instant::now()) {
            tracing::error!(plugin = %self.name, failures = self.breaker.threshold, window_secs = self.breaker.window.as_secs(), "circuit breaker open: plugin disabled");
            self.instance = None;
        } else {
            self.recover();
        }
    }

    fn interest_wants(&self, event_type: &str) -> bool {
        self.interest.event_types.is_empty()
            || self.interest.event_types.iter().any(|t| t == event_type)
    }

    fn call(
        &mut self,
        events: &[Event],
        watermark: i64,
        leniency: u64,
    ) -> Result<CallResult, Failure> {
        let Some(instance) = self.instance.as_mut() else {
            return Err(Failure {
                plugin: self.name.clone(),
                kind: FailureKind::Disabled,
                message: "no live instance (it failed to restart)".into(),
            });
        };
        instance.arm_lenient(leniency);
        let result = match &instance.exports {
            Exports::Enricher(b) => b
                .nexuspipe_plugin_enrich()
                .call_process(&mut instance.store, events)
                .map(CallResult::Changes),
            Exports::Aggregator(b) => b
                .nexuspipe_plugin_aggregate()
                .call_process(&mut instance.store, events, watermark)
                .map(|o| CallResult::Points(o.points, o.late)),
            Exports::Alerter(b) => b
                .nexuspipe_plugin_alerting()
                .call_process(&mut instance.store, events, watermark)
                .map(|o| CallResult::Alerts(o.alerts, o.late)),
        };
        self.stats.log_dropped += instance.take_log_dropped();
        let instance = self.instance.as_ref().expect("checked above");
        result.map_err(|e| self.failure(instance, &e))
    }

    /// Classifies a wasmtime error into a [`Failure`], with the guest's stderr.
    fn failure(&self, instance: &Instance, e: &wasmtime::Error) -> Failure {
        let text = chain(e);
        let kind = match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => FailureKind::Deadline,
            // StoreLimits' trap_on_grow_failure wording.
            _ if text.contains("forcing trap when growing memory") => FailureKind::MemoryCap,
            _ if text.contains(super::instance::COPY_LIMIT_ERROR) => FailureKind::OutputLimit,
            _ => FailureKind::Trap,
        };
        let mut message = match kind {
            FailureKind::OutputLimit => format!(
                "the output is larger than max_output_bytes ({} bytes copied out of the plugin per call)",
                self.limits.max_output_bytes
            ),
            FailureKind::Deadline => format!(
                "call exceeded its deadline of {} ms and was interrupted",
                self.limits.deadline_ms
            ),
            FailureKind::MemoryCap => format!(
                "memory cap of {} MiB reached ({text})",
                self.limits.memory_mib
            ),
            _ => text,
        };
        let stderr = instance.stderr();
        if !stderr.is_empty() {
            // Keep the tail: a panic message is the last thing written.
            let tail: String = stderr
                .chars()
                .rev()
                .take(2000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            message.push_str(&format!("; plugin stderr: {tail}"));
        }
        Failure {
            plugin: self.name.clone(),
            kind,
            message,
        }
    }

    /// Checks a plugin's output (see [`validate_output`]).
    fn validate(&self, r: CallResult, n: usize) -> Result<CallResult, Failure> {
        validate_output(&self.name, &self.limits, &r, n)?;
        Ok(r)
    }

    fn apply(
        &mut self,
        r: CallResult,
        batch: &mut Vec<Event>,
        wanted: &[usize],
        out: &mut PluginOutput,
    ) {
        match r {
            CallResult::Changes(changes) => {
                self.stats.events_out += apply_changes(changes, batch, wanted);
            }
            CallResult::Points(points, late) => {
                self.stats.events_out += points.len() as u64;
                self.collect_late(batch, wanted, &late, out);
                out.points.extend(points);
            }
            CallResult::Alerts(alerts, late) => {
                self.stats.events_out += alerts.len() as u64;
                self.collect_late(batch, wanted, &late, out);
                out.alerts.extend(alerts);
            }
        }
    }

    fn collect_late(
        &mut self,
        batch: &[Event],
        wanted: &[usize],
        late: &[u32],
        out: &mut PluginOutput,
    ) {
        self.stats.late += late.len() as u64;
        out.late.extend(
            late.iter()
                .map(|&i| (self.name.clone(), batch[wanted[i as usize]].clone())),
        );
    }

    /// Sends the wanted events of a batch to the dead-letter output. An
    /// enricher's failed events leave the stream (they were not enriched);
    /// other plugins only observe the stream, so it continues unchanged.
    fn reject(
        &mut self,
        batch: &mut Vec<Event>,
        wanted: &[usize],
        kind: FailureKind,
        error: String,
        out: &mut PluginOutput,
    ) {
        if wanted.is_empty() {
            return;
        }
        let events: Vec<Event> = if self.component.world == World::Enricher {
            let mut taken = vec![false; batch.len()];
            for &i in wanted {
                taken[i] = true;
            }
            let mut events = Vec::with_capacity(wanted.len());
            let mut kept = Vec::with_capacity(batch.len() - wanted.len());
            for (e, t) in batch.drain(..).zip(taken) {
                if t { events.push(e) } else { kept.push(e) }
            }
            *batch = kept;
            events
        } else {
            wanted.iter().map(|&i| batch[i].clone()).collect()
        };
        self.stats.dead_lettered += events.len() as u64;
        out.dead.push(DeadLetter {
            plugin: self.name.clone(),
            kind,
            error,
            events,
        });
    }

    fn remember(&mut self, batch: Remembered) {
        self.replay_events += batch.len.max(1);
        self.replay.push(Arc::new(batch));
        if self.replay_events >= self.limits.replay_limit
            && let Err(f) = self.checkpoint()
        {
            tracing::warn!(plugin = %self.name, error = %f, "could not take a recovery snapshot");
        }
    }

    /// Replaces a failed instance: new instance, last recovery snapshot, then the
    /// batches processed since (their outputs were already delivered).
    fn recover(&mut self) {
        self.instance = None;
        let result = (|| -> Result<(), PluginError> {
            self.start()?;
            let instance = self.instance.as_mut().expect("started");
            if let Some(state) = &self.recovery {
                match instance.restore(state.as_slice()) {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(PluginError::State(e.message)),
                    Err(e) => return Err(PluginError::State(chain(&e))),
                }
            }
            let replay = std::mem::take(&mut self.replay);
            for batch in &replay {
                let instance = self.instance.as_mut().expect("started");
                replay_into(instance, batch)
                    .map_err(|e| PluginError::State(format!("replay failed: {}", chain(&e))))?;
            }
            self.replay = replay;
            Ok(())
        })();
        match result {
            Ok(()) => {
                tracing::info!(plugin = %self.name, replayed = self.replay.len(), "plugin instance recreated")
            }
            Err(e) => {
                tracing::error!(plugin = %self.name, error = %e, "plugin could not be recreated; circuit breaker open");
                self.instance = None;
                self.breaker.open = true;
            }
        }
    }

    fn truncate_replay(&mut self) {
        self.replay_start += self.replay.len() as u64;
        self.replay.clear();
        self.replay_events = 0;
    }

    /// What a new version needs to catch up with this instance: everything
    /// after batch `since`, or (`None`, or those batches are already folded
    /// into a newer snapshot) the last snapshot and every batch after it.
    /// Cheap: it shares the snapshot and the batches.
    pub fn catchup(&self, since: Option<u64>) -> Catchup {
        let (from_base, skip) = match since {
            Some(s) if s >= self.replay_start => (false, (s - self.replay_start) as usize),
            _ => (true, 0),
        };
        Catchup {
            base: if from_base {
                self.recovery.clone()
            } else {
                None
            },
            from_base,
            batches: self.replay.get(skip..).unwrap_or_default().to_vec(),
            next: self.replay_start + self.replay.len() as u64,
            interest: self.interest.clone(),
            config: self.config.clone(),
        }
    }

    /// Brings this (new, idle) instance to the state `c` describes: restores
    /// the snapshot, then replays the batches, remembering them in turn so
    /// this instance can recover too. A refused snapshot is a `State` error.
    pub fn catch_up(&mut self, c: &Catchup) -> Result<(), PluginError> {
        if c.from_base {
            self.reset_to(c.base.as_deref().map(Vec::as_slice))?;
        }
        for batch in &c.batches {
            self.replay_one(batch)?;
        }
        Ok(())
    }

    /// Replaces all state with a snapshot, or with this version's initial
    /// state when the running version never took one.
    pub fn reset_to(&mut self, base: Option<&[u8]>) -> Result<(), PluginError> {
        match base {
            Some(state) => self.restore(state).map(drop),
            None => {
                self.instance = None;
                self.start()?;
                self.recovery = None;
                self.truncate_replay();
                Ok(())
            }
        }
    }

    /// Replays one batch the running version processed (see [`Plugin::catch_up`]).
    pub fn replay_one(&mut self, batch: &Arc<Remembered>) -> Result<(), PluginError> {
        let instance = self
            .instance
            .as_mut()
            .ok_or_else(|| PluginError::State("plugin is disabled".into()))?;
        replay_into(instance, batch).map_err(|e| {
            PluginError::State(format!(
                "the new version failed on events the running one processed: {}",
                chain(&e)
            ))
        })?;
        self.watermark = self.watermark.max(batch.watermark);
        self.replay_events += batch.len.max(1);
        self.replay.push(batch.clone());
        Ok(())
    }

    /// Takes over what a previous version of this plugin had counted, so the
    /// plugin's counters stay monotonic across versions, and its event-time progress.
    pub fn carry_over(&mut self, old: &Plugin) {
        let mut stats = old.stats.clone();
        stats.last_error = None;
        self.stats = stats;
        self.watermark = self.watermark.max(old.watermark);
    }

    /// Takes a snapshot of the plugin's state (None for enrichers), which also
    /// becomes the recovery point.
    pub fn checkpoint(&mut self) -> Result<Option<Vec<u8>>, Failure> {
        if !self.component.world.is_stateful() {
            return Ok(None);
        }
        let Some(instance) = self.instance.as_mut() else {
            // Disabled: the last good state is what we have.
            return Ok(self.recovery.as_ref().map(|s| s.to_vec()));
        };
        let snapshot = match instance.snapshot() {
            Ok(s) => s,
            Err(e) => {
                let instance = self.instance.as_ref().expect("checked above");
                let failure = self.failure(instance, &e);
                tracing::error!(plugin = %self.name, kind = ?failure.kind, error = %failure.message, "snapshot failed");
                // The replay log is kept: recovery restores the last good state and replays it.
                self.failed(&failure);
                return Err(failure);
            }
        };
        self.recovery = snapshot.clone().map(Arc::new);
        self.truncate_replay();
        Ok(snapshot)
    }

    /// Restores state from a checkpoint (at start, or handed over from
    /// another version); returns what the plugin took over of it, part by part.
    pub fn restore(&mut self, state: &[u8]) -> Result<Restored, PluginError> {
        let instance = self
            .instance
            .as_mut()
            .ok_or_else(|| PluginError::State("plugin is disabled".into()))?;
        match instance.restore(state) {
            Ok(Ok(report)) => {
                // The plugin may have dropped parts: its own snapshot, not
                // the bytes it was given, is the recovery point.
                self.recovery = match instance.snapshot() {
                    Ok(s) => s.map(Arc::new),
                    Err(e) => return Err(PluginError::State(chain(&e))),
                };
                self.truncate_replay();
                self.restored = Some(report.clone());
                Ok(report)
            }
            Ok(Err(e)) => Err(PluginError::State(e.message)),
            Err(e) => Err(PluginError::State(chain(&e))),
        }
    }
}

/// A batch a stateful plugin processed (as it saw it), kept until the next
/// snapshot; encoded, see [`super::replay`].
pub struct Remembered {
    encoded: Vec<u8>,
    len: usize,
    watermark: i64,
}

impl Remembered {
    fn new(events: &[Event], watermark: i64) -> Self {
        let mut encoded = Vec::with_capacity(super::replay::encoded_len(events));
        super::replay::encode(events, &mut encoded);
        Remembered {
            encoded,
            len: events.len(),
            watermark,
        }
    }

    fn events(&self) -> wasmtime::Result<Vec<Event>> {
        super::replay::decode(&self.encoded, self.len)
            .map_err(|e| wasmtime::Error::msg(format!("a kept batch does not decode: {e}")))
    }
}

/// What a new version needs to reach a running instance's state without
/// stopping it: the last snapshot (`base`) and the batches processed since,
/// or, asked incrementally, only the batches after a sequence number.
pub struct Catchup {
    pub base: Option<Arc<Vec<u8>>>,
    /// `true`: `base` replaces all state (possibly none: the instance never
    /// took a snapshot); `false`: `batches` continue the previous catch-up.
    pub from_base: bool,
    pub batches: Vec<Arc<Remembered>>,
    /// Sequence number of the batch after the last of `batches`.
    pub next: u64,
    pub interest: Interest,
    /// The running version's config.
    pub config: String,
}

impl Catchup {
    pub fn events(&self) -> usize {
        self.batches.iter().map(|b| b.len).sum()
    }

    /// Whether `new` can catch up by replaying these batches: it is shown
    /// the same events and fields, and treats them alike (same config). A
    /// new config must not see the events from before it went live: its
    /// changed parts start empty (see `restore`), so its state goes over
    /// by snapshot and restore in the pause instead.
    pub fn fits(&self, new: &Plugin) -> bool {
        same_interest(&self.interest, new.interest()) && self.config == new.config
    }
}

/// Tells every enricher in `pipeline` what the plugins after it read: the
/// later plugins of `pipeline`, then those of `after` (plugins that run later
/// but are kept elsewhere, such as a Kafka processor's keyed stages).
pub fn refresh_downstream(pipeline: &mut [Plugin], after: &[&Interest]) {
    // `None`: some plugin reads every property.
    type Reads = Option<std::collections::BTreeSet<String>>;
    fn add(reads: &mut Reads, i: &Interest) {
        match (reads.as_mut(), &i.properties) {
            (Some(set), Some(keys)) => set.extend(keys.iter().cloned()),
            (Some(_), None) => *reads = None,
            (None, _) => {}
        }
    }
    let mut reads: Reads = Some(Default::default());
    for i in after {
        add(&mut reads, i);
    }
    for p in pipeline.iter_mut().rev() {
        p.set_downstream(reads.as_ref().map(|s| s.iter().cloned().collect()));
        add(&mut reads, p.interest());
    }
}

/// Whether two versions see the same events and fields, so one's recorded
/// batches are exactly what the other would have been given.
pub fn same_interest(a: &Interest, b: &Interest) -> bool {
    a.event_types == b.event_types
        && a.properties == b.properties
        && a.metadata == b.metadata
        && a.fields == b.fields
}

/// How much longer than a live call a replay may run (wall time): replays run
/// back to back, often beside the live instance on a busy machine.
const REPLAY_DEADLINE_FACTOR: u64 = 10;

/// How much longer than the first try a batch retried after a deadline may
/// run: enough to ride out a stall, short enough that a looping plugin holds
/// the stream up for about a second per batch (until the breaker opens).
const RETRY_DEADLINE_FACTOR: u64 = 5;

/// Feeds a remembered batch to an instance again; its outputs were delivered already.
fn replay_into(instance: &mut Instance, batch: &Remembered) -> wasmtime::Result<()> {
    if matches!(instance.exports, Exports::Enricher(_)) {
        return Ok(());
    }
    let events = batch.events()?;
    instance.arm_lenient(REPLAY_DEADLINE_FACTOR);
    match &instance.exports {
        Exports::Enricher(_) => Ok(()),
        Exports::Aggregator(b) => b
            .nexuspipe_plugin_aggregate()
            .call_process(&mut instance.store, &events, batch.watermark)
            .map(drop),
        Exports::Alerter(b) => b
            .nexuspipe_plugin_alerting()
            .call_process(&mut instance.store, &events, batch.watermark)
            .map(drop),
    }
}

pub(crate) enum CallResult {
    Changes(Vec<Change>),
    Points(Vec<MetricPoint>, Vec<u32>),
    Alerts(Vec<Alert>, Vec<u32>),
}

/// Moves the properties whose key is not in `keys` out of `props`, with
/// their positions; the rest stay in order. Moved, not copied.
fn hide_properties(
    props: &mut Vec<super::Property>,
    keys: &[String],
) -> Vec<(usize, super::Property)> {
    // Lazy: each item is yielded right after the test that picked it, so
    // `seen` then counts up to and including it.
    let seen = std::cell::Cell::new(0);
    props
        .extract_if(.., |p| {
            seen.set(seen.get() + 1);
            !keys.contains(&p.key)
        })
        .map(|p| (seen.get() - 1, p))
        .collect()
}

/// Undoes [`hide_properties`].
fn restore_properties(props: &mut Vec<super::Property>, hidden: Vec<(usize, super::Property)>) {
    // In ascending original positions, each lands where it was.
    for (at, p) in hidden {
        props.insert(at, p);
    }
}

/// Hides from `e` what `interest` does not read, to be put back by [`unproject`].
fn project(interest: &Interest, e: &mut Event) -> Hidden {
    // Moved, not copied: unread properties step aside and come back in place.
    let properties = match &interest.properties {
        Some(keys) => hide_properties(&mut e.properties, keys),
        None => Vec::new(),
    };
    let want = interest.metadata;
    let md = &mut e.metadata;
    let hide = |flag: MetadataFields, field: &mut Option<String>| {
        if want.contains(flag) {
            None
        } else {
            field.take()
        }
    };
    let metadata = Metadata {
        ip_address: hide(MetadataFields::IP_ADDRESS, &mut md.ip_address),
        user_agent: hide(MetadataFields::USER_AGENT, &mut md.user_agent),
        platform: hide(MetadataFields::PLATFORM, &mut md.platform),
        url: hide(MetadataFields::URL, &mut md.url),
        referrer: hide(MetadataFields::REFERRER, &mut md.referrer),
    };
    let fields = interest.fields;
    let id = if fields.contains(EventFields::ID) {
        String::new()
    } else {
        std::mem::take(&mut e.id)
    };
    let hide = |flag: EventFields, field: &mut Option<String>| {
        if fields.contains(flag) {
            None
        } else {
            field.take()
        }
    };
    Hidden {
        properties,
        metadata,
        id,
        user_id: hide(EventFields::USER_ID, &mut e.user_id),
        session_id: hide(EventFields::SESSION_ID, &mut e.session_id),
    }
}

fn unproject(e: &mut Event, h: Hidden) {
    restore_properties(&mut e.properties, h.properties);
    if !h.id.is_empty() {
        e.id = h.id;
    }
    let md = &mut e.metadata;
    for (dst, src) in [
        (&mut e.user_id, h.user_id),
        (&mut e.session_id, h.session_id),
        (&mut md.ip_address, h.metadata.ip_address),
        (&mut md.user_agent, h.metadata.user_agent),
        (&mut md.platform, h.metadata.platform),
        (&mut md.url, h.metadata.url),
        (&mut md.referrer, h.metadata.referrer),
    ] {
        if src.is_some() {
            *dst = src;
        }
    }
}

fn patch(e: &mut Event, p: super::bindings::types::EventPatch) {
    if let Some(t) = p.event_type {
        e.event_type = t;
    }
    if p.user_id.is_some() {
        e.user_id = p.user_id;
    }
    if p.session_id.is_some() {
        e.session_id = p.session_id;
    }
    if !p.remove_properties.is_empty() {
        e.properties
            .retain(|prop| !p.remove_properties.contains(&prop.key));
    }
    e.properties.reserve(p.set_properties.len());
    for prop in p.set_properties {
        match e.properties.iter_mut().find(|q| q.key == prop.key) {
            Some(q) => q.value = prop.value,
            None => e.properties.push(prop),
        }
    }
    if let Some(m) = p.metadata {
        unproject(
            e,
            Hidden {
                properties: Vec::new(),
                metadata: m,
                id: String::new(),
                user_id: None,
                session_id: None,
            },
        );
    }
}

/// Checks a plugin's output against the batch of `n` events it was given
/// and against its limits: what the host keeps of a call is bounded,
/// whatever the plugin returns.
pub(crate) fn validate_output(
    plugin: &str,
    l: &Limits,
    r: &CallResult,
    n: usize,
) -> Result<(), Failure> {
    let fail = |kind, message: String| Failure {
        plugin: plugin.to_string(),
        kind,
        message,
    };
    let bad = |message: String| fail(FailureKind::BadOutput, message);
    let over = |message: String| fail(FailureKind::OutputLimit, message);
    let check_late = |late: &[u32]| match late.iter().find(|&&i| i as usize >= n) {
        Some(i) => Err(bad(format!(
            "late index {i} is outside the batch of {n} events"
        ))),
        None => Ok(()),
    };
    let sizes = Sizes { limits: l };
    match r {
        CallResult::Changes(changes) => {
            let mut emitted = 0usize;
            // Properties set per event over all of the call's patches: many
            // small patches to one event add up to one big one. Indexed by
            // event, allocated at the first patch (no hashing per event).
            let mut set: Vec<usize> = Vec::new();
            for (k, c) in changes.iter().enumerate() {
                let index = match c {
                    Change::Patch(p) => {
                        if p.event_type.as_deref() == Some("") {
                            return Err(bad(format!(
                                "change {k}: a patch sets an empty event_type"
                            )));
                        }
                        sizes
                            .patch(p)
                            .map_err(|why| over(format!("change {k}: {why}")))?;
                        if set.is_empty() {
                            set.resize(n, 0);
                        }
                        // An index outside the batch is refused below.
                        if let Some(total) = set.get_mut(p.index as usize) {
                            *total += p.set_properties.len();
                            if *total > l.max_properties {
                                return Err(over(format!(
                                    "change {k}: {total} properties set on event {} in one call, more than max_properties ({})",
                                    p.index, l.max_properties
                                )));
                            }
                        }
                        Some(p.index)
                    }
                    Change::Drop(i) => Some(*i),
                    Change::Emit(e) => {
                        if e.event_type.is_empty() {
                            return Err(bad(format!(
                                "change {k}: emitted event has an empty event_type"
                            )));
                        }
                        sizes
                            .event(e)
                            .map_err(|why| over(format!("change {k}: {why}")))?;
                        emitted += 1;
                        None
                    }
                };
                if let Some(i) = index.filter(|&i| i as usize >= n) {
                    return Err(bad(format!(
                        "change {k}: index {i} is outside the batch of {n} events"
                    )));
                }
            }
            if n + emitted > n.saturating_mul(l.max_events_factor) {
                return Err(over(format!(
                    "{emitted} events emitted for a batch of {n}: more than max_events_factor ({}) events out per event in",
                    l.max_events_factor
                )));
            }
        }
        CallResult::Points(points, late) => {
            check_late(late)?;
            if points.len() > l.max_points {
                return Err(over(format!(
                    "{} points in one call, more than max_points ({})",
                    points.len(),
                    l.max_points
                )));
            }
            for (k, p) in points.iter().enumerate() {
                if let Err(why) = crate::lineproto::check(p) {
                    return Err(bad(format!("point {k} ({}): {why}", p.measurement)));
                }
                sizes
                    .point(p)
                    .map_err(|why| over(format!("point {k}: {why}")))?;
            }
        }
        CallResult::Alerts(alerts, late) => {
            check_late(late)?;
            if alerts.len() > l.max_alerts {
                return Err(over(format!(
                    "{} alerts in one call, more than max_alerts ({})",
                    alerts.len(),
                    l.max_alerts
                )));
            }
            for (k, a) in alerts.iter().enumerate() {
                if a.rule_id.is_empty() || a.fingerprint.is_empty() {
                    return Err(bad(format!(
                        "alert {k}: rule_id and fingerprint must not be empty"
                    )));
                }
                sizes
                    .alert(a)
                    .map_err(|why| over(format!("alert {k}: {why}")))?;
            }
        }
    }
    Ok(())
}

/// Applies an enricher's validated changes to its batch (`wanted`: the
/// positions in `batch` of the events it was given); returns how many
/// events it passed on.
pub(crate) fn apply_changes(changes: Vec<Change>, batch: &mut Vec<Event>, wanted: &[usize]) -> u64 {
    let mut dropped = vec![false; batch.len()];
    let mut emitted = Vec::new();
    for change in changes {
        match change {
            Change::Patch(p) => patch(&mut batch[wanted[p.index as usize]], p),
            Change::Drop(i) => dropped[wanted[i as usize]] = true,
            Change::Emit(mut e) => {
                if e.id.is_empty() {
                    e.id = crate::event::server_event_id();
                }
                emitted.push(e)
            }
        }
    }
    if dropped.iter().any(|&d| d) {
        let mut k = 0;
        batch.retain(|_| {
            k += 1;
            !dropped[k - 1]
        });
    }
    let out = (wanted.len() - dropped.iter().filter(|&&d| d).count() + emitted.len()) as u64;
    batch.extend(emitted);
    out
}

/// Checks the sizes in an output against a plugin's limits; the error names
/// the limit and what broke it.
struct Sizes<'a> {
    limits: &'a Limits,
}

impl Sizes<'_> {
    fn key(&self, what: &str, k: &str) -> Result<(), String> {
        if k.len() > self.limits.max_key_bytes {
            return Err(format!(
                "{what} of {} bytes, longer than max_key_bytes ({})",
                k.len(),
                self.limits.max_key_bytes
            ));
        }
        Ok(())
    }

    fn text(&self, what: &str, v: &str) -> Result<(), String> {
        if v.len() > self.limits.max_string_bytes {
            return Err(format!(
                "{what} of {} bytes, longer than max_string_bytes ({})",
                v.len(),
                self.limits.max_string_bytes
            ));
        }
        Ok(())
    }

    fn value(&self, what: &str, v: &Value) -> Result<(), String> {
        match v {
            Value::Str(s) => self.text(what, s),
            _ => Ok(()),
        }
    }

    fn properties(&self, props: &[super::Property]) -> Result<(), String> {
        if props.len() > self.limits.max_properties {
            return Err(format!(
                "{} properties, more than max_properties ({})",
                props.len(),
                self.limits.max_properties
            ));
        }
        for p in props {
            self.key("a property key", &p.key)?;
            self.value(&format!("property `{}`", p.key), &p.value)?;
        }
        Ok(())
    }

    fn metadata(&self, m: &Metadata) -> Result<(), String> {
        for v in [
            &m.ip_address,
            &m.user_agent,
            &m.platform,
            &m.url,
            &m.referrer,
        ]
        .into_iter()
        .flatten()
        {
            self.text("a metadata value", v)?;
        }
        Ok(())
    }

    fn event(&self, e: &Event) -> Result<(), String> {
        self.key("an event_type", &e.event_type)?;
        for v in [Some(&e.id), e.user_id.as_ref(), e.session_id.as_ref()]
            .into_iter()
            .flatten()
        {
            self.text("an id", v)?;
        }
        self.properties(&e.properties)?;
        self.metadata(&e.metadata)
    }

    fn patch(&self, p: &super::bindings::types::EventPatch) -> Result<(), String> {
        if let Some(t) = &p.event_type {
            self.key("an event_type", t)?;
        }
        for v in [p.user_id.as_ref(), p.session_id.as_ref()]
            .into_iter()
            .flatten()
        {
            self.text("an id", v)?;
        }
        // Removals can only shrink the event; sets are bounded here, and all
        // changes of a call together by `max_output_bytes`.
        self.properties(&p.set_properties)?;
        if p.remove_properties.len() > self.limits.max_properties {
            return Err(format!(
                "{} property removals, more than max_properties ({})",
                p.remove_properties.len(),
                self.limits.max_properties
            ));
        }
        p.metadata.as_ref().map_or(Ok(()), |m| self.metadata(m))
    }

    fn point(&self, p: &MetricPoint) -> Result<(), String> {
        self.key("a measurement", &p.measurement)?;
        if p.tags.len() + p.fields.len() > self.limits.max_properties {
            return Err(format!(
                "{} tags and fields, more than max_properties ({})",
                p.tags.len() + p.fields.len(),
                self.limits.max_properties
            ));
        }
        for (k, v) in &p.tags {
            self.key("a tag key", k)?;
            self.text(&format!("tag `{k}`"), v)?;
        }
        for (k, v) in &p.fields {
            self.key("a field key", k)?;
            self.value(&format!("field `{k}`"), v)?;
        }
        Ok(())
    }

    fn alert(&self, a: &Alert) -> Result<(), String> {
        self.key("a rule_id", &a.rule_id)?;
        self.text("a key", &a.key)?;
        self.text("a summary", &a.summary)?;
        self.text("a fingerprint", &a.fingerprint)?;
        if a.labels.len() > self.limits.max_properties {
            return Err(format!(
                "{} labels, more than max_properties ({})",
                a.labels.len(),
                self.limits.max_properties
            ));
        }
        for (k, v) in &a.labels {
            self.key("a label key", k)?;
            self.text(&format!("label `{k}`"), v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_is_sent_only_the_fields_it_reads_and_they_come_back() {
        let event = Event {
            id: "e1".into(),
            event_type: "purchase".into(),
            timestamp: 7,
            user_id: Some("u1".into()),
            session_id: Some("s1".into()),
            properties: vec![super::super::Property {
                key: "amount".into(),
                value: Value::Float(2.5),
            }],
            metadata: Metadata {
                ip_address: Some("10.0.0.1".into()),
                user_agent: Some("ua".into()),
                platform: None,
                url: Some("https://x/".into()),
                referrer: None,
            },
        };
        let interest = |fields, metadata| Interest {
            event_types: Vec::new(),
            properties: Some(Vec::new()),
            metadata,
            fields,
        };
        for (fields, metadata) in [
            (EventFields::empty(), MetadataFields::empty()),
            (EventFields::USER_ID, MetadataFields::URL),
            (EventFields::all(), MetadataFields::all()),
            (
                EventFields::ID | EventFields::SESSION_ID,
                MetadataFields::IP_ADDRESS,
            ),
        ] {
            let mut e = event.clone();
            let hidden = project(&interest(fields, metadata), &mut e);
            let read = |f: EventFields, v: &Option<String>| {
                fields.contains(f).then(|| v.clone()).flatten()
            };
            assert_eq!(
                e.id,
                if fields.contains(EventFields::ID) {
                    "e1"
                } else {
                    ""
                }
            );
            assert_eq!(e.user_id, read(EventFields::USER_ID, &event.user_id));
            assert_eq!(
                e.session_id,
                read(EventFields::SESSION_ID, &event.session_id)
            );
            assert_eq!(
                e.metadata.url.is_some(),
                metadata.contains(MetadataFields::URL)
            );
            assert!(e.properties.is_empty());
            assert_eq!((&e.event_type, e.timestamp), (&event.event_type, 7));
            unproject(&mut e, hidden);
            assert_eq!(e, event, "{fields:?} {metadata:?}");
        }
    }

    #[test]
    fn hidden_properties_come_back_in_place() {
        let all: Vec<super::super::Property> = (0..9)
            .map(|i| super::super::Property {
                key: format!("k{i}"),
                value: Value::Int(i),
            })
            .collect();
        for read in [
            vec![],
            vec!["k0"],
            vec!["k8"],
            vec!["k1", "k4", "k5"],
            vec!["k0", "k2", "k9"],
        ] {
            let keys: Vec<String> = read.iter().map(|k| k.to_string()).collect();
            let mut props = all.clone();
            let hidden = hide_properties(&mut props, &keys);
            let kept: Vec<&str> = props.iter().map(|p| p.key.as_str()).collect();
            let want: Vec<&str> = all
                .iter()
                .map(|p| p.key.as_str())
                .filter(|k| read.contains(k))
                .collect();
            assert_eq!(kept, want, "read {read:?}");
            assert_eq!(hidden.len() + props.len(), all.len());
            restore_properties(&mut props, hidden);
            assert_eq!(props, all, "read {read:?}");
        }
    }
}
