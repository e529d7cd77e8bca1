//! Live plugins: new versions arrive from the admin API or the plugins folder,
//! are compiled, checked and initialised off the event path, then swapped in by
//! the engine between two rounds with the old version's state handed over.
//!
//! Every change is recorded in `<data_dir>/deployed/deployments.json` (uploaded
//! components beside it, by hash), so a restart runs the versions that were
//! running, not the ones the config file names.

pub mod cluster;
pub mod folder;

use crate::config::{PluginConfig, validate_plugin_name};
use crate::dataflow::{Handover, SwapError, insert_position};
use crate::engine::{ControlOp, EngineHandle};
use crate::fsutil::write_atomic;
use crate::runtime::{
    Capabilities, HostSettings, Limits, Plugin, PluginComponent, PluginError, Runtime, World,
};
use crate::telemetry::Metrics;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Where a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The config file (or the default pipeline).
    Config,
    /// `PUT /v1/plugins/{name}`.
    Upload,
    /// The watched plugins folder.
    Folder,
}

/// A loaded version of a plugin: enough to instantiate it again (rollback).
#[derive(Clone)]
struct Version {
    component: PluginComponent,
    config: String,
    limits: Limits,
    caps: Capabilities,
    source: Source,
    /// Where its bytes are, so a restart can load it again.
    path: PathBuf,
    loaded_at: SystemTime,
}

struct Slot {
    current: Version,
    previous: Option<Version>,
}

#[derive(Default)]
struct Registry {
    slots: BTreeMap<String, Slot>,
    /// Configured plugins removed through the API: they stay out after a restart.
    removed: BTreeSet<String>,
}

/// A new version to deploy.
pub struct DeployRequest {
    pub name: String,
    /// The component; empty: the running version's (a new config only).
    pub bytes: Vec<u8>,
    /// The plugin's own config; `None` keeps the running version's (or the default).
    pub config: Option<String>,
    pub source: Source,
    /// Start the new version empty instead of handing it the old one's state.
    pub reset_state: bool,
    /// Limits and capabilities (a folder sidecar); `None` keeps the running
    /// version's, or the configured entry's, or the defaults.
    pub settings: Option<(Limits, Capabilities)>,
    /// Where the file came from (folder); uploads are stored in the data dir.
    pub path: Option<PathBuf>,
    /// When the request arrived, for the upload-to-active time.
    pub received: Instant,
}

/// Why a change was refused. The running version is untouched.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("invalid plugin name: {0}")]
    InvalidName(String),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Swap(#[from] SwapError),
    #[error("plugin `{0}` has no previous version to roll back to")]
    NoPrevious(String),
    /// With Kafka: the change could not be published (or read back).
    #[error("{0}")]
    Publish(String),
    #[error("storing the plugin in {path}: {source}")]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A change that took effect.
#[derive(Debug, Clone, Serialize)]
pub struct Deployed {
    pub name: String,
    pub world: World,
    pub version: String,
    pub previous_version: Option<String>,
    pub state: Handover,
    pub state_bytes: usize,
    /// The state went over by catch-up before the pause (see the README).
    pub caught_up: bool,
    /// Events held back while the engine swapped (µs).
    pub swap_pause_us: u64,
    /// From the request's arrival (or the file settling) to the version running (ms).
    pub upload_to_active_ms: f64,
    /// With `state: kept`: what the new version took over, part by part
    /// (metrics, funnels, rules), matched by name and definition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts: Option<StateParts>,
    /// With Kafka: what each processor of the group did with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processors: Vec<cluster::ProcessorOutcome>,
}

/// A version that would deploy (`?dry_run=true`).
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub name: String,
    pub world: World,
    pub version: String,
}

/// What a new version took over of the running state, part by part: a part
/// whose definition changed starts empty, so old state is never relabeled.
#[derive(Debug, Clone, Serialize)]
pub struct StateParts {
    pub kept: Vec<String>,
    pub reset: Vec<String>,
    pub dropped: Vec<String>,
    pub added: Vec<String>,
}

