//! One live instance of a plugin: its store (memory, limits, WASI context)
//! and its typed exports. An instance that trapped is never called again;
//! the supervisor replaces it.

use super::bindings::{aggregator, alerter, enricher, host, types};
use super::error::chain;
use super::{EPOCH_TICK, PluginComponent, PluginError, World};
use crate::config::{Capabilities, Limits};
use std::time::Duration;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// How much of a plugin's stderr is kept to explain a failure (a Rust panic
/// message lands there). Bounded: the guest controls how much it writes.
const STDERR_CAPTURE: usize = 16 * 1024;

/// Longest log message kept; the rest is cut (the guest controls the size).
const LOG_MESSAGE_BYTES: usize = 4096;
/// Most key-value fields kept per log line.
const LOG_FIELDS: usize = 32;

/// Per-instance host state.
pub struct PluginState {
    plugin: String,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    stderr: MemoryOutputPipe,
    /// Log lines the current call may still write, and lines dropped so far.
    log_budget: u32,
    log_lines: u32,
    pub(crate) log_dropped: u64,
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for PluginState {}

impl host::Host for PluginState {
    fn log(&mut self, level: types::Level, mut message: String, mut fields: Vec<(String, String)>) {
        // Rate-limited per call: a chatty plugin must not flood the log.
        if self.log_budget == 0 {
            self.log_dropped += 1;
            return;
        }
        self.log_budget -= 1;
        truncate(&mut message, LOG_MESSAGE_BYTES);
        fields.truncate(LOG_FIELDS);
        for (k, v) in &mut fields {
            truncate(k, LOG_MESSAGE_BYTES / 16);
            truncate(v, LOG_MESSAGE_BYTES / 4);
        }
        let plugin = self.plugin.as_str();
        let fields = FieldsDisplay(&fields);
        match level {
            types::Level::Trace => tracing::trace!(plugin, %fields, "{message}"),
            types::Level::Debug => tracing::debug!(plugin, %fields, "{message}"),
            types::Level::Info => tracing::info!(plugin, %fields, "{message}"),
            types::Level::Warn => tracing::warn!(plugin, %fields, "{message}"),
            types::Level::Error => tracing::error!(plugin, %fields, "{message}"),
        }
    }
}

struct FieldsDisplay<'a>(&'a [(String, String)]);

impl std::fmt::Display for FieldsDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        Ok(())
    }
}

/// Clocks for plugins without the clock capability: always the Unix epoch,
/// so plugin output depends on event time only and replays are deterministic.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

pub(crate) enum Exports {
    Enricher(enricher::Enricher),
    Aggregator(aggregator::Aggregator),
    Alerter(alerter::Alerter),
}

/// Snapshots and restores walk the whole state, which legitimately takes
/// longer than a batch, and `init` runs once per instance, often on a cold
/// instance (code and memory first touched) when the machine is busiest (a
/// recovery, a rebalance, a start): they get this many times the call deadline.
const STATE_DEADLINE_FACTOR: u64 = 10;

pub(crate) struct Instance {
    pub(crate) store: Store<PluginState>,
    pub(crate) exports: Exports,
    deadline_ticks: u64,
}

/// The words of wasmtime's error when a call's result (or a host call's
/// arguments) exceeded the store's hostcall fuel.
pub(crate) const COPY_LIMIT_ERROR: &str = "fuel allocated for hostcalls has been exhausted";