impl From<crate::runtime::Restored> for StateParts {
    fn from(r: crate::runtime::Restored) -> Self {
        StateParts {
            kept: r.kept,
            reset: r.reset,
            dropped: r.dropped,
            added: r.added,
        }
    }
}

/// A plugin as `GET /v1/plugins` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub world: World,
    pub version: String,
    pub source: Source,
    #[serde(with = "time::serde::rfc3339")]
    pub loaded_at: time::OffsetDateTime,
    pub previous_version: Option<String>,
    pub events_in: u64,
    pub events_out: u64,
    pub calls: u64,
    pub failures: u64,
    /// Batches tried once more after running past the deadline.
    pub retries: u64,
    pub dead_lettered: u64,
    pub late: u64,
    pub breaker: crate::runtime::BreakerState,
    pub last_error: Option<String>,
    /// With Kafka: the version each live processor of the group runs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processors: Vec<cluster::ProcessorOutcome>,
}

/// One entry of `deployments.json`.
#[derive(Debug, Serialize, Deserialize)]
struct VersionRecord {
    hash: String,
    path: PathBuf,
    config: String,
    source: Source,
    loaded_at_ms: u64,
    /// A folder version's own limits and capabilities (from its sidecar);
    /// other versions take the configured plugin's at each start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings: Option<(Limits, Capabilities)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SlotRecord {
    name: String,
    current: VersionRecord,
    previous: Option<VersionRecord>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Deployments {
    /// In the order they were first deployed (new plugins are inserted in that order).
    plugins: Vec<SlotRecord>,
    removed: BTreeSet<String>,
}

/// Owns plugin versions and applies changes through the engine.
pub struct Manager {
    runtime: Runtime,
    settings: HostSettings,
    metrics: Arc<Metrics>,
    engine: OnceLock<EngineHandle>,
    /// `<data_dir>/deployed`.
    store: PathBuf,
    /// The operator's `[[plugins]]` entries, for limits and capabilities.
    configured: BTreeMap<String, PluginConfig>,
    registry: Mutex<Registry>,
    /// One change at a time, so two uploads of one plugin cannot interleave.
    changes: Mutex<()>,
    /// With Kafka: the plugins topic, which records and spreads every change.
    cluster: OnceLock<cluster::Cluster>,
    /// Event schemas, spread through the plugins topic like plugins.
    schemas: Arc<crate::schema::Schemas>,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Manager {
    /// Builds the starting pipeline: the configured one, with the changes
    /// recorded in the data dir applied. Returns the manager and the plugins
    /// (for the engine, which restores their checkpoints).
    pub fn start(
        runtime: Runtime,
        settings: HostSettings,
        metrics: Arc<Metrics>,
        data_dir: &Path,
        pipeline: Vec<PluginConfig>,
    ) -> anyhow::Result<(Arc<Manager>, Vec<Plugin>)> {
        let (m, plugins, _) =
            Self::start_with(runtime, settings, metrics, data_dir, pipeline, None)?;
        Ok((m, plugins))
    }

    /// With Kafka: the configured pipeline with the changes recorded in the
    /// plugins topic applied (the topic, not the data dir, is the record).
    /// Call [`Manager::follow_cluster`] with the reader once the processor runs.
    pub fn start_kafka(
        runtime: Runtime,
        settings: HostSettings,
        metrics: Arc<Metrics>,
        data_dir: &Path,
        pipeline: Vec<PluginConfig>,
        kafka: &crate::config::KafkaConfig,
    ) -> anyhow::Result<(Arc<Manager>, Vec<Plugin>, crate::kafka::plugins::Reader)> {
        let (m, plugins, reader) =
            Self::start_with(runtime, settings, metrics, data_dir, pipeline, Some(kafka))?;
        Ok((m, plugins, reader.expect("read with kafka")))
    }

    fn start_with(
        runtime: Runtime,
        settings: HostSettings,
        metrics: Arc<Metrics>,
        data_dir: &Path,
        pipeline: Vec<PluginConfig>,
        kafka: Option<&crate::config::KafkaConfig>,
    ) -> anyhow::Result<(
        Arc<Manager>,
        Vec<Plugin>,
        Option<crate::kafka::plugins::Reader>,
    )> {
        use anyhow::Context;
        let store = data_dir.join("deployed");
        let manager = Manager {
            runtime,
            settings,
            metrics,
            engine: OnceLock::new(),
            configured: pipeline
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
            store,
            registry: Mutex::new(Registry::default()),
            changes: Mutex::new(()),
            cluster: OnceLock::new(),
            schemas: Arc::new(
                // With Kafka the plugins topic is the record, as for plugins.
                crate::schema::Schemas::open(data_dir, kafka.is_none())
                    .context("loading the event schemas kept in the data dir")?,
            ),
        };
        let recorded = if kafka.is_some() {
            Deployments::default()
        } else {
            manager.read_deployments()?
        };
        let mut registry = Registry {
            removed: recorded.removed.clone(),
            ..Registry::default()
        };
        let mut order: Vec<(String, World)> = Vec::new();
        for p in &pipeline {
            if recorded.removed.contains(&p.name) {
                tracing::info!(plugin = %p.name, "removed through the admin API; not started");
                continue;
            }
            let component = manager
                .runtime
                .load_file(&p.path)
                .with_context(|| format!("plugin `{}` ({})", p.name, p.path.display()))?;
            let config = p
                .config_text()
                .with_context(|| format!("plugin `{}`", p.name))?;
            order.push((p.name.clone(), component.world));
            let version = Version {
                component,
                config,
                limits: p.limits.clone(),
                caps: p.capabilities.clone(),
                source: Source::Config,
                path: p.path.clone(),
                loaded_at: SystemTime::now(),
            };
            registry.slots.insert(
                p.name.clone(),
                Slot {
                    current: version,
                    previous: None,
                },
            );
        }
        for r in recorded.plugins {
            let Some(current) = manager.load_record(&r.name, &r.current) else {
                continue;
            };
            let previous = r
                .previous
                .as_ref()
                .and_then(|v| manager.load_record(&r.name, v));
            if !order.iter().any(|(n, _)| *n == r.name) {
                let at = insert_position(order.iter().map(|(_, w)| *w), current.component.world);
                order.insert(at, (r.name.clone(), current.component.world));
            }
            tracing::info!(plugin = %r.name, version = %current.component.short_hash(), source = ?current.source, "running the version deployed before the restart");
            registry.slots.insert(r.name, Slot { current, previous });
        }
        *manager.registry.lock().expect("registry lock") = registry;
        let reader = match kafka {
            Some(k) => Some(
                manager
                    .join_cluster(k, &mut order)
                    .with_context(|| format!("reading the plugins topic at {}", k.brokers))?,
            ),
            None => None,
        };
        let mut plugins = Vec::with_capacity(order.len());
        {
            let registry = manager.registry.lock().expect("registry lock");
            for (name, _) in &order {
                let v = &registry.slots[name].current;
                let plugin = manager
                    .instantiate(name, v)
                    .with_context(|| format!("plugin `{name}` ({})", v.path.display()))?;
                plugins.push(plugin);
            }
        }
        Ok((Arc::new(manager), plugins, reader))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Connects the manager to the running engine.
    pub fn attach(&self, engine: EngineHandle) {
        let _ = self.engine.set(engine);
    }

    /// Loads a recorded version; a missing or changed file is skipped with a warning.
    fn load_record(&self, name: &str, r: &VersionRecord) -> Option<Version> {
        let loaded = std::fs::read(&r.path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| self.runtime.load(&bytes).map_err(|e| e.to_string()));
        match loaded {
            Ok(component) if component.hash == r.hash => {
                let (limits, caps) = r
                    .settings
                    .clone()
                    .unwrap_or_else(|| self.defaults_for(name));
                Some(Version {
                    component,
                    config: r.config.clone(),
                    limits,
                    caps,
                    source: r.source,
                    path: r.path.clone(),
                    loaded_at: SystemTime::UNIX_EPOCH + Duration::from_millis(r.loaded_at_ms),
                })
            }
            Ok(_) => {
                tracing::warn!(plugin = name, path = %r.path.display(), "the deployed file changed since it was recorded; not loaded");
                None
            }
            Err(e) => {
                tracing::warn!(plugin = name, path = %r.path.display(), error = %e, "the deployed version cannot be loaded any more; not loaded");
                None
            }
        }
    }

    fn defaults_for(&self, name: &str) -> (Limits, Capabilities) {
        self.configured
            .get(name)
            .map(|p| (p.limits.clone(), p.capabilities.clone()))
            .unwrap_or_default()
    }

    fn instantiate(&self, name: &str, v: &Version) -> Result<Plugin, PluginError> {
        Plugin::new(
            name,
            v.component.clone(),
            &v.config,
            self.settings.clone(),
            v.limits.clone(),
            v.caps.clone(),
        )
    }

    fn engine(&self) -> Result<&EngineHandle, DeployError> {
        self.engine
            .get()
            .ok_or(DeployError::Swap(SwapError::Stopped))
    }

    /// Compiles, checks and initialises a new version, then swaps it in.
    /// Blocking: call it from a blocking thread.
    pub fn deploy(&self, req: DeployRequest) -> Result<Deployed, DeployError> {
        self.try_deploy(req).inspect_err(|_| self.note_refused())
    }

    /// Counts a refused version (for `/metrics`).
    pub fn note_refused(&self) {
        self.metrics
            .plugin_swaps_failed
            .fetch_add(1, Ordering::Relaxed);
    }

    fn try_deploy(&self, req: DeployRequest) -> Result<Deployed, DeployError> {
        let _one_at_a_time = self.changes.lock().expect("changes lock");
        let (name, reset_state, received) = (req.name.clone(), req.reset_state, req.received);
        // With Kafka the topic keeps the bytes, not the data dir.
        let bytes = self.cluster.get().map(|_| req.bytes.clone());
        let version = self.prepare(req, bytes.is_none())?;
        self.swap(&name, version, reset_state, received, bytes)
    }

    /// What a deploy would run, checked without running it: the component
    /// loads, is the running plugin's world, and instantiates with the
    /// config (its `init` accepts it). Nothing changes.
    pub fn check(&self, req: DeployRequest) -> Result<Checked, DeployError> {
        let name = req.name.clone();
        let version = self.prepare(req, false)?;
        self.instantiate(&name, &version)?;
        Ok(Checked {
            name,
            world: version.component.world,
            version: version.component.hash.clone(),
        })
    }

    /// The version a request asks for; `keep` stores an uploaded component.
    fn prepare(&self, req: DeployRequest, keep: bool) -> Result<Version, DeployError> {
        validate_plugin_name(&req.name).map_err(DeployError::InvalidName)?;
        let running = self.current(&req.name);
        // An empty body with a running plugin: the same component, a new config.
        let (component, path) = match &running {
            Some(cur) if req.bytes.is_empty() => (cur.component.clone(), Some(cur.path.clone())),
            _ => (self.runtime.load(&req.bytes)?, req.path),
        };
        if let Some(cur) = &running
            && cur.component.world != component.world
        {
            return Err(SwapError::WorldMismatch {
                name: req.name,
                running: cur.component.world,
                new: component.world,
            }
            .into());
        }
        let (limits, caps) = req
            .settings
            .or_else(|| running.as_ref().map(|v| (v.limits.clone(), v.caps.clone())))
            .unwrap_or_else(|| self.defaults_for(&req.name));
        let config = req
            .config
            .or_else(|| running.as_ref().map(|v| v.config.clone()))
            .unwrap_or_default();
        let path = match path {
            Some(p) => p,
            None if keep => self.store_bytes(&component.hash, &req.bytes)?,
            None => PathBuf::new(),
        };
        Ok(Version {
            component,
            config,
            limits,
            caps,
            source: req.source,
            path,
            loaded_at: SystemTime::now(),
        })
    }

    /// Puts the previous version back (with the running one's state, unless `reset_state`).
    pub fn rollback(&self, name: &str, reset_state: bool) -> Result<Deployed, DeployError> {
        let received = Instant::now();
        let _one_at_a_time = self.changes.lock().expect("changes lock");
        let previous = {
            let reg = self.registry.lock().expect("registry lock");
            let slot = reg
                .slots
                .get(name)
                .ok_or_else(|| SwapError::NotFound(name.to_string()))?;
            slot.previous
                .clone()
                .ok_or_else(|| DeployError::NoPrevious(name.to_string()))?
        };
        self.swap(name, previous, reset_state, received, None)
    }

    fn swap(
        &self,
        name: &str,
        version: Version,
        reset_state: bool,
        received: Instant,
        bytes: Option<Vec<u8>>,
    ) -> Result<Deployed, DeployError> {
        let mut plugin = self.instantiate(name, &version)?;
        if self.cluster.get().is_some() {
            if let Some(running) = self.current(name)
                && running.component.world != version.component.world
            {
                return Err(SwapError::WorldMismatch {
                    name: name.to_string(),
                    running: running.component.world,
                    new: version.component.world,
                }
                .into());
            }
            drop(plugin);
            let previous_version = self.current(name).map(|v| v.component.hash);
            let (state, processors) =
                self.publish_change(name, Some(&version), bytes, reset_state)?;
            self.metrics.plugin_swaps.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                plugin = name,
                version = &version.component.hash[..12],
                processors = processors.len(),
                "plugin version published to the group"
            );
            return Ok(Deployed {
                name: name.to_string(),
                world: version.component.world,
                version: version.component.hash.clone(),
                previous_version,
                state,
                state_bytes: 0,
                caught_up: false,
                swap_pause_us: 0,
                upload_to_active_ms: received.elapsed().as_secs_f64() * 1e3,
                parts: None,
                processors,
            });
        }
        let (caught_up, base_bytes) = if reset_state || !version.component.world.is_stateful() {
            (None, 0)
        } else {
            self.catch_up(name, &mut plugin)?
        };
        let mut swapped = self
            .engine()?
            .control(ControlOp::Deploy {
                plugin: Box::new(plugin),
                reset_state,
                caught_up,
            })
            .blocking_recv()
            .map_err(|_| SwapError::Stopped)??;
        if swapped.caught_up {
            swapped.state_bytes = base_bytes;
        }
        let world = version.component.world;
        let hash = version.component.hash.clone();
        let previous_version = {
            let mut reg = self.registry.lock().expect("registry lock");
            reg.removed.remove(name);
            let previous = reg.slots.remove(name).map(|s| s.current);
            let previous_version = previous.as_ref().map(|v| v.component.hash.clone());
            reg.slots.insert(
                name.to_string(),
                Slot {
                    current: version,
                    previous,
                },
            );
            previous_version
        };
        self.persist();
        self.metrics.plugin_swaps.fetch_add(1, Ordering::Relaxed);
        let deployed = Deployed {
            name: name.to_string(),
            world,
            version: hash,
            previous_version,
            state: swapped.handover,
            state_bytes: swapped.state_bytes,
            caught_up: swapped.caught_up,
            swap_pause_us: swapped.pause.as_micros() as u64,
            upload_to_active_ms: received.elapsed().as_secs_f64() * 1e3,
            parts: swapped
                .parts
                .filter(|_| swapped.handover == Handover::Kept)
                .map(StateParts::from),
            processors: Vec::new(),
        };
        let list = |f: fn(&StateParts) -> &Vec<String>| {
            deployed
                .parts
                .as_ref()
                .map(|p| f(p).join(","))
                .unwrap_or_default()
        };
        tracing::info!(plugin = name, world = %world, version = &deployed.version[..12], state = ?deployed.state, kept = %list(|p| &p.kept), reset = %list(|p| &p.reset), dropped = %list(|p| &p.dropped), added = %list(|p| &p.added), pause_us = deployed.swap_pause_us, "plugin version swapped in");
        Ok(deployed)
    }

    /// Brings a new version's state up to the running version's, off the
    /// event path, so the swap itself only replays the last few batches:
    /// restore the running version's last snapshot, replay the batches it
    /// processed since, then ask again for the batches processed meanwhile,
    /// until few remain. Returns the batch number reached and the snapshot's
    /// size; `None` if the versions' interests differ (the batches kept are
    /// what the old version was shown, not what the new one wants): then the
    /// swap snapshots and restores in the pause instead.
    fn catch_up(
        &self,
        name: &str,
        plugin: &mut Plugin,
    ) -> Result<(Option<u64>, usize), DeployError> {
        // Each round replays what the engine processed during the previous
        // one, much faster than it arrived, so a few rounds leave little.
        const ROUNDS: usize = 8;
        const CLOSE_ENOUGH: usize = 256;
        let engine = self.engine()?;
        let mut since = None;
        let mut base_bytes = 0;
        for _ in 0..ROUNDS {
            let Some(c) = engine.catchup(name, since) else {
                return Ok((None, 0)); // a new plugin: nothing to catch up with
            };
            if !c.fits(plugin) {
                tracing::info!(
                    plugin = name,
                    "the new version reads other events or fields, or has another config; its state is handed over in the pause"
                );
                return Ok((None, 0));
            }
            if let Some(b) = &c.base {
                base_bytes = b.len();
            }
            plugin.catch_up(&c).map_err(|e| match e {
                PluginError::State(m) => DeployError::Swap(SwapError::StateRejected(m)),
                other => DeployError::Plugin(other),
            })?;
            since = Some(c.next);
            if !c.from_base && c.events() <= CLOSE_ENOUGH {
                break;
            }
        }
        Ok((since, base_bytes))
    }

    /// Takes a plugin out of the pipeline.
    pub fn remove(&self, name: &str) -> Result<String, DeployError> {
        let _one_at_a_time = self.changes.lock().expect("changes lock");
        if self.cluster.get().is_some() {
            let running = self
                .current(name)
                .ok_or_else(|| SwapError::NotFound(name.to_string()))?;
            self.publish_change(name, None, None, false)?;
            self.metrics.plugin_swaps.fetch_add(1, Ordering::Relaxed);
            tracing::info!(plugin = name, "plugin removal published to the group");
            return Ok(running.component.hash);
        }
        self.engine()?
            .control(ControlOp::Remove {
                name: name.to_string(),
            })
            .blocking_recv()
            .map_err(|_| SwapError::Stopped)??;
        let version = {
            let mut reg = self.registry.lock().expect("registry lock");
            if self.configured.contains_key(name) {
                reg.removed.insert(name.to_string());
            }
            reg.slots
                .remove(name)
                .map(|s| s.current.component.hash)
                .unwrap_or_default()
        };
        self.persist();
        self.metrics.plugin_swaps.fetch_add(1, Ordering::Relaxed);
        tracing::info!(plugin = name, "plugin removed from the pipeline");
        Ok(version)
    }

    fn current(&self, name: &str) -> Option<Version> {
        let reg = self.registry.lock().expect("registry lock");
        reg.slots.get(name).map(|s| s.current.clone())
    }

    /// The running version's hash, config and source, if the plugin runs.
    pub fn running(&self, name: &str) -> Option<(String, String, Source)> {
        self.current(name)
            .map(|v| (v.component.hash, v.config, v.source))
    }

    /// The pipeline, in order, with each plugin's figures.
    pub fn list(&self) -> Vec<PluginInfo> {
        let mut figures = self.metrics.plugins.lock().expect("metrics lock").clone();
        let reg = self.registry.lock().expect("registry lock");
        // A collector runs no plugin: its registry still says what is deployed.
        for (name, slot) in &reg.slots {
            if !figures.iter().any(|f| f.name == *name) {
                figures.push(crate::telemetry::PluginFigures {
                    name: name.clone(),
                    world: slot.current.component.world,
                    version: slot.current.component.hash.clone(),
                    stats: Default::default(),
                    breaker: crate::runtime::BreakerState::Closed,
                });
            }
        }
        figures
            .into_iter()
            .filter_map(|f| {
                let slot = reg.slots.get(&f.name)?;
                let v = &slot.current;
                Some(PluginInfo {
                    world: v.component.world,
                    version: v.component.hash.clone(),
                    source: v.source,
                    loaded_at: time::OffsetDateTime::from(v.loaded_at),
                    previous_version: slot.previous.as_ref().map(|p| p.component.hash.clone()),
                    events_in: f.stats.events_in,
                    events_out: f.stats.events_out,
                    calls: f.stats.calls,
                    failures: f.stats.failures,
                    retries: f.stats.retries,
                    dead_lettered: f.stats.dead_lettered,
                    late: f.stats.late,
                    breaker: f.breaker,
                    last_error: f.stats.last_error,
                    processors: self.processors_of(&f.name),
                    name: f.name,
                })
            })
            .collect()
    }

    /// Keeps an uploaded component in the data dir (by hash), for restarts.
    fn store_bytes(&self, hash: &str, bytes: &[u8]) -> Result<PathBuf, DeployError> {
        let path = self.store.join(format!("{hash}.wasm"));
        if path.exists() {
            return Ok(path);
        }
        std::fs::create_dir_all(&self.store)
            .and_then(|()| write_atomic(&path, bytes))
            .map_err(|source| DeployError::Store {
                path: path.clone(),
                source,
            })?;
        Ok(path)
    }

    fn read_deployments(&self) -> anyhow::Result<Deployments> {
        use anyhow::Context;
        let path = self.store.join("deployments.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "parsing {} (move it away to start from the config alone)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Deployments::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Records every change to the configured pipeline, and removes uploaded
    /// components no record refers to. A failure is logged: the change is
    /// running, it would only be forgotten by a restart.
    fn persist(&self) {
        let record = |v: &Version| VersionRecord {
            hash: v.component.hash.clone(),
            path: v.path.clone(),
            config: v.config.clone(),
            source: v.source,
            loaded_at_ms: millis(v.loaded_at),
            settings: (v.source == Source::Folder).then(|| (v.limits.clone(), v.caps.clone())),
        };
        let deployments = {
            let reg = self.registry.lock().expect("registry lock");
            let mut previous = self.read_deployments().unwrap_or_default().plugins;
            let mut plugins = Vec::new();
            // Keep the first-deployed order of the names already recorded.
            previous.retain(|r| reg.slots.contains_key(&r.name));
            let mut names: Vec<&String> = previous.iter().map(|r| &r.name).collect();
            names.extend(
                reg.slots
                    .keys()
                    .filter(|n| !previous.iter().any(|r| &r.name == *n)),
            );
            for name in names {
                let slot = &reg.slots[name];
                if slot.current.source == Source::Config && slot.previous.is_none() {
                    continue;
                }
                plugins.push(SlotRecord {
                    name: name.clone(),
                    current: record(&slot.current),
                    previous: slot.previous.as_ref().map(record),
                });
            }
            Deployments {
                plugins,
                removed: reg.removed.clone(),
            }
        };
        let path = self.store.join("deployments.json");
        let json = serde_json::to_vec_pretty(&deployments).expect("deployments serialize");
        if let Err(e) =
            std::fs::create_dir_all(&self.store).and_then(|()| write_atomic(&path, &json))
        {
            tracing::error!(path = %path.display(), error = %e, "recording the deployed plugins failed; a restart would run the previous versions");
            return;
        }
        let referenced: BTreeSet<&Path> = deployments
            .plugins
            .iter()
            .flat_map(|r| std::iter::once(&r.current).chain(r.previous.as_ref()))
            .map(|v| v.path.as_path())
            .collect();
        if let Ok(dir) = std::fs::read_dir(&self.store) {
            for f in dir.flatten() {
                let p = f.path();
                if p.extension().is_some_and(|e| e == "wasm") && !referenced.contains(p.as_path()) {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }
}