impl Instance {
    /// Instantiates `component` with its limits and capabilities.
    pub(crate) fn new(
        name: &str,
        component: &PluginComponent,
        limits: &Limits,
        caps: &Capabilities,
    ) -> Result<Self, PluginError> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone());
        for grant in &caps.dirs {
            let perms = if grant.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&grant.host, &grant.guest, perms)
                .map_err(|e| {
                    PluginError::Engine(format!(
                        "cannot grant directory {}: {}",
                        grant.host.display(),
                        chain(&e)
                    ))
                })?;
        }
        for key in &caps.env {
            if let Ok(v) = std::env::var(key) {
                wasi.env(key, v);
            }
        }
        if !caps.clock {
            wasi.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
        }
        if caps.network {
            wasi.inherit_network().allow_ip_name_lookup(true);
        }
        let state = PluginState {
            plugin: name.to_string(),
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes())
                // A refused memory.grow becomes a trap with a clear cause, instead
                // of an allocator abort deep in the guest.
                .trap_on_grow_failure(true)
                .instances(16)
                .tables(16)
                .memories(4)
                .build(),
            stderr,
            log_budget: limits.max_log_lines,
            log_lines: limits.max_log_lines,
            log_dropped: 0,
        };
        let mut store = Store::new(component.pre.engine(), state);
        store.limiter(|s| &mut s.limits);
        // Bounds what the host copies out of the guest per call: the result
        // of an export (lifted under this fuel too) and each host call's arguments.
        store.set_hostcall_fuel(limits.max_output_bytes.max(1));
        let deadline_ticks = limits.deadline().as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64;
        store.set_epoch_deadline(deadline_ticks.max(1));
        store.epoch_deadline_trap();
        let instance = component
            .pre
            .instantiate(&mut store)
            .map_err(|e| PluginError::Link(chain(&e)))?;
        let exports = match component.world {
            World::Enricher => Exports::Enricher(
                enricher::Enricher::new(&mut store, &instance).map_err(PluginError::link)?,
            ),
            World::Aggregator => Exports::Aggregator(
                aggregator::Aggregator::new(&mut store, &instance).map_err(PluginError::link)?,
            ),
            World::Alerter => Exports::Alerter(
                alerter::Alerter::new(&mut store, &instance).map_err(PluginError::link)?,
            ),
        };
        Ok(Instance {
            store,
            exports,
            deadline_ticks: deadline_ticks.max(1),
        })
    }

    /// Arms the deadline (and the log budget) for the next call into the
    /// guest, `factor` times the usual one: 1 for a live call, more where a
    /// busy machine stretches wall time (replays, retries, init, state) but a
    /// runaway plugin must still be stopped.
    pub(crate) fn arm_lenient(&mut self, factor: u64) {
        self.store
            .set_epoch_deadline(self.deadline_ticks.saturating_mul(factor));
        let s = self.store.data_mut();
        s.log_budget = s.log_lines;
    }

    /// Log lines dropped by the rate limit since the last time this was asked.
    pub(crate) fn take_log_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.store.data_mut().log_dropped)
    }

    /// Whatever the guest wrote to stderr so far (e.g. a panic message).
    pub(crate) fn stderr(&self) -> String {
        let bytes = self.store.data().stderr.contents();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }

    pub(crate) fn init(
        &mut self,
        config: &str,
        settings: &types::HostSettings,
    ) -> wasmtime::Result<Result<types::Interest, types::ConfigError>> {
        // Lenient: an init cut short on a stalled machine would fail a
        // start, or disable the plugin when it came from a recovery.
        self.arm_lenient(STATE_DEADLINE_FACTOR);
        match &self.exports {
            Exports::Enricher(b) => {
                b.nexuspipe_plugin_enrich()
                    .call_init(&mut self.store, config, settings)
            }
            Exports::Aggregator(b) => {
                b.nexuspipe_plugin_aggregate()
                    .call_init(&mut self.store, config, settings)
            }
            Exports::Alerter(b) => {
                b.nexuspipe_plugin_alerting()
                    .call_init(&mut self.store, config, settings)
            }
        }
    }

    /// `None` for enrichers, which keep no state.
    pub(crate) fn snapshot(&mut self) -> wasmtime::Result<Option<Vec<u8>>> {
        self.arm_lenient(STATE_DEADLINE_FACTOR);
        match &self.exports {
            Exports::Enricher(_) => Ok(None),
            Exports::Aggregator(b) => b
                .nexuspipe_plugin_aggregate()
                .call_snapshot(&mut self.store)
                .map(Some),
            Exports::Alerter(b) => b
                .nexuspipe_plugin_alerting()
                .call_snapshot(&mut self.store)
                .map(Some),
        }
    }

    pub(crate) fn restore(
        &mut self,
        state: &[u8],
    ) -> wasmtime::Result<Result<types::Restored, types::StateError>> {
        self.arm_lenient(STATE_DEADLINE_FACTOR);
        match &self.exports {
            Exports::Enricher(_) => Ok(Ok(types::Restored {
                kept: Vec::new(),
                reset: Vec::new(),
                dropped: Vec::new(),
                added: Vec::new(),
            })),
            Exports::Aggregator(b) => b
                .nexuspipe_plugin_aggregate()
                .call_restore(&mut self.store, state),
            Exports::Alerter(b) => b
                .nexuspipe_plugin_alerting()
                .call_restore(&mut self.store, state),
        }
    }
}
